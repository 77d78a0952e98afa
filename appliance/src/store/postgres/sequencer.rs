//! PostgreSQL's audit sequencer. A decision is queued in the transaction of
//! what it records (durable with it); one sequencer at a time, across every
//! node, gives queued decisions their place in the log. A head row taken by
//! every issuance would serialise the whole cluster's commits.

use std::collections::HashMap;

use super::connection::RawTx;
use super::errors::map_err;
use crate::store::{DecisionRecord, Pseudonym, StoreError};

/// Any number: the advisory lock that makes one sequencer at a time.
const SEQUENCER_LOCK: i64 = 0x646f_6a61_6e71; // not the migration lock
/// Decisions placed per sequencer transaction.
const SEQUENCE_BATCH: i64 = 5000;

/// Queues the decision for the log, inside the caller's transaction.
pub(super) fn enqueue(
    tx: &mut RawTx<'_>,
    d: &DecisionRecord,
    credential: Option<&str>,
    holder: Option<&Pseudonym>,
) -> Result<(), StoreError> {
    let payload = d.payload_sha256.map(|p| p.to_vec());
    let holder = holder.map(|h| h.0.to_vec());
    let certificate = d.actor_certificate.map(|c| c.to_vec());
    let _ = tx
        .execute(
            "INSERT INTO audit_queue (at, node, actor, action, outcome, rule, policy_hash, profile,
                                      credential_id, key_id, payload, holder, actor_certificate)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
            &[
                &d.at,
                &d.node,
                &d.actor,
                &d.action,
                &d.outcome,
                &d.rule,
                &d.policy_hash,
                &d.profile,
                &credential,
                &d.key_id,
                &payload,
                &holder,
                &certificate,
            ],
        )
        .map_err(map_err)?;
    Ok(())
}

/// What every decision does (queue an entry), undone at once.
pub(super) fn probe(tx: &mut RawTx<'_>) -> Result<(), StoreError> {
    let id: i64 = tx
        .query_one(
            "INSERT INTO audit_queue (at, node, actor, action, outcome, policy_hash)
             VALUES (0, '', '', 'probe', '', '') RETURNING id",
            &[],
        )
        .map_err(map_err)?
        .get(0);
    tx.execute("DELETE FROM audit_queue WHERE id = $1", &[&id])
        .map(|_| ())
        .map_err(map_err)
}

/// A queued decision as the sequencer reads it.
fn queued(row: &postgres::Row) -> (DecisionRecord, Option<String>, Option<Pseudonym>) {
    let decision = DecisionRecord {
        at: row.get(1),
        node: row.get(2),
        actor: row.get(3),
        action: row.get(4),
        outcome: row.get(5),
        rule: row.get(6),
        policy_hash: row.get(7),
        profile: row.get(8),
        key_id: row.get(10),
        payload_sha256: row
            .get::<_, Option<Vec<u8>>>(11)
            .and_then(|p| <[u8; 32]>::try_from(p).ok()),
        actor_certificate: row
            .get::<_, Option<Vec<u8>>>(13)
            .and_then(|c| <[u8; 32]>::try_from(c).ok()),
    };
    let holder = row
        .get::<_, Option<Vec<u8>>>(12)
        .and_then(|h| <[u8; 32]>::try_from(h).ok())
        .map(Pseudonym);
    (decision, row.get(9), holder)
}

/// Places up to `SEQUENCE_BATCH` queued decisions; how many. Another node
/// sequencing meanwhile makes this one place nothing.
pub(super) fn sequence(tx: &mut RawTx<'_>) -> Result<u64, StoreError> {
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
            "SELECT id, at, node, actor, action, outcome, rule, policy_hash, profile,
                    credential_id, key_id, payload, holder, actor_certificate
             FROM audit_queue ORDER BY id LIMIT $1",
            &[&SEQUENCE_BATCH],
        )
        .map_err(map_err)?;
    if rows.is_empty() {
        return Ok(0);
    }
    let mut next_node_seq: HashMap<String, i64> = HashMap::new();
    let mut ids = Vec::with_capacity(rows.len());
    for (seq, row) in (size..).zip(&rows) {
        ids.push(row.get::<_, i64>(0));
        let (decision, credential, holder) = queued(row);
        let node_seq = match next_node_seq.get(&decision.node) {
            Some(n) => *n,
            None => tx
                .query_one(
                    "SELECT COALESCE(MAX(node_seq) + 1, 0) FROM audit_log WHERE node = $1",
                    &[&decision.node],
                )
                .map_err(map_err)?
                .get(0),
        };
        let _ = next_node_seq.insert(decision.node.clone(), node_seq + 1);
        let entry = decision
            .entry(node_seq as u64, credential.as_deref(), holder.as_ref())
            .encode();
        let leaf = crate::audit::merkle::leaf_hash(&entry).to_vec();
        let _ = tx
            .execute(
                "INSERT INTO audit_log (seq, node, node_seq, entry, leaf) VALUES ($1, $2, $3, $4, $5)",
                &[&seq, &decision.node, &node_seq, &entry, &leaf],
            )
            .map_err(map_err)?;
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
