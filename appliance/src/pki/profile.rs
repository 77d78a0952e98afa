//! The ISO/IEC 18013-5 Annex B certificate profile, checked on parsed
//! certificates: what a verifier would refuse, we refuse first. Used after
//! every ceremony and by the credential verifier.

use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

use super::der::OID_MDL_DS_ARCS;

pub use crate::config::pki::{MAX_DS_VALIDITY_DAYS, MAX_IACA_VALIDITY_DAYS};

/// A profile violation, naming the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{which} certificate breaks ISO 18013-5 Annex B: {rule}")]
pub struct ProfileError {
    /// `IACA`, `DS` or `status-list signer`.
    pub which: &'static str,
    /// The rule, in words.
    pub rule: String,
}

fn fail(which: &'static str, rule: impl Into<String>) -> ProfileError {
    ProfileError {
        which,
        rule: rule.into(),
    }
}

/// What the checks read off a certificate.
#[derive(Debug, Clone)]
pub struct CertFacts {
    /// Subject countryName.
    pub country: Option<String>,
    /// SubjectKeyIdentifier.
    pub ski: Option<Vec<u8>>,
    /// AuthorityKeyIdentifier keyIdentifier.
    pub aki: Option<Vec<u8>>,
    /// notBefore.
    pub not_before: OffsetDateTime,
    /// notAfter.
    pub not_after: OffsetDateTime,
}

fn parse<'a>(which: &'static str, der: &'a [u8]) -> Result<X509Certificate<'a>, ProfileError> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(cert),
        _ => Err(fail(which, "not a single DER certificate")),
    }
}

fn facts(cert: &X509Certificate<'_>) -> CertFacts {
    let country = cert
        .subject()
        .iter_country()
        .next()
        .and_then(|c| c.as_str().ok())
        .map(str::to_owned);
    let mut ski = None;
    let mut aki = None;
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(id) => ski = Some(id.0.to_vec()),
            ParsedExtension::AuthorityKeyIdentifier(a) => {
                aki = a.key_identifier.as_ref().map(|k| k.0.to_vec());
            }
            _ => {}
        }
    }
    CertFacts {
        country,
        ski,
        aki,
        not_before: cert.validity().not_before.to_datetime(),
        not_after: cert.validity().not_after.to_datetime(),
    }
}

/// Checks the extensions both profiles share: SKI, IssuerAltName, CRLDP,
/// a critical KeyUsage with exactly `key_usage`, a countryName, v3.
fn check_common(
    which: &'static str,
    cert: &X509Certificate<'_>,
    want_ca: bool,
) -> Result<(), ProfileError> {
    if cert.version().0 != 2 {
        return Err(fail(which, "must be X.509 v3"));
    }
    let serial = cert.raw_serial();
    if serial.len() > 20 || serial.first().is_some_and(|b| *b & 0x80 != 0) {
        return Err(fail(which, "serial must be positive and at most 20 octets"));
    }
    if serial.iter().skip_while(|b| **b == 0).count() * 8 < 64 {
        return Err(fail(which, "serial must carry at least 63 random bits"));
    }
    let (mut ski, mut ian, mut crldp, mut key_usage) = (false, false, false, false);
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(_) => ski = true,
            ParsedExtension::IssuerAlternativeName(names) => {
                ian = names
                    .general_names
                    .iter()
                    .any(|n| matches!(n, GeneralName::URI(_) | GeneralName::RFC822Name(_)));
            }
            ParsedExtension::CRLDistributionPoints(points) => {
                crldp = points.points.iter().any(|p| p.distribution_point.is_some());
            }
            ParsedExtension::KeyUsage(ku) => {
                if !ext.critical {
                    return Err(fail(which, "KeyUsage must be critical"));
                }
                let ok = if want_ca {
                    ku.key_cert_sign() && ku.crl_sign() && !ku.digital_signature()
                } else {
                    ku.digital_signature()
                        && !ku.key_cert_sign()
                        && !ku.crl_sign()
                        && !ku.key_encipherment()
                        && !ku.data_encipherment()
                        && !ku.key_agreement()
                };
                if !ok {
                    return Err(fail(
                        which,
                        if want_ca {
                            "KeyUsage must be keyCertSign + cRLSign"
                        } else {
                            "KeyUsage must be digitalSignature only"
                        },
                    ));
                }
                key_usage = true;
            }
            _ => {}
        }
    }
    for (present, what) in [
        (ski, "SubjectKeyIdentifier"),
        (ian, "IssuerAltName (URI or e-mail)"),
        (crldp, "CRLDistributionPoints"),
        (key_usage, "KeyUsage"),
    ] {
        if !present {
            return Err(fail(which, format!("{what} is required")));
        }
    }
    if facts(cert).country.is_none_or(|c| c.len() != 2) {
        return Err(fail(which, "subject countryName (2 letters) is required"));
    }
    Ok(())
}

