//! Revocation status as an IETF Token Status List: each credential has an
//! index in a list of 2-bit statuses (0 valid, 1 invalid, 2 suspended),
//! published as a signed `statuslist+jwt` whose `status_list.lst` is the
//! zlib-compressed, base64url-encoded bit array (index 0 in the least
//! significant bits of the first byte).
//!
//! The token is signed by a dedicated status-list key in the HSM, never a
//! document-signer key.

use std::io::{Read, Write};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use flate2::Compression;
use flate2::read::ZlibDecoder;
use flate2::write::ZlibEncoder;
use pkcs11_shim::{KeyBackend, KeyPurpose, PublicKey};
use serde_json::{Value, json};

use crate::credential::SignatureAlgorithm;
use crate::store::CredentialState;

/// Bits per status.
pub const BITS: u8 = 2;
/// Largest decompressed list a verifier accepts (hostile input).
const MAX_LIST_BYTES: u64 = 16 << 20;

/// A status-list operation that failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StatusError {
    /// The key layer failed, or the key is not a status-list key.
    #[error(transparent)]
    Key(#[from] pkcs11_shim::Error),
    /// The key may not sign status lists.
    #[error("key {0:?} is not a status-list key")]
    WrongPurpose(String),
    /// Building or reading the token failed.
    #[error("status list token: {0}")]
    Token(String),
}

/// A list of 2-bit statuses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusList {
    packed: Vec<u8>,
}

impl StatusList {
    /// A list of `size` entries, all valid, with `entries` set.
    pub fn from_entries(
        size: u64,
        entries: &[(u64, CredentialState)],
    ) -> Result<Self, StatusError> {
        let bytes = size.div_ceil(4);
        if bytes > MAX_LIST_BYTES {
            return Err(StatusError::Token(format!(
                "a list of {size} entries is too large"
            )));
        }
        let mut packed = vec![0u8; bytes as usize];
        for (index, state) in entries {
            let byte = packed
                .get_mut((index / 4) as usize)
                .filter(|_| *index < size);
            let Some(byte) = byte else {
                return Err(StatusError::Token(format!(
                    "index {index} is outside a list of {size}"
                )));
            };
            let shift = (index % 4) * 2;
            *byte &= !(0b11 << shift);
            *byte |= state.status_value() << shift;
        }
        Ok(StatusList { packed })
    }

    /// The status at `index` (0 valid, 1 invalid, 2 suspended), if in range.
    pub fn get(&self, index: u64) -> Option<u8> {
        let byte = self.packed.get((index / 4) as usize)?;
        Some((byte >> ((index % 4) * 2)) & 0b11)
    }

    /// Number of entries.
    pub fn len(&self) -> u64 {
        self.packed.len() as u64 * 4
    }

    /// Whether the list has no entries.
    pub fn is_empty(&self) -> bool {
        self.packed.is_empty()
    }

    /// The zlib-compressed bytes (the CWT form's `lst`).
    pub fn compressed(&self) -> Result<Vec<u8>, StatusError> {
        let mut z = ZlibEncoder::new(Vec::new(), Compression::best());
        z.write_all(&self.packed)
            .map_err(|e| StatusError::Token(e.to_string()))?;
        z.finish().map_err(|e| StatusError::Token(e.to_string()))
    }

    /// `lst`: base64url of the zlib-compressed bytes (the JWT form's).
    pub fn encode(&self) -> Result<String, StatusError> {
        Ok(B64URL.encode(self.compressed()?))
    }

    /// Parses `lst`.
    pub fn decode(lst: &str) -> Result<Self, StatusError> {
        let compressed = B64URL
            .decode(lst)
            .map_err(|_| StatusError::Token("lst is not base64url".into()))?;
        Self::from_compressed(&compressed)
    }

