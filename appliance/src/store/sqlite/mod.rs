//! The registry on SQLite: WAL, `synchronous=FULL`, and group commit.
//!
//! Every write goes to one writer thread (`writer`), so one fsync serves a
//! batch of requests; reads use a small pool of their own connections (WAL
//! lets them run beside the writer). The registry's logic is the shared
//! one (`store::sql`); this driver owns the connections, the writer, the
//! WAL checkpoints and the migrations' SQLite text.

mod prewrite;
mod tx;
mod wal;
mod writer;

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use rusqlite::Connection;

use self::prewrite::Prewrite;
use self::tx::{SqliteTx, map_err, unavailable};
use self::writer::{Job, Settle, writer_loop};
use super::StoreError;
use super::sql::migrations::{self, Dialect, MIGRATIONS};
use super::sql::{Driver, Numbering, ReadFn, SqlRegistry, Taken, Tx, WriteFn};
use crate::config::SQLITE_LOG_FILE_MIB;
use crate::metrics::store::WriterMetrics;

/// Writes queued at most before callers wait (back-pressure, not memory).
const QUEUE_MAX: usize = 4096;
const READERS: usize = 4;

/// The SQLite driver: its writer thread, readers and WAL checkpointer.
pub struct SqliteDriver {
    /// Keeps the WAL checkpoint thread running while the registry lives.
    _checkpoints: mpsc::Sender<()>,
    path: PathBuf,
    writer: SyncSender<Job>,
    readers: Mutex<Vec<Connection>>,
    numbering: Arc<Numbering>,
    /// RESTART checkpoints that completed (`wal.rs`).
    wal_restarts: Arc<AtomicU64>,
    /// The writer's metrics, once the daemon hands them over.
    writer_metrics: Arc<OnceLock<WriterMetrics>>,
}

/// The registry in one SQLite file.
pub type SqliteRegistry = SqlRegistry<SqliteDriver>;

/// Gives a write's audit numbers back when dropped: armed while the write
/// runs, so a write that panics (its savepoint rolled back) leaves no gap.
struct GiveBack<'a>(&'a Numbering, &'a RefCell<Taken>);

impl Drop for GiveBack<'_> {
    fn drop(&mut self) {
        self.0.give_back(&self.1.borrow());
    }
}

fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path).map_err(unavailable)?;
    conn.busy_timeout(Duration::from_secs(5)).map_err(map_err)?;
    // 1 KiB pages (a new file only; SQLite keeps an existing file's size):
    // each issuance lands in a few random index leaves, and every dirty page
    // goes to the WAL whole, so smaller pages mean less to write per commit
    // (about 1.4x the records per second of 4 KiB pages, `--bench registry`).
    conn.execute_batch(
        "PRAGMA page_size = 1024; PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;",
    )
    .map_err(map_err)?;
    Ok(conn)
}

/// How much of the database file a reader maps (SQLite maps at most the
/// file): a page a reader needs is then a memory access, not a `pread` —
/// an inclusion proof at 10^8 entries reads its leaf tile, an 8 KiB row
/// over nine 1 KiB pages. The mapped pages are the page cache, shared and
/// reclaimable; they count in the daemon's resident size as file pages.
const READER_MAP_BYTES: u64 = 1 << 40;

fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let conn = open_connection(path)?;
    conn.pragma_update(None, "mmap_size", READER_MAP_BYTES as i64)
        .map_err(map_err)?;
    Ok(conn)
}

/// Builds before the numbering was shared with PostgreSQL applied the
/// claims MAC as migration 3 and the write probe as 4: a store left at 3
/// by one of them has the claims MAC and lacks the write probe.
fn renumbered(tx: &mut dyn Tx, version: u64) -> Result<u64, StoreError> {
    if version != 3 {
        return Ok(version);
    }
    let has_claims_mac = tx
        .query_one(
            "SELECT COUNT(*) FROM pragma_table_info('credentials') WHERE name = 'claims_mac'",
            &[],
        )?
        .count(0)?
        > 0;
    if !has_claims_mac {
        return Ok(version);
    }
    if let Some(probe) = MIGRATIONS.get(2) {
        tx.batch(&probe.text(Dialect::Sqlite))?;
    }
    tx.batch("INSERT INTO schema_version (version) VALUES (4)")?;
    Ok(4)
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let transaction = conn.transaction().map_err(map_err)?;
    let mut tx = SqliteTx {
        conn: &transaction,
        audit: None,
    };
    let version = migrations::version(&mut tx)?;
    let version = renumbered(&mut tx, version)?;
    migrations::apply(&mut tx, Dialect::Sqlite, version)?;
    transaction.commit().map_err(map_err)
}

