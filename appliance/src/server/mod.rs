//! `dojangd serve`: three listeners around one [`service::Service`].
//!
//! - **api** (mTLS): issuance and credential state under `/v1` ([`api`]).
//! - **public**: what verifiers fetch ([`public`]).
//! - **ops** (loopback): metrics, liveness, readiness ([`ops`]).
//!
//! Device and database calls run on a bounded thread pool ([`pool`]), never
//! on the async executor. SIGHUP rebuilds the TLS configurations and
//! reloads the policy and PKI directory, swapping only if everything loads;
//! SIGTERM stops accepting, drains requests in flight and exits. Under
//! systemd (`Type=notify`) the daemon reports READY, RELOADING, STOPPING
//! and feeds the watchdog.

pub mod api;
pub mod audit_log;
mod auditor;
pub mod http;
pub mod identity;
mod issue;
pub mod key_lifecycle;
pub mod metrics;
mod officers;
pub mod ops;
pub(crate) mod pool;
pub mod problem;
pub mod public;
mod ratelimit;
mod seal;
pub mod service;
pub mod tls;

use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use sd_notify::NotifyState;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{Semaphore, watch};

use crate::config::Config;
use crate::store::{PostgresRegistry, Registry, SqliteRegistry};

/// Opens the configured registry.
pub fn open_registry(config: &Config) -> anyhow::Result<Arc<dyn Registry>> {
    let store = config
        .store
        .as_ref()
        .context("this needs a [store] table in the configuration")?;
    Ok(match (&store.sqlite, &store.postgres) {
        (Some(path), _) => Arc::new(
            SqliteRegistry::open(path)
                .with_context(|| format!("opening the registry {}", path.display()))?,
        ),
        (None, Some(url)) => {
            Arc::new(PostgresRegistry::open(url, store.pool_size).context("opening the registry")?)
        }
        (None, None) => anyhow::bail!("[store]: set sqlite or postgres"),
    })
}

/// A time as RFC 3339, the form answers and audit rules give times in.
pub(crate) fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn notify(state: &[NotifyState<'_>]) {
    // Outside systemd there is no socket and this does nothing.
    let _ = sd_notify::notify(false, state);
}

/// The watchdog period systemd asks for: `WATCHDOG_USEC`, for this process
/// when `WATCHDOG_PID` is unset or names it (as libsystemd reads them).
fn watchdog_period() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    match std::env::var("WATCHDOG_PID") {
        Ok(pid) if pid.parse::<u32>().ok() != Some(std::process::id()) => None,
        _ => (usec > 0).then(|| Duration::from_micros(usec)),
    }
}

