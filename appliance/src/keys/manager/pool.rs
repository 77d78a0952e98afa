//! The DS spare pool, while the IACA is offline: DS keys are generated in
//! this token ahead of need, certified at an officers' ceremony from the
//! request this node exports, and taken one by one as rotations need them.
//! One certified spare is published ahead (the emergency spare), so a
//! revocation can switch to a key verifiers already know.
//!
//! The pool is a registry document and the registry can lie: a spare is
//! used only after its certificate is checked again against the IACA, the
//! profile and the token's own key under its label.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use pkcs11_shim::{KeyPurpose, PublicKey};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::KeyManager;
use super::state::store_problem;
use super::token::TokenCheck;
use crate::keys::lifecycle::{KeyRecord, KeyState};
use crate::keys::view::{PoolStatus, cert_public_key, hex};
use crate::pki::profile::{self, CertFacts};
use crate::store::{DS_CHAIN, POOL_DOCUMENT, StoredKey};

/// A DS key waiting in the pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spare {
    /// Its label in the token.
    pub label: String,
    /// Its kid.
    pub kid: String,
    /// SPKI, base64 DER.
    pub public_key: String,
    /// When it was generated.
    pub created: i64,
    /// Its DS certificate (base64 DER), once a ceremony issued one.
    pub certificate: Option<String>,
    /// The published spare an emergency switches to.
    pub emergency: bool,
}

/// The pool document.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pool {
    /// Oldest first.
    pub keys: Vec<Spare>,
}

/// A spare's certificate, checked: DER, its facts, the key it certifies.
pub(super) struct CheckedSpare {
    pub(super) der: Vec<u8>,
    pub(super) facts: CertFacts,
    pub(super) public: PublicKey,
    /// The root that issued it (DER).
    pub(super) root: Vec<u8>,
}

impl Pool {
    /// Parses the stored document (none yet: empty).
    pub fn parse(text: Option<&str>) -> Result<Self, String> {
        text.map_or(Ok(Pool::default()), |t| {
            serde_json::from_str(t).map_err(|e| format!("the spare pool document: {e}"))
        })
    }

    /// Its status.
    pub fn status(&self) -> PoolStatus {
        PoolStatus {
            offline: true,
            certified: self
                .keys
                .iter()
                .filter(|s| s.certificate.is_some() && !s.emergency)
                .count(),
            uncertified: self.keys.iter().filter(|s| s.certificate.is_none()).count(),
            emergency: self
                .keys
                .iter()
                .find(|s| s.emergency)
                .map(|s| s.label.clone()),
        }
    }

    /// Makes the oldest certified spare the emergency one if there is
    /// none; whether it changed anything.
    pub fn promote_emergency(&mut self) -> bool {
        if self.keys.iter().any(|s| s.emergency) {
            return false;
        }
        match self.keys.iter_mut().find(|s| s.certificate.is_some()) {
            Some(spare) => {
                spare.emergency = true;
                true
            }
            None => false,
        }
    }

    /// The spares a rotation may take, best first: the emergency spare
    /// first when the key must sign at once (verifiers know it already),
    /// else the certified scheduled spares oldest first; the emergency one
    /// for a scheduled rotation only if `may_use_emergency`.
    pub fn candidates(&self, urgent: bool, may_use_emergency: bool) -> Vec<&Spare> {
        let emergency = self.keys.iter().filter(|s| s.emergency);
        let scheduled = self
            .keys
            .iter()
            .filter(|s| s.certificate.is_some() && !s.emergency);
        if urgent {
            emergency.chain(scheduled).collect()
        } else {
            scheduled
                .chain(emergency.filter(|_| may_use_emergency))
                .collect()
        }
    }
}

impl KeyManager {
    /// The pool as the registry has it.
    pub(super) fn pool(&self) -> Result<Pool, String> {
        let text = self
            .node
            .registry
            .document(POOL_DOCUMENT)
            .map_err(store_problem)?;
        Pool::parse(text.as_deref())
    }

    /// Stores the pool, audited as `action` with `rule`.
    pub(super) fn store_pool(
        &self,
        pool: &Pool,
        action: &str,
        rule: String,
        now: OffsetDateTime,
    ) -> Result<(), String> {
        let text = serde_json::to_string(pool).map_err(|e| e.to_string())?;
        let decision = self.done(action, rule, now);
        self.node
            .registry
            .set_document(POOL_DOCUMENT, &text, decision)
            .map_err(store_problem)
    }

