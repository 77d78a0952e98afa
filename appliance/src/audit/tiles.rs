//! The log as tiles (c2sp.org/tlog-tiles): tile level 0 holds leaf hashes,
//! tile level `L` the roots of the perfect subtrees of `256^L` leaves. Any
//! hash of the tree is the root of at most 128 consecutive hashes of one
//! tile, so a root, a proof or the frontier reads O(log n) tiles instead
//! of every leaf. Tiles and entry bundles are named in
//! [`tile_path`](super::tile_path); what stores the hashes is a
//! [`HashSource`] (the registry: leaf hashes from the log, higher levels
//! from the hashes checkpoints store).

use std::cell::RefCell;
use std::collections::HashMap;

use super::merkle::{Frontier, Hash, TILE_HEIGHT, node_hash, root};
use super::tile_path::{TILE_WIDTH, TileId};
use crate::store::{Registry, StoreError};

/// Where a tree's hashes come from.
pub trait HashSource {
    /// Hashes `start..end` of tile level `level` (0: leaf hashes); fewer
    /// where the store has fewer.
    fn hashes(&self, level: u8, start: u64, end: u64) -> Result<Vec<Hash>, StoreError>;

    /// Several ranges `(level, start, end)` at once (one round trip where
    /// the store can).
    fn many(&self, ranges: &[(u8, u64, u64)]) -> Result<Vec<Vec<Hash>>, StoreError> {
        ranges
            .iter()
            .map(|&(level, start, end)| self.hashes(level, start, end))
            .collect()
    }

    /// The root of leaves `lo..hi` if it is known without reading.
    fn known_root(&self, _lo: u64, _hi: u64) -> Option<Hash> {
        None
    }

    /// Keeps the root of leaves `lo..hi`, a range at a tree's right edge:
    /// every proof at that tree size needs it, from partial tiles read
    /// hash by hash.
    fn keep_root(&self, _lo: u64, _hi: u64, _root: Hash) {}
}

/// The registry's audit log as a [`HashSource`].
pub struct LogHashes<'a>(pub &'a dyn Registry);

impl HashSource for LogHashes<'_> {
    fn hashes(&self, level: u8, start: u64, end: u64) -> Result<Vec<Hash>, StoreError> {
        if level == 0 {
            self.0.audit_leaves(start, end)
        } else {
            self.0.audit_tile_hashes(level, start, end)
        }
    }

    fn many(&self, ranges: &[(u8, u64, u64)]) -> Result<Vec<Vec<Hash>>, StoreError> {
        self.0.audit_hash_ranges(ranges)
    }

    fn known_root(&self, lo: u64, hi: u64) -> Option<Hash> {
        self.0.audit_known_root(lo, hi)
    }

    fn keep_root(&self, lo: u64, hi: u64, root: Hash) {
        self.0.keep_audit_edge_root(lo, hi, root);
    }
}

/// Why a tree's hashes cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The store lacks hashes the tree needs (tile hashes not yet stored
    /// for an older log, or rows deleted).
    #[error("the log's store lacks tile level {level} hashes from {start}")]
    Missing {
        /// Tile level.
        level: u8,
        /// First missing index.
        start: u64,
    },
    /// A stored tile does not hash to the root above it that the source
    /// knows (the upper tree, checked against the signed root): the row
    /// was rewritten after it was stored.
    #[error("the stored tile {level}/{index} does not hash to the signed tree (rewritten)")]
    Rewritten {
        /// Tile level.
        level: u8,
        /// Tile index.
        index: u64,
    },
}

/// The largest power of two strictly below `n` (`n >= 2`).
fn split(n: u64) -> u64 {
    1 << (63 - (n - 1).leading_zeros())
}

/// Reads a tree's hashes tile by tile, each tile once per reader.
pub struct TreeReader<'a> {
    source: &'a dyn HashSource,
    /// Ranges read, by (level, start, end): exactly the hashes a subtree
    /// or a tile is made of, no more (rows, not round trips, dominate).
    ranges: RefCell<HashMap<(u8, u64, u64), Vec<Hash>>>,
}

