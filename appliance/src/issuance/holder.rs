//! The holder as the registry may know them: a pseudonym from one HMAC in
//! the HSM of the resident number, and a MAC of the document's claims under
//! a secret from the same HMAC that the registry never stores.

use std::fmt;

use crate::credential::claims::ResidentCardClaims;
use crate::refusal::Refusal;
use crate::store::Pseudonym;

/// What one HMAC in the HSM of a resident number gives: the holder's
/// pseudonym, which the registry stores, and a secret it never stores,
/// which keys the MAC of the holder's claims. Without the HSM key neither
/// can be linked to a number, even by trying every possible number; without
/// the number (and the HSM) the claims MAC cannot be recomputed, so the
/// stored MAC says nothing about names or addresses.
pub struct HolderSecret {
    /// SHA-256 of the HMAC output, domain-separated: what is stored.
    pub pseudonym: Pseudonym,
    secret: [u8; 32],
}

impl fmt::Debug for HolderSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HolderSecret({:?}, <secret>)", self.pseudonym)
    }
}

impl Drop for HolderSecret {
    fn drop(&mut self) {
        self.secret.fill(0);
    }
}

impl HolderSecret {
    /// HMAC-SHA256 of `claims` under this holder's secret.
    // The one software HMAC key: the per-holder secret the HSM derived, zeroed on drop.
    #[allow(clippy::disallowed_methods)]
    pub fn claims_mac(&self, claims: &[u8]) -> Option<[u8; 32]> {
        pkcs11_shim::digest::hmac_sha256(&self.secret, claims)
    }
}

/// The holder's pseudonym and claims secret from the 13 digits of the
/// resident number, with the pseudonym key `label` in the HSM: one HSM call.
// The one place a resident number meets the HSM pseudonym key.
#[allow(clippy::disallowed_methods)]
pub fn pseudonym(
    backend: &dyn pkcs11_shim::KeyBackend,
    label: &str,
    number: &dojang_policies::resident_number::ResidentNumber,
) -> Result<HolderSecret, pkcs11_shim::Error> {
    let secret = backend.hmac_sha256(label, pkcs11_shim::KeyPurpose::Pseudonym, number.digits())?;
    let mut input = b"dojang-pseudonym-v1\0".to_vec();
    input.extend_from_slice(&secret);
    Ok(HolderSecret {
        pseudonym: Pseudonym(pkcs11_shim::digest::sha256(&input)),
        secret,
    })
}

/// The pseudonym key's check value (hex, 8 bytes): from its HMAC of a
/// fixed message that is no resident number, so it tells nothing of any
/// holder's pseudonym. Two tokens give the same value only if they hold the
/// same key: the check that a backup or clone of the key is the key.
// The pseudonym key, never on a resident number here.
#[allow(clippy::disallowed_methods)]
pub fn pseudonym_key_check(
    backend: &dyn pkcs11_shim::KeyBackend,
    label: &str,
) -> Result<String, pkcs11_shim::Error> {
    let mac = backend.hmac_sha256(
        label,
        pkcs11_shim::KeyPurpose::Pseudonym,
        b"dojang pseudonym key check value, v1",
    )?;
    let mut input = b"dojang-key-check-v1\0".to_vec();
    input.extend_from_slice(&mac);
    let digest = pkcs11_shim::digest::sha256(&input);
    Ok(crate::keys::view::hex(digest.get(..8).unwrap_or_default()))
}

/// The MAC of what makes a document the same document (the holder's names,
/// birth date, address and portrait), under the holder's secret: the
/// registry keeps it so a refresh can prove it re-signs the same claims.
pub(super) fn claims_mac(
    secret: &HolderSecret,
    claims: &ResidentCardClaims,
) -> Result<[u8; 32], Refusal> {
    let mut input = b"dojang-claims-v1\0".to_vec();
    let portrait = claims
        .portrait
        .as_deref()
        .map(pkcs11_shim::digest::sha256)
        .unwrap_or_default();
    let birth = claims.birth_date.to_string();
    for field in [
        claims.family_name.as_bytes(),
        claims.given_name.as_bytes(),
        birth.as_bytes(),
        claims.address.as_bytes(),
        &portrait,
    ] {
        input.extend_from_slice(&(field.len() as u32).to_be_bytes());
        input.extend_from_slice(field);
    }
    secret.claims_mac(&input).ok_or_else(|| {
        tracing::error!("computing a claims MAC: HMAC refused the key");
        Refusal::internal()
    })
}
