//! Moving keys through their lifecycle: acting on the plan, generating a
//! key (a DS key with its certificate), and activating, retiring and
//! destroying keys, each only forward.

use pkcs11_shim::{Algorithm, KeyPurpose};
use time::OffsetDateTime;

use super::KeyManager;
use super::state::store_problem;
use crate::keys::lifecycle::{Action, KeyRecord, KeyState, allowed, plan};
use crate::keys::view::{cert_public_key, hex, no_certificate_end};
use crate::pki::ceremony;
use crate::store::{AUDIT_CHAIN, CHAINS, DS_CHAIN, DecisionRecord, StoreError, StoredKey};

pub(super) fn state_of<'k>(keys: &'k [StoredKey], label: &str) -> Result<&'k StoredKey, String> {
    keys.iter()
        .find(|k| k.record.label == label)
        .ok_or_else(|| format!("no key {label}"))
}

impl KeyManager {
    pub(super) fn act_on_plan(&self, now: OffsetDateTime) -> Result<(), String> {
        let keys = self.node.registry.keys().map_err(store_problem)?;
        for chain in CHAINS {
            let records: Vec<KeyRecord> = keys
                .iter()
                .filter(|k| k.chain == chain)
                .map(|k| k.record.clone())
                .collect();
            // A DS chain starts once there is an IACA to certify its keys
            // (the plan then asks for a first key); the others are imported
            // at start.
            if records.is_empty() && (chain != DS_CHAIN || self.view().iaca.is_none()) {
                continue;
            }
            for action in plan(&records, &self.rotation_rules(), now) {
                let (name, outcome) = match &action {
                    Action::GeneratePending {
                        activate_at,
                        reason,
                    } if chain == DS_CHAIN && self.pki_config.offline() => (
                        "take_spare",
                        self.take_spare(*activate_at, reason, now).map(|_| ()),
                    ),
                    Action::GeneratePending {
                        activate_at,
                        reason,
                    } => (
                        "generate",
                        self.refuse_unexplained_gap(&keys, chain).and_then(|()| {
                            self.generate_key(chain, *activate_at, reason, now)
                                .map(|_| ())
                        }),
                    ),
                    Action::Activate { label } => {
                        ("activate", self.activate_key(&keys, label, now))
                    }
                    Action::Retire { label, reason } => {
                        ("retire", self.retire_key(&keys, label, reason, now))
                    }
                    Action::Destroy { label } => (
                        "destroy",
                        self.destroy_key(&keys, label, DestroyOrder::Plan, now),
                    ),
                };
                self.node
                    .metrics
                    .key_actions
                    .with_label_values(&[name, if outcome.is_ok() { "ok" } else { "error" }])
                    .inc();
                outcome?;
            }
        }
        Ok(())
    }

    /// Generates a key for `chain` (a DS key with its certificate) and
    /// records it pending until `activate_at`; returns its label.
    pub fn generate_key(
        &self,
        chain: &str,
        activate_at: OffsetDateTime,
        reason: &str,
        now: OffsetDateTime,
    ) -> Result<String, String> {
        if chain == DS_CHAIN && self.pki_config.offline() {
            // The root is offline: a ceremony certified the key already.
            return self.take_spare(activate_at, reason, now);
        }
        let keys = self.node.registry.keys().map_err(store_problem)?;
        let algorithm = self.chain_algorithm(chain);
        let mut random = [0u8; 3];
        openssl::rand::rand_bytes(&mut random).map_err(|e| e.to_string())?;
        let label = format!("{chain}-{}-{}", now.unix_timestamp(), hex(&random));
        if keys.iter().any(|k| k.record.label == label) {
            return Err(format!("label {label} is taken"));
        }
        let (public, certificate, not_after) = self.make_key(chain, &label, algorithm, now)?;
        let kid = public.kid();
        let key = StoredKey {
            chain: chain.into(),
            kid: kid.clone(),
            certificate,
            public_key: public.spki_der().to_vec(),
            record: KeyRecord {
                label: label.clone(),
                state: KeyState::Pending,
                created_at: now,
                activate_at,
                cert_not_after: not_after,
                signatures: 0,
                last_signature_valid_until: None,
                revoked: false,
            },
            revocation: None,
        };
        self.record_generated(&key, reason, now)?;
        tracing::info!(%label, %kid, activate_at = %activate_at, reason, "key generated, published until it signs");
        Ok(label)
    }

