//! Statements on one SQLite connection: the shared dialect translated,
//! parameters bound, rows copied out, errors named; and SQLite's own way of
//! appending to the audit log and counting free copies.

use std::borrow::Cow;

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, ErrorCode};

use crate::store::StoreError;
use crate::store::sql::{Appended, Cell, Numbering, Row, Taken, Tx, Value, args, rule_for_columns};

/// A transaction (or, on a reader, autocommit statements) on a connection.
pub(super) struct SqliteTx<'c> {
    pub(super) conn: &'c Connection,
    /// A write's audit numbers: where they come from, and those it took.
    pub(super) audit: Option<(&'c Numbering, &'c std::cell::RefCell<Taken>)>,
}

impl rusqlite::ToSql for Value<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match *self {
            Value::Null => ValueRef::Null,
            Value::Int(v) => ValueRef::Integer(v),
            Value::Bool(v) => ValueRef::Integer(i64::from(v)),
            Value::Text(v) => ValueRef::Text(v.as_bytes()),
            Value::Blob(v) => ValueRef::Blob(v),
        }))
    }
}

/// The shared dialect in SQLite's words: `$N` placeholders become `?N`,
/// and `FOR UPDATE` goes (the single writer already holds every row).
pub(super) fn dialect(sql: &str) -> Cow<'_, str> {
    if !sql.contains('$') && !sql.contains(" FOR UPDATE") {
        return Cow::Borrowed(sql);
    }
    Cow::Owned(sql.replace(" FOR UPDATE", "").replace('$', "?"))
}

pub(super) fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// Maps a SQLite error: a unique constraint to the invariant it guards,
/// I/O trouble (full, read-only, busy) to `Unavailable`.
pub(super) fn map_err(e: rusqlite::Error) -> StoreError {
    let rusqlite::Error::SqliteFailure(failure, message) = &e else {
        return StoreError::Internal(e.to_string());
    };
    match failure.code {
        ErrorCode::ConstraintViolation => message
            .as_deref()
            .and_then(|m| m.strip_prefix("UNIQUE constraint failed: "))
            .and_then(rule_for_columns)
            .map_or_else(
                || StoreError::Internal(e.to_string()),
                |rule| StoreError::Conflict { rule },
            ),
        ErrorCode::DiskFull
        | ErrorCode::ReadOnly
        | ErrorCode::SystemIoFailure
        | ErrorCode::CannotOpen
        | ErrorCode::DatabaseBusy
        | ErrorCode::DatabaseLocked
        | ErrorCode::PermissionDenied => StoreError::Unavailable(e.to_string()),
        _ => StoreError::Internal(e.to_string()),
    }
}

fn cell(value: ValueRef<'_>) -> Result<Cell, StoreError> {
    Ok(match value {
        ValueRef::Null => Cell::Null,
        ValueRef::Integer(v) => Cell::Int(v),
        ValueRef::Text(v) => Cell::Text(
            String::from_utf8(v.to_vec())
                .map_err(|_| StoreError::Internal("text in the registry is not UTF-8".into()))?,
        ),
        ValueRef::Blob(v) => Cell::Blob(v.to_vec()),
        ValueRef::Real(_) => {
            return Err(StoreError::Internal(
                "the registry holds no floating-point values".into(),
            ));
        }
    })
}

