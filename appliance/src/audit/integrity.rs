//! The check a node makes before it signs a checkpoint over new entries:
//! nothing was deleted, edited or moved since they were decided.
//!
//! - every new entry is canonical, its stored leaf hash is its own, and it
//!   carries its node's seal ([`super::seal`]) — unless it belongs to the
//!   log's unsealed beginning (entries an earlier build wrote: once one
//!   entry is sealed, every later one must be);
//! - each node's numbers follow on without a gap or a repeat, in the log's
//!   order (a deleted entry leaves a gap its successors show; a moved one
//!   is out of order; renumbering breaks the seals);
//! - every number this process committed is in the log as what it wrote
//!   (not as a void) or still queued: an entry deleted from the end, with
//!   nothing after it yet, is missed by the rule above but not by this.
//!
//! A finding stops the checkpoint, like a rewritten tile: nothing is signed
//! over it. `dojangctl audit verify` checks the same rules offline.

use std::collections::BTreeSet;
use std::sync::{Mutex, PoisonError};

use super::checkpoint::Checkpoint;
use super::entry::AuditEntry;
use super::merkle::{self, Hash};
use super::numbers::{Numbers, tag};
use super::seal::Sealer;
use crate::store::Registry;

/// Entries read per page.
const PAGE: u64 = 10_000;

/// The action of an entry that fills a number no decision holds.
pub const VOID_ACTION: &str = "audit.void";

/// What the check found, in words an operator can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Finding(pub String);

/// The numbers as checked up to a log position.
#[derive(Debug, Clone, Default)]
struct Verified {
    /// The log position checked up to.
    to: u64,
    /// Each node's next number there, and whether the log is sealed.
    numbers: Numbers,
}

/// What a check vouches for: the leaf hashes of the entries it checked
/// (the frontier takes exactly these), and the numbers line the next
/// checkpoint carries.
pub struct Checked {
    /// Leaf hashes of entries `from..to`, computed from the entries.
    pub leaves: Vec<Hash>,
    /// The `dojang-numbers` extension line at `to`.
    pub line: String,
}

/// One node's integrity check.
pub struct Integrity {
    node: String,
    verified: Mutex<Option<Verified>>,
}

/// A finding, or the store failing to answer.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The log is not what was decided.
    #[error(transparent)]
    Found(#[from] Finding),
    /// The store or the seal key failed; the next round tries again.
    #[error("{0}")]
    Unavailable(String),
}

fn unavailable(e: impl std::fmt::Display) -> CheckError {
    CheckError::Unavailable(e.to_string())
}

fn found(what: String) -> CheckError {
    CheckError::Found(Finding(what))
}

impl Integrity {
    /// The check of node `node`'s log.
    pub fn new(node: &str) -> Self {
        Integrity {
            node: node.to_owned(),
            verified: Mutex::new(None),
        }
    }

    /// Whether this node has checked the log up to `position`.
    pub fn holds(&self, position: u64) -> bool {
        self.verified
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .is_some_and(|v| v.to == position)
    }

    /// Checks entries `from..to` (about to be signed over) and this
    /// process's committed numbers. `signed` is the checkpoint at `from`
    /// whose signature and root were checked, if there is one: its numbers
    /// line is where the check starts (or this node's own last check).
    pub fn check(
        &self,
        registry: &dyn Registry,
        from: u64,
        to: u64,
        signed: Option<&Checkpoint>,
    ) -> Result<Checked, CheckError> {
        let Some(sealer) = registry.audit_sealer() else {
            return Err(unavailable("the registry writes unsealed audit entries"));
        };
        if to < from {
            return Err(found(format!(
                "the log has {to} entries, fewer than the {from} already checked"
            )));
        }
        // Taken before the log is read: each of these committed before it.
        let committed = registry.audit_committed(&self.node);
        let cached = self
            .verified
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .filter(|v| v.to == from);
        let mut verified = match cached {
            Some(v) => v,
            None => start(registry, from, signed)?,
        };
        let mut mine = BTreeSet::new();
        let mut my_voids = BTreeSet::new();
        let mut leaves = Vec::with_capacity((to - from) as usize);
        let mut start = from;
        while start < to {
            let end = (start + PAGE).min(to);
            let entries = registry
                .audit_entries(start, end - start)
                .map_err(unavailable)?;
            let stored = registry.audit_leaves(start, end).map_err(unavailable)?;
            if entries.len() as u64 != end - start || stored.len() != entries.len() {
                return Err(found(format!(
                    "entries {start}..{end} are not all in the log (a gap in its positions)"
                )));
            }
            for (position, (bytes, leaf)) in (start..).zip(entries.iter().zip(&stored)) {
                let entry = check_entry(&sealer, &mut verified.numbers, position, bytes, leaf)?;
                if entry.node == self.node {
                    let _ = if entry.action == VOID_ACTION {
                        my_voids.insert(entry.seq)
                    } else {
                        mine.insert(entry.seq)
                    };
                }
                leaves.push(*leaf);
            }
            start = end;
        }
        self.check_committed(registry, from, committed, &mine, &my_voids)?;
        verified.to = to;
        let line = verified.numbers.line();
        *self.verified.lock().unwrap_or_else(PoisonError::into_inner) = Some(verified);
        Ok(Checked { leaves, line })
    }

