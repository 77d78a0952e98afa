//! The `[store]` table: where the registry lives.

use std::path::PathBuf;

use serde::Deserialize;

/// The size, in MiB, SQLite's writer keeps the registry's log file at
/// (`store/sqlite/wal.rs`): the most worth laying out at start.
pub const SQLITE_LOG_FILE_MIB: u64 = 1280;

/// The `[store]` table: exactly one of `sqlite` and `postgres`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// The embedded registry file.
    #[serde(default)]
    pub sqlite: Option<PathBuf>,
    /// A PostgreSQL connection string (several nodes may share it).
    #[serde(default)]
    pub postgres: Option<String>,
    /// Connections to PostgreSQL, at most (a transaction beyond waits up
    /// to 10 s for one, then fails as unavailable).
    #[serde(default = "default_pg_pool")]
    pub pool_size: usize,
    /// CA certificate(s) the PostgreSQL server's certificate must chain to
    /// (default: the system's).
    #[serde(default)]
    pub postgres_ca: Option<PathBuf>,
    /// MiB of the SQLite registry's log file the daemon lays out at start,
    /// so that commits write over it instead of growing it (0: none;
    /// default and most: the size the writer keeps the file at).
    #[serde(default = "default_sqlite_log_mib")]
    pub sqlite_log_prewrite_mib: u64,
}

fn default_pg_pool() -> usize {
    16
}

fn default_sqlite_log_mib() -> u64 {
    SQLITE_LOG_FILE_MIB
}

impl StoreConfig {
    /// Exactly one backend.
    pub fn validate(&self) -> Result<(), String> {
        match (&self.sqlite, &self.postgres) {
            (Some(_), None) | (None, Some(_)) => {}
            _ => return Err("[store]: set exactly one of sqlite and postgres".into()),
        }
        if !(1..=256).contains(&self.pool_size) {
            return Err("store.pool_size must be 1 to 256".into());
        }
        let most = SQLITE_LOG_FILE_MIB;
        if self.sqlite_log_prewrite_mib > most {
            return Err(format!(
                "store.sqlite_log_prewrite_mib must be 0 to {most} (the size the log file is kept at)"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn store(text: &str) -> StoreConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn the_sqlite_log_layout_defaults_to_the_kept_size_and_goes_no_further() {
        let default = store("sqlite = \"registry.db\"");
        assert_eq!(default.sqlite_log_prewrite_mib, 1280);
        default.validate().unwrap();
        store("sqlite = \"registry.db\"\nsqlite_log_prewrite_mib = 0")
            .validate()
            .unwrap();
        let err = store("sqlite = \"registry.db\"\nsqlite_log_prewrite_mib = 1281")
            .validate()
            .unwrap_err();
        assert!(
            err.contains("sqlite_log_prewrite_mib must be 0 to 1280"),
            "{err}"
        );
    }
}
