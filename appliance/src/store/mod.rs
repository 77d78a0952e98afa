//! The registry: credentials, quotas, idempotency keys, status-list
//! allocations and decision records, on SQLite (embedded default) or
//! PostgreSQL (several nodes sharing the work).
//!
//! Invariants live in the database, never in select-then-insert: unique
//! partial indexes give one active credential per holder and one holder per
//! phone; the free-copy quota is one conditional `UPDATE … WHERE used <
//! quota`; idempotency keys are a primary key. Nothing is reported
//! committed before the database says the transaction is durable.
//!
//! The registry holds no personal data: holders are HMAC pseudonyms computed
//! in the HSM, phones are JWK thumbprints.

mod audit_numbers;
mod keyring;
pub mod node_lock;
mod postgres;
mod registry;
mod sql;
mod sqlite;

pub use self::audit_numbers::{AuditNumbers, NodeEntry};
pub use self::keyring::{
    AUDIT_CHAIN, CHAINS, CRL_CONCURRENT, CRL_DOCUMENT, DS_CHAIN, IACA_DOCUMENT, KeyRegistry,
    KeyRevocation, MovedAudit, POLICY_DOCUMENT, POOL_DOCUMENT, PSEUDONYM_CHECK_DOCUMENT,
    ROLLOVER_DOCUMENT, STATUS_CHAIN, StoredKey, StoredProposal, ceremony_answer_document,
    ceremony_request_document, policy_adoption_document, policy_text_document,
    revocation_order_document, revoked_serials, root_crl_document,
};
pub use self::postgres::{PostgresDriver, PostgresRegistry, is_local as postgres_is_local};
pub use self::registry::{
    BatchCopy, Committed, CredentialMeta, CredentialState, DecisionRecord, HolderFacts,
    IdempotencyKey, IssuanceCommit, NewCredential, Pseudonym, REFRESH_SAME_OWNER,
    REINSTATE_KEY_REVOKED, Refresh, Registry, Respond, STATUS_BLOCK_MAX, STATUS_LIST_FILL,
    STATUS_LIST_SIZE, StatusPositions, StoreError, Upkeep,
};
pub(crate) use self::registry::{check_block, check_refresh, check_transition};
pub use self::sql::SqlRegistry;
pub use self::sqlite::{SqliteDriver, SqliteRegistry};
