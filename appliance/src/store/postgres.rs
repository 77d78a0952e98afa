//! The registry on PostgreSQL, for several `dojangd` nodes sharing the work.
//!
//! Each operation is one transaction on a pooled connection. Invariants are
//! the same unique partial indexes and conditional updates as on SQLite, so
//! they hold across nodes; serialization failures and deadlocks are retried.
//! Migrations take an advisory lock, so nodes starting together migrate once.

use std::sync::{Mutex, PoisonError};

use super::pg_connection::{Connection, Tx};
use postgres::config::{Host, SslMode};
use postgres::error::SqlState;
use postgres_openssl::MakeTlsConnector;

use crate::keys::lifecycle::KeyState;

use super::keyring::{self, KeyRegistry, KeyRevocation, StoredKey, StoredProposal};
use super::{
    Committed, CredentialMeta, CredentialState, DecisionRecord, HolderFacts, IdempotencyKey,
    IssuanceCommit, Pseudonym, Registry, Respond, STATUS_LIST_SIZE, StatusRange, StoreError,
    check_transition,
};

const RETRIES: usize = 5;
/// Advisory lock key for migrations ("dojang" in ASCII).
const MIGRATION_LOCK: i64 = 0x646f_6a61_6e67;

const MIGRATIONS: &[&str] = &[
    // 1: the registry.
    "CREATE TABLE credentials (
        id TEXT PRIMARY KEY,
        holder BYTEA NOT NULL,
        device TEXT NOT NULL,
        profile TEXT NOT NULL,
        kid TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('active', 'suspended', 'revoked', 'superseded')),
        status_list BIGINT NOT NULL,
        status_index BIGINT NOT NULL,
        issued_at BIGINT NOT NULL,
        valid_until BIGINT NOT NULL,
        document_expiry TEXT NOT NULL,
        free_copy BOOLEAN NOT NULL,
        UNIQUE (status_list, status_index)
    );
    CREATE UNIQUE INDEX one_live_per_holder ON credentials (holder) WHERE state IN ('active', 'suspended');
    CREATE UNIQUE INDEX one_holder_per_device ON credentials (device) WHERE state IN ('active', 'suspended');
    -- One free first-time copy per holder, ever (and the index the quota update's check uses).
    CREATE UNIQUE INDEX one_free_copy_per_holder ON credentials (holder) WHERE free_copy;
    -- The free-copy counter, sharded: every issuance taking a free copy
    -- would otherwise queue on one row's lock for the length of an fsync.
    -- The shards' quotas add up to the quota, and each shard is
    -- `used <= quota`, so the total can never go one over.
    CREATE TABLE quota_shards (
        name TEXT NOT NULL,
        shard INTEGER NOT NULL,
        used BIGINT NOT NULL,
        quota BIGINT NOT NULL,
        PRIMARY KEY (name, shard),
        CHECK (used >= 0 AND used <= quota)
    );
    INSERT INTO quota_shards (name, shard, used, quota)
        SELECT 'free_first_time', s, 0, 0 FROM generate_series(0, 15) AS s;
    CREATE TABLE status_lists (id BIGINT PRIMARY KEY, next_index BIGINT NOT NULL, size BIGINT NOT NULL);
    INSERT INTO status_lists (id, next_index, size) VALUES (1, 0, 1048576);
    CREATE TABLE idempotency (
        client TEXT NOT NULL,
        key TEXT NOT NULL,
        request_hash BYTEA NOT NULL,
        response BYTEA NOT NULL,
        credential_id TEXT NOT NULL,
        PRIMARY KEY (client, key)
    );
    CREATE TABLE decisions (
        seq BIGSERIAL PRIMARY KEY,
        at BIGINT NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        outcome TEXT NOT NULL,
        rule TEXT,
        policy_hash TEXT NOT NULL,
        credential_id TEXT,
        holder BYTEA
    );",
    // 2: the audit log replaces the decision records. The counter row makes
    // one gapless sequence for every node: each append locks it until its
    // transaction ends, so entries commit in sequence order.
    "DROP TABLE decisions;
    CREATE TABLE audit_head (id INTEGER PRIMARY KEY CHECK (id = 1), size BIGINT NOT NULL);
    INSERT INTO audit_head (id, size) VALUES (1, 0);
    CREATE TABLE audit_log (
        seq BIGINT PRIMARY KEY,
        node TEXT NOT NULL,
        node_seq BIGINT NOT NULL,
        entry BYTEA NOT NULL,
        leaf BYTEA NOT NULL,
        UNIQUE (node, node_seq)
    );
    CREATE TABLE checkpoints (size BIGINT PRIMARY KEY, note TEXT NOT NULL);",
    // 3: decisions are queued in their transaction and placed in the log by
    // one sequencer at a time: a head row taken by every issuance serialised
    // the whole cluster's commits.
    "CREATE TABLE audit_queue (
        id BIGSERIAL PRIMARY KEY,
        at BIGINT NOT NULL,
        node TEXT NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        outcome TEXT NOT NULL,
        rule TEXT,
        policy_hash TEXT NOT NULL,
        profile TEXT,
        credential_id TEXT,
        key_id TEXT,
        payload BYTEA,
        holder BYTEA
    );",
    // 4: the claims' HMAC, which a refresh must match.
    "ALTER TABLE credentials ADD COLUMN claims_mac BYTEA;",
    // 5: signing keys, leases, officer proposals, the IACA's CRL.
    "CREATE TABLE signing_keys (
        label TEXT PRIMARY KEY,
        chain TEXT NOT NULL,
        kid TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('pending', 'active', 'retired', 'destroyed')),
        created_at BIGINT NOT NULL,
        activate_at BIGINT NOT NULL,
        certificate BYTEA,
        public_key BYTEA NOT NULL,
        cert_not_after BIGINT NOT NULL,
        signatures BIGINT NOT NULL DEFAULT 0,
        last_valid_until BIGINT,
        revoked_reason TEXT,
        revoked_at BIGINT
    );
    CREATE UNIQUE INDEX one_pending_key ON signing_keys (chain) WHERE state = 'pending';
    CREATE UNIQUE INDEX one_active_key ON signing_keys (chain) WHERE state = 'active';
    CREATE TABLE leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL, until_ms BIGINT NOT NULL);
    CREATE TABLE proposals (
        id TEXT PRIMARY KEY,
        created_at BIGINT NOT NULL,
        body TEXT NOT NULL,
        version BIGINT NOT NULL
    );
    CREATE TABLE pki_documents (name TEXT PRIMARY KEY, body TEXT NOT NULL);",
    // 6: an emergency revocation, and its sweeps every 10 s for 10 minutes,
    // find a key's credentials by index, not by scanning the registry.
    "CREATE INDEX credentials_by_key ON credentials (kid, state);",
];

