//! A database insider for the insider suites: direct SQL on a running
//! daemon's registry (SQLite file or PostgreSQL schema), as someone with
//! the database password would run it. Shared by two test binaries that
//! each use part of it.
#![allow(dead_code, clippy::unwrap_used)]

use std::time::Duration;

use dojang::keys::approvals::Proposal;
use softhsm_tests::daemon::{Daemon, PgSchema};

/// Direct SQL on the daemon's registry.
pub(crate) enum Insider {
    Sqlite(rusqlite::Connection),
    Postgres(Box<postgres::Client>, String),
}

impl Insider {
    /// On the fixture's SQLite registry.
    pub(crate) fn sqlite(d: &Daemon) -> Self {
        let db = rusqlite::Connection::open(d.scratch().join("registry.db")).unwrap();
        db.busy_timeout(Duration::from_secs(10)).unwrap();
        Insider::Sqlite(db)
    }

    /// On a PostgreSQL schema.
    pub(crate) fn postgres(schema: &str) -> Self {
        Insider::Postgres(Box::new(PgSchema::admin()), schema.to_owned())
    }

    /// Runs `sql`, with `{s}` naming the registry's schema (PostgreSQL).
    pub(crate) fn run(&mut self, sql: &str) {
        match self {
            Insider::Sqlite(db) => db.execute_batch(&sql.replace("{s}.", "")).unwrap(),
            Insider::Postgres(c, schema) => {
                c.batch_execute(&sql.replace("{s}", schema)).unwrap();
            }
        }
    }

    /// The `kid` the registry records for `label`.
    pub(crate) fn kid(&mut self, label: &str) -> String {
        let sql = "SELECT kid FROM signing_keys WHERE label = ";
        match self {
            Insider::Sqlite(db) => db
                .query_row(&format!("{sql}?1"), [label], |r| r.get(0))
                .unwrap(),
            Insider::Postgres(c, schema) => c
                .query_one(
                    &sql.replace("signing_keys", &format!("{schema}.signing_keys"))
                        .replace("= ", "= $1"),
                    &[&label],
                )
                .unwrap()
                .get(0),
        }
    }

    pub(crate) fn table(&self, name: &str) -> String {
        match self {
            Insider::Sqlite(_) => name.to_owned(),
            Insider::Postgres(_, schema) => format!("{schema}.{name}"),
        }
    }

    pub(crate) fn text(&mut self, sql: &str, key: &str) -> Option<String> {
        match self {
            Insider::Sqlite(db) => db
                .query_row(&sql.replace("$1", "?1"), [key], |r| r.get(0))
                .ok(),
            Insider::Postgres(c, _) => c.query_opt(sql, &[&key]).unwrap().map(|r| r.get(0)),
        }
    }

    pub(crate) fn write(&mut self, sql: &str, a: &str, b: &str) {
        match self {
            Insider::Sqlite(db) => {
                let _ = db
                    .execute(&sql.replace("$1", "?1").replace("$2", "?2"), [a, b])
                    .unwrap();
            }
            Insider::Postgres(c, _) => {
                let _ = c.execute(sql, &[&a, &b]).unwrap();
            }
        }
    }

    pub(crate) fn proposal(&mut self, id: &str) -> Proposal {
        let sql = format!("SELECT body FROM {} WHERE id = $1", self.table("proposals"));
        serde_json::from_str(&self.text(&sql, id).unwrap()).unwrap()
    }

    pub(crate) fn set_proposal(&mut self, p: &Proposal) {
        let sql = format!(
            "UPDATE {} SET body = $1 WHERE id = $2",
            self.table("proposals")
        );
        self.write(&sql, &serde_json::to_string(p).unwrap(), &p.id);
    }

    pub(crate) fn document(&mut self, name: &str) -> Option<String> {
        let sql = format!(
            "SELECT body FROM {} WHERE name = $1",
            self.table("pki_documents")
        );
        self.text(&sql, name)
    }

    pub(crate) fn set_document(&mut self, name: &str, body: &str) {
        let table = self.table("pki_documents");
        let sql = format!(
            "INSERT INTO {table} (name, body) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET body = excluded.body"
        );
        self.write(&sql, name, body);
    }

    /// Gives key `label`'s row another kid.
    pub(crate) fn set_kid(&mut self, label: &str, kid: &str) {
        let sql = format!(
            "UPDATE {} SET kid = $1 WHERE label = $2",
            self.table("signing_keys")
        );
        self.write(&sql, kid, label);
    }

    /// Marks key `label` revoked, as only a node carrying out an order should.
    pub(crate) fn revoke(&mut self, label: &str) {
        let sql = format!(
            "UPDATE {} SET revoked_at = $1, revoked_reason = 'forged' WHERE label = $2",
            self.table("signing_keys")
        );
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        match self {
            Insider::Sqlite(db) => {
                let _ = db
                    .execute(
                        &sql.replace("$1", "?1").replace("$2", "?2"),
                        rusqlite::params![now, label],
                    )
                    .unwrap();
            }
            Insider::Postgres(c, _) => {
                let _ = c.execute(&sql, &[&now, &label]).unwrap();
            }
        }
    }

    /// The audit log's rows from position `from`, in order.
    pub(crate) fn rows(&mut self, from: i64) -> Vec<AuditRow> {
        let sql = format!(
            "SELECT seq, node, entry FROM {} WHERE seq >= {from} ORDER BY seq",
            self.table("audit_log")
        );
        let read = |seq, node, entry| AuditRow { seq, node, entry };
        match self {
            Insider::Sqlite(db) => {
                let mut stmt = db.prepare(&sql).unwrap();
                stmt.query_map([], |r| Ok(read(r.get(0)?, r.get(1)?, r.get(2)?)))
                    .unwrap()
                    .map(Result::unwrap)
                    .collect()
            }
            Insider::Postgres(c, _) => c
                .query(&sql, &[])
                .unwrap()
                .iter()
                .map(|r| read(r.get(0), r.get(1), r.get(2)))
                .collect(),
        }
    }

    /// Every audit entry's bytes as text, one per line.
    pub(crate) fn audit(&mut self) -> String {
        self.rows(0)
            .iter()
            .map(|r| String::from_utf8_lossy(&r.entry).into_owned())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// One audit row as the insider reads it.
#[derive(Debug, Clone)]
pub(crate) struct AuditRow {
    pub(crate) seq: i64,
    pub(crate) node: String,
    pub(crate) entry: Vec<u8>,
}

/// A metric's value as the ops listener shows it (0 when absent).
pub(crate) fn metric(d: &Daemon, line_start: &str) -> f64 {
    let text = String::from_utf8(d.ops_client().get("/metrics").body).unwrap();
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .map_or(0.0, |v| v.parse().unwrap())
}
