//! [`KeyManager`]: the key lifecycle on this node. The registry's key
//! records are the truth every node reads; one node at a time (the holder
//! of the `keys` lease) acts on the plan [`crate::keys::lifecycle::plan`]
//! computes from them and the policy's rules; every node signs with the
//! key whose activation time has come, so nodes switch together without
//! talking. This file holds the manager's state and its round; building
//! views, moving keys and revocations have files of their own.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use time::OffsetDateTime;

use crate::config::{PkiConfig, ServiceKeys};
use crate::keys::lifecycle::RotationRules;
use crate::keys::view::{KeyView, fingerprint};
use crate::node::{LoadError, Node};
use crate::pki::PkiStore;
use crate::pki::profile::CertFacts;
use crate::policy::PolicyState;
use crate::status::changes::StatusChanges;
use crate::store::{DecisionRecord, IACA_DOCUMENT, StoreError, StoredKey};

/// The lease the acting node holds; it outlives a few missed ticks.
const LEASE: &str = "keys";
/// How long a key leaving the token waits for the signatures in progress.
const SIGNERS_DRAIN: Duration = Duration::from_secs(5);
/// How long the lifecycle rests after a failed action.
const LIFECYCLE_REST: Duration = Duration::from_secs(30);

pub(super) fn store_problem(e: StoreError) -> String {
    format!("registry: {e}")
}

/// The key lifecycle's state on this node.
pub struct KeyManager {
    pub(super) node: Node,
    pub(super) policy: Arc<PolicyState>,
    pub(super) statuses: StatusChanges,
    pub(super) labels: ServiceKeys,
    /// Days a signature stays valid: a DS certificate must outlast it.
    pub(super) signature_days: u32,
    /// The audit log's origin (the audit keys' note name).
    pub(super) audit_origin: String,
    pub(super) pki: PkiStore,
    pub(super) pki_config: PkiConfig,
    view: RwLock<Arc<KeyView>>,
    /// Views replaced since, while a request may still hold one.
    replaced: Mutex<Vec<std::sync::Weak<KeyView>>>,
    /// Bumped by every swap of the view.
    generation: AtomicU64,
    /// Signatures per key label since the last flush: (count, latest expiry).
    key_usage: Mutex<HashMap<String, (u64, i64)>>,
    /// Held from reading the registry's keys to swapping the view built
    /// from them, so an older view never replaces a newer one.
    key_swap: Mutex<()>,
    /// Held while this node moves keys (a round's plan, a ceremony's spare,
    /// an officers' revocation): a round never reads the registry between a
    /// revocation's record and the token's removal of the key, where a
    /// revoked key still in the token looks like a forged gap.
    key_moves: Mutex<()>,
    /// Whether this node held the `keys` lease at its last round.
    pub(super) leader: AtomicBool,
    /// The lifecycle rests after a failed action until then (no key pile-up
    /// while the HSM or the registry is in trouble).
    lifecycle_pause: Mutex<Option<Instant>>,
    /// When the token was last checked against the registry's retired
    /// and destroyed keys, and what that check found.
    pub(super) last_token_check: Mutex<Option<Instant>>,
    pub(super) token_report: Mutex<crate::keys::manager::token::TokenReport>,
    /// When a recent revocation's credentials were last swept.
    pub(super) last_sweep: Mutex<Option<OffsetDateTime>>,
    /// Revocation rows already refused (each is reported once).
    pub(super) refused_revocations: Mutex<std::collections::HashSet<String>>,
}

/// What the registry holds for a view, read at once.
pub(crate) struct Stored {
    pub(crate) keys: Vec<StoredKey>,
    pub(crate) crl: Option<String>,
    pub(crate) pool: Option<String>,
    pub(crate) rollovers: Option<String>,
}

impl Stored {
    /// What changes when any of it does.
    pub(crate) fn fingerprint(&self) -> String {
        let mut text = fingerprint(&self.keys, self.crl.as_deref(), self.pool.as_deref());
        if let Some(rollovers) = &self.rollovers {
            text.push_str(&format!(";roots:{}", rollovers.len()));
        }
        text
    }
}

