//! What the registry's keys give the listeners: who signs now (DS,
//! status-list and audit keys by activation time), what verifiers fetch
//! (JWKS, DS certificates, the IACA and its CRL), and why a key that
//! should sign cannot. Built by the key manager, swapped whole.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use openssl::x509::X509;
use pkcs11_shim::PublicKey;
use serde_json::json;
use time::OffsetDateTime;

use crate::audit::checkpoint::NoteKey;
use crate::credential::DocumentSigner;
use crate::pki::profile::CertFacts;
use crate::store::StoredKey;

/// A DS key that signs from `from` (its activation time).
pub struct ScheduledSigner {
    /// Activation time.
    pub from: OffsetDateTime,
    /// The signer.
    pub signer: Arc<DocumentSigner<'static>>,
}

/// What the pool holds, for readiness and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolStatus {
    /// Whether the IACA is offline (else there is no pool).
    pub offline: bool,
    /// Certified spares for scheduled rotations.
    pub certified: usize,
    /// Spares waiting for a ceremony.
    pub uncertified: usize,
    /// The published emergency spare.
    pub emergency: Option<String>,
}

/// A status-list key that signs from its activation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusKey {
    /// When it signs from.
    pub from: OffsetDateTime,
    /// Its label in the token.
    pub label: String,
    /// Its certificate (DER) from a trusted IACA, which its tokens carry
    /// (`x5c`, `x5chain`); `None` until a ceremony (or the online IACA)
    /// certified it, or when the registry's copy is not one a trusted root
    /// issued for this key.
    pub certificate: Option<Arc<[u8]>>,
}

/// A trusted IACA root: DER and what the profile check read off it.
pub type Root = Arc<(Vec<u8>, CertFacts)>;

/// One IACA root as verifiers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootView {
    /// Hex key identifier (SKI).
    pub key_id: String,
    /// `current` (certifies), `retiring` (published while DS keys it
    /// certified are), `retired` (nothing chains to it any more).
    pub status: &'static str,
    /// The path its CRL is served at (`/iaca.crl` for the first root).
    pub crl_path: String,
    /// Its CRL (DER), if one was issued.
    pub crl_der: Option<Vec<u8>>,
    /// Link certificates (DER) to and from its neighbours.
    pub links: Vec<Vec<u8>>,
}

/// The root in `roots` that issued the leaf certificate `der`: named by its
/// AuthorityKeyIdentifier, and whose key verifies its signature. `None`
/// for a certificate no trusted root issued (a row can be edited: its
/// certificate is never taken on its word).
pub fn root_for<'a>(roots: &'a [Root], der: &[u8]) -> Option<&'a (Vec<u8>, CertFacts)> {
    root_for_leaf(roots, der, &[crate::pki::LeafRole::DocumentSigner])
}

/// [`root_for`] for a certificate of any of `roles` (a revoked key's
/// certificate goes on its root's CRL whichever chain it is on; a DS row
/// is only ever read as a DS certificate).
pub fn root_for_leaf<'a>(
    roots: &'a [Root],
    der: &[u8],
    roles: &[crate::pki::LeafRole],
) -> Option<&'a (Vec<u8>, CertFacts)> {
    let aki = roles
        .iter()
        .find_map(|role| crate::pki::profile::check_leaf(der, None, *role).ok())?
        .aki?;
    let cert = X509::from_der(der).ok()?;
    roots
        .iter()
        .rev()
        .find(|r| r.1.ski.as_ref() == Some(&aki))
        .filter(|r| {
            X509::from_der(&r.0)
                .and_then(|root| root.public_key())
                .is_ok_and(|key| cert.verify(&key).unwrap_or(false))
        })
        .map(|r| r.as_ref())
}

