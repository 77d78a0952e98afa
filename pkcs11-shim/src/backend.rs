//! The contract every backend fulfils: the [`KeyBackend`] trait, what it
//! returns ([`KeyInfo`], [`Health`], [`SessionCounts`]), the input limits it
//! enforces, and [`prove_possession`], which checks a key's public half
//! against its private half from outside the device.

use crate::algorithm::{Algorithm, KeyPurpose};
use crate::error::{Error, Result};
use crate::public_key::PublicKey;

/// Largest message [`KeyBackend::sign`] accepts. Dojang signs structures it
/// built (an MSO, a JWS signing input): a megabyte is far beyond any of them.
pub const MAX_SIGN_INPUT: usize = 1 << 20;

/// Largest input [`KeyBackend::hmac_sha256`] accepts (the TPM's buffer limit).
pub const MAX_HMAC_INPUT: usize = 1024;

/// A key in the device, as Dojang sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    /// The unique label the key was generated with.
    pub label: String,
    /// What the key is for.
    pub purpose: KeyPurpose,
    /// Its algorithm.
    pub algorithm: Algorithm,
    /// The public half (`None` for HMAC keys).
    pub public_key: Option<PublicKey>,
}

impl KeyInfo {
    /// The key's `kid` (RFC 7638 thumbprint), for signing keys.
    pub fn kid(&self) -> Option<String> {
        self.public_key.as_ref().map(PublicKey::kid)
    }
}

/// The backend's health, as readiness and metrics report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// Whether the device answered the probe.
    pub up: bool,
    /// `pkcs11` or `tpm`.
    pub backend: &'static str,
    /// A short human-readable state, e.g. the last device error while down.
    pub detail: String,
    /// Successful reconnections since start.
    pub recoveries: u64,
    /// Sessions in the pool and how many are idle (PKCS#11 only).
    pub sessions: Option<SessionCounts>,
}

/// Session pool occupancy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionCounts {
    /// Sessions the pool holds.
    pub total: usize,
    /// Sessions not lent out right now.
    pub idle: usize,
}

/// A key store in a device. Implementations are synchronous and thread-safe;
/// each call may block on the device.
pub trait KeyBackend: Send + Sync {
    /// `pkcs11` or `tpm`.
    fn kind(&self) -> &'static str;

    /// The algorithms this device can generate and use.
    fn algorithms(&self) -> Vec<Algorithm>;

    /// Generates a key for `purpose` inside the device, checks its attributes
    /// and returns it. Fails if `label` is taken.
    fn generate(&self, label: &str, purpose: KeyPurpose, algorithm: Algorithm) -> Result<KeyInfo>;

    /// Finds a key by label.
    fn find(&self, label: &str) -> Result<KeyInfo>;

    /// Every Dojang key in the device, sorted by label.
    fn list(&self) -> Result<Vec<KeyInfo>>;

    /// Signs `message` with the key `label`, which must have been made for
    /// `purpose` (else [`Error::WrongPurpose`]: one key never signs another
    /// purpose's objects, whatever a label mix-up asks); returns the raw
    /// signature (`r || s` for ECDSA). ECDSA messages are hashed in software
    /// with the algorithm's hash and the device signs the digest.
    fn sign(&self, label: &str, purpose: KeyPurpose, message: &[u8]) -> Result<Vec<u8>>;

    /// HMAC-SHA256 of `data` under the secret key `label`, which must have
    /// been made for `purpose` (else [`Error::WrongPurpose`]).
    fn hmac_sha256(&self, label: &str, purpose: KeyPurpose, data: &[u8]) -> Result<[u8; 32]>;

    /// Destroys the key `label` (private and public halves). Authorization is
    /// the caller's business (two-person rule); this only does it.
    fn destroy(&self, label: &str) -> Result<()>;

    /// Probes the device; reconnects first if it was lost (rate-limited).
    fn health(&self) -> Health;
}

/// Proves that the key `key.label` holds the private half of
/// `key.public_key` by signing a random challenge and verifying it outside
/// the device. Run before certifying a key or trusting it with a
/// certificate: public halves (PKCS#11 public objects, TPM blob files) can be
/// replaced by whoever can write to the token or the disk.
pub fn prove_possession(backend: &dyn KeyBackend, key: &KeyInfo) -> Result<()> {
    let Some(public) = &key.public_key else {
        return Ok(()); // secret keys have no public half to substitute
    };
    let mut challenge = [0u8; 32];
    openssl::rand::rand_bytes(&mut challenge).map_err(|e| Error::Encoding(e.to_string()))?;
    let signature = backend.sign(&key.label, key.purpose, &challenge)?;
    if public.verify(&challenge, &signature)? {
        Ok(())
    } else {
        Err(Error::KeyPolicy {
            label: key.label.clone(),
            attribute: "public key",
            actual: "does not verify the key's signature".into(),
            required: "the private key's own public half".into(),
        })
    }
}

/// Refuses a key made for another purpose than the caller signs for.
pub(crate) fn check_purpose(key: &KeyInfo, expected: KeyPurpose) -> Result<()> {
    if key.purpose == expected {
        Ok(())
    } else {
        Err(Error::WrongPurpose {
            label: key.label.clone(),
            actual: key.purpose.name(),
            expected: expected.name(),
        })
    }
}

pub(crate) fn check_sign_input(message: &[u8]) -> Result<()> {
    if message.is_empty() {
        return Err(Error::InvalidInput(
            "refusing to sign an empty message".into(),
        ));
    }
    if message.len() > MAX_SIGN_INPUT {
        return Err(Error::InvalidInput(format!(
            "message of {} bytes exceeds the {MAX_SIGN_INPUT}-byte signing limit",
            message.len()
        )));
    }
    Ok(())
}

pub(crate) fn check_hmac_input(data: &[u8]) -> Result<()> {
    if data.is_empty() {
        return Err(Error::InvalidInput("refusing to MAC empty data".into()));
    }
    if data.len() > MAX_HMAC_INPUT {
        return Err(Error::InvalidInput(format!(
            "data of {} bytes exceeds the {MAX_HMAC_INPUT}-byte HMAC limit",
            data.len()
        )));
    }
    Ok(())
}
