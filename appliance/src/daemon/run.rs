//! `dojangd serve`: three or four listeners around one [`Service`].
//!
//! - **api** (mTLS): issuance and credential state under `/v1`.
//! - **public**: what verifiers fetch.
//! - **ops** (loopback): metrics, liveness, readiness.
//! - **wallet** (TLS, if `[server.wallet]`): OpenID4VCI for phones.
//!
//! Device and database calls run on a bounded thread pool, never on the
//! async executor. SIGHUP rebuilds the TLS configurations and reloads the
//! policy and PKI directory, swapping only if everything loads; SIGTERM
//! stops accepting, drains requests in flight and exits. Under systemd
//! (`Type=notify`) the daemon reports READY, RELOADING, STOPPING and feeds
//! the watchdog.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use sd_notify::NotifyState;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

use super::threads;
use crate::api::{Api, InFlight, Ops, Public, WalletApi};
use crate::config::{Config, CredentialConfig, Limits, ServerConfig};
use crate::http::{self, BlockingPool, Router, TlsSlot, tls};
use crate::metrics::Metrics;
use crate::service::Service;

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

/// What the listeners share, built before the runtime starts.
struct Shared {
    service: Arc<Service>,
    metrics: Arc<Metrics>,
    pool: Arc<BlockingPool>,
    public_pool: Arc<BlockingPool>,
    audit_pool: Arc<BlockingPool>,
    in_flight: Arc<InFlight>,
    closing: Arc<AtomicBool>,
    /// The wallet listener's TLS (empty without one), swapped on reload.
    wallet_slot: TlsSlot,
}

/// The service and its pools.
fn start(config: &Config, server: &ServerConfig) -> anyhow::Result<Shared> {
    let credential = config.credential().map_err(anyhow::Error::msg)?.clone();
    let pki = config.pki().map_err(anyhow::Error::msg)?.clone();
    let backend = crate::cli::open_backend(config)?;
    // One backend for the life of the process; signers borrow it.
    let backend: &'static Arc<dyn pkcs11_shim::KeyBackend> = Box::leak(Box::new(backend));
    let registry = crate::cli::open_service_registry(config, Arc::clone(backend))?;
    let metrics = Arc::new(Metrics::new());
    registry.observe_writer(metrics.store.writer());
    let service = Service::new(
        backend.as_ref(),
        registry,
        metrics.clone(),
        server,
        credential,
        pki,
    )
    .context("starting the service")?;
    let limits = &server.limits;
    let depth = metrics.queue_depth.clone();
    let pool = BlockingPool::new(
        "dojang-sign",
        limits.signing_threads,
        limits.worker_niceness,
        limits.max_in_flight,
        Arc::new(move |d| depth.set(d)),
    )
    .context("starting the signing threads")?;
    // Verifiers and monitoring get their own small pool: a flood of
    // unauthenticated fetches can slow them, never issuance.
    let public_pool = BlockingPool::new(
        "dojang-pub",
        2,
        limits.worker_niceness,
        64,
        Arc::new(|_| {}),
    )
    .context("starting the public threads")?;
    // Auditors' reads and proofs: their own threads, so a long proof (or
    // many) never holds a signing thread, and a hung device never holds them.
    let audit_pool = BlockingPool::new(
        "dojang-proof",
        2,
        limits.worker_niceness,
        32,
        Arc::new(|_| {}),
    )
    .context("starting the audit threads")?;
    Ok(Shared {
        service: Arc::new(service),
        metrics,
        pool: Arc::new(pool),
        public_pool: Arc::new(public_pool),
        audit_pool: Arc::new(audit_pool),
        in_flight: Arc::new(InFlight::new(
            limits.max_in_flight,
            limits.reserved_in_flight(),
            limits.in_flight_per_client(),
        )),
        closing: Arc::new(AtomicBool::new(false)),
        wallet_slot: Arc::new(RwLock::new(
            server
                .wallet
                .as_ref()
                .map(tls::wallet_config)
                .transpose()
                .context("the wallet listener's TLS files")?,
        )),
    })
}

