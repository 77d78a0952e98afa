//! What every owner on this node shares: the key backend, the registry,
//! the metrics and the node's name; and how this node records a decision,
//! or a refusal, in the audit log.

use std::sync::Arc;

use pkcs11_shim::KeyBackend;
use time::OffsetDateTime;

use crate::errors::store_refusal;
use crate::metrics::Metrics;
use crate::refusal::Answer;
use crate::store::{DecisionRecord, Pseudonym, Registry};

/// Who asked, as the audit log names a client: the identity its
/// certificate carries, and that certificate's SHA-256 (a renewed or a
/// second certificate can carry the same identity; the entry says which
/// one acted). It reads as its identity wherever only the identity counts
/// (roles, rate limits, officers' distinctness).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The identity (a URI or DNS SAN).
    pub identity: String,
    /// SHA-256 of the client's end-entity certificate (DER).
    pub certificate: [u8; 32],
}

impl Caller {
    /// The caller presenting `certificate_der`, whose identity is `identity`.
    pub fn new(identity: String, certificate_der: &[u8]) -> Self {
        Caller {
            identity,
            certificate: openssl::sha::sha256(certificate_der),
        }
    }
}

impl std::ops::Deref for Caller {
    type Target = str;

    fn deref(&self) -> &str {
        &self.identity
    }
}

impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.identity)
    }
}

/// This node's handles, cloned into each owner.
#[derive(Clone)]
pub struct Node {
    /// The key backend (one for the life of the process).
    pub backend: &'static dyn KeyBackend,
    /// The registry.
    pub registry: Arc<dyn Registry>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// This node's name in decisions and logs.
    pub id: String,
}

impl Node {
    /// A decision of this node.
    pub fn decision(
        &self,
        actor: &str,
        action: &str,
        outcome: &str,
        policy_hash: &str,
        now: OffsetDateTime,
    ) -> DecisionRecord {
        DecisionRecord {
            node: self.id.clone(),
            at: now.unix_timestamp(),
            actor: actor.to_owned(),
            action: action.to_owned(),
            outcome: outcome.to_owned(),
            policy_hash: policy_hash.to_owned(),
            ..DecisionRecord::default()
        }
    }

    /// A decision a client asked for (its identity and certificate).
    pub fn caller_decision(
        &self,
        caller: &Caller,
        action: &str,
        outcome: &str,
        policy_hash: &str,
        now: OffsetDateTime,
    ) -> DecisionRecord {
        DecisionRecord {
            actor_certificate: Some(caller.certificate),
            ..self.decision(&caller.identity, action, outcome, policy_hash, now)
        }
    }

    /// Records a refusal (authorization, policy, registry rule) as an audit
    /// entry; a refusal that cannot be recorded is not given (503).
    pub fn audited(
        &self,
        client: &Caller,
        action: &str,
        answer: Answer,
        policy_hash: &str,
        holder: Option<Pseudonym>,
        now: OffsetDateTime,
    ) -> Answer {
        match answer {
            Err(p) if p.rule.is_some() && p.class.is_client_error() => {
                let record = DecisionRecord {
                    rule: p.rule.clone(),
                    ..self.caller_decision(client, action, "deny", policy_hash, now)
                };
                match self.registry.record(record, holder) {
                    Ok(()) => Err(p),
                    Err(e) => Err(store_refusal(e)),
                }
            }
            other => other,
        }
    }
}

impl Node {
    /// Records in the audit log that this node refused to act on what the
    /// registry said (`rule` says which rule and what): a refusal nobody
    /// asked for, so no answer carries it.
    pub fn record_refusal(&self, action: &str, rule: &str, policy_hash: &str) {
        let record = DecisionRecord {
            rule: Some(rule.to_owned()),
            ..self.decision(
                "dojangd",
                action,
                "refused",
                policy_hash,
                OffsetDateTime::now_utc(),
            )
        };
        if let Err(e) = self.registry.record(record, None) {
            tracing::warn!(error = %e, action, "recording a refusal");
        }
    }
}

/// A time as RFC 3339, the form answers and audit rules give times in.
pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// An error starting or reloading: the state in force stays.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct LoadError(pub String);
