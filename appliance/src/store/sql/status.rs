//! Status-list positions, drawn at random: which list is open, and which
//! of its positions are free. A position is kept in `status_positions`
//! from the moment it is drawn, whether or not a credential ever takes it,
//! so none is handed out twice.

use super::tx::{Tx, args};
use crate::store::{
    CredentialState, DecisionRecord, Refresh, STATUS_LIST_FILL, STATUS_LIST_SIZE, StatusPositions,
    StoreError, check_refresh,
};

/// Tries per wanted position before giving up: a half-full list refuses a
/// random draw with probability at most 1/2, so 64 refusals in a row mean
/// the table is not what this code wrote.
const TRIES_PER_POSITION: u64 = 64;

/// Draws `count` free positions of the open list (opening the next one
/// when the open list cannot take `count` more), in one transaction.
pub(super) fn reserve(tx: &mut dyn Tx, count: u64) -> Result<StatusPositions, StoreError> {
    let list = loop {
        // The update locks the open list's row: reservations take turns.
        if let Some(row) = tx.query_opt(
            "UPDATE status_lists SET next_index = next_index + $1
             WHERE id = (SELECT MAX(id) FROM status_lists) AND next_index + $1 <= $2
             RETURNING id",
            args![count, STATUS_LIST_FILL],
        )? {
            break list_id(row.count(0)?)?;
        }
        // `WHERE true`: SQLite would read `ON` as a join's.
        let _ = tx.execute(
            "INSERT INTO status_lists (id, next_index, size)
             SELECT MAX(id) + 1, 0, $1 FROM status_lists WHERE true ON CONFLICT DO NOTHING",
            args![STATUS_LIST_SIZE],
        )?;
    };
    let mut indexes = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
    let mut drawn = 0u64;
    let mut seen = std::collections::HashSet::with_capacity(indexes.capacity());
    while (indexes.len() as u64) < count {
        if drawn >= count * TRIES_PER_POSITION {
            return Err(StoreError::Internal(format!(
                "status list {list}: no free position found in {drawn} random draws"
            )));
        }
        let wanted = count - indexes.len() as u64;
        let candidates = (0..wanted)
            .map(|_| random_position())
            .collect::<Result<Vec<_>, _>>()?;
        drawn += wanted;
        for index in tx.keep_positions(list, &candidates)? {
            // Once each, whatever the database answers.
            if seen.insert(index) {
                indexes.push(index);
            }
        }
    }
    Ok(StatusPositions { list, indexes })
}

/// Signs a credential again: an active one keeps its position; one
/// suspended because its key was revoked moves to `new_position`, becomes
/// active there, and the position it leaves is revoked for good.
pub(super) fn refresh(
    tx: &mut dyn Tx,
    r: &Refresh,
    decision: &DecisionRecord,
) -> Result<(), StoreError> {
    let row = tx
        .query_opt(
            "SELECT holder, device, state, suspended_for_key, status_list, status_index
             FROM credentials WHERE id = $1 FOR UPDATE",
            args![&r.id],
        )?
        .ok_or(StoreError::NotFound)?;
    let state = CredentialState::parse(&row.text(2)?)?;
    let (holder, device) = (row.blob(0)?, row.text(1)?);
    check_refresh((&holder, &device), state, row.flag(3)?, r)?;
    match r.new_position {
        None => {
            let _ = tx.execute(
                "UPDATE credentials SET kid = $1, valid_until = $2
                 WHERE id = $3 AND state = 'active'",
                args![&r.kid, r.valid_until, &r.id],
            )?;
        }
        Some((list, index)) => {
            let _ = tx.execute(
                "INSERT INTO revoked_positions (list, idx) VALUES ($1, $2)",
                args![row.count(4)?, row.count(5)?],
            )?;
            let _ = tx.execute(
                "UPDATE credentials SET kid = $1, valid_until = $2, state = 'active',
                        suspended_for_key = FALSE, status_list = $3, status_index = $4
                 WHERE id = $5 AND state = 'suspended'",
                args![&r.kid, r.valid_until, list, index, &r.id],
            )?;
        }
    }
    tx.append_audit(decision, Some(&r.id), None)
}

/// Whether `list` has been opened.
pub(super) fn exists(tx: &mut dyn Tx, list: u32) -> Result<bool, StoreError> {
    Ok(tx
        .query_opt("SELECT 1 FROM status_lists WHERE id = $1", args![list])?
        .is_some())
}

pub(super) fn list_id(list: u64) -> Result<u32, StoreError> {
    u32::try_from(list)
        .map_err(|_| StoreError::Internal(format!("status list {list} is out of range")))
}

/// A uniform position in a list (the size is a power of two: masking is
/// unbiased), from the operating system's generator through OpenSSL.
fn random_position() -> Result<u64, StoreError> {
    let mut bytes = [0u8; 8];
    openssl::rand::rand_bytes(&mut bytes)
        .map_err(|e| StoreError::Internal(format!("no randomness for a status position: {e}")))?;
    Ok(u64::from_le_bytes(bytes) & (STATUS_LIST_SIZE - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_fall_in_the_list() {
        assert!(STATUS_LIST_SIZE.is_power_of_two());
        for _ in 0..1000 {
            assert!(random_position().unwrap() < STATUS_LIST_SIZE);
        }
    }
}