    /// The acting node's round, IACA offline: tops the pool up to
    /// `pki.spare_keys` scheduled spares plus the emergency one (new keys
    /// wait for a ceremony), and publishes a certified spare as the
    /// emergency one when there is none.
    pub(super) fn keep_pool(&self, now: OffsetDateTime) -> Result<(), String> {
        if !self.pki_config.offline() || self.view().iaca.is_none() {
            return Ok(());
        }
        let mut pool = self.pool()?;
        let promoted = pool.promote_emergency();
        let want = self.pki_config.spare_keys as usize
            + usize::from(!pool.keys.iter().any(|s| s.emergency));
        let mut generated = Vec::new();
        while pool.keys.iter().filter(|s| !s.emergency).count() < want {
            let spare = self.generate_spare(now)?;
            generated.push(spare.label.clone());
            pool.keys.push(spare);
        }
        if promoted || !generated.is_empty() {
            let rule = format!(
                "DS spare pool: generated [{}]{}; {} certified, {} waiting for a ceremony, emergency spare {}",
                generated.join(", "),
                if promoted {
                    ", emergency spare published"
                } else {
                    ""
                },
                pool.status().certified,
                pool.status().uncertified,
                pool.status().emergency.as_deref().unwrap_or("none")
            );
            self.store_pool(&pool, "keys.pool", rule, now)?;
            self.refresh_keys(true).map_err(|e| e.0)?;
        }
        Ok(())
    }

    // A key the pool could not record must not linger in the token.
    #[allow(clippy::disallowed_methods)]
    fn generate_spare(&self, now: OffsetDateTime) -> Result<Spare, String> {
        let mut random = [0u8; 3];
        openssl::rand::rand_bytes(&mut random).map_err(|e| e.to_string())?;
        let label = format!("ds-{}-{}", now.unix_timestamp(), hex(&random));
        let algorithm = pkcs11_shim::Algorithm::Es256;
        let info = self
            .node
            .metrics
            .hsm("generate_key", || {
                self.node
                    .backend
                    .generate(&label, KeyPurpose::DocumentSigner, algorithm)
            })
            .map_err(|e| format!("generating {label}: {e}"))?;
        let public = info
            .public_key
            .ok_or_else(|| format!("{label} has no public key"))?;
        tracing::info!(%label, kid = %public.kid(), "DS spare generated; it waits for a ceremony");
        Ok(Spare {
            label,
            kid: public.kid(),
            public_key: B64.encode(public.spki_der()),
            created: now.unix_timestamp(),
            certificate: None,
            emergency: false,
        })
    }

    /// A spare's certificate checked again (the pool is a row): issued by
    /// the IACA, the DS profile, and certifying the token's key under the
    /// spare's label. A refusal says whether the token answered.
    pub(super) fn check_spare(
        &self,
        spare: &Spare,
        roots: &[crate::keys::view::Root],
        keys: &[StoredKey],
    ) -> Result<CheckedSpare, (String, TokenCheck)> {
        let label = &spare.label;
        let refused = |problem: String| (problem, TokenCheck::Done);
        let certificate = spare.certificate.as_deref();
        let der = B64
            .decode(certificate.ok_or_else(|| refused("not certified yet".into()))?)
            .map_err(|e| refused(format!("{label}: certificate: {e}")))?;
        // Issued by the root that certifies now: a spare of an older root
        // (dropped at a rollover) or a forged certificate is refused.
        let iaca = crate::keys::view::root_for(roots, &der)
            .filter(|root| roots.last().is_some_and(|current| current.0 == root.0))
            .ok_or_else(|| {
                refused(format!(
                    "{label}: the certificate is not the current IACA's"
                ))
            })?;
        let facts =
            profile::check_ds(&der, Some(&iaca.1)).map_err(|e| refused(format!("{label}: {e}")))?;
        let public = cert_public_key(&der).map_err(refused)?;
        let token = self
            .node
            .backend
            .find(label)
            .map_err(|e| (format!("{label}: {e}"), TokenCheck::of(&e)))?;
        let same = token.purpose == KeyPurpose::DocumentSigner
            && token
                .public_key
                .as_ref()
                .is_some_and(|k| k.spki_der() == public.spki_der());
        if !same {
            self.node
                .metrics
                .order_refused("spare", "public_key_mismatch");
            return Err(refused(format!(
                "{label}: the certificate does not certify the token's DS key under this label"
            )));
        }
        // A spare has never been a key of the chain: a revoked, retired
        // or signing key written back into the pool is refused.
        if keys
            .iter()
            .any(|k| k.record.label == *label || k.kid == public.kid())
        {
            self.node.metrics.order_refused("spare", "already_a_key");
            return Err(refused(format!(
                "{label}: already a key of the chain; not a spare"
            )));
        }
        Ok(CheckedSpare {
            der,
            facts,
            public,
            root: iaca.0.clone(),
        })
    }

