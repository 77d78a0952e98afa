//! The `[store]` table: where the registry lives.

use std::path::PathBuf;

use serde::Deserialize;

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
}

fn default_pg_pool() -> usize {
    16
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
        Ok(())
    }
}
