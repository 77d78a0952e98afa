//! The officer ceremonies behind `dojangctl pki`: each generates what it
//! needs in the token, issues and checks the certificate, then writes it.
//! A ceremony that fails leaves no certificate behind.

use std::path::PathBuf;

use pkcs11_shim::{Algorithm, KeyBackend, KeyPurpose};
use time::OffsetDateTime;

use super::error::PkiError;
use super::issue::{issue_crl, issue_ds, issue_iaca};
use super::signer::HsmKey;
use super::store::PkiStore;
use crate::config::PkiConfig;

/// What a ceremony wrote.
#[derive(Debug, Clone)]
pub struct CeremonyReport {
    /// Files written.
    pub written: Vec<PathBuf>,
    /// Keys generated (labels).
    pub generated: Vec<String>,
}

fn ensure_key(
    backend: &dyn KeyBackend,
    label: &str,
    purpose: KeyPurpose,
    algorithm: Algorithm,
    generated: &mut Vec<String>,
) -> Result<(), PkiError> {
    match backend.find(label) {
        Ok(key) if key.purpose == purpose => Ok(()),
        Ok(key) => Err(PkiError::Invalid(format!(
            "key {label:?} exists but is a {} key",
            key.purpose
        ))),
        Err(pkcs11_shim::Error::KeyNotFound { .. }) => {
            let _ = backend.generate(label, purpose, algorithm)?;
            generated.push(label.to_owned());
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// `pki init`: the IACA key and certificate, a first DS key and
/// certificate, and an empty CRL. Refuses if an IACA certificate exists.
pub fn init(
    backend: &dyn KeyBackend,
    config: &PkiConfig,
    ds_label: &str,
    algorithm: Algorithm,
    now: OffsetDateTime,
) -> Result<CeremonyReport, PkiError> {
    super::error::validated(config)?;
    let store = PkiStore::new(&config.dir);
    if store.iaca_path().exists() {
        return Err(PkiError::Invalid(format!(
            "{} exists: the IACA is created once (use `pki issue-ds` for new document signers)",
            store.iaca_path().display()
        )));
    }
    let mut report = CeremonyReport {
        written: Vec::new(),
        generated: Vec::new(),
    };
    ensure_key(
        backend,
        &config.iaca_key,
        KeyPurpose::Iaca,
        algorithm,
        &mut report.generated,
    )?;
    let iaca = HsmKey::find(backend, &config.iaca_key, KeyPurpose::Iaca)?;
    let (iaca_der, _) = issue_iaca(config, &iaca, now)?;
    report.written.push(store.write_iaca(&iaca_der)?);
    let crl = issue_crl(config, &iaca_der, &iaca, &[], now)?;
    report.written.push(store.write_crl(&crl)?);
    let ds = issue_document_signer(backend, config, ds_label, algorithm, now)?;
    report.written.extend(ds.written);
    report.generated.extend(ds.generated);
    Ok(report)
}

/// The IACA key (generated if `config.iaca_key` is not in the token yet)
/// and its root certificate, written nowhere: the daemon keeps it in the
/// registry when officers approve its generation.
pub fn iaca_in_token(
    backend: &dyn KeyBackend,
    config: &PkiConfig,
    algorithm: Algorithm,
    now: OffsetDateTime,
) -> Result<(Vec<u8>, super::profile::CertFacts), PkiError> {
    super::error::validated(config)?;
    let mut generated = Vec::new();
    ensure_key(
        backend,
        &config.iaca_key,
        KeyPurpose::Iaca,
        algorithm,
        &mut generated,
    )?;
    let iaca = HsmKey::find(backend, &config.iaca_key, KeyPurpose::Iaca)?;
    issue_iaca(config, &iaca, now)
}

/// `pki issue-ds`: a new DS key (if `label` is not in the token yet) and its
/// certificate signed by the IACA key.
pub fn issue_document_signer(
    backend: &dyn KeyBackend,
    config: &PkiConfig,
    label: &str,
    algorithm: Algorithm,
    now: OffsetDateTime,
) -> Result<CeremonyReport, PkiError> {
    super::error::validated(config)?;
    let store = PkiStore::new(&config.dir);
    if store.ds_path(label).exists() {
        return Err(PkiError::Invalid(format!(
            "{} exists: pick a new label for a new document signer",
            store.ds_path(label).display()
        )));
    }
    let (iaca_der, _) = store.iaca()?;
    let (der, _, generated) =
        document_signer_in_token(backend, config, &iaca_der, label, algorithm, now)?;
    Ok(CeremonyReport {
        written: vec![store.write_ds(label, &der)?],
        generated,
    })
}

/// A DS key (generated if `label` is not in the token yet) and its
/// certificate signed by the IACA key, written nowhere: the daemon keeps
/// the certificate in the registry. Returns (DER, facts, keys generated).
pub fn document_signer_in_token(
    backend: &dyn KeyBackend,
    config: &PkiConfig,
    iaca_der: &[u8],
    label: &str,
    algorithm: Algorithm,
    now: OffsetDateTime,
) -> Result<(Vec<u8>, super::profile::CertFacts, Vec<String>), PkiError> {
    super::error::validated(config)?;
    let iaca = HsmKey::find(backend, &config.iaca_key, KeyPurpose::Iaca)?;
    let mut generated = Vec::new();
    ensure_key(
        backend,
        label,
        KeyPurpose::DocumentSigner,
        algorithm,
        &mut generated,
    )?;
    let ds = HsmKey::find(backend, label, KeyPurpose::DocumentSigner)?;
    let (der, facts) = issue_ds(config, iaca_der, &iaca, &ds, now)?;
    Ok((der, facts, generated))
}

/// A status-list signer certificate for the key `label` already in the
/// token, signed by the IACA key in the same token (online custody),
/// valid from now for `pki.ds_validity_days`.
pub fn status_signer_in_token(
    backend: &dyn KeyBackend,
    config: &PkiConfig,
    iaca_der: &[u8],
    label: &str,
    now: OffsetDateTime,
) -> Result<(Vec<u8>, super::profile::CertFacts), PkiError> {
    super::error::validated(config)?;
    let iaca = HsmKey::find(backend, &config.iaca_key, KeyPurpose::Iaca)?;
    let key = HsmKey::find(backend, label, KeyPurpose::StatusList)?;
    let subject = super::signer::SubjectKey::new(key.public_key().clone())?;
    let from = now.replace_nanosecond(0).unwrap_or(now);
    let window = (
        from,
        from + time::Duration::days(i64::from(config.ds_validity_days)),
    );
    super::issue::issue_leaf_for(
        config,
        iaca_der,
        &iaca,
        (label, &subject),
        window,
        super::profile::LeafRole::StatusList,
    )
}

/// `pki crl`: a fresh CRL signed by the IACA key, listing `revoked` serials.
pub fn refresh_crl(
    backend: &dyn KeyBackend,
    config: &PkiConfig,
    revoked: &[Vec<u8>],
    now: OffsetDateTime,
) -> Result<PathBuf, PkiError> {
    let store = PkiStore::new(&config.dir);
    let (iaca_der, _) = store.iaca()?;
    let previous = std::fs::read_to_string(store.crl_path()).ok();
    let this_update = next_crl_update(previous.as_deref(), now)?;
    store.write_crl(&crl_now(backend, config, &iaca_der, revoked, this_update)?)
}

/// The thisUpdate of the CRL that follows `previous`: now, or a second
/// after the previous one's if that is not in the past. The CRL number
/// comes from it, so numbers only grow, whichever node or tool signs.
pub fn next_crl_update(
    previous: Option<&str>,
    now: OffsetDateTime,
) -> Result<OffsetDateTime, PkiError> {
    let stored = previous
        .and_then(|pem| openssl::x509::X509Crl::from_pem(pem.as_bytes()).ok())
        .and_then(|crl| {
            let epoch = openssl::asn1::Asn1Time::from_unix(0).ok()?;
            let diff = epoch.diff(crl.last_update()).ok()?;
            Some(i64::from(diff.days) * 86_400 + i64::from(diff.secs))
        })
        .unwrap_or(0);
    OffsetDateTime::from_unix_timestamp(now.unix_timestamp().max(stored + 1))
        .map_err(|e| PkiError::Invalid(format!("CRL time: {e}")))
}

/// A CRL (PEM) signed now by the IACA key, listing `revoked` serials.
pub fn crl_now(
    backend: &dyn KeyBackend,
    config: &PkiConfig,
    iaca_der: &[u8],
    revoked: &[Vec<u8>],
    now: OffsetDateTime,
) -> Result<String, PkiError> {
    let iaca = HsmKey::find(backend, &config.iaca_key, KeyPurpose::Iaca)?;
    issue_crl(config, iaca_der, &iaca, revoked, now)
}
