//! The daemon's own threads besides the pools: the audit thread (places
//! entries, signs checkpoints when due), the key lifecycle thread (on a
//! thread of its own: generating a key takes the token for a while, which
//! must not hold up audit checkpoints) and the status-list thread
//! (re-signs stale lists off the request path), and the node lock's
//! thread. All stop when `stop` is set.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::metrics::store::NodeLockEvent;
use crate::service::Service;
use crate::store::node_lock::{Held, NodeLock};

/// Starts the audit thread.
pub(super) fn audit(
    service: Arc<Service>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("dojang-audit".into())
        .spawn(move || {
            let mut last = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                service.audit.sequence();
                if service.audit.due(last.elapsed()) {
                    let _ = service.audit.checkpoint();
                    last = Instant::now();
                }
            }
        })
        .context("starting the checkpoint thread")
}

/// Starts the witnesses' thread (when the log has witnesses): a round
/// every 200 ms sends the latest checkpoint to those that have not
/// cosigned it; apart from the checkpoint thread, so a slow witness never
/// holds up sequencing or signing.
pub(super) fn witnesses(
    service: Arc<Service>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Option<JoinHandle<()>>> {
    if !service.audit.has_witnesses() {
        return Ok(None);
    }
    std::thread::Builder::new()
        .name("dojang-witness".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                service.audit.witness();
            }
        })
        .map(Some)
        .context("starting the witnesses' thread")
}

/// Starts the key lifecycle thread, a round every `interval_ms`.
pub(super) fn keys(
    service: Arc<Service>,
    stop: Arc<AtomicBool>,
    interval_ms: u64,
) -> anyhow::Result<JoinHandle<()>> {
    let interval = Duration::from_millis(interval_ms);
    // A node that stops renewing gives the lease up after three rounds
    // (at least 10 s: longer than generating a key takes).
    let lease_ms = (3 * interval_ms as i64).max(10_000);
    std::thread::Builder::new()
        .name("dojang-keys".into())
        .spawn(move || {
            let stopping = || stop.load(Ordering::Relaxed);
            while !stopping() {
                service.keys_tick(time::OffsetDateTime::now_utc(), lease_ms);
                // In slices, so a stop never waits out a long interval.
                let next = Instant::now() + interval;
                while !stopping() && Instant::now() < next {
                    std::thread::sleep(Duration::from_millis(100).min(interval));
                }
            }
        })
        .context("starting the key lifecycle thread")
}

/// Starts the status-list thread: a round a second re-signs the stale
/// lists this node serves, a bounded number per round.
pub(super) fn status(
    service: Arc<Service>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("dojang-status".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let _ = service
                    .status
                    .refresh_stale(crate::status::BACKGROUND_LISTS_PER_ROUND);
                for _ in 0..10 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        })
        .context("starting the status-list thread")
}

/// How often the node's lock is looked at: a second process of the node
/// could run this long beside this one after this one's lock ended (its
/// file removed, its connection cut).
const NODE_LOCK_CHECK: Duration = Duration::from_secs(1);

/// How long the daemon's end waits for the node lock's thread (one stuck
/// in a call to an unanswering server keeps the lock until the process
/// ends, which is what the lock is for).
const NODE_LOCK_JOIN: Duration = Duration::from_secs(10);

/// The thread that holds the node's lock for the daemon's life.
pub(super) struct HeldLock(JoinHandle<NodeLock>);

impl HeldLock {
    /// The lock, once its thread (stopped by `stop`) gave it back.
    pub(super) fn join(self) -> Option<NodeLock> {
        let deadline = Instant::now() + NODE_LOCK_JOIN;
        while !self.0.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if self.0.is_finished() {
            self.0.join().ok()
        } else {
            None
        }
    }
}

/// Holds the node's lock on a thread that looks at it each round and takes
/// it again if it ended (its file removed, its connection cut). If another
/// process took the node meanwhile, the thread sets `stop` for the other
/// threads and the receiver says why: the daemon stops.
pub(super) fn hold_node_lock(
    mut lock: NodeLock,
    stop: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
) -> anyhow::Result<(HeldLock, watch::Receiver<Option<String>>)> {
    let (lost, node_lost) = watch::channel(None);
    let thread = std::thread::Builder::new()
        .name("dojang-node".into())
        .spawn(move || {
            let mut reachable = true;
            loop {
                // In slices, so a stop never waits out a round.
                let next = Instant::now() + NODE_LOCK_CHECK;
                while !stop.load(Ordering::Relaxed) && Instant::now() < next {
                    std::thread::sleep(Duration::from_millis(100));
                }
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                match lock.check() {
                    Held::Still => {}
                    Held::Retaken => {
                        metrics.store.node_lock(NodeLockEvent::Retaken);
                        tracing::warn!("the node lock had ended (its file removed or its connection cut): lock taken again");
                        reachable = true;
                    }
                    Held::Unreachable(e) => {
                        if reachable {
                            metrics.store.node_lock(NodeLockEvent::Unreachable);
                            tracing::error!(error = %e, "the node lock cannot be looked at: taking it again when it can");
                        }
                        reachable = false;
                    }
                    Held::Lost(why) => {
                        metrics.store.node_lock(NodeLockEvent::Lost);
                        tracing::error!("{why}: stopping");
                        stop.store(true, Ordering::Relaxed);
                        let _ = lost.send(Some(why));
                        break;
                    }
                }
            }
            lock
        })
        .context("starting the node lock's thread")?;
    Ok((HeldLock(thread), node_lost))
}

/// What the mirror thread needs besides the service.
pub(super) struct MirrorSite {
    pub(super) dir: std::path::PathBuf,
    pub(super) base_url: String,
    pub(super) issuer: String,
}

impl MirrorSite {
    /// Brings the mirror up to date once, counting the outcome.
    pub(super) fn update(&self, mirror: &mut crate::mirror::Mirror, service: &Service) {
        let site = crate::api::documents::Site {
            base_url: &self.base_url,
            issuer: &self.issuer,
            keys_max_age: crate::api::public::keys_max_age(
                service.policy.current().keys.prepublish,
            ),
        };
        let metrics = &service.node.metrics;
        match mirror.update(service, &site) {
            Ok(written) => {
                metrics.mirror_files_written.inc_by(written as u64);
                metrics
                    .mirror_complete
                    .set(time::OffsetDateTime::now_utc().unix_timestamp());
            }
            Err(e) => {
                metrics.mirror_failures.inc();
                tracing::warn!(dir = %self.dir.display(), error = %e, "updating the static mirror");
            }
        }
    }
}

/// How often the mirror is brought up to date (files change only when
/// their bytes do; status lists are re-signed every 30 s).
const MIRROR_INTERVAL: Duration = Duration::from_secs(5);

/// Starts the mirror thread: opens the directory (a failure stops the
/// start), then brings it up to date every [`MIRROR_INTERVAL`]; hands the
/// mirror back when stopped, for a last update after the final checkpoint.
pub(super) fn mirror(
    service: Arc<Service>,
    stop: Arc<AtomicBool>,
    site: Arc<MirrorSite>,
) -> anyhow::Result<JoinHandle<crate::mirror::Mirror>> {
    let mut mirror = crate::mirror::Mirror::open(&site.dir).map_err(anyhow::Error::msg)?;
    std::thread::Builder::new()
        .name("dojang-mirror".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                site.update(&mut mirror, &service);
                let next = Instant::now() + MIRROR_INTERVAL;
                while !stop.load(Ordering::Relaxed) && Instant::now() < next {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            mirror
        })
        .context("starting the mirror thread")
}
