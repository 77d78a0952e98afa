//! The service: one node's owners wired together ([`Service`]), how they
//! reload ([`reload`]), and whether the node is ready ([`readiness`]).

pub mod readiness;
pub mod reload;
mod wiring;

pub use self::readiness::{Check, Readiness};
pub use self::wiring::Service;
