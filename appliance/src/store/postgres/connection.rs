//! Statements prepared once per PostgreSQL connection.
//!
//! `postgres` prepares a statement given as text on every call: one more
//! round trip, and a parse and plan in the server, each time. A pooled
//! connection keeps what it prepared, keyed by the SQL text, so the
//! statements of an issuance are sent as Bind/Execute only.

use std::collections::HashMap;

use postgres::types::ToSql;
use postgres::{Client, Row, Statement, Transaction};

/// The longest a request's statement runs (milliseconds): an audit number
/// taken for a statement's row is in the queue, or given up, within it.
pub(super) const STATEMENT_TIMEOUT_MS: i64 = 10_000;

/// The longest a transaction may sit between two statements (milliseconds)
/// before the server ends its session: between two statements the daemon
/// works for milliseconds (an HSM call at most), so only a frozen or lost
/// node sits that long.
pub(super) const IDLE_IN_TRANSACTION_MS: i64 = 10_000;

/// Statements a connection keeps at most; the code has fewer, so the
/// bound only matters if SQL text ever varies.
const PREPARED_MAX: usize = 256;

/// A pooled connection and the statements prepared on it.
pub(super) struct Connection {
    client: Client,
    prepared: HashMap<String, Statement>,
}

/// Where a [`RawTx`]'s statements run.
enum Session<'a> {
    /// Inside a transaction (a write).
    Tx(Transaction<'a>),
    /// Each statement on its own (a read): under READ COMMITTED every
    /// statement takes its own snapshot inside a transaction too, so BEGIN
    /// and COMMIT would add two round trips and nothing else.
    Auto(&'a mut Client),
}

/// Statements prepared once per connection, in a transaction or each on
/// its own.
pub(super) struct RawTx<'a> {
    tx: Session<'a>,
    prepared: &'a mut HashMap<String, Statement>,
}

/// Runs one call on whichever session a [`RawTx`] has.
macro_rules! on_session {
    ($session:expr, |$c:ident| $call:expr) => {
        match $session {
            Session::Tx($c) => $call,
            Session::Auto($c) => $call,
        }
    };
}

type Params<'p> = &'p [&'p (dyn ToSql + Sync)];

impl Connection {
    pub(super) fn new(client: Client) -> Self {
        Connection {
            client,
            prepared: HashMap::new(),
        }
    }

    pub(super) fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    pub(super) fn transaction(&mut self) -> Result<RawTx<'_>, postgres::Error> {
        Ok(RawTx {
            tx: Session::Tx(self.client.transaction()?),
            prepared: &mut self.prepared,
        })
    }

    /// Statements outside any transaction, each committed on its own: for
    /// reads only.
    pub(super) fn autocommit(&mut self) -> RawTx<'_> {
        RawTx {
            tx: Session::Auto(&mut self.client),
            prepared: &mut self.prepared,
        }
    }
}

impl RawTx<'_> {
    fn statement(&mut self, sql: &str) -> Result<Statement, postgres::Error> {
        if let Some(statement) = self.prepared.get(sql) {
            return Ok(statement.clone());
        }
        let statement = on_session!(&mut self.tx, |c| c.prepare(sql))?;
        if self.prepared.len() >= PREPARED_MAX {
            self.prepared.clear();
        }
        let _ = self.prepared.insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }

    pub(super) fn execute(
        &mut self,
        sql: &str,
        params: Params<'_>,
    ) -> Result<u64, postgres::Error> {
        let statement = self.statement(sql)?;
        on_session!(&mut self.tx, |c| c.execute(&statement, params))
    }

    pub(super) fn query(
        &mut self,
        sql: &str,
        params: Params<'_>,
    ) -> Result<Vec<Row>, postgres::Error> {
        let statement = self.statement(sql)?;
        on_session!(&mut self.tx, |c| c.query(&statement, params))
    }

    pub(super) fn query_opt(
        &mut self,
        sql: &str,
        params: Params<'_>,
    ) -> Result<Option<Row>, postgres::Error> {
        let statement = self.statement(sql)?;
        on_session!(&mut self.tx, |c| c.query_opt(&statement, params))
    }

    pub(super) fn query_one(
        &mut self,
        sql: &str,
        params: Params<'_>,
    ) -> Result<Row, postgres::Error> {
        let statement = self.statement(sql)?;
        on_session!(&mut self.tx, |c| c.query_one(&statement, params))
    }

    /// Several statements, not prepared (migrations).
    pub(super) fn batch_execute(&mut self, sql: &str) -> Result<(), postgres::Error> {
        on_session!(&mut self.tx, |c| c.batch_execute(sql))
    }

    /// Commits a transaction (statements on their own are committed).
    pub(super) fn commit(self) -> Result<(), postgres::Error> {
        match self.tx {
            Session::Tx(tx) => tx.commit(),
            Session::Auto(_) => Ok(()),
        }
    }
}
