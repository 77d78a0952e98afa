//! The routers: the mTLS API under `/v1` (its routes and their one role
//! table in [`routes`], the router in [`router`], who may have a request
//! in flight in [`admission`]), the public listener
//! verifiers fetch from ([`public`]), the loopback ops listener
//! ([`ops`]), and the wallets' OpenID4VCI listener ([`wallet`]).

pub mod admission;
pub mod documents;
pub mod ops;
pub mod public;
pub mod router;
mod routes;
pub mod wallet;

pub use self::admission::InFlight;
pub use self::ops::Ops;
pub use self::public::Public;
pub use self::router::Api;
pub use self::wallet::WalletApi;
