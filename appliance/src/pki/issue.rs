//! The ceremonies' certificate work: the self-signed IACA, DS certificates
//! signed by the IACA key, and the IACA's CRL. Each result is checked
//! against the Annex B profile and its signature verified before it is
//! returned: a bad certificate never reaches the disk.

use openssl::x509::X509;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CrlDistributionPoint,
    CustomExtension, DistinguishedName, DnType, DnValue, IsCa, Issuer, KeyIdMethod,
    KeyUsagePurpose, SerialNumber,
};
use time::{Duration, OffsetDateTime};

use super::der::{
    OID_EXT_KEY_USAGE, OID_ISSUER_ALT_NAME, OID_SUBJECT_KEY_IDENTIFIER, eku_mdl_ds, general_names,
    tlv,
};
use super::error::PkiError;
use super::profile::{self, CertFacts, LeafRole};
use super::signer::{HsmKey, SubjectKey};
use crate::config::PkiConfig;

/// A positive serial with 127 random bits (Annex B asks for at least 63).
pub(super) fn random_serial() -> Result<SerialNumber, PkiError> {
    let mut bytes = [0u8; 16];
    openssl::rand::rand_bytes(&mut bytes).map_err(|e| PkiError::Build(e.to_string()))?;
    bytes[0] = (bytes[0] & 0x7f) | 0x40; // positive, and no leading zero octet
    Ok(SerialNumber::from_slice(&bytes))
}

/// RFC 5280 §4.2.1.2 method (1): SHA-1 over the subjectPublicKey bits,
/// the value ISO 18013-5 Annex B validators recompute and compare (RFC
/// 7093's truncated SHA-256, used before, is refused by them).
pub(super) fn key_identifier(key: &pkcs11_shim::PublicKey) -> Vec<u8> {
    openssl::sha::sha1(key.raw()).to_vec()
}

pub(super) fn whole_seconds(t: OffsetDateTime) -> OffsetDateTime {
    t.replace_nanosecond(0).unwrap_or(t)
}

pub(super) fn name(config: &PkiConfig, common_name: &str) -> Result<DistinguishedName, PkiError> {
    let mut dn = DistinguishedName::new();
    let country = rcgen::string::PrintableString::try_from(config.country.as_str())
        .map_err(|e| PkiError::Invalid(format!("pki.country: {e}")))?;
    dn.push(DnType::CountryName, DnValue::PrintableString(country));
    dn.push(DnType::OrganizationName, config.organization.as_str());
    dn.push(DnType::CommonName, common_name);
    Ok(dn)
}

pub(super) fn issuer_alt_name(config: &PkiConfig) -> CustomExtension {
    CustomExtension::from_oid_content(OID_ISSUER_ALT_NAME, general_names(&config.issuer_alt_name))
}

pub(super) fn crl_distribution(config: &PkiConfig) -> Vec<CrlDistributionPoint> {
    vec![CrlDistributionPoint {
        uris: vec![config.crl_url.clone()],
    }]
}

pub(super) fn verify_signed_by(der: &[u8], issuer: &HsmKey<'_>) -> Result<(), PkiError> {
    let cert = X509::from_der(der).map_err(|e| PkiError::Build(e.to_string()))?;
    let key = issuer.public_key().to_openssl()?;
    match cert.verify(&key) {
        Ok(true) => Ok(()),
        _ => Err(PkiError::Build(
            "the token's signature on the certificate does not verify".into(),
        )),
    }
}

/// The IACA as rcgen's issuer, rebuilt from the configuration the IACA
/// certificate was made from; [`check_issued_by`] catches any drift. What
/// it issues names it by the key identifier its certificate carries (a
/// root made before method (1) keeps its own).
pub(super) fn iaca_issuer<'a, 'k>(
    config: &PkiConfig,
    iaca: &'a HsmKey<'k>,
    iaca_facts: &CertFacts,
) -> Result<Issuer<'static, &'a HsmKey<'k>>, PkiError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = name(config, &config.iaca_common_name)?;
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.key_identifier_method = KeyIdMethod::PreSpecified(
        iaca_facts
            .ski
            .clone()
            .unwrap_or_else(|| key_identifier(iaca.public_key())),
    );
    Ok(Issuer::new(params, iaca))
}

