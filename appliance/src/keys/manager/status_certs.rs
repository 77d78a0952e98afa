//! The status-list keys' certificates from the IACA, so a verifier that
//! trusts only the IACA can authenticate a status token (its `x5c` /
//! `x5chain`): asked for at an officers' ceremony (offline IACA) or issued
//! by the daemon's token (online IACA), and stored on the key's row. The
//! key view checks what it reads back; this side only takes what a
//! verified ceremony (or this token's own IACA) issued for a key this
//! token holds.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use pkcs11_shim::KeyPurpose;
use time::OffsetDateTime;

use super::KeyManager;
use super::state::store_problem;
use crate::keys::ceremony::VerifiedCertification;
use crate::keys::lifecycle::KeyState;
use crate::pki::exchange::RequestedKey;
use crate::pki::{HsmKey, LeafRole};
use crate::store::{STATUS_CHAIN, StoredKey};

impl KeyManager {
    /// Status-list keys that sign or will, without a certificate from the
    /// current root (none yet, or an older root's after a rollover: the
    /// older root retires only once nothing chains to it).
    fn uncertified_status_keys(&self) -> Result<Vec<StoredKey>, String> {
        let keys = self.node.registry.keys().map_err(store_problem)?;
        let view = self.view();
        let current = view.iaca.as_ref().map(|root| root.0.as_slice());
        let from_current = |der: &[u8]| {
            crate::keys::view::root_for_leaf(&view.roots, der, &[LeafRole::StatusList])
                .is_some_and(|root| Some(root.0.as_slice()) == current)
        };
        Ok(keys
            .into_iter()
            .filter(|k| {
                k.chain == STATUS_CHAIN
                    && !k.certificate.as_deref().is_some_and(from_current)
                    && !k.record.revoked
                    && matches!(k.record.state, KeyState::Pending | KeyState::Active)
            })
            .collect())
    }

    /// The ceremony request's entries for the uncertified status-list
    /// keys, each proving possession, over `window` (unix seconds).
    pub(super) fn status_key_requests(
        &self,
        (not_before, not_after): (i64, i64),
    ) -> Result<Vec<RequestedKey>, String> {
        let mut requests = Vec::new();
        for stored in self.uncertified_status_keys()? {
            let label = &stored.record.label;
            // A row that names no key of the token, or another key, gets no
            // certificate, and holds up no ceremony (its revocations).
            let Some(key) = self.token_key_of(&stored) else {
                continue;
            };
            let csr = crate::pki::certificate_request(&key).map_err(|e| e.to_string())?;
            requests.push(RequestedKey {
                label: label.clone(),
                kid: stored.kid.clone(),
                csr: B64.encode(csr),
                not_before,
                not_after,
                purpose: LeafRole::StatusList,
            });
        }
        Ok(requests)
    }

    /// A verified ceremony's status-list certificates onto their keys'
    /// rows (a key this token holds under the label, as the row records
    /// it); the labels taken.
    pub(super) fn take_status_certificates(
        &self,
        verified: &VerifiedCertification,
        now: OffsetDateTime,
    ) -> Result<Vec<String>, String> {
        let mut taken = Vec::new();
        let keys = self.node.registry.keys().map_err(store_problem)?;
        for cert in verified
            .certificates
            .iter()
            .filter(|c| c.purpose == LeafRole::StatusList)
        {
            let Some(stored) = keys
                .iter()
                .find(|k| k.chain == STATUS_CHAIN && k.record.label == cert.label)
            else {
                tracing::warn!(label = %cert.label, "a certified status-list key is not in the registry");
                continue;
            };
            if self.store_status_certificate(stored, &cert.der, cert.facts.not_after, now)? {
                taken.push(cert.label.clone());
            }
        }
        Ok(taken)
    }

    /// Online IACA: every uncertified status-list key is certified by the
    /// IACA key in this token (the leading node, each round).
    pub(super) fn certify_status_keys_online(&self, now: OffsetDateTime) -> Result<(), String> {
        if self.pki_config.offline() {
            return Ok(());
        }
        let Some(iaca) = self.view().iaca.clone() else {
            return Ok(());
        };
        for stored in self.uncertified_status_keys()? {
            let label = &stored.record.label;
            // Checked before the IACA signs anything: a row that lies gets
            // no certificate, round after round, and holds up no other.
            if self.token_key_of(&stored).is_none() {
                continue;
            }
            let (der, facts) = self
                .node
                .metrics
                .hsm("certify_key", || {
                    crate::pki::ceremony::status_signer_in_token(
                        self.node.backend,
                        &self.pki_config,
                        &iaca.0,
                        label,
                        now,
                    )
                })
                .map_err(|e| format!("certifying status-list key {label}: {e}"))?;
            let _ = self.store_status_certificate(&stored, &der, facts.not_after, now)?;
        }
        Ok(())
    }

    /// The token's status-list key under `stored`'s label, if it is the
    /// key the row records; `None` (logged) otherwise.
    fn token_key_of(&self, stored: &StoredKey) -> Option<HsmKey<'static>> {
        let label = &stored.record.label;
        match HsmKey::find(self.node.backend, label, KeyPurpose::StatusList) {
            Ok(key) if key.public_key().kid() == stored.kid => Some(key),
            Ok(_) => {
                tracing::error!(%label, "a status-list key row does not match the token's key: no certificate for it");
                None
            }
            Err(e) => {
                tracing::error!(%label, error = %e, "a status-list key row names no status-list key of the token: no certificate for it");
                None
            }
        }
    }

    /// Stores `der` on `stored`'s row if it certifies the key this token
    /// holds under the label; whether it was stored.
    fn store_status_certificate(
        &self,
        stored: &StoredKey,
        der: &[u8],
        not_after: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Result<bool, String> {
        let label = &stored.record.label;
        if !self.certifies_token_key(label, &stored.kid, der)? {
            return Ok(false);
        }
        let decision = self.key_decision("keys.certify", "ok", label, &stored.kid, now);
        let stored_now = self
            .node
            .registry
            .certify_key(
                label,
                (stored.certificate.as_deref(), der),
                not_after,
                decision,
            )
            .map_err(store_problem)?;
        if stored_now && let Err(e) = self.refresh_keys(false) {
            tracing::warn!(error = %e.0, "taking a status-list certificate into the view; the next round retries");
        }
        Ok(stored_now)
    }
}