/// What the registry's keys give the listeners (swapped whole).
pub struct KeyView {
    /// Signers by activation, oldest first.
    pub signers: Vec<ScheduledSigner>,
    /// Status-list keys that sign, oldest activation first.
    pub status_keys: Vec<StatusKey>,
    /// Audit keys that sign checkpoints (activation, label, note key).
    pub audit_keys: Vec<(OffsetDateTime, String, NoteKey)>,
    /// Every audit key still in the token and not revoked: the outgoing key
    /// co-signs the first checkpoint of its successor.
    pub audit_cosigners: Vec<(String, NoteKey)>,
    /// Why a key that should sign cannot (readiness reports it).
    pub problems: Vec<String>,
    /// The token did not answer for some key (lost, or every session
    /// busy): the view is built again next round, not only when the
    /// registry changes, or the key would stay out after the token is back.
    pub token_unanswered: bool,
    /// `/.well-known/jwks.json`: the document signers only (what SD-JWT
    /// VC verifiers resolve an issuer's keys from).
    pub jwks: Vec<u8>,
    /// `/status/jwks.json`: the status-list keys, where status tokens say
    /// (`jku`).
    pub status_jwks: Vec<u8>,
    /// DS certificates by label (PEM), every published key.
    pub ds_pem: HashMap<String, Vec<u8>>,
    /// The IACA's CRL (PEM).
    pub crl_pem: Option<Vec<u8>>,
    /// The same CRL in DER, as the CRL distribution point serves it.
    pub crl_der: Option<Vec<u8>>,
    /// Revoked keys (labels): readiness reports them until a successor signs.
    pub revoked: Vec<String>,
    /// The same keys' kids: what they signed is never reinstated.
    pub revoked_kids: Vec<String>,
    /// The key states this view was built from.
    pub fingerprint: String,
    /// IACA certificate (PEM), once there is one.
    pub iaca_pem: Option<Vec<u8>>,
    /// IACA certificate (DER) and what the profile check read off it.
    pub iaca: Option<Arc<(Vec<u8>, CertFacts)>>,
    /// Every IACA root this node trusts, oldest first; the last is the
    /// current one ([`iaca`](Self::iaca)), which certifies.
    pub roots: Vec<Arc<(Vec<u8>, CertFacts)>>,
    /// Each root's state and CRL, as verifiers are served them.
    pub root_views: Vec<RootView>,
    /// The DS spare pool (IACA offline).
    pub spares: PoolStatus,
    /// Revoked DS keys (labels) the served CRL does not list yet.
    pub unlisted_revocations: Vec<String>,
}

impl KeyView {
    /// The signer for `now`: the latest activated, certificate still valid.
    pub fn signer_at(&self, now: OffsetDateTime) -> Option<&Arc<DocumentSigner<'static>>> {
        self.signers
            .iter()
            .rev()
            .find(|s| s.from <= now && s.signer.not_after() > now)
            .map(|s| &s.signer)
    }

    /// The audit key (label, note key) that signs checkpoints at `now`.
    pub fn audit_key_at(&self, now: OffsetDateTime) -> Option<(&str, &NoteKey)> {
        self.audit_keys
            .iter()
            .rev()
            .find(|(from, _, _)| *from <= now)
            .map(|(_, label, key)| (label.as_str(), key))
    }

    /// The status-list key that signs at `now`.
    pub fn status_key_at(&self, now: OffsetDateTime) -> Option<&StatusKey> {
        self.status_keys.iter().rev().find(|k| k.from <= now)
    }

    /// The DS key that signs at `now`, or why none can.
    pub fn signer(&self, now: OffsetDateTime) -> Result<&Arc<DocumentSigner<'static>>, String> {
        self.signer_at(now).ok_or_else(|| {
            let mut why = vec!["no DS key can sign now".to_owned()];
            why.extend(self.revoked.iter().map(|l| format!("{l} revoked")));
            why.extend(self.problems.iter().cloned());
            why.join("; ")
        })
    }

    /// Whether `other` signs and publishes with the same keys: two views
    /// that agree on them differ at most in the wording of their problems
    /// (a backend's back-off, say), which is no reason to swap.
    pub fn same_keys(&self, other: &KeyView) -> bool {
        let signers = |v: &KeyView| -> Vec<String> {
            v.signers
                .iter()
                .map(|s| s.signer.label().to_owned())
                .collect()
        };
        let audit = |v: &KeyView| -> (Vec<String>, Vec<String>) {
            (
                v.audit_keys.iter().map(|(_, l, _)| l.clone()).collect(),
                v.audit_cosigners.iter().map(|(l, _)| l.clone()).collect(),
            )
        };
        signers(self) == signers(other)
            && self.status_keys == other.status_keys
            && audit(self) == audit(other)
            && self.jwks == other.jwks
            && self.status_jwks == other.status_jwks
            && self.problems.len() == other.problems.len()
    }

    /// The view before the registry's keys are read.
    pub fn empty() -> Self {
        KeyView {
            signers: Vec::new(),
            status_keys: Vec::new(),
            audit_keys: Vec::new(),
            audit_cosigners: Vec::new(),
            problems: vec!["not loaded".into()],
            token_unanswered: false,
            jwks: Vec::new(),
            status_jwks: Vec::new(),
            ds_pem: HashMap::new(),
            crl_pem: None,
            crl_der: None,
            revoked: Vec::new(),
            revoked_kids: Vec::new(),
            fingerprint: String::new(),
            iaca_pem: None,
            iaca: None,
            roots: Vec::new(),
            root_views: Vec::new(),
            spares: PoolStatus::default(),
            unlisted_revocations: Vec::new(),
        }
    }
}