/// The registry in a PostgreSQL database (or schema).
pub struct PostgresRegistry {
    config: postgres::Config,
    /// `None`: plain text, only to a Unix socket or the loopback interface.
    tls: Option<MakeTlsConnector>,
    pool: Mutex<Vec<Connection>>,
    max_idle: usize,
}

fn map_err(e: postgres::Error) -> StoreError {
    if let Some(db) = e.as_db_error() {
        let code = db.code();
        if *code == SqlState::UNIQUE_VIOLATION {
            return match db.constraint() {
                Some("one_live_per_holder") => StoreError::Conflict {
                    rule: "holder.one_active",
                },
                Some("one_holder_per_device") => StoreError::Conflict {
                    rule: "device.one_person",
                },
                Some("idempotency_pkey") => StoreError::Conflict {
                    rule: "idempotency.key",
                },
                Some("signing_keys_pkey") => StoreError::Conflict { rule: "keys.label" },
                Some("one_pending_key") => StoreError::Conflict {
                    rule: "keys.one_pending",
                },
                Some("one_active_key") => StoreError::Conflict {
                    rule: "keys.one_active",
                },
                _ => StoreError::Internal(db.message().to_owned()),
            };
        }
        if *code == SqlState::T_R_SERIALIZATION_FAILURE || *code == SqlState::T_R_DEADLOCK_DETECTED
        {
            return StoreError::Unavailable(format!("retryable: {}", db.message()));
        }
        if *code == SqlState::DISK_FULL
            || *code == SqlState::INSUFFICIENT_PRIVILEGE
            || *code == SqlState::READ_ONLY_SQL_TRANSACTION
            || *code == SqlState::ADMIN_SHUTDOWN
            || *code == SqlState::CRASH_SHUTDOWN
            || *code == SqlState::CANNOT_CONNECT_NOW
            || *code == SqlState::TOO_MANY_CONNECTIONS
            || *code == SqlState::QUERY_CANCELED
            || *code == SqlState::LOCK_NOT_AVAILABLE
            || *code == SqlState::INSUFFICIENT_RESOURCES
            || *code == SqlState::OUT_OF_MEMORY
            || *code == SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT
        {
            return StoreError::Unavailable(db.message().to_owned());
        }
        return StoreError::Internal(db.message().to_owned());
    }
    // No database error: the connection itself failed.
    StoreError::Unavailable(e.to_string())
}

fn retryable(e: &StoreError) -> bool {
    matches!(e, StoreError::Unavailable(m) if m.starts_with("retryable:"))
}

impl PostgresRegistry {
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
        let local = config.get_hosts().iter().all(|h| match h {
            Host::Unix(_) => true,
            Host::Tcp(name) => matches!(name.as_str(), "localhost" | "127.0.0.1" | "::1"),
        });
        if !local && config.get_ssl_mode() != SslMode::Require {
            return Err(StoreError::Internal(
                "store.postgres: a server on the network needs sslmode=require (verified TLS)"
                    .into(),
            ));
        }
        let mut builder = openssl::ssl::SslConnector::builder(openssl::ssl::SslMethod::tls())
            .map_err(|e| StoreError::Internal(format!("TLS for PostgreSQL: {e}")))?;
        if let Some(ca) = ca_file {
            builder
                .set_ca_file(ca)
                .map_err(|e| StoreError::Internal(format!("{}: {e}", ca.display())))?;
        }
        // Local traffic never leaves the host: TLS only when asked for.
        let tls = (config.get_ssl_mode() == SslMode::Require)
            .then(|| MakeTlsConnector::new(builder.build()));
        let registry = PostgresRegistry {
            tls,
            config,
            pool: Mutex::new(Vec::new()),
            max_idle: pool_size.max(1),
        };
        registry.migrate()?;
        Ok(registry)
    }

    /// A new connection whose statements and lock waits are bounded: a
    /// stuck lock or a split network must fail a request, not hang it.
    fn connect(&self) -> Result<Connection, StoreError> {
        let mut client = match &self.tls {
            Some(tls) => self.config.connect(tls.clone()),
            None => self.config.connect(postgres::NoTls),
        }
        .map_err(map_err)?;
        client
            .batch_execute("SET statement_timeout = '10s'; SET lock_timeout = '5s'")
            .map_err(map_err)?;
        Ok(Connection::new(client))
    }

    fn migrate(&self) -> Result<(), StoreError> {
        self.with_tx(|tx| {
            // A migration may build an index over every credential, and a
            // node starting meanwhile waits for it: neither may time out
            // the way a request does.
            tx.batch_execute("SET LOCAL statement_timeout = 0; SET LOCAL lock_timeout = 0")
                .map_err(map_err)?;
            let _ = tx
                .execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
                .map_err(map_err)?;
            tx.batch_execute("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)")
                .map_err(map_err)?;
            let version: i64 = tx
                .query_one("SELECT COALESCE(MAX(version), 0) FROM schema_version", &[])
                .map_err(map_err)?
                .get(0);
            if version as usize > MIGRATIONS.len() {
                return Err(StoreError::Internal(format!(
                    "the store is at schema version {version}, newer than this build knows ({})",
                    MIGRATIONS.len()
                )));
            }
            for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
                tx.batch_execute(sql).map_err(map_err)?;
                let _ = tx
                    .execute(
                        "INSERT INTO schema_version (version) VALUES ($1)",
                        &[&(i as i64 + 1)],
                    )
                    .map_err(map_err)?;
            }
            Ok(())
        })
    }

    /// Runs `f` in a transaction, retrying serialization failures; the
    /// connection goes back to the pool only if it is still healthy.
    fn with_tx<R>(
        &self,
        mut f: impl FnMut(&mut Tx<'_>) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let pooled = self
                .pool
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop();
            let mut client = match pooled {
                Some(c) if !c.is_closed() => c,
                _ => self.connect()?,
            };
            let result = client.transaction().map_err(map_err).and_then(|mut tx| {
                let out = f(&mut tx)?;
                tx.commit().map_err(map_err)?;
                Ok(out)
            });
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
}

/// Queues the decision for the log (inside the caller's transaction): durable
/// with what it records; the sequencer gives it its place.
fn insert_decision(
    tx: &mut Tx<'_>,
    d: &DecisionRecord,
    credential: Option<&str>,
    holder: Option<&Pseudonym>,
) -> Result<(), StoreError> {
    let payload = d.payload_sha256.map(|p| p.to_vec());
    let holder = holder.map(|h| h.0.to_vec());
    let _ = tx
        .execute(
            "INSERT INTO audit_queue (at, node, actor, action, outcome, rule, policy_hash, profile,
                                      credential_id, key_id, payload, holder)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
            &[
                &d.at,
                &d.node,
                &d.actor,
                &d.action,
                &d.outcome,
                &d.rule,
                &d.policy_hash,
                &d.profile,
                &credential,
                &d.key_id,
                &payload,
                &holder,
            ],
        )
        .map_err(map_err)?;
    Ok(())
}

