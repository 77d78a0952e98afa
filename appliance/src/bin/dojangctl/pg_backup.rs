//! The PostgreSQL half of `backup` and `restore`: `pg_dump` (custom
//! format: one consistent snapshot) of the registry's database, or of its
//! schema when the connection sets a `search_path`; and `pg_restore` into
//! a scratch database on the target server, which becomes the registry
//! (renamed) only once verified, and is dropped otherwise. The libpq tools
//! get this node's connection with TLS verified as the daemon verifies it
//! (`sslmode=verify-full` against `store.postgres_ca`), and the password
//! in their environment, never on a command line.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail, ensure};
use dojang::config::StoreConfig;
use dojang::store::PostgresRegistry;
use postgres::config::{Host, SslMode};

/// Objects no migration makes, outside PostgreSQL's own schemas.
const CODE_OBJECTS: &str = "SELECT \
    (SELECT COUNT(*) FROM pg_trigger WHERE NOT tgisinternal) \
  + (SELECT COUNT(*) FROM pg_rules WHERE schemaname NOT IN ('pg_catalog', 'information_schema')) \
  + (SELECT COUNT(*) FROM pg_views WHERE schemaname NOT IN ('pg_catalog', 'information_schema')) \
  + (SELECT COUNT(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
       WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')) \
  + (SELECT COUNT(*) FROM pg_event_trigger)";

/// What a registry's schema is made of, a line each, sorted: compared
/// between a restored database and one the migrations made.
const SCHEMA_FINGERPRINT: &str = "SELECT x FROM ( \
    SELECT 'column ' || table_schema || '.' || table_name || '.' || column_name || ' ' \
        || data_type || ' ' || is_nullable || ' ' || COALESCE(column_default, '') AS x \
      FROM information_schema.columns WHERE table_schema NOT IN ('pg_catalog', 'information_schema') \
    UNION ALL SELECT 'index ' || schemaname || '.' || indexname || ' ' || indexdef FROM pg_indexes \
      WHERE schemaname NOT IN ('pg_catalog', 'information_schema') \
    UNION ALL SELECT 'constraint ' || n.nspname || '.' || c.conname || ' ' || pg_get_constraintdef(c.oid) \
      FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace \
      WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') \
    UNION ALL SELECT 'policy ' || polname FROM pg_policy \
    UNION ALL SELECT 'row security ' || relname FROM pg_class WHERE relrowsecurity \
    UNION ALL SELECT 'setting ' || array_to_string(setconfig, ',') FROM pg_db_role_setting \
      WHERE setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database()) \
  ) AS t ORDER BY x";

/// The system's CA bundle (Debian), when `store.postgres_ca` is not set.
const SYSTEM_CAS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// This node's registry connection.
pub(crate) struct Pg {
    config: postgres::Config,
    ca: Option<PathBuf>,
    pool_size: usize,
}