    /// Every number this process committed is in the log as its decision,
    /// or still queued; the ones found in checked entries are forgotten.
    fn check_committed(
        &self,
        registry: &dyn Registry,
        from: u64,
        committed: BTreeSet<u64>,
        mine: &BTreeSet<u64>,
        my_voids: &BTreeSet<u64>,
    ) -> Result<(), CheckError> {
        let gone = |n: u64, how: &str| {
            found(format!(
                "node {} number {n}: committed, and {how}",
                self.node
            ))
        };
        if let Some(n) = committed.intersection(my_voids).next() {
            return Err(gone(*n, "replaced by a void entry"));
        }
        let mut done: BTreeSet<u64> = committed.intersection(mine).copied().collect();
        let rest: Vec<u64> = committed.difference(mine).copied().collect();
        // One read per run of consecutive numbers: never the rows between
        // an old number still queued and the newest ones.
        for run in rest.chunk_by(|a, b| a + 1 == *b) {
            let (Some(&low), Some(&high)) = (run.first(), run.last()) else {
                continue;
            };
            let stored = registry
                .audit_node_entries(&self.node, low, high)
                .map_err(unavailable)?;
            for &n in run {
                // The columns may lie: only the entry's own node and number
                // say whose decision a row holds.
                let row = stored.iter().find(|r| {
                    r.number == n
                        && r.entry.as_deref().is_none_or(|e| {
                            AuditEntry::decode(e).is_ok_and(|e| e.node == self.node && e.seq == n)
                        })
                });
                let Some(row) = row else {
                    return Err(gone(n, "gone from the log"));
                };
                let void = row
                    .entry
                    .as_deref()
                    .and_then(|e| AuditEntry::decode(e).ok())
                    .is_some_and(|e| e.action == VOID_ACTION);
                if void {
                    return Err(gone(n, "replaced by a void entry"));
                }
                // Placed before this check's range: a checkpoint covers it.
                // Placed after it, or still queued: checked later.
                if row.place.is_some_and(|p| p < from) {
                    let _ = done.insert(n);
                }
            }
        }
        registry.audit_found(&self.node, &done);
        Ok(())
    }
}

/// The numbers at `from`: a signed checkpoint's line, or nothing before
/// the first entry. A checkpoint an earlier build signed has no line: the
/// entries it covers are read then, once, against its root.
fn start(
    registry: &dyn Registry,
    from: u64,
    signed: Option<&Checkpoint>,
) -> Result<Verified, CheckError> {
    if from == 0 {
        // A log this build starts is sealed from its first entry: its own
        // entries cannot say otherwise.
        return Ok(Verified {
            to: 0,
            numbers: Numbers {
                sealed: true,
                ..Numbers::default()
            },
        });
    }
    let Some(checkpoint) = signed.filter(|c| c.size == from) else {
        return Err(unavailable(format!(
            "no checked checkpoint at {from} to start the audit check from"
        )));
    };
    let numbers = match Numbers::from_extensions(&checkpoint.extensions) {
        Ok(Some(numbers)) => numbers,
        Ok(None) => legacy_numbers(registry, checkpoint)?,
        Err(e) => return Err(found(format!("checkpoint {from}: {e}"))),
    };
    Ok(Verified { to: from, numbers })
}

/// One entry at `position`: canonical, its leaf, its seal, its number.
fn check_entry(
    sealer: &Sealer,
    numbers: &mut Numbers,
    position: u64,
    bytes: &[u8],
    leaf: &Hash,
) -> Result<AuditEntry, CheckError> {
    let entry = AuditEntry::decode(bytes).map_err(|e| found(format!("entry {position}: {e}")))?;
    if merkle::leaf_hash(bytes) != *leaf {
        return Err(found(format!(
            "entry {position}: its stored leaf hash is not its entry's"
        )));
    }
    match entry.seal {
        Some(_) => {
            if !sealer.verifies(&entry).map_err(unavailable)? {
                return Err(found(format!(
                    "entry {position} (node {}, number {}): its seal does not verify (edited or renumbered after it was written)",
                    entry.node, entry.seq
                )));
            }
            numbers.sealed = true;
        }
        None if numbers.sealed => {
            return Err(found(format!(
                "entry {position} (node {}, number {}): not sealed, after sealed entries",
                entry.node, entry.seq
            )));
        }
        None => {}
    }
    let expected = numbers.next.get(&tag(&entry.node)).copied().unwrap_or(0);
    if entry.seq != expected {
        return Err(found(if entry.seq > expected {
            format!(
                "entry {position}: node {} has number {} where {expected} was expected (an entry deleted or moved before it)",
                entry.node, entry.seq
            )
        } else {
            format!(
                "entry {position}: node {} number {} comes again or out of order (expected {expected})",
                entry.node, entry.seq
            )
        }));
    }
    let _ = numbers.next.insert(tag(&entry.node), expected + 1);
    Ok(entry)
}

/// The numbers at a checkpoint signed before numbers lines existed, from
/// the entries it covers: read once, at an upgrade's first check, each
/// entry hashed again and the tree's root compared with the signed one (so
/// no entry read here can have been changed).
fn legacy_numbers(registry: &dyn Registry, signed: &Checkpoint) -> Result<Numbers, CheckError> {
    let mut numbers = Numbers::default();
    let mut frontier = merkle::Frontier::new();
    while frontier.size() < signed.size {
        let start = frontier.size();
        let count = PAGE.min(signed.size - start);
        let entries = registry.audit_entries(start, count).map_err(unavailable)?;
        if entries.len() as u64 != count {
            return Err(found(format!("entries {start}.. are not all in the log")));
        }
        for (position, bytes) in (start..).zip(&entries) {
            let entry =
                AuditEntry::decode(bytes).map_err(|e| found(format!("entry {position}: {e}")))?;
            numbers.sealed |= entry.seal.is_some();
            let _ = numbers.next.insert(tag(&entry.node), entry.seq + 1);
            frontier.append(merkle::leaf_hash(bytes));
        }
    }
    if frontier.root() != signed.root {
        return Err(found(format!(
            "the entries before checkpoint {} are not the ones it signed",
            signed.size
        )));
    }
    Ok(numbers)
}
