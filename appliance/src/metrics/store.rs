//! The store's own upkeep, read from the registry at each scrape: how
//! issuances were batched (PostgreSQL) and how often the write-ahead log
//! had to be made to start over (SQLite). Counters since the process
//! started; a node on the other store leaves its series at 0.
//!
//! And SQLite's writer, observed as it works (`WriterMetrics`): how many
//! writes each group commit carried, how long running them took and how
//! long the COMMIT (the log's frames written and synced) took. A commit
//! tail that is not in the run is the disk's.
//!
//! And the node's lock (one process per node): how often it ended and was
//! taken again, could not be looked at, or was lost to another process.

use std::time::Duration;

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry, exponential_buckets,
};

/// The store metrics.
pub struct StoreMetrics {
    /// `dojang_store_grouped_issuances_total`.
    grouped_issuances: IntCounter,
    /// `dojang_sqlite_wal_restarts_total`.
    wal_restarts: IntCounter,
    writer: WriterMetrics,
    /// `dojang_node_lock_events_total{event}`.
    node_lock: IntCounterVec,
}

/// What befell the node's lock, as counted.
#[derive(Clone, Copy, Debug)]
pub enum NodeLockEvent {
    /// It had ended (its file removed, its connection cut); taken again.
    Retaken,
    /// It could not be looked at (counted once per spell).
    Unreachable,
    /// Another process took the node: the daemon stops.
    Lost,
}

impl NodeLockEvent {
    fn label(self) -> &'static str {
        match self {
            NodeLockEvent::Retaken => "retaken",
            NodeLockEvent::Unreachable => "unreachable",
            NodeLockEvent::Lost => "lost",
        }
    }
}

/// What SQLite's writer observes of each group commit.
#[derive(Clone)]
pub struct WriterMetrics {
    /// `dojang_sqlite_batch_writes`: writes per group commit.
    pub batch_writes: Histogram,
    /// `dojang_sqlite_writer_seconds{part="run"}`: the batch's writes run.
    pub run_seconds: Histogram,
    /// `dojang_sqlite_writer_seconds{part="commit"}`: its COMMIT.
    pub commit_seconds: Histogram,
}

impl WriterMetrics {
    /// A batch of `writes` that reached its COMMIT: all three series count
    /// the same batches.
    pub fn observe(&self, writes: usize, run: Duration, commit: Duration) {
        self.batch_writes.observe(writes as f64);
        self.run_seconds.observe(run.as_secs_f64());
        self.commit_seconds.observe(commit.as_secs_f64());
    }
}

#[allow(clippy::expect_used)] // fixed definitions, registered once
fn writer_metrics(r: &Registry) -> WriterMetrics {
    let batch_writes = Histogram::with_opts(
        HistogramOpts::new(
            "dojang_sqlite_batch_writes",
            "Writes SQLite's writer committed together in one transaction (one sync of the log).",
        )
        .buckets(exponential_buckets(1.0, 2.0, 9).expect("buckets")),
    )
    .expect("metric definition");
    r.register(Box::new(batch_writes.clone()))
        .expect("registration");
    // As fine as the issuance stages: a commit takes a fraction of a
    // millisecond when the disk keeps up.
    let seconds = super::fine_histogram(
        r,
        "dojang_sqlite_writer_seconds",
        "SQLite's writer per group commit: running the batch's writes (run) and its COMMIT, the log's frames written and synced (commit).",
        &["part"],
    );
    WriterMetrics {
        batch_writes,
        run_seconds: seconds.with_label_values(&["run"]),
        commit_seconds: seconds.with_label_values(&["commit"]),
    }
}

#[allow(clippy::expect_used)] // fixed definitions, registered once
fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::with_opts(Opts::new(name, help)).expect("metric definition");
    r.register(Box::new(c.clone())).expect("registration");
    c
}

fn node_lock_events(r: &Registry) -> IntCounterVec {
    let c = super::counter(
        r,
        "dojang_node_lock_events_total",
        "Times this node's lock ended and was taken again (retaken), could not be looked at (unreachable, once per spell) or was taken by another process (lost: the daemon stops).",
        &["event"],
    );
    for event in [
        NodeLockEvent::Retaken,
        NodeLockEvent::Unreachable,
        NodeLockEvent::Lost,
    ] {
        // Every series from the start: an alert on a rise needs a 0 first.
        let _ = c.with_label_values(&[event.label()]);
    }
    c
}

/// Moves `c` up to `now`, a count the store keeps (never down).
fn catch_up(c: &IntCounter, now: u64) {
    c.inc_by(now.saturating_sub(c.get()));
}

impl StoreMetrics {
    /// Registered in `r`.
    pub(super) fn new(r: &Registry) -> Self {
        StoreMetrics {
            grouped_issuances: counter(
                r,
                "dojang_store_grouped_issuances_total",
                "Issuances written to PostgreSQL in one statement with others (a group of two or more).",
            ),
            wal_restarts: counter(
                r,
                "dojang_sqlite_wal_restarts_total",
                "Times SQLite's write-ahead log was made to start over past its bound (~1 GiB); the writer waits meanwhile.",
            ),
            writer: writer_metrics(r),
            node_lock: node_lock_events(r),
        }
    }

    /// Counts what befell the node's lock.
    pub fn node_lock(&self, event: NodeLockEvent) {
        self.node_lock.with_label_values(&[event.label()]).inc();
    }

    /// Handles for SQLite's writer to observe its group commits.
    pub fn writer(&self) -> WriterMetrics {
        self.writer.clone()
    }

    /// The store's counts as of now.
    pub fn observe(&self, grouped_issuances: u64, wal_restarts: u64) {
        catch_up(&self.grouped_issuances, grouped_issuances);
        catch_up(&self.wal_restarts, wal_restarts);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_counters_follow_the_store_and_never_go_down() {
        let r = Registry::new();
        let m = StoreMetrics::new(&r);
        m.observe(5, 1);
        m.observe(7, 1);
        m.observe(3, 0);
        assert_eq!(m.grouped_issuances.get(), 7);
        assert_eq!(m.wal_restarts.get(), 1);
    }
}
