//! Credential formats: ISO/IEC 18013-5 mdoc ([`mdoc`]) and SD-JWT VC
//! ([`sdjwt`]) for the Korean mobile resident registration card, their
//! claims ([`claims`]) and verifiers.
//!
//! Builders are pure: claims, the holder's device key and validity in, a
//! signing input out. The signature comes from [`DocumentSigner`], the only
//! thing in this module that touches a key; `none` and MAC algorithms cannot
//! be expressed ([`SignatureAlgorithm`] has no such variant).

pub(crate) mod cbor;
pub mod claims;
pub mod mdoc;
pub mod sample;
pub mod sdjwt;
mod signer;
pub mod verify;

use time::OffsetDateTime;

pub use signer::{DocumentSigner, SignatureAlgorithm};

/// An error building or signing a credential.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CredentialError {
    /// The input was refused (bad device key, bad claim value…).
    #[error("{0}")]
    Invalid(String),
    /// Encoding failed (a bug, or a value CBOR/JSON cannot carry).
    #[error("encoding the credential: {0}")]
    Encoding(String),
    /// The key layer failed to sign.
    #[error(transparent)]
    Key(#[from] pkcs11_shim::Error),
}

/// When the issuer's signature is valid (MSO `validityInfo`, JWT `iat`/`nbf`/`exp`).
/// Distinct from the document's own three-year validity, which is a claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignatureValidity {
    /// When the credential was signed.
    pub signed: OffsetDateTime,
    /// Not valid before.
    pub valid_from: OffsetDateTime,
    /// Not valid after; never later than the DS certificate's notAfter.
    pub valid_until: OffsetDateTime,
}

impl SignatureValidity {
    /// From `now` for `days`, cut at `limit` (the DS certificate's notAfter).
    pub fn starting(
        now: OffsetDateTime,
        days: u32,
        limit: OffsetDateTime,
    ) -> Result<Self, CredentialError> {
        let signed = now.replace_nanosecond(0).unwrap_or(now);
        let wanted = signed + time::Duration::days(i64::from(days));
        let valid_until = wanted.min(limit);
        if valid_until <= signed {
            return Err(CredentialError::Invalid(
                "the document-signer certificate has expired: issue a new one".into(),
            ));
        }
        Ok(SignatureValidity {
            signed,
            valid_from: signed,
            valid_until,
        })
    }
}

/// Where a verifier checks the credential's revocation status (IETF Token
/// Status List): index `idx` in the list published at `uri`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusReference {
    /// Index in the list.
    pub idx: u64,
    /// The list's URI.
    pub uri: String,
}

/// Bytes drawn from OpenSSL's CSPRNG ahead of use, per thread. A credential
/// needs dozens of salts and IDs, and each RAND call costs about a
/// microsecond of locking and provider lookups: drawing 4 KiB at a time
/// makes that once per ~50 credentials. The bytes are salts and IDs that
/// the credential publishes anyway, never key material.
const POOL_BYTES: usize = 4096;

thread_local! {
    static POOL: std::cell::RefCell<(Vec<u8>, usize)> = const { std::cell::RefCell::new((Vec::new(), 0)) };
}

/// Random bytes for salts and IDs, from the per-thread pool.
pub(crate) fn random<const N: usize>() -> Result<[u8; N], CredentialError> {
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        let (buffer, used) = &mut *pool;
        if buffer.len() < *used + N {
            buffer.resize(POOL_BYTES.max(N), 0);
            openssl::rand::rand_bytes(buffer)
                .map_err(|e| CredentialError::Encoding(e.to_string()))?;
            *used = 0;
        }
        let Some(bytes) = buffer.get_mut(*used..*used + N) else {
            return Err(CredentialError::Encoding(format!(
                "random pool holds {} bytes, {N} wanted at {used}",
                buffer.len()
            )));
        };
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        // Never hand the same bytes out twice.
        bytes.fill(0);
        *used += N;
        Ok(out)
    })
}