/// Runs the daemon until SIGTERM/SIGINT.
pub fn run(config: Config) -> anyhow::Result<()> {
    let server = config
        .server
        .clone()
        .context("this needs a [server] table in the configuration")?;
    let credential = config.credential().map_err(anyhow::Error::msg)?.clone();
    // Before the registry opens: a second process of this node writes nothing.
    let node_lock = crate::cli::take_node_lock(&config, &server.node_id)?;
    let shared = start(&config, &server)?;
    let api_tls = tls::api_config(&server.api, Some(shared.service.node.backend))?;
    let public_tls = tls::public_config(&server.public)?;
    shared.service.record_event(
        "tls.load",
        "ok",
        Some(loaded(&api_tls, public_tls.as_ref())),
    );
    let stop_threads = Arc::new(AtomicBool::new(false));
    let audit_thread = threads::audit(shared.service.clone(), stop_threads.clone())?;
    let witness_thread = threads::witnesses(shared.service.clone(), stop_threads.clone())?;
    let keys_thread = threads::keys(
        shared.service.clone(),
        stop_threads.clone(),
        server.keys.lifecycle_interval_ms,
    )?;
    let status_thread = threads::status(shared.service.clone(), stop_threads.clone())?;
    let (node_lock, node_lost) =
        threads::hold_node_lock(node_lock, stop_threads.clone(), shared.metrics.clone())?;
    let mirror_site = server.public.mirror_dir.clone().map(|dir| {
        Arc::new(threads::MirrorSite {
            dir,
            base_url: server.public.base_url.clone(),
            issuer: credential.issuer.clone(),
        })
    });
    let mirror_thread = mirror_site
        .clone()
        .map(|site| threads::mirror(shared.service.clone(), stop_threads.clone(), site))
        .transpose()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("dojang-io")
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let slots = (
        Arc::new(RwLock::new(Some(api_tls))) as TlsSlot,
        Arc::new(RwLock::new(public_tls)) as TlsSlot,
    );
    let lost = runtime.block_on(serve(&server, &credential, &shared, slots, node_lost))?;
    // Nothing may still be inside the token, the store or OpenSSL when the
    // process exits and their globals are torn down (a signing job left
    // running there crashed an exit): the connections' tasks end, then the
    // pools' jobs.
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    shared.pool.finish();
    shared.public_pool.finish();
    shared.audit_pool.finish();
    // The last entries of this run, covered by a final checkpoint.
    stop_threads.store(true, Ordering::Relaxed);
    let _ = audit_thread.join();
    if let Some(thread) = witness_thread {
        let _ = thread.join();
    }
    let _ = keys_thread.join();
    let _ = status_thread.join();
    // Held until this run's last entry is written.
    let _node_lock = node_lock.join();
    let outcome = if lost.is_some() { "error" } else { "ok" };
    shared.service.record_event("stop", outcome, None);
    let _ = shared.service.audit.checkpoint();
    // The mirror ends with this run's last checkpoint.
    if let (Some(site), Some(Ok(mut mirror))) = (mirror_site, mirror_thread.map(|t| t.join())) {
        site.update(&mut mirror, &shared.service);
    }
    tracing::info!("stopped");
    match lost {
        Some(why) => Err(anyhow::anyhow!(why)),
        None => Ok(()),
    }
}

/// The three routers.
fn routers(
    server: &ServerConfig,
    credential: &CredentialConfig,
    shared: &Shared,
) -> [Arc<dyn Router>; 3] {
    let limits = &server.limits;
    [
        Arc::new(Api::new(
            shared.service.clone(),
            (shared.pool.clone(), shared.audit_pool.clone()),
            limits.max_body_bytes,
            Duration::from_millis(limits.body_read_timeout_ms),
            shared.in_flight.clone(),
            shared.closing.clone(),
        )),
        Arc::new(Public::new(
            shared.service.clone(),
            shared.public_pool.clone(),
            server.public.base_url.clone(),
            credential.issuer.clone(),
        )),
        Arc::new(Ops::new(shared.service.clone(), shared.public_pool.clone())),
    ]
}