    /// The algorithm `chain` signs with now (verifiers expect it).
    fn chain_algorithm(&self, chain: &str) -> Algorithm {
        let current = self.view();
        match chain {
            DS_CHAIN => current
                .signers
                .last()
                .map_or(Algorithm::Es256, |s| s.signer.algorithm().key_algorithm()),
            AUDIT_CHAIN => current
                .audit_keys
                .last()
                .and_then(|(_, label, _)| self.node.backend.find(label).ok())
                .map_or(Algorithm::Es256, |k| k.algorithm),
            _ => current
                .status_keys
                .last()
                .and_then(|k| self.node.backend.find(&k.label).ok())
                .map_or(Algorithm::Es256, |k| k.algorithm),
        }
    }

    /// A new key in the token: for the DS chain with its certificate from
    /// the IACA. (public key, certificate, end of its certificate).
    // A key whose certificate failed must not be left behind in the token.
    #[allow(clippy::disallowed_methods)]
    fn make_key(
        &self,
        chain: &str,
        label: &str,
        algorithm: Algorithm,
        now: OffsetDateTime,
    ) -> Result<(pkcs11_shim::PublicKey, Option<Vec<u8>>, OffsetDateTime), String> {
        let current = self.view();
        Ok(if chain == DS_CHAIN {
            let iaca = current
                .iaca
                .clone()
                .ok_or_else(|| "no IACA to certify a DS key".to_owned())?;
            let (der, facts, _) = self
                .node
                .metrics
                .hsm("generate_key", || {
                    ceremony::document_signer_in_token(
                        self.node.backend,
                        &self.pki_config,
                        &iaca.0,
                        label,
                        algorithm,
                        now,
                    )
                })
                .map_err(|e| {
                    // The key may exist without its certificate: not left behind.
                    let _ = self.node.backend.destroy(label);
                    format!("generating {label}: {e}")
                })?;
            let public = cert_public_key(&der)?;
            (public, Some(der), facts.not_after)
        } else {
            let purpose = if chain == AUDIT_CHAIN {
                KeyPurpose::Audit
            } else {
                KeyPurpose::StatusList
            };
            let info = self
                .node
                .metrics
                .hsm("generate_key", || {
                    self.node.backend.generate(label, purpose, algorithm)
                })
                .map_err(|e| format!("generating {label}: {e}"))?;
            let public = info
                .public_key
                .ok_or_else(|| format!("{label} has no public key"))?;
            (public, None, no_certificate_end(now))
        })
    }

    /// Records a generated key pending; a key the registry refused leaves
    /// the token, and one whose write may have happened stays.
    // A key the registry refused must not linger in the token.
    #[allow(clippy::disallowed_methods)]
    fn record_generated(
        &self,
        key: &StoredKey,
        reason: &str,
        now: OffsetDateTime,
    ) -> Result<(), String> {
        let (label, kid) = (&key.record.label, &key.kid);
        let mut decision = self.key_decision("keys.generate", "pending", label, kid, now);
        decision.rule = Some(format!("key {label}: {reason}"));
        match self.node.registry.add_key(key, decision) {
            Ok(()) => {}
            // Refused: it must not linger in the token either.
            Err(StoreError::Conflict { rule }) => {
                let _ = self.node.backend.destroy(label);
                return Err(format!("{rule}: a key is already pending"));
            }
            // The answer was lost, not necessarily the write: destroy the key
            // only if the registry really does not have it.
            Err(e) => {
                let recorded = self
                    .node
                    .registry
                    .keys()
                    .map(|keys| keys.iter().any(|k| k.record.label == *label));
                if recorded == Ok(false) {
                    let _ = self.node.backend.destroy(label);
                }
                return Err(store_problem(e));
            }
        }
        Ok(())
    }

    /// Moves keys in the registry, each only forward in its lifecycle.
    fn move_keys(
        &self,
        moves: &[(String, KeyState, KeyState)],
        now: OffsetDateTime,
        decisions: Vec<DecisionRecord>,
    ) -> Result<(), String> {
        if let Some((label, from, to)) = moves.iter().find(|(_, from, to)| !allowed(*from, *to)) {
            return Err(format!(
                "key {label}: {} to {} is not a step of the lifecycle",
                from.as_str(),
                to.as_str()
            ));
        }
        self.node
            .registry
            .move_keys(moves, now, decisions)
            .map_err(store_problem)
    }

