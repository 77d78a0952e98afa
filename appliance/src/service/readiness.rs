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
    /// The API listener's client CRL files (re-read when they change).
    client_crls: Vec<std::path::PathBuf>,
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

/// The served CRL: past its nextUpdate, verifiers refuse every DS
/// certificate, so the node is not ready; within the last quarter of its
/// validity it says so ahead (the acting node re-signs at half: a CRL this
/// old means re-signing keeps failing, or the root is offline and a
/// ceremony is due). Seconds to nextUpdate beside.
pub(super) fn crl_check(
    crl_der: Option<&[u8]>,
    now: OffsetDateTime,
    validity_days: u32,
) -> (Check, Option<i64>) {
    let Some(der) = crl_der else {
        return (check("crl", Ok("no CRL signed yet".to_owned())), None);
    };
    let next = openssl::x509::X509Crl::from_der(der).ok().and_then(|crl| {
        let next = crl.next_update()?;
        let epoch = openssl::asn1::Asn1Time::from_unix(0).ok()?;
        let d = epoch.diff(next).ok()?;
        Some(i64::from(d.days) * 86_400 + i64::from(d.secs))
    });
    let Some(next) = next else {
        return (
            check("crl", Err("the served CRL is unreadable".to_owned())),
            None,
        );
    };
    let left = next - now.unix_timestamp();
    let hours = left / 3600;
    let result = if left <= 0 {
        Err(format!(
            "the CRL expired {}h ago: verifiers refuse the DS certificates until a new one is signed",
            -hours
        ))
    } else if left < i64::from(validity_days) * 86_400 / 4 {
        Ok(format!(
            "WARNING: the CRL expires in {hours}h (under a quarter of its validity): sign a new one"
        ))
    } else {
        Ok(format!("nextUpdate in {hours}h"))
    };
    (check("crl", result), Some(left))
}

