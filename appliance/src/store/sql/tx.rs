//! What a database driver gives the registry's logic: transactions that run
//! statements with typed parameters and return rows of owned cells, and the
//! few operations whose SQL truly differs per database.
//!
//! Statements are written once, in the dialect both databases share:
//! numbered placeholders (`$1`), `FOR UPDATE` where PostgreSQL needs a row
//! lock (SQLite's single writer has it already, and its driver drops the
//! words), `CAST(… AS …)` rather than `::`, and `CASE` rather than
//! `GREATEST`/`LEAST` or two-argument `MAX`/`MIN`.

use super::super::{DecisionRecord, Pseudonym, StoreError};

/// A statement parameter.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Value<'a> {
    /// SQL NULL (of whatever type the statement expects).
    Null,
    /// An integer; a driver narrows it to the column's width.
    Int(i64),
    /// A boolean (an integer 0/1 on SQLite).
    Bool(bool),
    /// Text.
    Text(&'a str),
    /// Bytes.
    Blob(&'a [u8]),
}

impl From<i64> for Value<'_> {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}

impl From<u64> for Value<'_> {
    /// Counts and indexes stay far below 2^63; one that did not would
    /// saturate rather than turn negative.
    fn from(v: u64) -> Self {
        Value::Int(i64::try_from(v).unwrap_or(i64::MAX))
    }
}

impl From<u32> for Value<'_> {
    fn from(v: u32) -> Self {
        Value::Int(i64::from(v))
    }
}

impl From<bool> for Value<'_> {
    fn from(v: bool) -> Self {
        Value::Bool(v)
    }
}

impl<'a> From<&'a str> for Value<'a> {
    fn from(v: &'a str) -> Self {
        Value::Text(v)
    }
}

impl<'a> From<&'a String> for Value<'a> {
    fn from(v: &'a String) -> Self {
        Value::Text(v)
    }
}

impl<'a> From<&'a [u8]> for Value<'a> {
    fn from(v: &'a [u8]) -> Self {
        Value::Blob(v)
    }
}

impl<'a> From<&'a Vec<u8>> for Value<'a> {
    fn from(v: &'a Vec<u8>) -> Self {
        Value::Blob(v)
    }
}

impl<'a> From<&'a [u8; 32]> for Value<'a> {
    fn from(v: &'a [u8; 32]) -> Self {
        Value::Blob(v)
    }
}

impl<'a, T> From<Option<T>> for Value<'a>
where
    T: Into<Value<'a>>,
{
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

/// The parameters of one statement, each converted with `Value::from`.
macro_rules! args {
    ($($value:expr),* $(,)?) => {
        &[$($crate::store::sql::Value::from($value)),*]
    };
}
pub(crate) use args;

/// One cell of a result row, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Cell {
    /// NULL.
    Null,
    /// Any integer column.
    Int(i64),
    /// A PostgreSQL boolean (SQLite returns integers).
    Bool(bool),
    /// Text.
    Text(String),
    /// Bytes.
    Blob(Vec<u8>),
}

/// A result row: cells by column position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Row(pub(crate) Vec<Cell>);

fn wrong(column: usize, wanted: &str, cell: &Cell) -> StoreError {
    StoreError::Internal(format!(
        "column {column} of a registry row is {cell:?}, not {wanted}"
    ))
}

impl Row {
    fn cell(&self, column: usize) -> Result<&Cell, StoreError> {
        self.0
            .get(column)
            .ok_or_else(|| StoreError::Internal(format!("a registry row has no column {column}")))
    }

    /// An integer that may be NULL.
    pub(crate) fn opt_int(&self, column: usize) -> Result<Option<i64>, StoreError> {
        match self.cell(column)? {
            Cell::Null => Ok(None),
            Cell::Int(v) => Ok(Some(*v)),
            other => Err(wrong(column, "an integer", other)),
        }
    }

    /// An integer.
    pub(crate) fn int(&self, column: usize) -> Result<i64, StoreError> {
        self.opt_int(column)?
            .ok_or_else(|| wrong(column, "an integer", &Cell::Null))
    }

