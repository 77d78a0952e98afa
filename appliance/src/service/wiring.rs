//! [`Service`]: the owners of one node, wired together. It holds no state
//! of its own beyond the readiness cache: the policy ([`PolicyState`]),
//! the keys ([`KeyManager`]), the status lists ([`StatusPublisher`]), the
//! audit log ([`AuditTrail`]), issuance ([`Issuer`]) and officer
//! operations ([`Officers`]) each own theirs. Everything here is
//! synchronous and runs on the signing pool or the daemon's threads; the
//! HTTP layer never blocks on it.

use std::sync::Arc;

use pkcs11_shim::{KeyBackend, KeyPurpose};
use time::OffsetDateTime;

use super::readiness::{Readiness, ReadinessProbe};
use super::reload::Reloader;
use crate::audit::trail::AuditTrail;
use crate::config::{CredentialConfig, PkiConfig, ServerConfig};
use crate::issuance::{Current, Issuer};
use crate::keys::lifecycle::KeyState;
use crate::keys::manager::{KeyManager, KeySettings};
use crate::metrics::Metrics;
use crate::node::{LoadError, Node};
use crate::officers::Officers;
use crate::policy::PolicyState;
use crate::status::{StatusChanges, StatusPublisher};
use crate::store::Registry;
use crate::wallet::Wallet;

/// One node's owners.
pub struct Service {
    /// The handles every owner shares.
    pub node: Node,
    /// The policy in force.
    pub policy: Arc<PolicyState>,
    /// The keys.
    pub keys: Arc<KeyManager>,
    /// Status positions and signed lists.
    pub status: Arc<StatusPublisher>,
    /// The audit log.
    pub audit: AuditTrail,
    /// Issuance.
    pub issuer: Issuer,
    /// Officer operations.
    pub officers: Officers,
    /// OpenID4VCI issuance to wallets, if `[server.wallet]` is set.
    pub wallet: Option<Wallet>,
    reloader: Arc<Reloader>,
    probe: ReadinessProbe,
    /// How long idempotency rows are kept, and when they were last purged.
    idempotency_ttl: i64,
    last_purge: std::sync::atomic::AtomicI64,
}

impl Service {
    /// Builds the service; the policy must load, a missing DS key only
    /// makes the daemon not ready.
    pub fn new(
        backend: &'static dyn KeyBackend,
        registry: Arc<dyn Registry>,
        metrics: Arc<Metrics>,
        server: &ServerConfig,
        credential: CredentialConfig,
        pki_config: PkiConfig,
    ) -> Result<Self, LoadError> {
        let node = Node {
            backend,
            registry,
            metrics,
            id: server.node_id.clone(),
        };
        let changes = StatusChanges::default();
        let policy = Arc::new(PolicyState::new(
            node.clone(),
            server.policy.clone(),
            server.policy_anchor.clone(),
        )?);
        let settings = KeySettings {
            labels: server.keys.clone(),
            signature_days: credential.signature_validity_days,
            audit_origin: server.audit.origin.clone(),
            pki: pki_config,
        };
        let keys = Arc::new(KeyManager::new(
            node.clone(),
            policy.clone(),
            changes.clone(),
            settings,
        ));
        let status = Arc::new(StatusPublisher::new(
            node.clone(),
            keys.clone(),
            changes,
            server.public.base_url.clone(),
            server.public.status_token_lifetime_s,
        ));
        let reloader = Arc::new(Reloader::new(node.clone(), policy.clone(), keys.clone()));
        let probe = ReadinessProbe::new(node.clone(), policy.clone(), keys.clone())
            .with_client_crls(server.api.client_crls.clone());
        let service = Service {
            audit: AuditTrail::new(node.clone(), keys.clone(), server.audit.clone())?,
            issuer: Issuer::new(
                node.clone(),
                policy.clone(),
                keys.clone(),
                status.clone(),
                credential,
                &server.keys,
            ),
            officers: Officers::new(node.clone(), policy.clone(), keys.clone(), reloader.clone()),
            wallet: server
                .wallet
                .clone()
                .map(Wallet::new)
                .transpose()
                .map_err(|e| LoadError(format!("server.wallet.card_cas: {e}")))?,
            node,
            policy,
            keys,
            status,
            probe,
            reloader,
            idempotency_ttl: i64::try_from(server.limits.idempotency_ttl_s).unwrap_or(i64::MAX),
            last_purge: std::sync::atomic::AtomicI64::new(0),
        };
        service.check_hmac_key(&server.keys.pseudonym, KeyPurpose::Pseudonym)?;
        service.check_pseudonym_key(
            &server.keys.pseudonym,
            server.keys.pseudonym_check.as_deref(),
        )?;
        service.check_hmac_key(&server.keys.response_seal, KeyPurpose::ResponseSeal)?;
        service.reload(OffsetDateTime::now_utc())?;
        service.record_start()?;
        Ok(service)
    }

