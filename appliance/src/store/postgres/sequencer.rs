//! PostgreSQL's audit sequencer. A decision is queued in the transaction of
//! what it records (durable with it), numbered and sealed by its node
//! ([`crate::store::sql::Numbering`]); one sequencer at a time, across every
//! node, gives queued decisions their place in the log, each node's in its
//! number order ([`super::placement`]). A head row taken by every issuance
//! would serialise the whole cluster's commits.

use std::cell::RefCell;
use std::collections::HashMap;

use postgres::types::ToSql;

use super::connection::RawTx;
use super::errors::{RETRYABLE, map_err};
use super::placement::{self, Queued};
use crate::audit::entry::AuditEntry;
use crate::store::sql::{Appended, Lost, Numbering, Taken};
use crate::store::{DecisionRecord, Pseudonym, StoreError};

/// Any number: the advisory lock that makes one sequencer at a time.
const SEQUENCER_LOCK: i64 = 0x646f_6a61_6e71; // not the migration lock
/// Decisions placed per sequencer transaction.
const SEQUENCE_BATCH: i64 = 5000;

/// A write's audit numbers: where they come from, and those it took.
#[derive(Clone, Copy)]
pub(super) struct Numbers<'t> {
    pub(super) numbering: &'t Numbering,
    pub(super) taken: &'t RefCell<Taken>,
}

/// The node's next number as the database knows it (placed or queued).
fn stored_next(tx: &mut RawTx<'_>, node: &str) -> Result<u64, StoreError> {
    let next: i64 = tx
        .query_one(
            "SELECT GREATEST(
                 (SELECT COALESCE(MAX(node_seq) + 1, 0) FROM audit_log WHERE node = $1),
                 (SELECT COALESCE(MAX(node_seq) + 1, 0) FROM audit_queue WHERE node = $1))",
            &[&node],
        )
        .map_err(map_err)?
        .get(0);
    Ok(next as u64)
}

/// The audit queue's INSERT, its parameters numbered from `$first`.
fn queue_insert(first: usize) -> String {
    let values: Vec<String> = (first..first + 8).map(|n| format!("${n}")).collect();
    format!(
        "INSERT INTO audit_queue (at, node, actor, action, outcome, policy_hash, node_seq, entry)
         VALUES ({})",
        values.join(", ")
    )
}

/// Queues the decision for the log, inside the caller's transaction, with
/// its node's next number and its seal; with `with`, the INSERT of the row
/// it is about in the same statement (one round trip).
pub(super) fn enqueue(
    tx: &mut RawTx<'_>,
    numbers: Numbers<'_>,
    entry: &Appended<'_>,
    with: Option<(&str, &[&(dyn ToSql + Sync)])>,
) -> Result<(), StoreError> {
    let d = entry.decision;
    let (number, sealed) = number_and_seal(tx, numbers, entry)?;
    let queue = queue_params(d, &number, &sealed);
    // The row the decision is about goes in by the same statement.
    let (sql, params) = match with {
        None => (queue_insert(1), queue.to_vec()),
        Some((insert, params)) => (
            format!(
                "WITH recorded AS ({insert}) {}",
                queue_insert(params.len() + 1)
            ),
            [params, &queue[..]].concat(),
        ),
    };
    let queued = tx.execute(&sql, &params);
    numbered(queued, numbers.numbering, &d.node, number).map(|_| ())
}

/// Takes the decision's number (the node's next) and seals its entry.
/// Asked first, so the number is taken right before the statement that
/// writes its row: a gap the sequencer sees is a statement in flight (at
/// most the statement timeout), a transaction that runs, or none.
pub(super) fn number_and_seal(
    tx: &mut RawTx<'_>,
    Numbers { numbering, taken }: Numbers<'_>,
    entry: &Appended<'_>,
) -> Result<(i64, Vec<u8>), StoreError> {
    let d = entry.decision;
    let stored = if numbering.needs_stored(&d.node) {
        stored_next(tx, &d.node)?
    } else {
        0
    };
    let number = numbering.take(&d.node, false, || Ok(stored))?;
    taken.borrow_mut().push((d.node.clone(), number));
    let sealed = numbering
        .seal(d.entry(number, entry.credential, entry.holder))?
        .encode();
    Ok((number as i64, sealed))
}

