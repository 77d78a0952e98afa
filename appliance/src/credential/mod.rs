//! Credential formats: ISO/IEC 18013-5 mdoc ([`mdoc`]) and SD-JWT VC
//! ([`sdjwt`]) for the Korean mobile resident registration card, their
//! claims ([`claims`]) and verifiers.
//!
//! Builders are pure: claims, the holder's device key and validity in, a
//! signing input out. The signature comes from [`DocumentSigner`], the only
//! thing in this module that touches a key; `none` and MAC algorithms cannot
//! be expressed ([`SignatureAlgorithm`] has no such variant).
//!
//! This file only declares and re-exports. What the formats share lives in
//! leaves of its own: [`CredentialError`], [`SignatureAlgorithm`],
//! [`SignatureValidity`], [`StatusReference`], the salt pool behind
//! `random`, and the SD-JWT VC's JWS header that [`DocumentSigner`] builds.

mod algorithm;
pub(crate) mod cbor;
pub mod claims;
mod cose;
mod disclosures;
mod error;
mod jws;
pub mod mdoc;
mod rand_pool;
pub mod sample;
pub mod sdjwt;
mod signer;
mod status_reference;
mod validity;
pub mod verify;

pub use algorithm::SignatureAlgorithm;
pub use error::CredentialError;
pub(crate) use rand_pool::random;
pub use signer::DocumentSigner;
pub use status_reference::StatusReference;
pub use validity::SignatureValidity;
