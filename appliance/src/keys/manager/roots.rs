//! The IACA roots this node trusts: the first (the PKI directory's, kept in
//! the registry) and each successor a rollover ceremony made, trusted only
//! through its link certificate from the root before it (a row alone never
//! adds a root). The newest certifies; an older root stays published, with
//! its CRL, while a DS key or a spare it certified is still in use.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use pkcs11_shim::PublicKey;

use super::KeyManager;
use super::pool::Pool;
use crate::keys::lifecycle::KeyState;
use crate::keys::view::Root;
use crate::keys::view::{RootView, hex};
use crate::pki::exchange::RolloverCertificates;
use crate::pki::profile::{self, CertFacts};
use crate::pki::rollover::{check_link, link_names, short_key_id};
use crate::store::{CRL_DOCUMENT, StoredKey, root_crl_document};

fn spki_of(der: &[u8]) -> Result<PublicKey, String> {
    let spki = openssl::x509::X509::from_der(der)
        .and_then(|c| c.public_key())
        .and_then(|k| k.public_key_to_der())
        .map_err(|e| e.to_string())?;
    PublicKey::from_spki_der(&spki).map_err(|e| e.to_string())
}

/// The successor `rollover` describes, if its links hold: the root
/// `previous` certifies its key, it certifies the previous root's key, and
/// it is a self-signed IACA in the Annex B profile.
pub(super) fn verify_rollover(
    previous: &[u8],
    rollover: &RolloverCertificates,
) -> Result<(Vec<u8>, CertFacts), String> {
    let decode = |what: &str, text: &str| B64.decode(text).map_err(|e| format!("{what}: {e}"));
    let root = decode("root", &rollover.root)?;
    let facts = profile::check_iaca(&root).map_err(|e| format!("successor root: {e}"))?;
    let own = spki_of(&root)?;
    let self_signed = openssl::x509::X509::from_der(&root)
        .ok()
        .zip(own.to_openssl().ok())
        .is_some_and(|(c, k)| c.verify(&k).unwrap_or(false));
    if !self_signed {
        return Err("the successor root is not self-signed".into());
    }
    let (link, back_link) = (
        decode("link", &rollover.link)?,
        decode("back link", &rollover.back_link)?,
    );
    check_link(&link, previous, &own)
        .and_then(|()| link_names(&link, &root))
        .map_err(|e| format!("link from the current root: {e}"))?;
    check_link(&back_link, &root, &spki_of(previous)?)
        .and_then(|()| link_names(&back_link, previous))
        .map_err(|e| format!("link back to the current root: {e}"))?;
    Ok((root, facts))
}

/// Whether a DS certificate was issued by `root` (by key identifier).
fn issued_by(der: &[u8], root: &CertFacts) -> bool {
    profile::check_ds(der, None)
        .or_else(|_| profile::check_leaf(der, None, profile::LeafRole::StatusList))
        .ok()
        .and_then(|f| f.aki)
        .is_some_and(|aki| root.ski.as_ref() == Some(&aki))
}

impl KeyManager {
    /// The stored rollovers (none: an empty list).
    pub(super) fn rollovers(&self, text: Option<&str>) -> Vec<RolloverCertificates> {
        text.and_then(|t| serde_json::from_str(t).ok())
            .unwrap_or_default()
    }

    /// `first` and every successor whose links verify, in order; a
    /// rollover that does not verify ends the chain (and is reported).
    pub(super) fn trusted_roots(&self, first: Root, rollovers: Option<&str>) -> Vec<Root> {
        let mut roots = vec![first];
        for (n, rollover) in self.rollovers(rollovers).iter().enumerate() {
            let previous = roots.last().map(|r| r.0.clone()).unwrap_or_default();
            match verify_rollover(&previous, rollover) {
                Ok(root) => roots.push(Arc::new(root)),
                Err(e) => {
                    self.node
                        .metrics
                        .order_refused("rollover", "unverified_link");
                    tracing::error!(rollover = n + 1, error = %e, "a stored IACA rollover does not verify: its root is not trusted");
                    break;
                }
            }
        }
        roots
    }

    /// Each root's state, CRL path and CRL, and links, for the listeners.
    pub(super) fn root_views(
        &self,
        roots: &[Root],
        keys: &[StoredKey],
        pool: &Pool,
        first_crl_der: Option<&[u8]>,
        rollovers: Option<&str>,
    ) -> Vec<RootView> {
        let links = self.rollovers(rollovers);
        let spares: Vec<Vec<u8>> = pool
            .keys
            .iter()
            .filter_map(|s| s.certificate.as_deref())
            .filter_map(|c| B64.decode(c).ok())
            .collect();
        let last = roots.len().saturating_sub(1);
        roots
            .iter()
            .enumerate()
            .map(|(n, root)| {
                // A status-list key's certificate keeps its root published
                // (and on CRL orders) like a DS key's.
                let in_use = keys
                    .iter()
                    .filter(|k| k.record.state != KeyState::Destroyed)
                    .filter_map(|k| k.certificate.as_deref())
                    .chain(spares.iter().map(Vec::as_slice))
                    .any(|der| issued_by(der, &root.1));
                let key_id = root.1.ski.as_deref().map(hex).unwrap_or_default();
                let short = short_key_id(root.1.ski.as_deref().unwrap_or_default());
                let crl_der = if n == 0 {
                    first_crl_der.map(<[u8]>::to_vec)
                } else {
                    self.node
                        .registry
                        .document(&root_crl_document(&short))
                        .ok()
                        .flatten()
                        .and_then(|pem| openssl::x509::X509Crl::from_pem(pem.as_bytes()).ok())
                        .and_then(|c| c.to_der().ok())
                        .filter(|der| super::build::crl_signed_by(der, &root.0))
                };
                let mut root_links = Vec::new();
                for (i, l) in links.iter().enumerate() {
                    if i + 1 == n || i == n {
                        root_links.extend(B64.decode(&l.link).ok());
                        root_links.extend(B64.decode(&l.back_link).ok());
                    }
                }
                RootView {
                    key_id,
                    status: if n == last {
                        "current"
                    } else if in_use {
                        "retiring"
                    } else {
                        "retired"
                    },
                    crl_path: if n == 0 {
                        "/iaca.crl".to_owned()
                    } else {
                        format!("/iaca-{short}.crl")
                    },
                    crl_der,
                    links: root_links,
                }
            })
            .collect()
    }

    /// The registry document holding `root`'s CRL (the first root's is
    /// the one every certificate made before a rollover names).
    pub(super) fn crl_document_of(&self, roots: &[Root], root: &CertFacts) -> String {
        match roots.first() {
            Some(first) if first.1.ski == root.ski => CRL_DOCUMENT.to_owned(),
            _ => root_crl_document(&short_key_id(root.ski.as_deref().unwrap_or_default())),
        }
    }
}
