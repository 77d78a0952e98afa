//! The registry on PostgreSQL, for several `dojangd` nodes sharing the work.
//!
//! Each write is one transaction on a pooled connection; serialization
//! failures and deadlocks are retried. A read runs its statements each on
//! its own (READ COMMITTED gives every statement its own snapshot inside a
//! transaction too), saving BEGIN's and COMMIT's round trips. The registry's logic is the shared
//! one (`store::sql`); this driver owns the connections and their TLS, the
//! retries, the audit sequencer, the sharded free-copy counter and the
//! migrations' PostgreSQL text (under an advisory lock, so nodes starting
//! together migrate once).

mod at_once;
mod connection;
mod errors;
mod group;
mod node_lock;
mod placement;
mod quota;
mod sequencer;
mod tls;
mod tx;

use std::cell::RefCell;
use std::collections::HashSet;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use postgres_openssl::MakeTlsConnector;

use self::connection::{Connection, IDLE_IN_TRANSACTION_MS, RawTx, STATEMENT_TIMEOUT_MS};
use self::errors::{RETRYABLE, map_err};
pub use self::node_lock::{Held, PostgresNodeLock, node_lock_key};
use self::sequencer::{Numbers, VOID_ROLLED_BACK, VOID_UNWRITTEN};
pub use self::tls::is_local;
use self::tls::tls_for;
use self::tx::PgTx;
use super::StoreError;
use super::sql::migrations::{self, Dialect};
use super::sql::{AtOnce, Driver, Numbering, ReadFn, SqlRegistry, Taken, WriteFn};

const RETRIES: usize = 5;
/// Issuance groups a node writes at once at most. Fewer in flight make
/// bigger groups: `bench-load` on 2 cores saturated at ~2,500/s with 2,
/// ~2,250/s with 3 and ~2,000–2,200/s with 4, with the same half-load
/// tails (each holds a connection too). A later A/B on a quiet day, both
/// at 1,800/s offered: 3 cut the half-load p99 from 4.8–5.0 to 3.6 ms, for
/// 8–10% less saturation and ~30 µs more CPU per issuance (more, smaller
/// statements); on a noisy hour the difference drowned in the noise, so 2
/// stays. The database on its own host would make 3 cheaper.
const GROUPS_IN_FLIGHT: usize = 2;
/// How long a transaction waits for one of the node's connections.
const CONNECTION_WAIT: Duration = Duration::from_secs(10);
/// Advisory lock key for migrations ("dojang" in ASCII).
const MIGRATION_LOCK: i64 = 0x646f_6a61_6e67;

/// The PostgreSQL driver: its connection pool and TLS.
pub struct PostgresDriver {
    config: postgres::Config,
    /// `None`: plain text, only to a Unix socket or the loopback interface.
    tls: Option<MakeTlsConnector>,
    pool: Mutex<Vec<Connection>>,
    max_idle: usize,
    /// Transactions in progress, at most `max_idle`: a new connection is
    /// opened only when none is idle, so the connections open (idle ones
    /// included) never exceed it either. A burst queues here instead of
    /// exhausting the server's `max_connections`, which every node shares.
    open: Mutex<usize>,
    freed: Condvar,
    numbering: Arc<Numbering>,
    /// Common issuances waiting to be written together.
    group: group::Group<AtOnce>,
}

/// One of the driver's connection slots, given back when dropped.
struct Slot<'a>(&'a PostgresDriver);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut open = self.0.open.lock().unwrap_or_else(PoisonError::into_inner);
        *open = open.saturating_sub(1);
        self.0.freed.notify_one();
    }
}

/// The registry in a PostgreSQL database (or schema).
pub type PostgresRegistry = SqlRegistry<PostgresDriver>;

fn retryable(e: &StoreError) -> bool {
    matches!(e, StoreError::Unavailable(m) if m.starts_with(RETRYABLE))
}

impl SqlRegistry<PostgresDriver> {
    /// Connects (`url` as libpq key/values or a `postgresql://` URL) and migrates.
    ///
    /// TLS is verified (chain and host name) against the system's CAs or
    /// `ca_file`. A server reached over the network must be asked for TLS
    /// (`sslmode=require`): `prefer` would fall back to plain text, so it is
    /// accepted only for a Unix socket or the loopback interface.
    pub fn open(url: &str, pool_size: usize) -> Result<Self, StoreError> {
        Self::open_with_ca(url, pool_size, None)
    }

