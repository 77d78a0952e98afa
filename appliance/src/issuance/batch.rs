//! Batch issuance (OpenID4VCI): one document in several copies, each bound
//! to its own phone key and status position, so that a verifier cannot
//! link two presentations by the key or the status entry. The policy
//! decides once, for the holder and the first key; the copies commit in the
//! same transaction as the first credential, each with its own audit entry,
//! and change state with it.

use serde_json::Value;
use time::OffsetDateTime;

use super::issuer::Issuer;
use super::request::{Validated, device_public_key};
use super::response::{CopyOut, StatusOwned};
use super::signed::Signed;
use crate::refusal::{Answer, Refusal};
use crate::store::{BatchCopy, NewCredential};

/// Copies one issuance may carry at most (the wallet listener's
/// `batch_size` is bounded by it too).
pub const MAX_BATCH: usize = 10;

/// The phone keys of a request: its own, then the copies', all distinct.
pub(super) fn phone_keys(
    v: &Validated,
    copies: &[Value],
) -> Result<Vec<pkcs11_shim::PublicKey>, Refusal> {
    let first = v.device.clone().ok_or_else(Refusal::internal)?;
    if copies.len() >= MAX_BATCH {
        return Err(Refusal::bad_request(
            "malformed_request",
            format!("a batch has at most {MAX_BATCH} credentials"),
        ));
    }
    let mut keys = vec![first];
    for jwk in copies {
        let key = device_public_key(jwk)?;
        if keys
            .iter()
            .any(|k| k.jwk().thumbprint() == key.jwk().thumbprint())
        {
            return Err(Refusal::bad_request(
                "invalid_device_key",
                "each credential of a batch needs a phone key of its own",
            )
            .with_rule("device_key.distinct"));
        }
        keys.push(key);
    }
    Ok(keys)
}

/// The copies as the response lists them.
pub(super) fn copies_out(copies: &[Signed]) -> Vec<CopyOut> {
    copies
        .iter()
        .map(|c| CopyOut {
            id: c.id.clone(),
            credential: c.credential.clone(),
            status: StatusOwned {
                uri: c.status.uri.clone(),
                idx: c.status.idx,
            },
        })
        .collect()
}

/// The copies as the registry commits them.
pub(super) fn batch_copies(
    copies: &[Signed],
    row: impl Fn(&Signed) -> NewCredential,
) -> Vec<BatchCopy> {
    copies
        .iter()
        .map(|c| BatchCopy {
            credential: row(c),
            payload_sha256: pkcs11_shim::digest::sha256(c.credential.as_bytes()),
        })
        .collect()
}

impl Issuer {
    /// An issuance whose credential comes in copies: the request's phone
    /// key first, then one copy per key of `copies` (JWKs, each proved by
    /// the wallet); the answer lists the copies after the first.
    pub fn issue_batch(
        &self,
        request_id: &str,
        client: &crate::node::Caller,
        (body, copies): (&[u8], &[Value]),
        queued: std::time::Instant,
        now: OffsetDateTime,
    ) -> Answer {
        self.issue_inner(request_id, client, (body, None, copies), queued, now)
    }
}