/// Any number: the advisory lock that makes one sequencer at a time.
const SEQUENCER_LOCK: i64 = 0x646f_6a61_6e71; // not the migration lock
/// Decisions placed per sequencer transaction.
const SEQUENCE_BATCH: i64 = 5000;

fn sequence(tx: &mut Tx<'_>) -> Result<u64, StoreError> {
    let locked: bool = tx
        .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&SEQUENCER_LOCK])
        .map_err(map_err)?
        .get(0);
    if !locked {
        return Ok(0); // another node is sequencing
    }
    let size: i64 = tx
        .query_one("SELECT size FROM audit_head WHERE id = 1 FOR UPDATE", &[])
        .map_err(map_err)?
        .get(0);
    let rows = tx
        .query(
            "SELECT id, at, node, actor, action, outcome, rule, policy_hash, profile,
                    credential_id, key_id, payload, holder
             FROM audit_queue ORDER BY id LIMIT $1",
            &[&SEQUENCE_BATCH],
        )
        .map_err(map_err)?;
    if rows.is_empty() {
        return Ok(0);
    }
    let mut next_node_seq: std::collections::HashMap<String, i64> = Default::default();
    let mut ids = Vec::with_capacity(rows.len());
    for (i, row) in rows.iter().enumerate() {
        ids.push(row.get::<_, i64>(0));
        let node: String = row.get(2);
        let node_seq = match next_node_seq.get(&node) {
            Some(n) => *n,
            None => tx
                .query_one(
                    "SELECT COALESCE(MAX(node_seq) + 1, 0) FROM audit_log WHERE node = $1",
                    &[&node],
                )
                .map_err(map_err)?
                .get(0),
        };
        let _ = next_node_seq.insert(node.clone(), node_seq + 1);
        let decision = DecisionRecord {
            at: row.get(1),
            node: node.clone(),
            actor: row.get(3),
            action: row.get(4),
            outcome: row.get(5),
            rule: row.get(6),
            policy_hash: row.get(7),
            profile: row.get(8),
            key_id: row.get(10),
            payload_sha256: row
                .get::<_, Option<Vec<u8>>>(11)
                .and_then(|p| <[u8; 32]>::try_from(p).ok()),
        };
        let credential: Option<String> = row.get(9);
        let holder = row
            .get::<_, Option<Vec<u8>>>(12)
            .and_then(|h| <[u8; 32]>::try_from(h).ok())
            .map(Pseudonym);
        let entry = decision
            .entry(node_seq as u64, credential.as_deref(), holder.as_ref())
            .encode();
        let leaf = crate::audit::merkle::leaf_hash(&entry).to_vec();
        let seq = size + i as i64;
        let _ = tx
            .execute(
                "INSERT INTO audit_log (seq, node, node_seq, entry, leaf) VALUES ($1, $2, $3, $4, $5)",
                &[&seq, &node, &node_seq, &entry, &leaf],
            )
            .map_err(map_err)?;
    }
    let _ = tx
        .execute("DELETE FROM audit_queue WHERE id = ANY($1)", &[&ids])
        .map_err(map_err)?;
    let placed = ids.len() as i64;
    let _ = tx
        .execute(
            "UPDATE audit_head SET size = size + $1 WHERE id = 1",
            &[&placed],
        )
        .map_err(map_err)?;
    Ok(placed as u64)
}

