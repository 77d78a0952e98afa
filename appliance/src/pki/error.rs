//! What a PKI operation can fail with, and the Annex B check of `[pki]`
//! before any ceremony.

use super::profile;
use crate::config::PkiConfig;

/// A PKI operation that failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PkiError {
    /// The key layer failed.
    #[error(transparent)]
    Key(#[from] pkcs11_shim::Error),
    /// rcgen could not build the certificate.
    #[error("building the certificate: {0}")]
    Build(String),
    /// The result broke the Annex B profile (a bug or a bad config).
    #[error(transparent)]
    Profile(#[from] profile::ProfileError),
    /// A certificate file could not be read or written.
    #[error("{context}: {cause}")]
    Io {
        /// What, with the path.
        context: String,
        /// Why (in the message, not a chained source: printed once).
        cause: std::io::Error,
    },
    /// Something is missing or inconsistent.
    #[error("{0}")]
    Invalid(String),
}

/// Checks `config` against Annex B before a ceremony.
pub(super) fn validated(config: &PkiConfig) -> Result<(), PkiError> {
    config.validate().map_err(PkiError::Invalid)
}
