//! The common issuance as one statement committed on its own: the free
//! copy's take, the credential row and its audit entry. A transaction of
//! BEGIN, the quota's statement, the row's and COMMIT is four round trips
//! and most of the server's work per issuance (pgbench on a 2-core
//! machine: ~390 µs of server CPU per write as four, ~260 as one).
//!
//! The free copy comes from a random shard with room that no statement
//! holds or, when every shard with room is held at that instant, from the
//! first with room, waited for (in shard order, as every other locker of
//! shards; the second pick runs only then). The pick is a CTE the update
//! joins: as a subquery in the update's `WHERE`, PostgreSQL evaluated it
//! again when the update rechecked a row another statement had just
//! changed, and a second `random()` pick named another shard, so the
//! update matched nothing (pgbench, 8 clients on 64 shards: 0.65% of
//! statements; as a CTE none in 135,000). The statement writes only the
//! outcome the caller predicted (a free copy if it asked for one): when it
//! cannot give one (the holder had one, or no shard had room: none is
//! left, or only a raise of the quota after its snapshot made some) it
//! writes nothing, and the issuance takes the transaction, which decides
//! under a number of its own; the statement's number is filled by a sealed
//! void (`statement.wrote_nothing`).

use std::sync::LazyLock;

use postgres::types::ToSql;

use super::connection::RawTx;
use super::sequencer::{self, Numbers};
use crate::store::sql::{Appended, AtOnce, KeptResponse, credential_row};
use crate::store::{DecisionRecord, NewCredential, StoreError};

/// `$1`–`$14`: the credential's columns (`$11` the free copy asked for).
const RECORDED: &str = "WITH pick AS (
    SELECT COALESCE(
             (SELECT shard FROM quota_shards
               WHERE name = 'free_first_time' AND used < quota
               ORDER BY random() LIMIT 1 FOR UPDATE SKIP LOCKED),
             (SELECT shard FROM quota_shards
               WHERE name = 'free_first_time' AND used < quota
               ORDER BY shard LIMIT 1 FOR UPDATE)) AS shard
     WHERE CAST($11 AS BOOLEAN)
       AND NOT EXISTS (SELECT 1 FROM credentials WHERE holder = $2 AND free_copy)),
q AS (
    UPDATE quota_shards SET used = used + 1 FROM pick
     WHERE name = 'free_first_time' AND quota_shards.shard = pick.shard AND used < quota
    RETURNING quota_shards.shard),
recorded AS (
    INSERT INTO credentials (id, holder, device, profile, kid, state, status_list,
                             status_index, issued_at, valid_until, document_expiry,
                             free_copy, claims_mac, batch_of, has_portrait)
    SELECT CAST($1 AS TEXT), CAST($2 AS BYTEA), CAST($3 AS TEXT), CAST($4 AS TEXT),
           CAST($5 AS TEXT), 'active', CAST($6 AS BIGINT), CAST($7 AS BIGINT),
           CAST($8 AS BIGINT), CAST($9 AS BIGINT), CAST($10 AS TEXT), CAST($11 AS BOOLEAN),
           CAST($12 AS BYTEA), CAST($13 AS TEXT), CAST($14 AS BOOLEAN)
     WHERE NOT CAST($11 AS BOOLEAN) OR EXISTS (SELECT 1 FROM q)
    RETURNING id)";

/// `$23`–`$26`: the client, its key, the request's hash and the sealed
/// response, kept with the credential (issued at `$8`) when it goes in.
const KEPT: &str = ",
kept AS (
    INSERT INTO idempotency (client, key, request_hash, response, credential_id, created_at)
    SELECT CAST($23 AS TEXT), CAST($24 AS TEXT), CAST($25 AS BYTEA), CAST($26 AS BYTEA),
           id, CAST($8 AS BIGINT)
      FROM recorded)";

/// `$15`–`$22`: the audit queue's. One row back once written.
const QUEUED: &str = "
INSERT INTO audit_queue (at, node, actor, action, outcome, policy_hash, node_seq, entry)
SELECT CAST($15 AS BIGINT), CAST($16 AS TEXT), CAST($17 AS TEXT), CAST($18 AS TEXT),
       CAST($19 AS TEXT), CAST($20 AS TEXT), CAST($21 AS BIGINT), CAST($22 AS BYTEA)
  FROM recorded
RETURNING node_seq";

/// The statement without an idempotency key, and with one.
static ISSUE_AT_ONCE: LazyLock<[String; 2]> = LazyLock::new(|| {
    [
        format!("{RECORDED}{QUEUED}"),
        format!("{RECORDED}{KEPT}{QUEUED}"),
    ]
});

