//! Statements in one PostgreSQL transaction: parameters typed by what the
//! server expects, rows copied out, errors named; and PostgreSQL's own ways
//! of queueing audit entries and counting free copies.

use std::error::Error;

use bytes::BytesMut;
use postgres::types::{IsNull, ToSql, Type, to_sql_checked};

use super::connection::RawTx;
use super::errors::map_err;
use super::sequencer::{self, Numbers};
use super::{at_once, quota};
use crate::store::StoreError;
use crate::store::sql::{Appended, Cell, KeptResponse, Row, Tx, Value};

/// The registry's view of one transaction.
pub(super) struct PgTx<'t, 'c> {
    pub(super) raw: &'t mut RawTx<'c>,
    /// A write's audit numbers.
    pub(super) audit: Option<Numbers<'t>>,
}

impl<'t> PgTx<'t, '_> {
    /// A write's audit numbers; an entry outside a write is a bug.
    fn numbers(&self) -> Result<Numbers<'t>, StoreError> {
        self.audit.ok_or_else(|| {
            StoreError::Internal("an audit entry outside a write transaction".into())
        })
    }
}

fn mismatch(value: &Value<'_>, ty: &Type) -> Box<dyn Error + Sync + Send> {
    format!("a registry parameter {value:?} cannot be a PostgreSQL {ty}").into()
}

impl ToSql for Value<'_> {
    /// Integers are narrowed to the column's width; every other value goes
    /// only where its own type is accepted.
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        match *self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(v) if *ty == Type::INT8 => v.to_sql(ty, out),
            Value::Int(v) if *ty == Type::INT4 => i32::try_from(v)?.to_sql(ty, out),
            Value::Int(v) if *ty == Type::INT2 => i16::try_from(v)?.to_sql(ty, out),
            Value::Bool(v) if <bool as ToSql>::accepts(ty) => v.to_sql(ty, out),
            Value::Text(v) if <&str as ToSql>::accepts(ty) => v.to_sql(ty, out),
            Value::Blob(v) if <&[u8] as ToSql>::accepts(ty) => v.to_sql(ty, out),
            _ => Err(mismatch(self, ty)),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// One cell; a type the registry never stores is a bug, not an outage.
fn cell(row: &postgres::Row, i: usize, ty: &Type) -> Result<Cell, StoreError> {
    let int = |v: Option<i64>| v.map_or(Cell::Null, Cell::Int);
    let read = match *ty {
        Type::INT8 => row.try_get::<_, Option<i64>>(i).map(int),
        Type::INT4 => row
            .try_get::<_, Option<i32>>(i)
            .map(|v| int(v.map(i64::from))),
        Type::INT2 => row
            .try_get::<_, Option<i16>>(i)
            .map(|v| int(v.map(i64::from))),
        Type::BOOL => row
            .try_get::<_, Option<bool>>(i)
            .map(|v| v.map_or(Cell::Null, Cell::Bool)),
        Type::BYTEA => row
            .try_get::<_, Option<Vec<u8>>>(i)
            .map(|v| v.map_or(Cell::Null, Cell::Blob)),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => row
            .try_get::<_, Option<String>>(i)
            .map(|v| v.map_or(Cell::Null, Cell::Text)),
        _ => {
            return Err(StoreError::Internal(format!(
                "column {i} is a PostgreSQL {ty}, which the registry does not read"
            )));
        }
    };
    read.map_err(|e| StoreError::Internal(format!("column {i}: {e}")))
}

fn row_from(row: &postgres::Row) -> Result<Row, StoreError> {
    row.columns()
        .iter()
        .enumerate()
        .map(|(i, column)| cell(row, i, column.type_()))
        .collect::<Result<Vec<_>, _>>()
        .map(Row)
}

fn dyn_params<'v>(params: &'v [Value<'_>]) -> Vec<&'v (dyn ToSql + Sync)> {
    params.iter().map(|v| v as &(dyn ToSql + Sync)).collect()
}

impl Tx for PgTx<'_, '_> {
    fn execute(&mut self, sql: &str, params: &[Value<'_>]) -> Result<u64, StoreError> {
        self.raw.execute(sql, &dyn_params(params)).map_err(map_err)
    }

    fn query(&mut self, sql: &str, params: &[Value<'_>]) -> Result<Vec<Row>, StoreError> {
        self.raw
            .query(sql, &dyn_params(params))
            .map_err(map_err)?
            .iter()
            .map(row_from)
            .collect()
    }

    fn batch(&mut self, sql: &str) -> Result<(), StoreError> {
        self.raw.batch_execute(sql).map_err(map_err)
    }

    fn append(&mut self, entry: Appended<'_>) -> Result<(), StoreError> {
        sequencer::enqueue(self.raw, self.numbers()?, &entry, None)
    }

    fn insert_audited(
        &mut self,
        sql: &str,
        params: &[Value<'_>],
        entry: Appended<'_>,
    ) -> Result<(), StoreError> {
        let numbers = self.numbers()?;
        sequencer::enqueue(self.raw, numbers, &entry, Some((sql, &dyn_params(params))))
    }

    fn issue_at_once(
        &mut self,
        issued: (&crate::store::NewCredential, bool),
        decision: &crate::store::DecisionRecord,
        kept: Option<KeptResponse<'_>>,
    ) -> Result<bool, StoreError> {
        let numbers = self.numbers()?;
        at_once::issue(self.raw, numbers, issued, decision, kept)
    }

    fn keep_positions(&mut self, list: u32, candidates: &[u64]) -> Result<Vec<u64>, StoreError> {
        // One round trip for a block, not one per position.
        let candidates: Vec<i64> = candidates.iter().map(|&i| i as i64).collect();
        let rows = self
            .raw
            .query(
                "INSERT INTO status_positions (list, idx)
                 SELECT CAST($1 AS BIGINT), unnest(CAST($2 AS BIGINT[])) ON CONFLICT DO NOTHING
                 RETURNING idx",
                &[&i64::from(list), &candidates],
            )
            .map_err(map_err)?;
        // Only positions drawn here, each once, whatever the server says.
        let mut drawn: std::collections::HashSet<i64> = candidates.into_iter().collect();
        let mut kept = Vec::with_capacity(rows.len());
        for row in &rows {
            let index: i64 = row.try_get(0).map_err(map_err)?;
            if drawn.remove(&index) {
                kept.push(index as u64);
            }
        }
        Ok(kept)
    }

    fn take_free_copy(&mut self, holder: &[u8]) -> Result<bool, StoreError> {
        quota::take(self.raw, holder)
    }

    fn free_copies(&mut self) -> Result<(u64, u64), StoreError> {
        quota::totals(self.raw)
    }

    fn free_copies_used_sql(&self) -> &'static str {
        quota::USED_SQL
    }

    fn set_free_quota(&mut self, quota: u64) -> Result<(), StoreError> {
        quota::set(self.raw, quota)
    }

    fn probe_write(&mut self) -> Result<(), StoreError> {
        sequencer::probe(self.raw)
    }

    fn clock_ms(&self) -> &'static str {
        "CAST(extract(epoch FROM clock_timestamp()) * 1000 AS BIGINT)"
    }
}
