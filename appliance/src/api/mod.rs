//! The routers: the mTLS API under `/v1` (its routes and their one role
//! table in [`routes`], the router in [`router`], who may have a request
//! in flight in [`admission`]), the public listener
//! verifiers fetch from ([`public`]), and the loopback ops listener
//! ([`ops`]).

pub mod admission;
pub mod documents;
pub mod ops;
pub mod public;
pub mod router;
mod routes;

pub use self::admission::InFlight;
pub use self::ops::Ops;
pub use self::public::Public;
pub use self::router::Api;