/// `value` quoted for a libpq key/value connection string.
fn quoted(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

impl Pg {
    /// The `[store]` table's PostgreSQL connection, if it names one.
    pub(crate) fn of(store: &StoreConfig) -> anyhow::Result<Option<Pg>> {
        let Some(url) = &store.postgres else {
            return Ok(None);
        };
        let config: postgres::Config = url.parse().context("store.postgres")?;
        // The daemon's rule, for the tools too: over the network, verified TLS.
        ensure!(
            dojang::store::postgres_is_local(&config) || config.get_ssl_mode() == SslMode::Require,
            "store.postgres: a server on the network needs sslmode=require (verified TLS)"
        );
        ensure!(
            config.get_hosts().len() == 1 && config.get_hostaddrs().is_empty(),
            "store.postgres: backup and restore need one host (and no hostaddr)"
        );
        Ok(Some(Pg {
            config,
            ca: store.postgres_ca.clone(),
            pool_size: 2,
        }))
    }

    /// The registry's database, which a restore creates.
    pub(crate) fn database(&self) -> anyhow::Result<String> {
        let name = self
            .config
            .get_dbname()
            .or(self.config.get_user())
            .context("store.postgres names no database")?;
        // Lowercase, not starting with a digit, and short enough that
        // `<name>_restoring` stays within PostgreSQL's 63 bytes.
        ensure!(
            (1..=53).contains(&name.len())
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
            "store.postgres: backup and restore need a database name of 1 to 53 [a-z0-9_], \
             not starting with a digit (not {name:?})"
        );
        Ok(name.to_owned())
    }

    /// The schema the connection's `search_path` names, if any.
    fn schema(&self) -> Option<String> {
        let options = self.config.get_options()?;
        let path = options.split_whitespace().find_map(|o| {
            o.strip_prefix("search_path=")
                .or_else(|| o.strip_prefix("-csearch_path="))
        })?;
        Some(path.split(',').next()?.trim().to_owned())
    }

    /// The connection to `dbname`, as key/values; `libpq` says whether for
    /// libpq's tools (TLS verified with `verify-full`) or for the registry
    /// (`sslmode=require`, which it verifies itself).
    fn conninfo(&self, dbname: &str, libpq: bool) -> String {
        let c = &self.config;
        let mut parts = Vec::new();
        let hosts: Vec<String> = c
            .get_hosts()
            .iter()
            .map(|h| match h {
                Host::Tcp(name) => name.clone(),
                Host::Unix(path) => path.display().to_string(),
            })
            .collect();
        if !hosts.is_empty() {
            parts.push(format!("host={}", quoted(&hosts.join(","))));
        }
        let ports: Vec<String> = c.get_ports().iter().map(u16::to_string).collect();
        if !ports.is_empty() {
            parts.push(format!("port={}", ports.join(",")));
        }
        if let Some(user) = c.get_user() {
            parts.push(format!("user={}", quoted(user)));
        }
        // The tools take the password from their environment; the registry
        // (tokio-postgres) reads no environment.
        if let (false, Some(password)) = (libpq, c.get_password()) {
            parts.push(format!(
                "password={}",
                quoted(&String::from_utf8_lossy(password))
            ));
        }
        parts.push(format!("dbname={}", quoted(dbname)));
        if let Some(options) = c.get_options() {
            parts.push(format!("options={}", quoted(options)));
        }
        if let Some(timeout) = c.get_connect_timeout() {
            parts.push(format!("connect_timeout={}", timeout.as_secs().max(1)));
        }
        if c.get_ssl_mode() != SslMode::Require {
            // Local only (checked in `of`): as the daemon, no TLS.
            parts.push("sslmode=disable".into());
        } else if libpq {
            let ca = self
                .ca
                .as_deref()
                .unwrap_or(Path::new(SYSTEM_CAS))
                .display()
                .to_string();
            parts.push(format!("sslmode=verify-full sslrootcert={}", quoted(&ca)));
        } else {
            parts.push("sslmode=require".into());
        }
        parts.join(" ")
    }

    /// A libpq tool with this node's password in its environment.
    fn tool(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        if let Some(password) = self.config.get_password() {
            let _ = command.env("PGPASSWORD", String::from_utf8_lossy(password).into_owned());
        }
        command
    }

    fn run(&self, mut command: Command, what: &str) -> anyhow::Result<String> {
        let out = command
            .output()
            .with_context(|| format!("{what}: running it (postgresql-client installed?)"))?;
        ensure!(
            out.status.success(),
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// One SQL statement on the server's maintenance database.
    fn admin_sql(&self, sql: &str) -> anyhow::Result<String> {
        self.sql_on("postgres", sql)
    }

    /// Whether database `name` exists on the server.
    pub(crate) fn exists(&self, name: &str) -> anyhow::Result<bool> {
        Ok(self
            .admin_sql(&format!(
                "SELECT 1 FROM pg_database WHERE datname = '{name}'"
            ))?
            .trim()
            == "1")
    }

    /// `pg_dump` of the registry to `file`.
    pub(crate) fn dump(&self, file: &Path) -> anyhow::Result<()> {
        let mut dump = self.tool("pg_dump");
        let _ = dump
            .args(["--format=custom", "--no-owner", "--file"])
            .arg(file);
        if let Some(schema) = self.schema() {
            let _ = dump.arg(format!("--schema={schema}"));
        }
        let _ = dump.arg(format!(
            "--dbname={}",
            self.conninfo(&self.database()?, true)
        ));
        self.run(dump, "pg_dump").map(|_| ())
    }

    /// A scratch database holding `file`, restored; its name.
    pub(crate) fn restore_scratch(&self, file: &Path) -> anyhow::Result<String> {
        let scratch = format!("{}_restoring", self.database()?);
        ensure!(
            !self.exists(&scratch)?,
            "the database {scratch} exists (an earlier restore's?): drop it first"
        );
        let _ = self.admin_sql(&format!("CREATE DATABASE \"{scratch}\""))?;
        let mut restore = self.tool("pg_restore");
        let _ = restore
            .args(["--no-owner", "--exit-on-error", "--single-transaction"])
            .arg(format!("--dbname={}", self.conninfo(&scratch, true)))
            .arg(file);
        if let Err(e) = self
            .run(restore, "pg_restore")
            .and_then(|_| self.check_no_code(&scratch))
            .and_then(|_| self.check_schema(&scratch))
        {
            self.discard(&scratch);
            return Err(e);
        }
        Ok(scratch)
    }

    /// The migrations make no trigger, rule, view or function: a dump
    /// that brings one would have it run once the registry is live.
    fn check_no_code(&self, scratch: &str) -> anyhow::Result<()> {
        let found = self.sql_on(scratch, CODE_OBJECTS)?;
        ensure!(
            found.trim() == "0",
            "REFUSED: the backup brings triggers, rules, views or functions the migrations never \
             make ({} of them): it is not a registry this software wrote",
            found.trim()
        );
        Ok(())
    }

    /// One SQL statement on database `db`; its rows, unaligned.
    fn sql_on(&self, db: &str, sql: &str) -> anyhow::Result<String> {
        let mut psql = self.tool("psql");
        let _ = psql
            .args(["-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-d"])
            .arg(self.conninfo(db, true))
            .args(["-c", sql]);
        self.run(psql, "psql")
    }

    /// The restored tables, columns, indexes, constraints, row policies and
    /// database settings are exactly those of a registry the migrations
    /// make (in a reference database made for the comparison): a dump
    /// without the index that keeps one live ID per holder, say, is refused.
    fn check_schema(&self, scratch: &str) -> anyhow::Result<()> {
        let reference = format!("{}_reference", self.database()?);
        ensure!(
            !self.exists(&reference)?,
            "the database {reference} exists (an earlier restore's?): drop it first"
        );
        let _ = self.admin_sql(&format!("CREATE DATABASE \"{reference}\""))?;
        let compared = (|| {
            if let Some(schema) = self.schema() {
                ensure!(
                    schema
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                    "store.postgres: a search_path schema of [a-z0-9_] only"
                );
                let _ = self.sql_on(&reference, &format!("CREATE SCHEMA \"{schema}\""))?;
            }
            drop(self.registry(&reference)?);
            let expected = self.sql_on(&reference, SCHEMA_FINGERPRINT)?;
            let found = self.sql_on(scratch, SCHEMA_FINGERPRINT)?;
            let differs: Vec<&str> = found
                .lines()
                .filter(|l| !expected.lines().any(|e| e == *l))
                .chain(expected.lines().filter(|e| !found.lines().any(|l| l == *e)))
                .take(5)
                .collect();
            ensure!(
                differs.is_empty(),
                "REFUSED: the backup's schema is not the one the migrations make (e.g. {differs:?})"
            );
            Ok(())
        })();
        self.discard(&reference);
        compared
    }

    /// The registry in database `name`.
    pub(crate) fn registry(&self, name: &str) -> anyhow::Result<PostgresRegistry> {
        PostgresRegistry::open_with_ca(
            &self.conninfo(name, false),
            self.pool_size,
            self.ca.as_deref(),
        )
        .with_context(|| format!("opening the restored registry in {name}"))
    }

    /// The verified scratch database becomes the registry.
    pub(crate) fn place(&self, scratch: &str) -> anyhow::Result<()> {
        let target = self.database()?;
        if self.exists(&target)? {
            self.discard(scratch);
            bail!("the database {target} appeared during the restore; nothing was replaced");
        }
        // The verifying connections may take a moment to end on the server.
        let mut tries = 0;
        loop {
            match self.admin_sql(&format!(
                "ALTER DATABASE \"{scratch}\" RENAME TO \"{target}\""
            )) {
                Ok(_) => return Ok(()),
                Err(e) if tries >= 50 => {
                    self.discard(scratch);
                    return Err(e);
                }
                Err(_) => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
            }
        }
    }

    /// Drops a scratch database (best effort: a refusal is reported already).
    pub(crate) fn discard(&self, scratch: &str) {
        let _ = self.admin_sql(&format!("DROP DATABASE IF EXISTS \"{scratch}\""));
    }
}