    /// A count, size or index (never negative).
    pub(crate) fn count(&self, column: usize) -> Result<u64, StoreError> {
        let v = self.int(column)?;
        u64::try_from(v).map_err(|_| wrong(column, "a count", &Cell::Int(v)))
    }

    /// A flag: a boolean, or an integer on SQLite.
    pub(crate) fn flag(&self, column: usize) -> Result<bool, StoreError> {
        match self.cell(column)? {
            Cell::Bool(v) => Ok(*v),
            Cell::Int(v) => Ok(*v != 0),
            other => Err(wrong(column, "a flag", other)),
        }
    }

    /// A flag that may be NULL.
    pub(crate) fn opt_flag(&self, column: usize) -> Result<Option<bool>, StoreError> {
        match self.cell(column)? {
            Cell::Null => Ok(None),
            _ => self.flag(column).map(Some),
        }
    }

    /// Text that may be NULL.
    pub(crate) fn opt_text(&self, column: usize) -> Result<Option<String>, StoreError> {
        match self.cell(column)? {
            Cell::Null => Ok(None),
            Cell::Text(v) => Ok(Some(v.clone())),
            other => Err(wrong(column, "text", other)),
        }
    }

    /// Text.
    pub(crate) fn text(&self, column: usize) -> Result<String, StoreError> {
        self.opt_text(column)?
            .ok_or_else(|| wrong(column, "text", &Cell::Null))
    }

    /// Bytes that may be NULL.
    pub(crate) fn opt_blob(&self, column: usize) -> Result<Option<Vec<u8>>, StoreError> {
        match self.cell(column)? {
            Cell::Null => Ok(None),
            Cell::Blob(v) => Ok(Some(v.clone())),
            other => Err(wrong(column, "bytes", other)),
        }
    }

    /// Bytes.
    pub(crate) fn blob(&self, column: usize) -> Result<Vec<u8>, StoreError> {
        self.opt_blob(column)?
            .ok_or_else(|| wrong(column, "bytes", &Cell::Null))
    }

    /// A SHA-256 value (a leaf hash, a pseudonym).
    pub(crate) fn hash(&self, column: usize) -> Result<[u8; 32], StoreError> {
        let bytes = self.blob(column)?;
        <[u8; 32]>::try_from(bytes.as_slice())
            .map_err(|_| wrong(column, "32 bytes", &Cell::Blob(bytes)))
    }
}