/// The hash range a perfect subtree `(height, index)` is the root of.
fn subtree_range(height: u32, index: u64) -> (u8, u64, u64) {
    let level = (height / TILE_HEIGHT) as u8;
    let below = height % TILE_HEIGHT;
    let start = index << below;
    (level, start, start + (1 << below))
}

impl<'a> TreeReader<'a> {
    /// A reader over `source`.
    pub fn new(source: &'a dyn HashSource) -> Self {
        TreeReader {
            source,
            ranges: RefCell::new(HashMap::new()),
        }
    }

    /// Hashes `start..end` of tile level `level` (within one tile).
    fn run(&self, level: u8, start: u64, end: u64) -> Result<Vec<Hash>, TreeError> {
        let key = (level, start, end);
        let cached = self.ranges.borrow().get(&key).cloned();
        let hashes = match cached {
            Some(hashes) => hashes,
            None => {
                let read = self.source.many(&[key])?.pop().unwrap_or_default();
                let _ = self.ranges.borrow_mut().insert(key, read.clone());
                read
            }
        };
        if hashes.len() as u64 != end - start {
            return Err(TreeError::Missing {
                level,
                start: start + hashes.len() as u64,
            });
        }
        Ok(hashes)
    }

    /// Reads, in one round trip, the hashes of every perfect subtree
    /// `(height, index)` this reader has not read yet: one range per tile
    /// they fall in (from the first hash wanted to the last), so a proof
    /// at any size reads a few ranges — one or two per tile level — in a
    /// single query, not one range per proof hash.
    pub fn prefetch(&self, subtrees: &[(u32, u64)]) -> Result<(), TreeError> {
        let mut wanted: Vec<(u8, u64, u64)> = subtrees
            .iter()
            .filter(|&&(height, index)| self.known_subtree(height, index).is_none())
            .map(|&(height, index)| subtree_range(height, index))
            .filter(|key| !self.ranges.borrow().contains_key(key))
            .collect();
        wanted.sort_unstable();
        wanted.dedup();
        if wanted.is_empty() {
            return Ok(());
        }
        // Hashes below the last one wanted in a tile are all stored: a
        // tile fills from the left.
        let mut spans: Vec<(u8, u64, u64)> = Vec::new();
        for &(level, start, end) in &wanted {
            match spans.last_mut() {
                Some((l, s, e)) if *l == level && *s / TILE_WIDTH == start / TILE_WIDTH => {
                    *e = (*e).max(end);
                }
                _ => spans.push((level, start, end)),
            }
        }
        let read = self.source.many(&spans)?;
        let mut ranges = self.ranges.borrow_mut();
        for (&(level, start, end), hashes) in spans.iter().zip(&read) {
            for &(l, a, b) in wanted
                .iter()
                .filter(|&&(l, a, _)| l == level && a >= start && a < end)
            {
                // A span the store answered short leaves its ranges short:
                // `run` reports what is missing.
                let piece = hashes
                    .get((a - start) as usize..)
                    .unwrap_or_default()
                    .iter()
                    .take((b - a) as usize)
                    .copied()
                    .collect();
                let _ = ranges.insert((l, a, b), piece);
            }
        }
        Ok(())
    }

    /// The perfect subtrees `range_root(lo, hi)` is made of.
    fn range_subtrees(lo: u64, hi: u64, out: &mut Vec<(u32, u64)>) {
        let n = hi - lo;
        if n == 0 {
            return;
        }
        if n.is_power_of_two() && lo % n == 0 {
            out.push((n.trailing_zeros(), lo / n));
            return;
        }
        let k = split(n);
        Self::range_subtrees(lo, lo + k, out);
        Self::range_subtrees(lo + k, hi, out);
    }

    /// Prefetches the tiles of `ranges` (and of `extra` subtrees).
    fn prefetch_ranges(
        &self,
        ranges: &[(u64, u64)],
        extra: &[(u32, u64)],
    ) -> Result<(), TreeError> {
        let mut subtrees = extra.to_vec();
        for &(lo, hi) in ranges {
            if self.source.known_root(lo, hi).is_none() {
                Self::range_subtrees(lo, hi, &mut subtrees);
            }
        }
        self.prefetch(&subtrees)
    }

