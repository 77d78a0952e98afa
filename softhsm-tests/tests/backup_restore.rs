//! The restore drill: a node's registry is backed up while it issues, the
//! node is lost, and a fresh node on a clone of the token comes back from
//! the backup. Only a backup that contains every checkpoint published
//! before the loss (the mirror's copy) is restored; a stale one, a
//! damaged one and one an insider shortened are refused before anything
//! is put in place. After the restore the node recognises every holder it
//! knew (the cloned pseudonym key) and its audit log verifies.
#![allow(clippy::unwrap_used)]
#![allow(clippy::indexing_slicing, clippy::panic, clippy::expect_used)] // test code: a failed expect, panic or index is a failed test

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use softhsm_tests::daemon::{self, Daemon, Options};

/// The tree size a signed checkpoint note states (0 before one exists).
fn checkpoint_size(path: &Path) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|note| note.lines().nth(1).and_then(|l| l.parse().ok()))
        .unwrap_or(0)
}

/// Waits for the mirror's checkpoint to cover the log, and keeps a copy
/// of it at `keep` (what a verifier or witness saw published).
fn published_checkpoint(d: &Daemon, keep: &Path) -> u64 {
    let entries = d.audit_entries().len() as u64;
    let mirrored = d.scratch().join("mirror/checkpoint");
    let deadline = Instant::now() + Duration::from_secs(30);
    while checkpoint_size(&mirrored) < entries {
        assert!(
            Instant::now() < deadline,
            "the mirror's checkpoint stays behind"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let _ = std::fs::copy(&mirrored, keep).unwrap();
    checkpoint_size(keep)
}

fn restore(d: &Daemon, backup: &Path, args: &[&Path]) -> Output {
    let mut command = d.command("dojangctl");
    let _ = command
        .arg("--config")
        .arg(&d.config)
        .arg("restore")
        .arg(backup)
        .arg("--audit-key")
        .arg(d.scratch().join("audit.pem"));
    for published in args {
        let _ = command.arg("--published").arg(published);
    }
    command.output().unwrap()
}

fn refused(out: &Output, says: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "restored when it should refuse");
    assert!(stderr.contains(says), "{stderr}");
}

fn copy_dir(from: &Path, to: &Path) {
    assert!(Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap()
        .success());
}

/// What the drill keeps before the loss.
struct Kept {
    early: PathBuf,
    late: PathBuf,
    late_size: u64,
    stale: PathBuf,
    fresh: PathBuf,
}

/// Issues, backs up (stale), issues more, backs up again (fresh), keeping
/// the checkpoints the mirror published after each and the audit key.
fn issue_and_back_up(d: &Daemon) -> Kept {
    let scratch = d.scratch().to_owned();
    for n in 50..52 {
        assert_eq!(d.issue("sd-jwt", n).status, 201);
    }
    let early = scratch.join("published-early");
    let _ = published_checkpoint(d, &early);
    let stale = scratch.join("backup-stale");
    let _ = d.ctl(&["backup", "--out", stale.to_str().unwrap()]);
    for n in 52..54 {
        assert_eq!(d.issue("sd-jwt", n).status, 201);
    }
    let late = scratch.join("published-late");
    let late_size = published_checkpoint(d, &late);
    let fresh = scratch.join("backup-fresh");
    let said = d.ctl(&["backup", "--out", fresh.to_str().unwrap()]);
    assert!(said.contains("audit entries"), "{said}");
    // The auditors' pinned key (in real life from outside, long before).
    let _ = d.ctl(&[
        "audit",
        "export",
        "--out",
        scratch.join("before.json").to_str().unwrap(),
        "--key-out",
        scratch.join("audit.pem").to_str().unwrap(),
    ]);
    Kept {
        early,
        late,
        late_size,
        stale,
        fresh,
    }
}

/// The stale backup is refused as a rollback, the fresh one restored; the
/// node starts on it, knows every holder again, and its log verifies past
/// the published checkpoint.
fn refuse_stale_restore_fresh(d: &mut Daemon, kept: &Kept, invariants: impl Fn()) {
    refused(&restore(d, &kept.fresh, &[]), "--published");
    let out = restore(d, &kept.stale, &[&kept.early, &kept.late]);
    refused(&out, "REFUSED");
    refused(&out, "roll");
    let started = Instant::now();
    let out = restore(d, &kept.fresh, &[&kept.early, &kept.late]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("restored"));
    refused(&restore(d, &kept.fresh, &[&kept.late]), "exists");
    d.spawn();
    for n in 50..54 {
        let again = d.issue("sd-jwt", n).json();
        // The cloned pseudonym key finds the holder the restored registry knows.
        assert_eq!(
            again["rule"], "holder.first_time",
            "holder {n} known again: {again}"
        );
    }
    assert_eq!(d.issue("sd-jwt", 54).status, 201);
    invariants();
    println!(
        "restore drill: from `dojangctl restore` to the first issuance: {} ms",
        started.elapsed().as_millis()
    );
    let scratch = d.scratch().to_owned();
    let bundle = scratch.join("after.json");
    let _ = d.ctl(&["audit", "export", "--out", bundle.to_str().unwrap()]);
    let verified = d.ctl(&[
        "audit",
        "verify",
        bundle.to_str().unwrap(),
        "--key",
        scratch.join("audit.pem").to_str().unwrap(),
        "--origin",
        softhsm_tests::daemon::AUDIT_ORIGIN,
        "--min-size",
        &kept.late_size.to_string(),
        "--allow-unsigned-tail",
    ]);
    assert!(verified.contains("valid"), "{verified}");
}

/// The node dies and its token is lost; the token comes back from its
/// backup (a SoftHSM copy standing in for the HSM's own cloning) only
/// after a restore was tried without it.
fn lose_node_and_token(d: &mut Daemon, kept: &Kept, lose_registry: impl FnOnce()) {
    let scratch = d.scratch().to_owned();
    let tokens = scratch.join("tokens");
    let token_backup = scratch.join("token-backup");
    d.signal("KILL");
    let _ = d.wait_exit(Duration::from_secs(10));
    lose_registry();
    copy_dir(&tokens, &token_backup);
    std::fs::remove_dir_all(&tokens).unwrap();
    std::fs::create_dir(&tokens).unwrap();
    refused(&restore(d, &kept.fresh, &[&kept.late]), "key backend");
    // A token with another pseudonym key (a botched clone): refused too.
    std::fs::remove_dir(&tokens).unwrap();
    copy_dir(&token_backup, &tokens);
    d.replace_secret_key("pseudonym", "pseudonym");
    refused(
        &restore(d, &kept.fresh, &[&kept.late]),
        "not the key this backup's holders were recognised with",
    );
    std::fs::remove_dir_all(&tokens).unwrap();
    std::fs::rename(&token_backup, &tokens).unwrap();
}

#[test]
fn a_fresh_node_restores_only_a_backup_that_contains_what_was_published() {
    let mut d = Daemon::start(Options {
        public: "mirror_dir = \"{scratch}/mirror\"".into(),
        ..Options::default()
    });
    let scratch = d.scratch().to_owned();
    let kept = issue_and_back_up(&d);
    // The site is lost: node, registry and token.
    lose_node_and_token(&mut d, &kept, || {
        let lost = scratch.join("lost-site");
        std::fs::create_dir_all(&lost).unwrap();
        for file in ["registry.db", "registry.db-wal", "registry.db-shm"] {
            let _ = std::fs::rename(scratch.join(file), lost.join(file));
        }
    });
    // A damaged copy.
    let damaged = scratch.join("backup-damaged");
    copy_dir(&kept.fresh, &damaged);
    let mut bytes = std::fs::read(damaged.join("registry.db")).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(damaged.join("registry.db"), bytes).unwrap();
    refused(
        &restore(&d, &damaged, &[&kept.late]),
        "not the copy its manifest names",
    );
    // An insider drops the newest entries from a copy and fixes up the
    // manifest: the log no longer reaches the published checkpoint.
    let shortened = scratch.join("backup-shortened");
    copy_dir(&kept.fresh, &shortened);
    shorten_log(&shortened, kept.late_size - 2);
    refused(&restore(&d, &shortened, &[&kept.late]), "REFUSED");
    // An insider adds a trigger to a copy (it would run once live).
    let rigged = scratch.join("backup-rigged");
    copy_dir(&kept.fresh, &rigged);
    let conn = rusqlite::Connection::open(rigged.join("registry.db")).unwrap();
    conn.execute_batch(
        "CREATE TRIGGER forget AFTER INSERT ON credentials BEGIN \
         DELETE FROM credentials WHERE id = NEW.id; END;",
    )
    .unwrap();
    drop(conn);
    fix_manifest(&rigged);
    refused(
        &restore(&d, &rigged, &[&kept.late]),
        "schema is not the one the migrations make",
    );
    let registry = scratch.join("registry.db");
    refuse_stale_restore_fresh(&mut d, &kept, || {
        let db = rusqlite::Connection::open(&registry).unwrap();
        let count = |sql: &str| -> i64 { db.query_row(sql, [], |row| row.get(0)).unwrap() };
        assert_eq!(
            count("SELECT used FROM quotas WHERE name = 'free_first_time'"),
            count("SELECT COUNT(*) FROM credentials WHERE free_copy"),
            "the quota counts the free copies exactly"
        );
        for sql in [LIVE_TWICE_HOLDER, LIVE_TWICE_DEVICE] {
            assert_eq!(count(sql), 0, "{sql}");
        }
    });
    // A restore takes the registry's lock: never onto a registry a daemon
    // serves (the restored node serves now), and no daemon starts on one
    // a restore is placing (a unit restarting on its own would make an
    // empty registry there).
    let out = restore(&d, &kept.fresh, &[&kept.late]);
    refused(&out, "the SQLite registry is in use");
    refused(
        &out,
        &format!("held by process {} (dojangd serve)", d.pid()),
    );
}

const LIVE_TWICE_HOLDER: &str = "SELECT COUNT(*) FROM (SELECT holder FROM credentials \
     WHERE state IN ('active', 'suspended') AND batch_of IS NULL GROUP BY holder HAVING COUNT(*) > 1) AS t";
const LIVE_TWICE_DEVICE: &str = "SELECT COUNT(*) FROM (SELECT device FROM credentials \
     WHERE state IN ('active', 'suspended') GROUP BY device HAVING COUNT(*) > 1) AS t";

#[test]
fn a_node_refuses_to_start_on_another_pseudonym_key_and_a_clone_has_the_same_check_value() {
    let mut d = Daemon::start(Options::default());
    let value = |d: &Daemon| {
        let said = d.ctl(&["--json", "keys", "check-value"]);
        serde_json::from_str::<serde_json::Value>(&said).unwrap()["check_value"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let original = value(&d);
    assert_eq!(original.len(), 16, "{original}");
    d.signal("TERM");
    let _ = d.wait_exit(Duration::from_secs(30));
    // A copy of the token (a clone) gives the same value.
    let tokens = d.scratch().join("tokens");
    let kept = d.scratch().join("tokens-kept");
    copy_dir(&tokens, &kept);
    assert_eq!(value(&d), original);
    // Another key under the same label: another value, and no start.
    d.replace_secret_key("pseudonym", "pseudonym");
    assert_ne!(value(&d), original);
    let said = d.second_start_refused();
    assert!(
        said.contains("is not the key this registry's holders were recognised with"),
        "{said}"
    );
    // A database writer removes the registry's record: only the pin in the
    // configuration (from the key's ceremony) still stops the node.
    let registry = rusqlite::Connection::open(d.scratch().join("registry.db")).unwrap();
    let _ = registry
        .execute(
            "DELETE FROM pki_documents WHERE name = 'pseudonym.check'",
            [],
        )
        .unwrap();
    drop(registry);
    let config = std::fs::read_to_string(&d.config).unwrap();
    std::fs::write(
        &d.config,
        format!("{config}\n[server.keys]\npseudonym_check = \"{original}\"\n"),
    )
    .unwrap();
    let said = d.second_start_refused();
    assert!(said.contains("server.keys.pseudonym_check pins"), "{said}");
    // The right key back: the node starts.
    std::fs::remove_dir_all(&tokens).unwrap();
    std::fs::rename(&kept, &tokens).unwrap();
    d.spawn();
    assert_eq!(d.issue("sd-jwt", 60).status, 201);
}

/// A database of its own on the shared PostgreSQL, dropped at the end
/// (with the scratch database a restore uses).
struct Database(String);

impl Drop for Database {
    fn drop(&mut self) {
        let mut admin = daemon::PgSchema::admin();
        for name in [
            self.0.clone(),
            format!("{}_restoring", self.0),
            format!("{}_reference", self.0),
        ] {
            let _ = admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
        }
    }
}

#[test]
fn a_postgres_registry_is_restored_from_pg_dump_only_if_it_contains_what_was_published() {
    let mut random = [0u8; 6];
    openssl::rand::rand_bytes(&mut random).unwrap();
    let name = format!(
        "dj_restore_{}",
        random
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    daemon::PgSchema::admin()
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .unwrap();
    let db = Database(name);
    let url = format!(
        "host=127.0.0.1 port=5432 user=postgres dbname={} connect_timeout=3",
        db.0
    );
    let mut d = Daemon::start(Options {
        store: daemon::Store::Postgres(url.clone()),
        public: "mirror_dir = \"{scratch}/mirror\"".into(),
        ..Options::default()
    });
    let kept = issue_and_back_up(&d);
    // A backup taken while an insider's function sat in the database.
    let mut live = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    live.batch_execute("CREATE FUNCTION forget() RETURNS int LANGUAGE sql AS 'SELECT 1'")
        .unwrap();
    let rigged = d.scratch().join("backup-rigged");
    let _ = d.ctl(&["backup", "--out", rigged.to_str().unwrap()]);
    live.batch_execute("DROP FUNCTION forget()").unwrap();
    // …and one taken while the index keeping one live ID per holder was gone.
    live.batch_execute("DROP INDEX one_live_per_holder")
        .unwrap();
    let unguarded = d.scratch().join("backup-unguarded");
    let _ = d.ctl(&["backup", "--out", unguarded.to_str().unwrap()]);
    live.batch_execute(
        "CREATE UNIQUE INDEX one_live_per_holder ON credentials (holder) \
         WHERE state IN ('active', 'suspended') AND batch_of IS NULL",
    )
    .unwrap();
    drop(live);
    // The site is lost: node, database and token.
    lose_node_and_token(&mut d, &kept, || {
        daemon::PgSchema::admin()
            .batch_execute(&format!("DROP DATABASE {} WITH (FORCE)", db.0))
            .unwrap();
    });
    refused(
        &restore(&d, &rigged, &[&kept.late]),
        "triggers, rules, views or functions",
    );
    refused(
        &restore(&d, &unguarded, &[&kept.late]),
        "schema is not the one the migrations make",
    );
    refuse_stale_restore_fresh(&mut d, &kept, || {
        let mut pg = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        let mut count = |sql: &str| -> i64 { pg.query_one(sql, &[]).unwrap().get(0) };
        assert_eq!(
            count("SELECT COALESCE(SUM(used), 0)::BIGINT FROM quota_shards"),
            count("SELECT COUNT(*) FROM credentials WHERE free_copy"),
            "the quota counts the free copies exactly"
        );
        for sql in [LIVE_TWICE_HOLDER, LIVE_TWICE_DEVICE] {
            assert_eq!(count(sql), 0, "{sql}");
        }
    });
    let mut admin = daemon::PgSchema::admin();
    let left = admin
        .query_opt(
            "SELECT 1 FROM pg_database WHERE datname = $1",
            &[&format!("{}_restoring", db.0)],
        )
        .unwrap();
    assert!(left.is_none(), "a scratch database was left behind");
    drop(d);
}

/// Deletes the audit log's entries from `keep` on in a backup's copy and
/// rewrites its manifest's digest (what an insider with the file could do).
fn shorten_log(backup: &Path, keep: u64) {
    let db: PathBuf = backup.join("registry.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    let _ = conn
        .execute("DELETE FROM audit_log WHERE seq >= ?1", [keep as i64])
        .unwrap();
    let _ = conn
        .execute("DELETE FROM checkpoints WHERE size > ?1", [keep as i64])
        .unwrap();
    drop(conn);
    fix_manifest(backup);
}

/// Rewrites a backup's manifest digest to match its (altered) copy.
fn fix_manifest(backup: &Path) {
    let db: PathBuf = backup.join("registry.db");
    let digest = openssl::sha::sha256(&std::fs::read(&db).unwrap());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    let manifest = backup.join("backup.json");
    let mut m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    m["sha256"] = hex.into();
    std::fs::write(&manifest, serde_json::to_vec(&m).unwrap()).unwrap();
}
