//! Dojang, the appliance: configuration, and (as the work lands) the server,
//! issuance path, credentials, PKI, store and audit log. The binaries
//! `dojangd` and `dojangctl` are thin shells over this library.

#![forbid(unsafe_code)]

pub mod audit;
pub mod cli;
pub mod config;
pub mod credential;
pub mod devtls;
pub mod keys;
pub mod officer_client;
pub mod pki;
pub mod refusal;
pub mod server;
pub mod status;
pub mod store;