fn meta(tx: &mut Tx<'_>, id: &str) -> Result<CredentialMeta, StoreError> {
    let row = tx
        .query_opt(
            "SELECT id, profile, kid, state, status_list, status_index, issued_at, valid_until, document_expiry,
                    holder, device, claims_mac
             FROM credentials WHERE id = $1",
            &[&id],
        )
        .map_err(map_err)?
        .ok_or(StoreError::NotFound)?;
    Ok(CredentialMeta {
        id: row.get(0),
        profile: row.get(1),
        kid: row.get(2),
        state: CredentialState::parse(row.get(3))?,
        status_list: row.get::<_, i64>(4) as u32,
        status_index: row.get::<_, i64>(5) as u64,
        issued_at: row.get(6),
        valid_until: row.get(7),
        document_expiry: row.get(8),
        holder: super::pseudonym_from(&row.get::<_, Vec<u8>>(9))?,
        device: row.get(10),
        claims_mac: row
            .get::<_, Option<Vec<u8>>>(11)
            .and_then(|m| <[u8; 32]>::try_from(m).ok()),
    })
}

fn lookup_idempotency(
    tx: &mut Tx<'_>,
    client: &str,
    key: &IdempotencyKey,
) -> Result<Option<Vec<u8>>, StoreError> {
    let row = tx
        .query_opt(
            "SELECT request_hash, response FROM idempotency WHERE client = $1 AND key = $2",
            &[&client, &key.key],
        )
        .map_err(map_err)?;
    match row {
        None => Ok(None),
        Some(row) if row.get::<_, Vec<u8>>(0) == key.request_hash => Ok(Some(row.get(1))),
        Some(_) => Err(StoreError::IdempotencyMismatch),
    }
}

/// Takes one free copy for `holder` if the holder never had one and any
/// shard has room: a random unlocked shard first (`SKIP LOCKED`), then, if
/// all are busy, waiting on one that still has room.
fn take_free_copy(tx: &mut Tx<'_>, holder: &Pseudonym) -> Result<bool, StoreError> {
    let had_one = tx
        .query_opt(
            "SELECT 1 FROM credentials WHERE holder = $1 AND free_copy",
            &[&holder.0.to_vec()],
        )
        .map_err(map_err)?
        .is_some();
    if had_one {
        return Ok(false);
    }
    let any_left =
        "SELECT 1 FROM quota_shards WHERE name = 'free_first_time' AND used < quota LIMIT 1";
    // Bounded: each round either takes a copy or finds a shard someone else
    // just emptied; 64 rounds of that means the quota is being drained.
    for round in 0..64 {
        // First a random shard nobody holds; then wait for any with room.
        let pick = if round == 0 {
            "SELECT shard FROM quota_shards WHERE name = 'free_first_time' AND used < quota
             ORDER BY random() LIMIT 1 FOR UPDATE SKIP LOCKED"
        } else {
            "SELECT shard FROM quota_shards WHERE name = 'free_first_time' AND used < quota
             ORDER BY shard LIMIT 1 FOR UPDATE"
        };
        match tx.query_opt(pick, &[]).map_err(map_err)? {
            Some(row) => {
                let shard: i32 = row.get(0);
                // Re-checked under the row lock.
                let taken = tx
                    .execute(
                        "UPDATE quota_shards SET used = used + 1
                         WHERE name = 'free_first_time' AND shard = $1 AND used < quota",
                        &[&shard],
                    )
                    .map_err(map_err)?;
                if taken == 1 {
                    return Ok(true);
                }
            }
            // With LIMIT and FOR UPDATE, a row that stopped matching while
            // we waited yields nothing even if others match: look again
            // unless every shard is full.
            None => {
                if tx.query_opt(any_left, &[]).map_err(map_err)?.is_none() {
                    return Ok(false);
                }
            }
        }
    }
    Ok(false)
}

impl Registry for PostgresRegistry {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    fn set_free_quota(&self, quota: u64) -> Result<(), StoreError> {
        let quota = quota as i64;
        self.with_tx(|tx| {
            // Lock every shard, then give each what it used plus an even
            // share of what is left (never below what was used).
            let rows = tx
                .query(
                    "SELECT shard, used FROM quota_shards WHERE name = 'free_first_time' ORDER BY shard FOR UPDATE",
                    &[],
                )
                .map_err(map_err)?;
            let used: i64 = rows.iter().map(|r| r.get::<_, i64>(1)).sum();
            let left = (quota - used).max(0);
            let n = rows.len() as i64;
            for (i, row) in rows.iter().enumerate() {
                let share = left / n + i64::from((i as i64) < left % n);
                let _ = tx
                    .execute(
                        "UPDATE quota_shards SET quota = used + $1 WHERE name = 'free_first_time' AND shard = $2",
                        &[&share, &row.get::<_, i32>(0)],
                    )
                    .map_err(map_err)?;
            }
            Ok(())
        })
    }

    fn free_quota(&self) -> Result<(u64, u64), StoreError> {
        self.with_tx(|tx| {
            let row = tx
                .query_one(
                    "SELECT COALESCE(SUM(used), 0)::BIGINT, COALESCE(SUM(quota), 0)::BIGINT
                     FROM quota_shards WHERE name = 'free_first_time'",
                    &[],
                )
                .map_err(map_err)?;
            Ok((row.get::<_, i64>(0) as u64, row.get::<_, i64>(1) as u64))
        })
    }

    fn facts(&self, holder: &Pseudonym, device: &str) -> Result<HolderFacts, StoreError> {
        let holder = holder.0.to_vec();
        self.with_tx(|tx| {
            let holder_live: Option<(String, String)> = tx
                .query_opt(
                    "SELECT device, state FROM credentials WHERE holder = $1 AND state IN ('active', 'suspended')",
                    &[&holder],
                )
                .map_err(map_err)?
                .map(|r| (r.get(0), r.get(1)));
            let device_holder: Option<Vec<u8>> = tx
                .query_opt(
                    "SELECT holder FROM credentials WHERE device = $1 AND state IN ('active', 'suspended')",
                    &[&device],
                )
                .map_err(map_err)?
                .map(|r| r.get(0));
            let used: i64 = tx
                .query_one(
                    "SELECT COALESCE(SUM(used), 0)::BIGINT FROM quota_shards WHERE name = 'free_first_time'",
                    &[],
                )
                .map_err(map_err)?
                .get(0);
            Ok(HolderFacts {
                holder_live_on_same_device: holder_live.as_ref().map(|(d, _)| *d == device),
                holder_suspended: holder_live.as_ref().is_some_and(|(_, s)| s == "suspended"),
                device_bound_to_other_holder: device_holder.is_some_and(|h| h != holder),
                free_copies_issued: used as u64,
            })
        })
    }

