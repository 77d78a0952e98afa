//! The tamper-evident audit log: entries in a Merkle tree with RFC 6962
//! hashing ([`merkle`]), checkpoints in the C2SP checkpoint / signed-note
//! format signed by an audit key in the HSM ([`checkpoint`]), and an offline
//! verifier of exported bundles ([`bundle`]).

pub mod bundle;
pub mod checkpoint;
pub mod entry;
pub mod merkle;
