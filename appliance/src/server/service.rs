//! The daemon's state behind the listeners: the key backend, the registry,
//! and what SIGHUP swaps atomically (the policy, the DS signer and the
//! documents verifiers fetch). Everything here is synchronous and runs on
//! the signing pool; the HTTP layer never blocks on it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use dojang_policies::Policy;
use pkcs11_shim::{KeyBackend, KeyPurpose, PublicKey};
use serde_json::json;
use time::OffsetDateTime;

use super::key_lifecycle::KeyView;
use super::metrics::Metrics;
use super::ratelimit::RateCounter;
use crate::audit::checkpoint::Checkpoint;
use crate::config::CredentialConfig;
use crate::config::{AuditSettings, ServerConfig, ServiceKeys};
use crate::credential::DocumentSigner;
use crate::keys::lifecycle::KeyState;
use crate::pki::profile::CertFacts;
use crate::pki::{PkiConfig, PkiStore};
use crate::refusal::Refusal;
use crate::status::{StatusList, sign_token};
use crate::store::{
    DecisionRecord, IACA_DOCUMENT, POLICY_DOCUMENT, Registry, STATUS_LIST_SIZE, StatusRange,
};

/// Lists beyond this are never asked of the store (a list holds 2^20
/// credentials: this is over a billion).
const MAX_STATUS_LIST: u32 = 1024;
/// Status-list indexes reserved from the registry at a time.
const STATUS_BLOCK: u64 = 256;
/// Seconds a status-list token is valid; verifiers may cache it for `TTL`.
const STATUS_TOKEN_LIFETIME: i64 = 3600;
const STATUS_TOKEN_TTL: u64 = 300;
/// A cached token is re-signed after this long even if nothing changed
/// (another node sharing the registry may have changed it).
const STATUS_TOKEN_REFRESH: Duration = Duration::from_secs(30);

/// What SIGHUP replaces as a whole.
pub struct Current {
    /// The issuance policy.
    pub policy: Arc<Policy>,
    /// Signers and published documents from the registry's keys (also
    /// swapped on its own when the keys change).
    pub keys: Arc<KeyView>,
    /// IACA certificate (PEM), once there is one.
    pub iaca_pem: Option<Vec<u8>>,
    /// IACA certificate (DER) and what the profile check read off it.
    pub iaca: Option<Arc<(Vec<u8>, CertFacts)>>,
}

impl Current {
    /// The DS key that signs at `now`.
    pub fn signer(&self, now: OffsetDateTime) -> Result<&Arc<DocumentSigner<'static>>, String> {
        self.keys.signer_at(now).ok_or_else(|| {
            let mut why = vec!["no DS key can sign now".to_owned()];
            why.extend(self.keys.revoked.iter().map(|l| format!("{l} revoked")));
            why.extend(self.keys.problems.iter().cloned());
            why.join("; ")
        })
    }
}

struct CachedToken {
    /// `None`: the list has no credential (cached too, so unknown lists
    /// cost no database read each time).
    token: Option<Arc<str>>,
    generation: u64,
    signed: Instant,
    exp: i64,
}