impl Tx for SqliteTx<'_> {
    fn execute(&mut self, sql: &str, params: &[Value<'_>]) -> Result<u64, StoreError> {
        // Prepared once per connection: parsing a statement for every call
        // costs about as much as running it.
        let mut statement = self.conn.prepare_cached(&dialect(sql)).map_err(map_err)?;
        let changed = statement
            .execute(rusqlite::params_from_iter(params))
            .map_err(map_err)?;
        Ok(changed as u64)
    }

    fn query(&mut self, sql: &str, params: &[Value<'_>]) -> Result<Vec<Row>, StoreError> {
        let mut statement = self.conn.prepare_cached(&dialect(sql)).map_err(map_err)?;
        let columns = statement.column_count();
        let mut rows = statement
            .query(rusqlite::params_from_iter(params))
            .map_err(map_err)?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(map_err)? {
            let cells = (0..columns)
                .map(|i| row.get_ref(i).map_err(map_err).and_then(cell))
                .collect::<Result<Vec<_>, _>>()?;
            out.push(Row(cells));
        }
        Ok(out)
    }

    fn batch(&mut self, sql: &str) -> Result<(), StoreError> {
        self.conn.execute_batch(sql).map_err(map_err)
    }

    fn append(&mut self, entry: Appended<'_>) -> Result<(), StoreError> {
        let Appended {
            decision,
            credential,
            holder,
        } = entry;
        let Some((numbering, taken)) = self.audit else {
            return Err(StoreError::Internal(
                "an audit entry outside a write transaction".into(),
            ));
        };
        // One writer: the next place in the log is the last one plus one
        // (the rowid's B-tree answers that from its rightmost page).
        let seq = self
            .query_one("SELECT COALESCE(MAX(seq) + 1, 0) FROM audit_log", &[])?
            .count(0)?;
        let node_seq = numbering.take(&decision.node, true, || {
            self.query_one(
                "SELECT COALESCE(MAX(node_seq) + 1, 0) FROM audit_log WHERE node = $1",
                args![&decision.node],
            )?
            .count(0)
        })?;
        taken.borrow_mut().push((decision.node.clone(), node_seq));
        let entry = numbering
            .seal(decision.entry(node_seq, credential, holder))?
            .encode();
        let leaf = crate::audit::merkle::leaf_hash(&entry);
        let _ = self.execute(
            "INSERT INTO audit_log (seq, node, node_seq, entry, leaf) VALUES ($1, $2, $3, $4, $5)",
            args![seq, &decision.node, node_seq, &entry, &leaf],
        )?;
        Ok(())
    }

    fn take_free_copy(&mut self, holder: &[u8]) -> Result<bool, StoreError> {
        // One row: the single writer serialises every taker anyway.
        Ok(self.execute(
            "UPDATE quotas SET used = used + 1 WHERE name = 'free_first_time' AND used < quota
               AND NOT EXISTS (SELECT 1 FROM credentials WHERE holder = $1 AND free_copy)",
            args![holder],
        )? == 1)
    }

    fn free_copies(&mut self) -> Result<(u64, u64), StoreError> {
        let row = self.query_one(
            "SELECT used, quota FROM quotas WHERE name = 'free_first_time'",
            &[],
        )?;
        Ok((row.count(0)?, row.count(1)?))
    }

    fn free_copies_used_sql(&self) -> &'static str {
        "(SELECT used FROM quotas WHERE name = 'free_first_time')"
    }

    fn set_free_quota(&mut self, quota: u64) -> Result<(), StoreError> {
        let _ = self.execute(
            "UPDATE quotas SET quota = CASE WHEN $1 < used THEN used ELSE $1 END
             WHERE name = 'free_first_time'",
            args![quota],
        )?;
        Ok(())
    }

    fn probe_write(&mut self) -> Result<(), StoreError> {
        let _ = self.execute(
            "INSERT INTO write_probe (id, at) VALUES (1, CAST(strftime('%s', 'now') AS INTEGER))
             ON CONFLICT (id) DO UPDATE SET at = excluded.at",
            &[],
        )?;
        Ok(())
    }

    fn clock_ms(&self) -> &'static str {
        "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shared_dialect_reads_as_sqlite() {
        assert_eq!(
            dialect("SELECT state FROM credentials WHERE id = $1 FOR UPDATE"),
            "SELECT state FROM credentials WHERE id = ?1"
        );
        assert!(matches!(dialect("SELECT 1"), Cow::Borrowed(_)));
    }
}