/// Issues `c` (active, no batch) with `decision`'s entry, and `kept` (an
/// idempotency key's response) if any, in one statement outside any
/// transaction; whether it was written (nothing was if not: a key already
/// kept fails the statement as a conflict).
pub(super) fn issue(
    raw: &mut RawTx<'_>,
    numbers: Numbers<'_>,
    (c, want_free_copy): (&NewCredential, bool),
    decision: &DecisionRecord,
    kept: Option<KeptResponse<'_>>,
) -> Result<bool, StoreError> {
    let entry = Appended {
        decision,
        credential: Some(&c.id),
        holder: Some(&c.holder),
    };
    let (number, sealed) = sequencer::number_and_seal(raw, numbers, &entry)?;
    let row = credential_row(c, want_free_copy, None);
    let queue = sequencer::queue_params(decision, &number, &sealed);
    let hash = kept.as_ref().map(|k| k.key.request_hash.as_slice());
    let key: Option<[&(dyn ToSql + Sync); 4]> = kept
        .as_ref()
        .zip(hash.as_ref())
        .map(|(k, hash)| [&k.client as _, &k.key.key as _, hash as _, &k.response as _]);
    let params: Vec<&(dyn ToSql + Sync)> = row
        .iter()
        .map(|v| v as &(dyn ToSql + Sync))
        .chain(queue)
        .chain(key.into_iter().flatten())
        .collect();
    let [plain, keyed] = &*ISSUE_AT_ONCE;
    let sql = if kept.is_some() { keyed } else { plain };
    let written = raw.query(sql, &params);
    Ok(!sequencer::numbered(written, numbers.numbering, &decision.node, number)?.is_empty())
}

/// `$1`–`$13`: the credentials' columns, `$14`–`$21` their audit queue
/// rows', each an array with one element per issuance. Whether a holder
/// had a free copy is a subquery per row, not a join: the generic plan is
/// made while the table is small, and a join planned then scanned every
/// credential once the table had grown (4.5 ms a statement at 40,000). Every row goes in
/// or none does: none if a holder asking for a free copy had one, or if no
/// shard has room for all the free copies asked for. One RETURNING row per
/// issuance written.
const GROUPED: &str = "WITH input AS (
    SELECT * FROM unnest(
             CAST($1 AS TEXT[]), CAST($2 AS BYTEA[]), CAST($3 AS TEXT[]), CAST($4 AS TEXT[]),
             CAST($5 AS TEXT[]), CAST($6 AS BIGINT[]), CAST($7 AS BIGINT[]), CAST($8 AS BIGINT[]),
             CAST($9 AS BIGINT[]), CAST($10 AS TEXT[]), CAST($11 AS BOOLEAN[]), CAST($12 AS BYTEA[]),
             CAST($13 AS BOOLEAN[]), CAST($14 AS BIGINT[]), CAST($15 AS TEXT[]), CAST($16 AS TEXT[]),
             CAST($17 AS TEXT[]), CAST($18 AS TEXT[]), CAST($19 AS TEXT[]), CAST($20 AS BIGINT[]),
             CAST($21 AS BYTEA[]))
        AS i (id, holder, device, profile, kid, status_list, status_index, issued_at, valid_until,
              document_expiry, free_copy, claims_mac, has_portrait, at, node, actor, action,
              outcome, policy_hash, node_seq, entry)),
wanted AS (
    SELECT COUNT(*) FILTER (WHERE free_copy) AS copies,
           COALESCE(BOOL_OR(free_copy AND EXISTS (SELECT 1 FROM credentials c
                                                   WHERE c.holder = input.holder AND c.free_copy)),
                    FALSE) AS had
      FROM input),
pick AS (
    SELECT COALESCE(
             (SELECT shard FROM quota_shards
               WHERE name = 'free_first_time' AND quota - used >= (SELECT copies FROM wanted)
               ORDER BY random() LIMIT 1 FOR UPDATE SKIP LOCKED),
             (SELECT shard FROM quota_shards
               WHERE name = 'free_first_time' AND quota - used >= (SELECT copies FROM wanted)
               ORDER BY shard LIMIT 1 FOR UPDATE)) AS shard
     WHERE (SELECT copies FROM wanted) > 0 AND NOT (SELECT had FROM wanted)),
q AS (
    UPDATE quota_shards SET used = used + (SELECT copies FROM wanted) FROM pick
     WHERE name = 'free_first_time' AND quota_shards.shard = pick.shard
       AND used + (SELECT copies FROM wanted) <= quota
    RETURNING quota_shards.shard),