    /// The token's pseudonym key must be the one the registry's holders
    /// were recognised with: its check value against the configuration's
    /// pin (what a database writer cannot change) and the registry's
    /// record (made by the first start, audited). Another key would take
    /// every holder for a new one (a second live ID, a second free copy).
    fn check_pseudonym_key(&self, label: &str, pinned: Option<&str>) -> Result<(), LoadError> {
        use crate::store::PSEUDONYM_CHECK_DOCUMENT as DOCUMENT;
        let held = crate::issuance::pseudonym_key_check(self.node.backend, label)
            .map_err(|e| LoadError(format!("pseudonym key {label:?}: {e}")))?;
        match pinned {
            Some(pinned) if pinned != held => {
                return Err(LoadError(format!(
                    "the token's pseudonym key {label:?} (check value {held}) is not the key \
                     server.keys.pseudonym_check pins ({pinned}): restore the key from its backup \
                     (docs/disaster-recovery.md)"
                )));
            }
            Some(_) => {}
            None => tracing::warn!(
                check_value = %held,
                "server.keys.pseudonym_check is not set: pin the pseudonym key's check value \
                 (a database writer could otherwise remove the registry's record)"
            ),
        }
        let registry = &self.node.registry;
        let read = || {
            registry
                .document(DOCUMENT)
                .map_err(|e| LoadError(format!("reading the pseudonym key's check value: {e}")))
        };
        let recorded = match read()? {
            Some(recorded) => recorded,
            None => {
                let decision = crate::store::DecisionRecord {
                    rule: Some(format!("pseudonym key check value {held}")),
                    ..self.node.decision(
                        "dojangd",
                        "keys.pseudonym_check",
                        "ok",
                        &self.policy.current().hash,
                        OffsetDateTime::now_utc(),
                    )
                };
                let _ = registry
                    .set_document_if_absent(DOCUMENT, &held, decision)
                    .map_err(|e| {
                        LoadError(format!("recording the pseudonym key's check value: {e}"))
                    })?;
                // Another node may have recorded its own first.
                read()?.unwrap_or_default()
            }
        };
        if recorded != held {
            return Err(LoadError(format!(
                "the token's pseudonym key {label:?} (check value {held}) is not the key this \
                 registry's holders were recognised with ({recorded}): it would take every holder \
                 for a new one. Restore the key from its backup (docs/disaster-recovery.md)"
            )));
        }
        Ok(())
    }

    /// The pseudonym and response-seal keys must be there from the start.
    /// (The status-list key is checked when first imported: later it
    /// rotates, and the configured label may be long destroyed.)
    fn check_hmac_key(&self, label: &str, purpose: KeyPurpose) -> Result<(), LoadError> {
        let key = self.node.backend.find(label).map_err(|e| {
            LoadError(format!(
                "key {label:?}: {e} (make it with: dojangctl keys generate --label {label} --purpose {purpose} --alg HS256)"
            ))
        })?;
        if key.purpose != purpose {
            return Err(LoadError(format!(
                "key {label:?} is a {} key, not a {purpose} key",
                key.purpose
            )));
        }
        Ok(())
    }

    fn record_start(&self) -> Result<(), LoadError> {
        let start = self.node.decision(
            "dojangd",
            "start",
            "ok",
            &self.policy.current().hash,
            OffsetDateTime::now_utc(),
        );
        self.node
            .registry
            .record(start, None)
            .map_err(|e| LoadError(format!("writing the audit log: {e}")))
    }

    /// Whether this node can serve now (probed at most once a second),
    /// and whether the latest checkpoint has its witnesses' quorum.
    pub fn readiness(&self) -> Readiness {
        let mut readiness = self.probe.readiness();
        if let Some((ok, detail)) = self.audit.witness_status() {
            readiness.ready &= ok;
            readiness.checks.push(super::readiness::Check {
                name: "audit_witnesses",
                ok,
                detail,
            });
        }
        readiness
    }

    /// The policy and keys in force.
    pub fn current(&self) -> Current {
        self.issuer.current()
    }