    /// The root of a perfect subtree above a tile's leaves that the
    /// source knows without reading.
    fn known_subtree(&self, height: u32, index: u64) -> Option<Hash> {
        (height >= TILE_HEIGHT)
            .then(|| {
                self.source
                    .known_root(index << height, (index + 1) << height)
            })
            .flatten()
    }

    /// The root of the perfect subtree of `2^height` leaves at `index`.
    pub fn subtree(&self, height: u32, index: u64) -> Result<Hash, TreeError> {
        if let Some(root) = self.known_subtree(height, index) {
            return Ok(root);
        }
        // 2^(height % 8) <= 128 hashes, aligned: always within one tile.
        let (level, start, end) = subtree_range(height, index);
        Ok(root(&self.run(level, start, end)?))
    }

    /// The root of the tree over leaves `lo..hi` as RFC 9162 splits it.
    pub fn range_root(&self, lo: u64, hi: u64) -> Result<Hash, TreeError> {
        if let Some(root) = self.source.known_root(lo, hi) {
            return Ok(root);
        }
        let n = hi - lo;
        if n.is_power_of_two() && lo % n == 0 {
            return self.subtree(n.trailing_zeros(), lo / n);
        }
        if n == 0 {
            return Ok(root(&[]));
        }
        let k = split(n);
        Ok(node_hash(
            &self.range_root(lo, lo + k)?,
            &self.range_root(lo + k, hi)?,
        ))
    }

    /// The frontier of the first `size` leaves.
    pub fn frontier(&self, size: u64) -> Result<Frontier, TreeError> {
        let mut subtrees = Vec::new();
        let mut lo = 0;
        for height in (0..u64::BITS).rev().filter(|h| size >> h & 1 == 1) {
            subtrees.push((height, lo >> height));
            lo += 1 << height;
        }
        self.prefetch(&subtrees)?;
        let roots = subtrees
            .iter()
            .map(|&(height, index)| self.subtree(height, index))
            .collect::<Result<Vec<_>, _>>()?;
        Frontier::from_subtrees(size, roots).ok_or(TreeError::Store(StoreError::Internal(
            "a frontier with the wrong number of subtrees".into(),
        )))
    }

    /// The inclusion proof of leaf `index` in the tree of `size` leaves
    /// (RFC 9162 §2.1.3.1), leaf first; `index < size`.
    pub fn inclusion(&self, index: u64, size: u64) -> Result<Vec<Hash>, TreeError> {
        let mut proof = Vec::new();
        let (mut lo, mut hi) = (0, size);
        let mut siblings = Vec::new();
        while hi - lo > 1 {
            let k = split(hi - lo);
            if index < lo + k {
                siblings.push((lo + k, hi));
                hi = lo + k;
            } else {
                siblings.push((lo, lo + k));
                lo += k;
            }
        }
        self.prefetch_ranges(&siblings, &[(0, index)])?;
        for (a, b) in siblings.into_iter().rev() {
            proof.push(self.edge_aware_root(a, b, size)?);
        }
        self.check_leaf_tile(index, size, &proof)?;
        Ok(proof)
    }

    /// Folds the leaf and the proof's first eight hashes (its siblings in
    /// a full tile) to the tile's root; where the source knows that root,
    /// a leaf tile rewritten in the store is refused, not proved from.
    fn check_leaf_tile(&self, index: u64, size: u64, proof: &[Hash]) -> Result<(), TreeError> {
        let lo = index - index % TILE_WIDTH;
        if lo + TILE_WIDTH > size {
            return Ok(());
        }
        let Some(expected) = self.known_subtree(TILE_HEIGHT, lo / TILE_WIDTH) else {
            return Ok(());
        };
        let mut hash = self.subtree(0, index)?;
        for (bit, sibling) in proof.iter().take(TILE_HEIGHT as usize).enumerate() {
            hash = if index >> bit & 1 == 1 {
                node_hash(sibling, &hash)
            } else {
                node_hash(&hash, sibling)
            };
        }
        if hash == expected {
            return Ok(());
        }
        Err(TreeError::Rewritten {
            level: 0,
            index: lo / TILE_WIDTH,
        })
    }