/// A JWK of `public` for a JWKS, with its certificate chain if it has one.
pub fn jwk_entry(public: &PublicKey, chain: Option<[&[u8]; 2]>) -> serde_json::Value {
    let jwk = public.jwk();
    let mut entry = json!({
        "kty": jwk.kty,
        "crv": jwk.crv,
        "x": jwk.x,
        "kid": public.kid(),
        "use": "sig",
        "alg": public.algorithm().jose_name(),
    });
    if let Some(fields) = entry.as_object_mut() {
        if let Some(y) = &jwk.y {
            let _ = fields.insert("y".into(), json!(y));
        }
        if let Some(chain) = chain {
            let x5c: Vec<_> = chain.iter().map(|c| B64.encode(c)).collect();
            let _ = fields.insert("x5c".into(), json!(x5c));
        }
    }
    entry
}

/// Keys without a certificate (status-list keys) have no end of their own.
pub(crate) fn no_certificate_end(now: OffsetDateTime) -> OffsetDateTime {
    now + time::Duration::days(365 * 100)
}

/// The states and revocations of every key, to notice a change.
pub(crate) fn fingerprint(keys: &[StoredKey], crl: Option<&str>, pool: Option<&str>) -> String {
    let mut text = String::new();
    for k in keys {
        // The certificate too: a row whose certificate changed is checked
        // again at once (it publishes and signs only if an IACA issued it).
        let certificate = k
            .certificate
            .as_deref()
            .map(|c| hex(&openssl::sha::sha256(c)))
            .unwrap_or_default();
        text.push_str(&format!(
            "{}:{}:{}:{}:{certificate};",
            k.record.label,
            k.record.state.as_str(),
            k.record.activate_at.unix_timestamp(),
            k.record.revoked
        ));
    }
    text.push_str(&format!("crl:{}", crl.map_or(0, str::len)));
    if let Some(crl) = crl {
        text.push_str(&hex(&openssl::sha::sha256(crl.as_bytes())));
    }
    if let Some(pool) = pool {
        text.push_str(";pool:");
        text.push_str(&hex(&openssl::sha::sha256(pool.as_bytes())));
    }
    text
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The public key a certificate certifies.
pub(crate) fn cert_public_key(der: &[u8]) -> Result<PublicKey, String> {
    let spki = X509::from_der(der)
        .and_then(|c| c.public_key())
        .and_then(|k| k.public_key_to_der())
        .map_err(|e| e.to_string())?;
    PublicKey::from_spki_der(&spki).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::{KeyView, StatusKey};

    fn status_key(label: &str) -> StatusKey {
        StatusKey {
            from: time::OffsetDateTime::UNIX_EPOCH,
            label: label.into(),
            certificate: None,
        }
    }

    #[test]
    fn views_that_differ_only_in_a_problems_wording_have_the_same_keys() {
        let mut a = KeyView::empty();
        let mut b = KeyView::empty();
        a.problems = vec!["DS key ds-1: key backend unavailable; retry in 200ms".into()];
        b.problems = vec!["DS key ds-1: key backend unavailable; retry in 400ms".into()];
        assert!(a.same_keys(&b));

        // Another key signing, or one more problem (a refused row), is news.
        b.status_keys = vec![status_key("status-1")];
        assert!(!a.same_keys(&b));
        a.status_keys = vec![status_key("status-1")];
        assert!(a.same_keys(&b));
        b.problems
            .push("status key status-1: not the token's key".into());
        assert!(!a.same_keys(&b));
    }
}
