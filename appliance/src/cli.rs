//! Pieces the two binaries share: config loading, logging set-up, opening
//! the key backend with a message an operator can act on.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use pkcs11_shim::KeyBackend;
use tracing::level_filters::LevelFilter;
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};

use crate::config::{Config, DEFAULT_CONFIG_PATH};
use crate::store::node_lock::{NodeLock, PostgresNodeLock};
use crate::store::{PostgresRegistry, Registry, SqliteRegistry};

/// The config path: `--config`, else `$DOJANG_CONFIG`, else the default.
pub fn config_path(flag: Option<PathBuf>) -> PathBuf {
    flag.or_else(|| std::env::var_os("DOJANG_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH))
}

/// Logs to stderr (stdout carries command output): warnings by default,
/// info with `-v`, debug with `-vv`.
pub fn init_logging(verbosity: u8) {
    let level = match verbosity {
        0 => LevelFilter::WARN,
        1 => LevelFilter::INFO,
        _ => LevelFilter::DEBUG,
    };
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

/// Log lines waiting for the log thread at most; a thread that logs
/// beyond them waits (no line is dropped). About 2 MB of lines: a few
/// seconds of issuance at saturation.
const LOG_LINES_QUEUED: usize = 8192;

/// What the log thread gathers before one `write(2)`: it writes the lines
/// queued, then flushes when the queue is empty, so a line waits only for
/// those queued with it (at saturation, two lines an issuance were two
/// writes an issuance).
const LOG_BATCH_BYTES: usize = 64 << 10;

/// The daemon's logs on stderr (journald reads them): info by default,
/// debug with `-v`; one JSON object a line with `json`. Lines are written
/// by a thread of their own: a `write(2)` that stalls (journald behind, a
/// file system committing its journal) held stderr's lock, and every
/// request thread that logged waited behind it (measured: pauses of the
/// whole daemon of 7 ms at half load). Keep the guard until exit: dropping
/// it writes what is queued.
pub fn init_daemon_logging(verbosity: u8, json: bool) -> WorkerGuard {
    let level = if verbosity == 0 {
        LevelFilter::INFO
    } else {
        LevelFilter::DEBUG
    };
    use std::io::IsTerminal;
    let (writer, guard) = NonBlockingBuilder::default()
        .buffered_lines_limit(LOG_LINES_QUEUED)
        .lossy(false)
        .thread_name("dojang-log")
        .finish(std::io::BufWriter::with_capacity(
            LOG_BATCH_BYTES,
            std::io::stderr(),
        ));
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(writer)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
    guard
}

/// Loads and validates the configuration.
pub fn load_config(path: &Path) -> anyhow::Result<Config> {
    Ok(Config::load(path)?)
}

/// Opens the configured key backend.
pub fn open_backend(config: &Config) -> anyhow::Result<Arc<dyn KeyBackend>> {
    pkcs11_shim::open(&config.keys).context("opening the key backend")
}

/// Opens the configured registry to record decisions: each audit entry is
/// sealed with a key the HSM derives from the response-seal key
/// ([`crate::audit::seal`]), as the daemon's are.
pub fn open_sealed_registry(
    config: &Config,
    backend: Arc<dyn KeyBackend>,
) -> anyhow::Result<Arc<dyn Registry>> {
    let registry = open_registry(config)?;
    registry.seal_audit_with(audit_sealer(config, backend));
    Ok(registry)
}

/// As [`open_sealed_registry`], for the daemon: on SQLite the log file is
/// laid out first (`store.sqlite_log_prewrite_mib`).
pub fn open_service_registry(
    config: &Config,
    backend: Arc<dyn KeyBackend>,
) -> anyhow::Result<Arc<dyn Registry>> {
    let registry = open_registry_as(config, true)?;
    registry.seal_audit_with(audit_sealer(config, backend));
    Ok(registry)
}

/// The lock of this configuration's node, taken before the daemon opens
/// its registry: a second process of the node is refused here, before it
/// writes anything.
pub fn take_node_lock(config: &Config, node_id: &str) -> anyhow::Result<NodeLock> {
    let store = config
        .store
        .as_ref()
        .context("this needs a [store] table in the configuration")?;
    match (&store.sqlite, &store.postgres) {
        (Some(path), _) => NodeLock::sqlite(path, "dojangd serve"),
        (None, Some(url)) => Ok(NodeLock::Postgres(Box::new(PostgresNodeLock::take(
            url,
            store.postgres_ca.as_deref(),
            node_id,
        )?))),
        (None, None) => anyhow::bail!("[store]: set sqlite or postgres"),
    }
}

/// The audit seals of this configuration's token: node keys derived from
/// its response-seal key (`server.keys.response_seal`, or the default).
pub fn audit_sealer(
    config: &Config,
    backend: Arc<dyn KeyBackend>,
) -> Arc<crate::audit::seal::Sealer> {
    let label = config.server.as_ref().map_or_else(
        || crate::config::ServiceKeys::default().response_seal,
        |server| server.keys.response_seal.clone(),
    );
    crate::audit::seal::Sealer::from_hsm(backend, &label)
}

/// Opens the configured registry.
pub fn open_registry(config: &Config) -> anyhow::Result<Arc<dyn Registry>> {
    open_registry_as(config, false)
}

/// Opens the configured registry, for the service (`service`: on SQLite,
/// its log file laid out in full first) or for a tool.
fn open_registry_as(config: &Config, service: bool) -> anyhow::Result<Arc<dyn Registry>> {
    let store = config
        .store
        .as_ref()
        .context("this needs a [store] table in the configuration")?;
    let log_mib = if service {
        store.sqlite_log_prewrite_mib
    } else {
        0
    };
    Ok(match (&store.sqlite, &store.postgres) {
        (Some(path), _) => Arc::new(
            SqliteRegistry::open_for_service(path, log_mib)
                .with_context(|| format!("opening the registry {}", path.display()))?,
        ),
        (None, Some(url)) => Arc::new(
            PostgresRegistry::open_with_ca(url, store.pool_size, store.postgres_ca.as_deref())
                .context("opening the registry")?,
        ),
        (None, None) => anyhow::bail!("[store]: set sqlite or postgres"),
    })
}