/// What the key manager is built from.
pub struct KeySettings {
    /// Labels of the service's own keys.
    pub labels: ServiceKeys,
    /// `credential.signature_validity_days`.
    pub signature_days: u32,
    /// `server.audit.origin`.
    pub audit_origin: String,
    /// `[pki]`.
    pub pki: PkiConfig,
}

impl KeyManager {
    /// A manager with no view yet (the first reload builds it).
    pub fn new(
        node: Node,
        policy: Arc<PolicyState>,
        statuses: StatusChanges,
        settings: KeySettings,
    ) -> Self {
        KeyManager {
            node,
            policy,
            statuses,
            labels: settings.labels,
            signature_days: settings.signature_days,
            audit_origin: settings.audit_origin,
            pki: PkiStore::new(&settings.pki.dir),
            pki_config: settings.pki,
            view: RwLock::new(Arc::new(KeyView::empty())),
            replaced: Mutex::new(Vec::new()),
            generation: AtomicU64::new(0),
            key_usage: Mutex::new(HashMap::new()),
            key_swap: Mutex::new(()),
            key_moves: Mutex::new(()),
            leader: AtomicBool::new(false),
            lifecycle_pause: Mutex::new(None),
            last_token_check: Mutex::new(None),
            token_report: Mutex::new(Default::default()),
            last_sweep: Mutex::new(None),
            refused_revocations: Mutex::new(Default::default()),
        }
    }

    /// Who signs now and what verifiers fetch.
    pub fn view(&self) -> Arc<KeyView> {
        self.view
            .read()
            .map(|v| v.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }

    /// The `[pki]` table (officers' IACA ceremony uses it).
    pub fn pki_config(&self) -> &PkiConfig {
        &self.pki_config
    }

    /// Swaps of the view so far.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Replaces the view; status lists are signed again with whichever key
    /// signs now.
    pub(super) fn install_view(&self, view: KeyView) {
        let old = std::mem::replace(
            &mut *self.view.write().unwrap_or_else(PoisonError::into_inner),
            Arc::new(view),
        );
        if let Ok(mut replaced) = self.replaced.lock() {
            replaced.retain(|v| v.strong_count() > 0);
            replaced.push(Arc::downgrade(&old));
        }
        let _ = self.generation.fetch_add(1, Ordering::AcqRel);
        self.statuses.bump();
    }

    /// Waits (boundedly) until no request still signs with `label` through
    /// a view replaced since: its private half must not leave the token
    /// under a signature in progress (the request would fail instead of
    /// being answered and swept).
    pub(super) fn wait_for_signers(&self, label: &str) {
        let deadline = Instant::now() + SIGNERS_DRAIN;
        while Instant::now() < deadline {
            let in_use = self.replaced.lock().is_ok_and(|replaced| {
                replaced
                    .iter()
                    .filter_map(std::sync::Weak::upgrade)
                    .any(|v| v.signers.iter().any(|s| s.signer.label() == label))
            });
            if !in_use {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        tracing::warn!(%label, "requests still held the key after {SIGNERS_DRAIN:?}; removing it");
    }

    /// Rebuilds the view from the registry and the IACA (the PKI
    /// directory's on the first start), taking in keys from the PKI
    /// directory once; `commit` runs under the swap lock before the new
    /// view is installed, and an error from it keeps the old view.
    pub fn reload(
        &self,
        policy_hash: &str,
        now: OffsetDateTime,
        commit: impl FnOnce(&KeyView) -> Result<(), LoadError>,
    ) -> Result<(), LoadError> {
        let first = self.load_iaca(policy_hash, now)?.map(Arc::new);
        self.import_existing_keys(now)?;
        let _ordered = self.key_swap.lock().unwrap_or_else(PoisonError::into_inner);
        let stored = self.keys_and_crl()?;
        let roots = first
            .map(|first| self.trusted_roots(first, stored.rollovers.as_deref()))
            .unwrap_or_default();
        let view = self.key_view(&roots, stored)?;
        commit(&view)?;
        self.install_view(view);
        Ok(())
    }

    /// The start of a round: signatures counted, the lease taken or renewed;
    /// whether this node leads.
    pub fn tick(&self, lease_ms: i64) -> bool {
        self.flush_key_usage();
        let leader = self
            .node
            .registry
            .lease(LEASE, &self.node.id, lease_ms)
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "key lease");
                false
            });
        self.leader.store(leader, Ordering::Relaxed);
        leader
    }

