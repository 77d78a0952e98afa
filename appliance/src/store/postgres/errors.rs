//! PostgreSQL's errors in the registry's words: a unique constraint names
//! the rule it guards, a serialization failure asks for a retry, trouble
//! with the server (full, read-only, shutting down, busy) is `Unavailable`.

use postgres::error::SqlState;

use crate::store::StoreError;
use crate::store::sql::rule_for_constraint;

/// The message prefix of errors worth retrying the transaction for.
pub(super) const RETRYABLE: &str = "retryable:";

pub(super) fn map_err(e: postgres::Error) -> StoreError {
    let Some(db) = e.as_db_error() else {
        // No database error: the connection itself failed.
        return StoreError::Unavailable(e.to_string());
    };
    let code = db.code();
    if *code == SqlState::UNIQUE_VIOLATION {
        return db.constraint().and_then(rule_for_constraint).map_or_else(
            || StoreError::Internal(db.message().to_owned()),
            |rule| StoreError::Conflict { rule },
        );
    }
    if *code == SqlState::T_R_SERIALIZATION_FAILURE || *code == SqlState::T_R_DEADLOCK_DETECTED {
        return StoreError::Unavailable(format!("{RETRYABLE} {}", db.message()));
    }
    let unavailable = [
        SqlState::DISK_FULL,
        SqlState::INSUFFICIENT_PRIVILEGE,
        SqlState::READ_ONLY_SQL_TRANSACTION,
        SqlState::ADMIN_SHUTDOWN,
        SqlState::CRASH_SHUTDOWN,
        SqlState::CANNOT_CONNECT_NOW,
        SqlState::TOO_MANY_CONNECTIONS,
        SqlState::QUERY_CANCELED,
        SqlState::LOCK_NOT_AVAILABLE,
        SqlState::INSUFFICIENT_RESOURCES,
        SqlState::OUT_OF_MEMORY,
        SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT,
    ];
    if unavailable.contains(code) {
        return StoreError::Unavailable(db.message().to_owned());
    }
    StoreError::Internal(db.message().to_owned())
}
