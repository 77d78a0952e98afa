//! [`PolicyState`]: the policy this node runs, and whether it is the one
//! officers adopted. A node whose file is not the adopted policy refuses
//! every change (it would apply rules, and officers, no longer in force)
//! and follows a newly adopted policy once its file has it.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use dojang_policies::Policy;
use time::OffsetDateTime;

use super::adoption::verify_adoption;
use crate::node::{LoadError, Node};
use crate::refusal::Refusal;
use crate::store::{DecisionRecord, POLICY_DOCUMENT, policy_text_document};

/// How often a node retries loading a newly adopted policy from its file.
const FOLLOW_EVERY: Duration = Duration::from_secs(10);

/// The policy in force and its adoption.
pub struct PolicyState {
    node: Node,
    path: PathBuf,
    /// The first policy's SHA-256, pinned at the ceremony.
    anchor: String,
    current: RwLock<Arc<Policy>>,
    /// The adopted policy's hash as last read from the registry.
    adopted: RwLock<Option<String>>,
    /// The policies the loaded one descends from by signed changes, itself
    /// first: orders signed under any of them still stand.
    lineage: RwLock<Vec<String>>,
    /// The adopted policy this node last tried to load, and when.
    follow: Mutex<Option<(String, Instant)>>,
    /// Bumped by every change of either: cached readiness is then stale.
    generation: AtomicU64,
}

fn registry_error(e: impl std::fmt::Display) -> LoadError {
    LoadError(format!("registry: {e}"))
}

impl PolicyState {
    /// The state before the first load: the shipped policy, never adopted
    /// by it (admission refuses until a file loads).
    pub fn new(node: Node, path: PathBuf, anchor: String) -> Result<Self, LoadError> {
        let placeholder = Policy::parse("(none)", dojang_policies::SHIPPED_POLICY)
            .map_err(|e| LoadError(e.to_string()))?;
        Ok(PolicyState {
            node,
            path,
            anchor,
            current: RwLock::new(Arc::new(placeholder)),
            adopted: RwLock::new(None),
            lineage: RwLock::new(Vec::new()),
            follow: Mutex::new(None),
            generation: AtomicU64::new(0),
        })
    }

