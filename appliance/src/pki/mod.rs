//! The certificate hierarchy: an IACA root and document-signer (DS)
//! certificates per ISO/IEC 18013-5 Annex B, and the IACA's CRL, all signed
//! inside the token through the key layer.
//!
//! Certificates are public: they live as PEM files in `pki.dir`
//! (`iaca.pem`, `iaca.crl.pem`, `ds/<key label>.pem`). A DS certificate's
//! file name is its key's label, which ties the two together.

pub mod ceremony;
mod csr;
mod der;
mod error;
pub mod exchange;
mod issue;
pub mod profile;
pub mod rollover;
mod signer;
mod store;

pub use crate::config::PkiConfig;
pub use csr::{certificate_request, requested_key};
pub use error::PkiError;
pub use issue::{issue_crl, issue_ds, issue_ds_for, issue_iaca, issue_leaf_for};
pub use profile::LeafRole;
pub use signer::{HsmKey, SubjectKey};
pub use store::{DsCertificate, PkiStore, cert_der_from_pem, cert_pem, iaca_rule};
