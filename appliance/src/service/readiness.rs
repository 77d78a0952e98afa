//! Readiness: whether this node can serve now, check by check (key
//! backend, store, audit log, signing key, policy, status-list key),
//! probed at most once a second (probes touch the device). A cached
//! answer is dropped as soon as the policy or the keys change.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use time::OffsetDateTime;

use crate::issuance::Current;
use crate::keys::manager::KeyManager;
use crate::node::Node;
use crate::policy::PolicyState;

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

/// The last answer, with the policy and key generations it was computed
/// under: an answer begun before a change is never served after it.
type Cached = Option<(Instant, (u64, u64, u64), Readiness)>;

/// Probes readiness, and keeps the last answer for a second.
pub struct ReadinessProbe {
    node: Node,
    policy: Arc<PolicyState>,
    keys: Arc<KeyManager>,
    cache: Mutex<Cached>,
}

fn check(name: &'static str, result: Result<String, String>) -> Check {
    let ok = result.is_ok();
    Check {
        name,
        ok,
        detail: result.unwrap_or_else(|e| e),
    }
}

/// Refusing an order is the node doing its job, not a fault: it stays
/// ready, and says so here for whoever looks.
fn orders_check(metrics: &crate::metrics::Metrics) -> Check {
    check(
        "orders",
        Ok(match metrics.orders_refused_so_far() {
            (0, _) => "no order refused".to_owned(),
            (n, last) => format!(
                "{n} refused since start for want of a verified order (last: {}); see the audit log",
                last.map(|(o, r)| format!("{o}, {r}")).unwrap_or_default()
            ),
        }),
    )
}

impl ReadinessProbe {
    /// A probe of these owners.
    pub fn new(node: Node, policy: Arc<PolicyState>, keys: Arc<KeyManager>) -> Self {
        ReadinessProbe {
            node,
            policy,
            keys,
            cache: Mutex::new(None),
        }
    }

    fn generations(&self) -> (u64, u64, u64) {
        (
            self.policy.generation(),
            self.keys.generation(),
            self.node.metrics.orders_refused_so_far().0,
        )
    }

    /// Readiness, probed at most once a second.
    pub fn readiness(&self) -> Readiness {
        let generations = self.generations();
        if let Ok(cached) = self.cache.lock()
            && let Some((at, seen, readiness)) = cached.as_ref()
            && *seen == generations
            && at.elapsed() < Duration::from_secs(1)
        {
            return readiness.clone();
        }
        let readiness = Readiness {
            node: self.node.id.clone(),
            ready: false,
            checks: self.checks(),
        };
        let readiness = Readiness {
            ready: readiness.checks.iter().all(|c| c.ok),
            ..readiness
        };
        if let Ok(mut cached) = self.cache.lock() {
            *cached = Some((Instant::now(), generations, readiness.clone()));
        }
        readiness
    }

    fn checks(&self) -> Vec<Check> {
        let (backend, registry, metrics) =
            (self.node.backend, &self.node.registry, &self.node.metrics);
        let health = backend.health();
        metrics.backend_up.set(i64::from(health.up));
        if let Some(s) = health.sessions {
            metrics
                .sessions
                .with_label_values(&["idle"])
                .set(s.idle as i64);
            metrics
                .sessions
                .with_label_values(&["busy"])
                .set(s.total.saturating_sub(s.idle) as i64);
        }
        let now = OffsetDateTime::now_utc();
        let current = Current {
            policy: self.policy.current(),
            keys: self.keys.view(),
        };
        // The adoption as this node verified it: a row naming a policy no
        // officers signed is refused where it is read, not obeyed here.
        let policy = match self.policy.adopted() {
            Some(adopted) if adopted != current.policy.hash => Err(format!(
                "officers adopted policy {adopted}; this node runs {} (its file must have the adopted one)",
                current.policy.hash
            )),
            _ => Ok(format!(
                "{} {}",
                current.policy.name, current.policy.version
            )),
        };
        vec![
            Check {
                name: "key_backend",
                ok: health.up,
                detail: health.detail,
            },
            check(
                "store",
                registry
                    .ping()
                    .map(|()| registry.kind().to_owned())
                    .map_err(|e| e.to_string()),
            ),
            check(
                "audit_log",
                registry
                    .probe_write()
                    .map(|()| "writable".to_owned())
                    .map_err(|e| e.to_string()),
            ),
            check(
                "signing_key",
                current
                    .signer(now)
                    .map(|s| format!("{} (kid {})", s.label(), s.kid())),
            ),
            check("policy", policy),
            orders_check(metrics),
            check(
                "status_list_key",
                current
                    .keys
                    .status_key_at(now)
                    .map(str::to_owned)
                    .ok_or_else(|| "no status-list key can sign now".to_owned()),
            ),
        ]
    }
}
