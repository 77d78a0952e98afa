//! What both verifiers share: trust anchors, the DS certificate check
//! (chain to the IACA at the verification time, Annex B profile), signature
//! algorithms pinned to the key, and the refusal reasons.

use openssl::stack::Stack;
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::verify::X509VerifyParam;
use openssl::x509::{X509, X509StoreContext};
use pkcs11_shim::{Algorithm, PublicKey};
use time::OffsetDateTime;

use crate::pki::profile;

/// What the verifier trusts.
#[derive(Debug, Clone)]
pub enum Trust {
    /// An IACA root certificate (DER): the DS certificate must chain to it.
    Iaca(Vec<u8>),
    /// One pinned DS certificate (DER), e.g. from a published trust list.
    DocumentSigner(Vec<u8>),
    /// An issuer public key (SD-JWT VC issuer metadata); no certificate.
    IssuerKey(PublicKey),
}

/// Why a credential was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// Not the structure the format requires.
    #[error("malformed credential: {0}")]
    Malformed(String),
    /// The algorithm is not allowed or does not match the key.
    #[error("algorithm refused: {0}")]
    Algorithm(String),
    /// The DS certificate is missing, untrusted or breaks the profile.
    #[error("document-signer certificate refused: {0}")]
    Certificate(String),
    /// The issuer's signature does not verify.
    #[error("the issuer signature does not verify")]
    Signature,
    /// A disclosed element does not match its signed digest.
    #[error("element {0} does not match its signed digest")]
    Digest(String),
    /// Outside the signature validity.
    #[error("not valid at the verification time: {0}")]
    Validity(String),
    /// Not the document type the verifier expects.
    #[error("unexpected document type {0:?}")]
    DocType(String),
}

pub(crate) fn malformed(what: impl Into<String>) -> VerifyError {
    VerifyError::Malformed(what.into())
}

/// Checks the DS certificate against the trust anchor at `now` and returns
/// its public key.
pub(crate) fn trusted_key(
    ds_der: Option<&[u8]>,
    trust: &Trust,
    now: OffsetDateTime,
) -> Result<PublicKey, VerifyError> {
    let cert_err = |m: String| VerifyError::Certificate(m);
    let ds_der = match (trust, ds_der) {
        (Trust::IssuerKey(key), _) => return Ok(key.clone()),
        (_, None) => return Err(cert_err("no certificate in the credential".into())),
        (_, Some(der)) => der,
    };
    let facts = match trust {
        Trust::Iaca(iaca_der) => {
            let iaca_facts = profile::check_iaca(iaca_der).map_err(|e| cert_err(e.to_string()))?;
            let facts = profile::check_ds(ds_der, Some(&iaca_facts))
                .map_err(|e| cert_err(e.to_string()))?;
            chain_verifies(ds_der, iaca_der, now)?;
            facts
        }
        Trust::DocumentSigner(pinned) => {
            if pinned.as_slice() != ds_der {
                return Err(cert_err(
                    "not the pinned document-signer certificate".into(),
                ));
            }
            profile::check_ds(ds_der, None).map_err(|e| cert_err(e.to_string()))?
        }
        Trust::IssuerKey(_) => unreachable!("returned above"),
    };
    if now < facts.not_before || now > facts.not_after {
        return Err(cert_err("outside its validity period".into()));
    }
    let key = X509::from_der(ds_der)
        .and_then(|c| c.public_key())
        .and_then(|k| k.public_key_to_der())
        .map_err(|e| cert_err(e.to_string()))?;
    PublicKey::from_spki_der(&key).map_err(|e| cert_err(e.to_string()))
}

pub(crate) fn chain_verifies(
    ds_der: &[u8],
    iaca_der: &[u8],
    now: OffsetDateTime,
) -> Result<(), VerifyError> {
    let err = |e: openssl::error::ErrorStack| VerifyError::Certificate(e.to_string());
    let iaca = X509::from_der(iaca_der).map_err(err)?;
    let ds = X509::from_der(ds_der).map_err(err)?;
    let mut store = X509StoreBuilder::new().map_err(err)?;
    store.add_cert(iaca).map_err(err)?;
    let mut param = X509VerifyParam::new().map_err(err)?;
    param.set_time(now.unix_timestamp());
    store.set_param(&param).map_err(err)?;
    let store = store.build();
    let chain = Stack::new().map_err(err)?;
    let mut ctx = X509StoreContext::new().map_err(err)?;
    let verified = ctx
        .init(&store, &ds, &chain, |c| {
            let ok = c.verify_cert()?;
            Ok(if ok {
                None
            } else {
                Some(c.error().to_string())
            })
        })
        .map_err(err)?;
    match verified {
        None => Ok(()),
        Some(reason) => Err(VerifyError::Certificate(format!(
            "does not chain to the IACA: {reason}"
        ))),
    }
}

/// Checks that a credential names the algorithm its key really uses.
pub(crate) fn check_algorithm(named: &str, key: &PublicKey) -> Result<(), VerifyError> {
    let expected = match key.algorithm() {
        Algorithm::Es256 => "ES256",
        Algorithm::Es384 => "ES384",
        Algorithm::EdDsa => "EdDSA",
        other => {
            return Err(VerifyError::Algorithm(format!(
                "{other} keys do not sign credentials"
            )));
        }
    };
    if named != expected {
        return Err(VerifyError::Algorithm(format!(
            "the credential says {named:?} but the issuer key is {expected}"
        )));
    }
    Ok(())
}

pub(crate) fn check_signature(
    key: &PublicKey,
    message: &[u8],
    signature: &[u8],
) -> Result<(), VerifyError> {
    match key.verify(message, signature) {
        Ok(true) => Ok(()),
        _ => Err(VerifyError::Signature),
    }
}

/// Checks `valid_from <= now <= valid_until`. (That a signature does not
/// outlive its DS certificate is an issuance rule, enforced when signing;
/// verifiers check the certificate at the verification time instead, as
/// ISO 18013-5 does: the standard's own Annex D example has an MSO
/// validUntil hours past its DS certificate's notAfter.)
pub(crate) fn check_validity(
    valid_from: OffsetDateTime,
    valid_until: OffsetDateTime,
    now: OffsetDateTime,
) -> Result<(), VerifyError> {
    if now < valid_from {
        return Err(VerifyError::Validity(format!(
            "not valid before {valid_from}"
        )));
    }
    if now > valid_until {
        return Err(VerifyError::Validity(format!("expired at {valid_until}")));
    }
    Ok(())
}