/// Runs the daemon until SIGTERM/SIGINT.
pub fn run(config: Config) -> anyhow::Result<()> {
    let server = config
        .server
        .clone()
        .context("this needs a [server] table in the configuration")?;
    let credential = config.credential().map_err(anyhow::Error::msg)?.clone();
    let pki = config.pki().map_err(anyhow::Error::msg)?.clone();
    let api_tls = tls::api_config(&server.api)?;
    let public_tls = tls::public_config(&server.public)?;

    let backend = crate::cli::open_backend(&config)?;
    // One backend for the life of the process; signers borrow it.
    let backend: &'static std::sync::Arc<dyn pkcs11_shim::KeyBackend> =
        Box::leak(Box::new(backend));
    let backend: &'static dyn pkcs11_shim::KeyBackend = backend.as_ref();
    let registry = open_registry(&config)?;
    let metrics = Arc::new(metrics::Metrics::new());
    let service = Arc::new(
        service::Service::new(
            backend,
            registry,
            metrics.clone(),
            &server,
            credential.clone(),
            pki,
        )
        .context("starting the service")?,
    );
    let limits = server.limits.clone();
    let depth = metrics.queue_depth.clone();
    let pool = Arc::new(
        pool::BlockingPool::new(
            limits.signing_threads,
            limits.max_in_flight,
            Arc::new(move |d| depth.set(d)),
        )
        .context("starting the signing threads")?,
    );
    // Verifiers and monitoring get their own small pool: a flood of
    // unauthenticated fetches can slow them, never issuance.
    let public_pool = Arc::new(
        pool::BlockingPool::new(2, 64, Arc::new(|_| {})).context("starting the public threads")?,
    );
    let in_flight = Arc::new(Semaphore::new(limits.max_in_flight));
    let closing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let checkpoints_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let checkpointer = {
        let service = service.clone();
        let stop = checkpoints_stop.clone();
        std::thread::Builder::new()
            .name("dojang-audit".into())
            .spawn(move || {
                let mut last = std::time::Instant::now();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(200));
                    service.sequence_audit();
                    if service.checkpoint_due(last.elapsed()) {
                        let _ = service.checkpoint();
                        last = std::time::Instant::now();
                    }
                }
            })
            .context("starting the checkpoint thread")?
    };
    // The key lifecycle on a thread of its own: generating a key takes the
    // token for a while, which must not hold up audit checkpoints.
    let keys_thread = {
        let service = service.clone();
        let stop = checkpoints_stop.clone();
        let interval = Duration::from_millis(server.keys.lifecycle_interval_ms);
        // A node that stops renewing gives the lease up after three rounds
        // (at least 10 s: longer than generating a key takes).
        let lease_ms = (3 * server.keys.lifecycle_interval_ms as i64).max(10_000);
        std::thread::Builder::new()
            .name("dojang-keys".into())
            .spawn(move || {
                let stopping = || stop.load(std::sync::atomic::Ordering::Relaxed);
                while !stopping() {
                    service.keys_tick(time::OffsetDateTime::now_utc(), lease_ms);
                    // In slices, so a stop never waits out a long interval.
                    let next = std::time::Instant::now() + interval;
                    while !stopping() && std::time::Instant::now() < next {
                        std::thread::sleep(Duration::from_millis(100).min(interval));
                    }
                }
            })
            .context("starting the key lifecycle thread")?
    };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("dojang-io")
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let service_for_stop = service.clone();
    runtime.block_on(async move {
        let bind = |addr: std::net::SocketAddr, name: &'static str| async move {
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the {name} listener to {addr}"))
        };
        let api_listener = bind(server.api.listen, "api").await?;
        let public_listener = bind(server.public.listen, "public").await?;
        let ops_listener = bind(server.ops.listen, "ops").await?;
        let api_slot: http::TlsSlot = Arc::new(RwLock::new(Some(api_tls)));
        let public_slot: http::TlsSlot = Arc::new(RwLock::new(public_tls));
        let (stop, stopped) = watch::channel(false);
        let (rekey, rekeyed) = watch::channel(0u64);

        let routers: [(TcpListener, http::TlsSlot, Arc<dyn http::Router>); 3] = [
            (
                api_listener,
                api_slot.clone(),
                Arc::new(api::Api::new(
                    service.clone(),
                    pool.clone(),
                    limits.max_body_bytes,
                    Duration::from_millis(limits.body_read_timeout_ms),
                    in_flight.clone(),
                    closing.clone(),
                )),
            ),
            (
                public_listener,
                public_slot.clone(),
                Arc::new(public::Public::new(
                    service.clone(),
                    public_pool.clone(),
                    server.public.base_url.clone(),
                    credential.issuer.clone(),
                )),
            ),
            (
                ops_listener,
                Arc::new(RwLock::new(None)),
                Arc::new(ops::Ops::new(service.clone(), public_pool.clone())),
            ),
        ];
        let mut tasks = Vec::new();
        for (listener, slot, router) in routers {
            tracing::info!(
                listener = router.listener(),
                address = %listener.local_addr()?,
                "listening"
            );
            tasks.push(tokio::spawn(http::serve(
                listener,
                slot,
                router,
                limits.clone(),
                metrics.clone(),
                stopped.clone(),
                rekeyed.clone(),
            )));
        }
        notify(&[NotifyState::Ready, NotifyState::Status("serving")]);
        if let Some(watchdog) = watchdog_period() {
            let period = watchdog / 2;
            // Detached: the task ends with its connection (or the process).
        drop(tokio::spawn(async move {
                loop {
                    tokio::time::sleep(period).await;
                    notify(&[NotifyState::Watchdog]);
                }
            }));
        }

        let mut hup = signal(SignalKind::hangup())?;
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        loop {
            tokio::select! {
                _ = hup.recv() => {
                    notify(&[NotifyState::Reloading]);
                    let reloaded = reload(&server, &service, &api_slot, &public_slot, &pool).await;
                    let reloaded_ok = reloaded.is_ok();
                    if reloaded_ok {
                        rekey.send_modify(|generation| *generation += 1);
                    }
                    match reloaded {
                        Ok(()) => tracing::info!("reloaded TLS files, CRLs, policy and PKI"),
                        Err(e) => tracing::error!(error = %e, "reload refused; the previous configuration stays"),
                    }
                    let service = service.clone();
                    let ok = if reloaded_ok { "ok" } else { "error" };
                    // Not on the signing pool: a full pool must not lose the entry.
                    let _ = tokio::task::spawn_blocking(move || service.record_event("reload", ok)).await;
                    notify(&[NotifyState::Ready, NotifyState::Status("serving")]);
                }
                _ = term.recv() => break,
                _ = int.recv() => break,
            }
        }
        notify(&[NotifyState::Stopping, NotifyState::Status("draining")]);
        tracing::info!("stopping: draining requests in flight");
        closing.store(true, std::sync::atomic::Ordering::Release);
        let _ = stop.send(true);
        let permits = u32::try_from(limits.max_in_flight).unwrap_or(u32::MAX);
        let drained = tokio::time::timeout(
            Duration::from_millis(limits.drain_timeout_ms),
            in_flight.acquire_many(permits),
        )
        .await;
        if drained.is_err() {
            tracing::warn!("drain timed out with requests still in flight");
        }
        // Each listener returns once its connections have closed.
        let deadline = Duration::from_millis(limits.drain_timeout_ms) + Duration::from_secs(2);
        for task in tasks {
            let _ = tokio::time::timeout(deadline, task).await;
        }
        anyhow::Ok(())
    })?;
    // The last entries of this run, covered by a final checkpoint.
    checkpoints_stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = checkpointer.join();
    let _ = keys_thread.join();
    service_for_stop.record_event("stop", "ok");
    let _ = service_for_stop.checkpoint();
    tracing::info!("stopped");
    Ok(())
}

async fn reload(
    server: &crate::config::ServerConfig,
    service: &Arc<service::Service>,
    api_slot: &http::TlsSlot,
    public_slot: &http::TlsSlot,
    pool: &Arc<pool::BlockingPool>,
) -> anyhow::Result<()> {
    // Build everything first; swap only when all of it loaded.
    let api_tls = tls::api_config(&server.api)?;
    let public_tls = tls::public_config(&server.public)?;
    let service = service.clone();
    pool.submit(move || service.reload(time::OffsetDateTime::now_utc()))
        .map_err(|_| anyhow::anyhow!("the signing pool is full; reload later"))?
        .await
        .context("reload worker")??;
    if let Ok(mut slot) = api_slot.write() {
        *slot = Some(api_tls);
    }
    if let Ok(mut slot) = public_slot.write() {
        *slot = public_tls;
    }
    Ok(())
}