/// Serves the listeners until a stop signal, then drains them.
async fn serve(
    server: &ServerConfig,
    credential: &CredentialConfig,
    shared: &Shared,
    (api_slot, public_slot): (TlsSlot, TlsSlot),
    node_lost: watch::Receiver<Option<String>>,
) -> anyhow::Result<Option<String>> {
    let bind = |addr: std::net::SocketAddr, name: &'static str| async move {
        TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the {name} listener to {addr}"))
    };
    let listeners = [
        (bind(server.api.listen, "api").await?, api_slot.clone()),
        (
            bind(server.public.listen, "public").await?,
            public_slot.clone(),
        ),
        (
            bind(server.ops.listen, "ops").await?,
            Arc::new(RwLock::new(None)),
        ),
    ];
    let (stop, stopped) = watch::channel(false);
    let (rekey, rekeyed) = watch::channel(0u64);
    let mut tasks = Vec::new();
    if let Some(task) = serve_wallet(server, shared, (&stopped, &rekeyed)).await? {
        tasks.push(task);
    }
    for ((listener, slot), router) in listeners
        .into_iter()
        .zip(routers(server, credential, shared))
    {
        tracing::info!(
            listener = router.listener(),
            address = %listener.local_addr()?,
            "listening"
        );
        tasks.push(tokio::spawn(http::serve(
            listener,
            slot,
            router,
            server.limits.clone(),
            shared.metrics.clone(),
            stopped.clone(),
            rekeyed.clone(),
        )));
    }
    notify(&[NotifyState::Ready, NotifyState::Status("serving")]);
    feed_watchdog(shared);
    let lost = signals(server, shared, (&api_slot, &public_slot), &rekey, node_lost).await?;
    notify(&[NotifyState::Stopping, NotifyState::Status("draining")]);
    tracing::info!("stopping: draining requests in flight");
    shared.closing.store(true, Ordering::Release);
    let _ = stop.send(true);
    // Another process is the node now: what is in flight is not waited for.
    let limit = match lost {
        Some(_) => Duration::ZERO,
        None => Duration::from_millis(server.limits.drain_timeout_ms),
    };
    drain(limit, shared, tasks).await;
    Ok(lost)
}

/// The wallet listener, if configured, and the task that purges what
/// expired in its book.
async fn serve_wallet(
    server: &ServerConfig,
    shared: &Shared,
    (stopped, rekeyed): (&watch::Receiver<bool>, &watch::Receiver<u64>),
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    let Some(wallet) = &server.wallet else {
        return Ok(None);
    };
    let listener = TcpListener::bind(wallet.listen)
        .await
        .with_context(|| format!("binding the wallet listener to {}", wallet.listen))?;
    let limits = Limits {
        max_connections: wallet.max_connections,
        max_body_bytes: wallet.max_body_bytes,
        ..server.limits.clone()
    };
    // Wallets take at most half the signing pool's queue.
    let router = WalletApi::new(
        shared.service.clone(),
        shared.pool.clone(),
        server.limits.max_in_flight / 2,
        Duration::from_millis(server.limits.body_read_timeout_ms),
    )
    .context("the wallet router")?;
    tracing::info!(listener = "wallet", address = %listener.local_addr()?, "listening");
    // Expired offers (holder data) go within seconds, traffic or not.
    let service = shared.service.clone();
    drop(tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(5));
        loop {
            let _ = every.tick().await;
            if let Some(wallet) = &service.wallet {
                let now = time::OffsetDateTime::now_utc().unix_timestamp();
                wallet.purge(&service.node, now);
            }
        }
    }));
    Ok(Some(tokio::spawn(http::serve(
        listener,
        shared.wallet_slot.clone(),
        Arc::new(router),
        limits,
        shared.metrics.clone(),
        stopped.clone(),
        rekeyed.clone(),
    ))))
}

/// Feeds systemd's watchdog, if it asked, at half its period, and only
/// when a probe job round-trips through the signing pool and the device
/// (or, the queue being full, jobs still finish): a pool whose threads
/// all hang in the device, or died, starves it, and systemd restarts the
/// daemon. A device that answers with an error is not stuck: the daemon
/// reconnects it by itself.
fn feed_watchdog(shared: &Shared) {
    if let Some(watchdog) = watchdog_period() {
        let period = watchdog / 2;
        let (pool, service) = (shared.pool.clone(), shared.service.clone());
        // Detached: the task ends with the process.
        drop(tokio::spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                let probe_service = service.clone();
                let alive = match pool.submit(move || probe_service.node.backend.health()) {
                    Ok(answer) => matches!(tokio::time::timeout(period, answer).await, Ok(Ok(_))),
                    Err(_) => pool.since_last_completion() < period,
                };
                if alive {
                    notify(&[NotifyState::Watchdog]);
                } else {
                    tracing::error!(
                        "the signing pool did not answer a probe: the watchdog is not fed"
                    );
                }
            }
        }));
    }
}

/// How often the client CRL files are checked for a new version.
const CRL_FILE_CHECK: Duration = Duration::from_secs(2);

/// The client CRL files' modification times and sizes (a change reloads).
fn crl_stamps(server: &ServerConfig) -> Vec<Option<(std::time::SystemTime, u64)>> {
    server
        .api
        .client_crls
        .iter()
        .map(|path| {
            std::fs::metadata(path)
                .ok()
                .and_then(|m| m.modified().ok().map(|t| (t, m.len())))
        })
        .collect()
}