    /// Whether officers had a root generated on another node that this
    /// node has not loaded yet.
    pub fn iaca_waiting(&self) -> bool {
        self.view().iaca.is_none()
            && matches!(self.node.registry.document(IACA_DOCUMENT), Ok(Some(_)))
    }

    /// The leading node's duties, each on its own: a failing rotation must
    /// not hold up the CRL or a revocation's sweep.
    pub fn lead(&self, now: OffsetDateTime) {
        if !self.resting() {
            let _moving = self.moving_keys();
            if let Err(e) = self.act_on_plan(now) {
                tracing::warn!(error = %e, "key rotation failed; resting {LIFECYCLE_REST:?}, then retried");
                self.rest();
            }
        }
        if let Err(e) = self.keep_pool(now) {
            tracing::warn!(error = %e, "topping up the DS spare pool failed; retried next round");
        }
        if let Err(e) = self.keep_crl_whole(now) {
            tracing::warn!(error = %e, "keeping the CRL whole failed; retried next round");
        }
        if let Err(e) = self.sweep_revoked(now) {
            tracing::warn!(error = %e, "sweeping a revoked key's credentials failed; retried");
        }
        if let Err(e) = self.certify_status_keys_online(now) {
            tracing::warn!(error = %e, "certifying a status-list key failed; retried next round");
        }
    }

    /// The rotation rules (every chain) from the policy and the configuration.
    pub fn rotation_rules(&self) -> RotationRules {
        let keys = self.policy.current().keys;
        RotationRules {
            every: keys.rotate_every,
            max_signatures: keys.max_signatures,
            prepublish: keys.prepublish,
            min_cert_remaining: time::Duration::days(i64::from(self.signature_days)),
            retention_margin: keys.retention_margin,
        }
    }

