//! What crosses the air gap between the daemon and the offline IACA: the
//! daemon's ceremony request (its new DS and status-list keys' certificate
//! requests, the planned validity windows, the serials to revoke), the
//! record officers sign at the ceremony, and the ceremony's response
//! (certificates and a CRL). The IACA side of the work, [`certify`], is here too; the
//! daemon's checks of a response are in `keys::ceremony`.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::error::PkiError;
use super::issue::{issue_crl, issue_leaf_for};
use super::profile::LeafRole;
use super::signer::{HsmKey, SubjectKey};
use crate::config::PkiConfig;

/// `context` of a ceremony request.
pub const REQUEST_CONTEXT: &str = "dojang/ceremony-request/v1";
/// `context` of a ceremony record (what officers sign: never an approval
/// or a policy, whose contexts differ).
pub const RECORD_CONTEXT: &str = "dojang/ceremony/v1";
/// A ceremony that creates the IACA.
pub const KIND_ROOT: &str = "root";
/// A ceremony that certifies DS keys and signs a CRL.
pub const KIND_CERTIFY: &str = "certify";
/// A ceremony that makes a successor root (IACA rollover).
pub const KIND_ROLLOVER: &str = "rollover";

/// A CRL an older root still publishing must sign: its key id and the
/// serials (hex) officers ordered revoked among its DS certificates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrlOrder {
    /// Hex SHA-1 key identifier of the root.
    pub iaca_key_id: String,
    /// Serials (hex) to list.
    pub revoke: Vec<String>,
}

/// A CRL an older root signed at the ceremony.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootCrl {
    /// Hex key identifier of the root.
    pub iaca_key_id: String,
    /// Base64 DER.
    pub crl: String,
}

/// What a rollover ceremony made: the successor root and the two links.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloverCertificates {
    /// The successor root, self-signed (base64 DER).
    pub root: String,
    /// The successor's key certified by the current root (base64 DER).
    pub link: String,
    /// The current root's key certified by the successor (base64 DER).
    pub back_link: String,
}

/// A key the daemon asks the IACA to certify: a DS key, or a status-list
/// key (its tokens then carry a chain to the IACA).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestedKey {
    /// Its label in the daemon's token.
    pub label: String,
    /// Its kid (JWK thumbprint).
    pub kid: String,
    /// PKCS#10 request signed by the key (base64 DER).
    pub csr: String,
    /// Planned notBefore (seconds since the epoch).
    pub not_before: i64,
    /// Planned notAfter.
    pub not_after: i64,
    /// What the certificate is for (absent: a DS key).
    #[serde(default, skip_serializing_if = "LeafRole::is_document_signer")]
    pub purpose: LeafRole,
}

/// The daemon's ceremony request (its JSON bytes are what officers'
/// record names by SHA-256).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CeremonyRequest {
    /// [`REQUEST_CONTEXT`].
    pub context: String,
    /// Unique id; a response answers one request once.
    pub id: String,
    /// When the daemon made it.
    pub created: i64,
    /// Hex SHA-1 key identifier of the IACA that must certify.
    pub iaca_key_id: String,
    /// Keys to certify.
    pub keys: Vec<RequestedKey>,
    /// Serials (hex) of DS certificates officers ordered revoked: the
    /// ceremony's CRL lists each.
    pub revoke: Vec<String>,
    /// Older roots still published (after a rollover): each signs a CRL too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub older_roots: Vec<CrlOrder>,
}

/// What officers sign at a ceremony (JSON of this struct, field order fixed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CeremonyRecord {
    /// [`RECORD_CONTEXT`].
    pub context: String,
    /// [`KIND_ROOT`] or [`KIND_CERTIFY`].
    pub kind: String,
    /// The request answered (certify).
    pub request_id: Option<String>,
    /// Hex SHA-256 of the request's bytes (certify).
    pub request_sha256: Option<String>,
    /// The policy whose officers sign.
    pub policy_sha256: String,
    /// The IACA's subject (root), or the one that certifies.
    pub iaca_subject: String,
    /// When the record was drawn up.
    pub created: i64,
    /// A rollover's successor root: its common name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub successor: Option<String>,
}

impl CeremonyRecord {
    /// The bytes officers sign.
    pub fn bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// A certificate the ceremony issued, for the key of `label`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuedCertificate {
    /// The key's label in the daemon's token.
    pub label: String,
    /// Base64 DER.
    pub certificate: String,
}

