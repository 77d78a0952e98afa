//! Registries made by earlier builds open in place: a dump of each store as
//! the build before the shared SQL layer made it (schema version 6, with
//! credentials, a key, a policy document, a checkpoint, an idempotency key
//! and audit entries) is loaded, opened by this build, read back and
//! written to. SQLite stores left at version 3 by a build that numbered
//! migrations 3 and 4 the other way round are renumbered. Whole audit
//! tiles a schema-15 build stored by (level, index) are read after the
//! move to one key (migration 16). Migration 17 spreads the quota over 64
//! shards without growing it while an earlier build takes a copy.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
#![allow(clippy::indexing_slicing, clippy::panic, clippy::expect_used)] // test code: a failed expect, panic or index is a failed test

mod common;

use dojang::store::{
    CredentialState, IdempotencyKey, KeyRegistry, PostgresRegistry, Pseudonym, Registry,
    SqliteRegistry, POLICY_DOCUMENT,
};

const SQLITE_V6: &str = include_str!("fixtures/registry-v6.sqlite.sql");
const POSTGRES_V6: &str = include_str!("fixtures/registry-v6.postgres.sql");

/// What the fixtures hold, read back through the registry.
fn reads_what_the_old_build_wrote(reg: &dyn Registry) {
    let id = |n: u8| format!("c00000000000000000000000000000{n:02}");
    assert_eq!(
        reg.credential(&id(1)).unwrap().state,
        CredentialState::Superseded
    );
    assert_eq!(
        reg.credential(&id(2)).unwrap().state,
        CredentialState::Revoked
    );
    let refreshed = reg.credential(&id(3)).unwrap();
    assert_eq!(refreshed.state, CredentialState::Active);
    assert_eq!(refreshed.valid_until, 1_809_000_000);
    assert_eq!(refreshed.holder, Pseudonym([1; 32]));
    assert_eq!(refreshed.claims_mac, Some([0; 32]));
    assert_eq!(reg.free_quota().unwrap(), (1, 10));
    let key = IdempotencyKey {
        key: "idem-1".into(),
        request_hash: [7; 32],
    };
    assert_eq!(
        reg.idempotent_response("spiffe://test/client", &key)
            .unwrap(),
        Some(b"free=true".to_vec())
    );
    let keys = reg.keys().unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].record.signatures, 6);
    assert_eq!(
        reg.document(POLICY_DOCUMENT).unwrap(),
        Some("ab".repeat(32))
    );
    assert_eq!(
        reg.latest_checkpoint().unwrap(),
        Some((3, "example note\n".to_owned()))
    );
    assert_eq!(reg.audit_size().unwrap(), 7);
    let facts = reg.facts(&Pseudonym([1; 32]), "phone-3").unwrap();
    assert_eq!(facts.holder_live_on_same_device, Some(true));
}

/// New writes continue the old log; the old status list, handed out in
/// order, is closed and new positions are drawn from a new list.
fn writes_after_the_upgrade(reg: &dyn Registry) {
    let range = reg.reserve_status_indexes(4).unwrap();
    assert_eq!(range.list, 2);
    assert!(reg.status_list_exists(1).unwrap() && reg.status_list_exists(2).unwrap());
    assert!(!reg.status_list_exists(3).unwrap());
    let commit = common::issuance(
        "c0000000000000000000000000000004",
        Pseudonym([2; 32]),
        "phone-2",
        range.list,
        range.indexes[0],
    );
    let _ = reg
        .commit_issuance("spiffe://test/client", commit, Box::new(|_| Vec::new()))
        .unwrap();
    // Another test's sequencer on the same PostgreSQL database may hold
    // the sequencer lock for a moment: this one then places nothing.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while reg.sequence_audit().unwrap() == 0
        && reg.audit_size().unwrap() < 8
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(reg.audit_size().unwrap(), 8);
    let entries = reg.audit_entries(0, 8).unwrap();
    let leaves = reg.audit_leaves(0, 8).unwrap();
    assert_eq!(entries.len(), 8);
    for (entry, leaf) in entries.iter().zip(&leaves) {
        assert_eq!(dojang::audit::merkle::leaf_hash(entry), *leaf);
    }
    let last = dojang::audit::entry::AuditEntry::decode(&entries[7]).unwrap();
    assert_eq!(
        last.seq, 7,
        "the node's own sequence goes on from the old log"
    );
    reg.probe_write().unwrap();
}

fn schema_versions(conn: &rusqlite::Connection) -> Vec<i64> {
    let mut stmt = conn
        .prepare("SELECT version FROM schema_version ORDER BY version")
        .unwrap();
    let rows = stmt.query_map([], |r| r.get(0)).unwrap();
    rows.map(Result::unwrap).collect()
}