recorded AS (
    INSERT INTO credentials (id, holder, device, profile, kid, state, status_list,
                             status_index, issued_at, valid_until, document_expiry,
                             free_copy, claims_mac, batch_of, has_portrait)
    SELECT id, holder, device, profile, kid, 'active', status_list, status_index, issued_at,
           valid_until, document_expiry, free_copy, claims_mac, NULL, has_portrait
      FROM input
     WHERE (SELECT copies FROM wanted) = 0 OR EXISTS (SELECT 1 FROM q)
    RETURNING id)
INSERT INTO audit_queue (at, node, actor, action, outcome, policy_hash, node_seq, entry)
SELECT i.at, i.node, i.actor, i.action, i.outcome, i.policy_hash, i.node_seq, i.entry
  FROM input i JOIN recorded r ON r.id = i.id
RETURNING node_seq";

/// Issues every one of `group` (active, no batch, no idempotency key) with
/// its decision's entry in one statement outside any transaction; whether
/// they were written (all of them, or none).
pub(super) fn issue_group(
    raw: &mut RawTx<'_>,
    numbers: Numbers<'_>,
    group: &[&AtOnce],
) -> Result<bool, StoreError> {
    let mut sealed = Vec::with_capacity(group.len());
    for issued in group {
        let entry = Appended {
            decision: &issued.decision,
            credential: Some(&issued.credential.id),
            holder: Some(&issued.credential.holder),
        };
        sealed.push(sequencer::number_and_seal(raw, numbers, &entry)?);
    }
    let written = query_group(raw, group, &sealed);
    // A number another process took fails the whole statement; any of
    // the group's names the node, which is this process's.
    let (node, first) = match (group.first(), sealed.first()) {
        (Some(g), Some((n, _))) => (g.decision.node.as_str(), *n),
        _ => return Ok(false),
    };
    let rows = sequencer::numbered(written, numbers.numbering, node, first)?;
    match rows.len() {
        0 => Ok(false),
        n if n == group.len() => Ok(true),
        n => Err(StoreError::Internal(format!(
            "an issuance group of {} wrote {n} audit rows",
            group.len()
        ))),
    }
}

/// Runs [`GROUPED`] for `group`, whose entries are numbered and `sealed`.
fn query_group(
    raw: &mut RawTx<'_>,
    group: &[&AtOnce],
    sealed: &[(i64, Vec<u8>)],
) -> Result<Vec<postgres::Row>, postgres::Error> {
    // Borrowed, not copied: a text array binds from `&str`s.
    let column = |f: fn(&AtOnce) -> &str| group.iter().map(|g| f(g)).collect::<Vec<_>>();
    let ids = column(|g| &g.credential.id);
    let devices = column(|g| &g.credential.device);
    let profiles = column(|g| &g.credential.profile);
    let kids = column(|g| &g.credential.kid);
    let expiries = column(|g| &g.credential.document_expiry);
    let nodes = column(|g| &g.decision.node);
    let actors = column(|g| &g.decision.actor);
    let actions = column(|g| &g.decision.action);
    let outcomes = column(|g| &g.decision.outcome);
    let policies = column(|g| &g.decision.policy_hash);
    let holders: Vec<&[u8]> = group.iter().map(|g| &g.credential.holder.0[..]).collect();
    let macs: Vec<&[u8]> = group.iter().map(|g| &g.credential.claims_mac[..]).collect();
    let lists: Vec<i64> = group
        .iter()
        .map(|g| i64::from(g.credential.status_list))
        .collect();
    // As `Value` does: an index far beyond any list saturates.
    let indexes: Vec<i64> = group
        .iter()
        .map(|g| i64::try_from(g.credential.status_index).unwrap_or(i64::MAX))
        .collect();
    let issued_at: Vec<i64> = group.iter().map(|g| g.credential.issued_at).collect();
    let valid_until: Vec<i64> = group.iter().map(|g| g.credential.valid_until).collect();
    let free: Vec<bool> = group.iter().map(|g| g.want_free_copy).collect();
    let portraits: Vec<bool> = group.iter().map(|g| g.credential.has_portrait).collect();
    let at: Vec<i64> = group.iter().map(|g| g.decision.at).collect();
    let seqs: Vec<i64> = sealed.iter().map(|(n, _)| *n).collect();
    let entries: Vec<&[u8]> = sealed.iter().map(|(_, e)| &e[..]).collect();
    let params: [&(dyn ToSql + Sync); 21] = [
        &ids,
        &holders,
        &devices,
        &profiles,
        &kids,
        &lists,
        &indexes,
        &issued_at,
        &valid_until,
        &expiries,
        &free,
        &macs,
        &portraits,
        &at,
        &nodes,
        &actors,
        &actions,
        &outcomes,
        &policies,
        &seqs,
        &entries,
    ];
    raw.query(GROUPED, &params)
}
