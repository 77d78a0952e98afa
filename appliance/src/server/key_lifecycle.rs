//! The key lifecycle in the daemon: the registry's key records are the
//! truth every node reads; one node at a time (the holder of the `keys`
//! lease) acts on the plan [`crate::keys::lifecycle::plan`] computes from
//! them and the policy's rules; every node signs with the key whose
//! activation time has come, so nodes switch together without talking.
//!
//! The first start imports the DS certificates `dojangctl pki init` wrote;
//! after that keys come only from this module: the schedule, or officers'
//! approved proposals ([`super::officers`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use openssl::x509::{X509, X509Crl};
use pkcs11_shim::{Algorithm, KeyPurpose, PublicKey};
use time::OffsetDateTime;

use super::service::{LoadError, Service};
use crate::audit::checkpoint::NoteKey;
use crate::credential::DocumentSigner;
use crate::keys::lifecycle::{Action, KeyRecord, KeyState, RotationRules, allowed, plan};
use crate::pki::profile::CertFacts;
use crate::pki::{DsCertificate, ceremony, profile};
use crate::store::{
    AUDIT_CHAIN, CHAINS, DS_CHAIN, DecisionRecord, IACA_DOCUMENT, KeyRevocation, STATUS_CHAIN,
    StoreError, StoredKey, revoked_serials,
};

/// The lease the acting node holds; it outlives a few missed ticks.
const LEASE: &str = "keys";
/// How long the lifecycle rests after a failed action.
const LIFECYCLE_REST: Duration = Duration::from_secs(30);
/// How long after a revocation what was signed with the key is swept again
/// (requests in flight, nodes that had not taken the revocation up yet).
const REVOCATION_SWEEP: time::Duration = time::Duration::minutes(10);
/// How often destroyed keys are checked gone from the token.
const RECONCILE_EVERY: Duration = Duration::from_secs(60);
/// How often a recent revocation's credentials are swept.
const SWEEP_EVERY: time::Duration = time::Duration::seconds(10);

/// A DS key that signs from `from` (its activation time).
pub struct ScheduledSigner {
    /// Activation time.
    pub from: OffsetDateTime,
    /// The signer.
    pub signer: Arc<DocumentSigner<'static>>,
}

/// What the registry's keys give the listeners (swapped with `Current`).
pub struct KeyView {
    /// Signers by activation, oldest first.
    pub signers: Vec<ScheduledSigner>,
    /// Status-list keys (activation, label), oldest first.
    pub status_keys: Vec<(OffsetDateTime, String)>,
    /// Audit keys that sign checkpoints (activation, label, note key).
    pub audit_keys: Vec<(OffsetDateTime, String, NoteKey)>,
    /// Every audit key still in the token and not revoked: the outgoing key
    /// co-signs the first checkpoint of its successor.
    pub audit_cosigners: Vec<(String, NoteKey)>,
    /// Why a key that should sign cannot (readiness reports it).
    pub problems: Vec<String>,
    /// `/.well-known/jwks.json`.
    pub jwks: Vec<u8>,
    /// DS certificates by label (PEM), every published key.
    pub ds_pem: HashMap<String, Vec<u8>>,
    /// The IACA's CRL (PEM).
    pub crl_pem: Option<Vec<u8>>,
    /// Revoked keys (labels): readiness reports them until a successor signs.
    pub revoked: Vec<String>,
    /// The key states this view was built from.
    pub fingerprint: String,
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

    /// The status-list key (label) that signs at `now`.
    pub fn status_key_at(&self, now: OffsetDateTime) -> Option<&str> {
        self.status_keys
            .iter()
            .rev()
            .find(|(from, _)| *from <= now)
            .map(|(_, label)| label.as_str())
    }
}

/// Keys without a certificate (status-list keys) have no end of their own.
fn no_certificate_end(now: OffsetDateTime) -> OffsetDateTime {
    now + time::Duration::days(365 * 100)
}

