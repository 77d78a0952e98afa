//! Dojang, the appliance: configuration, and (as the work lands) the server,
//! issuance path, credentials, PKI, store and audit log. The binaries
//! `dojangd` and `dojangctl` are thin shells over this library.

#![forbid(unsafe_code)]

pub mod api;
pub mod audit;
pub mod cli;
pub mod config;
pub mod credential;
pub mod daemon;
pub mod devtls;
pub mod errors;
pub mod http;
pub mod issuance;
pub mod keys;
pub mod metrics;
pub mod mirror;
pub mod node;
pub mod officer_client;
pub mod officers;
pub mod pki;
pub mod policy;
pub mod refusal;
pub mod service;
pub mod status;
pub mod store;
pub mod wallet;