    /// Reads zlib-compressed bytes (bounded: hostile input).
    pub fn from_compressed(compressed: &[u8]) -> Result<Self, StatusError> {
        let mut packed = Vec::new();
        let _ = ZlibDecoder::new(compressed)
            .take(MAX_LIST_BYTES + 1)
            .read_to_end(&mut packed)
            .map_err(|e| StatusError::Token(format!("lst is not zlib: {e}")))?;
        if packed.len() as u64 > MAX_LIST_BYTES {
            return Err(StatusError::Token(
                "the list decompresses beyond the limit".into(),
            ));
        }
        Ok(StatusList { packed })
    }
}

/// What a published token says.
#[derive(Debug, Clone)]
pub struct StatusListToken {
    /// The list's URI (`sub`).
    pub uri: String,
    /// Issued at (unix seconds).
    pub iat: i64,
    /// Expires (unix seconds).
    pub exp: i64,
    /// Seconds a verifier may cache it.
    pub ttl: u64,
    /// The statuses.
    pub list: StatusList,
    /// The signing key's certificate from the IACA (`x5c` / `x5chain`),
    /// if the token carries one (DER).
    pub certificate: Option<Vec<u8>>,
}

/// What a signed status-list token says besides the list.
#[derive(Debug, Clone)]
pub struct TokenFields<'a> {
    /// The list's URI (`sub`).
    pub uri: &'a str,
    /// Where the status-list keys are published (`jku`): never the
    /// credential issuer's JWKS, so no status-list key can pass for a
    /// document signer.
    pub keys_uri: &'a str,
    /// Issued at (unix seconds).
    pub iat: i64,
    /// Expires (unix seconds).
    pub exp: i64,
    /// Seconds a verifier may cache it.
    pub ttl: u64,
    /// The signing key's certificate from the IACA (DER), carried as
    /// `x5c` / `x5chain` so a verifier trusting only the IACA can
    /// authenticate the token (the IACA itself is the verifier's anchor,
    /// never sent).
    pub certificate: Option<&'a [u8]>,
}

/// Signs `list` as a `statuslist+jwt` with the status-list key `label`.
pub fn sign_token(
    backend: &dyn KeyBackend,
    label: &str,
    list: &StatusList,
    fields: &TokenFields<'_>,
) -> Result<String, StatusError> {
    let key = backend.find(label)?;
    if key.purpose != KeyPurpose::StatusList {
        return Err(StatusError::WrongPurpose(label.to_owned()));
    }
    let algorithm =
        SignatureAlgorithm::of_key(key.algorithm).map_err(|e| StatusError::Token(e.to_string()))?;
    let kid = key.kid().unwrap_or_default();
    let mut header = json!({
        "alg": algorithm.jose(),
        "typ": "statuslist+jwt",
        "kid": kid,
        "jku": fields.keys_uri,
    });
    if let (Some(der), Some(members)) = (fields.certificate, header.as_object_mut()) {
        let _ = members.insert("x5c".into(), json!([B64.encode(der)]));
    }
    let payload = json!({
        "sub": fields.uri,
        "iat": fields.iat,
        "exp": fields.exp,
        "ttl": fields.ttl,
        "status_list": {"bits": BITS, "lst": list.encode()?},
    });
    let input = format!(
        "{}.{}",
        B64URL.encode(header.to_string()),
        B64URL.encode(payload.to_string())
    );
    let signature = backend.sign(label, pkcs11_shim::KeyPurpose::StatusList, input.as_bytes())?;
    Ok(format!("{input}.{}", B64URL.encode(signature)))
}

