//! In what order the sequencer places queued decisions: each node's in its
//! own number order, so the log's order of a node's decisions is the order
//! the node numbered (and sealed) them. A number not queued yet holds that
//! node's later decisions back — its transaction may still commit. Once the
//! decision after the gap was queued [`GAP_WAIT_MS`] ago, the sequencer tries to
//! fill the number with a void entry through the queue's unique index: a
//! transaction still holding the number makes it wait and wins, a number
//! nobody holds (a crashed node, a lost site, a deleted row) is filled and
//! reported, never hidden.

use std::collections::{BTreeMap, HashMap};

/// How long ago the decision after a gap must have been queued before the
/// gap's number is filled: beyond an honest statement's life from its
/// number to its row (the number is taken right before the statement that
/// writes the row, which may wait for a quota shard or a unique index, but
/// never longer than the statement timeout; once written, the row's
/// uniqueness makes a filling void wait for its commit).
pub(super) const GAP_WAIT_MS: i64 = 15_000;
const _: () = assert!(GAP_WAIT_MS >= super::connection::STATEMENT_TIMEOUT_MS + 5_000);

/// What the sequencer knows of a queued decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Queued {
    /// The node that decided.
    pub(super) node: String,
    /// Its number in the node's sequence.
    pub(super) number: u64,
    /// When it was queued, by the database's clock (unix milliseconds).
    pub(super) queued_ms: i64,
}

/// What one sequencer round does with the queue.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Plan {
    /// Queued decisions to place, by index, in this order.
    pub(super) place: Vec<usize>,
    /// Decisions whose number is already in the log: they stay queued and
    /// are reported (the log holds one entry per number).
    pub(super) repeats: Vec<usize>,
    /// Numbers to fill with void entries, (node, number): placed next round.
    pub(super) gaps: Vec<(String, u64)>,
}

/// The plan for `rows` (in queue order) after each node's `next` number
/// (updated to what is placed).
pub(super) fn plan(rows: &[Queued], next: &mut HashMap<String, u64>, now_ms: i64) -> Plan {
    let mut plan = Plan::default();
    let mut held: BTreeMap<&str, BTreeMap<u64, usize>> = BTreeMap::new();
    for (i, row) in rows.iter().enumerate() {
        let expected = *next.entry(row.node.clone()).or_insert(0);
        if row.number < expected {
            plan.repeats.push(i);
            continue;
        }
        let _ = held
            .entry(row.node.as_str())
            .or_default()
            .insert(row.number, i);
        release(&row.node, &mut held, next, &mut plan.place);
    }
    for (node, rows_held) in &held {
        let Some((&first, &i)) = rows_held.first_key_value() else {
            continue;
        };
        let stale = rows
            .get(i)
            .is_some_and(|row| now_ms.saturating_sub(row.queued_ms) >= GAP_WAIT_MS);
        if stale {
            let expected = next.get(*node).copied().unwrap_or(0);
            plan.gaps
                .extend((expected..first).map(|number| ((*node).to_owned(), number)));
        }
    }
    plan
}

/// Places `node`'s held rows that now follow on.
fn release(
    node: &str,
    held: &mut BTreeMap<&str, BTreeMap<u64, usize>>,
    next: &mut HashMap<String, u64>,
    place: &mut Vec<usize>,
) {
    let Some(rows) = held.get_mut(node) else {
        return;
    };
    let mut expected = next.get(node).copied().unwrap_or(0);
    while let Some(i) = rows.remove(&expected) {
        place.push(i);
        expected += 1;
    }
    let _ = next.insert(node.to_owned(), expected);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(node: &str, number: u64, queued_ms: i64) -> Queued {
        Queued {
            node: node.into(),
            number,
            queued_ms,
        }
    }

    #[test]
    fn each_node_is_placed_in_number_order_whatever_the_commit_order() {
        let rows = [
            q("a", 1, 100),
            q("b", 0, 100),
            q("a", 0, 100),
            q("a", 2, 100),
        ];
        let mut next = HashMap::new();
        let plan = plan(&rows, &mut next, 100);
        assert_eq!(plan.place, vec![1, 2, 0, 3]);
        assert!(plan.gaps.is_empty() && plan.repeats.is_empty());
        assert_eq!(next.get("a"), Some(&3));
        assert_eq!(next.get("b"), Some(&1));
    }

    #[test]
    fn a_gap_holds_its_node_back_and_is_filled_once_the_next_decision_is_old() {
        let rows = [q("a", 5, 100), q("a", 7, 100), q("b", 0, 100)];
        let next = HashMap::from([("a".to_owned(), 5)]);
        // Fresh: 6 may still commit; b is not held back by a's gap.
        let fresh = plan(&rows, &mut next.clone(), 100 + GAP_WAIT_MS - 1);
        assert_eq!(fresh.place, vec![0, 2]);
        assert!(fresh.gaps.is_empty());
        let mut after = next.clone();
        let stale = plan(&rows, &mut after, 100 + GAP_WAIT_MS);
        assert_eq!(stale.place, vec![0, 2]);
        assert_eq!(stale.gaps, vec![("a".to_owned(), 6)]);
        // Nothing past the gap is placed before the gap is filled.
        assert_eq!(after.get("a"), Some(&6));
    }

    #[test]
    fn only_a_gap_before_an_old_decision_is_filled() {
        // 3 is missing before an old decision: filled; 5 is behind it and
        // is not looked at until 3 is placed.
        let now = 10 + GAP_WAIT_MS;
        let rows = [q("a", 4, 10), q("a", 6, now)];
        let mut next = HashMap::from([("a".to_owned(), 3)]);
        let plan = plan(&rows, &mut next, now);
        assert!(plan.place.is_empty());
        assert_eq!(plan.gaps, vec![("a".to_owned(), 3)]);
    }

    #[test]
    fn a_number_already_placed_stays_queued_and_is_reported() {
        let rows = [q("a", 2, 100), q("a", 4, 100)];
        let mut next = HashMap::from([("a".to_owned(), 4)]);
        let plan = plan(&rows, &mut next, 100);
        assert_eq!((plan.place, plan.repeats), (vec![1], vec![0]));
    }
}
