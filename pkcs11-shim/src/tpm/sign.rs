//! What TPM signing needs around the command: the digest, hashed in software
//! with the key's hash, the null hashcheck ticket (the digest was not made
//! by the TPM), and the raw `r || s` signature from the TPM's ECDSA one.

use tss_esapi::constants::tss::{TPM2_RH_NULL, TPM2_ST_HASHCHECK};
use tss_esapi::structures::{Digest, HashcheckTicket, Signature};
use tss_esapi::tss2_esys::TPMT_TK_HASHCHECK;

use super::classify::wrap;
use crate::algorithm::Algorithm;
use crate::error::{Error, Result};

/// The digest the TPM signs for `message` under the key `label`, refused
/// if the key does not sign.
pub(crate) fn digest_of(label: &str, algorithm: Algorithm, message: &[u8]) -> Result<Digest> {
    let digest = match algorithm {
        Algorithm::Es256 => crate::digest::sha256(message).to_vec(),
        Algorithm::Es384 => crate::digest::sha384(message).to_vec(),
        other => {
            return Err(Error::WrongKeyType {
                label: label.to_owned(),
                actual: other.to_string(),
                expected: "signing".into(),
            });
        }
    };
    Digest::try_from(digest).map_err(wrap("digest"))
}

/// The ticket for a digest the TPM did not compute.
pub(crate) fn null_ticket() -> Result<HashcheckTicket> {
    TPMT_TK_HASHCHECK {
        tag: TPM2_ST_HASHCHECK,
        hierarchy: TPM2_RH_NULL,
        digest: Default::default(),
    }
    .try_into()
    .map_err(wrap("hashcheck ticket"))
}

/// `r || s`, each padded to half the algorithm's signature length.
pub(crate) fn raw_signature(algorithm: Algorithm, signature: Signature) -> Result<Vec<u8>> {
    let half = algorithm.signature_len() / 2;
    let Signature::EcDsa(sig) = signature else {
        return Err(Error::Encoding("TPM returned a non-ECDSA signature".into()));
    };
    let mut raw = Vec::with_capacity(half * 2);
    for part in [sig.signature_r().value(), sig.signature_s().value()] {
        if part.len() > half {
            return Err(Error::Encoding("TPM signature component too long".into()));
        }
        raw.extend(std::iter::repeat_n(0, half - part.len()));
        raw.extend_from_slice(part);
    }
    Ok(raw)
}
