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

use std::path::PathBuf;

use serde::Deserialize;

pub use issue::{issue_crl, issue_ds, issue_iaca};
pub use signer::HsmKey;
pub(crate) use store::cert_pem;
pub use store::{DsCertificate, PkiStore, cert_der_from_pem};

/// The `[pki]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PkiConfig {
    /// Where certificates and the CRL are written.
    pub dir: PathBuf,
    /// countryName of the IACA and every DS (ISO 3166 alpha-2).
    #[serde(default = "default_country")]
    pub country: String,
    /// organizationName, e.g. the issuing ministry.
    pub organization: String,
    /// commonName of the IACA root.
    pub iaca_common_name: String,
    /// IssuerAltName: a URI (`https://…`) or an e-mail address.
    pub issuer_alt_name: String,
    /// Where verifiers fetch the IACA's CRL (CRLDistributionPoints).
    pub crl_url: String,
    /// Label of the IACA key in the token.
    #[serde(default = "default_iaca_key")]
    pub iaca_key: String,
    /// IACA validity in days (at most 20 years).
    #[serde(default = "default_iaca_days")]
    pub iaca_validity_days: u32,
    /// DS certificate validity in days (at most 457).
    #[serde(default = "default_ds_days")]
    pub ds_validity_days: u32,
    /// How long a CRL is valid (its nextUpdate).
    #[serde(default = "default_crl_days")]
    pub crl_validity_days: u32,
}

fn default_country() -> String {
    "KR".into()
}
fn default_iaca_key() -> String {
    "iaca".into()
}
fn default_iaca_days() -> u32 {
    3650
}
fn default_ds_days() -> u32 {
    365
}
fn default_crl_days() -> u32 {
    30
}

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

impl PkiConfig {
    /// Checks the values against Annex B before any ceremony.
    pub fn validate(&self) -> Result<(), PkiError> {
        let invalid = |m: String| Err(PkiError::Invalid(m));
        if self.country.len() != 2 || !self.country.bytes().all(|b| b.is_ascii_uppercase()) {
            return invalid(format!(
                "pki.country {:?} must be two capital letters",
                self.country
            ));
        }
        if !(1..=profile::MAX_IACA_VALIDITY_DAYS).contains(&i64::from(self.iaca_validity_days)) {
            return invalid("pki.iaca_validity_days must be 1 to 7305 (20 years)".into());
        }
        if !(1..=profile::MAX_DS_VALIDITY_DAYS).contains(&i64::from(self.ds_validity_days)) {
            return invalid("pki.ds_validity_days must be 1 to 457 (ISO 18013-5 Annex B)".into());
        }
        if self.crl_validity_days == 0 || self.crl_validity_days > 366 {
            return invalid("pki.crl_validity_days must be 1 to 366".into());
        }
        if !(self.crl_url.starts_with("https://") || self.crl_url.starts_with("http://")) {
            return invalid("pki.crl_url must be an http(s) URL".into());
        }
        if self.issuer_alt_name.is_empty() || !self.issuer_alt_name.is_ascii() {
            return invalid("pki.issuer_alt_name must be an ASCII URI or e-mail address".into());
        }
        for (name, value) in [
            ("organization", &self.organization),
            ("iaca_common_name", &self.iaca_common_name),
        ] {
            if value.trim().is_empty() || value.len() > 64 {
                return invalid(format!("pki.{name} must be 1 to 64 characters"));
            }
        }
        pkcs11_shim::validate_label(&self.iaca_key)
            .map_err(|e| PkiError::Invalid(format!("pki.iaca_key: {e}")))
    }
}
