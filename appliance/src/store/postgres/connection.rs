//! Statements prepared once per PostgreSQL connection.
//!
//! `postgres` prepares a statement given as text on every call: one more
//! round trip, and a parse and plan in the server, each time. A pooled
//! connection keeps what it prepared, keyed by the SQL text, so the
//! statements of an issuance are sent as Bind/Execute only.

use std::collections::HashMap;

use postgres::types::ToSql;
use postgres::{Client, Row, Statement, Transaction};

/// Statements a connection keeps at most; the code has fewer, so the
/// bound only matters if SQL text ever varies.
const PREPARED_MAX: usize = 256;

/// A pooled connection and the statements prepared on it.
pub(super) struct Connection {
    client: Client,
    prepared: HashMap<String, Statement>,
}

/// A transaction whose statements are prepared once per connection.
pub(super) struct RawTx<'a> {
    tx: Transaction<'a>,
    prepared: &'a mut HashMap<String, Statement>,
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
            tx: self.client.transaction()?,
            prepared: &mut self.prepared,
        })
    }
}

impl RawTx<'_> {
    fn statement(&mut self, sql: &str) -> Result<Statement, postgres::Error> {
        if let Some(statement) = self.prepared.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.tx.prepare(sql)?;
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
        self.tx.execute(&statement, params)
    }

    pub(super) fn query(
        &mut self,
        sql: &str,
        params: Params<'_>,
    ) -> Result<Vec<Row>, postgres::Error> {
        let statement = self.statement(sql)?;
        self.tx.query(&statement, params)
    }

    pub(super) fn query_opt(
        &mut self,
        sql: &str,
        params: Params<'_>,
    ) -> Result<Option<Row>, postgres::Error> {
        let statement = self.statement(sql)?;
        self.tx.query_opt(&statement, params)
    }

    pub(super) fn query_one(
        &mut self,
        sql: &str,
        params: Params<'_>,
    ) -> Result<Row, postgres::Error> {
        let statement = self.statement(sql)?;
        self.tx.query_one(&statement, params)
    }

    /// Several statements, not prepared (migrations).
    pub(super) fn batch_execute(&mut self, sql: &str) -> Result<(), postgres::Error> {
        self.tx.batch_execute(sql)
    }

    pub(super) fn commit(self) -> Result<(), postgres::Error> {
        self.tx.commit()
    }
}
