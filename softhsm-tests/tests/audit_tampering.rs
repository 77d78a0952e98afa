//! A database insider against audit entries no checkpoint covers yet, on
//! SQLite and PostgreSQL: an entry deleted (and the later ones moved up, so
//! the positions show no hole), an entry edited (its leaf hash recomputed,
//! as an insider would), two entries swapped, an entry's seal stripped,
//! and the last entry deleted while nothing follows it. Each is caught by the daemon before it signs
//! — no checkpoint over the tampered log, `dojang_audit_log_rewritten` = 1,
//! a log line naming the entry — and all but the last by `dojangctl audit
//! verify` on an export (the edit with `--seals`, which asks the HSM).
#![allow(clippy::unwrap_used)]
#![allow(clippy::indexing_slicing, clippy::panic, clippy::expect_used)] // test code: a failed expect, panic or index is a failed test

use std::time::{Duration, Instant};

mod insider;

use dojang::audit::entry::AuditEntry;
use insider::{metric, Insider};
use softhsm_tests::daemon::{Daemon, Options, PgSchema, Store, AUDIT_ORIGIN};

/// Uncheckpointed entries that make a checkpoint due.
const DUE_AT: u64 = 24;

#[derive(Debug, Clone, Copy)]
enum Attack {
    /// Delete one entry; move the later ones up a place.
    Delete,
    /// Rewrite one entry's outcome; recompute its leaf hash.
    Edit,
    /// Swap two entries' places.
    Swap,
    /// Strip one entry's seal (leaf recomputed): an unsealed entry is what
    /// an insider could write freely.
    Unseal,
    /// Delete the last entry (nothing after it shows a gap).
    DeleteLast,
}

impl Insider {
    fn count(&mut self, sql: &str) -> i64 {
        match self {
            Insider::Sqlite(db) => db
                .query_row(&sql.replace("{s}.", ""), [], |r| r.get(0))
                .unwrap(),
            Insider::Postgres(c, schema) => c
                .query_one(&sql.replace("{s}", schema), &[])
                .unwrap()
                .get(0),
        }
    }

    fn signed_size(&mut self) -> i64 {
        self.count("SELECT COALESCE(MAX(size), 0) FROM {s}.checkpoints")
    }

    fn log_size(&mut self) -> i64 {
        self.count("SELECT COUNT(*) FROM {s}.audit_log")
    }

    fn queued(&self) -> bool {
        matches!(self, Insider::Postgres(..))
    }

    /// Rewrites the entry at `seq` and its leaf hash.
    fn put(&mut self, seq: i64, entry: &[u8], leaf: &[u8]) {
        let sql = format!(
            "UPDATE {} SET entry = $1, leaf = $2 WHERE seq = $3",
            self.table("audit_log")
        );
        match self {
            Insider::Sqlite(db) => {
                let _ = db
                    .execute(&sql.replace('$', "?"), rusqlite::params![entry, leaf, seq])
                    .unwrap();
            }
            Insider::Postgres(c, _) => {
                let _ = c.execute(&sql, &[&entry, &leaf, &seq]).unwrap();
            }
        }
    }

    /// Deletes the entry at `seq` and moves the later ones up a place (in
    /// two steps: positions are a primary key).
    fn delete_entry(&mut self, seq: i64) {
        let moved_up = format!(
            "DELETE FROM {{s}}.audit_log WHERE seq = {seq};
             UPDATE {{s}}.audit_log SET seq = -seq WHERE seq > {seq};
             UPDATE {{s}}.audit_log SET seq = -seq - 1 WHERE seq < 0;"
        );
        let head = if self.queued() {
            "UPDATE {s}.audit_head SET size = size - 1;"
        } else {
            ""
        };
        self.run(&format!("{moved_up}{head}"));
    }
}

/// The daemon, with checkpoints due only once `DUE_AT` entries wait (or at
/// shutdown): the test decides when the next one is attempted.
fn daemon(store: Store) -> Daemon {
    let mut d = Daemon::start(Options {
        store,
        ..Options::default()
    });
    d.signal("TERM");
    let _ = d.wait_exit(Duration::from_secs(20));
    let config = std::fs::read_to_string(&d.config).unwrap().replace(
        "checkpoint_interval_ms = 300\n",
        &format!("checkpoint_interval_ms = 3600000\ncheckpoint_entries = {DUE_AT}\n"),
    );
    std::fs::write(&d.config, config).unwrap();
    d.spawn();
    d.wait_ready(Duration::from_secs(30));
    d
}

