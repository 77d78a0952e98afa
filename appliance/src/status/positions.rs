//! [`PositionCursor`]: hands new credentials their status-list positions
//! from blocks the registry reserved, and reserves the next block on a
//! thread of its own before the current one runs out. A reservation is a
//! write transaction; made on an issuance's path under the cursor's lock,
//! it stalled every signing thread behind one commit, once a block.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crate::store::{Registry, StatusPositions, StoreError};

/// Positions reserved from the registry at a time (positions a node
/// reserved and never used stay valid: harmless decoys).
pub(super) const BLOCK: u64 = 128;
/// The next block is reserved when the current one has fewer left than
/// this: at 2,000 issuances/s, 32 ms for a reservation to commit.
const LOW_WATER: usize = 64;

#[derive(Default)]
struct State {
    /// Positions not handed out yet, the next one last.
    current: Option<StatusPositions>,
    /// The block reserved ahead.
    next: Option<StatusPositions>,
    /// A reservation is under way.
    refilling: bool,
}

struct Shared {
    state: Mutex<State>,
    /// Signalled when a reservation ends.
    refilled: Condvar,
    registry: Arc<dyn Registry>,
}

/// The cursor over this node's reserved positions.
pub(super) struct PositionCursor {
    shared: Arc<Shared>,
}

fn poisoned() -> StoreError {
    StoreError::Internal("status cursor poisoned".into())
}

fn reversed(mut block: StatusPositions) -> StatusPositions {
    block.indexes.reverse();
    block
}

impl Shared {
    fn lock(&self) -> Result<MutexGuard<'_, State>, StoreError> {
        self.state.lock().map_err(|_| poisoned())
    }

    /// Reserves a block and stores it ahead; wakes whoever waits.
    fn refill(&self) -> Result<(), StoreError> {
        let reserved = self.registry.reserve_status_indexes(BLOCK).map(reversed);
        let mut state = self.lock()?;
        state.refilling = false;
        self.refilled.notify_all();
        state.next = Some(reserved?);
        Ok(())
    }
}

impl PositionCursor {
    /// A cursor reserving from `registry`.
    pub(super) fn new(registry: Arc<dyn Registry>) -> Self {
        PositionCursor {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                refilled: Condvar::new(),
                registry,
            }),
        }
    }

    /// The next position (list, index). Waits for a reservation only when
    /// none is left (at start, or when issuance outran the one ahead).
    pub(super) fn next(&self) -> Result<(u32, u64), StoreError> {
        let mut state = self.shared.lock()?;
        loop {
            if state.current.as_ref().is_none_or(|c| c.indexes.is_empty()) {
                state.current = state.next.take();
            }
            if let Some(block) = state.current.as_mut()
                && let Some(index) = block.indexes.pop()
            {
                let position = (block.list, index);
                let low = block.indexes.len() < LOW_WATER;
                if low && state.next.is_none() && !state.refilling {
                    state.refilling = true;
                    drop(state);
                    self.refill_in_background();
                }
                return Ok(position);
            }
            if state.refilling {
                state = self.shared.refilled.wait(state).map_err(|_| poisoned())?;
                continue;
            }
            // Nothing left and nothing coming: reserve on this request.
            state.refilling = true;
            drop(state);
            self.shared.refill()?;
            state = self.shared.lock()?;
        }
    }

    fn refill_in_background(&self) {
        let shared = self.shared.clone();
        let spawned = std::thread::Builder::new()
            .name("dojang-status-reserve".into())
            .spawn(move || {
                if let Err(e) = shared.refill() {
                    // The next issuance that finds no position reserves
                    // on its own path and reports the error to its caller.
                    tracing::warn!(error = %e, "reserving status-list positions ahead");
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "no thread to reserve status-list positions ahead");
            if let Ok(mut state) = self.shared.state.lock() {
                state.refilling = false;
                self.shared.refilled.notify_all();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use std::collections::HashSet;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::store::SqliteRegistry;

    /// The registry's files, removed when the test ends.
    struct Scratch(std::path::PathBuf);

    impl Drop for Scratch {
        fn drop(&mut self) {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", self.0.display()));
            }
        }
    }

    fn cursor(name: &str) -> (Scratch, PositionCursor) {
        let path =
            std::env::temp_dir().join(format!("dojang-positions-{}-{name}.db", std::process::id()));
        let scratch = Scratch(path);
        let registry = SqliteRegistry::open(&scratch.0).unwrap();
        (scratch, PositionCursor::new(Arc::new(registry)))
    }

    #[test]
    fn positions_from_many_threads_across_many_blocks_are_never_handed_out_twice() {
        let (_scratch, cursor) = cursor("threads");
        let taken: Vec<(u32, u64)> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    scope.spawn(|| (0..300).map(|_| cursor.next().unwrap()).collect::<Vec<_>>())
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        });
        assert_eq!(taken.len(), 2400);
        assert_eq!(
            taken.iter().collect::<HashSet<_>>().len(),
            2400,
            "a position twice"
        );
    }

    #[test]
    fn the_next_block_is_reserved_ahead_once_the_current_one_runs_low() {
        let (_scratch, cursor) = cursor("ahead");
        let _ = cursor.next().unwrap();
        assert!(cursor.shared.state.lock().unwrap().next.is_none());
        for _ in 0..(BLOCK as usize - LOW_WATER) {
            let _ = cursor.next().unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while cursor.shared.state.lock().unwrap().next.is_none() {
            assert!(Instant::now() < deadline, "no block reserved ahead");
            std::thread::sleep(Duration::from_millis(5));
        }
        let state = cursor.shared.state.lock().unwrap();
        assert_eq!(state.current.as_ref().unwrap().indexes.len(), LOW_WATER - 1);
        assert_eq!(state.next.as_ref().unwrap().indexes.len(), BLOCK as usize);
        assert!(!state.refilling);
    }
}