    /// A decision about key `label` (`kid`) by this node.
    pub fn key_decision(
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
            ..self
                .node
                .decision("dojangd", action, outcome, &self.policy.current().hash, now)
        }
    }

    /// This node's `ok` decision `action`, with its rule: what the pool,
    /// ceremony and rollover steps record.
    pub(super) fn done(&self, action: &str, rule: String, now: OffsetDateTime) -> DecisionRecord {
        DecisionRecord {
            rule: Some(rule),
            ..self
                .node
                .decision("dojangd", action, "ok", &self.policy.current().hash, now)
        }
    }

    /// The registry's key records, CRL, spare pool and rollovers, read
    /// for a view.
    pub(super) fn keys_and_crl(&self) -> Result<Stored, LoadError> {
        let keys = self
            .node
            .registry
            .keys()
            .map_err(|e| LoadError(store_problem(e)))?;
        let crl = self
            .node
            .registry
            .crl()
            .map_err(|e| LoadError(store_problem(e)))?;
        let pool = self
            .node
            .registry
            .document(crate::store::POOL_DOCUMENT)
            .map_err(|e| LoadError(store_problem(e)))?;
        let rollovers = self
            .node
            .registry
            .document(crate::store::ROLLOVER_DOCUMENT)
            .map_err(|e| LoadError(store_problem(e)))?;
        Ok(Stored {
            keys,
            crl,
            pool,
            rollovers,
        })
    }

    /// This node's one key move at a time (see `key_moves`).
    pub(super) fn moving_keys(&self) -> std::sync::MutexGuard<'_, ()> {
        self.key_moves
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn resting(&self) -> bool {
        self.lifecycle_pause
            .lock()
            .map(|p| p.is_some_and(|until| Instant::now() < until))
            .unwrap_or(false)
    }

    /// Ends a rest early: new information (a ceremony's certificates) may
    /// let the failed action succeed now.
    pub(super) fn wake(&self) {
        if let Ok(mut p) = self.lifecycle_pause.lock() {
            *p = None;
        }
    }

    fn rest(&self) {
        if let Ok(mut p) = self.lifecycle_pause.lock() {
            *p = Some(Instant::now() + LIFECYCLE_REST);
        }
    }

    /// Re-reads the registry's keys; swaps the view if anything changed (or
    /// always, with `force`). A view built while the token did not answer
    /// is built again each round until it does.
    pub fn refresh_keys(&self, force: bool) -> Result<(), LoadError> {
        let _ordered = self.key_swap.lock().unwrap_or_else(PoisonError::into_inner);
        let stored = self.keys_and_crl()?;
        let current = self.view();
        let unchanged = stored.fingerprint() == current.fingerprint;
        if !force && unchanged && !current.token_unanswered {
            return Ok(());
        }
        let roots = current
            .roots
            .first()
            .map(|first| self.trusted_roots(first.clone(), stored.rollovers.as_deref()))
            .unwrap_or_default();
        let view = self.key_view(&roots, stored)?;
        // Still unanswered and nothing else learnt: no swap, so readiness
        // and the status lists are not churned every round of an outage.
        if !force && unchanged && view.token_unanswered && view.same_keys(&current) {
            return Ok(());
        }
        self.install_view(view);
        Ok(())
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
            if let Err(e) = self.node.registry.add_key_usage(&label, count, last) {
                tracing::warn!(error = %e, %label, "recording key usage; kept for the next round");
                if let Ok(mut usage) = self.key_usage.lock() {
                    let entry = usage.entry(label).or_insert((0, last));
                    entry.0 += count;
                    entry.1 = entry.1.max(last);
                }
            }
        }
    }

    /// The IACA certificate: the PKI directory's (`dojangctl pki init`),
    /// else the one officers had the daemon generate, else none yet (the
    /// daemon runs, not ready, until officers approve one).
    pub(crate) fn load_iaca(
        &self,
        policy_hash: &str,
        now: OffsetDateTime,
    ) -> Result<Option<(Vec<u8>, CertFacts)>, LoadError> {
        let generated = self
            .node
            .registry
            .document(IACA_DOCUMENT)
            .map_err(|e| LoadError(format!("registry: {e}")))?;
        if self.pki.iaca_path().exists() {
            let (der, facts) = self
                .pki
                .iaca()
                .map_err(|e| LoadError(format!("IACA: {e}")))?;
            // One root for every node: the first file seen is kept in the
            // registry, and a different one (a second `pki init`, one
            // officers had generated, or another node's stored at the same
            // time) is refused, not silently preferred.
            let is_this_root = |pem: &str| {
                crate::pki::cert_der_from_pem(pem.as_bytes()).ok().as_ref() == Some(&der)
            };
            let not_this_root = || {
                LoadError(format!(
                    "{} is not the IACA in the registry (the one the DS certificates chain to): put that one back",
                    self.pki.iaca_path().display()
                ))
            };
            match &generated {
                Some(pem) if !is_this_root(pem) => return Err(not_this_root()),
                Some(_) => {}
                None => {
                    let pem = crate::pki::cert_pem(&der).map_err(|e| LoadError(e.to_string()))?;
                    let decision = DecisionRecord {
                        rule: Some(crate::pki::iaca_rule(&der, facts.not_after)),
                        ..self
                            .node
                            .decision("dojangd", "pki.iaca", "ok", policy_hash, now)
                    };
                    let stored = self
                        .node
                        .registry
                        .set_document_if_absent(IACA_DOCUMENT, &pem, decision)
                        .map_err(|e| LoadError(format!("registry: {e}")))?;
                    if !stored
                        && !self
                            .node
                            .registry
                            .document(IACA_DOCUMENT)
                            .map_err(|e| LoadError(format!("registry: {e}")))?
                            .is_some_and(|winner| is_this_root(&winner))
                    {
                        return Err(not_this_root());
                    }
                }
            }
            return Ok(Some((der, facts)));
        }
        let Some(pem) = generated else {
            return Ok(None);
        };
        if self.pki_config.offline() {
            // The root ceremony writes the file; the registry's copy is a
            // row, and a row does not make a root (an insider could name
            // their own). Copy iaca.pem to every node's pki.dir.
            return Err(LoadError(format!(
                "{} is missing: with the IACA offline every node needs the root's file (copy it from the root ceremony)",
                self.pki.iaca_path().display()
            )));
        }
        let der = crate::pki::cert_der_from_pem(pem.as_bytes())
            .map_err(|e| LoadError(format!("IACA in the registry: {e}")))?;
        let facts = crate::pki::profile::check_iaca(&der)
            .map_err(|e| LoadError(format!("IACA in the registry: {e}")))?;
        Ok(Some((der, facts)))
    }
}
