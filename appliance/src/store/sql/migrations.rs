//! The schema's migrations, numbered alike on both databases: one `.sql`
//! file per migration and database under `store/migrations/`, so a reviewer
//! reads the schema as SQL and migration N is the same step everywhere.

use super::tx::{Tx, args};
use crate::store::StoreError;

/// One migration: the part written once, and each database's own part.
pub(crate) struct Migration {
    /// `NNNN_what`.
    pub(crate) name: &'static str,
    shared: &'static str,
    sqlite: &'static str,
    postgres: &'static str,
}

macro_rules! migration {
    ($name:literal) => {
        migration!($name, "", "")
    };
    ($name:literal, sqlite, postgres) => {
        migration!(
            $name,
            include_str!(concat!("../migrations/sqlite/", $name, ".sql")),
            include_str!(concat!("../migrations/postgres/", $name, ".sql"))
        )
    };
    ($name:literal, $sqlite:expr, $postgres:expr) => {
        Migration {
            name: $name,
            shared: include_str!(concat!("../migrations/", $name, ".sql")),
            sqlite: $sqlite,
            postgres: $postgres,
        }
    };
}

/// Every migration, in order (see `store/migrations/README.md`).
pub(crate) const MIGRATIONS: &[Migration] = &[
    migration!("0001_registry", sqlite, postgres),
    migration!("0002_audit_log"),
    migration!("0003_audit_writes", sqlite, postgres),
    migration!("0004_claims_mac"),
    migration!("0005_keys"),
    migration!("0006_credentials_by_key"),
    migration!("0007_credentials_by_holder"),
    migration!("0008_idempotency_age"),
    migration!("0009_status_positions"),
    migration!("0010_audit_tiles"),
    migration!(
        "0011_actor_certificate",
        "",
        include_str!("../migrations/postgres/0011_actor_certificate.sql")
    ),
    migration!("0012_batches"),
    migration!("0013_portrait_flag"),
    migration!(
        "0014_audit_numbers",
        "",
        include_str!("../migrations/postgres/0014_audit_numbers.sql")
    ),
    migration!(
        "0015_audit_full_tiles",
        "",
        include_str!("../migrations/postgres/0015_audit_full_tiles.sql")
    ),
    migration!(
        "0016_audit_full_tiles_keyed",
        "",
        include_str!("../migrations/postgres/0016_audit_full_tiles_keyed.sql")
    ),
    migration!(
        "0017_quota_shards",
        "",
        include_str!("../migrations/postgres/0017_quota_shards.sql")
    ),
];

/// How one database spells the shared files' column types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    /// SQLite.
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

impl Migration {
    /// The whole migration as `dialect` runs it.
    pub(crate) fn text(&self, dialect: Dialect) -> String {
        let (own, int, bytes, boolean, serial) = match dialect {
            Dialect::Sqlite => (
                self.sqlite,
                "INTEGER",
                "BLOB",
                "INTEGER",
                "INTEGER PRIMARY KEY",
            ),
            Dialect::Postgres => (
                self.postgres,
                "BIGINT",
                "BYTEA",
                "BOOLEAN",
                "BIGSERIAL PRIMARY KEY",
            ),
        };
        let shared = self
            .shared
            .replace("{int}", int)
            .replace("{bytes}", bytes)
            .replace("{bool}", boolean)
            .replace("{serial}", serial);
        format!("{shared}\n{own}")
    }
}

/// The schema version the store is at (0 for a new store).
pub(crate) fn version(tx: &mut dyn Tx) -> Result<u64, StoreError> {
    tx.batch("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)")?;
    tx.query_one("SELECT COALESCE(MAX(version), 0) FROM schema_version", &[])?
        .count(0)
}

/// Applies the migrations after `from`, in `tx`; a store newer than this
/// build is refused.
pub(crate) fn apply(tx: &mut dyn Tx, dialect: Dialect, from: u64) -> Result<(), StoreError> {
    let known = MIGRATIONS.len() as u64;
    if from > known {
        return Err(StoreError::Internal(format!(
            "the store is at schema version {from}, newer than this build knows ({known})"
        )));
    }
    for (number, migration) in (1u64..).zip(MIGRATIONS).skip_while(|(n, _)| *n <= from) {
        tx.batch(&migration.text(dialect)).map_err(|e| match e {
            StoreError::Internal(m) => {
                StoreError::Internal(format!("migration {}: {m}", migration.name))
            }
            other => other,
        })?;
        let _ = tx.execute(
            "INSERT INTO schema_version (version) VALUES ($1)",
            args![number],
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_in_order() {
        for (n, migration) in (1..).zip(MIGRATIONS) {
            let prefix = format!("{n:04}_");
            assert!(
                migration.name.starts_with(&prefix),
                "{} is not migration {n}",
                migration.name
            );
        }
    }

    #[test]
    fn every_placeholder_is_spelled_for_both_databases() {
        for migration in MIGRATIONS {
            for dialect in [Dialect::Sqlite, Dialect::Postgres] {
                let text = migration.text(dialect);
                assert!(
                    !text.contains('{'),
                    "{} for {dialect:?}: {text}",
                    migration.name
                );
            }
        }
        let keys = MIGRATIONS.iter().find(|m| m.name == "0005_keys").unwrap();
        assert!(keys.text(Dialect::Sqlite).contains("certificate BLOB,"));
        assert!(keys.text(Dialect::Postgres).contains("certificate BYTEA,"));
    }
}