/// The audit queue's eight values, in [`queue_insert`]'s order.
pub(super) fn queue_params<'a>(
    d: &'a DecisionRecord,
    number: &'a i64,
    sealed: &'a Vec<u8>,
) -> [&'a (dyn ToSql + Sync); 8] {
    [
        &d.at,
        &d.node,
        &d.actor,
        &d.action,
        &d.outcome,
        &d.policy_hash,
        number,
        sealed,
    ]
}

/// The outcome of a statement that queued `number` of `node`: a number
/// another process took is retried (after learning its numbers).
pub(super) fn numbered<T>(
    queued: Result<T, postgres::Error>,
    numbering: &Numbering,
    node: &str,
    number: i64,
) -> Result<T, StoreError> {
    match queued {
        Ok(out) => Ok(out),
        Err(e) if taken_elsewhere(&e) => {
            // Another process writes as this node (two with one node_id,
            // or two operator tools at once): learn its numbers, retry.
            tracing::warn!(
                node,
                "audit: another process took this node's number; is node_id unique?"
            );
            numbering.resync(node);
            Err(StoreError::Unavailable(format!(
                "{RETRYABLE} audit number {number} of node {node} was taken by another process"
            )))
        }
        Err(e) => Err(map_err(e)),
    }
}

/// Whether `e` is a second decision for one node's number.
fn taken_elsewhere(e: &postgres::Error) -> bool {
    e.as_db_error().is_some_and(|db| {
        *db.code() == postgres::error::SqlState::UNIQUE_VIOLATION
            && db.constraint() == Some("audit_queue_node_seq")
    })
}

/// The entry filling a number no decision holds.
fn void_entry(node: &str, number: u64, why: &str) -> AuditEntry {
    AuditEntry {
        time: time::OffsetDateTime::now_utc().unix_timestamp(),
        node: node.to_owned(),
        seq: number,
        actor: "dojangd".into(),
        action: "audit.void".into(),
        outcome: "ok".into(),
        rule: Some(why.to_owned()),
        ..AuditEntry::default()
    }
}

/// The rule of a void for a transaction's number that did not commit.
pub(super) const VOID_ROLLED_BACK: &str = "transaction.rolled_back";
/// The rule of a void for the number of a statement that wrote nothing
/// (its issuance went on in a transaction, under a number of its own).
pub(super) const VOID_UNWRITTEN: &str = "statement.wrote_nothing";

/// Queues void entries for `lost`, numbers this process's writes took and
/// did not commit (a number that did commit after all is left alone).
pub(super) fn void_lost(
    tx: &mut RawTx<'_>,
    numbering: &Numbering,
    lost: &[Lost],
) -> Result<(), StoreError> {
    for (node, number, why) in lost {
        let _ = queue_void(tx, numbering, (node, *number), why)?;
    }
    Ok(())
}

/// Queues a sealed void under `rule` for `node`'s `number`, unless a
/// decision holds the number: the queue's unique index makes this wait for
/// a transaction that holds it and still runs, and lets that transaction
/// win; whether the void was queued.
fn queue_void(
    tx: &mut RawTx<'_>,
    numbering: &Numbering,
    (node, number): (&str, u64),
    rule: &str,
) -> Result<bool, StoreError> {
    let entry = numbering.seal(void_entry(node, number, rule))?;
    let n = number as i64;
    let queued = tx
        .execute(
            "INSERT INTO audit_queue (at, node, actor, action, outcome, policy_hash, node_seq, entry)
             SELECT CAST($1 AS BIGINT), CAST($2 AS TEXT), 'dojangd', 'audit.void', 'ok', '',
                    CAST($3 AS BIGINT), CAST($4 AS BYTEA)
             WHERE NOT EXISTS (SELECT 1 FROM audit_log WHERE node = $2 AND node_seq = $3)
             ON CONFLICT (node, node_seq) DO NOTHING",
            &[&entry.time, &node, &n, &entry.encode()],
        )
        .map_err(map_err)?;
    Ok(queued == 1)
}