/// The service.
pub struct Service {
    pub(crate) backend: &'static dyn KeyBackend,
    pub(crate) registry: Arc<dyn Registry>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) credential: CredentialConfig,
    pub(crate) keys: ServiceKeys,
    pub(crate) node_id: String,
    pub(crate) rate: RateCounter,
    pub(crate) audit: super::audit_log::AuditLog,
    audit_settings: AuditSettings,
    public_base: String,
    policy_path: PathBuf,
    pub(crate) pki: PkiStore,
    pub(crate) pki_config: PkiConfig,
    /// Signatures per key label since the last flush: (count, latest expiry).
    pub(crate) key_usage: Mutex<HashMap<String, (u64, i64)>>,
    /// Held from reading the registry's keys to swapping the view built
    /// from them, so an older view never replaces a newer one.
    pub(crate) key_swap: Mutex<()>,
    /// Whether this node held the `keys` lease at its last round.
    pub(crate) leader: std::sync::atomic::AtomicBool,
    /// The lifecycle rests after a failed action until then (no key pile-up
    /// while the HSM or the registry is in trouble).
    pub(crate) lifecycle_pause: Mutex<Option<Instant>>,
    /// When destroyed keys were last checked gone from the token.
    pub(crate) last_reconcile: Mutex<Option<Instant>>,
    /// When a recent revocation's credentials were last swept.
    pub(crate) last_sweep: Mutex<Option<OffsetDateTime>>,
    /// The adopted policy this node last tried to load, and when.
    policy_follow: Mutex<Option<(String, Instant)>>,
    /// The adopted policy's hash as last read from the registry.
    adopted_policy: RwLock<Option<String>>,
    current: RwLock<Arc<Current>>,
    statuses: Mutex<Option<(StatusRange, u64)>>,
    status_generation: AtomicU64,
    status_tokens: Mutex<HashMap<u32, CachedToken>>,
    /// One status list signed at a time: concurrent misses wait and share it.
    status_signing: Mutex<()>,
    readiness: Mutex<ReadinessCache>,
}

/// The last readiness answer, and when a change last made answers stale.
#[derive(Default)]
struct ReadinessCache {
    answer: Option<(Instant, Readiness)>,
    stale_since: Option<Instant>,
}

/// One readiness check.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Check {
    /// `key_backend`, `store`, `signing_key`.
    pub name: &'static str,
    /// Passed?
    pub ok: bool,
    /// Short detail (no secrets).
    pub detail: String,
}

/// The readiness verdict.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Readiness {
    /// This node.
    pub node: String,
    /// All checks passed.
    pub ready: bool,
    /// Each check.
    pub checks: Vec<Check>,
}