    /// The consistency proof from the tree of `from` leaves to the tree of
    /// `to` (RFC 9162 §2.1.4.1); `0 < from <= to`.
    pub fn consistency(&self, from: u64, to: u64) -> Result<Vec<Hash>, TreeError> {
        let mut proof = Vec::new();
        if from == to {
            return Ok(proof);
        }
        let (mut lo, mut hi, mut complete) = (0, to, true);
        let mut siblings = Vec::new();
        while from - lo != hi - lo {
            let k = split(hi - lo);
            if from - lo <= k {
                siblings.push((lo + k, hi));
                hi = lo + k;
            } else {
                siblings.push((lo, lo + k));
                lo += k;
                complete = false;
            }
        }
        let last = [(lo, hi)];
        let inner: &[(u64, u64)] = if complete { &[] } else { &last };
        self.prefetch_ranges(&[siblings.as_slice(), inner].concat(), &[])?;
        if !complete {
            proof.push(self.edge_aware_root(lo, hi, to)?);
        }
        for (a, b) in siblings.into_iter().rev() {
            proof.push(self.edge_aware_root(a, b, to)?);
        }
        Ok(proof)
    }

    /// The root of `lo..hi` in the tree of `size` leaves, kept by the
    /// source when the range ends at the tree's right edge.
    fn edge_aware_root(&self, lo: u64, hi: u64, size: u64) -> Result<Hash, TreeError> {
        let root = self.range_root(lo, hi)?;
        if hi == size {
            self.source.keep_root(lo, hi, root);
        }
        Ok(root)
    }

    /// The hashes of a tile, as served (`width * 32` bytes).
    /// A full tile whose root the source knows is checked against it.
    pub fn tile(&self, tile: TileId) -> Result<Vec<u8>, TreeError> {
        let start = tile.index * TILE_WIDTH;
        let hashes = self.run(tile.level, start, start + tile.width)?;
        let above = TILE_HEIGHT * (u32::from(tile.level) + 1);
        if tile.width == TILE_WIDTH
            && self
                .known_subtree(above, tile.index)
                .is_some_and(|expected| root(&hashes) != expected)
        {
            return Err(TreeError::Rewritten {
                level: tile.level,
                index: tile.index,
            });
        }
        Ok(hashes.concat())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::merkle::{self, leaf_hash};

    /// Every tile hash of a log of `leaves`, as a checkpointing node stores them.
    struct Memory {
        levels: Vec<Vec<Hash>>,
    }

    impl Memory {
        fn of(leaves: &[Hash]) -> Self {
            let mut frontier = Frontier::new();
            let mut levels = vec![leaves.to_vec(), Vec::new(), Vec::new()];
            for leaf in leaves {
                frontier.append(*leaf);
            }
            for (level, index, hash) in frontier.take_tile_hashes() {
                assert_eq!(levels[level as usize].len() as u64, index, "in order");
                levels[level as usize].push(hash);
            }
            Memory { levels }
        }
    }

    impl HashSource for Memory {
        fn hashes(&self, level: u8, start: u64, end: u64) -> Result<Vec<Hash>, StoreError> {
            let hashes = &self.levels[level as usize];
            let end = (end as usize).min(hashes.len());
            Ok(hashes.get(start as usize..end).unwrap_or(&[]).to_vec())
        }
    }

    /// Counts round trips to the source.
    struct Counted<'a>(&'a Memory, std::cell::Cell<u32>);

    impl HashSource for Counted<'_> {
        fn hashes(&self, level: u8, start: u64, end: u64) -> Result<Vec<Hash>, StoreError> {
            self.1.set(self.1.get() + 1);
            self.0.hashes(level, start, end)
        }

