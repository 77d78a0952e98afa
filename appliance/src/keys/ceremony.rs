//! The daemon's checks of an offline ceremony's response, as pure logic:
//! enough pinned officers signed its record, the record answers the
//! request this daemon made (once), and every certificate is the Annex B
//! profile of its purpose (DS or status-list signer), issued by the IACA
//! the daemon trusts, for exactly a key the daemon asked for, over the
//! window it asked for; the CRL is the IACA's,
//! newer than the one served, and lists every revocation requested.

use std::collections::BTreeSet;

use dojang_policies::Policy;
use openssl::x509::{X509, X509Crl};
use time::OffsetDateTime;

use super::order::{OrderRefusal, digest, verify_m_signers};
use crate::pki::exchange::{
    CeremonyRecord, CeremonyRequest, CeremonyResponse, KIND_CERTIFY, RECORD_CONTEXT, b64,
};
use crate::pki::profile::{self, CertFacts};

/// Why a ceremony response is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CeremonyRefusal {
    /// Not a response, or not of this kind.
    #[error("not a ceremony response: {0}")]
    Malformed(String),
    /// Officers' signatures do not make M.
    #[error("officers' signatures: {0}")]
    Officers(OrderRefusal),
    /// It answers no request of this daemon, or another one's bytes.
    #[error("{0}")]
    Request(String),
    /// The request was answered already.
    #[error("request {0} was answered already: a response is imported once")]
    Replayed(String),
    /// Another IACA, or a certificate it did not sign.
    #[error("{0}")]
    Chain(String),
    /// A certificate for a key the daemon did not generate (or ask for).
    #[error("{0}")]
    ForeignKey(String),
    /// A certificate outside the DS profile or the requested window.
    #[error("{0}")]
    Profile(String),
    /// A requested key without a certificate.
    #[error("no certificate for requested key {0}")]
    Missing(String),
    /// The CRL is not the IACA's, older than the served one, or misses a
    /// requested revocation.
    #[error("{0}")]
    Crl(String),
}

impl CeremonyRefusal {
    /// The stable rule name (problem `rule`, audit, metrics).
    pub fn rule(&self) -> &'static str {
        match self {
            CeremonyRefusal::Malformed(_) => "ceremony.malformed",
            CeremonyRefusal::Officers(_) => "ceremony.officers",
            CeremonyRefusal::Request(_) => "ceremony.request",
            CeremonyRefusal::Replayed(_) => "ceremony.replayed",
            CeremonyRefusal::Chain(_) => "ceremony.chain",
            CeremonyRefusal::ForeignKey(_) => "ceremony.foreign_key",
            CeremonyRefusal::Profile(_) => "ceremony.profile",
            CeremonyRefusal::Missing(_) => "ceremony.missing_certificate",
            CeremonyRefusal::Crl(_) => "ceremony.crl",
        }
    }
}

/// Officers who signed `record`, each by a key `policy` pins; at least M
/// distinct keys, every signature good.
pub fn verify_record(
    record: &CeremonyRecord,
    signatures: &std::collections::BTreeMap<String, String>,
    policy: &Policy,
) -> Result<Vec<String>, OrderRefusal> {
    if record.context != RECORD_CONTEXT {
        return Err(OrderRefusal::BadSignature("(not a ceremony record)".into()));
    }
    if record.policy_sha256 != policy.hash {
        return Err(OrderRefusal::OtherPolicy(record.policy_sha256.clone()));
    }
    verify_m_signers(policy, &record.bytes(), signatures)?;
    Ok(signatures.keys().cloned().collect())
}

/// A certificate the daemon may take: a DS key's into its pool, a
/// status-list key's onto its key row.
#[derive(Debug, Clone)]
pub struct Certified {
    /// The key's label.
    pub label: String,
    /// What it certifies the key for (the request's word, checked).
    pub purpose: profile::LeafRole,
    /// DER.
    pub der: Vec<u8>,
    /// What the profile check read off it.
    pub facts: CertFacts,
}

/// A verified certify response: certificates and the CRL (PEM).
#[derive(Debug, Clone)]
pub struct VerifiedCertification {
    /// One per requested key.
    pub certificates: Vec<Certified>,
    /// The new CRL.
    pub crl_pem: String,
    /// Older roots' new CRLs: key id (hex), PEM.
    pub older_crls: Vec<(String, String)>,
    /// Who signed the record.
    pub officers: Vec<String>,
}

/// An older root still published: key id (hex), DER, its served CRL (PEM).
pub type OlderRoot = (String, Vec<u8>, Option<String>);