/// Verifies a `statuslist+jwt` with the status-list key's public half and
/// returns what it says (expiry is the caller's to judge against its clock).
pub fn verify_token(token: &str, key: &PublicKey) -> Result<StatusListToken, StatusError> {
    let bad = |m: &str| StatusError::Token(m.to_owned());
    let mut parts = token.trim().split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("not header.payload.signature"));
    };
    let json_of = |part: &str| -> Result<Value, StatusError> {
        let bytes = B64URL.decode(part).map_err(|_| bad("not base64url"))?;
        serde_json::from_slice(&bytes).map_err(|_| bad("not JSON"))
    };
    let header = json_of(h)?;
    if header.get("typ").and_then(Value::as_str) != Some("statuslist+jwt") {
        return Err(bad("typ is not statuslist+jwt"));
    }
    let expected = match key.algorithm() {
        pkcs11_shim::Algorithm::Es256 => "ES256",
        pkcs11_shim::Algorithm::Es384 => "ES384",
        pkcs11_shim::Algorithm::EdDsa => "EdDSA",
        _ => return Err(bad("not a signing key")),
    };
    if header.get("alg").and_then(Value::as_str) != Some(expected) {
        return Err(bad("alg does not match the key"));
    }
    let signature = B64URL
        .decode(s)
        .map_err(|_| bad("signature is not base64url"))?;
    if !key
        .verify(format!("{h}.{p}").as_bytes(), &signature)
        .unwrap_or(false)
    {
        return Err(bad("the signature does not verify"));
    }
    let payload = json_of(p)?;
    let field = |pointer: &str| payload.pointer(pointer);
    if field("/status_list/bits").and_then(Value::as_u64) != Some(u64::from(BITS)) {
        return Err(bad("bits is not 2"));
    }
    let lst = field("/status_list/lst")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("no lst"))?;
    Ok(StatusListToken {
        uri: field("/sub")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("no sub"))?
            .to_owned(),
        iat: field("/iat")
            .and_then(Value::as_i64)
            .ok_or_else(|| bad("no iat"))?,
        exp: field("/exp")
            .and_then(Value::as_i64)
            .ok_or_else(|| bad("no exp"))?,
        ttl: field("/ttl").and_then(Value::as_u64).unwrap_or(0),
        list: StatusList::decode(lst)?,
        certificate: header
            .pointer("/x5c/0")
            .and_then(Value::as_str)
            .map(|c| B64.decode(c).map_err(|_| bad("x5c is not base64")))
            .transpose()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_pack_two_bits_least_significant_first() {
        let list = StatusList::from_entries(
            8,
            &[
                (0, CredentialState::Revoked),
                (1, CredentialState::Suspended),
                (3, CredentialState::Superseded),
                (5, CredentialState::Active),
            ],
        )
        .unwrap();
        // Index 0 → bits 0-1 (01), 1 → bits 2-3 (10), 3 → bits 6-7 (01).
        assert_eq!(list.packed, vec![0b0100_1001, 0]);
        assert_eq!(
            (list.get(0), list.get(1), list.get(2), list.get(3)),
            (Some(1), Some(2), Some(0), Some(1))
        );
        assert_eq!(list.get(8), None);
        assert_eq!(StatusList::decode(&list.encode().unwrap()).unwrap(), list);
    }

    #[test]
    fn the_draft_example_decodes() {
        // draft-ietf-oauth-status-list §4.1: bits 1 statuses 1,0,0,1,1,1,0,1 | 1,1,0,0,0,1,0,1
        // encode to "eNrbuRgAAhcBXQ"; with 2 bits our reader sees the same bytes.
        let list = StatusList::decode("eNrbuRgAAhcBXQ").unwrap();
        assert_eq!(list.packed, vec![0xb9, 0xa3]);
    }

    #[test]
    fn out_of_range_and_hostile_input_are_refused() {
        assert!(StatusList::from_entries(4, &[(4, CredentialState::Revoked)]).is_err());
        assert!(StatusList::decode("not base64!").is_err());
        assert!(StatusList::decode("AAAA").is_err());
        // 32 MiB of zeros compress to a few KiB: refused after the limit.
        let mut z = ZlibEncoder::new(Vec::new(), Compression::best());
        z.write_all(&vec![0u8; 32 << 20]).unwrap();
        let bomb = B64URL.encode(z.finish().unwrap());
        assert!(StatusList::decode(&bomb).is_err());
    }
}
