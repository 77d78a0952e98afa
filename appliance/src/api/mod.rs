//! The routers: the mTLS API under `/v1` (its routes and their one role
//! table in [`routes`], the router in [`router`]), the public listener
//! verifiers fetch from ([`public`]), and the loopback ops listener
//! ([`ops`]).

pub mod ops;
pub mod public;
pub mod router;
mod routes;

pub use self::ops::Ops;
pub use self::public::Public;
pub use self::router::Api;