/// What a certify response is checked against.
pub struct Expected<'a> {
    /// The request's stored bytes.
    pub request: &'a [u8],
    /// The policy in force.
    pub policy: &'a Policy,
    /// The IACA the daemon trusts (DER) and its facts.
    pub iaca: (&'a [u8], &'a CertFacts),
    /// The CRL served now (PEM), if any.
    pub served_crl: Option<&'a str>,
    /// Older roots still published: key id (hex), DER, served CRL (PEM).
    pub older: Vec<OlderRoot>,
    /// Now.
    pub now: OffsetDateTime,
}

/// Checks a certify `response` against what this daemon asked for.
pub fn verify_certification(
    response: &CeremonyResponse,
    expected: &Expected<'_>,
) -> Result<VerifiedCertification, CeremonyRefusal> {
    let record = &response.record;
    if record.kind != KIND_CERTIFY {
        return Err(CeremonyRefusal::Malformed(format!(
            "a {:?} ceremony certifies no keys",
            record.kind
        )));
    }
    let officers = verify_record(record, &response.signatures, expected.policy)
        .map_err(CeremonyRefusal::Officers)?;
    let request: CeremonyRequest = serde_json::from_slice(expected.request)
        .map_err(|e| CeremonyRefusal::Request(format!("the stored request: {e}")))?;
    if record.request_sha256.as_deref() != Some(digest(expected.request).as_str())
        || record.request_id.as_deref() != Some(request.id.as_str())
    {
        return Err(CeremonyRefusal::Request(
            "the record names other request bytes than this daemon made".into(),
        ));
    }
    let (iaca_der, iaca_facts) = expected.iaca;
    if b64("iaca", &response.iaca).map_err(|e| CeremonyRefusal::Malformed(e.to_string()))?
        != iaca_der
    {
        return Err(CeremonyRefusal::Chain(
            "the response's IACA is not the one this daemon trusts".into(),
        ));
    }
    let iaca = X509::from_der(iaca_der).map_err(|e| CeremonyRefusal::Chain(e.to_string()))?;
    let certificates = check_certificates(response, &request, &iaca, iaca_facts)?;
    let crl_pem = check_crl(
        &response.crl,
        &request.revoke,
        &iaca,
        expected.served_crl,
        expected.now,
    )?;
    let mut older_crls = Vec::new();
    for order in &request.older_roots {
        let (_, root_der, served) = expected
            .older
            .iter()
            .find(|(id, _, _)| *id == order.iaca_key_id)
            .ok_or_else(|| {
                CeremonyRefusal::Request(format!(
                    "the request names root {} this daemon does not publish",
                    order.iaca_key_id
                ))
            })?;
        let given = response
            .older_crls
            .iter()
            .find(|c| c.iaca_key_id == order.iaca_key_id)
            .ok_or_else(|| {
                CeremonyRefusal::Crl(format!("no CRL for the older root {}", order.iaca_key_id))
            })?;
        let root = X509::from_der(root_der).map_err(|e| CeremonyRefusal::Chain(e.to_string()))?;
        let pem = check_crl(
            &given.crl,
            &order.revoke,
            &root,
            served.as_deref(),
            expected.now,
        )?;
        older_crls.push((order.iaca_key_id.clone(), pem));
    }
    Ok(VerifiedCertification {
        certificates,
        crl_pem,
        older_crls,
        officers,
    })
}

