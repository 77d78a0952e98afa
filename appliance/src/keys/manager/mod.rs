//! The key manager: carries the pure lifecycle and officers' orders out on
//! the token and the registry ([`KeyManager`]).

mod build;
mod ceremony;
mod moves;
mod pool;
mod revocation;
mod rollover;
mod roots;
mod state;
mod status_certs;
pub(crate) mod token;

pub use self::ceremony::ImportError;
pub use self::moves::DestroyOrder;
pub use self::pool::{Pool, Spare};
pub use self::revocation::ordered_revocations;
pub use self::state::{KeyManager, KeySettings};