fn config_drift() -> PkiError {
    PkiError::Invalid(
        "the [pki] country/organization/iaca_common_name no longer match iaca.pem; \
         restore the values the IACA was created with"
            .into(),
    )
}

/// The issued certificate's issuer name must be the IACA's subject, byte for byte.
fn check_issued_by(der: &[u8], iaca: &X509) -> Result<(), PkiError> {
    let cert = X509::from_der(der).map_err(|e| PkiError::Build(e.to_string()))?;
    match (cert.issuer_name().to_der(), iaca.subject_name().to_der()) {
        (Ok(a), Ok(b)) if a == b => Ok(()),
        _ => Err(config_drift()),
    }
}

/// Issues the self-signed IACA root certificate for the key `iaca`.
pub fn issue_iaca(
    config: &PkiConfig,
    iaca: &HsmKey<'_>,
    now: OffsetDateTime,
) -> Result<(Vec<u8>, CertFacts), PkiError> {
    super::error::validated(config)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = name(config, &config.iaca_common_name)?;
    params.serial_number = Some(random_serial()?);
    params.not_before = whole_seconds(now);
    params.not_after = params.not_before + Duration::days(i64::from(config.iaca_validity_days));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.key_identifier_method = KeyIdMethod::PreSpecified(key_identifier(iaca.public_key()));
    params.crl_distribution_points = crl_distribution(config);
    params.custom_extensions = vec![issuer_alt_name(config)];
    let der = params
        .self_signed(iaca)
        .map_err(|e| PkiError::Build(e.to_string()))?
        .der()
        .to_vec();
    verify_signed_by(&der, iaca)?;
    let facts = profile::check_iaca(&der)?;
    profile::check_key_identifier("IACA", &der)?;
    Ok((der, facts))
}

/// Issues a DS certificate for `ds`'s key, valid from now, signed by the
/// IACA key, which must be the key of `iaca_der`.
pub fn issue_ds(
    config: &PkiConfig,
    iaca_der: &[u8],
    iaca: &HsmKey<'_>,
    ds: &HsmKey<'_>,
    now: OffsetDateTime,
) -> Result<(Vec<u8>, CertFacts), PkiError> {
    let subject = SubjectKey::new(ds.public_key().clone())?;
    let not_before = whole_seconds(now);
    let window = (
        not_before,
        not_before + Duration::days(i64::from(config.ds_validity_days)),
    );
    issue_ds_for(config, iaca_der, iaca, (ds.label(), &subject), window)
}

/// Issues a DS certificate for the key `subject` (its label names it in
/// the subject), valid over `window` cut to the IACA's end, signed by the
/// IACA key, which must be the key of `iaca_der`.
pub fn issue_ds_for(
    config: &PkiConfig,
    iaca_der: &[u8],
    iaca: &HsmKey<'_>,
    subject: (&str, &SubjectKey),
    window: (OffsetDateTime, OffsetDateTime),
) -> Result<(Vec<u8>, CertFacts), PkiError> {
    issue_leaf_for(
        config,
        iaca_der,
        iaca,
        subject,
        window,
        LeafRole::DocumentSigner,
    )
}