    /// [`PostgresRegistry::open`] trusting `ca_file` for the server's certificate.
    pub fn open_with_ca(
        url: &str,
        pool_size: usize,
        ca_file: Option<&std::path::Path>,
    ) -> Result<Self, StoreError> {
        let config: postgres::Config = url.parse().map_err(|e: postgres::Error| {
            StoreError::Internal(format!("store.postgres.url: {e}"))
        })?;
        let driver = PostgresDriver {
            tls: tls_for(&config, ca_file)?,
            config,
            pool: Mutex::new(Vec::new()),
            max_idle: pool_size.max(1),
            open: Mutex::new(0),
            freed: Condvar::new(),
            numbering: Arc::default(),
            // Half the pool at most: reads must find connections too.
            group: group::Group::new(GROUPS_IN_FLIGHT.min(pool_size / 2)),
        };
        driver.migrate()?;
        Ok(SqlRegistry {
            driver,
            upper_hashes: Default::default(),
            edge_roots: Default::default(),
            upper_tree: Default::default(),
        })
    }
}

impl PostgresDriver {
    /// Waits (boundedly) for a free connection slot.
    fn slot(&self) -> Result<Slot<'_>, StoreError> {
        let deadline = Instant::now() + CONNECTION_WAIT;
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        while *open >= self.max_idle {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(StoreError::Unavailable(format!(
                    "all {} registry connections stayed busy for {}s (store.pool_size)",
                    self.max_idle,
                    CONNECTION_WAIT.as_secs()
                )));
            }
            open = self
                .freed
                .wait_timeout(open, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        *open += 1;
        Ok(Slot(self))
    }

    /// A new connection whose statements and lock waits are bounded: a
    /// stuck lock or a split network must fail a request, not hang it.
    /// A transaction left open is ended by the server after
    /// `IDLE_IN_TRANSACTION`: a node frozen between two statements (a
    /// stopped VM, whose kernel still answers for its sockets) held its row
    /// locks, and every other node's audit writes waited on them, a
    /// restart of the node on another host included (its start failed on
    /// `lock_timeout`, `daemon_cluster`).
    fn connect(&self) -> Result<Connection, StoreError> {
        let mut client = match &self.tls {
            Some(tls) => self.config.connect(tls.clone()),
            None => self.config.connect(postgres::NoTls),
        }
        .map_err(map_err)?;
        client
            .batch_execute(&format!(
                "SET statement_timeout = {STATEMENT_TIMEOUT_MS}; SET lock_timeout = '5s'; \
                 SET idle_in_transaction_session_timeout = '{IDLE_IN_TRANSACTION_MS}ms'"
            ))
            .map_err(map_err)?;
        Ok(Connection::new(client))
    }

    fn migrate(&self) -> Result<(), StoreError> {
        self.with_tx(|raw| {
            // A migration may build an index over every credential, and a
            // node starting meanwhile waits for it: neither may time out
            // the way a request does.
            raw.batch_execute("SET LOCAL statement_timeout = 0; SET LOCAL lock_timeout = 0")
                .map_err(map_err)?;
            let _ = raw
                .execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
                .map_err(map_err)?;
            let mut tx = PgTx { raw, audit: None };
            let version = migrations::version(&mut tx)?;
            migrations::apply(&mut tx, Dialect::Postgres, version)
        })
    }

