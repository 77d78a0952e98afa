//! The audit log's tiles in the database: hash ranges read for proofs,
//! tiles and a node's start, tile hashes stored by checkpoints, and full
//! tiles kept whole, one row of 256 hashes each, so a proof at 10^8
//! entries reads one row per tile level instead of up to 256 (issue 15:
//! proof time flat with the log's size).

use super::tx::{Tx, Value, args};
use crate::store::StoreError;

/// Hashes in a full tile (c2sp.org/tlog-tiles).
const TILE_WIDTH: u64 = 256;
/// Ranges one hash query reads; more are read in further queries.
pub(crate) const HASH_RANGE_SLOTS: usize = 16;

/// Levels of whole tiles apart in [`full_tile_key`]: room for 2^40 tiles
/// per level (2.8 * 10^14 entries at level 0).
const LEVEL_SPAN: u64 = 1 << LEVEL_BITS;
const LEVEL_BITS: u32 = 40;

/// The key of whole tile 0 of `level` in `audit_full_tiles` (below 2^48:
/// a level is a `u8`).
fn level_key(level: u8) -> i64 {
    i64::from(level) << LEVEL_BITS
}

/// The key of whole tile `index` of `level`; none for an index no log
/// reaches.
pub(crate) fn full_tile_key(level: u8, index: u64) -> Option<i64> {
    (index < LEVEL_SPAN)
        .then(|| i64::try_from(index).ok())
        .flatten()
        .map(|index| level_key(level) + index)
}

/// The one hash-range query: `HASH_RANGE_SLOTS` slots of (level, start,
/// end, whole tile's key), each row tagged with its slot. One SQL text for
/// every call, so each connection prepares it once (a text per shape would
/// fill the statement caches). A slot whose tile is stored whole reads
/// that one row (`w` = 1); otherwise level 0 reads the log's leaves, others
/// `audit_tiles`. An unused slot is an empty range.
fn hash_ranges_sql() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        let parts: Vec<String> = (0..HASH_RANGE_SLOTS)
            .map(|i| {
                let (l, a, b, k) = (4 * i + 1, 4 * i + 2, 4 * i + 3, 4 * i + 4);
                // The terms on parameters alone are tested once, before
                // any index is searched: an unused slot and a slot's other
                // tables cost no seek (a seek into a log of 10^8 entries
                // reads pages from disk). A subquery is not hoisted so:
                // SQLite tests it at each row the range's scan reaches, so
                // beside the range a NOT EXISTS walked every row of a range
                // read whole from its tile (256 rows of the log spread over
                // the file, at every proof). As the range's start it runs
                // once, before the seek, and its NULL ends the scan there.
                let used = format!("CAST(${b} AS BIGINT) > CAST(${a} AS BIGINT)");
                let start = format!(
                    "CASE WHEN EXISTS (SELECT 1 FROM audit_full_tiles WHERE tile = ${k}) \
                     THEN NULL ELSE CAST(${a} AS BIGINT) END"
                );
                format!(
                    "SELECT CAST({i} AS BIGINT) AS r, hashes AS h, tile AS k, CAST(1 AS BIGINT) AS w \
                     FROM audit_full_tiles WHERE {used} AND tile = ${k} \
                     UNION ALL SELECT CAST({i} AS BIGINT), leaf, seq, CAST(0 AS BIGINT) FROM audit_log \
                     WHERE CAST(${l} AS BIGINT) = 0 AND {used} \
                     AND seq >= {start} AND seq < ${b} \
                     UNION ALL SELECT CAST({i} AS BIGINT), hash, idx, CAST(0 AS BIGINT) FROM audit_tiles \
                     WHERE CAST(${l} AS BIGINT) <> 0 AND {used} \
                     AND level = ${l} AND idx >= {start} AND idx < ${b}"
                )
            })
            .collect();
        // No ORDER BY: sorting every row in the database cost more than
        // the rows' own reads; they are put in order below.
        parts.join(" UNION ALL ")
    })
}

/// The tile a range lies in, if it lies in one (only such a range can be
/// read from a whole tile).
fn tile_of((_, start, end): (u8, u64, u64)) -> Option<u64> {
    let tile = start / TILE_WIDTH;
    (end <= (tile + 1) * TILE_WIDTH).then_some(tile)
}