/// Reloads on SIGHUP, and when a client CRL file changes (a revoked client
/// must not wait for an operator's signal), until SIGTERM or SIGINT, or
/// until another process took this node's lock (then why).
async fn signals(
    server: &ServerConfig,
    shared: &Shared,
    (api_slot, public_slot): (&TlsSlot, &TlsSlot),
    rekey: &watch::Sender<u64>,
    mut node_lost: watch::Receiver<Option<String>>,
) -> anyhow::Result<Option<String>> {
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut crl_check = tokio::time::interval(CRL_FILE_CHECK);
    let mut stamps = crl_stamps(server);
    loop {
        tokio::select! {
            _ = hup.recv() => {
                reload_and_report(server, shared, (api_slot, public_slot), rekey, "reload").await;
                stamps = crl_stamps(server);
            }
            _ = crl_check.tick() => {
                let now = crl_stamps(server);
                if now != stamps {
                    stamps = now;
                    tracing::info!("a client CRL file changed: reloading");
                    reload_and_report(server, shared, (api_slot, public_slot), rekey, "reload.crl").await;
                }
            }
            changed = node_lost.changed() => match changed {
                Ok(()) => {
                    if let Some(why) = node_lost.borrow().clone() {
                        return Ok(Some(why));
                    }
                }
                // Its thread ended while serving (a panic): unlocked.
                Err(_) => return Ok(Some("the node lock's thread ended".into())),
            },
            _ = term.recv() => return Ok(None),
            _ = int.recv() => return Ok(None),
        }
    }
}

/// One reload (SIGHUP or a changed CRL file), told to systemd and audited.
async fn reload_and_report(
    server: &ServerConfig,
    shared: &Shared,
    (api_slot, public_slot): (&TlsSlot, &TlsSlot),
    rekey: &watch::Sender<u64>,
    event: &'static str,
) {
    notify(&[NotifyState::Reloading]);
    let reloaded = reload(server, shared, api_slot, public_slot).await;
    let (outcome, detail) = match reloaded {
        Ok(loaded) => {
            rekey.send_modify(|generation| *generation += 1);
            tracing::info!("reloaded TLS files, CRLs, policy and PKI");
            ("ok", Some(loaded))
        }
        Err(e) => {
            // The error names files: the log says which, the entry does not.
            tracing::error!(error = %e, "reload refused; the previous configuration stays");
            ("error", None)
        }
    };
    let service = shared.service.clone();
    // Not on the signing pool: a full pool must not lose the entry.
    let _ = tokio::task::spawn_blocking(move || service.record_event(event, outcome, detail)).await;
    notify(&[NotifyState::Ready, NotifyState::Status("serving")]);
}

/// Waits (up to `limit`) for requests in flight, then for the listeners to close.
async fn drain(limit: Duration, shared: &Shared, tasks: Vec<tokio::task::JoinHandle<()>>) {
    let drained = tokio::time::timeout(limit, shared.in_flight.drained()).await;
    if drained.is_err() {
        tracing::warn!("drain timed out with requests still in flight");
    }
    // Each listener returns once its connections have closed.
    let deadline = limit + Duration::from_secs(2);
    for task in tasks {
        let _ = tokio::time::timeout(deadline, task).await;
    }
}

async fn reload(
    server: &ServerConfig,
    shared: &Shared,
    api_slot: &TlsSlot,
    public_slot: &TlsSlot,
) -> anyhow::Result<String> {
    let (service, pool) = (&shared.service, &shared.pool);
    // Build everything first; swap only when all of it loaded.
    let api_tls = tls::api_config(&server.api, Some(service.node.backend))?;
    let public_tls = tls::public_config(&server.public)?;
    let wallet_tls = server.wallet.as_ref().map(tls::wallet_config).transpose()?;
    let mut loaded = loaded(&api_tls, public_tls.as_ref());
    for fingerprint in wallet_tls.iter().flat_map(|w| w.loaded.iter()) {
        loaded.push(' ');
        loaded.push_str(fingerprint);
    }
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
    if let (Some(wallet_tls), Ok(mut slot)) = (wallet_tls, shared.wallet_slot.write()) {
        *slot = Some(wallet_tls);
    }
    Ok(loaded)
}

/// What both listeners loaded, as one audit rule: the fingerprints of the
/// CA certificates, CRLs and server certificates, space-separated.
fn loaded(api: &tls::ListenerTls, public: Option<&tls::ListenerTls>) -> String {
    api.loaded
        .iter()
        .chain(public.into_iter().flat_map(|p| p.loaded.iter()))
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(" ")
}
