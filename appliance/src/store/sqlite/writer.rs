//! SQLite's group commit: one writer thread takes whatever writes are
//! queued (up to `BATCH_MAX`), runs each inside its own SAVEPOINT of one
//! transaction, commits once, and only then answers each caller. One fsync
//! serves a whole batch; a write that fails rolls back only its savepoint.

use std::sync::OnceLock;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError};
use std::time::Instant;

use rusqlite::Connection;

use super::tx::map_err;
use crate::metrics::store::WriterMetrics;
use crate::store::StoreError;

/// Writes per group commit at most.
const BATCH_MAX: usize = 256;

type Finish = Box<dyn FnOnce(Option<StoreError>) + Send>;
type Run = Box<dyn FnOnce(&Connection) -> (bool, Finish) + Send>;
/// Told, once the batch's commit is known, whether a job's work became
/// durable (its audit numbers are kept or given back).
pub(super) type Settle = Box<dyn FnOnce(bool) + Send>;

/// A queued write: `run` executes it (inside a savepoint) and returns
/// whether it succeeded and how to answer once the commit is known;
/// `refuse` answers a job that could not run at all.
pub(super) struct Job {
    run: Run,
    refuse: Box<dyn FnOnce(StoreError) + Send>,
}

impl Job {
    /// A job running `f` and sending its result on `reply` once the batch's
    /// commit is known (a commit failure replaces the result); `f`'s
    /// settle hook learns whether its work became durable.
    pub(super) fn new<R: Send + 'static>(
        f: impl FnOnce(&Connection) -> (Result<R, StoreError>, Settle) + Send + 'static,
        reply: SyncSender<Result<R, StoreError>>,
    ) -> Self {
        let refuse_reply = reply.clone();
        Job {
            run: Box::new(move |conn| {
                let (result, settle) = f(conn);
                let ok = result.is_ok();
                let finish: Finish = Box::new(move |commit_error| {
                    settle(ok && commit_error.is_none());
                    let _ = reply.send(match commit_error {
                        Some(e) => Err(e),
                        None => result,
                    });
                });
                (ok, finish)
            }),
            refuse: Box::new(move |e| {
                let _ = refuse_reply.send(Err(e));
            }),
        }
    }
}

fn statement(conn: &Connection, sql: &str) -> Result<(), StoreError> {
    // Prepared once per connection: parsing these for every job cost about
    // as much as a job.
    conn.prepare_cached(sql)
        .and_then(|mut s| s.execute([]))
        .map(|_| ())
        .map_err(map_err)
}

/// Runs one job in its savepoint; the error that ends the batch, if any.
fn run_job(conn: &Connection, job: Job, finishes: &mut Vec<Finish>) -> Option<StoreError> {
    if let Err(e) = statement(conn, "SAVEPOINT job") {
        (job.refuse)(e.clone());
        return Some(e);
    }
    // A panicking job must not take the writer (and every later write)
    // down with it; its caller sees its reply channel close.
    let (ok, finish): (bool, Finish) =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (job.run)(conn)))
            .unwrap_or_else(|_| (false, Box::new(|_| {})));
    let ended = if ok {
        Ok(())
    } else {
        statement(conn, "ROLLBACK TO job")
    }
    .and_then(|()| statement(conn, "RELEASE job"));
    finishes.push(finish);
    // SQLite rolls the whole transaction back on some errors (full disk,
    // I/O): the batch's earlier work is gone, and going on would commit
    // later jobs one savepoint at a time.
    match ended {
        Err(e) => Some(e),
        Ok(()) if conn.is_autocommit() => Some(StoreError::Unavailable(
            "SQLite rolled the batch back".into(),
        )),
        Ok(()) => None,
    }
}

/// Runs one batch in one transaction and answers every job; `metrics`
/// see a batch that reached its COMMIT: its writes, how long running them
/// and the COMMIT took.
fn commit_batch(conn: &Connection, batch: Vec<Job>, metrics: Option<&WriterMetrics>) {
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        let err = map_err(e);
        for job in batch {
            (job.refuse)(err.clone());
        }
        return;
    }
    let (started, writes) = (Instant::now(), batch.len());
    let mut finishes = Vec::with_capacity(batch.len());
    let mut pending = batch.into_iter();
    let broken = pending
        .by_ref()
        .find_map(|job| run_job(conn, job, &mut finishes));
    let outcome = match broken {
        Some(err) => {
            for job in pending {
                (job.refuse)(err.clone());
            }
            Err(err)
        }
        None => {
            let ran = Instant::now();
            let committed = conn.execute_batch("COMMIT").map_err(map_err);
            if let Some(m) = metrics {
                m.observe(writes, ran - started, ran.elapsed());
            }
            committed
        }
    };
    match outcome {
        Ok(()) => finishes.into_iter().for_each(|f| f(None)),
        Err(err) => {
            if !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK");
            }
            // Nothing in the batch is durable: every caller gets the error,
            // whatever its job returned (it may have read the batch's
            // uncommitted rows).
            finishes.into_iter().for_each(|f| f(Some(err.clone())));
        }
    }
}

/// The writer thread's loop: until every sender is gone; it observes its
/// batches into `metrics` once they are set.
pub(super) fn writer_loop(
    conn: Connection,
    jobs: Receiver<Job>,
    metrics: &OnceLock<WriterMetrics>,
) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < BATCH_MAX {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        commit_batch(&conn, batch, metrics.get());
    }
}