    /// Runs `f` in a transaction, retrying serialization failures; the
    /// connection goes back to the pool only if it is still healthy.
    fn with_tx<R>(
        &self,
        f: impl FnMut(&mut RawTx<'_>) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        self.with_tx_settled(f, |_| {})
    }

    /// [`Self::with_tx`], telling `settle` after each attempt whether it
    /// committed.
    fn with_tx_settled<R>(
        &self,
        f: impl FnMut(&mut RawTx<'_>) -> Result<R, StoreError>,
        settle: impl FnMut(bool),
    ) -> Result<R, StoreError> {
        self.attempts(true, f, settle)
    }

    /// Runs `f` with each statement on its own (reads: no BEGIN, no COMMIT).
    fn with_statements<R>(
        &self,
        f: impl FnMut(&mut RawTx<'_>) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        self.attempts(false, f, |_| {})
    }

    /// Runs `f` on a pooled connection, in a transaction if `transaction`,
    /// retrying serialization failures.
    fn attempts<R>(
        &self,
        transaction: bool,
        mut f: impl FnMut(&mut RawTx<'_>) -> Result<R, StoreError>,
        mut settle: impl FnMut(bool),
    ) -> Result<R, StoreError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let _slot = self.slot()?;
            let pooled = self
                .pool
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop();
            let mut client = match pooled {
                Some(c) if !c.is_closed() => c,
                _ => self.connect()?,
            };
            let raw = if transaction {
                client.transaction().map_err(map_err)
            } else {
                Ok(client.autocommit())
            };
            let result = raw.and_then(|mut raw| {
                let out = f(&mut raw)?;
                raw.commit().map_err(map_err)?;
                Ok(out)
            });
            settle(result.is_ok());
            if !client.is_closed() {
                let mut pool = self.pool.lock().unwrap_or_else(PoisonError::into_inner);
                if pool.len() < self.max_idle {
                    pool.push(client);
                }
            }
            match result {
                Err(e) if retryable(&e) && attempt < RETRIES => continue,
                other => return other,
            }
        }
    }

    /// Runs `at_once`, whose statements each commit on their own; whether
    /// it wrote. Numbers it took and did not write under are given up to
    /// void entries.
    fn write_at_once(
        &self,
        mut at_once: impl FnMut(&mut RawTx<'_>, Numbers<'_>) -> Result<bool, StoreError>,
    ) -> Result<bool, StoreError> {
        let taken = RefCell::new(Taken::new());
        let written = std::cell::Cell::new(false);
        self.attempts(
            false,
            |raw| {
                written.set(false);
                written.set(at_once(raw, self.numbers(&taken))?);
                Ok(())
            },
            |ok| {
                // A number whose row did not go in is filled by a void: the
                // transaction the caller runs next takes its own when its
                // row goes in (a number held across its waits would let the
                // sequencer void it first, GAP_WAIT_MS after the next was
                // queued).
                let numbers = taken.take();
                match (ok, written.get()) {
                    (true, true) => self.numbering.commit(numbers),
                    (true, false) => self.numbering.lose(numbers, VOID_UNWRITTEN),
                    _ => self.numbering.lose(numbers, VOID_ROLLED_BACK),
                }
            },
        )?;
        Ok(written.get())
    }

    /// Writes a group of common issuances: one alone as the single
    /// statement (its errors are its own), several as one statement. An
    /// issuance for a holder or phone already in the group, and every one
    /// of a group that wrote nothing or was refused (a twin committed
    /// meanwhile, no shard with room for all its free copies), goes on
    /// alone, in its transaction, which decides it as it would have
    /// without the group. Any other failure is each one's error.
    fn write_group(&self, group: Vec<AtOnce>) -> Vec<group::Outcome> {
        if let [one] = &group[..] {
            return vec![self.write_alone(one)];
        }
        let (mut holders, mut phones) = (HashSet::new(), HashSet::new());
        let first_of_their_own: Vec<bool> = group
            .iter()
            .map(|g| {
                let new_holder = holders.insert(g.credential.holder.0);
                let new_phone = phones.insert(g.credential.device.as_str());
                new_holder && new_phone
            })
            .collect();
        let writable: Vec<&AtOnce> = group
            .iter()
            .zip(&first_of_their_own)
            .filter_map(|(g, &first)| first.then_some(g))
            .collect();
        let written = match &writable[..] {
            [] => Ok(false),
            [one] => self.write_alone(one),
            several => {
                self.write_at_once(|raw, numbers| at_once::issue_group(raw, numbers, several))
            }
        };
        let written = match written {
            Ok(written) => Ok(written),
            Err(StoreError::Conflict { .. }) => Ok(false),
            Err(e) => Err(e),
        };
        first_of_their_own
            .iter()
            .map(|&first| if first { written.clone() } else { Ok(false) })
            .collect()
    }

    /// One common issuance as the single statement.
    fn write_alone(&self, one: &AtOnce) -> group::Outcome {
        self.write_at_once(|raw, numbers| {
            let issued = (&one.credential, one.want_free_copy);
            at_once::issue(raw, numbers, issued, &one.decision, None)
        })
    }

    fn numbers<'t>(&'t self, taken: &'t RefCell<Taken>) -> Numbers<'t> {
        Numbers {
            numbering: &self.numbering,
            taken,
        }
    }
}

impl Driver for PostgresDriver {
    const KIND: &'static str = "postgres";

    fn write<R: Send + 'static>(&self, mut f: impl WriteFn<R>) -> Result<R, StoreError> {
        // Numbers taken by an attempt that did not commit are lost (other
        // transactions took later ones meanwhile): void entries fill them.
        let taken = RefCell::new(Taken::new());
        self.with_tx_settled(
            |raw| {
                f(&mut PgTx {
                    raw,
                    audit: Some(self.numbers(&taken)),
                })
            },
            |committed| {
                let numbers = taken.take();
                if committed {
                    self.numbering.commit(numbers);
                } else {
                    self.numbering.lose(numbers, VOID_ROLLED_BACK);
                }
            },
        )
    }

    const ISSUES_AT_ONCE: bool = true;

    fn write_at_once_or<R: Send + 'static>(
        &self,
        mut at_once: impl WriteFn<bool>,
        otherwise: impl WriteFn<R>,
    ) -> Result<Option<R>, StoreError> {
        let written = self.write_at_once(|raw, numbers| {
            at_once(&mut PgTx {
                raw,
                audit: Some(numbers),
            })
        })?;
        if written {
            return Ok(None);
        }
        self.write(otherwise).map(Some)
    }

