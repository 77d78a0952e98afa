//! The upper tile hashes a node has read, kept in memory: a hash of tile
//! level 2 or above is never changed once stored (a different one is
//! refused), there are few of them (one per 65,536 entries), and every
//! proof needs some, so a proof at 10^8 entries reads from the database
//! about what one at 10^3 does (issue 15: proof time flat with size).
//! Beside them, the roots of the ranges at a tree's right edge: every
//! proof at one tree size needs the same ones, and the partial tiles they
//! come from are read hash by hash.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

/// Levels from which hashes are kept.
const FROM_LEVEL: u8 = 2;
/// Hashes kept at most (about 4 MB): a log of 4·10^9 entries.
const MAX_HASHES: usize = 65_536;

/// Upper tile hashes by (level, index).
#[derive(Default)]
pub(crate) struct HashCache(Mutex<HashMap<(u8, u64), [u8; 32]>>);

impl HashCache {
    /// The hashes of `(level, start, end)` if every one is kept.
    pub(crate) fn get(&self, (level, start, end): (u8, u64, u64)) -> Option<Vec<[u8; 32]>> {
        if level < FROM_LEVEL {
            return None;
        }
        let kept = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        (start..end)
            .map(|i| kept.get(&(level, i)).copied())
            .collect()
    }

    /// Keeps the hashes read for `(level, start, _)`.
    pub(crate) fn keep(&self, (level, start, _): (u8, u64, u64), hashes: &[[u8; 32]]) {
        if level < FROM_LEVEL {
            return;
        }
        let mut kept = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        for (i, hash) in (start..).zip(hashes) {
            if kept.len() >= MAX_HASHES {
                return;
            }
            let _ = kept.insert((level, i), *hash);
        }
    }
}

/// Range roots kept at most; all are dropped when full (the next proofs
/// at the latest size keep theirs again).
const MAX_EDGE_ROOTS: usize = 4096;

/// Roots of leaf ranges `(lo, hi)` at some tree's right edge.
#[derive(Default)]
pub(crate) struct EdgeRoots(Mutex<HashMap<(u64, u64), [u8; 32]>>);

impl EdgeRoots {
    /// The root of `lo..hi`, if kept.
    pub(crate) fn get(&self, lo: u64, hi: u64) -> Option<[u8; 32]> {
        let kept = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        kept.get(&(lo, hi)).copied()
    }

    /// Keeps the root of `lo..hi`.
    pub(crate) fn keep(&self, lo: u64, hi: u64, root: [u8; 32]) {
        let mut kept = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if kept.len() >= MAX_EDGE_ROOTS {
            kept.clear();
        }
        let _ = kept.insert((lo, hi), root);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_upper_levels_are_kept_and_a_range_is_served_whole_or_not() {
        let cache = HashCache::default();
        cache.keep((1, 0, 2), &[[1; 32], [2; 32]]);
        assert_eq!(cache.get((1, 0, 2)), None);
        cache.keep((2, 10, 12), &[[3; 32], [4; 32]]);
        assert_eq!(cache.get((2, 10, 12)), Some(vec![[3; 32], [4; 32]]));
        assert_eq!(cache.get((2, 11, 12)), Some(vec![[4; 32]]));
        assert_eq!(cache.get((2, 10, 13)), None);
    }

    #[test]
    fn edge_roots_are_kept_until_full_then_start_again() {
        let roots = EdgeRoots::default();
        for hi in 1..=MAX_EDGE_ROOTS as u64 {
            roots.keep(0, hi, [1; 32]);
        }
        assert_eq!(roots.get(0, 7), Some([1; 32]));
        roots.keep(5, 9, [2; 32]);
        assert_eq!(roots.get(0, 7), None);
        assert_eq!(roots.get(5, 9), Some([2; 32]));
    }
}
