//! The tamper-evident audit log: entries in a Merkle tree with RFC 6962
//! hashing ([`merkle`]), checkpoints in the C2SP checkpoint / signed-note
//! format signed by an audit key in the HSM ([`checkpoint`]), and an offline
//! verifier of exported bundles ([`bundle`]). On a node, the trail
//! ([`trail`]) places entries, signs checkpoints over the registry's log
//! ([`log`]) and answers auditors ([`auditor`]).

pub mod auditor;
pub mod bundle;
pub mod checkpoint;
pub mod entry;
pub mod integrity;
pub mod log;
pub mod merkle;
pub mod numbers;
pub mod proof;
pub mod seal;
pub mod tile_path;
pub mod tiles;
pub mod trail;
pub mod upper_tree;
pub mod witness;
mod witness_client;
pub mod witnessing;
