//! The store's own upkeep, read from the registry at each scrape: how
//! issuances were batched (PostgreSQL) and how often the write-ahead log
//! had to be made to start over (SQLite). Counters since the process
//! started; a node on the other store leaves its series at 0.

use prometheus::{IntCounter, Opts, Registry};

/// The store metrics.
pub struct StoreMetrics {
    /// `dojang_store_grouped_issuances_total`.
    grouped_issuances: IntCounter,
    /// `dojang_sqlite_wal_restarts_total`.
    wal_restarts: IntCounter,
}

#[allow(clippy::expect_used)] // fixed definitions, registered once
fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::with_opts(Opts::new(name, help)).expect("metric definition");
    r.register(Box::new(c.clone())).expect("registration");
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
        }
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
