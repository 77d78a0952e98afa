//! Group commit for the common issuance: a caller that finds fewer than
//! `leaders_max` groups being written leads one. It takes every issuance
//! queued at that moment (its own among them, up to [`GROUP_MAX`]), writes
//! them with one statement and one commit, and hands each caller its
//! outcome; the others wait for theirs. Nothing waits for a group to fill:
//! a caller alone leads a group of one at once, so a quiet node answers as
//! fast as before, and groups grow only while statements are in flight.
//!
//! One statement per issuance was most of PostgreSQL's CPU per issuance:
//! pgbench on a 2-core machine, the issuance statement with the same
//! tables and indexes, ~5,300 issuances/s one per statement against
//! ~17,000–22,000/s eight per statement.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use crate::store::StoreError;

/// Issuances one group writes at most.
pub(super) const GROUP_MAX: usize = 32;

/// What a group's writer says of each of its issuances: written, or not
/// (`Ok(false)`: the caller goes on alone, in a transaction).
pub(super) type Outcome = Result<bool, StoreError>;

struct State<J> {
    queue: VecDeque<(u64, J)>,
    outcomes: HashMap<u64, Outcome>,
    next_ticket: u64,
    leaders: usize,
}

/// Issuances waiting to be written, and the groups being written.
pub(super) struct Group<J> {
    state: Mutex<State<J>>,
    changed: Condvar,
    leaders_max: usize,
    /// Issuances written in groups of two or more.
    grouped: AtomicU64,
}

impl<J> Group<J> {
    /// At most `leaders_max` groups written at once (at least one).
    pub(super) fn new(leaders_max: usize) -> Self {
        Group {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                outcomes: HashMap::new(),
                next_ticket: 0,
                leaders: 0,
            }),
            changed: Condvar::new(),
            leaders_max: leaders_max.max(1),
            grouped: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<J>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Issuances written so far in groups of two or more.
    pub(super) fn grouped(&self) -> u64 {
        self.grouped.load(Ordering::Relaxed)
    }

    /// Queues `job` and returns its outcome, writing a group with `write`
    /// (one outcome per job, in order) when this caller leads one.
    pub(super) fn run(&self, job: J, write: impl Fn(Vec<J>) -> Vec<Outcome>) -> Outcome {
        let mut state = self.lock();
        let ticket = state.next_ticket;
        state.next_ticket += 1;
        state.queue.push_back((ticket, job));
        loop {
            if let Some(outcome) = state.outcomes.remove(&ticket) {
                return outcome;
            }
            // Only a caller whose own issuance is still queued leads: one
            // already in a group being written would wait for a later group
            // before it could answer. Tickets leave the queue in order.
            let queued = state.queue.front().is_some_and(|(t, _)| *t <= ticket);
            if state.leaders < self.leaders_max && queued {
                state.leaders += 1;
                let take = state.queue.len().min(GROUP_MAX);
                let (tickets, jobs): (Vec<u64>, Vec<J>) = state.queue.drain(..take).unzip();
                drop(state);
                let outcomes = self.write_group(jobs, &write);
                state = self.lock();
                state.leaders -= 1;
                let mut outcomes = outcomes.into_iter();
                for t in tickets {
                    let outcome = outcomes.next().unwrap_or_else(|| {
                        Err(StoreError::Internal(
                            "a group lost an issuance's outcome".into(),
                        ))
                    });
                    let _ = state.outcomes.insert(t, outcome);
                }
                self.changed.notify_all();
                continue;
            }
            state = self
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Writes one group; a writer that panics fails its group, not the
    /// callers waiting on it (they would wait for ever).
    fn write_group(&self, jobs: Vec<J>, write: &impl Fn(Vec<J>) -> Vec<Outcome>) -> Vec<Outcome> {
        let count = jobs.len();
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| write(jobs))) {
            Ok(outcomes) => {
                if count > 1 {
                    let written = outcomes.iter().filter(|o| matches!(o, Ok(true))).count();
                    let _ = self.grouped.fetch_add(written as u64, Ordering::Relaxed);
                }
                outcomes
            }
            Err(_) => (0..count)
                .map(|_| {
                    Err(StoreError::Internal(
                        "writing an issuance group failed".into(),
                    ))
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;

    use super::*;

    #[test]
    fn a_caller_alone_writes_its_own_group_of_one() {
        let group = Group::new(2);
        let sizes = Mutex::new(Vec::new());
        let outcome = group.run(7u32, |jobs| {
            sizes.lock().unwrap().push(jobs.len());
            jobs.iter().map(|&j| Ok(j == 7)).collect()
        });
        assert!(outcome.unwrap());
        assert_eq!(*sizes.lock().unwrap(), [1]);
        assert_eq!(group.grouped(), 0);
    }

    #[test]
    fn callers_arriving_while_the_leaders_write_go_in_one_group_each_with_its_outcome() {
        let group = Arc::new(Group::new(1));
        let in_write = Arc::new(AtomicUsize::new(0));
        let release = Arc::new((Mutex::new(false), Condvar::new()));
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let write = {
            let (in_write, release, sizes) = (in_write.clone(), release.clone(), sizes.clone());
            move |jobs: Vec<u32>| {
                sizes.lock().unwrap().push(jobs.len());
                if in_write.fetch_add(1, Ordering::SeqCst) == 0 {
                    // The first group holds the only leader's place while
                    // the others queue.
                    let (open, cv) = &*release;
                    let mut open = open.lock().unwrap();
                    while !*open {
                        open = cv.wait(open).unwrap();
                    }
                }
                // Odd jobs are "not written": their callers go on alone.
                jobs.iter().map(|j| Ok(j % 2 == 0)).collect::<Vec<_>>()
            }
        };
        let spawn = |job: u32| {
            let (group, write) = (group.clone(), write.clone());
            std::thread::spawn(move || (job, group.run(job, write).unwrap()))
        };
        let first = spawn(0);
        while in_write.load(Ordering::SeqCst) == 0 {
            std::thread::yield_now();
        }
        let rest: Vec<_> = (1..=5).map(spawn).collect();
        while group.lock().queue.len() < 5 {
            std::thread::yield_now();
        }
        *release.0.lock().unwrap() = true;
        release.1.notify_all();
        for handle in std::iter::once(first).chain(rest) {
            let (job, written) = handle.join().unwrap();
            assert_eq!(written, job % 2 == 0, "job {job}");
        }
        assert_eq!(*sizes.lock().unwrap(), [1, 5]);
        // Of the group of five, jobs 2 and 4 were written.
        assert_eq!(group.grouped(), 2);
    }

    #[test]
    fn a_writer_that_panics_fails_its_group_and_the_next_caller_still_leads() {
        let group = Group::new(1);
        let failed = group.run(1u32, |_| panic!("writer bug"));
        assert!(matches!(failed, Err(StoreError::Internal(_))));
        assert!(
            group
                .run(2u32, |jobs| jobs.iter().map(|_| Ok(true)).collect())
                .unwrap()
        );
    }
}
