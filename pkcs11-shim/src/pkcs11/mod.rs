//! The PKCS#11 backend.
//!
//! One `Pkcs11` context per process (C_Initialize once, with OS locking: SoftHSM
//! crashes under concurrent use without it). A connection holds the login
//! anchor, a pool of logged-in sessions and the key-handle cache; when the
//! device or its connection is lost, the whole connection is thrown away and
//! rebuilt (C_Finalize, C_Initialize, C_Login, handles looked up again),
//! rate-limited, without restarting the process. Callers meanwhile get a
//! retryable [`Error`](crate::Error), never a hang.
//!
//! Threading: every method may be called from any thread. Signers share the
//! connection through a read lock; only recovery takes the write lock, after
//! in-flight calls have returned their sessions.
//!
//! Files: `backend` (the backend, its connection's lifecycle and recovery),
//! `connection` (one login: slot, sessions, key-handle cache), `pool` (the
//! session pool), `keys` (key lookup and the checks on every load),
//! `sign` (signing and HMAC), `generate` (key generation), `operations`
//! (the [`KeyBackend`](crate::KeyBackend) methods), `template` (what a
//! Dojang key looks like in a token), `classify` (cryptoki errors), and
//! `raw_bench` (the bare-cryptoki baseline for the benchmarks).

mod backend;
mod classify;
mod connection;
mod generate;
mod keys;
mod operations;
mod pool;
mod raw_bench;
mod sign;
mod template;

pub use backend::Pkcs11Backend;
pub use raw_bench::{RawBenchmark, raw_sign_rate};