/// Lays out the log file; a failure leaves it to grow as it is written.
fn lay_out_log(path: &Path, bytes: u64) {
    let started = Instant::now();
    match prewrite::prewrite(path, bytes) {
        Ok(Prewrite::Written(bytes)) => tracing::info!(
            mib = bytes >> 20,
            seconds = started.elapsed().as_secs_f64(),
            "the registry's log file laid out in full"
        ),
        Ok(Prewrite::Kept) => tracing::info!(
            "the registry's log file was there (another process has the registry open, or its log could not be copied in); left as it is"
        ),
        Ok(Prewrite::Off) => {}
        Err(e) => tracing::warn!(
            error = %e,
            "could not lay out the registry's log file; it grows as commits write it, with slower syncs until its first restart"
        ),
    }
}

impl SqlRegistry<SqliteDriver> {
    /// Opens (creating if needed) the registry at `path` and migrates it.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_for_service(path, 0)
    }

    /// As [`open`](Self::open), having first laid out the log file in
    /// full, `log_mib` of it, unless it is there (`prewrite.rs`): for the
    /// service, whose commits then never grow the file.
    pub fn open_for_service(path: &Path, log_mib: u64) -> Result<Self, StoreError> {
        let mut conn = open_connection(path)?;
        migrate(&mut conn)?;
        if log_mib > 0 {
            // Closed first: the last connection's close copies the log
            // into the database (a killed run's too) and removes it.
            drop(conn);
            lay_out_log(path, log_mib.min(SQLITE_LOG_FILE_MIB) << 20);
            conn = open_connection(path)?;
        }
        wal::prepare_writer(&conn)?;
        let wal_restarts = Arc::new(AtomicU64::new(0));
        let checkpoints = wal::spawn_checkpointer(path, wal_restarts.clone())?;
        let (writer, jobs) = mpsc::sync_channel::<Job>(QUEUE_MAX);
        let writer_metrics = Arc::new(OnceLock::new());
        let observed = writer_metrics.clone();
        let _ = std::thread::Builder::new()
            .name("dojang-sq-write".into())
            .spawn(move || writer_loop(conn, jobs, &observed))
            .map_err(|e| StoreError::Internal(e.to_string()))?;
        let readers = (0..READERS)
            .map(|_| open_reader(path))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(SqlRegistry {
            driver: SqliteDriver {
                _checkpoints: checkpoints,
                path: path.to_owned(),
                writer,
                readers: Mutex::new(readers),
                numbering: Arc::default(),
                wal_restarts,
                writer_metrics,
            },
            upper_hashes: Default::default(),
            edge_roots: Default::default(),
            upper_tree: Default::default(),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.driver.path
    }

    /// Copies the whole database to `target` (a new file) with SQLite's
    /// online backup API, in one step: one read transaction, so the copy
    /// is a consistent snapshot while the daemon keeps writing.
    pub fn backup_to(&self, target: &Path) -> Result<(), StoreError> {
        let source = open_connection(&self.driver.path)?;
        let mut copy = Connection::open(target).map_err(unavailable)?;
        let backup = rusqlite::backup::Backup::new(&source, &mut copy).map_err(map_err)?;
        // `step(-1)` copies every page at once; busy or locked (the
        // writer mid-commit) is retried, at most for the busy timeout.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            match backup.step(-1).map_err(map_err)? {
                rusqlite::backup::StepResult::Done => break,
                _ if std::time::Instant::now() > deadline => {
                    return Err(StoreError::Unavailable(
                        "the registry stayed busy; try the backup again".into(),
                    ));
                }
                _ => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        drop(backup);
        let check: String = copy
            .query_row("PRAGMA integrity_check", [], |row| row.get(0))
            .map_err(map_err)?;
        if check != "ok" {
            return Err(StoreError::Internal(format!(
                "the copy fails SQLite's integrity check: {check}"
            )));
        }
        Ok(())
    }
}

impl Driver for SqliteDriver {
    const KIND: &'static str = "sqlite";

    fn write<R: Send + 'static>(&self, mut f: impl WriteFn<R>) -> Result<R, StoreError> {
        let (reply, answer) = mpsc::sync_channel::<Result<R, StoreError>>(1);
        let numbering = Arc::clone(&self.numbering);
        let job = Job::new(
            move |conn| {
                let taken = RefCell::new(Taken::new());
                // A job that panics has its savepoint rolled back too.
                let unwinding = GiveBack(&numbering, &taken);
                let result = f(&mut SqliteTx {
                    conn,
                    audit: Some((&numbering, &taken)),
                });
                std::mem::forget(unwinding);
                let taken = taken.into_inner();
                let ok = result.is_ok();
                // Its savepoint is rolled back now: the next job takes the
                // same numbers.
                if !ok {
                    numbering.give_back(&taken);
                }
                let settle: Settle = Box::new(move |durable| match (ok, durable) {
                    (true, true) => numbering.commit(taken),
                    (true, false) => numbering.give_back(&taken),
                    (false, _) => {}
                });
                (result, settle)
            },
            reply,
        );
        self.writer
            .send(job)
            .map_err(|_| StoreError::Unavailable("the SQLite writer has stopped".into()))?;
        answer
            .recv()
            .map_err(|_| StoreError::Unavailable("the SQLite write did not complete".into()))?
    }

    fn read<R>(&self, mut f: impl ReadFn<R>) -> Result<R, StoreError> {
        let pooled = self
            .readers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let conn = match pooled {
            Some(conn) => conn,
            None => open_connection(&self.path)?,
        };
        let result = f(&mut SqliteTx {
            conn: &conn,
            audit: None,
        });
        let mut pool = self.readers.lock().unwrap_or_else(PoisonError::into_inner);
        if pool.len() < READERS {
            pool.push(conn);
        }
        result
    }

    fn audit_size(&self) -> Result<u64, StoreError> {
        // The single writer places each entry as it commits.
        self.decision_count()
    }

    fn decision_count(&self) -> Result<u64, StoreError> {
        self.read(|tx| {
            tx.query_one("SELECT COALESCE(MAX(seq) + 1, 0) FROM audit_log", &[])?
                .count(0)
        })
    }

    fn sequence_audit(&self) -> Result<u64, StoreError> {
        // One writer places each entry in its own transaction.
        Ok(0)
    }

    fn numbering(&self) -> &Numbering {
        &self.numbering
    }

    fn observe_writer(&self, metrics: WriterMetrics) {
        let _ = self.writer_metrics.set(metrics);
    }

    fn upkeep(&self) -> super::Upkeep {
        super::Upkeep {
            wal_restarts: self.wal_restarts.load(Ordering::Relaxed),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A database file in the temporary directory, with its log and index,
    /// removed when dropped (and when made: an earlier run may have left
    /// them).
    pub(super) struct Scratch(pub(super) PathBuf);

    impl Scratch {
        pub(super) fn new(name: &str) -> Self {
            let path =
                std::env::temp_dir().join(format!("dojang-{name}-{}.db", std::process::id()));
            drop(Scratch(path.clone()));
            Scratch(path)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let staged = format!("-wal-prewrite-{}", std::process::id());
            for suffix in ["", "-wal", "-shm", &staged] {
                let _ = std::fs::remove_file(format!("{}{suffix}", self.0.display()));
            }
        }
    }

    #[test]
    fn the_service_leaves_a_log_another_connection_holds_and_loses_nothing() {
        let scratch = Scratch::new("service-beside");
        drop(SqliteRegistry::open(&scratch.0).unwrap());
        let other = open_connection(&scratch.0).unwrap();
        other
            .execute_batch("INSERT INTO write_probe (id, at) VALUES (1, 42)")
            .unwrap();
        let log = prewrite::log_file(&scratch.0);
        let held = std::fs::read(&log).unwrap();
        let registry = SqliteRegistry::open_for_service(&scratch.0, 4).unwrap();
        assert_eq!(std::fs::read(&log).unwrap(), held, "not laid out");
        drop(registry);
        drop(other);
        let at: i64 = open_connection(&scratch.0)
            .unwrap()
            .query_row("SELECT at FROM write_probe", [], |row| row.get(0))
            .unwrap();
        assert_eq!(at, 42);
    }

    #[test]
    fn a_reader_maps_a_file_far_past_two_gigabytes() {
        let scratch = Scratch::new("map");
        let reader = open_reader(&scratch.0).unwrap();
        // A build without the raised cap clamps the map to 0x7fff0000.
        let mapped: i64 = reader
            .query_row("PRAGMA mmap_size", [], |row| row.get(0))
            .unwrap();
        drop(reader);
        assert_eq!(mapped as u64, READER_MAP_BYTES);
    }

    #[test]
    fn the_writer_times_each_group_commit_once_it_has_its_metrics() {
        use crate::store::Registry;
        let scratch = Scratch::new("writer");
        let registry = SqliteRegistry::open(&scratch.0).unwrap();
        // Before the daemon hands them over, a write is not observed.
        registry.set_free_quota(5).unwrap();
        let metrics = crate::metrics::Metrics::new().store.writer();
        registry.observe_writer(metrics.clone());
        registry.set_free_quota(6).unwrap();
        registry.set_free_quota(7).unwrap();
        drop(registry);
        assert_eq!(metrics.batch_writes.get_sample_count(), 2);
        assert_eq!(metrics.batch_writes.get_sample_sum(), 2.0);
        assert_eq!(metrics.run_seconds.get_sample_count(), 2);
        assert_eq!(metrics.commit_seconds.get_sample_count(), 2);
        assert!(metrics.commit_seconds.get_sample_sum() > 0.0);
    }
}
