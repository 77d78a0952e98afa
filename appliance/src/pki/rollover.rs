//! IACA rollover: a successor root made at a ceremony, and the link
//! certificates between the two roots (the old key certifies the new one,
//! the new key certifies the old one), so a verifier trusting either root
//! can reach the other. Each root after the first has its own CRL,
//! published beside the first's (`iaca-<key id>.crl`).

use openssl::x509::X509;
use pkcs11_shim::PublicKey;
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyIdMethod, KeyUsagePurpose};
use time::OffsetDateTime;

use super::error::PkiError;
use super::issue::{
    crl_distribution, iaca_issuer, issuer_alt_name, key_identifier, name, random_serial,
    verify_signed_by, whole_seconds,
};
use super::profile;
use super::signer::{HsmKey, SubjectKey};
use crate::config::PkiConfig;

/// The first 16 hex digits of a root's key identifier: names its CRL.
pub fn short_key_id(ski: &[u8]) -> String {
    ski.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// The `[pki]` a successor root is made from: the same names but its own
/// common name, and a CRL beside the first root's, named by its key id.
pub fn successor_config(config: &PkiConfig, common_name: &str, ski: &[u8]) -> PkiConfig {
    let base = config
        .crl_url
        .rsplit_once('/')
        .map_or(config.crl_url.as_str(), |(base, _)| base);
    PkiConfig {
        iaca_common_name: common_name.to_owned(),
        crl_url: format!("{base}/iaca-{}.crl", short_key_id(ski)),
        ..config.clone()
    }
}

/// The SHA-1 key identifier (method 1) a key's certificates carry.
pub fn key_id_of(key: &PublicKey) -> Vec<u8> {
    key_identifier(key)
}

/// A link certificate: `subject_root`'s name and key (its config and
/// public key), issued by the root `issuer_der` whose key is `issuer`; a
/// CA certificate, valid from now to the earlier of the two roots' ends.
pub fn issue_link(
    (subject_config, subject_key, subject_end): (&PkiConfig, &PublicKey, OffsetDateTime),
    (issuer_config, issuer_der): (&PkiConfig, &[u8]),
    issuer: &HsmKey<'_>,
    now: OffsetDateTime,
) -> Result<Vec<u8>, PkiError> {
    let issuer_facts = profile::check_iaca(issuer_der)?;
    let issuer_cert = iaca_issuer(issuer_config, issuer, &issuer_facts)?;
    let subject = SubjectKey::new(subject_key.clone())?;
    let mut params = CertificateParams::default();
    params.distinguished_name = name(subject_config, &subject_config.iaca_common_name)?;
    params.serial_number = Some(random_serial()?);
    params.not_before = whole_seconds(now);
    params.not_after = whole_seconds(subject_end.min(issuer_facts.not_after));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.key_identifier_method = KeyIdMethod::PreSpecified(key_identifier(subject_key));
    params.use_authority_key_identifier_extension = true;
    params.crl_distribution_points = crl_distribution(issuer_config);
    params.custom_extensions = vec![issuer_alt_name(issuer_config)];
    let der = params
        .signed_by(&subject, &issuer_cert)
        .map_err(|e| PkiError::Build(e.to_string()))?
        .der()
        .to_vec();
    verify_signed_by(&der, issuer)?;
    check_link(&der, issuer_der, subject_key).map_err(PkiError::Invalid)?;
    Ok(der)
}

/// Whether `link` certifies `subject_key` as a CA, signed by the key of
/// the root `issuer_der` and naming it as its issuer.
pub fn check_link(link: &[u8], issuer_der: &[u8], subject_key: &PublicKey) -> Result<(), String> {
    let link = X509::from_der(link).map_err(|e| format!("link certificate: {e}"))?;
    let issuer = X509::from_der(issuer_der).map_err(|e| format!("root: {e}"))?;
    let signed = issuer
        .public_key()
        .ok()
        .is_some_and(|k| link.verify(&k).unwrap_or(false));
    if !signed || link.issuer_name().to_der().ok() != issuer.subject_name().to_der().ok() {
        return Err("the link certificate is not issued by the root it names".into());
    }
    let certified = link
        .public_key()
        .and_then(|k| k.public_key_to_der())
        .map_err(|e| e.to_string())?;
    if certified != subject_key.spki_der() {
        return Err("the link certificate certifies another key".into());
    }
    // A CA certificate that may sign certificates: any other certificate
    // the old root issued (a DS certificate) is no link.
    let der = link.to_der().map_err(|e| e.to_string())?;
    let (_, parsed) = x509_parser::parse_x509_certificate(&der).map_err(|e| e.to_string())?;
    let ca = parsed
        .basic_constraints()
        .ok()
        .flatten()
        .is_some_and(|bc| bc.critical && bc.value.ca);
    let signs_certificates = parsed
        .key_usage()
        .ok()
        .flatten()
        .is_some_and(|ku| ku.value.key_cert_sign());
    if !ca || !signs_certificates {
        return Err("the link certificate is not a CA certificate for signing certificates".into());
    }
    Ok(())
}

/// Whether `link` names the root `subject_der` as its subject.
pub fn link_names(link: &[u8], subject_der: &[u8]) -> Result<(), String> {
    let link = X509::from_der(link).map_err(|e| e.to_string())?;
    let subject = X509::from_der(subject_der).map_err(|e| e.to_string())?;
    if link.subject_name().to_der().ok() != subject.subject_name().to_der().ok() {
        return Err("the link certificate names another root as its subject".into());
    }
    Ok(())
}