fn issue(d: &Daemon, from: u32, n: u32) {
    for i in from..from + n {
        let reply = d.issue("mdoc", i);
        assert_eq!(reply.status, 201, "{}", reply.text());
    }
}

/// Waits until every recorded decision has its place in the log.
fn placed(sql: &mut Insider) {
    if !sql.queued() {
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while sql.count("SELECT COUNT(*) FROM {s}.audit_queue") > 0 {
        assert!(Instant::now() < deadline, "decisions stayed queued");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn tamper(sql: &mut Insider, attack: Attack, signed: i64) {
    let rows = sql.rows(signed);
    assert!(rows.len() >= 3, "{rows:?}");
    let (a, b) = (&rows[rows.len() - 3], &rows[rows.len() - 2]);
    assert_eq!(a.node, b.node);
    match attack {
        Attack::Delete => sql.delete_entry(a.seq),
        Attack::Edit => {
            let mut entry = AuditEntry::decode(&a.entry).unwrap();
            assert!(entry.seal.is_some(), "entries are sealed");
            entry.outcome = if entry.outcome == "deny" {
                "allow"
            } else {
                "deny"
            }
            .into();
            let bytes = entry.encode();
            sql.put(a.seq, &bytes, &dojang::audit::merkle::leaf_hash(&bytes));
        }
        Attack::Unseal => {
            let mut entry = AuditEntry::decode(&a.entry).unwrap();
            entry.seal = None;
            let bytes = entry.encode();
            sql.put(a.seq, &bytes, &dojang::audit::merkle::leaf_hash(&bytes));
        }
        Attack::Swap => sql.run(&format!(
            "UPDATE {{s}}.audit_log SET seq = -1 WHERE seq = {a};
             UPDATE {{s}}.audit_log SET seq = {a} WHERE seq = {b};
             UPDATE {{s}}.audit_log SET seq = {b} WHERE seq = -1;",
            a = a.seq,
            b = b.seq
        )),
        Attack::DeleteLast => sql.delete_entry(rows[rows.len() - 1].seq),
    }
}

/// What the daemon may say the attack left (any one of them).
fn findings(attack: Attack) -> &'static [&'static str] {
    const MOVED: &str = "was expected (an entry deleted or moved before it)";
    match attack {
        Attack::Delete | Attack::Swap => &[MOVED],
        Attack::Edit => &["its seal does not verify"],
        Attack::Unseal => &["not sealed, after sealed entries"],
        // The daemon's own `stop` entry follows at shutdown: where it is
        // placed at once (SQLite) the gap before it shows; where a gap
        // holds it back in the queue (PostgreSQL), only the memory of
        // what was committed does (the number gone, or filled by a void).
        Attack::DeleteLast => &[
            "committed, and gone from the log",
            "committed, and replaced by a void entry",
            MOVED,
        ],
    }
}

fn wait_log(d: &Daemon, needles: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !needles.iter().any(|n| d.log().contains(n)) {
        assert!(
            Instant::now() < deadline,
            "none of {needles:?} in\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `dojangctl audit verify` on an export: fails naming `expected`.
fn offline_verify_fails(d: &Daemon, seals: bool, expected: &str) {
    let (bundle, key) = d.export_audit("tampered");
    let bundle = bundle.display().to_string();
    let key = key.display().to_string();
    let mut args = vec![
        "audit",
        "verify",
        &bundle,
        "--key",
        &key,
        "--origin",
        AUDIT_ORIGIN,
        "--allow-unsigned-tail",
    ];
    if seals {
        args.push("--seals");
    }
    let out = d.try_ctl(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(stderr.contains(expected), "{stderr}");
}

fn tampered_entries_are_never_signed_over(
    store: impl Fn() -> Store,
    insider: impl Fn(&Daemon) -> Insider,
) {
    for (round, attack) in [
        Attack::Delete,
        Attack::Edit,
        Attack::Swap,
        Attack::Unseal,
        Attack::DeleteLast,
    ]
    .into_iter()
    .enumerate()
    {
        let mut d = daemon(store());
        let mut sql = insider(&d);
        let base = 100 * round as u32;
        issue(&d, base, 3);
        placed(&mut sql);
        let signed = sql.signed_size();
        let size = sql.log_size();
        assert!(size - signed < DUE_AT as i64 - 10, "{size} {signed}");
        tamper(&mut sql, attack, signed);
        if let Attack::DeleteLast = attack {
            // Nothing follows it: only the daemon's memory of what it
            // committed knows. Its shutdown checkpoint is refused.
            d.signal("TERM");
            let _ = d.wait_exit(Duration::from_secs(20));
        } else {
            // Enough new entries to make a checkpoint due.
            issue(&d, base + 3, DUE_AT as u32);
            let deadline = Instant::now() + Duration::from_secs(30);
            while metric(&d, "dojang_audit_log_rewritten ") != 1.0 {
                assert!(
                    Instant::now() < deadline,
                    "{attack:?} not caught\n{}",
                    d.log()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        wait_log(&d, &["tampered with before a checkpoint covered it"]);
        wait_log(&d, findings(attack));
        assert_eq!(
            sql.signed_size(),
            signed,
            "{attack:?}: a checkpoint signed over it"
        );
        match attack {
            Attack::Delete | Attack::Swap => {
                offline_verify_fails(&d, false, "an entry was deleted, inserted or moved");
            }
            Attack::Edit => offline_verify_fails(&d, true, "the seal does not verify"),
            Attack::Unseal => offline_verify_fails(&d, false, "not sealed, after sealed entries"),
            // An export has no memory of what was committed: the end of an
            // unsigned log is only the daemon's to vouch for.
            Attack::DeleteLast => {}
        }
    }
}

#[test]
fn tampered_entries_are_never_signed_over_sqlite() {
    tampered_entries_are_never_signed_over(|| Store::Sqlite, Insider::sqlite);
}

#[test]
fn tampered_entries_are_never_signed_over_postgres() {
    let mut schemas = Vec::new();
    for _ in 0..5 {
        let Some(schema) = PgSchema::create() else {
            return;
        };
        schemas.push(schema);
    }
    let urls: Vec<String> = schemas.iter().map(|s| s.url.clone()).collect();
    let names: Vec<String> = schemas.iter().map(|s| s.name.clone()).collect();
    let next = std::cell::Cell::new(0);
    tampered_entries_are_never_signed_over(
        || {
            let i = next.get();
            next.set(i + 1);
            Store::Postgres(urls[i].clone())
        },
        |_| Insider::postgres(&names[next.get() - 1]),
    );
    drop(schemas);
}

/// An issuance whose one statement finds every free-copy shard locked (an
/// insider's transaction holds them) waits for one and commits under its
/// number; then an insider leaves no shard room, so the next issuance's
/// statement writes nothing and a transaction issues a paid copy, its
/// statement's number filled by a sealed void that says why. Nothing the
/// daemon counts as committed is missing, and the next checkpoint is
/// signed over both.
#[test]
fn issuances_behind_locked_or_emptied_quota_shards_are_signed_over_postgres() {
    let Some(schema) = PgSchema::create() else {
        return;
    };
    let d = daemon(Store::Postgres(schema.url.clone()));
    let mut sql = Insider::postgres(&schema.name);
    issue(&d, 0, 3);
    placed(&mut sql);
    let signed = sql.signed_size();
    let mut holder = PgSchema::admin();
    let shards = schema.hold_quota_shards(&mut holder);
    let reply = std::thread::scope(|s| {
        let waiting = s.spawn(|| d.issue("mdoc", 10));
        std::thread::sleep(Duration::from_millis(500));
        assert!(!waiting.is_finished(), "the issuance waits for a shard");
        shards.commit().unwrap();
        waiting.join().unwrap()
    });
    assert_eq!(reply.status, 201, "{}", reply.text());
    sql.run(
        "CREATE TABLE {s}.room AS SELECT shard, quota - used AS room FROM {s}.quota_shards;
         UPDATE {s}.quota_shards SET quota = used;",
    );
    issue(&d, 11, 1);
    sql.run(
        "UPDATE {s}.quota_shards q SET quota = q.used + r.room FROM {s}.room r
          WHERE r.shard = q.shard;",
    );
    issue(&d, 20, DUE_AT as u32);
    // Due once DUE_AT entries wait: it covers the waiting issuance's entry.
    let deadline = Instant::now() + Duration::from_secs(30);
    while sql.signed_size() < signed + DUE_AT as i64 {
        assert!(Instant::now() < deadline, "no checkpoint\n{}", d.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(metric(&d, "dojang_audit_log_rewritten "), 0.0);
    let voids: Vec<Option<String>> = sql
        .rows(0)
        .iter()
        .map(|r| AuditEntry::decode(&r.entry).unwrap())
        .filter(|e| e.action == "audit.void")
        .map(|e| e.rule)
        .collect();
    assert_eq!(voids, [Some("statement.wrote_nothing".to_owned())]);
    drop(schema);
}
