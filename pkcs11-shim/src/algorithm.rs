//! Algorithms and key purposes the shim knows, and the signature encodings.
//!
//! Signatures leave the shim as raw `r || s` (what COSE and JWS carry);
//! [`ecdsa_raw_to_der`] gives the DER form X.509 and OpenSSL want.

use std::fmt;

use openssl::bn::BigNum;
use openssl::ecdsa::EcdsaSig;
use openssl::hash::MessageDigest;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A key algorithm, named as JOSE names its signature algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Algorithm {
    /// ECDSA on P-256 with SHA-256.
    #[serde(rename = "ES256")]
    Es256,
    /// ECDSA on P-384 with SHA-384.
    #[serde(rename = "ES384")]
    Es384,
    /// Ed25519 (PureEdDSA).
    #[serde(rename = "EdDSA")]
    EdDsa,
    /// HMAC-SHA256 under a generic secret key (pseudonyms; never a signature).
    #[serde(rename = "HS256")]
    HmacSha256,
}

impl Algorithm {
    /// Every algorithm, in a stable order.
    pub const ALL: [Algorithm; 4] = [
        Algorithm::Es256,
        Algorithm::Es384,
        Algorithm::EdDsa,
        Algorithm::HmacSha256,
    ];

    /// The JOSE name (`ES256`, `ES384`, `EdDSA`, `HS256`).
    pub fn jose_name(self) -> &'static str {
        match self {
            Algorithm::Es256 => "ES256",
            Algorithm::Es384 => "ES384",
            Algorithm::EdDsa => "EdDSA",
            Algorithm::HmacSha256 => "HS256",
        }
    }

    /// Parses a JOSE name, case-sensitively as JOSE does.
    pub fn from_jose_name(name: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|alg| alg.jose_name() == name)
            .ok_or_else(|| {
                Error::InvalidInput(format!(
                    "unknown algorithm {name:?} (known: ES256, ES384, EdDSA, HS256)"
                ))
            })
    }

    /// Whether this is an asymmetric signature algorithm (has a public key).
    pub fn is_signature(self) -> bool {
        !matches!(self, Algorithm::HmacSha256)
    }

    /// The digest hashed in software before a raw-ECDSA token signs it.
    pub(crate) fn prehash(self) -> Option<MessageDigest> {
        match self {
            Algorithm::Es256 => Some(MessageDigest::sha256()),
            Algorithm::Es384 => Some(MessageDigest::sha384()),
            Algorithm::EdDsa | Algorithm::HmacSha256 => None,
        }
    }

    /// Length in bytes of a raw signature (`r || s`, or the Ed25519 signature).
    pub fn signature_len(self) -> usize {
        match self {
            Algorithm::Es256 | Algorithm::EdDsa => 64,
            Algorithm::Es384 => 96,
            Algorithm::HmacSha256 => 32,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.jose_name())
    }
}

/// What a key is for. A key serves one purpose for its whole life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum KeyPurpose {
    /// IACA root: signs document-signer certificates and CRLs.
    Iaca,
    /// Document signer: signs credentials (MSO, SD-JWT VC).
    DocumentSigner,
    /// Signs status-list tokens.
    StatusList,
    /// Signs audit-log checkpoints.
    Audit,
    /// HMAC key that turns resident numbers into holder pseudonyms.
    Pseudonym,
    /// HMAC key that derives the keys sealing stored idempotent responses
    /// (kept apart from the pseudonym key: one use per key).
    ResponseSeal,
    /// A security officer's approval key, in the officer's own token:
    /// signs canonical proposals (never held by the appliance).
    OfficerApproval,
    /// The appliance's TLS server key: signs handshakes of the mTLS API,
    /// so a copied key file cannot impersonate the appliance.
    TlsServer,
}

impl KeyPurpose {
    /// Every purpose, in a stable order.
    pub const ALL: [KeyPurpose; 8] = [
        KeyPurpose::Iaca,
        KeyPurpose::DocumentSigner,
        KeyPurpose::StatusList,
        KeyPurpose::Audit,
        KeyPurpose::Pseudonym,
        KeyPurpose::ResponseSeal,
        KeyPurpose::OfficerApproval,
        KeyPurpose::TlsServer,
    ];

