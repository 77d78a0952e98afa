//! This process's audit numbers. A decision takes its node's next number
//! from memory when it is written — never the database's `MAX + 1`, which
//! would let a deleted entry's number be taken again without a trace — and
//! is sealed ([`crate::audit::seal`]) before it reaches the database.
//!
//! What happens to a number whose transaction does not commit is the
//! driver's: SQLite's single writer gives it back (nothing else took one
//! meanwhile); on PostgreSQL, where transactions run side by side, it is
//! lost and a void entry takes its place in the log (`postgres::sequencer`).
//! Numbers that committed are remembered until the daemon's integrity
//! check has found them in the log ([`crate::audit::integrity`]).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use crate::audit::entry::AuditEntry;
use crate::audit::seal::Sealer;
use crate::store::StoreError;

/// Committed numbers remembered per node at most: beyond it (a daemon
/// whose checkpoints have failed for a long time) the oldest are forgotten
/// and only the log's own rules (gaps, seals) protect them.
const REMEMBERED_MAX: usize = 1_000_000;

/// Numbers taken by one transaction: (node, number).
pub(crate) type Taken = Vec<(String, u64)>;

/// A number given up: (node, number, why — the rule of its void entry).
pub(crate) type Lost = (String, u64, &'static str);

/// Each node's next number, the seal, and what became of taken numbers.
#[derive(Default)]
pub(crate) struct Numbering {
    sealer: OnceLock<Arc<Sealer>>,
    /// Each node's next number, and whether to ask the database first.
    next: Mutex<HashMap<String, (u64, bool)>>,
    committed: Mutex<HashMap<String, BTreeSet<u64>>>,
    lost: Mutex<Vec<Lost>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Numbering {
    /// Seals every later entry with `sealer`; the first one set stays.
    pub(crate) fn set_sealer(&self, sealer: Arc<Sealer>) {
        let _ = self.sealer.set(sealer);
    }

    /// The sealer, if one was set.
    pub(crate) fn sealer(&self) -> Option<&Arc<Sealer>> {
        self.sealer.get()
    }

    /// Whether the next [`Numbering::take`] for `node` will ask the
    /// database (so a caller can ask it before, outside the lock).
    pub(crate) fn needs_stored(&self, node: &str) -> bool {
        lock(&self.next)
            .get(node)
            .is_none_or(|(_, consult)| *consult)
    }

    /// Takes `node`'s next number. `stored` is the database's next number
    /// for it: consulted the first time only, or every time with
    /// `consult_always` (SQLite, where another process may write the same
    /// node between this one's transactions); the larger number wins, so
    /// an entry deleted from the end of the log leaves a gap.
    pub(crate) fn take(
        &self,
        node: &str,
        consult_always: bool,
        stored: impl FnOnce() -> Result<u64, StoreError>,
    ) -> Result<u64, StoreError> {
        let mut next = lock(&self.next);
        let number = match next.get(node) {
            Some(&(n, false)) if !consult_always => n,
            known => known.map_or(0, |(n, _)| *n).max(stored()?),
        };
        let _ = next.insert(node.to_owned(), (number + 1, false));
        Ok(number)
    }

    /// The next number `node` takes asks the database again (another
    /// process wrote as this node); never below what this one took.
    pub(crate) fn resync(&self, node: &str) {
        if let Some((_, consult)) = lock(&self.next).get_mut(node) {
            *consult = true;
        }
    }

    /// The entry sealed, if a sealer was set (an embedded registry opened
    /// without the HSM, in tools and tests, writes unsealed entries).
    pub(crate) fn seal(&self, entry: AuditEntry) -> Result<AuditEntry, StoreError> {
        match self.sealer.get() {
            Some(sealer) => sealer
                .seal(entry)
                .map_err(|e| StoreError::Unavailable(e.to_string())),
            None => Ok(entry),
        }
    }

    /// Numbers of a transaction that did not commit, given back: valid
    /// only where no other transaction took a number since (one writer).
    pub(crate) fn give_back(&self, taken: &[(String, u64)]) {
        let mut next = lock(&self.next);
        for (node, number) in taken {
            if let Some((n, _)) = next.get_mut(node) {
                *n = (*n).min(*number);
            }
        }
    }

    /// Numbers of a write that did not commit them, for void entries whose
    /// rule is `why`.
    pub(crate) fn lose(&self, taken: Taken, why: &'static str) {
        lock(&self.lost).extend(taken.into_iter().map(|(node, n)| (node, n, why)));
    }

    /// The lost numbers waiting for their void entries (taken out).
    pub(crate) fn take_lost(&self) -> Vec<Lost> {
        std::mem::take(&mut *lock(&self.lost))
    }

    /// Lost numbers taken out and not yet filled, kept for the next round.
    pub(crate) fn keep_lost(&self, lost: Vec<Lost>) {
        lock(&self.lost).extend(lost);
    }

    /// Numbers of a transaction that committed.
    pub(crate) fn commit(&self, taken: Taken) {
        if self.sealer.get().is_none() {
            return;
        }
        let mut committed = lock(&self.committed);
        for (node, number) in taken {
            let numbers = committed.entry(node).or_default();
            let _ = numbers.insert(number);
            if numbers.len() > REMEMBERED_MAX {
                let _ = numbers.pop_first();
            }
        }
    }

    /// The numbers `node` committed that the integrity check has not yet
    /// found in the log.
    pub(crate) fn committed(&self, node: &str) -> BTreeSet<u64> {
        lock(&self.committed).get(node).cloned().unwrap_or_default()
    }

    /// Forgets committed numbers the check found in the log.
    pub(crate) fn found(&self, node: &str, numbers: &BTreeSet<u64>) {
        if let Some(set) = lock(&self.committed).get_mut(node) {
            set.retain(|n| !numbers.contains(n));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_come_from_memory_so_a_deleted_tail_leaves_a_gap() {
        let numbering = Numbering::default();
        assert_eq!(numbering.take("a", false, || Ok(5)).unwrap(), 5);
        // The database now says 5 again (the entry was deleted): memory wins.
        assert_eq!(numbering.take("a", false, || Ok(5)).unwrap(), 6);
        assert_eq!(numbering.take("a", true, || Ok(5)).unwrap(), 7);
        // Another process wrote the node further: the database wins.
        assert_eq!(numbering.take("a", true, || Ok(20)).unwrap(), 20);
        assert_eq!(numbering.take("b", false, || Ok(0)).unwrap(), 0);
        // Another process took b's numbers: asked again, never going back.
        numbering.resync("b");
        assert_eq!(numbering.take("b", false, || Ok(9)).unwrap(), 9);
        numbering.resync("b");
        assert_eq!(numbering.take("b", false, || Ok(2)).unwrap(), 10);
    }

    #[test]
    fn a_single_writer_gives_back_what_did_not_commit() {
        let numbering = Numbering::default();
        let first = numbering.take("a", false, || Ok(0)).unwrap();
        let second = numbering.take("a", false, || Ok(0)).unwrap();
        numbering.give_back(&[("a".into(), second), ("a".into(), first)]);
        assert_eq!(numbering.take("a", false, || Ok(0)).unwrap(), first);
    }

    #[test]
    fn committed_numbers_are_remembered_until_found_only_when_sealing() {
        let numbering = Numbering::default();
        numbering.commit(vec![("a".into(), 1)]);
        assert!(numbering.committed("a").is_empty());
        numbering.set_sealer(crate::audit::seal::tests::test_sealer());
        numbering.commit(vec![("a".into(), 1), ("a".into(), 2)]);
        numbering.found("a", &BTreeSet::from([1]));
        assert_eq!(numbering.committed("a"), BTreeSet::from([2]));
        numbering.lose(vec![("a".into(), 3)], "why");
        assert_eq!(numbering.take_lost(), vec![("a".to_owned(), 3, "why")]);
        assert!(numbering.take_lost().is_empty());
    }
}
