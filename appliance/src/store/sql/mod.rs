//! The registry's operations, written once for both databases.
//!
//! [`SqlRegistry`] implements [`Registry`](super::Registry) and
//! [`KeyRegistry`](super::KeyRegistry) over a driver. Every invariant,
//! every state rule and every audit entry is decided here; a driver only
//! moves statements and rows (placeholders, types, transactions, retries)
//! and owns what truly differs per database: SQLite's group-commit writer,
//! PostgreSQL's audit sequencer and sharded free-copy counter, and each
//! one's clock for leases.

mod audit_numbers;
mod audit_tiles;
mod batch;
mod constraint;
mod hash_cache;
mod keys;
pub(crate) mod migrations;
mod numbering;
mod registry;
mod status;
mod tx;

pub(crate) use batch::credential_row;
pub(crate) use constraint::{rule_for_columns, rule_for_constraint};
pub(crate) use numbering::{Lost, Numbering, Taken};
pub use tx::SqlRegistry;
pub(crate) use tx::{
    Appended, AtOnce, Cell, Driver, KeptResponse, ReadFn, Row, Tx, Value, WriteFn, args,
};
