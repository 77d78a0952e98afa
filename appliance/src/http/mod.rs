//! The transport: listeners with their own accept loop so every limit is
//! ours (connections, handshakes, header and body timeouts, idle
//! connections, draining), TLS configurations, the client's identity from
//! its certificate, the bounded pool that keeps device and database calls
//! off the executor, and problem+json. It knows nothing of credentials.

mod handshakes;
mod header_deadline;
pub mod identity;
mod pool;
pub mod problem;
mod server;
pub mod tls;
mod token_key;

pub use self::pool::{BlockingPool, PoolFull};
pub use self::server::{
    Body, Peer, Router, TlsSlot, json, problem, read_body, request_id, respond, serve,
};
pub use self::tls::ListenerTls;