#[test]
fn a_sqlite_registry_from_the_previous_build_opens_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.db");
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch(SQLITE_V6)
        .unwrap();
    let reg = SqliteRegistry::open(&path).unwrap();
    reads_what_the_old_build_wrote(&reg);
    writes_after_the_upgrade(&reg);
    drop(reg);
    let conn = rusqlite::Connection::open(&path).unwrap();
    assert_eq!(schema_versions(&conn), (1..=17).collect::<Vec<i64>>());
}

#[test]
fn a_postgres_registry_from_the_previous_build_opens_in_place() {
    let Some(schema) = softhsm_tests::daemon::PgSchema::create() else {
        return;
    };
    softhsm_tests::daemon::PgSchema::admin()
        .batch_execute(&POSTGRES_V6.replace("{schema}", &schema.name))
        .unwrap();
    let reg = PostgresRegistry::open(&schema.url, 2).unwrap();
    reads_what_the_old_build_wrote(&reg);
    writes_after_the_upgrade(&reg);
    let versions: Vec<i64> = softhsm_tests::daemon::PgSchema::admin()
        .query(
            &format!(
                "SELECT version FROM {}.schema_version ORDER BY version",
                schema.name
            ),
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, (1..=17).collect::<Vec<i64>>());
    // Migration 17: 64 shards, each within its quota, the quota and what
    // was used kept (read through the registry above: 1 of 10).
    let shards = softhsm_tests::daemon::PgSchema::admin()
        .query_one(
            &format!(
                "SELECT COUNT(*), COUNT(*) FILTER (WHERE used <= quota) FROM {}.quota_shards",
                schema.name
            ),
            &[],
        )
        .unwrap();
    assert_eq!((shards.get::<_, i64>(0), shards.get::<_, i64>(1)), (64, 64));
}

#[test]
fn a_sqlite_registry_numbered_the_old_way_is_renumbered() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.db");
    // A store left at version 3 by a build whose third migration was the
    // claims MAC: the v6 store with migrations 5, 6 and the old fourth
    // (dropping the head row for a write probe) taken back.
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch(&format!(
            "{SQLITE_V6}
             DROP INDEX credentials_by_key;
             DROP TABLE signing_keys; DROP TABLE leases; DROP TABLE proposals;
             DROP TABLE pki_documents; DROP TABLE write_probe;
             CREATE TABLE audit_head (id INTEGER PRIMARY KEY CHECK (id = 1), size INTEGER NOT NULL);
             INSERT INTO audit_head (id, size) VALUES (1, 0);
             DELETE FROM schema_version WHERE version > 3;"
        ))
        .unwrap();
    let reg = SqliteRegistry::open(&path).unwrap();
    reg.probe_write().unwrap();
    let commit = common::issuance("c1", Pseudonym([9; 32]), "phone-9", 1, 100);
    let _ = reg
        .commit_issuance("client", commit, Box::new(|_| Vec::new()))
        .unwrap();
    assert_eq!(reg.credential("c1").unwrap().claims_mac, Some([0; 32]));
    assert_eq!(reg.keys().unwrap(), vec![], "migration 5 ran");
    drop(reg);
    let conn = rusqlite::Connection::open(&path).unwrap();
    assert_eq!(schema_versions(&conn), (1..=17).collect::<Vec<i64>>());
    let head: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE name = 'audit_head'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        head, 0,
        "the old fourth migration (the head row's drop) ran"
    );
}

/// Puts `audit_full_tiles` back as schema 15 had it, with two whole tiles
/// (level 0 tile 3, level 1 tile 0): what an earlier build left.
const TILES_V15: &str = "DROP TABLE audit_full_tiles;
     CREATE TABLE audit_full_tiles (level {int} NOT NULL, idx {int} NOT NULL,
                                    hashes {bytes} NOT NULL, PRIMARY KEY (level, idx));
     INSERT INTO audit_full_tiles (level, idx, hashes) VALUES (0, 3, {zeros}), (1, 0, {ones});
     DELETE FROM schema_version WHERE version >= 16;";

/// A tile of 256 equal hashes.
fn tile_of(byte: u8) -> Vec<[u8; 32]> {
    vec![[byte; 32]; 256]
}