/// Reads up to `HASH_RANGE_SLOTS` ranges with [`hash_ranges_sql`]. A row
/// missing in the middle ends its range there (a hash is never taken for
/// its neighbour's), and a whole tile of the wrong length gives nothing.
pub(crate) fn read_hash_ranges(
    tx: &mut dyn Tx,
    ranges: &[(u8, u64, u64)],
) -> Result<Vec<Vec<[u8; 32]>>, StoreError> {
    let mut values: Vec<Value<'_>> = Vec::with_capacity(4 * HASH_RANGE_SLOTS);
    for slot in 0..HASH_RANGE_SLOTS {
        let range = ranges.get(slot).copied().unwrap_or((0, 0, 0));
        // -1: no whole tile has that key.
        let whole = tile_of(range).and_then(|t| full_tile_key(range.0, t));
        values.extend([
            Value::from(u32::from(range.0)),
            Value::from(range.1),
            Value::from(range.2),
            Value::Int(whole.unwrap_or(-1)),
        ]);
    }
    let mut rows: Vec<(usize, u64, [u8; 32])> = Vec::new();
    let mut out: Vec<Vec<[u8; 32]>> = vec![Vec::new(); ranges.len()];
    let mut whole = vec![false; ranges.len()];
    for row in tx.query(hash_ranges_sql(), &values)? {
        let slot = usize::try_from(row.count(0)?).unwrap_or(usize::MAX);
        if row.flag(3)? {
            let (Some(hashes), Some(&range), Some(whole)) =
                (out.get_mut(slot), ranges.get(slot), whole.get_mut(slot))
            else {
                return Err(StoreError::Internal("hash range out of bounds".into()));
            };
            *whole = true;
            *hashes = slice_of_tile(&row.blob(1)?, range);
        } else {
            rows.push((slot, row.count(2)?, row.hash(1)?));
        }
    }
    rows.sort_unstable_by_key(|&(slot, k, _)| (slot, k));
    let mut broken = whole;
    for (slot, k, hash) in rows {
        let (Some(hashes), Some(&(_, start, _)), Some(broken)) =
            (out.get_mut(slot), ranges.get(slot), broken.get_mut(slot))
        else {
            return Err(StoreError::Internal("hash range out of bounds".into()));
        };
        if k != start + hashes.len() as u64 {
            *broken = true;
        }
        if !*broken {
            hashes.push(hash);
        }
    }
    Ok(out)
}

/// Hashes `start..end` of a whole tile's bytes; none if they are not a
/// full tile (a damaged row: the tree reader reports them missing).
fn slice_of_tile(bytes: &[u8], (_, start, end): (u8, u64, u64)) -> Vec<[u8; 32]> {
    if bytes.len() as u64 != TILE_WIDTH * 32 {
        return Vec::new();
    }
    let from = (start % TILE_WIDTH) as usize;
    bytes
        .chunks_exact(32)
        .skip(from)
        .take((end - start) as usize)
        .filter_map(|h| <[u8; 32]>::try_from(h).ok())
        .collect()
}

/// The refusal of a tile row that differs from the one stored.
const REWRITTEN: StoreError = StoreError::Conflict {
    rule: "audit.tile_hash",
};

/// Stores `values` as rows `first..` of `scope` (a level, or a level's
/// first whole-tile key) with `insert` (of one row: scope `$1`, index
/// `$2`, value `$3`; a row already stored stays), then reads them back
/// with `stored` (scope `$1`, indexes `$2` to `$3`, in order): a row that
/// differs is refused ([`REWRITTEN`]), tile rows never change once written.
fn store_once(
    tx: &mut dyn Tx,
    (insert, stored): (&str, &str),
    scope: i64,
    first: u64,
    values: &[Vec<u8>],
) -> Result<(), StoreError> {
    for (index, value) in (first..).zip(values) {
        let _ = tx.execute(insert, args![scope, index, &value[..]])?;
    }
    let end = first + values.len() as u64;
    let stored = tx.query(stored, args![scope, first, end])?;
    let stored: Vec<Vec<u8>> = stored.iter().map(|r| r.blob(0)).collect::<Result<_, _>>()?;
    if stored != values {
        return Err(REWRITTEN);
    }
    Ok(())
}

/// Stores tile hashes of level `level` >= 1 from `start`; a stored hash
/// that differs is refused (`audit.tile_hash`).
pub(crate) fn add_tile_hashes(
    tx: &mut dyn Tx,
    level: u8,
    start: u64,
    hashes: &[[u8; 32]],
) -> Result<(), StoreError> {
    let values: Vec<Vec<u8>> = hashes.iter().map(|h| h.to_vec()).collect();
    let sql = (
        "INSERT INTO audit_tiles (level, idx, hash) VALUES ($1, $2, $3)
         ON CONFLICT (level, idx) DO NOTHING",
        "SELECT hash FROM audit_tiles WHERE level = $1 AND idx >= $2 AND idx < $3 ORDER BY idx",
    );
    store_once(tx, sql, i64::from(level), start, &values)
}