/// The states and revocations of every key, to notice a change.
fn fingerprint(keys: &[StoredKey], crl: Option<&str>) -> String {
    let mut text = String::new();
    for k in keys {
        text.push_str(&format!(
            "{}:{}:{}:{};",
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
    text
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The public key a certificate certifies.
fn cert_public_key(der: &[u8]) -> Result<PublicKey, String> {
    let spki = X509::from_der(der)
        .and_then(|c| c.public_key())
        .and_then(|k| k.public_key_to_der())
        .map_err(|e| e.to_string())?;
    PublicKey::from_spki_der(&spki).map_err(|e| e.to_string())
}

/// Signing attempts for one CRL when others keep being stored first.
const CRL_ATTEMPTS: usize = 3;

/// What one attempt to publish a CRL did.
enum CrlOutcome {
    /// Stored, or nothing to sign yet (no IACA, nothing revoked).
    Done,
    /// Another CRL was stored after this one's predecessor was read.
    Raced,
}

fn store_problem(e: StoreError) -> String {
    format!("registry: {e}")
}

impl Service {
    /// The rotation rules (every chain) from the policy and the configuration.
    pub(crate) fn rotation_rules(&self) -> RotationRules {
        let keys = self.current().policy.keys;
        RotationRules {
            every: keys.rotate_every,
            max_signatures: keys.max_signatures,
            prepublish: keys.prepublish,
            min_cert_remaining: time::Duration::days(i64::from(
                self.credential.signature_validity_days,
            )),
            retention_margin: keys.retention_margin,
        }
    }

    /// First start: the registry has no DS key yet, so the certificates
    /// `dojangctl pki init` / `pki issue-ds` wrote are taken in; the newest
    /// valid one signs, older ones are retired. Later files are not taken
    /// in (a key enters only through the schedule or officers' approval).
    pub(crate) fn import_existing_keys(&self, now: OffsetDateTime) -> Result<(), LoadError> {
        let keys = self
            .registry
            .keys()
            .map_err(|e| LoadError(store_problem(e)))?;
        for (chain, label, purpose) in [
            (STATUS_CHAIN, &self.keys.status_list, KeyPurpose::StatusList),
            (AUDIT_CHAIN, &self.keys.audit, KeyPurpose::Audit),
        ] {
            if !keys.iter().any(|k| k.chain == chain) {
                self.import_service_key(chain, label, purpose, now)?;
            }
        }
        // DS certificates on disk need the IACA on disk (`pki init`).
        if !self.pki.iaca_path().exists() {
            return Ok(());
        }
        let certs = self
            .pki
            .ds_certificates()
            .map_err(|e| LoadError(format!("DS certificates: {e}")))?;
        if keys.iter().any(|k| k.chain == DS_CHAIN) {
            for cert in certs
                .iter()
                .filter(|c| !keys.iter().any(|k| k.record.label == c.label))
            {
                tracing::warn!(
                    label = %cert.label,
                    "a DS certificate in the PKI directory is not in the registry and is ignored: new keys come from rotation (dojangctl keys rotate)"
                );
            }
            return Ok(());
        }
        let signing = certs
            .iter()
            .rev()
            .find(|c| c.facts.not_before <= now && now < c.facts.not_after)
            .map(|c| c.label.clone());
        for cert in &certs {
            let state = if Some(&cert.label) == signing.as_ref() {
                KeyState::Active
            } else {
                KeyState::Retired
            };
            let public = cert_public_key(&cert.der).map_err(LoadError)?;
            let kid = public.kid();
            let key = StoredKey {
                chain: DS_CHAIN.into(),
                kid: kid.clone(),
                certificate: Some(cert.der.clone()),
                public_key: public.spki_der().to_vec(),
                record: KeyRecord {
                    label: cert.label.clone(),
                    state,
                    created_at: cert.facts.not_before,
                    activate_at: cert.facts.not_before,
                    cert_not_after: cert.facts.not_after,
                    signatures: 0,
                    // Unknown: what it signed may still be valid, so it
                    // stays published until destroyed by officers.
                    last_signature_valid_until: None,
                    revoked: false,
                },
                revocation: None,
            };
            let decision = self.key_decision("keys.import", state.as_str(), &cert.label, &kid, now);
            match self.registry.add_key(&key, decision) {
                // Another node imported it first.
                Ok(()) | Err(StoreError::Conflict { .. }) => {}
                Err(e) => return Err(LoadError(store_problem(e))),
            }
        }
        Ok(())
    }

    /// First start: the configured status-list (audit) key becomes its
    /// chain's active key.
    fn import_service_key(
        &self,
        chain: &str,
        label: &str,
        purpose: KeyPurpose,
        now: OffsetDateTime,
    ) -> Result<(), LoadError> {
        let key = self
            .backend
            .find(label)
            .map_err(|e| LoadError(format!("{chain} key {label:?}: {e}")))?;
        if key.purpose != purpose {
            return Err(LoadError(format!(
                "key {label:?} is a {} key, not a {purpose} key",
                key.purpose
            )));
        }
        let public = key
            .public_key
            .as_ref()
            .ok_or_else(|| LoadError(format!("key {label:?} has no public key")))?;
        let kid = public.kid();
        let stored = StoredKey {
            chain: chain.into(),
            kid: kid.clone(),
            certificate: None,
            public_key: public.spki_der().to_vec(),
            record: KeyRecord {
                label: label.to_owned(),
                state: KeyState::Active,
                created_at: now,
                activate_at: now,
                cert_not_after: no_certificate_end(now),
                signatures: 0,
                last_signature_valid_until: None,
                revoked: false,
            },
            revocation: None,
        };
        let decision = self.key_decision("keys.import", "active", label, &kid, now);
        match self.registry.add_key(&stored, decision) {
            Ok(()) | Err(StoreError::Conflict { .. }) => Ok(()),
            Err(e) => Err(LoadError(store_problem(e))),
        }
    }

    pub(crate) fn key_decision(
        &self,
        action: &str,
        outcome: &str,
        label: &str,
        kid: &str,
        now: OffsetDateTime,
    ) -> DecisionRecord {
        DecisionRecord {
            rule: Some(format!("key {label}")),
            key_id: Some(kid.to_owned()),
            ..self.decision("dojangd", action, outcome, &self.current().policy.hash, now)
        }
    }

    /// Builds what the listeners need from the registry's keys.
    pub(crate) fn key_view(
        &self,
        iaca: Option<&(Vec<u8>, CertFacts)>,
        keys: &[StoredKey],
        crl: Option<String>,
    ) -> Result<KeyView, LoadError> {
        let mut signers = Vec::new();
        let mut problems = Vec::new();
        let mut jwks = Vec::new();
        let mut ds_pem = HashMap::new();
        let mut revoked = Vec::new();
        let Some((iaca_der, iaca)) = iaca else {
            problems.push(
                "no IACA yet: an officer proposes its generation (dojangctl pki propose-iaca) and another approves"
                    .to_owned(),
            );
            return self.service_key_view(keys, crl, problems);
        };
        for key in keys.iter().filter(|k| k.chain == DS_CHAIN) {
            let r = &key.record;
            if r.state == KeyState::Destroyed {
                continue;
            }
            let Some(der) = &key.certificate else {
                problems.push(format!("DS key {} has no certificate", r.label));
                continue;
            };
            // A revoked key leaves the JWKS (verifiers that trust keys, not
            // chains, must stop accepting it); its certificate stays
            // fetchable, and is on the CRL.
            if r.revoked {
                revoked.push(r.label.clone());
            }
            if r.is_published() {
                match cert_public_key(der) {
                    Ok(public) => jwks.push(super::service::jwk_entry(
                        &public,
                        Some([&der[..], iaca_der]),
                    )),
                    Err(e) => {
                        // One bad record must not keep every other change
                        // (a revocation above all) from taking effect.
                        problems.push(format!("DS certificate {}: {e}", r.label));
                        continue;
                    }
                }
            }
            let _ = ds_pem.insert(
                r.label.clone(),
                crate::pki::cert_pem(der)
                    .map_err(|e| LoadError(e.to_string()))?
                    .into_bytes(),
            );
            if r.revoked || !matches!(r.state, KeyState::Pending | KeyState::Active) {
                continue;
            }
            let facts = match profile::check_ds(der, Some(iaca)) {
                Ok(facts) => facts,
                Err(e) => {
                    problems.push(format!("DS certificate {}: {e}", r.label));
                    continue;
                }
            };
            let cert = DsCertificate {
                label: r.label.clone(),
                der: der.clone(),
                facts,
            };
            match DocumentSigner::new(self.backend, cert) {
                Ok(signer) => signers.push(ScheduledSigner {
                    from: r.activate_at,
                    signer: Arc::new(signer),
                }),
                Err(e) => problems.push(format!("DS key {}: {e}", r.label)),
            }
        }
        signers.sort_by_key(|s| s.from);
        let mut view = self.service_key_view(keys, crl, problems)?;
        view.signers = signers;
        view.ds_pem = ds_pem;
        view.revoked = revoked;
        let mut all = jwks;
        if let Ok(serde_json::Value::Object(mut doc)) =
            serde_json::from_slice::<serde_json::Value>(&view.jwks)
            && let Some(serde_json::Value::Array(service_keys)) = doc.remove("keys")
        {
            all.extend(service_keys);
        }
        view.jwks = serde_json::to_vec(&serde_json::json!({ "keys": all }))
            .map_err(|e| LoadError(e.to_string()))?;
        Ok(view)
    }

    /// The status-list and audit keys' part of a view (and the CRL), with
    /// no DS key yet.
    fn service_key_view(
        &self,
        keys: &[StoredKey],
        crl: Option<String>,
        mut problems: Vec<String>,
    ) -> Result<KeyView, LoadError> {
        let mut jwks = Vec::new();
        let mut status_keys = Vec::new();
        let mut audit_keys = Vec::new();
        let mut audit_cosigners = Vec::new();
        for key in keys.iter().filter(|k| k.chain != DS_CHAIN) {
            let r = &key.record;
            if !r.is_published() {
                continue;
            }
            let public = match PublicKey::from_spki_der(&key.public_key) {
                Ok(public) => public,
                Err(e) => {
                    problems.push(format!("{} key {}: {e}", key.chain, r.label));
                    continue;
                }
            };
            let signs = matches!(r.state, KeyState::Pending | KeyState::Active);
            if key.chain == STATUS_CHAIN {
                jwks.push(super::service::jwk_entry(&public, None));
                if signs {
                    status_keys.push((r.activate_at, r.label.clone()));
                }
            } else if key.chain == AUDIT_CHAIN {
                match NoteKey::new(self.audit.origin(), public) {
                    Ok(note_key) => {
                        if signs {
                            audit_keys.push((r.activate_at, r.label.clone(), note_key.clone()));
                        }
                        audit_cosigners.push((r.label.clone(), note_key));
                    }
                    Err(e) => problems.push(format!("audit key {}: {e}", r.label)),
                }
            }
        }
        audit_keys.sort_by_key(|(from, label, _)| (*from, label.clone()));
        status_keys.sort();
        let fingerprint = fingerprint(keys, crl.as_deref());
        let crl_pem = crl
            .map(String::into_bytes)
            .or_else(|| std::fs::read(self.pki.crl_path()).ok());
        Ok(KeyView {
            signers: Vec::new(),
            status_keys,
            audit_keys,
            audit_cosigners,
            problems,
            jwks: serde_json::to_vec(&serde_json::json!({ "keys": jwks }))
                .map_err(|e| LoadError(e.to_string()))?,
            ds_pem: HashMap::new(),
            crl_pem,
            revoked: Vec::new(),
            fingerprint,
        })
    }

    /// One round: count signatures, and, if this node holds the lease,
    /// act on the plan, keep the CRL whole and fresh, finish revocations and
    /// approved proposals left unfinished, and check destroyed keys are gone
    /// from the token; then take up any change another node made.
    pub fn keys_tick(&self, now: OffsetDateTime, lease_ms: i64) {
        self.flush_key_usage();
        let leader = self
            .registry
            .lease(LEASE, &self.node_id, lease_ms)
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "key lease");
                false
            });
        self.leader.store(leader, Ordering::Relaxed);
        // A root officers had generated on another node.
        if self.current().iaca.is_none()
            && matches!(self.registry.document(IACA_DOCUMENT), Ok(Some(_)))
            && let Err(e) = self.reload(now)
        {
            tracing::warn!(error = %e.0, "loading the IACA from the registry");
        }
        if leader {
            // Each duty on its own: a failing rotation must not hold up
            // the CRL or a revocation's sweep.
            if !self.resting()
                && let Err(e) = self.act_on_plan(now)
            {
                tracing::warn!(error = %e, "key rotation failed; resting {LIFECYCLE_REST:?}, then retried");
                self.rest();
            }
            if let Err(e) = self.keep_crl_whole(now) {
                tracing::warn!(error = %e, "keeping the CRL whole failed; retried next round");
            }
            if let Err(e) = self.sweep_revoked(now) {
                tracing::warn!(error = %e, "sweeping a revoked key's credentials failed; retried");
            }
            self.resume_approved(now);
            self.reconcile_destroyed();
        }
        if let Err(e) = self.refresh_keys(false) {
            tracing::warn!(error = %e.0, "reloading keys failed; the current ones stay");
        }
        self.follow_adopted_policy(now);
    }

    /// The registry's key records and CRL, read for a view.
    pub(crate) fn keys_and_crl(&self) -> Result<(Vec<StoredKey>, Option<String>), LoadError> {
        let keys = self
            .registry
            .keys()
            .map_err(|e| LoadError(store_problem(e)))?;
        let crl = self
            .registry
            .crl()
            .map_err(|e| LoadError(store_problem(e)))?;
        Ok((keys, crl))
    }

    fn resting(&self) -> bool {
        self.lifecycle_pause
            .lock()
            .map(|p| p.is_some_and(|until| Instant::now() < until))
            .unwrap_or(false)
    }

    fn rest(&self) {
        if let Ok(mut p) = self.lifecycle_pause.lock() {
            *p = Some(Instant::now() + LIFECYCLE_REST);
        }
    }

    /// Re-reads the registry's keys; swaps the view if anything changed (or
    /// always, with `force`).
    pub(crate) fn refresh_keys(&self, force: bool) -> Result<(), LoadError> {
        let _ordered = self
            .key_swap
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (keys, crl) = self.keys_and_crl()?;
        let current = self.current();
        if !force && fingerprint(&keys, crl.as_deref()) == current.keys.fingerprint {
            return Ok(());
        }
        let view = self.key_view(current.iaca.as_deref(), &keys, crl)?;
        self.swap_keys(view);
        Ok(())
    }

    fn act_on_plan(&self, now: OffsetDateTime) -> Result<(), String> {
        let keys = self.registry.keys().map_err(store_problem)?;
        for chain in CHAINS {
            let records: Vec<KeyRecord> = keys
                .iter()
                .filter(|k| k.chain == chain)
                .map(|k| k.record.clone())
                .collect();
            // A DS chain starts once there is an IACA to certify its keys
            // (the plan then asks for a first key); the others are imported
            // at start.
            if records.is_empty() && (chain != DS_CHAIN || self.current().iaca.is_none()) {
                continue;
            }
            for action in plan(&records, &self.rotation_rules(), now) {
                let (name, outcome) = match &action {
                    Action::GeneratePending {
                        activate_at,
                        reason,
                    } => (
                        "generate",
                        self.generate_key(chain, *activate_at, reason, now)
                            .map(|_| ()),
                    ),
                    Action::Activate { label } => {
                        ("activate", self.activate_key(&keys, label, now))
                    }
                    Action::Retire { label, reason } => {
                        ("retire", self.retire_key(&keys, label, reason, now))
                    }
                    Action::Destroy { label } => ("destroy", self.destroy_key(&keys, label, now)),
                };
                self.metrics
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
    pub(crate) fn generate_key(
        &self,
        chain: &str,
        activate_at: OffsetDateTime,
        reason: &str,
        now: OffsetDateTime,
    ) -> Result<String, String> {
        let keys = self.registry.keys().map_err(store_problem)?;
        let current = self.current();
        // The algorithm the chain signs with now (verifiers expect it).
        let algorithm = match chain {
            DS_CHAIN => current
                .keys
                .signers
                .last()
                .map_or(Algorithm::Es256, |s| s.signer.algorithm().key_algorithm()),
            AUDIT_CHAIN => current
                .keys
                .audit_keys
                .last()
                .and_then(|(_, label, _)| self.backend.find(label).ok())
                .map_or(Algorithm::Es256, |k| k.algorithm),
            _ => current
                .keys
                .status_keys
                .last()
                .and_then(|(_, label)| self.backend.find(label).ok())
                .map_or(Algorithm::Es256, |k| k.algorithm),
        };
        let mut random = [0u8; 3];
        openssl::rand::rand_bytes(&mut random).map_err(|e| e.to_string())?;
        let label = format!("{chain}-{}-{}", now.unix_timestamp(), hex(&random));
        if keys.iter().any(|k| k.record.label == label) {
            return Err(format!("label {label} is taken"));
        }
        let (public, certificate, not_after) = if chain == DS_CHAIN {
            let iaca = current
                .iaca
                .clone()
                .ok_or_else(|| "no IACA to certify a DS key".to_owned())?;
            let (der, facts, _) = self
                .metrics
                .hsm("generate_key", || {
                    ceremony::document_signer_in_token(
                        self.backend,
                        &self.pki_config,
                        &iaca.0,
                        &label,
                        algorithm,
                        now,
                    )
                })
                .map_err(|e| {
                    // The key may exist without its certificate: not left behind.
                    let _ = self.backend.destroy(&label);
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
                .metrics
                .hsm("generate_key", || {
                    self.backend.generate(&label, purpose, algorithm)
                })
                .map_err(|e| format!("generating {label}: {e}"))?;
            let public = info
                .public_key
                .ok_or_else(|| format!("{label} has no public key"))?;
            (public, None, no_certificate_end(now))
        };
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
        let mut decision = self.key_decision("keys.generate", "pending", &label, &kid, now);
        decision.rule = Some(format!("key {label}: {reason}"));
        match self.registry.add_key(&key, decision) {
            Ok(()) => {}
            // Refused: it must not linger in the token either.
            Err(StoreError::Conflict { rule }) => {
                let _ = self.backend.destroy(&label);
                return Err(format!("{rule}: a key is already pending"));
            }
            // The answer was lost, not necessarily the write: destroy the key
            // only if the registry really does not have it.
            Err(e) => {
                let recorded = self
                    .registry
                    .keys()
                    .map(|keys| keys.iter().any(|k| k.record.label == label));
                if recorded == Ok(false) {
                    let _ = self.backend.destroy(&label);
                }
                return Err(store_problem(e));
            }
        }
        tracing::info!(%label, %kid, activate_at = %activate_at, reason, "key generated, published until it signs");
        Ok(label)
    }

    fn state_of<'k>(keys: &'k [StoredKey], label: &str) -> Result<&'k StoredKey, String> {
        keys.iter()
            .find(|k| k.record.label == label)
            .ok_or_else(|| format!("no key {label}"))
    }

    /// Moves keys in the registry, each only forward in its lifecycle.
    fn move_keys(
        &self,
        moves: &[(String, KeyState, KeyState)],
        now: OffsetDateTime,
        decision: DecisionRecord,
    ) -> Result<(), String> {
        if let Some((label, from, to)) = moves.iter().find(|(_, from, to)| !allowed(*from, *to)) {
            return Err(format!(
                "key {label}: {} to {} is not a step of the lifecycle",
                from.as_str(),
                to.as_str()
            ));
        }
        self.registry
            .move_keys(moves, now, decision)
            .map_err(store_problem)
    }

    /// The pending key `label` signs from now on; the active one retires.
    pub(crate) fn activate_key(
        &self,
        keys: &[StoredKey],
        label: &str,
        now: OffsetDateTime,
    ) -> Result<(), String> {
        let key = Self::state_of(keys, label)?;
        // A key that cannot sign must not take over from one that can.
        let info = self
            .backend
            .find(label)
            .map_err(|e| format!("{label} is not usable in the token: {e}"))?;
        pkcs11_shim::prove_possession(self.backend, &info)
            .map_err(|e| format!("{label} cannot sign: {e}"))?;
        let mut moves = Vec::new();
        for old in keys
            .iter()
            .filter(|k| k.chain == key.chain && k.record.state == KeyState::Active)
        {
            moves.push((
                old.record.label.clone(),
                KeyState::Active,
                KeyState::Retired,
            ));
        }
        moves.push((label.to_owned(), KeyState::Pending, KeyState::Active));
        let decision = self.key_decision("keys.activate", "active", label, &key.kid, now);
        self.move_keys(&moves, now, decision)?;
        tracing::info!(%label, "key active");
        Ok(())
    }

    pub(crate) fn retire_key(
        &self,
        keys: &[StoredKey],
        label: &str,
        reason: &str,
        now: OffsetDateTime,
    ) -> Result<(), String> {
        let key = Self::state_of(keys, label)?;
        let mut decision = self.key_decision("keys.retire", "retired", label, &key.kid, now);
        decision.rule = Some(format!("key {label}: {reason}"));
        self.move_keys(
            &[(label.to_owned(), key.record.state, KeyState::Retired)],
            now,
            decision,
        )
    }

    /// Forgets a retired key: out of publication, then out of the token.
    pub(crate) fn destroy_key(
        &self,
        keys: &[StoredKey],
        label: &str,
        now: OffsetDateTime,
    ) -> Result<(), String> {
        let key = Self::state_of(keys, label)?;
        let decision = self.key_decision("keys.destroy", "destroyed", label, &key.kid, now);
        self.move_keys(
            &[(label.to_owned(), KeyState::Retired, KeyState::Destroyed)],
            now,
            decision,
        )?;
        match self.backend.destroy(label) {
            Ok(()) | Err(pkcs11_shim::Error::KeyNotFound { .. }) => Ok(()),
            Err(e) => Err(format!(
                "{label} is destroyed in the registry but the token refused: {e}"
            )),
        }
    }

    /// Emergency revocation: the key stops signing (here at once, on other
    /// nodes at their next round), its certificate goes on a new CRL, and
    /// what it signed changes status as the policy says. Returns the
    /// number of credentials changed.
    pub(crate) fn revoke_key(
        &self,
        label: &str,
        reason: &str,
        now: OffsetDateTime,
    ) -> Result<u64, String> {
        let keys = self.registry.keys().map_err(store_problem)?;
        let key = Self::state_of(&keys, label)?;
        let is_ds = key.chain == DS_CHAIN;
        let credentials = if is_ds {
            self.ds_revocation_target()
        } else {
            None
        };
        let revocation = KeyRevocation {
            label: label.to_owned(),
            reason: reason.to_owned(),
            at: now,
            credentials,
        };
        let mut decision = self.key_decision("keys.revoke", "revoked", label, &key.kid, now);
        decision.rule = Some(format!("key {label}: emergency revocation"));
        let changed = self
            .registry
            .revoke_key(&revocation, decision)
            .map_err(store_problem)?;
        self.status_changed();
        // Signing stops here before the CRL is even signed.
        self.refresh_keys(true).map_err(|e| e.0)?;
        // The acting node signs CRLs (one at a time, numbers that grow); on
        // another node the leader's next round does, as it checks the CRL
        // lists every revoked key.
        if is_ds && self.leader.load(Ordering::Relaxed) {
            self.publish_crl(now)?;
            self.refresh_keys(true).map_err(|e| e.0)?;
        }
        tracing::warn!(%label, changed, "key revoked");
        Ok(changed)
    }

    /// Signs a CRL listing every revoked key and stores it for all nodes.
    fn publish_crl(&self, now: OffsetDateTime) -> Result<(), String> {
        // Another CRL stored meanwhile (the lifecycle thread and a
        // revocation on this node, or a node that still thinks it leads):
        // read both again and sign what is now true.
        for _ in 0..CRL_ATTEMPTS {
            match self.try_publish_crl(now)? {
                CrlOutcome::Done => return Ok(()),
                CrlOutcome::Raced => {
                    tracing::info!("another CRL was stored meanwhile; signing again");
                }
            }
        }
        Err(format!(
            "the CRL was replaced {CRL_ATTEMPTS} times while this node signed one; the next round tries again"
        ))
    }

    fn try_publish_crl(&self, now: OffsetDateTime) -> Result<CrlOutcome, String> {
        // The CRL it replaces is read before the keys: one signed from an
        // older key list can then never replace one that lists more.
        let previous = self.registry.crl().map_err(store_problem)?;
        let keys = self.registry.keys().map_err(store_problem)?;
        let serials = revoked_serials(&keys).map_err(store_problem)?;
        let this_update =
            ceremony::next_crl_update(previous.as_deref(), now).map_err(|e| e.to_string())?;
        let Some(iaca) = self.current().iaca.clone() else {
            return if serials.is_empty() {
                Ok(CrlOutcome::Done) // no IACA yet, nothing to list
            } else {
                Err("revoked DS keys but no IACA loaded to sign their CRL".into())
            };
        };
        let pem = self
            .metrics
            .hsm("sign_crl", || {
                ceremony::crl_now(
                    self.backend,
                    &self.pki_config,
                    &iaca.0,
                    &serials,
                    this_update,
                )
            })
            .map_err(|e| format!("signing the CRL: {e}"))?;
        let decision = crate::store::DecisionRecord {
            rule: Some(format!(
                "CRL listing {} revoked DS certificate(s), thisUpdate {}",
                serials.len(),
                super::rfc3339(this_update)
            )),
            ..self.decision("dojangd", "pki.crl", "ok", &self.current().policy.hash, now)
        };
        // Stored only over the CRL its number follows.
        match self.registry.set_crl(&pem, previous.as_deref(), decision) {
            Ok(()) => {}
            Err(StoreError::Conflict { .. }) => return Ok(CrlOutcome::Raced),
            Err(e) => return Err(store_problem(e)),
        }
        // The file is a copy for `dojangctl` and people; the registry's is served.
        if let Err(e) = self.pki.write_crl(&pem) {
            tracing::warn!(error = %e, "writing the CRL file");
        }
        Ok(CrlOutcome::Done)
    }

    /// Re-signs the CRL when it does not list exactly the revoked keys (a
    /// revocation whose CRL failed, or raced another node's), or when it is
    /// past half its validity (verifiers refuse a DS certificate whose CRL
    /// expired).
    fn keep_crl_whole(&self, now: OffsetDateTime) -> Result<(), String> {
        let keys = self.registry.keys().map_err(store_problem)?;
        let mut wanted = revoked_serials(&keys).map_err(store_problem)?;
        wanted.sort();
        let stored = self.registry.crl().map_err(store_problem)?;
        let whole_and_fresh = stored
            .as_deref()
            .and_then(|pem| X509Crl::from_pem(pem.as_bytes()).ok())
            .is_some_and(|crl| {
                let mut listed: Vec<Vec<u8>> = crl
                    .get_revoked()
                    .map(|r| {
                        r.iter()
                            .filter_map(|e| e.serial_number().to_bn().ok().map(|bn| bn.to_vec()))
                            .collect()
                    })
                    .unwrap_or_default();
                listed.sort();
                let half = i64::from(self.pki_config.crl_validity_days) * 86_400 / 2;
                let fresh = crl.next_update().is_some_and(|next| {
                    openssl::asn1::Asn1Time::from_unix(now.unix_timestamp() + half)
                        .is_ok_and(|threshold| *next >= threshold)
                });
                listed == wanted && fresh
            });
        if whole_and_fresh {
            return Ok(());
        }
        self.publish_crl(now)
    }

    /// What a revoked DS key signed while its revocation committed (a
    /// request in flight, a node that had not taken it up yet) is moved like
    /// the rest, for a while after the revocation.
    fn sweep_revoked(&self, now: OffsetDateTime) -> Result<(), String> {
        let Some(to) = self.ds_revocation_target() else {
            return Ok(());
        };
        // Every 10 s: each sweep scans the credentials of the key.
        if let Ok(mut last) = self.last_sweep.lock() {
            if last.is_some_and(|at| now - at < SWEEP_EVERY) {
                return Ok(());
            }
            *last = Some(now);
        }
        let keys = self.registry.keys().map_err(store_problem)?;
        for key in keys.iter().filter(|k| k.chain == DS_CHAIN) {
            let Some((_, at)) = &key.revocation else {
                continue;
            };
            if now - *at > REVOCATION_SWEEP {
                continue;
            }
            let decision =
                self.key_decision("keys.revoke", to.as_str(), &key.record.label, &key.kid, now);
            let label = key.record.label.clone();
            let changed = self
                .registry
                .mark_signed_by(
                    &key.kid,
                    to,
                    Box::new(move |moved| crate::store::DecisionRecord {
                        rule: Some(format!(
                            "key {label}: {moved} more credentials signed during the revocation"
                        )),
                        ..decision.clone()
                    }),
                )
                .map_err(store_problem)?;
            if changed > 0 {
                self.status_changed();
            }
        }
        Ok(())
    }

    /// What the policy does to the credentials of a revoked DS key.
    fn ds_revocation_target(&self) -> Option<crate::store::CredentialState> {
        match self.current().policy.keys.on_ds_revocation {
            dojang_policies::DsRevocation::Revoke => Some(crate::store::CredentialState::Revoked),
            dojang_policies::DsRevocation::Suspend => {
                Some(crate::store::CredentialState::Suspended)
            }
            dojang_policies::DsRevocation::Keep => None,
        }
    }

    /// Keys the registry says are destroyed but the token still holds (the
    /// token refused, or the node stopped in between) are destroyed again.
    /// Keys the registry does not know are never touched.
    fn reconcile_destroyed(&self) {
        if let Ok(mut last) = self.last_reconcile.lock() {
            if last.is_some_and(|at| at.elapsed() < RECONCILE_EVERY) {
                return;
            }
            *last = Some(Instant::now());
        }
        let Ok(keys) = self.registry.keys() else {
            return;
        };
        for key in keys
            .iter()
            .filter(|k| k.record.state == KeyState::Destroyed)
        {
            if self.backend.find(&key.record.label).is_ok() {
                match self.backend.destroy(&key.record.label) {
                    Ok(()) => {
                        tracing::info!(label = %key.record.label, "destroyed key removed from the token")
                    }
                    Err(e) => {
                        tracing::warn!(label = %key.record.label, error = %e, "a destroyed key is still in the token")
                    }
                }
            }
        }
    }

    /// Counts a signature by `label` valid until `valid_until` (flushed to
    /// the registry each round).
    pub fn count_signature(&self, label: &str, valid_until: i64) {
        if let Ok(mut usage) = self.key_usage.lock() {
            // No allocation on the issuance path once the label is known.
            match usage.get_mut(label) {
                Some(entry) => {
                    entry.0 += 1;
                    entry.1 = entry.1.max(valid_until);
                }
                None => {
                    let _ = usage.insert(label.to_owned(), (1, valid_until));
                }
            }
        }
    }

    fn flush_key_usage(&self) {
        let pending: Vec<(String, (u64, i64))> = match self.key_usage.lock() {
            Ok(mut usage) => usage.drain().collect(),
            Err(_) => return,
        };
        for (label, (count, last)) in pending {
            if let Err(e) = self.registry.add_key_usage(&label, count, last) {
                tracing::warn!(error = %e, %label, "recording key usage; kept for the next round");
                if let Ok(mut usage) = self.key_usage.lock() {
                    let entry = usage.entry(label).or_insert((0, last));
                    entry.0 += count;
                    entry.1 = entry.1.max(last);
                }
            }
        }
    }
}
