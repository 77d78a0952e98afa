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
use crate::store::sql::{Appended, KeptResponse, credential_row};
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
