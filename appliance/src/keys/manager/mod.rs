//! The key manager: carries the pure lifecycle and officers' orders out on
//! the token and the registry ([`KeyManager`]).

mod build;
mod moves;
mod revocation;
mod state;
pub(crate) mod token;

pub use self::moves::DestroyOrder;
pub use self::revocation::ordered_revocations;
pub use self::state::{KeyManager, KeySettings};