/// The ceremony's response, carried back to the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CeremonyResponse {
    /// What the officers signed.
    pub record: CeremonyRecord,
    /// Officer identity → signature (base64url raw ECDSA) over the record.
    pub signatures: BTreeMap<String, String>,
    /// The IACA certificate (base64 DER).
    pub iaca: String,
    /// Certificates, one per requested key.
    pub certificates: Vec<IssuedCertificate>,
    /// The IACA's CRL (base64 DER): the certifying root's, or a
    /// successor's first.
    pub crl: String,
    /// CRLs of older roots still published.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub older_crls: Vec<RootCrl>,
    /// A rollover's certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollover: Option<RolloverCertificates>,
}

/// Base64 DER of a PEM CRL.
pub fn crl_der_b64(pem: &str) -> Result<String, PkiError> {
    openssl::x509::X509Crl::from_pem(pem.as_bytes())
        .and_then(|c| c.to_der())
        .map(|der| B64.encode(der))
        .map_err(|e| PkiError::Build(e.to_string()))
}

/// Base64 text to bytes, naming what it was.
pub fn b64(what: &str, text: &str) -> Result<Vec<u8>, PkiError> {
    B64.decode(text)
        .map_err(|e| PkiError::Invalid(format!("{what}: not base64: {e}")))
}

fn time(t: i64) -> Result<OffsetDateTime, PkiError> {
    OffsetDateTime::from_unix_timestamp(t).map_err(|e| PkiError::Invalid(e.to_string()))
}

/// The IACA's side of a certify ceremony: every request checked (proof of
/// possession, its kid, a window inside the Annex B limit and the IACA's
/// life), then the DS certificates and a CRL listing `request.revoke`,
/// signed by the offline IACA key (its thisUpdate `crl_at`, after the
/// last CRL the IACA signed). Nothing is signed if any key fails.
pub fn certify(
    config: &PkiConfig,
    iaca_der: &[u8],
    iaca: &HsmKey<'_>,
    request: &CeremonyRequest,
    (now, crl_at): (OffsetDateTime, OffsetDateTime),
) -> Result<(Vec<IssuedCertificate>, String), PkiError> {
    if request.context != REQUEST_CONTEXT {
        return Err(PkiError::Invalid("not a ceremony request".into()));
    }
    let iaca_facts = super::profile::check_iaca(iaca_der)?;
    let mut subjects = Vec::new();
    for key in &request.keys {
        let public = super::csr::requested_key(&b64("csr", &key.csr)?)?;
        if public.kid() != key.kid {
            return Err(PkiError::Invalid(format!(
                "{}: the request's key is not kid {}",
                key.label, key.kid
            )));
        }
        let (from, to) = (time(key.not_before)?, time(key.not_after)?);
        let days = (to - from).whole_days();
        if from >= to || days > i64::from(config.ds_validity_days) {
            return Err(PkiError::Invalid(format!(
                "{}: a window of {days} days (pki.ds_validity_days is {})",
                key.label, config.ds_validity_days
            )));
        }
        if to > iaca_facts.not_after || from < now - time::Duration::days(1) {
            return Err(PkiError::Invalid(format!(
                "{}: the window is not inside the IACA's life from today",
                key.label
            )));
        }
        pkcs11_shim::validate_label(&key.label)
            .map_err(|e| PkiError::Invalid(format!("{}: {e}", key.label)))?;
        subjects.push((key, SubjectKey::new(public)?, (from, to)));
    }
    let mut issued = Vec::new();
    for (key, subject, window) in &subjects {
        let (der, _) = issue_leaf_for(
            config,
            iaca_der,
            iaca,
            (&key.label, subject),
            *window,
            key.purpose,
        )?;
        issued.push(IssuedCertificate {
            label: key.label.clone(),
            certificate: B64.encode(der),
        });
    }
    let serials = request
        .revoke
        .iter()
        .map(|hex| {
            openssl::bn::BigNum::from_hex_str(hex)
                .map(|bn| bn.to_vec())
                .map_err(|e| PkiError::Invalid(format!("serial {hex:?}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let crl = issue_crl(config, iaca_der, iaca, &serials, crl_at)?;
    Ok((issued, crl))
}