    fn reserve_status_indexes(&self, count: u64) -> Result<StatusRange, StoreError> {
        super::check_block(count)?;
        let count = count as i64;
        self.with_tx(|tx| {
            loop {
                let row = tx
                    .query_opt(
                        "UPDATE status_lists SET next_index = next_index + $1
                     WHERE id = (SELECT MAX(id) FROM status_lists) AND next_index + $1 <= size
                     RETURNING id, next_index - $1",
                        &[&count],
                    )
                    .map_err(map_err)?;
                if let Some(row) = row {
                    return Ok(StatusRange {
                        list: row.get::<_, i64>(0) as u32,
                        first: row.get::<_, i64>(1) as u64,
                        count: count as u64,
                    });
                }
                let _ = tx
                    .execute(
                        "INSERT INTO status_lists (id, next_index, size)
                     SELECT MAX(id) + 1, 0, $1 FROM status_lists ON CONFLICT DO NOTHING",
                        &[&(STATUS_LIST_SIZE as i64)],
                    )
                    .map_err(map_err)?;
            }
        })
    }

    fn idempotent_response(
        &self,
        client: &str,
        key: &IdempotencyKey,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        self.with_tx(|tx| lookup_idempotency(tx, client, key))
    }

    fn commit_issuance(
        &self,
        client: &str,
        commit: IssuanceCommit,
        respond: Respond,
    ) -> Result<(Committed, Vec<u8>), StoreError> {
        // `respond` runs once; a retried transaction reuses its output.
        let mut respond = Some(respond);
        let mut response_cache: Option<(Committed, Vec<u8>)> = None;
        let result = self.with_tx(|tx| {
            let c = &commit.credential;
            if let Some(key) = &commit.idempotency
                && let Some(stored) = lookup_idempotency(tx, client, key)?
            {
                return Err(StoreError::IdempotencyReplay(stored));
            }
            let mut superseded = Vec::new();
            if commit.supersede {
                for row in tx
                    .query(
                        "UPDATE credentials SET state = 'superseded'
                         WHERE holder = $1 AND device <> $2 AND state = 'active' RETURNING id",
                        &[&c.holder.0.to_vec(), &c.device],
                    )
                    .map_err(map_err)?
                {
                    superseded.push(row.get(0));
                }
            }
            let free_copy = commit.want_free_copy && take_free_copy(tx, &c.holder)?;
            let _ = tx
                .execute(
                    "INSERT INTO credentials (id, holder, device, profile, kid, state, status_list, status_index,
                                              issued_at, valid_until, document_expiry, free_copy, claims_mac)
                     VALUES ($1, $2, $3, $4, $5, 'active', $6, $7, $8, $9, $10, $11, $12)",
                    &[
                        &c.id,
                        &c.holder.0.to_vec(),
                        &c.device,
                        &c.profile,
                        &c.kid,
                        &i64::from(c.status_list),
                        &(c.status_index as i64),
                        &c.issued_at,
                        &c.valid_until,
                        &c.document_expiry,
                        &free_copy,
                        &c.claims_mac.to_vec(),
                    ],
                )
                .map_err(map_err)?;
            insert_decision(tx, &commit.decision, Some(&c.id), Some(&c.holder))?;
            let committed = Committed { free_copy, superseded };
            let response = match (&response_cache, respond.take()) {
                (Some((done, bytes)), _) if *done == committed => bytes.clone(),
                (_, Some(respond)) => respond(&committed),
                // A retry whose outcome differs (the last free copy went to
                // someone else): the response cannot be rebuilt here.
                // Not retried here: the caller retries the whole request.
                _ => return Err(StoreError::Unavailable("the outcome changed while retrying; retry the request".into())),
            };
            response_cache = Some((committed.clone(), response.clone()));
            if let Some(key) = &commit.idempotency {
                let _ = tx
                    .execute(
                        "INSERT INTO idempotency (client, key, request_hash, response, credential_id)
                         VALUES ($1, $2, $3, $4, $5)",
                        &[&client, &key.key, &key.request_hash.to_vec(), &response, &c.id],
                    )
                    .map_err(map_err)?;
            }
            Ok((committed, response))
        });
        match (result, &commit.idempotency) {
            // A twin with the same key committed first; its credential may
            // have tripped a uniqueness index before the key did.
            (Err(conflict @ StoreError::Conflict { .. }), Some(key)) => {
                match self.idempotent_response(client, key)? {
                    Some(stored) => Err(StoreError::IdempotencyReplay(stored)),
                    None => Err(conflict),
                }
            }
            (result, _) => result,
        }
    }

    fn credential(&self, id: &str) -> Result<CredentialMeta, StoreError> {
        self.with_tx(|tx| meta(tx, id))
    }

    fn set_state(
        &self,
        id: &str,
        to: CredentialState,
        decision: DecisionRecord,
    ) -> Result<CredentialMeta, StoreError> {
        self.with_tx(|tx| {
            let current = tx
                .query_opt(
                    "SELECT state FROM credentials WHERE id = $1 FOR UPDATE",
                    &[&id],
                )
                .map_err(map_err)?
                .ok_or(StoreError::NotFound)?;
            let from = CredentialState::parse(current.get(0))?;
            check_transition(from, to)?;
            let _ = tx
                .execute(
                    "UPDATE credentials SET state = $1 WHERE id = $2",
                    &[&to.as_str(), &id],
                )
                .map_err(map_err)?;
            insert_decision(tx, &decision, Some(id), None)?;
            meta(tx, id)
        })
    }

    fn refresh(
        &self,
        id: &str,
        holder: &Pseudonym,
        device: &str,
        kid: &str,
        valid_until: i64,
        decision: DecisionRecord,
    ) -> Result<CredentialMeta, StoreError> {
        self.with_tx(|tx| {
            let row = tx
                .query_opt(
                    "SELECT holder, device, state FROM credentials WHERE id = $1 FOR UPDATE",
                    &[&id],
                )
                .map_err(map_err)?
                .ok_or(StoreError::NotFound)?;
            let stored_holder: Vec<u8> = row.get(0);
            let stored_device: String = row.get(1);
            let state = CredentialState::parse(row.get(2))?;
            super::check_refresh(&stored_holder, &stored_device, state, holder, device)?;
            let _ = tx
                .execute(
                    "UPDATE credentials SET kid = $1, valid_until = $2 WHERE id = $3",
                    &[&kid, &valid_until, &id],
                )
                .map_err(map_err)?;
            insert_decision(tx, &decision, Some(id), None)?;
            meta(tx, id)
        })
    }

    fn status_entries(&self, list: u32) -> Result<Vec<(u64, CredentialState)>, StoreError> {
        self.with_tx(|tx| {
            tx.query(
                "SELECT status_index, state FROM credentials WHERE status_list = $1 ORDER BY status_index",
                &[&i64::from(list)],
            )
            .map_err(map_err)?
            .iter()
            .map(|r| Ok((r.get::<_, i64>(0) as u64, CredentialState::parse(r.get(1))?)))
            .collect()
        })
    }

    fn decision_count(&self) -> Result<u64, StoreError> {
        self.with_tx(|tx| {
            Ok(tx
                .query_one(
                    "SELECT (SELECT size FROM audit_head WHERE id = 1) + (SELECT COUNT(*) FROM audit_queue)",
                    &[],
                )
                .map_err(map_err)?
                .get::<_, i64>(0) as u64)
        })
    }

    fn ping(&self) -> Result<(), StoreError> {
        self.with_tx(|tx| tx.execute("SELECT 1", &[]).map(|_| ()).map_err(map_err))
    }

    fn audit_size(&self) -> Result<u64, StoreError> {
        self.with_tx(|tx| {
            Ok(tx
                .query_one("SELECT size FROM audit_head WHERE id = 1", &[])
                .map_err(map_err)?
                .get::<_, i64>(0) as u64)
        })
    }

    fn sequence_audit(&self) -> Result<u64, StoreError> {
        self.with_tx(sequence)
    }

    fn record(
        &self,
        decision: DecisionRecord,
        holder: Option<Pseudonym>,
    ) -> Result<(), StoreError> {
        self.with_tx(|tx| insert_decision(tx, &decision, None, holder.as_ref()))
    }

    fn audit_entries(&self, start: u64, count: u64) -> Result<Vec<Vec<u8>>, StoreError> {
        let end = start.saturating_add(count).min(i64::MAX as u64) as i64;
        self.with_tx(|tx| {
            Ok(tx
                .query(
                    "SELECT entry FROM audit_log WHERE seq >= $1 AND seq < $2 ORDER BY seq",
                    &[&(start as i64), &end],
                )
                .map_err(map_err)?
                .iter()
                .map(|r| r.get::<_, Vec<u8>>(0))
                .collect())
        })
    }

    fn audit_leaves(&self, start: u64, end: u64) -> Result<Vec<[u8; 32]>, StoreError> {
        let end = end.min(i64::MAX as u64) as i64;
        self.with_tx(|tx| {
            tx.query(
                "SELECT leaf FROM audit_log WHERE seq >= $1 AND seq < $2 ORDER BY seq",
                &[&(start as i64), &end],
            )
            .map_err(map_err)?
            .iter()
            .map(|r| {
                <[u8; 32]>::try_from(r.get::<_, Vec<u8>>(0))
                    .map_err(|_| StoreError::Internal("a leaf hash is not 32 bytes".into()))
            })
            .collect()
        })
    }

    fn add_checkpoint(&self, size: u64, note: &str) -> Result<(), StoreError> {
        self.with_tx(|tx| {
            let _ = tx
                .execute(
                    "INSERT INTO checkpoints (size, note) VALUES ($1, $2) ON CONFLICT (size) DO NOTHING",
                    &[&(size as i64), &note],
                )
                .map_err(map_err)?;
            Ok(())
        })
    }

    fn checkpoints(&self) -> Result<Vec<(u64, String)>, StoreError> {
        self.with_tx(|tx| {
            Ok(tx
                .query("SELECT size, note FROM checkpoints ORDER BY size", &[])
                .map_err(map_err)?
                .iter()
                .map(|r| (r.get::<_, i64>(0) as u64, r.get::<_, String>(1)))
                .collect())
        })
    }

    fn latest_checkpoint(&self) -> Result<Option<(u64, String)>, StoreError> {
        self.with_tx(|tx| {
            Ok(tx
                .query_opt(
                    "SELECT size, note FROM checkpoints ORDER BY size DESC LIMIT 1",
                    &[],
                )
                .map_err(map_err)?
                .map(|r| (r.get::<_, i64>(0) as u64, r.get::<_, String>(1))))
        })
    }

    fn probe_write(&self) -> Result<(), StoreError> {
        self.with_tx(|tx| {
            // What every decision does: queue an entry (removed again at once).
            let id: i64 = tx
                .query_one(
                    "INSERT INTO audit_queue (at, node, actor, action, outcome, policy_hash)
                     VALUES (0, '', '', 'probe', '', '') RETURNING id",
                    &[],
                )
                .map_err(map_err)?
                .get(0);
            tx.execute("DELETE FROM audit_queue WHERE id = $1", &[&id])
                .map(|_| ())
                .map_err(map_err)
        })
    }
}