    /// The stable name (`iaca`, `document-signer`, …).
    pub fn name(self) -> &'static str {
        match self {
            KeyPurpose::Iaca => "iaca",
            KeyPurpose::DocumentSigner => "document-signer",
            KeyPurpose::StatusList => "status-list",
            KeyPurpose::Audit => "audit",
            KeyPurpose::Pseudonym => "pseudonym",
            KeyPurpose::ResponseSeal => "response-seal",
            KeyPurpose::OfficerApproval => "officer-approval",
            KeyPurpose::TlsServer => "tls-server",
        }
    }

    /// Parses a stable name.
    pub fn from_name(name: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|p| p.name() == name)
            .ok_or_else(|| {
                Error::InvalidInput(format!(
                    "unknown key purpose {name:?} (known: iaca, document-signer, status-list, audit, pseudonym, response-seal, officer-approval, tls-server)"
                ))
            })
    }

    /// One byte stored with the key so its purpose survives restarts.
    pub(crate) fn code(self) -> u8 {
        match self {
            KeyPurpose::Iaca => 1,
            KeyPurpose::DocumentSigner => 2,
            KeyPurpose::StatusList => 3,
            KeyPurpose::Audit => 4,
            KeyPurpose::Pseudonym => 5,
            KeyPurpose::ResponseSeal => 6,
            KeyPurpose::OfficerApproval => 7,
            KeyPurpose::TlsServer => 8,
        }
    }

    pub(crate) fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.code() == code)
    }

    /// Checks that `algorithm` fits this purpose: pseudonym and response-seal
    /// keys are HMAC, the rest sign.
    pub fn check_algorithm(self, algorithm: Algorithm) -> Result<()> {
        let fits = match self {
            KeyPurpose::Pseudonym | KeyPurpose::ResponseSeal => algorithm == Algorithm::HmacSha256,
            _ => algorithm.is_signature(),
        };
        if fits {
            Ok(())
        } else {
            Err(Error::InvalidInput(format!(
                "a {} key cannot use {algorithm}",
                self.name()
            )))
        }
    }
}

impl fmt::Display for KeyPurpose {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Converts a raw ECDSA signature (`r || s`, each half the length) to DER.
pub fn ecdsa_raw_to_der(raw: &[u8]) -> Result<Vec<u8>> {
    if raw.is_empty() || raw.len() % 2 != 0 || raw.len() > 132 {
        return Err(Error::InvalidInput(format!(
            "a raw ECDSA signature has two equal halves; got {} bytes",
            raw.len()
        )));
    }
    let (r, s) = raw.split_at(raw.len() / 2);
    let to_bn = |half: &[u8]| BigNum::from_slice(half).map_err(|e| Error::Encoding(e.to_string()));
    let sig = EcdsaSig::from_private_components(to_bn(r)?, to_bn(s)?)
        .map_err(|e| Error::Encoding(e.to_string()))?;
    sig.to_der().map_err(|e| Error::Encoding(e.to_string()))
}

/// Converts a DER ECDSA signature to raw `r || s` with halves of `half_len` bytes.
pub fn ecdsa_der_to_raw(der: &[u8], half_len: usize) -> Result<Vec<u8>> {
    let sig = EcdsaSig::from_der(der).map_err(|e| Error::Encoding(e.to_string()))?;
    let mut raw = Vec::with_capacity(half_len * 2);
    for half in [sig.r(), sig.s()] {
        let bytes = half
            .to_vec_padded(half_len as i32)
            .map_err(|e| Error::Encoding(e.to_string()))?;
        raw.extend_from_slice(&bytes);
    }
    Ok(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jose_names_round_trip() {
        for alg in Algorithm::ALL {
            assert_eq!(Algorithm::from_jose_name(alg.jose_name()).unwrap(), alg);
        }
        assert!(Algorithm::from_jose_name("none").is_err());
        assert!(Algorithm::from_jose_name("es256").is_err());
    }

    #[test]
    fn purposes_round_trip_by_name_and_code() {
        for p in KeyPurpose::ALL {
            assert_eq!(KeyPurpose::from_name(p.name()).unwrap(), p);
            assert_eq!(KeyPurpose::from_code(p.code()), Some(p));
        }
        assert_eq!(KeyPurpose::from_code(0), None);
    }

    #[test]
    fn purpose_algorithm_pairs_are_checked() {
        assert!(
            KeyPurpose::Pseudonym
                .check_algorithm(Algorithm::HmacSha256)
                .is_ok()
        );
        assert!(
            KeyPurpose::Pseudonym
                .check_algorithm(Algorithm::Es256)
                .is_err()
        );
        assert!(
            KeyPurpose::DocumentSigner
                .check_algorithm(Algorithm::HmacSha256)
                .is_err()
        );
        assert!(
            KeyPurpose::DocumentSigner
                .check_algorithm(Algorithm::EdDsa)
                .is_ok()
        );
    }

    #[test]
    fn der_conversion_round_trips_with_leading_zeros() {
        let mut raw = vec![0u8; 64];
        raw[1] = 0x80; // r with a leading zero byte and a high bit after it
        raw[32] = 0x01;
        raw[63] = 0x7f;
        let der = ecdsa_raw_to_der(&raw).unwrap();
        assert_eq!(ecdsa_der_to_raw(&der, 32).unwrap(), raw);
    }

    #[test]
    fn der_conversion_refuses_odd_lengths() {
        assert!(ecdsa_raw_to_der(&[1, 2, 3]).is_err());
        assert!(ecdsa_raw_to_der(&[]).is_err());
    }
}