/// What every decision does (queue an entry), undone at once.
pub(super) fn probe(tx: &mut RawTx<'_>) -> Result<(), StoreError> {
    let id: i64 = tx
        .query_one(
            "INSERT INTO audit_queue (at, node, actor, action, outcome, policy_hash, node_seq)
             VALUES (0, 'probe ' || pg_backend_pid(), '', 'probe', '', '', 0) RETURNING id",
            &[],
        )
        .map_err(map_err)?
        .get(0);
    tx.execute("DELETE FROM audit_queue WHERE id = $1", &[&id])
        .map(|_| ())
        .map_err(map_err)
}

/// A decision an earlier build queued (no entry yet), built the old way:
/// unsealed, with the number the migration gave it.
fn legacy_entry(row: &postgres::Row, number: u64) -> AuditEntry {
    let decision = DecisionRecord {
        at: row.get(3),
        node: row.get(1),
        actor: row.get(5),
        action: row.get(6),
        outcome: row.get(7),
        rule: row.get(8),
        policy_hash: row.get(9),
        profile: row.get(10),
        key_id: row.get(12),
        payload_sha256: row
            .get::<_, Option<Vec<u8>>>(13)
            .and_then(|p| <[u8; 32]>::try_from(p).ok()),
        actor_certificate: row
            .get::<_, Option<Vec<u8>>>(15)
            .and_then(|c| <[u8; 32]>::try_from(c).ok()),
    };
    let holder = row
        .get::<_, Option<Vec<u8>>>(14)
        .and_then(|h| <[u8; 32]>::try_from(h).ok())
        .map(Pseudonym);
    let credential: Option<String> = row.get(11);
    decision.entry(number, credential.as_deref(), holder.as_ref())
}

/// Places up to `SEQUENCE_BATCH` queued decisions, each node's in number
/// order, and queues void entries for old gaps (placed next round); how
/// many entries it placed. Another node sequencing meanwhile makes this
/// one place nothing.
pub(super) fn sequence(tx: &mut RawTx<'_>, numbering: &Numbering) -> Result<u64, StoreError> {
    let locked: bool = tx
        .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&SEQUENCER_LOCK])
        .map_err(map_err)?
        .get(0);
    if !locked {
        return Ok(0);
    }
    let size: i64 = tx
        .query_one("SELECT size FROM audit_head WHERE id = 1 FOR UPDATE", &[])
        .map_err(map_err)?
        .get(0);
    let rows = tx
        .query(
            "SELECT id, node, node_seq, at, entry, actor, action, outcome, rule, policy_hash,
                    profile, credential_id, key_id, payload, holder, actor_certificate,
                    queued_ms, CAST(extract(epoch FROM clock_timestamp()) * 1000 AS BIGINT)
             FROM audit_queue ORDER BY id LIMIT $1",
            &[&SEQUENCE_BATCH],
        )
        .map_err(map_err)?;
    if rows.is_empty() {
        return Ok(0);
    }
    let queued: Vec<Queued> = rows
        .iter()
        .map(|row| Queued {
            node: row.get(1),
            number: row.get::<_, i64>(2) as u64,
            queued_ms: row.get(16),
        })
        .collect();
    let mut next = placed_next(tx, &queued)?;
    // The database's clock: rows queued by any node, judged by one clock.
    let now_ms: i64 = rows.first().map_or(0, |row| row.get(17));
    let plan = placement::plan(&queued, &mut next, now_ms);
    for q in plan.repeats.iter().filter_map(|i| queued.get(*i)) {
        // The log keeps one entry per number: the row stays queued, and
        // the integrity check reports the node's numbers.
        tracing::warn!(
            node = q.node,
            number = q.number,
            "audit: a queued decision repeats a number already in the log; left in the queue"
        );
    }
    let ids = place(tx, size, &rows, &queued, &plan.place)?;
    // Only a process that seals fills a gap: an unsealed void after sealed
    // entries would stop every checkpoint (`audit export` sequences too).
    if numbering.sealer().is_some() {
        fill_gaps(tx, numbering, &plan.gaps)?;
    }
    let _ = tx
        .execute("DELETE FROM audit_queue WHERE id = ANY($1)", &[&ids])
        .map_err(map_err)?;
    let placed = ids.len() as i64;
    let _ = tx
        .execute(
            "UPDATE audit_head SET size = size + $1 WHERE id = 1",
            &[&placed],
        )
        .map_err(map_err)?;
    Ok(placed as u64)
}