    /// A rotation with the IACA offline: a certified spare becomes the
    /// chain's pending key, signing from `activate_at`.
    pub(super) fn take_spare(
        &self,
        activate_at: OffsetDateTime,
        reason: &str,
        now: OffsetDateTime,
    ) -> Result<String, String> {
        let mut pool = self.pool()?;
        let urgent = activate_at <= now;
        let keys = self.node.registry.keys().map_err(store_problem)?;
        let roots = self.view().roots.clone();
        // The first candidate that checks out: one bad entry (a row can be
        // edited) must not hold up an emergency.
        let (spare, checked) = pool
            .candidates(urgent, reason != "scheduled rotation")
            .into_iter()
            .find_map(|spare| match self.check_spare(spare, &roots, &keys) {
                Ok(checked) => Some((spare.clone(), checked)),
                Err((e, _)) => {
                    tracing::warn!(error = %e, "a spare that does not check out is skipped");
                    None
                }
            })
            .ok_or_else(|| {
                format!(
                    "no certified DS key in the spare pool for the rotation ({reason}): hold a ceremony (dojangctl ceremony)"
                )
            })?;
        let key = StoredKey {
            chain: DS_CHAIN.into(),
            kid: checked.public.kid(),
            certificate: Some(checked.der),
            public_key: checked.public.spki_der().to_vec(),
            record: KeyRecord {
                label: spare.label.clone(),
                state: KeyState::Pending,
                created_at: OffsetDateTime::from_unix_timestamp(spare.created).unwrap_or(now),
                activate_at,
                cert_not_after: checked.facts.not_after,
                signatures: 0,
                last_signature_valid_until: None,
                revoked: false,
            },
            revocation: None,
        };
        let mut decision =
            self.key_decision("keys.generate", "pending", &spare.label, &key.kid, now);
        decision.rule = Some(format!(
            "key {}: {reason}; taken from the spare pool{}",
            spare.label,
            if spare.emergency {
                " (the emergency spare)"
            } else {
                ""
            }
        ));
        self.node
            .registry
            .add_key(&key, decision)
            .map_err(store_problem)?;
        pool.keys.retain(|s| s.label != spare.label);
        let _ = pool.promote_emergency();
        self.store_pool(
            &pool,
            "keys.pool",
            format!("DS spare pool: {} taken ({reason})", spare.label),
            now,
        )?;
        tracing::info!(label = %spare.label, %reason, "DS key taken from the spare pool");
        Ok(spare.label)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Pool {
        fn pick(&self, urgent: bool, may_use_emergency: bool) -> Option<&Spare> {
            self.candidates(urgent, may_use_emergency)
                .into_iter()
                .next()
        }
    }

    fn spare(label: &str, certified: bool, emergency: bool) -> Spare {
        Spare {
            label: label.into(),
            kid: label.into(),
            public_key: String::new(),
            created: 0,
            certificate: certified.then(String::new),
            emergency,
        }
    }

    #[test]
    fn the_emergency_spare_serves_urgent_rotations_and_scheduled_ones_only_by_leave() {
        let mut pool = Pool {
            keys: vec![
                spare("a", false, false),
                spare("b", true, false),
                spare("c", true, false),
            ],
        };
        assert!(pool.promote_emergency());
        assert!(!pool.promote_emergency(), "one emergency spare");
        assert_eq!(pool.status().emergency.as_deref(), Some("b"));
        assert_eq!((pool.status().certified, pool.status().uncertified), (1, 1));
        assert_eq!(pool.pick(true, false).map(|s| s.label.as_str()), Some("b"));
        assert_eq!(pool.pick(false, false).map(|s| s.label.as_str()), Some("c"));
        pool.keys.retain(|s| s.label != "c");
        assert_eq!(
            pool.pick(false, false),
            None,
            "a schedule keeps the emergency spare"
        );
        assert_eq!(pool.pick(false, true).map(|s| s.label.as_str()), Some("b"));
        pool.keys.retain(|s| s.label != "b");
        assert_eq!(
            pool.pick(true, true),
            None,
            "an uncertified key never signs"
        );
    }
}
