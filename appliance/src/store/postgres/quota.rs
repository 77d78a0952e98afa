//! PostgreSQL's free-copy counter, sharded: 64 rows whose quotas add up to
//! the quota, each `used <= quota`, so the total can never go one over.
//! With one row, every issuance taking a free copy queued on its lock for
//! the length of an fsync.

use super::connection::RawTx;
use super::errors::map_err;
use crate::store::StoreError;

/// Takes one copy for `holder` if it never had one and any shard has
/// room. Usually one statement: the holder's check and a random unlocked
/// shard (`SKIP LOCKED`, picked in a CTE: see `at_once` on why not in the
/// update's `WHERE`) with the increment. When that takes nothing (the
/// holder had one, or every shard with room is busy or none has room),
/// the holder is checked alone, then shards are waited on.
pub(super) fn take(tx: &mut RawTx<'_>, holder: &[u8]) -> Result<bool, StoreError> {
    let at_once = tx
        .query_opt(
            "WITH pick AS (
                 SELECT shard FROM quota_shards
                  WHERE name = 'free_first_time' AND used < quota
                    AND NOT EXISTS (SELECT 1 FROM credentials WHERE holder = $1 AND free_copy)
                  ORDER BY random() LIMIT 1 FOR UPDATE SKIP LOCKED)
             UPDATE quota_shards SET used = used + 1 FROM pick
              WHERE name = 'free_first_time' AND quota_shards.shard = pick.shard
                AND used < quota
             RETURNING quota_shards.shard",
            &[&holder],
        )
        .map_err(map_err)?;
    if at_once.is_some() {
        return Ok(true);
    }
    let had_one = tx
        .query_opt(
            "SELECT 1 FROM credentials WHERE holder = $1 AND free_copy",
            &[&holder],
        )
        .map_err(map_err)?;
    if had_one.is_some() {
        return Ok(false);
    }
    let any_left =
        "SELECT 1 FROM quota_shards WHERE name = 'free_first_time' AND used < quota LIMIT 1";
    // Bounded: each round either takes a copy or finds a shard someone else
    // just emptied; 64 rounds of that means the quota is being drained.
    for _ in 0..64 {
        let pick = "SELECT shard FROM quota_shards WHERE name = 'free_first_time' AND used < quota
             ORDER BY shard LIMIT 1 FOR UPDATE";
        match tx.query_opt(pick, &[]).map_err(map_err)? {
            Some(row) => {
                let shard: i32 = row.get(0);
                // Re-checked under the row lock.
                let taken = tx
                    .execute(
                        "UPDATE quota_shards SET used = used + 1
                         WHERE name = 'free_first_time' AND shard = $1 AND used < quota",
                        &[&shard],
                    )
                    .map_err(map_err)?;
                if taken == 1 {
                    return Ok(true);
                }
            }
            // With LIMIT and FOR UPDATE, a row that stopped matching while
            // we waited yields nothing even if others match: look again
            // unless every shard is full.
            None => {
                if tx.query_opt(any_left, &[]).map_err(map_err)?.is_none() {
                    return Ok(false);
                }
            }
        }
    }
    Ok(false)
}

/// Free copies used over every shard, as a scalar subquery.
pub(super) const USED_SQL: &str =
    "(SELECT COALESCE(SUM(used), 0)::BIGINT FROM quota_shards WHERE name = 'free_first_time')";

/// (used, quota) over every shard.
pub(super) fn totals(tx: &mut RawTx<'_>) -> Result<(u64, u64), StoreError> {
    let row = tx
        .query_one(
            "SELECT COALESCE(SUM(used), 0)::BIGINT, COALESCE(SUM(quota), 0)::BIGINT
             FROM quota_shards WHERE name = 'free_first_time'",
            &[],
        )
        .map_err(map_err)?;
    Ok((row.get::<_, i64>(0) as u64, row.get::<_, i64>(1) as u64))
}

/// Locks every shard, then gives each what it used plus an even share of
/// what is left (never below what was used).
pub(super) fn set(tx: &mut RawTx<'_>, quota: u64) -> Result<(), StoreError> {
    let quota = i64::try_from(quota).unwrap_or(i64::MAX);
    let rows = tx
        .query(
            "SELECT shard, used FROM quota_shards WHERE name = 'free_first_time'
             ORDER BY shard FOR UPDATE",
            &[],
        )
        .map_err(map_err)?;
    let used: i64 = rows.iter().map(|r| r.get::<_, i64>(1)).sum();
    let left = (quota - used).max(0);
    let n = (rows.len() as i64).max(1);
    for (i, row) in (0i64..).zip(&rows) {
        let share = left / n + i64::from(i < left % n);
        let _ = tx
            .execute(
                "UPDATE quota_shards SET quota = used + $1
                 WHERE name = 'free_first_time' AND shard = $2",
                &[&share, &row.get::<_, i32>(0)],
            )
            .map_err(map_err)?;
    }
    Ok(())
}
