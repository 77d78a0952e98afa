//! The registry on SQLite: WAL, `synchronous=FULL`, and group commit.
//!
//! Every write goes to one writer thread, which takes whatever writes are
//! queued (up to `BATCH_MAX`), runs each inside its own SAVEPOINT of one
//! transaction, commits once, and only then answers each caller. One fsync
//! serves a whole batch, so durable throughput is not one fsync per
//! request; a write that fails rolls back only its savepoint. Reads use a
//! small pool of their own connections (WAL lets them run beside the writer).

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OptionalExtension, params};

use crate::keys::lifecycle::KeyState;

use super::keyring::{self, KeyRegistry, KeyRevocation, StoredKey, StoredProposal};
use super::{
    Committed, CredentialMeta, CredentialState, DecisionRecord, HolderFacts, IdempotencyKey,
    IssuanceCommit, Pseudonym, Registry, Respond, STATUS_LIST_SIZE, StatusRange, StoreError,
    check_transition,
};

/// Writes per group commit at most.
const BATCH_MAX: usize = 256;
/// Writes queued at most before callers wait (back-pressure, not memory).
const QUEUE_MAX: usize = 4096;
const READERS: usize = 4;

type Finish = Box<dyn FnOnce(Option<StoreError>) + Send>;
type Run = Box<dyn FnOnce(&Connection) -> (bool, Finish) + Send>;

/// A queued write: `run` executes it (inside a savepoint) and returns
/// whether it succeeded and how to answer once the commit is known;
/// `refuse` answers a job that could not run at all.
struct Job {
    run: Run,
    refuse: Box<dyn FnOnce(StoreError) + Send>,
}

const MIGRATIONS: &[&str] = &[
    // 1: the registry.
    "CREATE TABLE credentials (
        id TEXT PRIMARY KEY,
        holder BLOB NOT NULL,
        device TEXT NOT NULL,
        profile TEXT NOT NULL,
        kid TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('active', 'suspended', 'revoked', 'superseded')),
        status_list INTEGER NOT NULL,
        status_index INTEGER NOT NULL,
        issued_at INTEGER NOT NULL,
        valid_until INTEGER NOT NULL,
        document_expiry TEXT NOT NULL,
        free_copy INTEGER NOT NULL,
        UNIQUE (status_list, status_index)
    );
    CREATE UNIQUE INDEX one_live_per_holder ON credentials (holder) WHERE state IN ('active', 'suspended');
    CREATE UNIQUE INDEX one_holder_per_device ON credentials (device) WHERE state IN ('active', 'suspended');
    -- One free first-time copy per holder, ever (and the index the quota update's check uses).
    CREATE UNIQUE INDEX one_free_copy_per_holder ON credentials (holder) WHERE free_copy;
    CREATE TABLE quotas (
        name TEXT PRIMARY KEY,
        used INTEGER NOT NULL,
        quota INTEGER NOT NULL,
        CHECK (used >= 0 AND used <= quota)
    );
    INSERT INTO quotas (name, used, quota) VALUES ('free_first_time', 0, 0);
    CREATE TABLE status_lists (id INTEGER PRIMARY KEY, next_index INTEGER NOT NULL, size INTEGER NOT NULL);
    INSERT INTO status_lists (id, next_index, size) VALUES (1, 0, 1048576);
    CREATE TABLE idempotency (
        client TEXT NOT NULL,
        key TEXT NOT NULL,
        request_hash BLOB NOT NULL,
        response BLOB NOT NULL,
        credential_id TEXT NOT NULL,
        PRIMARY KEY (client, key)
    );
    CREATE TABLE decisions (
        seq INTEGER PRIMARY KEY,
        at INTEGER NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        outcome TEXT NOT NULL,
        rule TEXT,
        policy_hash TEXT NOT NULL,
        credential_id TEXT,
        holder BLOB
    );",
    // 2: the audit log replaces the decision records. One counter row makes
    // the sequence gapless; every append takes it in its transaction.
    "DROP TABLE decisions;
    CREATE TABLE audit_head (id INTEGER PRIMARY KEY CHECK (id = 1), size INTEGER NOT NULL);
    INSERT INTO audit_head (id, size) VALUES (1, 0);
    CREATE TABLE audit_log (
        seq INTEGER PRIMARY KEY,
        node TEXT NOT NULL,
        node_seq INTEGER NOT NULL,
        entry BLOB NOT NULL,
        leaf BLOB NOT NULL,
        UNIQUE (node, node_seq)
    );
    CREATE TABLE checkpoints (size INTEGER PRIMARY KEY, note TEXT NOT NULL);",
    // 3: the claims' HMAC, which a refresh must match.
    "ALTER TABLE credentials ADD COLUMN claims_mac BLOB;",
    // 4: the single writer numbers entries from the log itself, so the head
    // row (never updated here) goes; readiness writes a row of its own.
    "DROP TABLE audit_head;
    CREATE TABLE write_probe (id INTEGER PRIMARY KEY CHECK (id = 1), at INTEGER NOT NULL);",
    // 5: signing keys, leases, officer proposals, the IACA's CRL.
    "CREATE TABLE signing_keys (
        label TEXT PRIMARY KEY,
        chain TEXT NOT NULL,
        kid TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('pending', 'active', 'retired', 'destroyed')),
        created_at INTEGER NOT NULL,
        activate_at INTEGER NOT NULL,
        certificate BLOB,
        public_key BLOB NOT NULL,
        cert_not_after INTEGER NOT NULL,
        signatures INTEGER NOT NULL DEFAULT 0,
        last_valid_until INTEGER,
        revoked_reason TEXT,
        revoked_at INTEGER
    );
    CREATE UNIQUE INDEX one_pending_key ON signing_keys (chain) WHERE state = 'pending';
    CREATE UNIQUE INDEX one_active_key ON signing_keys (chain) WHERE state = 'active';
    CREATE TABLE leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL, until_ms INTEGER NOT NULL);
    CREATE TABLE proposals (
        id TEXT PRIMARY KEY,
        created_at INTEGER NOT NULL,
        body TEXT NOT NULL,
        version INTEGER NOT NULL
    );
    CREATE TABLE pki_documents (name TEXT PRIMARY KEY, body TEXT NOT NULL);",
    // 6: an emergency revocation, and its sweeps every 10 s for 10 minutes,
    // find a key's credentials by index, not by scanning the registry.
    "CREATE INDEX credentials_by_key ON credentials (kid, state);",
];