/// Stores full tiles of level `level` whole from tile `first`, each
/// `TILE_WIDTH` hashes; a stored tile that differs is refused
/// (`audit.tile_hash`), one of another width too, and so is an index no
/// key reaches.
pub(crate) fn add_full_tiles(
    tx: &mut dyn Tx,
    level: u8,
    first: u64,
    tiles: &[Vec<[u8; 32]>],
) -> Result<(), StoreError> {
    let past_last = first.saturating_add(tiles.len() as u64);
    if tiles.iter().any(|t| t.len() as u64 != TILE_WIDTH) || past_last > LEVEL_SPAN {
        return Err(REWRITTEN);
    }
    let values: Vec<Vec<u8>> = tiles.iter().map(|t| t.concat()).collect();
    // Keyed as `full_tile_key`: the level's first key plus the index.
    let sql = (
        "INSERT INTO audit_full_tiles (tile, hashes)
         VALUES (CAST($1 AS BIGINT) + CAST($2 AS BIGINT), $3) ON CONFLICT (tile) DO NOTHING",
        "SELECT hashes FROM audit_full_tiles
         WHERE tile >= CAST($1 AS BIGINT) + CAST($2 AS BIGINT)
           AND tile < CAST($1 AS BIGINT) + CAST($3 AS BIGINT) ORDER BY tile",
    );
    store_once(tx, sql, level_key(level), first, &values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_is_read_from_a_whole_tile_only_within_it() {
        assert_eq!(tile_of((0, 0, 256)), Some(0));
        assert_eq!(tile_of((1, 300, 512)), Some(1));
        assert_eq!(tile_of((0, 200, 300)), None);
    }

    #[test]
    fn whole_tile_keys_keep_levels_apart() {
        assert_eq!(full_tile_key(0, 5), Some(5));
        assert_eq!(full_tile_key(1, 0), Some(1 << 40));
        assert!(full_tile_key(0, LEVEL_SPAN - 1) < full_tile_key(1, 0));
        assert_eq!(full_tile_key(0, LEVEL_SPAN), None);
    }

    /// (rows, SQLite VM steps) of one hash-range query reading `range`.
    fn read_steps(db: &rusqlite::Connection, range: (u8, u64, u64)) -> (usize, i32) {
        let mut params: Vec<i64> = Vec::new();
        for slot in 0..HASH_RANGE_SLOTS {
            let (level, start, end) = if slot == 0 { range } else { (0, 0, 0) };
            let key = tile_of((level, start, end)).and_then(|t| full_tile_key(level, t));
            params.extend([
                i64::from(level),
                start as i64,
                end as i64,
                key.unwrap_or(-1),
            ]);
        }
        let mut statement = db.prepare(&hash_ranges_sql().replace('$', "?")).unwrap();
        let rows = statement
            .query_map(rusqlite::params_from_iter(params), |_| Ok(()))
            .unwrap()
            .count();
        (
            rows,
            statement.get_status(rusqlite::StatementStatus::VmStep),
        )
    }

    /// SQLite tests a subquery at each row a scan reaches: a range stored
    /// whole must not walk the log's rows (or the tile hashes) beside it.
    #[test]
    fn a_range_read_from_its_whole_tile_walks_no_other_rows() {
        let db = rusqlite::Connection::open_in_memory().unwrap();
        db.execute_batch(
            "CREATE TABLE audit_log (seq INTEGER PRIMARY KEY, leaf BLOB NOT NULL);
             CREATE TABLE audit_tiles (level INTEGER NOT NULL, idx INTEGER NOT NULL,
                 hash BLOB NOT NULL, PRIMARY KEY (level, idx));
             CREATE TABLE audit_full_tiles (tile INTEGER PRIMARY KEY, hashes BLOB NOT NULL);
             WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 255)
             INSERT INTO audit_log SELECT i, zeroblob(32) FROM n;
             INSERT INTO audit_tiles SELECT 1, seq, leaf FROM audit_log;",
        )
        .unwrap();
        let (leaves, tile_hashes) = ((0, 0, 256), (1, 0, 256));
        // What the statement costs reading nothing: its slots' tests.
        let (_, idle_steps) = read_steps(&db, (0, 0, 0));
        // Not yet whole: each range is its 256 rows.
        let (rows, row_steps) = read_steps(&db, leaves);
        assert_eq!(rows, 256);
        assert_eq!(read_steps(&db, tile_hashes).0, 256);
        for (level, range) in [(0u8, leaves), (1, tile_hashes)] {
            let key = full_tile_key(level, 0).unwrap();
            let _ = db
                .execute(
                    "INSERT INTO audit_full_tiles VALUES (?1, zeroblob(8192))",
                    [key],
                )
                .unwrap();
            let (rows, steps) = read_steps(&db, range);
            assert_eq!(rows, 1, "the whole tile alone");
            // One row's steps beyond the idle statement; a walk over the
            // range's 256 rows costs several steps each.
            assert!(
                steps < idle_steps + 64,
                "{steps} VM steps, {idle_steps} reading nothing, {row_steps} reading the range row by row"
            );
        }
    }

    #[test]
    fn a_whole_tile_gives_its_slice_and_a_damaged_one_nothing() {
        let bytes: Vec<u8> = (0..256u32).flat_map(|i| [i as u8; 32]).collect();
        assert_eq!(
            slice_of_tile(&bytes, (0, 512 + 3, 512 + 5)),
            vec![[3; 32], [4; 32]]
        );
        assert!(slice_of_tile(&bytes[..32 * 255], (0, 0, 2)).is_empty());
    }
}