        fn many(&self, ranges: &[(u8, u64, u64)]) -> Result<Vec<Vec<Hash>>, StoreError> {
            self.1.set(self.1.get() + 1);
            ranges
                .iter()
                .map(|&(l, s, e)| self.0.hashes(l, s, e))
                .collect()
        }
    }

    #[test]
    fn a_proof_or_a_frontier_reads_its_tiles_in_one_round_trip() {
        let memory = Memory::of(&leaves(70_001));
        for size in [3u64, 257, 70_001] {
            let counted = Counted(&memory, std::cell::Cell::new(0));
            let _ = TreeReader::new(&counted).inclusion(size / 2, size).unwrap();
            let _ = TreeReader::new(&counted)
                .consistency(size / 3 + 1, size)
                .unwrap();
            let _ = TreeReader::new(&counted).frontier(size).unwrap();
            assert_eq!(counted.1.get(), 3, "size {size}");
        }
    }

    /// Keeps edge roots, as the registry does, and counts hashes read.
    struct Keeping<'a>(
        &'a Memory,
        RefCell<HashMap<(u64, u64), Hash>>,
        std::cell::Cell<usize>,
    );

    impl HashSource for Keeping<'_> {
        fn hashes(&self, level: u8, start: u64, end: u64) -> Result<Vec<Hash>, StoreError> {
            let read = self.0.hashes(level, start, end)?;
            self.2.set(self.2.get() + read.len());
            Ok(read)
        }

        fn known_root(&self, lo: u64, hi: u64) -> Option<Hash> {
            self.1.borrow().get(&(lo, hi)).copied()
        }

        fn keep_root(&self, lo: u64, hi: u64, root: Hash) {
            let _ = self.1.borrow_mut().insert((lo, hi), root);
        }
    }

    #[test]
    fn proofs_at_one_size_read_its_right_edge_once() {
        let all = leaves(70_001);
        let memory = Memory::of(&all);
        let keeping = Keeping(&memory, RefCell::default(), std::cell::Cell::new(0));
        let read = |index: u64, size: u64| {
            let before = keeping.2.get();
            let proof = TreeReader::new(&keeping).inclusion(index, size).unwrap();
            assert_eq!(
                Some(proof),
                merkle::inclusion_proof(index as usize, &all[..size as usize])
            );
            keeping.2.get() - before
        };
        let cold = Keeping(&memory, RefCell::default(), std::cell::Cell::new(0));
        let _ = TreeReader::new(&cold).inclusion(300, 70_001).unwrap();
        let _ = read(5, 70_001);
        // The edge: the last 113 leaves (70,001 - 273 * 256) and the last 17
        // level-1 hashes (273 - 256), read once for the size.
        assert_eq!(read(300, 70_001), cold.2.get() - 113 - 17);
        // Kept roots serve other sizes only where they are the same range.
        for size in [65_537, 70_000, 69_999] {
            for index in [0, size / 2, size - 1] {
                let _ = read(index, size);
                for from in [1, size / 3, size - 1] {
                    assert_eq!(
                        Some(TreeReader::new(&keeping).consistency(from, size).unwrap()),
                        merkle::consistency_proof(from as usize, &all[..size as usize]),
                        "consistency {from} to {size}"
                    );
                }
            }
        }
    }

    fn leaves(n: u64) -> Vec<Hash> {
        (0..n).map(|i| leaf_hash(&i.to_be_bytes())).collect()
    }

    #[test]
    fn tiled_proofs_equal_the_proofs_over_every_leaf() {
        let all = leaves(70_000);
        let memory = Memory::of(&all);
        assert_eq!(
            memory.levels[2].len(),
            1,
            "one level-2 hash per 65,536 leaves"
        );
        let reader = TreeReader::new(&memory);
        let sizes = [
            1u64, 2, 3, 255, 256, 257, 511, 65_535, 65_536, 65_537, 70_000,
        ];
        for &size in &sizes {
            let prefix = &all[..size as usize];
            assert_eq!(reader.range_root(0, size).unwrap(), merkle::root(prefix));
            assert_eq!(reader.frontier(size).unwrap().root(), merkle::root(prefix));
            for index in [0, size / 3, size - 1] {
                let proof = reader.inclusion(index, size).unwrap();
                assert_eq!(
                    Some(proof),
                    merkle::inclusion_proof(index as usize, prefix),
                    "inclusion {index} in {size}"
                );
            }
            for &from in sizes.iter().filter(|&&m| m <= size) {
                assert_eq!(
                    Some(reader.consistency(from, size).unwrap()),
                    merkle::consistency_proof(from as usize, prefix),
                    "consistency {from} to {size}"
                );
            }
        }
    }

    #[test]
    fn a_store_missing_tile_hashes_says_which() {
        let mut memory = Memory::of(&leaves(600));
        memory.levels[1].clear();
        let reader = TreeReader::new(&memory);
        assert!(matches!(
            reader.frontier(600),
            Err(TreeError::Missing { level: 1, start: 0 })
        ));
    }
}
