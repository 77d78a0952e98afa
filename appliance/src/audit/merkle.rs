//! RFC 6962 / RFC 9162 Merkle tree hashing, with inclusion and consistency
//! proofs and their verification. Leaves are `SHA-256(0x00 || entry)`,
//! interior nodes `SHA-256(0x01 || left || right)`; a tree of `n` leaves
//! splits at the largest power of two below `n`.

use pkcs11_shim::digest::sha256;

/// A 32-byte hash.
pub type Hash = [u8; 32];

/// Tree levels per tile (c2sp.org/tlog-tiles): a tile holds up to 256
/// hashes of one level, and tile level `L` holds tree level `8 * L`.
pub const TILE_HEIGHT: u32 = 8;

/// The hash of a leaf holding `entry`.
pub fn leaf_hash(entry: &[u8]) -> Hash {
    let mut buf = Vec::with_capacity(entry.len() + 1);
    buf.push(0x00);
    buf.extend_from_slice(entry);
    sha256(&buf)
}

/// The hash of an interior node.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut buf = [0u8; 65];
    buf[0] = 0x01;
    buf[1..33].copy_from_slice(left);
    buf[33..].copy_from_slice(right);
    sha256(&buf)
}

/// The largest power of two strictly below `n` (`n >= 2`).
fn split(n: usize) -> usize {
    let mut k = 1;
    while k << 1 < n {
        k <<= 1;
    }
    k
}

/// A tree of two or more leaves split where RFC 9162 splits it: the first
/// `split(n)` leaves and the rest.
fn halves(leaves: &[Hash]) -> (&[Hash], &[Hash]) {
    // Invariant: every caller splits a tree of n >= 2 leaves, and
    // 1 <= split(n) < n then, so `split_at` is in bounds and both halves
    // are non-empty.
    leaves.split_at(split(leaves.len()))
}

/// The root of the tree over `leaves` (leaf hashes). The empty tree's root
/// is SHA-256 of nothing.
pub fn root(leaves: &[Hash]) -> Hash {
    match leaves {
        [] => sha256(&[]),
        [leaf] => *leaf,
        _ => {
            let (left, right) = halves(leaves);
            node_hash(&root(left), &root(right))
        }
    }
}

/// The inclusion proof of leaf `index` in the tree over `leaves`.
pub fn inclusion_proof(index: usize, leaves: &[Hash]) -> Option<Vec<Hash>> {
    if index >= leaves.len() {
        return None;
    }
    let mut proof = Vec::new();
    let (mut index, mut leaves) = (index, leaves);
    let mut stack = Vec::new();
    while leaves.len() > 1 {
        let (left, right) = halves(leaves);
        if index < left.len() {
            stack.push(root(right));
            leaves = left;
        } else {
            stack.push(root(left));
            leaves = right;
            index -= left.len();
        }
    }
    // Collected top-down; proofs go from the leaf up.
    while let Some(h) = stack.pop() {
        proof.push(h);
    }
    Some(proof)
}

