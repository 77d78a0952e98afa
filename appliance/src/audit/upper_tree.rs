//! The tree's hashes from one tile level up, kept in memory: every perfect
//! subtree of at least `256^level` leaves that the log has completed. A
//! proof then reads one tile of leaf hashes and hashes within it, as at
//! 10^3 entries, whatever the size (issue 15: proof time flat with size).
//! The base level is the lowest that fits [`MAX_BASE`] hashes: at 10^8
//! entries level 1 (390,625 hashes, about 25 MB with the heights above).
//! What fills it is checked against a frontier (see `audit::log`).

use super::merkle::{self, Frontier, Hash, TILE_HEIGHT};

/// Base hashes kept at most: 16 MiB, and as much again above them.
pub const MAX_BASE: u64 = 1 << 19;

/// Perfect subtree roots from tile level `level` up.
#[derive(Debug, Default)]
pub struct UpperTree {
    /// Tile level of the base hashes; 0 while empty.
    level: u8,
    /// `heights[k][i]`: the root of subtree `i` of height
    /// `8 * level + k`, from index 0 without a gap.
    heights: Vec<Vec<Hash>>,
}

impl UpperTree {
    /// The base level for a log of `size` entries: the lowest (from 1)
    /// whose hashes fit [`MAX_BASE`].
    pub fn level_for(size: u64) -> u8 {
        (1..=7)
            .find(|&level| size >> (TILE_HEIGHT * u32::from(level)) <= MAX_BASE)
            .unwrap_or(8)
    }

    /// Tile level of the base hashes (0: empty).
    pub fn level(&self) -> u8 {
        self.level
    }

