//! Status-list positions, drawn at random: which list is open, and which
//! of its positions are free. A position is kept in `status_positions`
//! from the moment it is drawn, whether or not a credential ever takes it,
//! so none is handed out twice.

use super::tx::{Tx, args};
use crate::store::{STATUS_LIST_FILL, STATUS_LIST_SIZE, StatusPositions, StoreError};

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
    let mut tries = 0u64;
    while (indexes.len() as u64) < count {
        tries += 1;
        if tries > count * TRIES_PER_POSITION {
            return Err(StoreError::Internal(format!(
                "status list {list}: no free position found in {tries} random draws"
            )));
        }
        let index = random_position()?;
        if tx.execute(
            "INSERT INTO status_positions (list, idx) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            args![list, index],
        )? == 1
        {
            indexes.push(index);
        }
    }
    Ok(StatusPositions { list, indexes })
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
