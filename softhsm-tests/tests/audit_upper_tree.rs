//! The upper tree a registry keeps in memory (every perfect subtree from
//! tile level 1 up): proofs served from it are the proofs the store gives
//! and verify against the root; it is filled and checked by the node's
//! checkpoints, so an insider's rewritten level-1 hash deep inside the
//! log — one a node's O(log n) start never reads — stops the next
//! checkpoint instead of going into proofs, and a rewritten leaf tile is
//! neither proved from nor served. On SQLite with synthetic
//! entries (70,000: past one level-2 subtree) and an Ed25519 audit key in
//! SoftHSM.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
#![allow(clippy::indexing_slicing)] // test code: a failed index is a failed test

use dojang::audit::checkpoint::NoteKey;
use dojang::audit::log::{AuditError, AuditLog, Signers};
use dojang::audit::merkle::{self, leaf_hash, Hash};
use dojang::audit::tile_path::TileId;
use dojang::audit::tiles::{LogHashes, TreeError, TreeReader};
use dojang::store::{Registry, SqliteRegistry};
use pkcs11_shim::pkcs11::Pkcs11Backend;
use pkcs11_shim::{Algorithm, KeyBackend, KeyPurpose, Pkcs11Config, SecretSource};
use softhsm_tests::synthetic::audit_entry;
use softhsm_tests::SoftHsmToken;

const ORIGIN: &str = "dojang.example.kr/audit";
/// Past one level-2 subtree (65,536 entries), whose level-1 hashes a
/// start's frontier does not read.
const ENTRIES: u64 = 70_000;

/// Entries `from..to` straight into the log's table; their leaf hashes.
fn load(path: &std::path::Path, from: u64, to: u64) -> Vec<Hash> {
    let mut db = rusqlite::Connection::open(path).unwrap();
    let tx = db.transaction().unwrap();
    let mut leaves = Vec::new();
    {
        let mut insert = tx
            .prepare(
                "INSERT INTO audit_log (seq, node, node_seq, entry, leaf) VALUES (?1, 'test', ?1, ?2, ?3)",
            )
            .unwrap();
        for seq in from..to {
            let e = audit_entry("test", seq);
            let leaf = leaf_hash(&e);
            let _ = insert
                .execute(rusqlite::params![seq as i64, &e, &leaf[..]])
                .unwrap();
            leaves.push(leaf);
        }
    }
    tx.commit().unwrap();
    leaves
}

/// What an insider does with direct SQL: a whole tile's row replaced.
fn set_whole_tile(path: &std::path::Path, level: u8, index: u64, hashes: &[u8]) {
    let db = rusqlite::Connection::open(path).unwrap();
    // Keyed level * 2^40 + index.
    let sql = "UPDATE audit_full_tiles SET hashes = ?1 WHERE tile = ?2 * 1099511627776 + ?3";
    let changed = db
        .execute(sql, rusqlite::params![hashes, level, index as i64])
        .unwrap();
    assert_eq!(changed, 1);
}

/// Base hashes the registry's upper tree holds.
fn held(registry: &SqliteRegistry) -> u64 {
    registry.audit_upper_tree().read().unwrap().len()
}

struct Setup {
    _token: SoftHsmToken,
    backend: Pkcs11Backend,
    key: NoteKey,
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
}