    /// The policy in force.
    pub fn current(&self) -> Arc<Policy> {
        self.current
            .read()
            .map(|c| c.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }

    /// Changes so far (a swap or a new adoption).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Reads the file and checks officers adopted it: the registry names
    /// it and holds the officers' signatures adopting it. Its text is kept
    /// in the registry.
    pub fn load(&self, now: OffsetDateTime) -> Result<Policy, LoadError> {
        let text = std::fs::read_to_string(&self.path)
            .map_err(|e| LoadError(format!("{}: {e}", self.path.display())))?;
        let policy = Policy::parse(&self.path.display().to_string(), &text)
            .map_err(|e| LoadError(e.to_string()))?;
        self.check_adopted(&policy)?;
        let lineage = verify_adoption(self.node.registry.as_ref(), &policy, &text, &self.anchor)
            .map_err(|e| {
                self.node
                    .metrics
                    .order_refused("change_policy", "unverified_adoption");
                LoadError(format!("policy file {}: {e}", self.path.display()))
            })?;
        self.keep_text(&policy, &text, now);
        *self.lineage.write().unwrap_or_else(PoisonError::into_inner) = lineage;
        Ok(policy)
    }

    /// The policies the loaded one descends from (itself first).
    pub fn lineage(&self) -> Vec<String> {
        self.lineage
            .read()
            .map(|l| l.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }

    /// Puts a loaded policy in force.
    pub fn install(&self, policy: Arc<Policy>) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = policy;
        let _ = self.generation.fetch_add(1, Ordering::AcqRel);
    }

    fn check_adopted(&self, policy: &Policy) -> Result<(), LoadError> {
        let adopted = self
            .node
            .registry
            .document(POLICY_DOCUMENT)
            .map_err(registry_error)?;
        self.remember_adopted(adopted.clone());
        match adopted {
            Some(hash) if hash == policy.hash => Ok(()),
            Some(hash) => Err(LoadError(format!(
                "policy file {} has SHA-256 {}, but officers adopted {hash}: restore the adopted file \
                 (dojangctl policy adopted --out FILE), or officers propose this one \
                 (dojangctl policy propose FILE) and another approves",
                self.path.display(),
                policy.hash
            ))),
            // Never trust on first use: the first policy is adopted by the
            // officers it names, at the key ceremony.
            None => Err(LoadError(format!(
                "no policy adopted yet: the officers named in {} each sign it (dojangctl policy sign-first FILE \
                 --out SIG) and one records the signatures (dojangctl policy adopt-first FILE SIG...)",
                self.path.display()
            ))),
        }
    }

    /// Keeps the adopted policy's text in the registry, once per version:
    /// if every node's file were lost or wrong, `dojangctl policy adopted`
    /// restores it (a node refuses to start on any other).
    fn keep_text(&self, policy: &Policy, text: &str, now: OffsetDateTime) {
        let decision = DecisionRecord {
            rule: Some(format!(
                "policy {} {}: text kept in the registry",
                policy.name, policy.version
            )),
            ..self
                .node
                .decision("dojangd", "policy.keep", "ok", &policy.hash, now)
        };
        if let Err(e) = self.node.registry.set_document_if_absent(
            &policy_text_document(&policy.hash),
            text,
            decision,
        ) {
            tracing::warn!(error = %e, "keeping the policy text in the registry");
        }
    }

    fn remember_adopted(&self, hash: Option<String>) {
        let changed = match self.adopted.write() {
            Ok(mut adopted) => std::mem::replace(&mut *adopted, hash.clone()) != hash,
            Err(_) => false,
        };
        // Readiness must not say ready from its cache while admission
        // already refuses.
        if changed {
            let _ = self.generation.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// The policy officers adopted, as this node last verified it (a row
    /// naming a policy nobody adopted does not change it).
    pub fn adopted(&self) -> Option<String> {
        self.adopted.read().ok().and_then(|a| a.clone())
    }

    /// Refuses work on a node whose policy is not the one officers adopted.
    pub fn require_adopted(&self, policy: &Policy) -> Result<(), Refusal> {
        let stale = self
            .adopted
            .read()
            .is_ok_and(|a| a.as_ref().is_some_and(|hash| *hash != policy.hash));
        if stale {
            return Err(Refusal::unavailable(
                "policy_not_adopted",
                "this node's policy is not the one officers adopted; another node can serve",
            )
            .with_rule("policy.adopted"));
        }
        Ok(())
    }

    /// Whether to try loading the policy officers adopted (another than
    /// this node runs): every 10 s (the file may arrive later); `Some(true)`
    /// the first time for that policy, to say so once. A policy the
    /// registry names without officers' signatures adopting it is not
    /// followed (nor counted as adopted): refused, counted and logged once.
    pub fn due_to_follow(&self) -> Option<(String, bool)> {
        let Ok(Some(adopted)) = self.node.registry.document(POLICY_DOCUMENT) else {
            return None;
        };
        if adopted == self.current().hash {
            self.remember_adopted(Some(adopted));
            return None;
        }
        let mut last = self.follow.lock().unwrap_or_else(PoisonError::into_inner);
        let first = last.as_ref().is_none_or(|(hash, _)| *hash != adopted);
        if !first
            && last
                .as_ref()
                .is_some_and(|(_, at)| at.elapsed() < FOLLOW_EVERY)
        {
            return None;
        }
        *last = Some((adopted.clone(), Instant::now()));
        if let Err(e) = self.verified_in_registry(&adopted) {
            if first {
                tracing::warn!(policy = %adopted, error = %e, "the registry names a policy officers did not adopt: not followed");
                self.node
                    .metrics
                    .order_refused("change_policy", "unverified_adoption");
                self.node.record_refusal(
                    "policy.follow",
                    &format!("officers.verified_order: policy {adopted}"),
                    &self.current().hash,
                );
            }
            return None;
        }
        self.remember_adopted(Some(adopted.clone()));
        Some((adopted, first))
    }

    /// Checks the adoption of the policy `hash` from the registry's copy of
    /// its text (before any file has it): signed by officers, and descended
    /// from the policy this node runs (a first policy forged beside it,
    /// however well signed by the keys it names itself, is not).
    fn verified_in_registry(&self, hash: &str) -> Result<(), String> {
        let registry = self.node.registry.as_ref();
        let text = registry
            .document(&policy_text_document(hash))
            .map_err(|e| e.to_string())?
            .ok_or("the registry holds no text for it")?;
        let policy = Policy::parse("the adopted policy", &text).map_err(|e| e.to_string())?;
        if policy.hash != hash {
            return Err("its text in the registry has another hash".into());
        }
        let lineage = verify_adoption(registry, &policy, &text, &self.anchor)?;
        let running = self.current().hash.clone();
        if !lineage.contains(&running) {
            return Err(format!(
                "it does not descend from policy {running}, which this node runs"
            ));
        }
        Ok(())
    }
}
