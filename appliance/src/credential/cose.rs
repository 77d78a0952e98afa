//! The COSE structures of an mdoc: the holder's device key as a COSE_Key,
//! the issuerAuth COSE_Sign1's protected header `{1: alg}` the issuer writes,
//! and the algorithm and x5chain certificate a verifier reads back.

use ciborium::Value;
use coset::{CoseSign1, Label};
use pkcs11_shim::{Algorithm, PublicKey};

use super::CredentialError;
use super::algorithm::SignatureAlgorithm;
use super::cbor::Writer;
use super::verify::VerifyError;

/// COSE header label of x5chain (RFC 9360).
pub(crate) const X5CHAIN: u64 = 33;

/// The holder's device key as a COSE_Key (RFC 9053).
pub(crate) fn write_cose_key(w: &mut Writer, key: &PublicKey) -> Result<(), CredentialError> {
    let raw = key.raw();
    match key.algorithm() {
        Algorithm::Es256 | Algorithm::Es384 => {
            let crv = if key.algorithm() == Algorithm::Es256 {
                1
            } else {
                2
            };
            // `raw` is 04 || X || Y (PublicKey checked it): X and Y are
            // the two halves after the 04.
            let Some((0x04, coordinates)) = raw.split_first() else {
                return Err(CredentialError::Encoding(
                    "device key is not an uncompressed EC point".into(),
                ));
            };
            let (x, y) = coordinates.split_at(coordinates.len() / 2);
            // kty: EC2, crv, x, y
            let _ = w
                .map(4)
                .uint(1)
                .uint(2)
                .negative(0)
                .uint(crv)
                .negative(1)
                .bytes(x)
                .negative(2)
                .bytes(y);
        }
        Algorithm::EdDsa => {
            // kty: OKP, crv: Ed25519, x
            let _ = w
                .map(3)
                .uint(1)
                .uint(1)
                .negative(0)
                .uint(6)
                .negative(1)
                .bytes(raw);
        }
        other => {
            return Err(CredentialError::Invalid(format!(
                "{other} is not a device key type"
            )));
        }
    }
    Ok(())
}

/// The protected header `{1: alg}`, encoded.
pub(crate) fn protected_header(algorithm: SignatureAlgorithm) -> Vec<u8> {
    let mut w = Writer::with_capacity(4);
    let _ = w.map(1).uint(1);
    let _ = match algorithm {
        SignatureAlgorithm::Es256 => w.negative(6),  // -7
        SignatureAlgorithm::Es384 => w.negative(34), // -35
        SignatureAlgorithm::EdDsa => w.negative(7),  // -8
    };
    w.bytes
}

/// The JOSE name of the algorithm, which must be in the protected header.
pub(crate) fn cose_algorithm(cose: &CoseSign1) -> Result<&'static str, VerifyError> {
    let alg = match &cose.protected.header.alg {
        Some(coset::RegisteredLabelWithPrivate::Assigned(a)) => *a,
        _ => {
            return Err(VerifyError::Algorithm(
                "no alg in the protected header".into(),
            ));
        }
    };
    match alg {
        coset::iana::Algorithm::ES256 => Ok("ES256"),
        coset::iana::Algorithm::ES384 => Ok("ES384"),
        coset::iana::Algorithm::EdDSA => Ok("EdDSA"),
        other => Err(VerifyError::Algorithm(format!(
            "COSE algorithm {other:?} is not accepted"
        ))),
    }
}

/// The DS certificate: x5chain (33), a certificate or a chain starting with it.
pub(crate) fn x5chain_certificate(cose: &CoseSign1) -> Option<&[u8]> {
    let x5chain = cose
        .unprotected
        .rest
        .iter()
        .chain(&cose.protected.header.rest)
        .find(|(label, _)| *label == Label::Int(X5CHAIN as i64))
        .map(|(_, v)| v);
    match x5chain {
        Some(Value::Bytes(der)) => Some(der.as_slice()),
        Some(Value::Array(chain)) => chain.first().and_then(Value::as_bytes).map(Vec::as_slice),
        _ => None,
    }
}