impl Setup {
    fn new() -> Self {
        let token = SoftHsmToken::new("dojang-upper");
        let backend = Pkcs11Backend::open(Pkcs11Config::new(
            softhsm_tests::softhsm_module(),
            token.label(),
            SecretSource::File(token.pin_file()),
        ))
        .unwrap();
        let audit = backend
            .generate("audit", KeyPurpose::Audit, Algorithm::EdDsa)
            .unwrap();
        let key = NoteKey::new(ORIGIN, audit.public_key.unwrap()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.db");
        Setup {
            _token: token,
            backend,
            key,
            _dir: dir,
            path,
        }
    }

    /// A node's checkpoint on `registry` (a fresh log: as at a start).
    fn checkpoint(&self, registry: &SqliteRegistry) -> Result<Option<u64>, AuditError> {
        let signers = Signers {
            current: ("audit", &self.key),
            outgoing: None,
            known: std::slice::from_ref(&self.key),
        };
        AuditLog::new(ORIGIN)
            .unwrap()
            .checkpoint(&self.backend, registry, &signers, None)
    }
}

#[test]
fn proofs_from_the_upper_tree_are_the_store_s_and_a_deep_rewrite_stops_the_log() {
    let setup = Setup::new();
    let node = SqliteRegistry::open(&setup.path).unwrap();
    let leaves = load(&setup.path, 0, ENTRIES);
    assert_eq!(setup.checkpoint(&node).unwrap(), Some(ENTRIES));
    let tree = held(&node);
    assert_eq!(tree, ENTRIES / 256, "every level-1 hash held");

    // Another registry on the same file has not checkpointed: it reads
    // every hash from the store. Both give the same proofs, and they
    // verify against the root of every leaf.
    let reader = SqliteRegistry::open(&setup.path).unwrap();
    assert_eq!(held(&reader), 0);
    let root = merkle::root(&leaves);
    for index in [0, 255, 256, 40_000, 65_535, 65_536, ENTRIES - 1] {
        let (leaf, proof) = AuditLog::inclusion(&node, index, ENTRIES).unwrap();
        assert_eq!(
            (leaf, proof.clone()),
            AuditLog::inclusion(&reader, index, ENTRIES).unwrap()
        );
        assert!(merkle::verify_inclusion(
            index, ENTRIES, &leaf, &proof, &root
        ));
    }
    for from in [1, 256, 1000, 65_536, 66_000] {
        assert_eq!(
            AuditLog::consistency(&node, from, ENTRIES).unwrap(),
            AuditLog::consistency(&reader, from, ENTRIES).unwrap()
        );
    }

    // A leaf tile rewritten in its whole row (one hash of tile 5): the
    // node proves nothing from it and does not serve it, checking it
    // against the upper tree; a registry without the tree would.
    let tile5 = TileId {
        level: 0,
        index: 5,
        width: 256,
    };
    let served = |registry: &SqliteRegistry| TreeReader::new(&LogHashes(registry)).tile(tile5);
    let kept = served(&node).unwrap();
    let mut forged = kept.clone();
    forged[3 * 32] ^= 1;
    set_whole_tile(&setup.path, 0, 5, &forged);
    match AuditLog::inclusion(&node, 5 * 256 + 10, ENTRIES) {
        Err(AuditError::Store(e)) => assert!(
            e.to_string()
                .contains("the stored tile 0/5 does not hash to the signed tree"),
            "{e}"
        ),
        other => panic!("a proof from a rewritten tile: {other:?}"),
    }
    assert!(matches!(
        served(&node),
        Err(TreeError::Rewritten { level: 0, index: 5 })
    ));
    assert!(AuditLog::inclusion(&node, 6 * 256, ENTRIES).is_ok());
    assert_eq!(served(&reader).unwrap(), forged);
    set_whole_tile(&setup.path, 0, 5, &kept);
    assert!(AuditLog::inclusion(&node, 5 * 256 + 10, ENTRIES).is_ok());
    drop((node, reader));

    // An insider rewrites level-1 hash 3 (entries 768..1024), stored in
    // the whole level-1 tile, under the level-2 hash a start reads.
    let db = rusqlite::Connection::open(&setup.path).unwrap();
    let mut tile: Vec<u8> = db
        .query_row(
            "SELECT hashes FROM audit_full_tiles WHERE tile = 1099511627776", // level 1, tile 0
            [],
            |r| r.get(0),
        )
        .unwrap();
    drop(db);
    tile[3 * 32] ^= 1;
    set_whole_tile(&setup.path, 1, 0, &tile);
    let _ = load(&setup.path, ENTRIES, ENTRIES + 1);
    let restarted = SqliteRegistry::open(&setup.path).unwrap();
    match setup.checkpoint(&restarted) {
        Err(AuditError::Rewritten(_)) => {}
        other => panic!("a rewritten level-1 hash was signed over: {other:?}"),
    }
    assert_eq!(held(&restarted), 0, "proofs no longer come from the tree");
    assert_eq!(
        AuditLog::latest(&restarted).unwrap().unwrap().0,
        ENTRIES,
        "nothing signed over it"
    );
}