/// An error starting or reloading.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct LoadError(pub String);

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
        let audit = super::audit_log::AuditLog::new(&server.audit.origin).map_err(LoadError)?;
        let service = Service {
            audit,
            audit_settings: server.audit.clone(),
            backend,
            registry,
            metrics,
            credential,
            keys: server.keys.clone(),
            node_id: server.node_id.clone(),
            rate: RateCounter::default(),
            public_base: server.public.base_url.clone(),
            policy_path: server.policy.clone(),
            pki: PkiStore::new(&pki_config.dir),
            pki_config,
            key_usage: Mutex::new(HashMap::new()),
            key_swap: Mutex::new(()),
            leader: std::sync::atomic::AtomicBool::new(false),
            lifecycle_pause: Mutex::new(None),
            last_reconcile: Mutex::new(None),
            last_sweep: Mutex::new(None),
            policy_follow: Mutex::new(None),
            adopted_policy: RwLock::new(None),
            current: RwLock::new(Arc::new(Current {
                policy: Arc::new(
                    Policy::parse("(none)", dojang_policies::SHIPPED_POLICY)
                        .map_err(|e| LoadError(e.to_string()))?,
                ),
                keys: Arc::new(KeyView {
                    signers: Vec::new(),
                    status_keys: Vec::new(),
                    audit_keys: Vec::new(),
                    audit_cosigners: Vec::new(),
                    problems: vec!["not loaded".into()],
                    jwks: Vec::new(),
                    ds_pem: HashMap::new(),
                    crl_pem: None,
                    revoked: Vec::new(),
                    fingerprint: String::new(),
                }),
                iaca_pem: None,
                iaca: None,
            })),
            statuses: Mutex::new(None),
            status_generation: AtomicU64::new(0),
            status_tokens: Mutex::new(HashMap::new()),
            status_signing: Mutex::new(()),
            readiness: Mutex::new(ReadinessCache::default()),
        };
        service.check_service_keys()?;
        service.reload(OffsetDateTime::now_utc())?;
        let start = service.decision(
            "dojangd",
            "start",
            "ok",
            &service.current().policy.hash,
            OffsetDateTime::now_utc(),
        );
        service
            .registry
            .record(start, None)
            .map_err(|e| LoadError(format!("writing the audit log: {e}")))?;
        Ok(service)
    }

    /// The pseudonym key must be there from the start. (The status-list key
    /// is checked when first imported: later it rotates, and the configured
    /// label may be long destroyed.)
    fn check_service_keys(&self) -> Result<(), LoadError> {
        let label = &self.keys.pseudonym;
        let key = self
            .backend
            .find(label)
            .map_err(|e| LoadError(format!("key {label:?}: {e}")))?;
        if key.purpose != KeyPurpose::Pseudonym {
            return Err(LoadError(format!(
                "key {label:?} is a {} key, not a pseudonym key",
                key.purpose
            )));
        }
        Ok(())
    }

    /// The state SIGHUP swaps.
    pub fn current(&self) -> Arc<Current> {
        self.current
            .read()
            .map(|c| c.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }

    /// Re-reads the policy, the IACA and the registry's keys (importing
    /// the PKI directory's on the first start). A bad policy is refused and
    /// the old state stays.
    pub fn reload(&self, now: OffsetDateTime) -> Result<(), LoadError> {
        let text = std::fs::read_to_string(&self.policy_path)
            .map_err(|e| LoadError(format!("{}: {e}", self.policy_path.display())))?;
        let policy = Policy::parse(&self.policy_path.display().to_string(), &text)
            .map_err(|e| LoadError(e.to_string()))?;
        self.check_policy_adopted(&policy, now)?;
        self.keep_policy_text(&policy, &text, now);
        let iaca = self.load_iaca(&policy.hash, now)?.map(Arc::new);
        self.import_existing_keys(now)?;
        let _ordered = self
            .key_swap
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (keys, crl) = self.keys_and_crl()?;
        let view = self.key_view(iaca.as_deref(), &keys, crl)?;
        let next = Current {
            policy: Arc::new(policy),
            keys: Arc::new(view),
            iaca_pem: iaca
                .as_ref()
                .map(|i| crate::pki::cert_pem(&i.0).map(String::into_bytes))
                .transpose()
                .map_err(|e| LoadError(format!("IACA: {e}")))?,
            iaca,
        };
        if let Err(e) = next.signer(now) {
            tracing::warn!(error = %e, "no DS key can sign: issuance refused until one is ready");
        }
        // The one step that can fail comes before the swap: all or nothing.
        self.registry
            .set_free_quota(next.policy.free_quota)
            .map_err(|e| LoadError(format!("setting the free quota: {e}")))?;
        self.swap(|_| next);
        Ok(())
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
                        rule: Some(format!(
                            "IACA from {}, valid until {}",
                            self.pki.iaca_path().display(),
                            super::rfc3339(facts.not_after)
                        )),
                        ..self.decision("dojangd", "pki.iaca", "ok", policy_hash, now)
                    };
                    let stored = self
                        .registry
                        .set_document_if_absent(IACA_DOCUMENT, &pem, decision)
                        .map_err(|e| LoadError(format!("registry: {e}")))?;
                    if !stored
                        && !self
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
        let der = crate::pki::cert_der_from_pem(pem.as_bytes())
            .map_err(|e| LoadError(format!("IACA in the registry: {e}")))?;
        let facts = crate::pki::profile::check_iaca(&der)
            .map_err(|e| LoadError(format!("IACA in the registry: {e}")))?;
        Ok(Some((der, facts)))
    }

    /// A policy file is loaded only if officers adopted it (its SHA-256 is
    /// the registry's); the first start adopts the file it finds.
    fn check_policy_adopted(&self, policy: &Policy, now: OffsetDateTime) -> Result<(), LoadError> {
        let adopted = self
            .registry
            .document(POLICY_DOCUMENT)
            .map_err(|e| LoadError(format!("registry: {e}")))?;
        let adopted = match adopted {
            Some(hash) => Some(hash),
            // First start: the first node to get here adopts its file; a
            // node starting with it reads back what won.
            None => {
                let decision = DecisionRecord {
                    rule: Some(format!(
                        "policy {} {}: first start",
                        policy.name, policy.version
                    )),
                    ..self.decision("dojangd", "policy.adopt", "ok", &policy.hash, now)
                };
                let _ = self
                    .registry
                    .set_document_if_absent(POLICY_DOCUMENT, &policy.hash, decision)
                    .map_err(|e| LoadError(format!("registry: {e}")))?;
                self.registry
                    .document(POLICY_DOCUMENT)
                    .map_err(|e| LoadError(format!("registry: {e}")))?
            }
        };
        self.remember_adopted(adopted.clone());
        match adopted {
            Some(hash) if hash == policy.hash => Ok(()),
            Some(hash) => Err(LoadError(format!(
                "policy file {} has SHA-256 {}, but officers adopted {hash}: restore the adopted file \
                 (dojangctl policy adopted --out FILE), or an officer proposes this one \
                 (dojangctl policy propose FILE) and another approves",
                self.policy_path.display(),
                policy.hash
            ))),
            None => Err(LoadError("the registry lost the adopted policy".into())),
        }
    }

    /// Keeps the adopted policy's text in the registry, once per version:
    /// if every node's file were lost or wrong, `dojangctl policy adopted`
    /// restores it (a node refuses to start on any other).
    fn keep_policy_text(&self, policy: &Policy, text: &str, now: OffsetDateTime) {
        let decision = DecisionRecord {
            rule: Some(format!(
                "policy {} {}: text kept in the registry",
                policy.name, policy.version
            )),
            ..self.decision("dojangd", "policy.keep", "ok", &policy.hash, now)
        };
        if let Err(e) = self.registry.set_document_if_absent(
            &crate::store::policy_text_document(&policy.hash),
            text,
            decision,
        ) {
            tracing::warn!(error = %e, "keeping the policy text in the registry");
        }
    }

    fn remember_adopted(&self, hash: Option<String>) {
        let changed = match self.adopted_policy.write() {
            Ok(mut adopted) => std::mem::replace(&mut *adopted, hash.clone()) != hash,
            Err(_) => false,
        };
        // Readiness must not say ready from its cache while admission
        // already refuses.
        if changed {
            self.forget_readiness();
        }
    }

    /// Refuses work on a node whose policy is not the one officers adopted:
    /// it would apply rules (and officers) no longer in force.
    pub(crate) fn require_adopted_policy(&self, current: &Current) -> Result<(), Refusal> {
        let stale = self
            .adopted_policy
            .read()
            .is_ok_and(|a| a.as_ref().is_some_and(|hash| *hash != current.policy.hash));
        if stale {
            return Err(Refusal::unavailable(
                "policy_not_adopted",
                "this node's policy is not the one officers adopted; another node can serve",
            )
            .with_rule("policy.adopted"));
        }
        Ok(())
    }

    /// Loads the policy file again if officers adopted another one than
    /// this node runs (a change approved on any node).
    pub(crate) fn follow_adopted_policy(&self, now: OffsetDateTime) {
        let Ok(Some(adopted)) = self.registry.document(POLICY_DOCUMENT) else {
            return;
        };
        self.remember_adopted(Some(adopted.clone()));
        if adopted == self.current().policy.hash {
            return;
        }
        // Tried again every 10 s (the file may arrive later), said once.
        let mut last = self
            .policy_follow
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let first = last.as_ref().is_none_or(|(hash, _)| *hash != adopted);
        if !first
            && last
                .as_ref()
                .is_some_and(|(_, at)| at.elapsed() < Duration::from_secs(10))
        {
            return;
        }
        *last = Some((adopted.clone(), Instant::now()));
        drop(last);
        match self.reload(now) {
            Ok(()) => tracing::info!(sha256 = %adopted, "loaded the policy officers adopted"),
            Err(e) if first => {
                tracing::warn!(error = %e.0, "officers adopted another policy than this node's file")
            }
            Err(_) => {}
        }
    }

    /// Replaces the keys part of the current state.
    pub(crate) fn swap_keys(&self, view: KeyView) {
        let view = Arc::new(view);
        // Status tokens are re-signed with whichever key signs now.
        self.status_changed();
        self.swap(|old| Current {
            policy: old.policy.clone(),
            keys: view,
            iaca_pem: old.iaca_pem.clone(),
            iaca: old.iaca.clone(),
        });
    }

    fn swap(&self, next: impl FnOnce(&Current) -> Current) {
        let mut slot = self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let replacement = next(&slot);
        *slot = Arc::new(replacement);
        drop(slot);
        self.forget_readiness();
    }

    /// The next status-list index for a new credential.
    pub(crate) fn next_status_index(&self) -> Result<(u32, u64), crate::store::StoreError> {
        let mut slot = self
            .statuses
            .lock()
            .map_err(|_| crate::store::StoreError::Internal("status cursor poisoned".into()))?;
        if let Some((range, next)) = slot.as_mut()
            && *next < range.first + range.count
        {
            let index = *next;
            *next += 1;
            return Ok((range.list, index));
        }
        let range = self.registry.reserve_status_indexes(STATUS_BLOCK)?;
        *slot = Some((range, range.first + 1));
        Ok((range.list, range.first))
    }

    /// A status list's URI.
    pub fn status_uri(&self, list: u32) -> String {
        format!("{}/status/{list}", self.public_base)
    }

    /// Marks status lists as changed; the next fetch re-signs them.
    pub(crate) fn status_changed(&self) {
        let _ = self.status_generation.fetch_add(1, Ordering::AcqRel);
    }

    /// The signed `statuslist+jwt` for `list`, re-signed when the registry
    /// changed since, or when it is near its expiry.
    pub fn status_token(&self, list: u32) -> Result<Option<Arc<str>>, String> {
        if list > MAX_STATUS_LIST {
            return Ok(None);
        }
        if let Some(token) = self.cached_status_token(list) {
            return Ok(token);
        }
        let _one = self
            .status_signing
            .lock()
            .map_err(|_| "status signing lock poisoned".to_owned())?;
        // Another request may have signed it while this one waited.
        if let Some(token) = self.cached_status_token(list) {
            return Ok(token);
        }
        let generation = self.status_generation.load(Ordering::Acquire);
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let entries = self
            .registry
            .status_entries(list)
            .map_err(|e| e.to_string())?;
        if entries.is_empty() {
            self.cache_status_token(list, None, generation, now);
            return Ok(None);
        }
        let start = Instant::now();
        let size = entries
            .iter()
            .map(|(i, _)| i + 1)
            .max()
            .unwrap_or(1)
            .min(STATUS_LIST_SIZE);
        let list_bits = StatusList::from_entries(size, &entries).map_err(|e| e.to_string())?;
        let current = self.current();
        let key = current
            .keys
            .status_key_at(OffsetDateTime::now_utc())
            .ok_or_else(|| "no status-list key can sign now".to_owned())?;
        let token = self
            .metrics
            .hsm("sign_status_list", || {
                sign_token(
                    self.backend,
                    key,
                    &self.status_uri(list),
                    &list_bits,
                    now,
                    now + STATUS_TOKEN_LIFETIME,
                    STATUS_TOKEN_TTL,
                )
            })
            .map_err(|e| e.to_string())?;
        self.count_signature(key, now + STATUS_TOKEN_LIFETIME);
        self.metrics.status_list_signatures.inc();
        self.metrics
            .status_list_seconds
            .observe(start.elapsed().as_secs_f64());
        let token: Arc<str> = token.into();
        self.cache_status_token(list, Some(token.clone()), generation, now);
        Ok(Some(token))
    }

    fn cached_status_token(&self, list: u32) -> Option<Option<Arc<str>>> {
        let generation = self.status_generation.load(Ordering::Acquire);
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let tokens = self.status_tokens.lock().ok()?;
        let cached = tokens.get(&list)?;
        (cached.generation == generation
            && cached.signed.elapsed() < STATUS_TOKEN_REFRESH
            && cached.exp - now > STATUS_TOKEN_LIFETIME / 2)
            .then(|| cached.token.clone())
    }

    fn cache_status_token(&self, list: u32, token: Option<Arc<str>>, generation: u64, now: i64) {
        if let Ok(mut tokens) = self.status_tokens.lock() {
            let _ = tokens.insert(
                list,
                CachedToken {
                    token,
                    generation,
                    signed: Instant::now(),
                    exp: now + STATUS_TOKEN_LIFETIME,
                },
            );
        }
    }

    fn forget_readiness(&self) {
        if let Ok(mut r) = self.readiness.lock() {
            r.answer = None;
            r.stale_since = Some(Instant::now());
        }
    }

    /// Readiness, probed at most once a second (probes touch the device).
    pub fn readiness(&self) -> Readiness {
        if let Ok(r) = self.readiness.lock()
            && let Some((at, readiness)) = r.answer.as_ref()
            && at.elapsed() < Duration::from_secs(1)
        {
            return readiness.clone();
        }
        let started = Instant::now();
        let health = self.backend.health();
        self.metrics.backend_up.set(i64::from(health.up));
        if let Some(s) = health.sessions {
            self.metrics
                .sessions
                .with_label_values(&["idle"])
                .set(s.idle as i64);
            self.metrics
                .sessions
                .with_label_values(&["busy"])
                .set(s.total.saturating_sub(s.idle) as i64);
        }
        let store = self.registry.ping();
        let now = OffsetDateTime::now_utc();
        let current = self.current();
        let signing = current
            .signer(now)
            .map(|s| format!("{} (kid {})", s.label(), s.kid()));
        let status_key = current
            .keys
            .status_key_at(now)
            .map(str::to_owned)
            .ok_or_else(|| "no status-list key can sign now".to_owned());
        let policy = match self.registry.document(POLICY_DOCUMENT) {
            Ok(Some(adopted)) if adopted != current.policy.hash => Err(format!(
                "officers adopted policy {adopted}; this node runs {} (its file must have the adopted one)",
                current.policy.hash
            )),
            Ok(_) => Ok(format!(
                "{} {}",
                current.policy.name, current.policy.version
            )),
            Err(e) => Err(e.to_string()),
        };
        let audit = self.registry.probe_write();
        let checks = vec![
            Check {
                name: "key_backend",
                ok: health.up,
                detail: health.detail,
            },
            Check {
                name: "store",
                ok: store.is_ok(),
                detail: match store {
                    Ok(()) => self.registry.kind().to_owned(),
                    Err(e) => e.to_string(),
                },
            },
            Check {
                name: "audit_log",
                ok: audit.is_ok(),
                detail: match audit {
                    Ok(()) => "writable".to_owned(),
                    Err(e) => e.to_string(),
                },
            },
            Check {
                name: "signing_key",
                ok: signing.is_ok(),
                detail: signing.unwrap_or_else(|e| e),
            },
            Check {
                name: "policy",
                ok: policy.is_ok(),
                detail: policy.unwrap_or_else(|e| e),
            },
            Check {
                name: "status_list_key",
                ok: status_key.is_ok(),
                detail: status_key.unwrap_or_else(|e| e),
            },
        ];
        let readiness = Readiness {
            node: self.node_id.clone(),
            ready: checks.iter().all(|c| c.ok),
            checks,
        };
        // An answer begun before a change made answers stale is not kept.
        if let Ok(mut r) = self.readiness.lock()
            && r.stale_since.is_none_or(|stale| stale < started)
        {
            r.answer = Some((Instant::now(), readiness.clone()));
        }
        readiness
    }

    /// Signs a checkpoint if the log grew; logs a failure (the next round
    /// retries).
    pub fn checkpoint(&self) -> Option<u64> {
        let current = self.current();
        let Some((label, key)) = current.keys.audit_key_at(OffsetDateTime::now_utc()) else {
            tracing::warn!("no audit key can sign a checkpoint");
            return None;
        };
        // The first checkpoint after a rotation is co-signed by the key that
        // signed the one before: auditors follow the hand-over.
        let previous_signers = self
            .registry
            .latest_checkpoint()
            .ok()
            .flatten()
            .map(|(_, note)| Checkpoint::signer_ids(&note))
            .unwrap_or_default();
        let outgoing = (!previous_signers.is_empty() && !previous_signers.contains(&key.id()))
            .then(|| {
                current
                    .keys
                    .audit_cosigners
                    .iter()
                    .find(|(l, k)| l != label && previous_signers.contains(&k.id()))
                    .map(|(l, k)| (l.as_str(), k))
            })
            .flatten();
        if outgoing.is_none()
            && !previous_signers.is_empty()
            && !previous_signers.contains(&key.id())
        {
            // The outgoing key is revoked or gone: auditors who pinned the
            // old key cannot follow; they need the new one from officers.
            tracing::warn!(
                label,
                "no key can hand the audit log over to the new audit key: auditors must be given it"
            );
        }
        let signers = super::audit_log::Signers {
            current: (label, key),
            outgoing,
        };
        match self
            .audit
            .checkpoint(self.backend, self.registry.as_ref(), &signers)
        {
            Ok(size) => size,
            Err(e) => {
                tracing::warn!(error = %e, "audit checkpoint failed");
                None
            }
        }
    }

    /// Places recorded decisions in the log (a no-op where the store places
    /// them as they commit); failures are logged and retried next round.
    pub fn sequence_audit(&self) {
        if let Err(e) = self.registry.sequence_audit() {
            tracing::warn!(error = %e, "sequencing audit entries failed");
        }
    }

    /// Whether a checkpoint is due: `checkpoint_entries` uncovered entries,
    /// or any after `checkpoint_interval_ms`.
    pub fn checkpoint_due(&self, since_last: Duration) -> bool {
        let size = self.registry.audit_size().unwrap_or(0);
        let covered = self
            .registry
            .latest_checkpoint()
            .ok()
            .flatten()
            .map_or(0, |(s, _)| s);
        size > covered
            && (size - covered >= self.audit_settings.checkpoint_entries
                || since_last >= Duration::from_millis(self.audit_settings.checkpoint_interval_ms))
    }

    /// Records a start, stop or reload of this node.
    pub fn record_event(&self, action: &str, outcome: &str) {
        let decision = self.decision(
            "dojangd",
            action,
            outcome,
            &self.current().policy.hash,
            OffsetDateTime::now_utc(),
        );
        if let Err(e) = self.registry.record(decision, None) {
            tracing::error!(error = %e, action, "cannot write the audit log");
        }
    }

    /// Refreshes the gauges that describe state, for a scrape.
    pub fn refresh_gauges(&self) {
        let _ = self.readiness();
        let now = OffsetDateTime::now_utc();
        if let Ok(keys) = self.registry.keys() {
            for k in keys
                .iter()
                .filter(|k| matches!(k.record.state, KeyState::Pending | KeyState::Active))
            {
                self.metrics
                    .ds_expiry_seconds
                    .with_label_values(&[&k.record.label])
                    .set((k.record.cert_not_after - now).whole_seconds());
            }
        }
        if let Ok((used, quota)) = self.registry.free_quota() {
            self.metrics
                .free_quota_remaining
                .set(quota.saturating_sub(used) as i64);
        }
        if let Ok(n) = self.registry.decision_count() {
            self.metrics.audit_entries.set(n as i64);
        }
    }
}

pub(crate) fn jwk_entry(public: &PublicKey, chain: Option<[&[u8]; 2]>) -> serde_json::Value {
    let jwk = public.jwk();
    let mut entry = json!({
        "kty": jwk.kty,
        "crv": jwk.crv,
        "x": jwk.x,
        "kid": public.kid(),
        "use": "sig",
        "alg": public.algorithm().jose_name(),
    });
    if let Some(y) = &jwk.y {
        entry["y"] = json!(y);
    }
    if let Some(chain) = chain {
        entry["x5c"] = json!(chain.iter().map(|c| B64.encode(c)).collect::<Vec<_>>());
    }
    entry
}