/// A client CRL valid for `validity` seconds with `left` to go: a warning
/// in its last quarter, a failure once past.
fn client_crl_verdict(name: &str, validity: i64, left: i64) -> Result<String, String> {
    if left <= 0 {
        Err(format!(
            "{name} expired {}h ago: every client is refused until a new one is installed",
            -left / 3600
        ))
    } else if left < validity / 4 {
        Ok(format!(
            "WARNING: {name} expires in {}h (under a quarter of its validity): install a new one",
            left / 3600
        ))
    } else {
        Ok(format!("{name}: nextUpdate in {}h", left / 3600))
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

/// The DS spare pool while the IACA is offline: ready below the threshold
/// (the active key still signs), with a warning that a ceremony is due;
/// the gauge is set where the view is built.
pub(super) fn spare_check(spares: &crate::keys::view::PoolStatus, warn_below: u32) -> Check {
    let detail = format!(
        "{} certified for scheduled rotations, {} waiting for a ceremony, emergency spare {}",
        spares.certified,
        spares.uncertified,
        spares.emergency.as_deref().unwrap_or("none")
    );
    let low = spares.certified < warn_below as usize || spares.emergency.is_none();
    check(
        "spare_pool",
        Ok(if low {
            format!("WARNING: {detail}: hold a ceremony (dojangctl ceremony request)")
        } else {
            detail
        }),
    )
}

impl ReadinessProbe {
    fn crl(&self, current: &Current, now: OffsetDateTime) -> Check {
        let days = self.keys.pki_config().crl_validity_days;
        // After a rollover every root still published has a CRL of its
        // own: the failing one, else the one nearest its nextUpdate,
        // speaks for all.
        let views = &current.keys.root_views;
        let mut candidates = Vec::new();
        if views.first().is_none_or(|r| r.status != "retired") {
            candidates.push(crl_check(current.keys.crl_der.as_deref(), now, days));
        }
        for root in views.iter().skip(1).filter(|r| r.status != "retired") {
            let (check, left) = crl_check(root.crl_der.as_deref(), now, days);
            let detail = format!("{} ({})", check.detail, root.crl_path);
            candidates.push((Check { detail, ..check }, left));
        }
        let (check, left) = candidates
            .into_iter()
            .min_by_key(|(check, left)| (check.ok, left.unwrap_or(i64::MAX)))
            .unwrap_or_else(|| crl_check(None, now, days));
        if let Some(left) = left {
            self.node.metrics.crl_next_update_seconds.set(left);
        }
        match (&current.keys.unlisted_revocations[..], check) {
            ([], check) => check,
            (labels, Check { ok: true, .. }) => Check {
                name: "crl",
                ok: true,
                detail: format!(
                    "WARNING: revoked DS key(s) {} not on the served CRL yet: the IACA is offline, hold an emergency ceremony (docs/operations.md)",
                    labels.join(", ")
                ),
            },
            (_, failed) => failed,
        }
    }

    /// A probe of these owners.
    pub fn new(node: Node, policy: Arc<PolicyState>, keys: Arc<KeyManager>) -> Self {
        ReadinessProbe {
            node,
            policy,
            keys,
            client_crls: Vec::new(),
            cache: Mutex::new(None),
        }
    }

    /// Also watches these client CRL files.
    pub fn with_client_crls(self, client_crls: Vec<std::path::PathBuf>) -> Self {
        ReadinessProbe {
            client_crls,
            ..self
        }
    }

    /// The client CRLs: the API refuses every client (officers too) once
    /// one is past its nextUpdate, so a `WARNING` in its last quarter, and
    /// not ready once past. The gauge per file beside.
    fn client_crls(&self, now: OffsetDateTime) -> Check {
        let mut worst: Option<(Check, i64)> = None;
        for path in &self.client_crls {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let crl = std::fs::read(path)
                .ok()
                .and_then(|pem| openssl::x509::X509Crl::from_pem(&pem).ok());
            let Some(crl) = crl else {
                let failed = check("client_crls", Err(format!("{name}: unreadable")));
                worst = Some((failed, i64::MIN));
                continue;
            };
            let seconds = |t: &openssl::asn1::Asn1TimeRef| {
                let epoch = openssl::asn1::Asn1Time::from_unix(0).ok()?;
                let d = epoch.diff(t).ok()?;
                Some(i64::from(d.days) * 86_400 + i64::from(d.secs))
            };
            let last = seconds(crl.last_update()).unwrap_or(0);
            let next = crl.next_update().and_then(seconds).unwrap_or(i64::MAX);
            let left = next.saturating_sub(now.unix_timestamp());
            self.node
                .metrics
                .client_crl_next_update_seconds
                .with_label_values(&[name.as_str()])
                .set(left);
            let result = client_crl_verdict(&name, next - last, left);
            if worst.as_ref().is_none_or(|(_, l)| left < *l) {
                worst = Some((check("client_crls", result), left));
            }
        }
        worst
            .map(|(c, _)| c)
            .unwrap_or_else(|| check("client_crls", Ok("none configured".into())))
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
            self.crl(&current, now),
            self.client_crls(now),
        ]
        .into_iter()
        .chain(current.keys.spares.offline.then(|| {
            spare_check(
                &current.keys.spares,
                self.keys.pki_config().spare_warn_below,
            )
        }))
        .chain([status_key_check(&current.keys, now)])
        .collect()
    }
}

/// The status-list key in force, and whether its tokens carry a chain to
/// the IACA (a key not certified yet still signs: verifiers using the
/// status JWKS read its tokens).
fn status_key_check(keys: &crate::keys::view::KeyView, now: OffsetDateTime) -> Check {
    check(
        "status_list_key",
        keys.status_key_at(now)
            .map(|k| match k.certificate {
                Some(_) => format!("{} (certified by the IACA)", k.label),
                None => format!(
                    "{} (no certificate from the IACA yet: its tokens carry no chain until a ceremony certifies it)",
                    k.label
                ),
            })
            .ok_or_else(|| "no status-list key can sign now".to_owned()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devtls::DevCa;

    fn der(days: i64) -> Vec<u8> {
        let pem = DevCa::generate("CRL test").unwrap().crl(&[], days).unwrap();
        openssl::x509::X509Crl::from_pem(pem.as_bytes())
            .unwrap()
            .to_der()
            .unwrap()
    }

    #[test]
    fn a_client_crl_warns_in_its_last_quarter_and_fails_once_expired() {
        let day = 86_400;
        assert!(
            client_crl_verdict("crl.pem", 30 * day, 20 * day)
                .is_ok_and(|d| d.starts_with("crl.pem"))
        );
        assert!(
            client_crl_verdict("crl.pem", 30 * day, 5 * day)
                .is_ok_and(|d| d.starts_with("WARNING"))
        );
        assert!(
            client_crl_verdict("crl.pem", 30 * day, -3600).is_err_and(|d| d.contains("expired"))
        );
    }

    #[test]
    fn the_crl_warns_in_its_last_quarter_and_fails_once_expired() {
        let now = OffsetDateTime::now_utc();
        let (fresh, left) = crl_check(Some(&der(30)), now, 30);
        assert!(
            fresh.ok && fresh.detail.starts_with("nextUpdate in"),
            "{}",
            fresh.detail
        );
        assert!(left.is_some_and(|s| s > 29 * 86_400));
        let (old, _) = crl_check(Some(&der(5)), now, 30);
        assert!(
            old.ok && old.detail.starts_with("WARNING"),
            "{}",
            old.detail
        );
        let (expired, left) = crl_check(Some(&der(5)), now + time::Duration::days(6), 30);
        assert!(
            !expired.ok && expired.detail.contains("expired"),
            "{}",
            expired.detail
        );
        assert!(left.is_some_and(|s| s < 0));
        assert!(crl_check(None, now, 30).0.ok);
        assert!(!crl_check(Some(b"not a CRL"), now, 30).0.ok);
    }
}