/// One transaction of a driver. Statements are in the shared dialect (see
/// the module doc); a driver translates, prepares once per connection,
/// binds and converts rows.
pub(crate) trait Tx {
    /// Runs a statement; how many rows it changed.
    fn execute(&mut self, sql: &str, params: &[Value<'_>]) -> Result<u64, StoreError>;

    /// Runs a statement that returns rows (a `SELECT`, or `RETURNING`).
    fn query(&mut self, sql: &str, params: &[Value<'_>]) -> Result<Vec<Row>, StoreError>;

    /// The first row, if any.
    fn query_opt(&mut self, sql: &str, params: &[Value<'_>]) -> Result<Option<Row>, StoreError> {
        Ok(self.query(sql, params)?.into_iter().next())
    }

    /// The one row a statement always returns (an aggregate).
    fn query_one(&mut self, sql: &str, params: &[Value<'_>]) -> Result<Row, StoreError> {
        self.query_opt(sql, params)?.ok_or_else(|| {
            StoreError::Internal("a statement that returns one row returned none".into())
        })
    }

    /// Several statements, unprepared (migrations).
    fn batch(&mut self, sql: &str) -> Result<(), StoreError>;

    /// Appends a decision to the audit log, in this transaction.
    fn append_audit(
        &mut self,
        decision: &DecisionRecord,
        credential: Option<&str>,
        holder: Option<&Pseudonym>,
    ) -> Result<(), StoreError> {
        self.append(Appended {
            decision,
            credential,
            holder,
        })
    }

    /// How this database appends an entry (see [`Tx::append_audit`]).
    fn append(&mut self, entry: Appended<'_>) -> Result<(), StoreError>;

    /// Runs the INSERT `sql` (`params`) and appends `entry`, the decision
    /// about the row. A database may do both in one statement (PostgreSQL:
    /// a round trip less per issuance).
    fn insert_audited(
        &mut self,
        sql: &str,
        params: &[Value<'_>],
        entry: Appended<'_>,
    ) -> Result<(), StoreError> {
        let _ = self.execute(sql, params)?;
        self.append(entry)
    }

    /// The common issuance (`c` active and alone, `decision`'s entry, the
    /// response `kept` for an idempotency key) in one statement, where the
    /// database can: written only if the free copy comes out as asked
    /// (`want_free_copy`); whether it was written. Run by
    /// [`Driver::write_at_once_or`] only.
    fn issue_at_once(
        &mut self,
        _issued: (&crate::store::NewCredential, bool),
        _decision: &DecisionRecord,
        _kept: Option<KeptResponse<'_>>,
    ) -> Result<bool, StoreError> {
        Ok(false)
    }

    /// Keeps those of `candidates`, positions of status list `list`, that
    /// no one kept before (a position drawn twice is kept once); the ones
    /// it kept. One statement per position here (in-process on SQLite).
    fn keep_positions(&mut self, list: u32, candidates: &[u64]) -> Result<Vec<u64>, StoreError> {
        let mut kept = Vec::with_capacity(candidates.len());
        for &index in candidates {
            if self.execute(
                "INSERT INTO status_positions (list, idx) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                args![list, index],
            )? == 1
            {
                kept.push(index);
            }
        }
        Ok(kept)
    }

    /// Takes one free first-time copy from the quota for `holder` (a
    /// pseudonym) if it never had one and any is left: one statement on
    /// the usual path (an issuance's round trips are its cost on a
    /// cluster).
    fn take_free_copy(&mut self, holder: &[u8]) -> Result<bool, StoreError>;

    /// (used, quota) of the free first-time copies.
    fn free_copies(&mut self) -> Result<(u64, u64), StoreError>;

    /// A scalar subquery for the free first-time copies used (what
    /// [`Tx::free_copies`] reads first), to read them in a larger statement.
    fn free_copies_used_sql(&self) -> &'static str;

    /// Sets the free first-time quota, never below what was used.
    fn set_free_quota(&mut self, quota: u64) -> Result<(), StoreError>;

    /// A write that changes nothing but proves the audit log writable.
    fn probe_write(&mut self) -> Result<(), StoreError>;

    /// An SQL expression for the database's clock in unix milliseconds
    /// (leases follow the database's clock, not the nodes').
    fn clock_ms(&self) -> &'static str;
}

/// A decision on its way into the audit log, with what it names.
pub(crate) struct Appended<'a> {
    /// The decision.
    pub(crate) decision: &'a DecisionRecord,
    /// The credential it concerns, if any.
    pub(crate) credential: Option<&'a str>,
    /// The holder it concerns, if any (a pseudonym).
    pub(crate) holder: Option<&'a Pseudonym>,
}

/// An idempotency key's response, kept with the credential it answers.
pub(crate) struct KeptResponse<'a> {
    pub(crate) client: &'a str,
    pub(crate) key: &'a crate::store::IdempotencyKey,
    /// The response as stored (sealed for the key).
    pub(crate) response: &'a [u8],
}

/// The common issuance (active, alone, no idempotency key) as data, for
/// [`Driver::write_grouped_or`]: written only with the free copy as asked.
pub(crate) struct AtOnce {
    pub(crate) credential: crate::store::NewCredential,
    pub(crate) want_free_copy: bool,
    pub(crate) decision: DecisionRecord,
}

/// Work a driver runs in one write transaction.
pub(crate) trait WriteFn<R>:
    FnMut(&mut dyn Tx) -> Result<R, StoreError> + Send + 'static
{
}
impl<R, F: FnMut(&mut dyn Tx) -> Result<R, StoreError> + Send + 'static> WriteFn<R> for F {}

/// Work a driver runs on a read connection.
pub(crate) trait ReadFn<R>: FnMut(&mut dyn Tx) -> Result<R, StoreError> {}
impl<R, F: FnMut(&mut dyn Tx) -> Result<R, StoreError>> ReadFn<R> for F {}

/// A database the registry runs on.
pub(crate) trait Driver: Send + Sync + 'static {
    /// `sqlite` or `postgres`.
    const KIND: &'static str;

    /// Runs `f` in one write transaction, durable when this returns `Ok`.
    /// `f` may run more than once: PostgreSQL retries serialization
    /// failures, so it must not have effects outside the transaction.
    fn write<R: Send + 'static>(&self, f: impl WriteFn<R>) -> Result<R, StoreError>;

    /// Whether [`Tx::issue_at_once`] can write (PostgreSQL: one round
    /// trip for what a transaction takes four).
    const ISSUES_AT_ONCE: bool = false;

    /// Runs `at_once`, whose statements each commit on their own, as a
    /// write; if it wrote nothing (`Ok(false)`), runs `otherwise` in a
    /// write transaction (numbers `at_once` took and did not write under
    /// are given up to void entries). `None` when `at_once` wrote. A
    /// driver without [`Self::ISSUES_AT_ONCE`] runs `otherwise` only.
    fn write_at_once_or<R: Send + 'static>(
        &self,
        at_once: impl WriteFn<bool>,
        otherwise: impl WriteFn<R>,
    ) -> Result<Option<R>, StoreError> {
        let _ = at_once;
        self.write(otherwise).map(Some)
    }

    /// Whether [`Self::write_grouped_or`] may write several issuances in
    /// one statement (PostgreSQL).
    const GROUPS_AT_ONCE: bool = false;

    /// [`Self::write_at_once_or`] for an issuance without an idempotency
    /// key, given as data so that the driver may write it in one statement
    /// with others waiting at the same moment (all of them or none; if
    /// none, each runs its own `otherwise`). A driver without
    /// [`Self::GROUPS_AT_ONCE`] runs `otherwise` only.
    fn write_grouped_or<R: Send + 'static>(
        &self,
        issued: AtOnce,
        otherwise: impl WriteFn<R>,
    ) -> Result<Option<R>, StoreError> {
        let _ = issued;
        self.write(otherwise).map(Some)
    }

    /// Runs `f` on a read connection.
    fn read<R>(&self, f: impl FnMut(&mut dyn Tx) -> Result<R, StoreError>)
    -> Result<R, StoreError>;

    /// Entries placed in the log: the tree size proofs and checkpoints cover.
    fn audit_size(&self) -> Result<u64, StoreError>;

    /// Decisions recorded, placed in the log or waiting to be.
    fn decision_count(&self) -> Result<u64, StoreError>;

    /// Gives recorded decisions their place in the log; how many it placed.
    fn sequence_audit(&self) -> Result<u64, StoreError>;

    /// This process's audit numbers and seal.
    fn numbering(&self) -> &super::Numbering;

    /// Counts of this driver's own upkeep.
    fn upkeep(&self) -> crate::store::Upkeep {
        crate::store::Upkeep::default()
    }

    /// Hands the driver's writer its metrics, if it has such a writer.
    fn observe_writer(&self, _metrics: crate::metrics::store::WriterMetrics) {}
}

/// The registry on one database, through its driver.
pub struct SqlRegistry<D> {
    pub(in crate::store) driver: D,
    /// Upper tile hashes read so far (immutable once stored).
    pub(in crate::store) upper_hashes: super::hash_cache::HashCache,
    /// Roots of ranges at a tree's right edge, for proofs at that size.
    pub(in crate::store) edge_roots: super::hash_cache::EdgeRoots,
    /// The log's perfect subtrees from one tile level up.
    pub(in crate::store) upper_tree: std::sync::RwLock<crate::audit::upper_tree::UpperTree>,
}