/// The registry in one SQLite file.
pub struct SqliteRegistry {
    /// Keeps the WAL checkpoint thread running while the registry lives.
    _checkpoints: mpsc::Sender<()>,
    path: PathBuf,
    writer: SyncSender<Job>,
    readers: Mutex<Vec<Connection>>,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// Maps a SQLite error: constraint violations to the invariant they guard,
/// I/O trouble (full, read-only, busy) to `Unavailable`.
fn map_err(e: rusqlite::Error) -> StoreError {
    if let rusqlite::Error::SqliteFailure(failure, message) = &e {
        let text = message.as_deref().unwrap_or_default();
        return match failure.code {
            ErrorCode::ConstraintViolation
                if text.contains("one_live_per_holder") || text.contains("credentials.holder") =>
            {
                StoreError::Conflict {
                    rule: "holder.one_active",
                }
            }
            ErrorCode::ConstraintViolation
                if text.contains("one_holder_per_device")
                    || text.contains("credentials.device") =>
            {
                StoreError::Conflict {
                    rule: "device.one_person",
                }
            }
            ErrorCode::ConstraintViolation if text.contains("idempotency.") => {
                StoreError::Conflict {
                    rule: "idempotency.key",
                }
            }
            ErrorCode::ConstraintViolation => StoreError::Internal(e.to_string()),
            ErrorCode::DiskFull
            | ErrorCode::ReadOnly
            | ErrorCode::SystemIoFailure
            | ErrorCode::CannotOpen
            | ErrorCode::DatabaseBusy
            | ErrorCode::DatabaseLocked
            | ErrorCode::PermissionDenied => StoreError::Unavailable(e.to_string()),
            _ => StoreError::Internal(e.to_string()),
        };
    }
    StoreError::Internal(e.to_string())
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

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn.transaction().map_err(map_err)?;
    tx.execute_batch("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        .map_err(map_err)?;
    let version: i64 = tx
        .query_row(
            "SELECT COALESCE(MAX(version), 0) FROM schema_version",
            [],
            |r| r.get(0),
        )
        .map_err(map_err)?;
    if version as usize > MIGRATIONS.len() {
        return Err(StoreError::Internal(format!(
            "the store is at schema version {version}, newer than this build knows ({})",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        tx.execute_batch(sql).map_err(map_err)?;
        let _ = tx
            .execute(
                "INSERT INTO schema_version (version) VALUES (?1)",
                params![i as i64 + 1],
            )
            .map_err(map_err)?;
    }
    tx.commit().map_err(map_err)
}

fn writer_loop(conn: Connection, jobs: Receiver<Job>) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < BATCH_MAX {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
            let err = map_err(e);
            for job in batch {
                (job.refuse)(err.clone());
            }
            continue;
        }
        let mut finishes = Vec::with_capacity(batch.len());
        // Prepared once per connection: parsing these for every job cost
        // about as much as a job.
        let statement = |sql: &str| {
            conn.prepare_cached(sql)
                .and_then(|mut s| s.execute([]))
                .map(|_| ())
                .map_err(map_err)
        };
        let mut broken: Option<StoreError> = None;
        let mut pending = batch.into_iter();
        for job in pending.by_ref() {
            if let Err(e) = statement("SAVEPOINT job") {
                (job.refuse)(e.clone());
                broken = Some(e);
                break;
            }
            // A panicking job must not take the writer (and every later
            // write) down with it; its caller sees its reply channel close.
            let (ok, finish): (bool, Finish) =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (job.run)(&conn)))
                    .unwrap_or_else(|_| (false, Box::new(|_| {})));
            let ended = if ok {
                Ok(())
            } else {
                statement("ROLLBACK TO job")
            }
            .and_then(|()| statement("RELEASE job"));
            finishes.push(finish);
            // SQLite rolls the whole transaction back on some errors (full
            // disk, I/O): the batch's earlier work is gone, and going on
            // would commit later jobs one savepoint at a time.
            if let Err(e) = ended {
                broken = Some(e);
            } else if conn.is_autocommit() {
                broken = Some(StoreError::Unavailable(
                    "SQLite rolled the batch back".into(),
                ));
            }
            if broken.is_some() {
                break;
            }
        }
        let outcome = match broken {
            Some(err) => {
                for job in pending {
                    (job.refuse)(err.clone());
                }
                Err(err)
            }
            None => conn.execute_batch("COMMIT").map_err(map_err),
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
}

impl SqliteRegistry {
    /// Opens (creating if needed) the registry at `path` and migrates it.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let mut conn = open_connection(path)?;
        migrate(&mut conn)?;
        // Checkpoints move the WAL into the database file: done by the
        // writer they stall every commit behind them (latency spikes), so the
        // writer never checkpoints and a thread of its own does, passively
        // (it never blocks the writer), once a second.
        conn.execute_batch("PRAGMA wal_autocheckpoint = 0")
            .map_err(map_err)?;
        let checkpointer = open_connection(path)?;
        // Dropping the registry drops the sender, which ends the thread.
        let (checkpoints_alive, checkpoints_stop) = mpsc::channel::<()>();
        let _ = std::thread::Builder::new()
            .name("dojang-sqlite-wal".into())
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) =
                    checkpoints_stop.recv_timeout(Duration::from_secs(1))
                {
                    // Best effort: a failed round is retried a second later.
                    let _ = checkpointer.execute_batch("PRAGMA wal_checkpoint(PASSIVE)");
                }
            })
            .map_err(|e| StoreError::Internal(e.to_string()))?;
        let (writer, jobs) = mpsc::sync_channel::<Job>(QUEUE_MAX);
        let _ = std::thread::Builder::new()
            .name("dojang-sqlite-writer".into())
            .spawn(move || writer_loop(conn, jobs))
            .map_err(|e| StoreError::Internal(e.to_string()))?;
        let readers = (0..READERS)
            .map(|_| open_connection(path))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(SqliteRegistry {
            _checkpoints: checkpoints_alive,
            path: path.to_owned(),
            writer,
            readers: Mutex::new(readers),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` in the next group commit; returns once it is durable.
    fn write<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let (reply, answer) = mpsc::sync_channel::<Result<R, StoreError>>(1);
        let refuse_reply = reply.clone();
        let job = Job {
            run: Box::new(move |conn| {
                let result = f(conn);
                let ok = result.is_ok();
                let finish: Finish = Box::new(move |commit_error| {
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
        };
        self.writer
            .send(job)
            .map_err(|_| StoreError::Unavailable("the SQLite writer has stopped".into()))?;
        answer
            .recv()
            .map_err(|_| StoreError::Unavailable("the SQLite write did not complete".into()))?
    }

    fn read<R>(
        &self,
        f: impl FnOnce(&Connection) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let conn = self
            .readers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let conn = match conn {
            Some(conn) => conn,
            None => open_connection(&self.path)?,
        };
        let result = f(&conn);
        let mut pool = self.readers.lock().unwrap_or_else(PoisonError::into_inner);
        if pool.len() < READERS {
            pool.push(conn);
        }
        result
    }
}

/// Appends the decision to the audit log (inside the caller's transaction).
fn insert_decision(
    conn: &Connection,
    d: &DecisionRecord,
    credential: Option<&str>,
    holder: Option<&Pseudonym>,
) -> Result<(), StoreError> {
    // One writer: the next sequence number is the last one plus one (the
    // rowid's B-tree answers that from its rightmost page).
    let seq: i64 = conn
        .prepare_cached("SELECT COALESCE(MAX(seq) + 1, 0) FROM audit_log")
        .and_then(|mut s| s.query_row([], |r| r.get(0)))
        .map_err(map_err)?;
    let node_seq: i64 = conn
        .prepare_cached("SELECT COALESCE(MAX(node_seq) + 1, 0) FROM audit_log WHERE node = ?1")
        .and_then(|mut s| s.query_row(params![d.node], |r| r.get(0)))
        .map_err(map_err)?;
    let entry = d.entry(node_seq as u64, credential, holder).encode();
    let leaf = crate::audit::merkle::leaf_hash(&entry);
    let _ = conn
        .prepare_cached(
            "INSERT INTO audit_log (seq, node, node_seq, entry, leaf) VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .and_then(|mut s| s.execute(params![seq, d.node, node_seq, entry, leaf.to_vec()]))
        .map_err(map_err)?;
    Ok(())
}

fn meta(conn: &Connection, id: &str) -> Result<CredentialMeta, StoreError> {
    conn.prepare_cached(
        "SELECT id, profile, kid, state, status_list, status_index, issued_at, valid_until, document_expiry,
                holder, device, claims_mac
         FROM credentials WHERE id = ?1",
    )
    .and_then(|mut s| {
        s.query_row(params![id], |r| {
            Ok((
                (
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, i64>(5)?,
                    r.get::<_, i64>(6)?,
                    r.get::<_, i64>(7)?,
                    r.get::<_, String>(8)?,
                ),
                (
                    r.get::<_, Vec<u8>>(9)?,
                    r.get::<_, String>(10)?,
                    r.get::<_, Option<Vec<u8>>>(11)?,
                ),
            ))
        })
        .optional()
    })
    .map_err(map_err)?
    .ok_or(StoreError::NotFound)
    .and_then(|((id, profile, kid, state, list, index, issued_at, valid_until, document_expiry), (holder, device, claims_mac))| {
        Ok(CredentialMeta {
            holder: super::pseudonym_from(&holder)?,
            device,
            claims_mac: claims_mac.and_then(|m| <[u8; 32]>::try_from(m).ok()),
            id,
            profile,
            kid,
            state: CredentialState::parse(&state)?,
            status_list: list as u32,
            status_index: index as u64,
            issued_at,
            valid_until,
            document_expiry,
        })
    })
}

impl Registry for SqliteRegistry {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    fn set_free_quota(&self, quota: u64) -> Result<(), StoreError> {
        self.write(move |conn| {
            let _ = conn
                .execute(
                    "UPDATE quotas SET quota = MAX(?1, used) WHERE name = 'free_first_time'",
                    params![quota as i64],
                )
                .map_err(map_err)?;
            Ok(())
        })
    }

    fn free_quota(&self) -> Result<(u64, u64), StoreError> {
        self.read(|conn| {
            conn.query_row(
                "SELECT used, quota FROM quotas WHERE name = 'free_first_time'",
                [],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
            )
            .map_err(map_err)
        })
    }

    fn facts(&self, holder: &Pseudonym, device: &str) -> Result<HolderFacts, StoreError> {
        let holder = holder.0.to_vec();
        let device = device.to_owned();
        self.read(move |conn| {
            let holder_live: Option<(String, String)> = conn
                .prepare_cached(
                    "SELECT device, state FROM credentials WHERE holder = ?1 AND state IN ('active', 'suspended')",
                )
                .and_then(|mut s| s.query_row(params![holder], |r| Ok((r.get(0)?, r.get(1)?))).optional())
                .map_err(map_err)?;
            let device_holder: Option<Vec<u8>> = conn
                .prepare_cached("SELECT holder FROM credentials WHERE device = ?1 AND state IN ('active', 'suspended')")
                .and_then(|mut s| s.query_row(params![device], |r| r.get(0)).optional())
                .map_err(map_err)?;
            let used: i64 = conn
                .query_row("SELECT used FROM quotas WHERE name = 'free_first_time'", [], |r| r.get(0))
                .map_err(map_err)?;
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
        self.write(move |conn| {
            loop {
                let (list, next, size): (i64, i64, i64) = conn
                    .query_row("SELECT id, next_index, size FROM status_lists ORDER BY id DESC LIMIT 1", [], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                    })
                    .map_err(map_err)?;
                if next as u64 + count <= size as u64 {
                    let _ = conn
                        .execute(
                            "UPDATE status_lists SET next_index = next_index + ?1 WHERE id = ?2",
                            params![count as i64, list],
                        )
                        .map_err(map_err)?;
                    return Ok(StatusRange {
                        list: list as u32,
                        first: next as u64,
                        count,
                    });
                }
                let _ = conn
                    .execute(
                        "INSERT INTO status_lists (id, next_index, size) VALUES (?1, 0, ?2) ON CONFLICT DO NOTHING",
                        params![list + 1, STATUS_LIST_SIZE as i64],
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
        let (client, key_text, hash) = (client.to_owned(), key.key.clone(), key.request_hash);
        self.read(move |conn| lookup_idempotency(conn, &client, &key_text, &hash))
    }

    fn commit_issuance(
        &self,
        client: &str,
        commit: IssuanceCommit,
        respond: Respond,
    ) -> Result<(Committed, Vec<u8>), StoreError> {
        let client = client.to_owned();
        let replay_client = client.clone();
        let replay_key = commit.idempotency.clone();
        let result = self.write(move |conn| {
            let c = &commit.credential;
            if let Some(key) = &commit.idempotency
                && let Some(stored) = lookup_idempotency(conn, &client, &key.key, &key.request_hash)?
            {
                return Err(StoreError::IdempotencyReplay(stored));
            }
            let mut superseded = Vec::new();
            if commit.supersede {
                let mut stmt = conn
                    .prepare_cached(
                        "UPDATE credentials SET state = 'superseded'
                         WHERE holder = ?1 AND device <> ?2 AND state = 'active' RETURNING id",
                    )
                    .map_err(map_err)?;
                let rows = stmt
                    .query_map(params![c.holder.0.to_vec(), c.device], |r| r.get::<_, String>(0))
                    .map_err(map_err)?;
                for row in rows {
                    superseded.push(row.map_err(map_err)?);
                }
            }
            let free_copy = commit.want_free_copy
                && conn
                    .prepare_cached(
                        "UPDATE quotas SET used = used + 1
                         WHERE name = 'free_first_time' AND used < quota
                           AND NOT EXISTS (SELECT 1 FROM credentials WHERE holder = ?1 AND free_copy)",
                    )
                    .and_then(|mut s| s.execute(params![c.holder.0.to_vec()]))
                    .map_err(map_err)?
                    == 1;
            let _ = conn
                .prepare_cached(
                    "INSERT INTO credentials (id, holder, device, profile, kid, state, status_list, status_index,
                                              issued_at, valid_until, document_expiry, free_copy, claims_mac)
                     VALUES (?1, ?2, ?3, ?4, ?5, 'active', ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        c.id,
                        c.holder.0.to_vec(),
                        c.device,
                        c.profile,
                        c.kid,
                        i64::from(c.status_list),
                        c.status_index as i64,
                        c.issued_at,
                        c.valid_until,
                        c.document_expiry,
                        free_copy,
                        c.claims_mac.to_vec()
                    ])
                })
                .map_err(map_err)?;
            insert_decision(conn, &commit.decision, Some(&c.id), Some(&c.holder))?;
            let committed = Committed { free_copy, superseded };
            let response = respond(&committed);
            if let Some(key) = &commit.idempotency {
                let _ = conn
                    .prepare_cached(
                        "INSERT INTO idempotency (client, key, request_hash, response, credential_id)
                         VALUES (?1, ?2, ?3, ?4, ?5)",
                    )
                    .and_then(|mut s| s.execute(params![client, key.key, key.request_hash.to_vec(), response, c.id]))
                    .map_err(map_err)?;
            }
            Ok((committed, response))
        });
        match (result, replay_key) {
            // A twin with the same key committed first; its credential may
            // have tripped a uniqueness index before the key did.
            (Err(conflict @ StoreError::Conflict { .. }), Some(key)) => {
                match self.idempotent_response(&replay_client, &key)? {
                    Some(stored) => Err(StoreError::IdempotencyReplay(stored)),
                    None => Err(conflict),
                }
            }
            (result, _) => result,
        }
    }

    fn credential(&self, id: &str) -> Result<CredentialMeta, StoreError> {
        let id = id.to_owned();
        self.read(move |conn| meta(conn, &id))
    }

    fn set_state(
        &self,
        id: &str,
        to: CredentialState,
        decision: DecisionRecord,
    ) -> Result<CredentialMeta, StoreError> {
        let id = id.to_owned();
        self.write(move |conn| {
            let current = meta(conn, &id)?;
            check_transition(current.state, to)?;
            let _ = conn
                .execute(
                    "UPDATE credentials SET state = ?1 WHERE id = ?2 AND state = ?3",
                    params![to.as_str(), id, current.state.as_str()],
                )
                .map_err(map_err)?;
            insert_decision(conn, &decision, Some(&id), None)?;
            meta(conn, &id)
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
        let (id, holder, device, kid) = (id.to_owned(), *holder, device.to_owned(), kid.to_owned());
        self.write(move |conn| {
            let (stored_holder, stored_device, state): (Vec<u8>, String, String) = conn
                .query_row(
                    "SELECT holder, device, state FROM credentials WHERE id = ?1",
                    params![id],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()
                .map_err(map_err)?
                .ok_or(StoreError::NotFound)?;
            let state = CredentialState::parse(&state)?;
            super::check_refresh(&stored_holder, &stored_device, state, &holder, &device)?;
            let _ = conn
                .execute(
                    "UPDATE credentials SET kid = ?1, valid_until = ?2 WHERE id = ?3 AND state = 'active'",
                    params![kid, valid_until, id],
                )
                .map_err(map_err)?;
            insert_decision(conn, &decision, Some(&id), None)?;
            meta(conn, &id)
        })
    }

    fn status_entries(&self, list: u32) -> Result<Vec<(u64, CredentialState)>, StoreError> {
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached("SELECT status_index, state FROM credentials WHERE status_list = ?1 ORDER BY status_index")
                .map_err(map_err)?;
            let rows = stmt
                .query_map(params![i64::from(list)], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))
                .map_err(map_err)?;
            let mut out = Vec::new();
            for row in rows {
                let (index, state) = row.map_err(map_err)?;
                out.push((index as u64, CredentialState::parse(&state)?));
            }
            Ok(out)
        })
    }

    fn decision_count(&self) -> Result<u64, StoreError> {
        self.read(|conn| {
            conn.query_row("SELECT COALESCE(MAX(seq) + 1, 0) FROM audit_log", [], |r| {
                r.get::<_, i64>(0)
            })
            .map(|n| n as u64)
            .map_err(map_err)
        })
    }

    fn audit_size(&self) -> Result<u64, StoreError> {
        self.decision_count()
    }

    fn sequence_audit(&self) -> Result<u64, StoreError> {
        // One writer places each entry in its own transaction.
        Ok(0)
    }

    fn record(
        &self,
        decision: DecisionRecord,
        holder: Option<Pseudonym>,
    ) -> Result<(), StoreError> {
        self.write(move |conn| insert_decision(conn, &decision, None, holder.as_ref()))
    }

    fn audit_entries(&self, start: u64, count: u64) -> Result<Vec<Vec<u8>>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT entry FROM audit_log WHERE seq >= ?1 AND seq < ?2 ORDER BY seq",
                )
                .map_err(map_err)?;
            let end = start.saturating_add(count).min(i64::MAX as u64);
            let rows = stmt
                .query_map(params![start as i64, end as i64], |r| {
                    r.get::<_, Vec<u8>>(0)
                })
                .map_err(map_err)?;
            rows.map(|r| r.map_err(map_err)).collect()
        })
    }

    fn audit_leaves(&self, start: u64, end: u64) -> Result<Vec<[u8; 32]>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT leaf FROM audit_log WHERE seq >= ?1 AND seq < ?2 ORDER BY seq",
                )
                .map_err(map_err)?;
            let rows = stmt
                .query_map(
                    params![start as i64, end.min(i64::MAX as u64) as i64],
                    |r| r.get::<_, Vec<u8>>(0),
                )
                .map_err(map_err)?;
            rows.map(|r| {
                r.map_err(map_err).and_then(|v| {
                    <[u8; 32]>::try_from(v)
                        .map_err(|_| StoreError::Internal("a leaf hash is not 32 bytes".into()))
                })
            })
            .collect()
        })
    }

    fn add_checkpoint(&self, size: u64, note: &str) -> Result<(), StoreError> {
        let note = note.to_owned();
        self.write(move |conn| {
            let _ = conn
                .execute(
                    "INSERT INTO checkpoints (size, note) VALUES (?1, ?2) ON CONFLICT (size) DO NOTHING",
                    params![size as i64, note],
                )
                .map_err(map_err)?;
            Ok(())
        })
    }

    fn checkpoints(&self) -> Result<Vec<(u64, String)>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare_cached("SELECT size, note FROM checkpoints ORDER BY size")
                .map_err(map_err)?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((r.get::<_, i64>(0)? as u64, r.get::<_, String>(1)?))
                })
                .map_err(map_err)?;
            rows.map(|r| r.map_err(map_err)).collect()
        })
    }

    fn latest_checkpoint(&self) -> Result<Option<(u64, String)>, StoreError> {
        self.read(|conn| {
            conn.query_row(
                "SELECT size, note FROM checkpoints ORDER BY size DESC LIMIT 1",
                [],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, String>(1)?)),
            )
            .optional()
            .map_err(map_err)
        })
    }

    fn probe_write(&self) -> Result<(), StoreError> {
        self.write(|conn| {
            let _ = conn
                .execute(
                    "INSERT INTO write_probe (id, at) VALUES (1, CAST(strftime('%s', 'now') AS INTEGER))
                     ON CONFLICT (id) DO UPDATE SET at = excluded.at",
                    [],
                )
                .map_err(map_err)?;
            Ok(())
        })
    }

    fn ping(&self) -> Result<(), StoreError> {
        self.read(|conn| conn.query_row("SELECT 1", [], |_| Ok(())).map_err(map_err))
    }
}

const KEY_COLUMNS: &str = "label, chain, kid, state, created_at, activate_at, certificate,
    cert_not_after, signatures, last_valid_until, revoked_reason, revoked_at, public_key";

fn key_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<StoredKey, StoreError>> {
    let state: String = r.get(3)?;
    let revoked_reason: Option<String> = r.get(10)?;
    let revoked_at: Option<i64> = r.get(11)?;
    let last: Option<i64> = r.get(9)?;
    let (created_at, activate_at, not_after): (i64, i64, i64) = (r.get(4)?, r.get(5)?, r.get(7)?);
    let signatures: i64 = r.get(8)?;
    let (label, chain, kid, certificate): (String, String, String, Option<Vec<u8>>) =
        (r.get(0)?, r.get(1)?, r.get(2)?, r.get(6)?);
    let public_key: Vec<u8> = r.get(12)?;
    Ok((|| {
        Ok(StoredKey {
            chain,
            kid,
            certificate,
            public_key,
            record: crate::keys::lifecycle::KeyRecord {
                label,
                state: keyring::state_from(&state)?,
                created_at: keyring::time_from(created_at)?,
                activate_at: keyring::time_from(activate_at)?,
                cert_not_after: keyring::time_from(not_after)?,
                signatures: signatures as u64,
                last_signature_valid_until: last.map(keyring::time_from).transpose()?,
                revoked: revoked_at.is_some(),
            },
            revocation: match (revoked_reason, revoked_at) {
                (Some(reason), Some(at)) => Some((reason, keyring::time_from(at)?)),
                _ => None,
            },
        })
    })())
}

/// Moves what `kid` signed from the source states of `to` to `to`.
fn mark_credentials(conn: &Connection, kid: &str, to: CredentialState) -> Result<u64, StoreError> {
    let mut changed = 0;
    for from in keyring::revocation_sources(to) {
        changed += conn
            .execute(
                "UPDATE credentials SET state = ?1 WHERE kid = ?2 AND state = ?3",
                params![to.as_str(), kid, from],
            )
            .map_err(map_err)? as u64;
    }
    Ok(changed)
}

/// Stores (or replaces) a shared document with its audit entry.
fn put_document(
    conn: &Connection,
    name: &str,
    body: &str,
    decision: &DecisionRecord,
) -> Result<(), StoreError> {
    let _ = conn
        .execute(
            "INSERT INTO pki_documents (name, body) VALUES (?1, ?2)
             ON CONFLICT (name) DO UPDATE SET body = excluded.body",
            params![name, body],
        )
        .map_err(map_err)?;
    insert_decision(conn, decision, None, None)
}

fn key_state(conn: &Connection, label: &str) -> Result<Option<(String, String)>, StoreError> {
    conn.prepare_cached("SELECT state, kid FROM signing_keys WHERE label = ?1")
        .and_then(|mut s| {
            s.query_row(params![label], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
        })
        .map_err(map_err)
}

impl KeyRegistry for SqliteRegistry {
    fn keys(&self) -> Result<Vec<StoredKey>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {KEY_COLUMNS} FROM signing_keys ORDER BY created_at, label"
                ))
                .map_err(map_err)?;
            let rows = stmt.query_map([], key_row).map_err(map_err)?;
            rows.map(|r| r.map_err(map_err).and_then(|k| k)).collect()
        })
    }

    fn add_key(&self, key: &StoredKey, decision: DecisionRecord) -> Result<(), StoreError> {
        let key = key.clone();
        self.write(move |conn| {
            let r = &key.record;
            if key_state(conn, &r.label)?.is_some() {
                return Err(StoreError::Conflict { rule: "keys.label" });
            }
            let busy: bool = conn
                .prepare_cached(
                    "SELECT EXISTS (SELECT 1 FROM signing_keys WHERE chain = ?1 AND state = ?2)",
                )
                .and_then(|mut s| {
                    s.query_row(params![key.chain, r.state.as_str()], |row| row.get(0))
                })
                .map_err(map_err)?;
            if busy && matches!(r.state, KeyState::Pending | KeyState::Active) {
                return Err(StoreError::Conflict {
                    rule: if r.state == KeyState::Pending {
                        "keys.one_pending"
                    } else {
                        "keys.one_active"
                    },
                });
            }
            let _ = conn
                .execute(
                    &format!(
                        "INSERT INTO signing_keys ({KEY_COLUMNS})
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, NULL, NULL, ?11)"
                    ),
                    params![
                        r.label,
                        key.chain,
                        key.kid,
                        r.state.as_str(),
                        r.created_at.unix_timestamp(),
                        r.activate_at.unix_timestamp(),
                        key.certificate,
                        r.cert_not_after.unix_timestamp(),
                        r.signatures as i64,
                        r.last_signature_valid_until.map(|t| t.unix_timestamp()),
                        key.public_key,
                    ],
                )
                .map_err(map_err)?;
            insert_decision(conn, &decision, None, None)
        })
    }

    fn move_keys(
        &self,
        moves: &[(String, KeyState, KeyState)],
        at: time::OffsetDateTime,
        decision: DecisionRecord,
    ) -> Result<(), StoreError> {
        let at = at.unix_timestamp();
        let moves = moves.to_vec();
        self.write(move |conn| {
            for (label, from, to) in &moves {
                let changed = conn
                    .execute(
                        "UPDATE signing_keys SET state = ?1,
                            activate_at = CASE WHEN ?1 = 'active' THEN MIN(activate_at, ?4) ELSE activate_at END
                         WHERE label = ?2 AND state = ?3",
                        params![to.as_str(), label, from.as_str(), at],
                    )
                    .map_err(map_err)?;
                if changed != 1 {
                    return Err(StoreError::Conflict { rule: "keys.state" });
                }
            }
            insert_decision(conn, &decision, None, None)
        })
    }

    fn revoke_key(
        &self,
        revocation: &KeyRevocation,
        decision: DecisionRecord,
    ) -> Result<u64, StoreError> {
        let revocation = revocation.clone();
        self.write(move |conn| {
            let Some((state, kid)) = key_state(conn, &revocation.label)? else {
                return Err(StoreError::NotFound);
            };
            let state = keyring::state_from(&state)?;
            if state == KeyState::Destroyed {
                return Err(StoreError::Conflict { rule: "keys.state" });
            }
            let retire = matches!(state, KeyState::Pending | KeyState::Active);
            let _ = conn
                .execute(
                    "UPDATE signing_keys SET revoked_reason = ?1, revoked_at = ?2,
                        state = CASE WHEN ?3 THEN 'retired' ELSE state END
                     WHERE label = ?4 AND revoked_at IS NULL",
                    params![
                        revocation.reason,
                        revocation.at.unix_timestamp(),
                        retire,
                        revocation.label
                    ],
                )
                .map_err(map_err)?;
            let changed = match revocation.credentials {
                Some(to) => mark_credentials(conn, &kid, to)?,
                None => 0,
            };
            insert_decision(conn, &decision, None, None)?;
            Ok(changed)
        })
    }

    fn add_key_usage(
        &self,
        label: &str,
        signatures: u64,
        last_valid_until: i64,
    ) -> Result<(), StoreError> {
        let label = label.to_owned();
        self.write(move |conn| {
            let _ = conn
                .execute(
                    "UPDATE signing_keys SET signatures = signatures + ?1,
                        last_valid_until = MAX(COALESCE(last_valid_until, ?2), ?2)
                     WHERE label = ?3",
                    params![signatures as i64, last_valid_until, label],
                )
                .map_err(map_err)?;
            Ok(())
        })
    }

    fn lease(&self, name: &str, holder: &str, ttl_ms: i64) -> Result<bool, StoreError> {
        let (name, holder) = (name.to_owned(), holder.to_owned());
        self.write(move |conn| {
            let changed = conn
                .execute(
                    "INSERT INTO leases (name, holder, until_ms)
                     VALUES (?1, ?2, CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER) + ?3)
                     ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until_ms = excluded.until_ms
                     WHERE leases.holder = excluded.holder
                        OR leases.until_ms < CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)",
                    params![name, holder, ttl_ms],
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
        let kid = kid.to_owned();
        self.write(move |conn| {
            let moved = mark_credentials(conn, &kid, to)?;
            if moved > 0 {
                insert_decision(conn, &audit(moved), None, None)?;
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
        let (id, created) = (proposal.id.clone(), proposal.created_at.unix_timestamp());
        self.write(move |conn| {
            let _ = conn
                .execute(
                    "INSERT INTO proposals (id, created_at, body, version) VALUES (?1, ?2, ?3, 1)",
                    params![id, created, body],
                )
                .map_err(map_err)?;
            insert_decision(conn, &decision, None, None)
        })
    }

    fn update_proposal(
        &self,
        proposal: &crate::keys::approvals::Proposal,
        version: i64,
        decision: DecisionRecord,
    ) -> Result<(), StoreError> {
        let body = keyring::proposal_json(proposal)?;
        let id = proposal.id.clone();
        self.write(move |conn| {
            let changed = conn
                .execute(
                    "UPDATE proposals SET body = ?1, version = version + 1 WHERE id = ?2 AND version = ?3",
                    params![body, id, version],
                )
                .map_err(map_err)?;
            if changed != 1 {
                return Err(StoreError::Conflict {
                    rule: "approvals.concurrent",
                });
            }
            insert_decision(conn, &decision, None, None)
        })
    }

    fn proposal(&self, id: &str) -> Result<StoredProposal, StoreError> {
        self.read(|conn| {
            let row: Option<(String, i64)> = conn
                .prepare_cached("SELECT body, version FROM proposals WHERE id = ?1")
                .and_then(|mut s| {
                    s.query_row(params![id], |r| Ok((r.get(0)?, r.get(1)?)))
                        .optional()
                })
                .map_err(map_err)?;
            let (body, version) = row.ok_or(StoreError::NotFound)?;
            keyring::proposal_from(&body, version)
        })
    }

    fn proposals(&self, limit: u32) -> Result<Vec<StoredProposal>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT body, version FROM proposals ORDER BY created_at DESC, id LIMIT ?1",
                )
                .map_err(map_err)?;
            let rows = stmt
                .query_map(params![limit], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
                })
                .map_err(map_err)?;
            rows.map(|r| {
                r.map_err(map_err)
                    .and_then(|(body, version)| keyring::proposal_from(&body, version))
            })
            .collect()
        })
    }

    fn set_document(
        &self,
        name: &str,
        body: &str,
        decision: DecisionRecord,
    ) -> Result<(), StoreError> {
        let (name, body) = (name.to_owned(), body.to_owned());
        self.write(move |conn| put_document(conn, &name, &body, &decision))
    }

    fn set_crl(
        &self,
        pem: &str,
        replaces: Option<&str>,
        decision: DecisionRecord,
    ) -> Result<(), StoreError> {
        let (pem, replaces) = (pem.to_owned(), replaces.map(str::to_owned));
        self.write(move |conn| {
            let stored: Option<String> = conn
                .query_row(
                    "SELECT body FROM pki_documents WHERE name = ?1",
                    params![keyring::CRL_DOCUMENT],
                    |r| r.get(0),
                )
                .optional()
                .map_err(map_err)?;
            if stored != replaces {
                return Err(StoreError::Conflict {
                    rule: keyring::CRL_CONCURRENT,
                });
            }
            put_document(conn, keyring::CRL_DOCUMENT, &pem, &decision)
        })
    }

    fn set_document_if_absent(
        &self,
        name: &str,
        body: &str,
        decision: DecisionRecord,
    ) -> Result<bool, StoreError> {
        let (name, body) = (name.to_owned(), body.to_owned());
        self.write(move |conn| {
            let stored = conn
                .execute(
                    "INSERT INTO pki_documents (name, body) VALUES (?1, ?2) ON CONFLICT (name) DO NOTHING",
                    params![name, body],
                )
                .map_err(map_err)?
                == 1;
            if stored {
                insert_decision(conn, &decision, None, None)?;
            }
            Ok(stored)
        })
    }

    fn document(&self, name: &str) -> Result<Option<String>, StoreError> {
        self.read(|conn| {
            conn.prepare_cached("SELECT body FROM pki_documents WHERE name = ?1")
                .and_then(|mut s| s.query_row(params![name], |r| r.get(0)).optional())
                .map_err(map_err)
        })
    }
}

fn lookup_idempotency(
    conn: &Connection,
    client: &str,
    key: &str,
    hash: &[u8; 32],
) -> Result<Option<Vec<u8>>, StoreError> {
    let row: Option<(Vec<u8>, Vec<u8>)> = conn
        .prepare_cached(
            "SELECT request_hash, response FROM idempotency WHERE client = ?1 AND key = ?2",
        )
        .and_then(|mut s| {
            s.query_row(params![client, key], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
        })
        .map_err(map_err)?;
    match row {
        None => Ok(None),
        Some((stored_hash, response)) if stored_hash == hash => Ok(Some(response)),
        Some(_) => Err(StoreError::IdempotencyMismatch),
    }
}
