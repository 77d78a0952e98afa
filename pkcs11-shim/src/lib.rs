//! Dojang's key layer: the only crate that touches a PKCS#11 token (through
//! `cryptoki`) or a TPM (through `tss-esapi`).
//!
//! Everything above it signs through one small, synchronous, object-safe
//! trait, [`KeyBackend`]. Keys are born in the device and never leave it: this
//! crate has no operation that imports or exports private key material, and it
//! refuses to use a key whose attributes say it could have left.
//!
//! Calls block on the device: async callers must run them on a bounded
//! blocking pool, never on an executor thread.

#![forbid(unsafe_code)]

mod algorithm;
mod backend;
mod config;
pub mod digest;
mod error;
mod label;
mod open;
mod pin;
pub mod pkcs11;
mod public_key;
pub mod tpm;

pub use algorithm::{Algorithm, KeyPurpose, ecdsa_der_to_raw, ecdsa_raw_to_der};
pub use backend::{
    Health, KeyBackend, KeyInfo, MAX_HMAC_INPUT, MAX_SIGN_INPUT, SessionCounts, prove_possession,
};
pub use config::{BackendConfig, BackendKind, MAX_SESSIONS, Pkcs11Config, TpmConfig};
pub use error::{Error, ErrorClass, Result};
pub use label::{MAX_LABEL_LEN, validate_label};
pub use open::open;
pub use pin::SecretSource;
pub use public_key::{Jwk, PublicKey, public_key_from_jwk};