    /// The pending key `label` signs from now on; the active one retires.
    pub fn activate_key(
        &self,
        keys: &[StoredKey],
        label: &str,
        now: OffsetDateTime,
    ) -> Result<(), String> {
        let key = state_of(keys, label)?;
        // A key that cannot sign must not take over from one that can.
        let info = self
            .node
            .backend
            .find(label)
            .map_err(|e| format!("{label} is not usable in the token: {e}"))?;
        self.refuse_forged_activation(key, &info, now)?;
        pkcs11_shim::prove_possession(self.node.backend, &info)
            .map_err(|e| format!("{label} cannot sign: {e}"))?;
        let outgoing: Vec<&StoredKey> = keys
            .iter()
            .filter(|k| k.chain == key.chain && k.record.state == KeyState::Active)
            .collect();
        let mut moves: Vec<_> = outgoing
            .iter()
            .map(|old| {
                (
                    old.record.label.clone(),
                    KeyState::Active,
                    KeyState::Retired,
                )
            })
            .collect();
        moves.push((label.to_owned(), KeyState::Pending, KeyState::Active));
        // The rotation's other half: each outgoing key's retirement is an
        // entry of its own, in the same transaction.
        let mut decisions =
            vec![self.key_decision("keys.activate", "active", label, &key.kid, now)];
        for old in &outgoing {
            let mut retire =
                self.key_decision("keys.retire", "retired", &old.record.label, &old.kid, now);
            retire.rule = Some(format!("key {}: rotation", old.record.label));
            decisions.push(retire);
        }
        self.move_keys(&moves, now, decisions)?;
        self.forget_private_halves(&outgoing);
        tracing::info!(%label, "key active");
        Ok(())
    }

    /// Retires `label` (it stops signing; its certificate stays published).
    /// Its private half stays: the plan retires on rows (a revocation the
    /// registry records), and a row is not an order; officers' retirement
    /// removes it ([`KeyManager::forget_retired`]).
    pub fn retire_key(
        &self,
        keys: &[StoredKey],
        label: &str,
        reason: &str,
        now: OffsetDateTime,
    ) -> Result<(), String> {
        let key = state_of(keys, label)?;
        let mut decision = self.key_decision("keys.retire", "retired", label, &key.kid, now);
        decision.rule = Some(format!("key {label}: {reason}"));
        self.move_keys(
            &[(label.to_owned(), key.record.state, KeyState::Retired)],
            now,
            vec![decision],
        )
    }

    /// Officers retired `label`: its private half leaves the token too.
    pub fn forget_retired(&self, keys: &[StoredKey], label: &str) {
        if let Ok(key) = state_of(keys, label) {
            self.forget_private_halves(&[key]);
        }
    }

    /// Keys this node just moved out of signing lose their private half
    /// (their public half stays published for verifiers). One the token
    /// keeps is counted by the next round and left to officers.
    fn forget_private_halves(&self, retired: &[&StoredKey]) {
        for key in retired
            .iter()
            .filter(|k| super::token::retires_private_half(&k.chain))
        {
            if let Err(e) = self.destroy_private_half(key, "retire") {
                tracing::warn!(error = %e, "a retired key's private half is still in the token");
            }
        }
    }

    /// Forgets a retired key: out of publication (the registry). Only an
    /// officers' order also reaches the token, where a private half left
    /// behind at retirement is removed; the plan's own destruction, which
    /// rests on dates the registry holds, never does.
    pub fn destroy_key(
        &self,
        keys: &[StoredKey],
        label: &str,
        order: DestroyOrder,
        now: OffsetDateTime,
    ) -> Result<(), String> {
        let key = state_of(keys, label)?;
        let decision = self.key_decision("keys.destroy", "destroyed", label, &key.kid, now);
        self.move_keys(
            &[(label.to_owned(), KeyState::Retired, KeyState::Destroyed)],
            now,
            vec![decision],
        )?;
        match order {
            DestroyOrder::Officers => self.destroy_private_half(key, "destroy"),
            DestroyOrder::Plan => Ok(()),
        }
    }
}

/// Who ordered a key's destruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DestroyOrder {
    /// The retention plan: the registry only.
    Plan,
    /// Officers under dual control: the registry and the token.
    Officers,
}