/// The two tiles of [`TILES_V15`] are read whole (a range inside each;
/// the hash-by-hash tables hold none of them), and each stays the one
/// stored.
fn whole_tiles_of_schema_15_are_read(reg: &dyn Registry) {
    let read = reg
        .audit_hash_ranges(&[(0, 3 * 256 + 5, 3 * 256 + 9), (1, 0, 2)])
        .unwrap();
    assert_eq!(read, vec![vec![[0; 32]; 4], vec![[1; 32]; 2]]);
    reg.add_audit_full_tiles(0, 3, &[tile_of(0)]).unwrap();
    assert!(reg.add_audit_full_tiles(1, 0, &[tile_of(2)]).is_err());
}

#[test]
fn whole_audit_tiles_of_schema_15_move_to_one_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.db");
    drop(SqliteRegistry::open(&path).unwrap());
    let blob = |b: u8| format!("x'{}'", format!("{b:02x}").repeat(256 * 32));
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch(
            &TILES_V15
                .replace("{int}", "INTEGER")
                .replace("{bytes}", "BLOB")
                .replace("{zeros}", &blob(0))
                .replace("{ones}", &blob(1)),
        )
        .unwrap();
    let reg = SqliteRegistry::open(&path).unwrap();
    whole_tiles_of_schema_15_are_read(&reg);
    drop(reg);
    let conn = rusqlite::Connection::open(&path).unwrap();
    assert_eq!(schema_versions(&conn), (1..=17).collect::<Vec<i64>>());
}

#[test]
fn whole_audit_tiles_of_schema_15_move_to_one_key_on_postgres() {
    let Some(schema) = softhsm_tests::daemon::PgSchema::create() else {
        return;
    };
    drop(PostgresRegistry::open(&schema.url, 1).unwrap());
    let blob = |b: u8| format!("'\\x{}'::bytea", format!("{b:02x}").repeat(256 * 32));
    softhsm_tests::daemon::PgSchema::admin()
        .batch_execute(&format!(
            "SET search_path TO {}; {}",
            schema.name,
            TILES_V15
                .replace("{int}", "BIGINT")
                .replace("{bytes}", "BYTEA")
                .replace("{zeros}", &blob(0))
                .replace("{ones}", &blob(1))
        ))
        .unwrap();
    let reg = PostgresRegistry::open(&schema.url, 2).unwrap();
    whole_tiles_of_schema_15_are_read(&reg);
}

/// Migration 17 runs while a node of the previous build is taking a free
/// copy (its update not yet committed): the total quota stays what it was
/// and the copy counts as used, over the 64 shards.
#[test]
fn spreading_the_quota_over_64_shards_beside_a_copy_in_flight_keeps_the_quota() {
    let Some(schema) = softhsm_tests::daemon::PgSchema::create() else {
        return;
    };
    let reg = PostgresRegistry::open(&schema.url, 1).unwrap();
    reg.set_free_quota(1600).unwrap();
    drop(reg);
    let mut admin = softhsm_tests::daemon::PgSchema::admin();
    let s = &schema.name;
    // Back to schema 16: the 16 shards an earlier build made, 100 each.
    admin
        .batch_execute(&format!(
            "DELETE FROM {s}.quota_shards WHERE shard >= 16;
             UPDATE {s}.quota_shards SET quota = used + 100;
             DELETE FROM {s}.schema_version WHERE version = 17;"
        ))
        .unwrap();
    let mut old_node = softhsm_tests::daemon::PgSchema::admin();
    let old_pid: i32 = old_node
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0);
    let mut taking = old_node.transaction().unwrap();
    let _ = taking
        .execute(
            &format!("UPDATE {s}.quota_shards SET used = used + 1 WHERE shard = 3"),
            &[],
        )
        .unwrap();
    let url = schema.url.clone();
    let upgrade = std::thread::spawn(move || PostgresRegistry::open(&url, 1).map(drop));
    // The copy commits only once the migration waits on it, so the race
    // is run every time.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let waiting = format!(
        "SELECT COUNT(*) FROM pg_stat_activity WHERE {old_pid} = ANY(pg_blocking_pids(pid))"
    );
    while admin.query_one(&waiting, &[]).unwrap().get::<_, i64>(0) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the migration never waited on the copy in flight"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    taking.commit().unwrap();
    upgrade.join().unwrap().unwrap();
    let row = admin
        .query_one(
            &format!(
                "SELECT COUNT(*), SUM(used)::BIGINT, SUM(quota)::BIGINT,
                        COUNT(*) FILTER (WHERE used <= quota) FROM {s}.quota_shards"
            ),
            &[],
        )
        .unwrap();
    let got: (i64, i64, i64, i64) = (row.get(0), row.get(1), row.get(2), row.get(3));
    assert_eq!(
        got,
        (64, 1, 1600, 64),
        "(shards, used, quota, within quota)"
    );
}