    /// Base hashes held.
    pub fn len(&self) -> u64 {
        self.heights.first().map_or(0, |base| base.len() as u64)
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn base_height(&self) -> u32 {
        TILE_HEIGHT * u32::from(self.level)
    }

    /// Moves the base to `level`: up, the heights below it go (the ones
    /// above were rolled up from them); down or from empty, all goes.
    pub fn set_level(&mut self, level: u8) {
        if level > self.level && self.level > 0 {
            let drop = (TILE_HEIGHT * u32::from(level - self.level)) as usize;
            let _ = self.heights.drain(..drop.min(self.heights.len()));
        } else if level != self.level {
            self.heights.clear();
        }
        self.level = level;
    }

    /// Drops everything held (proofs read the store again).
    pub fn clear(&mut self) {
        *self = UpperTree::default();
    }

    /// Appends base hashes from index `len()` and rolls them up.
    pub fn extend(&mut self, hashes: &[Hash]) {
        if self.heights.is_empty() {
            self.heights.push(Vec::new());
        }
        if let Some(base) = self.heights.first_mut() {
            base.extend_from_slice(hashes);
        }
        let mut k = 0;
        while let Some(below) = self.heights.get(k) {
            let pairs = below.len() / 2;
            if pairs == 0 {
                break;
            }
            let done = self.heights.get(k + 1).map_or(0, Vec::len);
            let parents: Vec<Hash> = below
                .get(2 * done..2 * pairs)
                .unwrap_or_default()
                .chunks_exact(2)
                .map(merkle::root)
                .collect();
            if self.heights.len() == k + 1 {
                self.heights.push(Vec::new());
            }
            if let Some(above) = self.heights.get_mut(k + 1) {
                above.extend(parents);
            }
            k += 1;
        }
    }

    /// The root of the perfect subtree of `2^height` leaves at `index`, if held.
    pub fn subtree(&self, height: u32, index: u64) -> Option<Hash> {
        let k = height.checked_sub(self.base_height())?;
        if self.level == 0 {
            return None;
        }
        self.heights
            .get(k as usize)?
            .get(usize::try_from(index).ok()?)
            .copied()
    }

    /// The root of leaves `lo..hi` if it is a perfect subtree held.
    pub fn root(&self, lo: u64, hi: u64) -> Option<Hash> {
        let n = hi.checked_sub(lo)?;
        (n.is_power_of_two() && lo % n == 0)
            .then(|| self.subtree(n.trailing_zeros(), lo / n))
            .flatten()
    }

    /// Whether every subtree of `frontier` at the base height or above is
    /// held and equal: those cover every base hash of its tree, so the
    /// hashes held roll up to the frontier's root.
    pub fn agrees_with(&self, frontier: &Frontier) -> bool {
        let base = self.base_height();
        let mut lo = 0u64;
        frontier.subtrees().iter().all(|&(height, root)| {
            let held = height < base || self.subtree(height, lo >> height) == Some(root);
            lo += 1 << height;
            held
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::merkle::{leaf_hash, root};

    fn leaves(n: u64) -> Vec<Hash> {
        (0..n).map(|i| leaf_hash(&i.to_be_bytes())).collect()
    }

    /// Level-1 hashes of `leaves` (roots of each full 256).
    fn level1(leaves: &[Hash]) -> Vec<Hash> {
        leaves.chunks_exact(256).map(root).collect()
    }

    #[test]
    fn the_base_level_is_the_lowest_that_fits() {
        assert_eq!(UpperTree::level_for(0), 1);
        assert_eq!(UpperTree::level_for(100_000_000), 1);
        assert_eq!(UpperTree::level_for(MAX_BASE << 8), 1);
        assert_eq!(UpperTree::level_for((MAX_BASE << 8) + 256), 2);
    }

    #[test]
    fn held_roots_are_the_tree_s_roots_however_the_hashes_came() {
        let all = leaves(256 * 13 + 7);
        let base = level1(&all);
        let mut whole = UpperTree::default();
        whole.set_level(1);
        whole.extend(&base);
        let mut piecewise = UpperTree::default();
        piecewise.set_level(1);
        for piece in base.chunks(3) {
            piecewise.extend(piece);
        }
        for tree in [&whole, &piecewise] {
            assert_eq!(tree.len(), 13);
            for (lo, hi) in [(0, 256), (0, 512), (1024, 2048), (2048, 3072), (0, 2048)] {
                assert_eq!(
                    tree.root(lo, hi),
                    Some(root(&all[lo as usize..hi as usize]))
                );
            }
            // Below the base, not aligned, or beyond what is held.
            assert_eq!(tree.root(0, 128), None);
            assert_eq!(tree.root(256, 768), None);
            assert_eq!(tree.root(0, 4096), None);
        }
    }

    #[test]
    fn a_tree_agrees_with_its_frontier_and_not_with_an_edited_hash() {
        let all = leaves(256 * 9 + 100);
        let mut frontier = Frontier::new();
        all.iter().for_each(|leaf| frontier.append(*leaf));
        let mut tree = UpperTree::default();
        tree.set_level(1);
        tree.extend(&level1(&all));
        assert!(tree.agrees_with(&frontier));
        let mut edited = level1(&all);
        edited[8][0] ^= 1;
        let mut forged = UpperTree::default();
        forged.set_level(1);
        forged.extend(&edited);
        assert!(!forged.agrees_with(&frontier));
        // Short of the frontier: not every subtree is held.
        let mut short = UpperTree::default();
        short.set_level(1);
        short.extend(&level1(&all)[..8]);
        assert!(!short.agrees_with(&frontier));
    }

    #[test]
    fn moving_the_base_up_keeps_the_roots_above_it() {
        let all = leaves(256 * 256 * 2 + 256 * 3);
        let mut tree = UpperTree::default();
        tree.set_level(1);
        tree.extend(&level1(&all));
        tree.set_level(2);
        assert_eq!(tree.len(), 2);
        assert_eq!(tree.root(0, 65_536), Some(root(&all[..65_536])));
        assert_eq!(tree.root(0, 131_072), Some(root(&all[..131_072])));
        assert_eq!(tree.root(0, 256), None);
        tree.set_level(1);
        assert!(tree.is_empty());
        tree.extend(&level1(&all));
        tree.clear();
        assert!(tree.is_empty() && tree.level() == 0 && tree.root(0, 256).is_none());
    }
}
