//! The TPM 2.0 backend (tss-esapi 7.x over libtss2).
//!
//! Keys are ordinary (non-persistent) objects created under a primary storage
//! key in the owner hierarchy. The primary is derived from the owner seed by a
//! fixed template, so it comes back identical after a TPM restart, and the
//! key blobs in `key_dir` load under it again: keys survive restarts of the
//! daemon and of the TPM. Every key is `fixedTPM | fixedParent |
//! sensitiveDataOrigin`: born in this TPM and never duplicable out of it.
//!
//! Threading: a TPM context has one owner. Calls are serialised on a mutex;
//! at most one signing key is kept loaded beside the primary (swtpm has three
//! transient slots and no resource manager over TCP).
//!
//! Files: `backend` (the backend and its recovery), `connection` (the
//! context, the primary and the one loaded key), `blob` (key blobs on disk),
//! `keys` (what a blob says about its key), `template` (key and primary
//! templates, the attributes every key must carry), `sign` (digest, ticket
//! and signature around the TPM's sign command), `operations` (the
//! [`KeyBackend`](crate::KeyBackend) methods), and `classify` (tss-esapi
//! errors).

mod backend;
mod blob;
mod classify;
mod connection;
mod keys;
mod operations;
mod sign;
mod template;

pub use backend::TpmBackend;