/// Each queued node's next number after those placed in the log.
fn placed_next(tx: &mut RawTx<'_>, queued: &[Queued]) -> Result<HashMap<String, u64>, StoreError> {
    let mut next = HashMap::new();
    for q in queued {
        if !next.contains_key(&q.node) {
            let placed: i64 = tx
                .query_one(
                    "SELECT COALESCE(MAX(node_seq) + 1, 0) FROM audit_log WHERE node = $1",
                    &[&q.node],
                )
                .map_err(map_err)?
                .get(0);
            let _ = next.insert(q.node.clone(), placed as u64);
        }
    }
    Ok(next)
}

/// Writes queued rows `order` into the log from position `size`, in one
/// statement (a round trip per entry was one more statement per issuance
/// for the server); their ids.
fn place(
    tx: &mut RawTx<'_>,
    size: i64,
    rows: &[postgres::Row],
    queued: &[Queued],
    order: &[usize],
) -> Result<Vec<i64>, StoreError> {
    let mut ids = Vec::with_capacity(order.len());
    let (mut seqs, mut nodes, mut numbers) = (Vec::new(), Vec::new(), Vec::new());
    let (mut entries, mut leaves) = (Vec::new(), Vec::new());
    for (seq, i) in (size..).zip(order) {
        let (Some(row), Some(q)) = (rows.get(*i), queued.get(*i)) else {
            return Err(StoreError::Internal("a placement step names no row".into()));
        };
        ids.push(row.get::<_, i64>(0));
        let entry = match row.get::<_, Option<Vec<u8>>>(4) {
            Some(entry) => entry,
            None => legacy_entry(row, q.number).encode(),
        };
        leaves.push(crate::audit::merkle::leaf_hash(&entry).to_vec());
        entries.push(entry);
        seqs.push(seq);
        nodes.push(q.node.as_str());
        numbers.push(q.number as i64);
    }
    if !ids.is_empty() {
        let _ = tx
            .execute(
                "INSERT INTO audit_log (seq, node, node_seq, entry, leaf)
                 SELECT * FROM unnest(CAST($1 AS BIGINT[]), CAST($2 AS TEXT[]),
                                      CAST($3 AS BIGINT[]), CAST($4 AS BYTEA[]),
                                      CAST($5 AS BYTEA[]))",
                &[&seqs, &nodes, &numbers, &entries, &leaves],
            )
            .map_err(map_err)?;
    }
    Ok(ids)
}

/// Queues sealed voids for numbers nobody holds (placed next round).
fn fill_gaps(
    tx: &mut RawTx<'_>,
    numbering: &Numbering,
    gaps: &[(String, u64)],
) -> Result<(), StoreError> {
    for (node, number) in gaps {
        if !queue_void(tx, numbering, (node, *number), "number.unclaimed")? {
            continue;
        }
        tracing::warn!(
            node,
            number,
            "audit: a node's number was never committed (a crashed node or a deleted row); filled with a void entry"
        );
    }
    Ok(())
}

/// Entries placed in the log.
pub(super) fn placed(tx: &mut RawTx<'_>) -> Result<u64, StoreError> {
    Ok(tx
        .query_one("SELECT size FROM audit_head WHERE id = 1", &[])
        .map_err(map_err)?
        .get::<_, i64>(0) as u64)
}

/// Entries placed and queued.
pub(super) fn recorded(tx: &mut RawTx<'_>) -> Result<u64, StoreError> {
    Ok(tx
        .query_one(
            "SELECT (SELECT size FROM audit_head WHERE id = 1) + (SELECT COUNT(*) FROM audit_queue)",
            &[],
        )
        .map_err(map_err)?
        .get::<_, i64>(0) as u64)
}