const KEY_COLUMNS: &str = "label, chain, kid, state, created_at, activate_at, certificate,
    cert_not_after, signatures, last_valid_until, revoked_reason, revoked_at, public_key";

/// Moves what `kid` signed from the source states of `to` to `to`.
fn mark_credentials(tx: &mut Tx<'_>, kid: &str, to: CredentialState) -> Result<u64, StoreError> {
    let from: Vec<&str> = keyring::revocation_sources(to).to_vec();
    tx.execute(
        "UPDATE credentials SET state = $1 WHERE kid = $2 AND state = ANY($3)",
        &[&to.as_str(), &kid, &from],
    )
    .map_err(map_err)
}

fn key_row(r: &postgres::Row) -> Result<StoredKey, StoreError> {
    let revoked_reason: Option<String> = r.get(10);
    let revoked_at: Option<i64> = r.get(11);
    let last: Option<i64> = r.get(9);
    Ok(StoredKey {
        chain: r.get(1),
        kid: r.get(2),
        certificate: r.get(6),
        public_key: r.get(12),
        record: crate::keys::lifecycle::KeyRecord {
            label: r.get(0),
            state: keyring::state_from(r.get(3))?,
            created_at: keyring::time_from(r.get(4))?,
            activate_at: keyring::time_from(r.get(5))?,
            cert_not_after: keyring::time_from(r.get(7))?,
            signatures: r.get::<_, i64>(8) as u64,
            last_signature_valid_until: last.map(keyring::time_from).transpose()?,
            revoked: revoked_at.is_some(),
        },
        revocation: match (revoked_reason, revoked_at) {
            (Some(reason), Some(at)) => Some((reason, keyring::time_from(at)?)),
            _ => None,
        },
    })
}