/// Issues a certificate of `role` for the key `subject`, as
/// [`issue_ds_for`] does for a DS key: a status-list signer's differs
/// only in its name and in carrying no ExtendedKeyUsage.
pub fn issue_leaf_for(
    config: &PkiConfig,
    iaca_der: &[u8],
    iaca: &HsmKey<'_>,
    (label, subject): (&str, &SubjectKey),
    (not_before, not_after): (OffsetDateTime, OffsetDateTime),
    role: LeafRole,
) -> Result<(Vec<u8>, CertFacts), PkiError> {
    super::error::validated(config)?;
    let iaca_facts = profile::check_iaca(iaca_der)?;
    let iaca_cert = X509::from_der(iaca_der).map_err(|e| PkiError::Invalid(e.to_string()))?;
    let iaca_key_matches = iaca_cert
        .public_key()
        .ok()
        .and_then(|k| k.public_key_to_der().ok())
        .is_some_and(|der| der == iaca.public_key().spki_der());
    if !iaca_key_matches {
        return Err(PkiError::Invalid(format!(
            "key {:?} is not the key of the IACA certificate",
            iaca.label()
        )));
    }
    let issuer = iaca_issuer(config, iaca, &iaca_facts)?;

    let mut params = CertificateParams::default();
    let kind = match role {
        LeafRole::DocumentSigner => "DS",
        LeafRole::StatusList => "Status List",
    };
    params.distinguished_name = name(
        config,
        &format!("{} {kind} {label}", config.iaca_common_name),
    )?;
    params.serial_number = Some(random_serial()?);
    params.not_before = whole_seconds(not_before);
    params.not_after = whole_seconds(not_after);
    if params.not_after > iaca_facts.not_after {
        // A DS certificate must not outlive its root.
        params.not_after = iaca_facts.not_after;
    }
    params.is_ca = IsCa::NoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.key_identifier_method = KeyIdMethod::PreSpecified(key_identifier(subject.public_key()));
    params.use_authority_key_identifier_extension = true;
    params.crl_distribution_points = crl_distribution(config);
    // rcgen writes SubjectKeyIdentifier only beside BasicConstraints, which
    // Annex B does not give a DS certificate: add it ourselves.
    let ski = CustomExtension::from_oid_content(
        OID_SUBJECT_KEY_IDENTIFIER,
        tlv(0x04, &key_identifier(subject.public_key())),
    );
    params.custom_extensions = vec![ski, issuer_alt_name(config)];
    if role == LeafRole::DocumentSigner {
        let mut eku = CustomExtension::from_oid_content(OID_EXT_KEY_USAGE, eku_mdl_ds());
        eku.set_criticality(true);
        params.custom_extensions.push(eku);
    }
    let der = params
        .signed_by(subject, &issuer)
        .map_err(|e| PkiError::Build(e.to_string()))?
        .der()
        .to_vec();
    verify_signed_by(&der, iaca)?;
    check_issued_by(&der, &iaca_cert)?;
    let facts = profile::check_leaf(&der, Some(&iaca_facts), role)?;
    profile::check_key_identifier(role.which(), &der)?;
    Ok((der, facts))
}

/// Issues the IACA's CRL (PEM) listing `revoked` DS serials.
pub fn issue_crl(
    config: &PkiConfig,
    iaca_der: &[u8],
    iaca: &HsmKey<'_>,
    revoked: &[Vec<u8>],
    now: OffsetDateTime,
) -> Result<String, PkiError> {
    let iaca_cert = X509::from_der(iaca_der).map_err(|e| PkiError::Invalid(e.to_string()))?;
    let iaca_facts = profile::check_iaca(iaca_der)?;
    let issuer = iaca_issuer(config, iaca, &iaca_facts)?;
    let this_update = whole_seconds(now);
    let params = CertificateRevocationListParams {
        this_update,
        next_update: this_update + Duration::days(i64::from(config.crl_validity_days)),
        // Seconds since the epoch: increases with every CRL this issuer signs.
        crl_number: SerialNumber::from_slice(&this_update.unix_timestamp().to_be_bytes()),
        issuing_distribution_point: None,
        revoked_certs: revoked
            .iter()
            .map(|serial| rcgen::RevokedCertParams {
                serial_number: SerialNumber::from_slice(serial),
                revocation_time: this_update,
                reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: KeyIdMethod::PreSpecified(
            iaca_facts
                .ski
                .clone()
                .unwrap_or_else(|| key_identifier(iaca.public_key())),
        ),
    };
    let crl = params
        .signed_by(&issuer)
        .map_err(|e| PkiError::Build(e.to_string()))?;
    let der = crl.der().to_vec();
    let parsed =
        openssl::x509::X509Crl::from_der(&der).map_err(|e| PkiError::Build(e.to_string()))?;
    let key = iaca.public_key().to_openssl()?;
    if !parsed.verify(&key).unwrap_or(false) {
        return Err(PkiError::Build(
            "the token's signature on the CRL does not verify".into(),
        ));
    }
    let same_issuer = match (
        parsed.issuer_name().to_der(),
        iaca_cert.subject_name().to_der(),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if !same_issuer {
        return Err(config_drift());
    }
    let pem = parsed
        .to_pem()
        .map_err(|e| PkiError::Build(e.to_string()))?;
    String::from_utf8(pem).map_err(|e| PkiError::Build(e.to_string()))
}