fn check_certificates(
    response: &CeremonyResponse,
    request: &CeremonyRequest,
    iaca: &X509,
    iaca_facts: &CertFacts,
) -> Result<Vec<Certified>, CeremonyRefusal> {
    let iaca_key = iaca
        .public_key()
        .map_err(|e| CeremonyRefusal::Chain(e.to_string()))?;
    let mut out = Vec::new();
    for issued in &response.certificates {
        let label = &issued.label;
        let asked = request
            .keys
            .iter()
            .find(|k| &k.label == label)
            .ok_or_else(|| {
                CeremonyRefusal::ForeignKey(format!("{label}: the request asked for no such key"))
            })?;
        let der = b64("certificate", &issued.certificate)
            .map_err(|e| CeremonyRefusal::Malformed(e.to_string()))?;
        let cert = X509::from_der(&der)
            .map_err(|e| CeremonyRefusal::Malformed(format!("{label}: {e}")))?;
        if !cert.verify(&iaca_key).unwrap_or(false)
            || cert.issuer_name().to_der().ok() != iaca.subject_name().to_der().ok()
        {
            return Err(CeremonyRefusal::Chain(format!(
                "{label}: the certificate is not issued by the IACA"
            )));
        }
        let certified = cert
            .public_key()
            .and_then(|k| k.public_key_to_der())
            .ok()
            .and_then(|spki| pkcs11_shim::PublicKey::from_spki_der(&spki).ok())
            .ok_or_else(|| CeremonyRefusal::Malformed(format!("{label}: unreadable key")))?;
        if certified.kid() != asked.kid {
            return Err(CeremonyRefusal::ForeignKey(format!(
                "{label}: the certificate is for kid {}, not the key this daemon generated ({})",
                certified.kid(),
                asked.kid
            )));
        }
        let facts = profile::check_leaf(&der, Some(iaca_facts), asked.purpose)
            .and_then(|f| profile::check_key_identifier(asked.purpose.which(), &der).map(|()| f))
            .map_err(|e| CeremonyRefusal::Profile(format!("{label}: {e}")))?;
        if facts.not_before.unix_timestamp() != asked.not_before
            || facts.not_after.unix_timestamp() != asked.not_after
        {
            return Err(CeremonyRefusal::Profile(format!(
                "{label}: the certificate's validity is not the window requested"
            )));
        }
        if out.iter().any(|c: &Certified| &c.label == label) {
            return Err(CeremonyRefusal::Malformed(format!(
                "{label}: two certificates"
            )));
        }
        out.push(Certified {
            label: label.clone(),
            purpose: asked.purpose,
            der,
            facts,
        });
    }
    if let Some(missing) = request
        .keys
        .iter()
        .find(|k| !out.iter().any(|c| c.label == k.label))
    {
        return Err(CeremonyRefusal::Missing(missing.label.clone()));
    }
    Ok(out)
}

fn seconds(t: &openssl::asn1::Asn1TimeRef) -> Option<i64> {
    let epoch = openssl::asn1::Asn1Time::from_unix(0).ok()?;
    let d = epoch.diff(t).ok()?;
    Some(i64::from(d.days) * 86_400 + i64::from(d.secs))
}

/// A CRL (base64 DER) checked: signed by `iaca`, unexpired, newer than
/// `served`, listing every serial of `revoke`; its PEM.
pub fn check_crl(
    crl_b64: &str,
    revoke: &[String],
    iaca: &X509,
    served: Option<&str>,
    now: OffsetDateTime,
) -> Result<String, CeremonyRefusal> {
    let bad = |why: &str| CeremonyRefusal::Crl(why.to_owned());
    let der = b64("crl", crl_b64).map_err(|e| CeremonyRefusal::Malformed(e.to_string()))?;
    let crl = X509Crl::from_der(&der).map_err(|_| bad("the CRL is not DER"))?;
    let key = iaca.public_key().map_err(|e| bad(&e.to_string()))?;
    if !crl.verify(&key).unwrap_or(false)
        || crl.issuer_name().to_der().ok() != iaca.subject_name().to_der().ok()
    {
        return Err(bad("the CRL is not signed by the IACA"));
    }
    let this_update = seconds(crl.last_update()).ok_or_else(|| bad("no thisUpdate"))?;
    let next_update = crl
        .next_update()
        .and_then(seconds)
        .ok_or_else(|| bad("no nextUpdate"))?;
    if next_update <= now.unix_timestamp() {
        return Err(bad("the CRL has expired already"));
    }
    let served = served
        .and_then(|pem| X509Crl::from_pem(pem.as_bytes()).ok())
        .and_then(|c| seconds(c.last_update()));
    if served.is_some_and(|s| this_update <= s) {
        return Err(bad(
            "the CRL is not newer than the one served (an old response replayed?)",
        ));
    }
    let listed: BTreeSet<String> = crl
        .get_revoked()
        .map(|r| {
            r.iter()
                .filter_map(|e| e.serial_number().to_bn().ok()?.to_hex_str().ok())
                .map(|h| h.to_string().to_ascii_uppercase())
                .collect()
        })
        .unwrap_or_default();
    if let Some(missing) = revoke
        .iter()
        .find(|s| !listed.contains(&s.to_ascii_uppercase()))
    {
        return Err(CeremonyRefusal::Crl(format!(
            "the CRL does not list serial {missing}, whose revocation officers ordered"
        )));
    }
    let pem = crl.to_pem().map_err(|e| bad(&e.to_string()))?;
    String::from_utf8(pem).map_err(|e| bad(&e.to_string()))
}