    /// Re-reads the policy, the IACA and the registry's keys (importing the
    /// PKI directory's on the first start). A bad policy is refused and the
    /// old state stays.
    pub fn reload(&self, now: OffsetDateTime) -> Result<(), LoadError> {
        self.reloader.reload_now(now)
    }

    /// One round of the key lifecycle: count signatures, and, if this node
    /// holds the lease, act on the plan, keep the CRL whole and fresh,
    /// finish revocations, close approved proposals left unfinished, and
    /// count retired keys the token still holds; then take up any change
    /// another node made.
    pub fn keys_tick(&self, now: OffsetDateTime, lease_ms: i64) {
        let leader = self.keys.tick(lease_ms);
        // A root officers had generated on another node.
        if self.keys.iaca_waiting()
            && let Err(e) = self.reload(now)
        {
            tracing::warn!(error = %e.0, "loading the IACA from the registry");
        }
        if leader {
            self.keys.lead(now);
            self.officers.close_interrupted(now);
            self.keys.check_token_against_registry(now);
            self.purge_idempotency(now);
        }
        if let Err(e) = self.keys.refresh_keys(false) {
            tracing::warn!(error = %e.0, "reloading keys failed; the current ones stay");
        }
        self.follow_adopted_policy(now);
    }

    /// Deletes expired idempotency rows (sealed answers, portraits
    /// included), in batches, at most every few seconds.
    fn purge_idempotency(&self, now: OffsetDateTime) {
        use std::sync::atomic::Ordering;
        const EVERY: i64 = 5;
        const BATCH: u64 = 10_000;
        let t = now.unix_timestamp();
        if t - self.last_purge.load(Ordering::Relaxed) < EVERY {
            return;
        }
        self.last_purge.store(t, Ordering::Relaxed);
        match self
            .node
            .registry
            .purge_idempotency(t - self.idempotency_ttl, BATCH)
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(rows = n, "expired idempotency answers deleted"),
            Err(e) => tracing::warn!(error = %e, "purging idempotency answers; retried"),
        }
    }

    /// Loads the policy file again if officers adopted another one than
    /// this node runs (a change approved on any node).
    fn follow_adopted_policy(&self, now: OffsetDateTime) {
        let Some((adopted, first)) = self.policy.due_to_follow() else {
            return;
        };
        match self.reload(now) {
            Ok(()) => tracing::info!(sha256 = %adopted, "loaded the policy officers adopted"),
            Err(e) if first => {
                tracing::warn!(error = %e.0, "officers adopted another policy than this node's file")
            }
            Err(_) => {}
        }
    }

    /// Records a stop or reload of this node, or what its listeners
    /// loaded (`detail`: fingerprints, never paths).
    pub fn record_event(&self, action: &str, outcome: &str, detail: Option<String>) {
        let decision = crate::store::DecisionRecord {
            rule: detail,
            ..self.node.decision(
                "dojangd",
                action,
                outcome,
                &self.policy.current().hash,
                OffsetDateTime::now_utc(),
            )
        };
        if let Err(e) = self.node.registry.record(decision, None) {
            tracing::error!(error = %e, action, "cannot write the audit log");
        }
    }

    /// Refreshes the gauges that describe state, for a scrape.
    pub fn refresh_gauges(&self) {
        let _ = self.readiness();
        let (registry, metrics) = (&self.node.registry, &self.node.metrics);
        let now = OffsetDateTime::now_utc();
        if let Ok(keys) = registry.keys() {
            // DS keys only (other chains have no certificate to expire), and
            // only those still signing: a retired key's series goes.
            metrics.ds_expiry_seconds.reset();
            for k in keys.iter().filter(|k| {
                k.chain == crate::store::DS_CHAIN
                    && !k.record.revoked
                    && matches!(k.record.state, KeyState::Pending | KeyState::Active)
            }) {
                metrics
                    .ds_expiry_seconds
                    .with_label_values(&[&k.record.label])
                    .set((k.record.cert_not_after - now).whole_seconds());
            }
        }
        if let Ok((used, quota)) = registry.free_quota() {
            metrics
                .free_quota_remaining
                .set(quota.saturating_sub(used) as i64);
        }
        if let Ok(n) = registry.decision_count() {
            metrics.audit_entries.set(n as i64);
        }
        let upkeep = registry.upkeep();
        metrics
            .store
            .observe(upkeep.grouped_issuances, upkeep.wal_restarts);
    }
}