/// Checks that a certificate's SubjectKeyIdentifier is RFC 5280 §4.2.1.2
/// method (1), SHA-1 over its subjectPublicKey bits: what Annex B profile
/// validators recompute. Every certificate Dojang makes passes it; a root
/// made by an older build (truncated SHA-256) still loads, and rolls over.
pub fn check_key_identifier(which: &'static str, der: &[u8]) -> Result<(), ProfileError> {
    let cert = parse(which, der)?;
    let bits = cert.public_key().subject_public_key.data.as_ref();
    let expected = openssl::sha::sha1(bits);
    if facts(&cert).ski.as_deref() != Some(expected.as_slice()) {
        return Err(fail(
            which,
            "SubjectKeyIdentifier must be SHA-1 over the subjectPublicKey bits (RFC 5280 method 1)",
        ));
    }
    Ok(())
}

/// Checks an IACA root certificate.
pub fn check_iaca(der: &[u8]) -> Result<CertFacts, ProfileError> {
    let cert = parse("IACA", der)?;
    check_common("IACA", &cert, true)?;
    let bc = cert
        .basic_constraints()
        .ok()
        .flatten()
        .ok_or_else(|| fail("IACA", "BasicConstraints is required"))?;
    if !bc.critical || !bc.value.ca || bc.value.path_len_constraint != Some(0) {
        return Err(fail(
            "IACA",
            "BasicConstraints must be critical, CA:TRUE, pathLen 0",
        ));
    }
    let facts = facts(&cert);
    if (facts.not_after - facts.not_before).whole_days() > MAX_IACA_VALIDITY_DAYS {
        return Err(fail("IACA", "validity must not exceed 20 years"));
    }
    Ok(facts)
}

/// What an IACA-issued leaf certificate is for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LeafRole {
    /// A document signer (Annex B DS profile, EKU 1.0.18013.5.1.2).
    #[default]
    DocumentSigner,
    /// A status-list signer (ISO 18013-5 second edition Table B.9): no
    /// DS purpose, so no reader takes an MSO it signed, and no EKU of its
    /// own while the Token Status List draft's `id-kp-oauthStatusSigning`
    /// has no number.
    StatusList,
}

impl LeafRole {
    /// The document-signer role (serde skips it, keeping older requests' bytes).
    pub fn is_document_signer(&self) -> bool {
        *self == LeafRole::DocumentSigner
    }

    /// The profile's name in errors.
    pub fn which(self) -> &'static str {
        match self {
            LeafRole::DocumentSigner => "DS",
            LeafRole::StatusList => "status-list signer",
        }
    }
}

/// Checks a document-signer certificate, and its link to `iaca` when given.
pub fn check_ds(der: &[u8], iaca: Option<&CertFacts>) -> Result<CertFacts, ProfileError> {
    check_leaf(der, iaca, LeafRole::DocumentSigner)
}

/// Checks a leaf certificate of `role`, and its link to `iaca` when given.
pub fn check_leaf(
    der: &[u8],
    iaca: Option<&CertFacts>,
    role: LeafRole,
) -> Result<CertFacts, ProfileError> {
    let which = role.which();
    let cert = parse(which, der)?;
    check_common(which, &cert, false)?;
    let eku = cert
        .extended_key_usage()
        .map_err(|_| fail(which, "ExtendedKeyUsage is unreadable or repeated"))?;
    let mdl_ds = eku.map(|eku| {
        let has_ds = eku.value.other.iter().any(|oid| {
            oid.iter()
                .is_some_and(|arcs| arcs.eq(OID_MDL_DS_ARCS.iter().copied()))
        });
        (eku.critical, has_ds)
    });
    match (role, mdl_ds) {
        (LeafRole::DocumentSigner, Some((true, true))) | (LeafRole::StatusList, None) => {}
        (LeafRole::DocumentSigner, _) => {
            return Err(fail(
                which,
                "ExtendedKeyUsage must be critical and hold 1.0.18013.5.1.2",
            ));
        }
        (LeafRole::StatusList, Some(_)) => {
            return Err(fail(
                which,
                "must carry no ExtendedKeyUsage (never the DS purpose)",
            ));
        }
    }
    if cert
        .basic_constraints()
        .ok()
        .flatten()
        .is_some_and(|bc| bc.value.ca)
    {
        return Err(fail(which, "must not be a CA"));
    }
    let facts = facts(&cert);
    if (facts.not_after - facts.not_before).whole_days() > MAX_DS_VALIDITY_DAYS {
        return Err(fail(which, "validity must not exceed 457 days"));
    }
    if facts.aki.is_none() {
        return Err(fail(which, "AuthorityKeyIdentifier is required"));
    }
    if let Some(iaca) = iaca {
        if facts.aki != iaca.ski {
            return Err(fail(
                which,
                "AuthorityKeyIdentifier must equal the IACA's SubjectKeyIdentifier",
            ));
        }
        if facts.country != iaca.country {
            return Err(fail(which, "countryName must equal the IACA's"));
        }
    }
    Ok(facts)
}
