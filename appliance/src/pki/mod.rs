//! The certificate hierarchy: an IACA root and document-signer (DS)
//! certificates per ISO/IEC 18013-5 Annex B, and the IACA's CRL, all signed
//! inside the token through the key layer.
//!
//! Certificates are public: they live as PEM files in `pki.dir`
//! (`iaca.pem`, `iaca.crl.pem`, `ds/<key label>.pem`). A DS certificate's
//! file name is its key's label, which ties the two together.

pub mod ceremony;
mod der;
mod issue;
pub mod profile;
mod signer;
mod store;

pub use crate::config::PkiConfig;
pub use issue::{issue_crl, issue_ds, issue_iaca};
pub use signer::HsmKey;
pub(crate) use store::cert_pem;
pub use store::{DsCertificate, PkiStore, cert_der_from_pem};

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
fn validated(config: &PkiConfig) -> Result<(), PkiError> {
    config.validate().map_err(PkiError::Invalid)
}