impl KeyRegistry for PostgresRegistry {
    fn keys(&self) -> Result<Vec<StoredKey>, StoreError> {
        self.with_tx(|tx| {
            tx.query(
                &format!("SELECT {KEY_COLUMNS} FROM signing_keys ORDER BY created_at, label"),
                &[],
            )
            .map_err(map_err)?
            .iter()
            .map(key_row)
            .collect()
        })
    }

    fn add_key(&self, key: &StoredKey, decision: DecisionRecord) -> Result<(), StoreError> {
        let r = &key.record;
        self.with_tx(|tx| {
            let _ = tx
                .execute(
                    &format!(
                        "INSERT INTO signing_keys ({KEY_COLUMNS})
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, NULL, NULL, $11)"
                    ),
                    &[
                        &r.label,
                        &key.chain,
                        &key.kid,
                        &r.state.as_str(),
                        &r.created_at.unix_timestamp(),
                        &r.activate_at.unix_timestamp(),
                        &key.certificate,
                        &r.cert_not_after.unix_timestamp(),
                        &(r.signatures as i64),
                        &r.last_signature_valid_until.map(|t| t.unix_timestamp()),
                        &key.public_key,
                    ],
                )
                .map_err(map_err)?;
            insert_decision(tx, &decision, None, None)
        })
    }

    fn move_keys(
        &self,
        moves: &[(String, KeyState, KeyState)],
        at: time::OffsetDateTime,
        decision: DecisionRecord,
    ) -> Result<(), StoreError> {
        let at = at.unix_timestamp();
        self.with_tx(|tx| {
            for (label, from, to) in moves {
                let changed = tx
                    .execute(
                        "UPDATE signing_keys SET state = $1,
                            activate_at = CASE WHEN $1 = 'active' THEN LEAST(activate_at, $4) ELSE activate_at END
                         WHERE label = $2 AND state = $3",
                        &[&to.as_str(), label, &from.as_str(), &at],
                    )
                    .map_err(map_err)?;
                if changed != 1 {
                    return Err(StoreError::Conflict { rule: "keys.state" });
                }
            }
            insert_decision(tx, &decision, None, None)
        })
    }

    fn revoke_key(
        &self,
        revocation: &KeyRevocation,
        decision: DecisionRecord,
    ) -> Result<u64, StoreError> {
        self.with_tx(|tx| {
            let row = tx
                .query_opt(
                    "SELECT state, kid FROM signing_keys WHERE label = $1 FOR UPDATE",
                    &[&revocation.label],
                )
                .map_err(map_err)?
                .ok_or(StoreError::NotFound)?;
            let state = keyring::state_from(row.get(0))?;
            let kid: String = row.get(1);
            if state == KeyState::Destroyed {
                return Err(StoreError::Conflict { rule: "keys.state" });
            }
            let retire = matches!(state, KeyState::Pending | KeyState::Active);
            let _ = tx
                .execute(
                    "UPDATE signing_keys SET revoked_reason = $1, revoked_at = $2,
                        state = CASE WHEN $3 THEN 'retired' ELSE state END
                     WHERE label = $4 AND revoked_at IS NULL",
                    &[
                        &revocation.reason,
                        &revocation.at.unix_timestamp(),
                        &retire,
                        &revocation.label,
                    ],
                )
                .map_err(map_err)?;
            let changed = match revocation.credentials {
                Some(to) => mark_credentials(tx, &kid, to)?,
                None => 0,
            };
            insert_decision(tx, &decision, None, None)?;
            Ok(changed)
        })
    }

    fn add_key_usage(
        &self,
        label: &str,
        signatures: u64,
        last_valid_until: i64,
    ) -> Result<(), StoreError> {
        self.with_tx(|tx| {
            let _ = tx
                .execute(
                    "UPDATE signing_keys SET signatures = signatures + $1,
                        last_valid_until = GREATEST(last_valid_until, $2)
                     WHERE label = $3",
                    &[&(signatures as i64), &last_valid_until, &label],
                )
                .map_err(map_err)?;
            Ok(())
        })
    }

    fn lease(&self, name: &str, holder: &str, ttl_ms: i64) -> Result<bool, StoreError> {
        self.with_tx(|tx| {
            let changed = tx
                .execute(
                    "INSERT INTO leases (name, holder, until_ms)
                     VALUES ($1, $2, (extract(epoch FROM clock_timestamp()) * 1000)::BIGINT + $3)
                     ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until_ms = excluded.until_ms
                     WHERE leases.holder = excluded.holder
                        OR leases.until_ms < (extract(epoch FROM clock_timestamp()) * 1000)::BIGINT",
                    &[&name, &holder, &ttl_ms],
                )
                .map_err(map_err)?;
            Ok(changed == 1)
        })
    }

    fn mark_signed_by(
        &self,
        kid: &str,
        to: CredentialState,
        audit: keyring::MovedAudit,
    ) -> Result<u64, StoreError> {
        self.with_tx(|tx| {
            let moved = mark_credentials(tx, kid, to)?;
            if moved > 0 {
                insert_decision(tx, &audit(moved), None, None)?;
            }
            Ok(moved)
        })
    }

    fn add_proposal(
        &self,
        proposal: &crate::keys::approvals::Proposal,
        decision: DecisionRecord,
    ) -> Result<(), StoreError> {
        let body = keyring::proposal_json(proposal)?;
        self.with_tx(|tx| {
            let _ = tx
                .execute(
                    "INSERT INTO proposals (id, created_at, body, version) VALUES ($1, $2, $3, 1)",
                    &[&proposal.id, &proposal.created_at.unix_timestamp(), &body],
                )
                .map_err(map_err)?;
            insert_decision(tx, &decision, None, None)
        })
    }

    fn update_proposal(
        &self,
        proposal: &crate::keys::approvals::Proposal,
        version: i64,
        decision: DecisionRecord,
    ) -> Result<(), StoreError> {
        let body = keyring::proposal_json(proposal)?;
        self.with_tx(|tx| {
            let changed = tx
                .execute(
                    "UPDATE proposals SET body = $1, version = version + 1 WHERE id = $2 AND version = $3",
                    &[&body, &proposal.id, &version],
                )
                .map_err(map_err)?;
            if changed != 1 {
                return Err(StoreError::Conflict {
                    rule: "approvals.concurrent",
                });
            }
            insert_decision(tx, &decision, None, None)
        })
    }

    fn proposal(&self, id: &str) -> Result<StoredProposal, StoreError> {
        self.with_tx(|tx| {
            let row = tx
                .query_opt("SELECT body, version FROM proposals WHERE id = $1", &[&id])
                .map_err(map_err)?
                .ok_or(StoreError::NotFound)?;
            keyring::proposal_from(row.get(0), row.get(1))
        })
    }

    fn proposals(&self, limit: u32) -> Result<Vec<StoredProposal>, StoreError> {
        self.with_tx(|tx| {
            tx.query(
                "SELECT body, version FROM proposals ORDER BY created_at DESC, id LIMIT $1",
                &[&i64::from(limit)],
            )
            .map_err(map_err)?
            .iter()
            .map(|r| keyring::proposal_from(r.get(0), r.get(1)))
            .collect()
        })
    }

    fn set_document(
        &self,
        name: &str,
        body: &str,
        decision: DecisionRecord,
    ) -> Result<(), StoreError> {
        self.with_tx(|tx| {
            let _ = tx
                .execute(
                    "INSERT INTO pki_documents (name, body) VALUES ($1, $2)
                     ON CONFLICT (name) DO UPDATE SET body = excluded.body",
                    &[&name, &body],
                )
                .map_err(map_err)?;
            insert_decision(tx, &decision, None, None)
        })
    }

    fn set_crl(
        &self,
        pem: &str,
        replaces: Option<&str>,
        decision: DecisionRecord,
    ) -> Result<(), StoreError> {
        self.with_tx(|tx| {
            let stored: Option<String> = tx
                .query_opt(
                    "SELECT body FROM pki_documents WHERE name = $1 FOR UPDATE",
                    &[&keyring::CRL_DOCUMENT],
                )
                .map_err(map_err)?
                .map(|r| r.get(0));
            if stored.as_deref() != replaces {
                return Err(StoreError::Conflict {
                    rule: keyring::CRL_CONCURRENT,
                });
            }
            // Two first CRLs at once: the primary key lets one in, and the
            // other's DO NOTHING is refused below.
            let written = tx
                .execute(
                    "INSERT INTO pki_documents (name, body) VALUES ($1, $2)
                     ON CONFLICT (name) DO UPDATE SET body = excluded.body
                     WHERE $3::TEXT IS NOT NULL",
                    &[&keyring::CRL_DOCUMENT, &pem, &replaces],
                )
                .map_err(map_err)?;
            if written != 1 {
                return Err(StoreError::Conflict {
                    rule: keyring::CRL_CONCURRENT,
                });
            }
            insert_decision(tx, &decision, None, None)
        })
    }

    fn set_document_if_absent(
        &self,
        name: &str,
        body: &str,
        decision: DecisionRecord,
    ) -> Result<bool, StoreError> {
        self.with_tx(|tx| {
            let stored = tx
                .execute(
                    "INSERT INTO pki_documents (name, body) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
                    &[&name, &body],
                )
                .map_err(map_err)?
                == 1;
            if stored {
                insert_decision(tx, &decision, None, None)?;
            }
            Ok(stored)
        })
    }

    fn document(&self, name: &str) -> Result<Option<String>, StoreError> {
        self.with_tx(|tx| {
            Ok(tx
                .query_opt("SELECT body FROM pki_documents WHERE name = $1", &[&name])
                .map_err(map_err)?
                .map(|r| r.get(0)))
        })
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
        ] {
            let Err(e) = PostgresRegistry::open(url, 1) else {
                panic!("{url} was accepted");
            };
            assert!(e.to_string().contains("sslmode=require"), "{url}: {e}");
        }
    }
}