/// Verifies that `leaf` is at `index` in the tree of `size` with `root`
/// (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(
    index: u64,
    size: u64,
    leaf: &Hash,
    proof: &[Hash],
    expected_root: &Hash,
) -> bool {
    if index >= size {
        return false;
    }
    let (mut fnode, mut snode) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if snode == 0 {
            return false;
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    snode == 0 && r == *expected_root
}

/// The consistency proof between the first `m` leaves and all of `leaves`
/// (RFC 9162 §2.1.4.1).
pub fn consistency_proof(m: usize, leaves: &[Hash]) -> Option<Vec<Hash>> {
    if m == 0 || m > leaves.len() {
        return None;
    }
    let mut proof = Vec::new();
    subproof(m, leaves, true, &mut proof);
    Some(proof)
}

fn subproof(m: usize, leaves: &[Hash], complete: bool, proof: &mut Vec<Hash>) {
    let n = leaves.len();
    if m == n {
        if !complete {
            proof.push(root(leaves));
        }
        return;
    }
    // m < n here (m == n returned above) and m >= 1, so n >= 2.
    let (left, right) = halves(leaves);
    if m <= left.len() {
        subproof(m, left, complete, proof);
        proof.push(root(right));
    } else {
        subproof(m - left.len(), right, false, proof);
        proof.push(root(left));
    }
}

/// Verifies that the tree of `size2` with `root2` extends the tree of
/// `size1` with `root1` (RFC 9162 §2.1.4.2).
pub fn verify_consistency(
    size1: u64,
    size2: u64,
    root1: &Hash,
    root2: &Hash,
    proof: &[Hash],
) -> bool {
    if size1 == 0 || size1 > size2 {
        return false;
    }
    if size1 == size2 {
        return proof.is_empty() && root1 == root2;
    }
    let mut path: Vec<Hash> = proof.to_vec();
    if size1.is_power_of_two() {
        path.insert(0, *root1);
    }
    let Some((first, rest)) = path.split_first() else {
        return false;
    };
    let (mut fnode, mut snode) = (size1 - 1, size2 - 1);
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let (mut fr, mut sr) = (*first, *first);
    for c in rest {
        if snode == 0 {
            return false;
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    snode == 0 && fr == *root1 && sr == *root2
}

/// The right edge of a growing tree: the roots of its perfect subtrees,
/// largest first (one per set bit of the size). Appending and taking the
/// root cost O(log n), so a log of millions of entries checkpoints without
/// rehashing them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    /// (height, root) of each perfect subtree, largest (leftmost) first.
    subtrees: Vec<(u32, Hash)>,
    /// Subtrees completed since the last [`Frontier::take_tile_hashes`]
    /// whose height is a multiple of the tile height: (tile level, index,
    /// root), the hashes tiles above level 0 are made of.
    tile_hashes: Vec<(u8, u64, Hash)>,
}

impl Frontier {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Leaves appended so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The frontier of a tree of `size` leaves from the roots of its
    /// perfect subtrees, largest first (one per set bit of `size`).
    pub fn from_subtrees(size: u64, roots: Vec<Hash>) -> Option<Self> {
        let heights = (0..u64::BITS).rev().filter(|h| size >> h & 1 == 1);
        let subtrees: Vec<(u32, Hash)> = heights.zip(roots.iter().copied()).collect();
        (subtrees.len() == roots.len() && roots.len() == size.count_ones() as usize).then_some(
            Frontier {
                size,
                subtrees,
                tile_hashes: Vec::new(),
            },
        )
    }

    /// (height, root) of each perfect subtree, largest (leftmost) first.
    pub fn subtrees(&self) -> &[(u32, Hash)] {
        &self.subtrees
    }

    /// Appends a leaf hash.
    pub fn append(&mut self, leaf: Hash) {
        let mut node = (0u32, leaf);
        // Merge equal-height subtrees, as binary addition carries.
        while let Some(&(height, left)) = self.subtrees.last() {
            if height != node.0 {
                break;
            }
            let _ = self.subtrees.pop();
            node = (height + 1, node_hash(&left, &node.1));
            if node.0 % TILE_HEIGHT == 0 {
                let level = (node.0 / TILE_HEIGHT) as u8;
                let index = ((self.size + 1) >> node.0) - 1;
                self.tile_hashes.push((level, index, node.1));
            }
        }
        self.subtrees.push(node);
        self.size += 1;
    }

    /// The tile hashes completed since the last call, in order.
    pub fn take_tile_hashes(&mut self) -> Vec<(u8, u64, Hash)> {
        std::mem::take(&mut self.tile_hashes)
    }

    /// Gives back hashes taken but not stored, to be taken again.
    pub fn restore_tile_hashes(&mut self, mut hashes: Vec<(u8, u64, Hash)>) {
        hashes.append(&mut self.tile_hashes);
        self.tile_hashes = hashes;
    }

    /// The root of the tree so far (RFC 6962: right-hand subtrees fold first).
    pub fn root(&self) -> Hash {
        let mut iter = self.subtrees.iter().rev();
        let Some(&(_, mut acc)) = iter.next() else {
            return sha256(&[]);
        };
        for (_, left) in iter {
            acc = node_hash(left, &acc);
        }
        acc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(h: &Hash) -> String {
        h.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The RFC 6962 reference inputs and tree heads (certificate-transparency test data).
    const LEAVES: [&[u8]; 8] = [
        b"",
        b"\x00",
        b"\x10",
        b"\x20\x21",
        b"\x30\x31",
        b"\x40\x41\x42\x43",
        b"\x50\x51\x52\x53\x54\x55\x56\x57",
        b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
    ];
    const ROOTS: [&str; 9] = [
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    fn leaves() -> Vec<Hash> {
        LEAVES.iter().map(|l| leaf_hash(l)).collect()
    }

    #[test]
    fn roots_match_rfc_6962_test_vectors() {
        let leaves = leaves();
        for (n, expected) in ROOTS.iter().enumerate() {
            assert_eq!(hex(&root(&leaves[..n])), *expected, "size {n}");
        }
    }

    #[test]
    fn the_frontier_agrees_with_the_full_tree_at_every_size() {
        let many: Vec<Hash> = (0..130u32).map(|i| leaf_hash(&i.to_le_bytes())).collect();
        let mut frontier = Frontier::new();
        assert_eq!(frontier.root(), root(&[]));
        for (n, leaf) in many.iter().enumerate() {
            frontier.append(*leaf);
            assert_eq!(frontier.size(), n as u64 + 1);
            assert_eq!(frontier.root(), root(&many[..=n]), "size {}", n + 1);
        }
        let mut reference = Frontier::new();
        for l in leaves() {
            reference.append(l);
        }
        assert_eq!(hex(&reference.root()), ROOTS[8]);
    }

    #[test]
    fn inclusion_proof_matches_the_reference() {
        let proof = inclusion_proof(0, &leaves()).unwrap();
        let expected = [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ];
        assert_eq!(proof.iter().map(hex).collect::<Vec<_>>(), expected);
    }

    #[test]
    fn every_inclusion_and_consistency_proof_verifies_and_nothing_else_does() {
        let leaves: Vec<Hash> = (0..37u32).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        for n in 1..=leaves.len() {
            let tree = &leaves[..n];
            let r = root(tree);
            for i in 0..n {
                let proof = inclusion_proof(i, tree).unwrap();
                assert!(
                    verify_inclusion(i as u64, n as u64, &tree[i], &proof, &r),
                    "{i} in {n}"
                );
                let other = (i + 1) % n;
                if other != i {
                    assert!(!verify_inclusion(
                        i as u64,
                        n as u64,
                        &tree[other],
                        &proof,
                        &r
                    ));
                }
            }
            for m in 1..=n {
                let proof = consistency_proof(m, tree).unwrap();
                let rm = root(&tree[..m]);
                assert!(
                    verify_consistency(m as u64, n as u64, &rm, &r, &proof),
                    "{m} -> {n}"
                );
                if m < n {
                    let mut bad = rm;
                    bad[0] ^= 1;
                    assert!(!verify_consistency(m as u64, n as u64, &bad, &r, &proof));
                }
            }
        }
    }
}