    const GROUPS_AT_ONCE: bool = true;

    fn write_grouped_or<R: Send + 'static>(
        &self,
        issued: AtOnce,
        otherwise: impl WriteFn<R>,
    ) -> Result<Option<R>, StoreError> {
        if self.group.run(issued, |group| self.write_group(group))? {
            return Ok(None);
        }
        self.write(otherwise).map(Some)
    }

    fn read<R>(&self, mut f: impl ReadFn<R>) -> Result<R, StoreError> {
        self.with_statements(|raw| f(&mut PgTx { raw, audit: None }))
    }

    fn audit_size(&self) -> Result<u64, StoreError> {
        self.with_tx(sequencer::placed)
    }

    fn decision_count(&self) -> Result<u64, StoreError> {
        self.with_tx(sequencer::recorded)
    }

    fn sequence_audit(&self) -> Result<u64, StoreError> {
        let lost = self.numbering.take_lost();
        if !lost.is_empty() {
            if let Err(e) = self.with_tx(|raw| sequencer::void_lost(raw, &self.numbering, &lost)) {
                // Kept for the next round: a number is never left unfilled.
                self.numbering.keep_lost(lost);
                return Err(e);
            }
        }
        self.with_tx(|raw| sequencer::sequence(raw, &self.numbering))
    }

    fn numbering(&self) -> &Numbering {
        &self.numbering
    }

    fn upkeep(&self) -> crate::store::Upkeep {
        crate::store::Upkeep {
            grouped_issuances: self.group.grouped(),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tls_rule_tests {
    use super::*;

    #[test]
    fn a_server_on_the_network_needs_verified_tls() {
        for url in [
            "host=db.example.kr user=dojang dbname=dojang",
            "host=10.0.0.5 user=dojang sslmode=prefer",
            "postgresql://dojang@db.example.kr/dojang?sslmode=disable",
            // A loopback name with a network address beside it, or none.
            "host=localhost hostaddr=203.0.113.5 user=dojang dbname=dojang",
            "hostaddr=203.0.113.5 user=dojang dbname=dojang",
        ] {
            let Err(e) = PostgresRegistry::open(url, 1) else {
                panic!("{url} was accepted");
            };
            assert!(e.to_string().contains("sslmode=require"), "{url}: {e}");
        }
    }
}
