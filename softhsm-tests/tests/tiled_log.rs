//! The audit log as a tiled log (c2sp.org/tlog-tiles), read by a client
//! we did not write: cloudflare's `tlog_tiles` (a port of Go's sumdb tlog)
//! and `signed_note`. Hash tiles and the checkpoint come from the public
//! listener, entry bundles from the auditor's mTLS API; the client checks
//! the checkpoint's signature, authenticates every tile it reads against
//! the signed root, proves every entry's inclusion and the consistency of
//! two checkpoints. Then an insider rewrites the database: a level-1 tile
//! hash, a checkpointed leaf at the log's right edge, and a leaf deep inside
//! a full tile, then the whole tile. The daemon refuses to sign over the
//! first two at its next start; the third cannot be seen in O(log n)
//! reads, and the independent client refuses the tiles that carry it; the
//! whole tile rewritten, the daemon serves neither it nor a proof from it.
#![allow(clippy::unwrap_used)]
#![allow(clippy::indexing_slicing, clippy::panic, clippy::expect_used)] // test code: a failed expect, panic or index is a failed test

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use dojang::audit::entry::AuditEntry;
use signed_note::{Note, StandardVerifier, VerifierList};
use softhsm_tests::daemon::{self, Daemon, Options, PgSchema, Store};
use softhsm_tests::https::Client;
use tlog_tiles::{Hash, Tile, TileHashReader, TileReader};

/// Refusals (a holder under 17): one audit entry each, no HSM signature.
fn refuse(d: &Daemon, count: u32) {
    let (jwk, _) = daemon::phone();
    let mut counter = d.client("counter");
    for _ in 0..count {
        let reply = counter.post_json(
            "/v1/credentials",
            &daemon::request("mdoc", "150101-3123456", &jwk),
            &[],
        );
        assert_eq!(reply.status, 422);
    }
}

/// The latest checkpoint once it covers `at_least` entries.
fn checkpoint(public: &mut Client, at_least: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let reply = public.get("/checkpoint");
        if reply.status == 200 {
            let note = String::from_utf8(reply.body).unwrap();
            let size: u64 = note.lines().nth(1).unwrap().parse().unwrap();
            if size >= at_least {
                return note;
            }
        }
        assert!(Instant::now() < deadline, "no checkpoint of {at_least}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The audit key as `signed_note` names a verifier: `name+id+key`.
fn verifier(d: &Daemon, note: &str) -> StandardVerifier {
    let keys = d.client("auditor").get("/v1/audit/checkpoint").json()["keys"].clone();
    let pem = keys[0]["public_key_pem"].as_str().unwrap();
    let raw = openssl::pkey::PKey::public_key_from_pem(pem.as_bytes())
        .unwrap()
        .raw_public_key()
        .expect("the audit key of a public log is Ed25519");
    let name = note
        .lines()
        .find_map(|l| l.strip_prefix("\u{2014} "))
        .and_then(|l| l.split_once(' '))
        .unwrap()
        .0;
    let mut key = vec![0x01];
    key.extend_from_slice(&raw);
    let id = signed_note::key_id(name, &key);
    StandardVerifier::new(&format!("{name}+{id:08x}+{}", B64.encode(&key))).unwrap()
}

/// Opens a note with the independent library: its tree size and root.
fn open(note: &str, verifier: &StandardVerifier) -> Result<(u64, Hash), String> {
    let note = Note::from_bytes(note.as_bytes()).map_err(|e| e.to_string())?;
    let _ = note
        .verify(&VerifierList::new(vec![Box::new(verifier.clone())]))
        .map_err(|e| e.to_string())?;
    let checkpoint = tlog_tiles::Checkpoint::from_bytes(note.text()).map_err(|e| e.to_string())?;
    Ok((checkpoint.size(), *checkpoint.hash()))
}

/// Tiles over plain HTTP from the public listener. `tlog_tiles` names
/// tiles as Go's sumdb does (`tile/8/L/N`); tlog-tiles drops the height.
struct Http {
    client: RefCell<Client>,
    fetched: RefCell<HashMap<String, Vec<u8>>>,
}

impl TileReader for Http {
    fn height(&self) -> u8 {
        8
    }

    fn read_tiles(&self, tiles: &[Tile]) -> Result<Vec<Vec<u8>>, tlog_tiles::Error> {
        let mut out = Vec::new();
        for tile in tiles {
            let path = tile.path().replacen("tile/8/", "/tile/", 1);
            let cached = self.fetched.borrow().get(&path).cloned();
            let data = match cached {
                Some(data) => data,
                None => {
                    let reply = self.client.borrow_mut().get(&path);
                    assert_eq!(reply.status, 200, "{path}");
                    assert_eq!(
                        reply.header("cache-control"),
                        Some("public, max-age=31536000, immutable"),
                        "a tile's path names fixed content"
                    );
                    let _ = self.fetched.borrow_mut().insert(path, reply.body.clone());
                    reply.body
                }
            };
            if data.len() != tile.width() as usize * 32 {
                return Err(tlog_tiles::Error::BadMath);
            }
            out.push(data);
        }
        Ok(out)
    }

    fn save_tiles(&self, _tiles: &[Tile], _data: &[Vec<u8>]) {}
}

/// Every entry of the first `size`, from the auditor's entry bundles.
fn entries(auditor: &mut Client, size: u64) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for bundle in 0..size.div_ceil(256) {
        let width = (size - bundle * 256).min(256);
        let tile = Tile::new(8, 0, bundle, width as u32, false).path();
        let path = tile.replacen("tile/8/0/", "/v1/audit/log/tile/entries/", 1);
        let reply = auditor.get(&path);
        assert_eq!(reply.status, 200, "{path}");
        assert_eq!(
            reply.header("content-type"),
            Some("application/octet-stream")
        );
        let mut rest = &reply.body[..];
        while !rest.is_empty() {
            let len = u16::from_be_bytes([rest[0], rest[1]]) as usize;
            out.push(rest[2..2 + len].to_vec());
            rest = &rest[2 + len..];
        }
        assert_eq!(out.len() as u64, bundle * 256 + width, "bundle {bundle}");
    }
    out
}

#[test]
fn an_independent_tlog_client_audits_the_served_tiles_sqlite() {
    audited_by_an_independent_client(Options::default());
}

#[test]
fn an_independent_tlog_client_audits_the_served_tiles_postgres() {
    let Some(schema) = PgSchema::create() else {
        return;
    };
    audited_by_an_independent_client(Options {
        store: Store::Postgres(schema.url.clone()),
        ..Options::default()
    });
}

fn audited_by_an_independent_client(options: Options) {
    let d = Daemon::start(options);
    let mut public = d.public_client();
    refuse(&d, 40);
    let old_note = checkpoint(&mut public, 40);
    // Past 256 entries: full tiles at level 0 and a level-1 hash.
    refuse(&d, 300);
    let new_note = checkpoint(&mut public, 340);
    let verifier = verifier(&d, &new_note);
    let (old_size, old_root) = open(&old_note, &verifier).unwrap();
    let (size, root) = open(&new_note, &verifier).unwrap();
    assert!(size > 256 && old_size < size);

    let tiles = Http {
        client: RefCell::new(d.public_client()),
        fetched: RefCell::new(HashMap::new()),
    };
    let reader = TileHashReader::new(size, root, &tiles);
    let mut auditor = d.client("auditor");
    let log = entries(&mut auditor, size);
    for (index, entry) in log.iter().enumerate() {
        let _ = AuditEntry::decode(entry).expect("canonical entry");
        let proof = tlog_tiles::prove_record(size, index as u64, &reader).unwrap();
        tlog_tiles::check_record(
            &proof,
            size,
            root,
            index as u64,
            tlog_tiles::record_hash(entry),
        )
        .unwrap_or_else(|e| panic!("entry {index}: {e:?}"));
    }
    let proof = tlog_tiles::prove_tree(size, old_size, &reader).unwrap();
    tlog_tiles::check_tree(&proof, size, root, old_size, old_root).unwrap();

    // The daemon's own proofs agree with the tiles.
    let served = auditor
        .get(&format!(
            "/v1/audit/proof/consistency?from={old_size}&to={size}"
        ))
        .json();
    let ours: Vec<Hash> = served["proof"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| Hash(B64.decode(h.as_str().unwrap()).unwrap().try_into().unwrap()))
        .collect();
    assert_eq!(ours, proof);

    // Entry bundles hold pseudonyms: auditors only.
    let refused = public.get("/tile/entries/000");
    assert_eq!(refused.status, 404);
    assert_eq!(refused.json()["code"], "not_found");
    assert_eq!(
        d.client("counter")
            .get("/v1/audit/log/tile/entries/000")
            .status,
        403
    );
    // Nothing beyond the checkpoint, nothing under another spelling.
    for path in [
        "/tile/0/x001/000",
        "/tile/0/0",
        "/tile/0/000.p/256",
        "/tile/1/000",
    ] {
        assert_eq!(public.get(path).status, 404, "{path}");
    }
    assert_eq!(
        public.get("/tile/1/000.p/1").body,
        tiles_level1(&log[..256])
    );
}

/// The one level-1 hash of a log's first 256 entries, computed here.
fn tiles_level1(first: &[Vec<u8>]) -> Vec<u8> {
    let mut level: Vec<Hash> = first.iter().map(|e| tlog_tiles::record_hash(e)).collect();
    while level.len() > 1 {
        level = level
            .chunks(2)
            .map(|pair| tlog_tiles::node_hash(pair[0], pair[1]))
            .collect();
    }
    level[0].0.to_vec()
}

fn sqlite(d: &Daemon) -> rusqlite::Connection {
    rusqlite::Connection::open(d.scratch().join("registry.db")).unwrap()
}

fn stop(d: &mut Daemon) -> (u64, Hash) {
    d.signal("TERM");
    let _ = d.wait_exit(Duration::from_secs(20));
    let note: String = sqlite(d)
        .query_row(
            "SELECT note FROM checkpoints ORDER BY size DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let size: u64 = note.lines().nth(1).unwrap().parse().unwrap();
    let root = B64.decode(note.lines().nth(2).unwrap()).unwrap();
    (size, Hash(root.try_into().unwrap()))
}

fn latest_size(public: &mut Client) -> u64 {
    let note = String::from_utf8(public.get("/checkpoint").body).unwrap();
    note.lines().nth(1).unwrap().parse().unwrap()
}

/// Starts the daemon on a rewritten store: it runs, records, and signs no
/// checkpoint over the rewrite.
fn refuses_to_sign_over(d: &mut Daemon, signed: u64, what: &str) {
    d.spawn();
    refuse(d, 3);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(latest_size(&mut d.public_client()), signed, "{what}");
    assert!(
        d.log().contains(&format!(
            "the stored audit log disagrees with the checkpoint it signed at size {signed}"
        )),
        "{what}: {}",
        d.log()
    );
    let _ = stop(d);
}

/// What an insider does with direct SQL: one blob replaced; the old one.
fn swap_blob(d: &Daemon, table_column: (&str, &str), filter: &str, value: &[u8]) -> Vec<u8> {
    let (table, column) = table_column;
    let db = sqlite(d);
    let old: Vec<u8> = db
        .query_row(
            &format!("SELECT {column} FROM {table} WHERE {filter}"),
            [],
            |r| r.get(0),
        )
        .unwrap();
    let sql = format!("UPDATE {table} SET {column} = ?1 WHERE {filter}");
    assert_eq!(db.execute(&sql, [value]).unwrap(), 1);
    old
}

#[test]
fn a_rewritten_log_is_not_signed_over_and_independent_clients_see_the_rest() {
    let mut d = Daemon::start(Options::default());
    refuse(&d, 300);
    let _ = checkpoint(&mut d.public_client(), 300);
    let (signed, _) = stop(&mut d);

    // A log from before the tiles (none stored): the next start stores
    // them from every leaf, once, and the log goes on.
    let tile_count = |d: &Daemon| -> i64 {
        sqlite(d)
            .query_row("SELECT COUNT(*) FROM audit_tiles", [], |r| r.get(0))
            .unwrap()
    };
    let whole_count = |d: &Daemon| -> i64 {
        sqlite(d)
            .query_row("SELECT COUNT(*) FROM audit_full_tiles", [], |r| r.get(0))
            .unwrap()
    };
    assert_eq!(tile_count(&d), 1, "one level-1 hash per 256 entries");
    assert_eq!(whole_count(&d), 1, "the full level-0 tile, whole");
    let db = sqlite(&d);
    let _ = db.execute("DELETE FROM audit_tiles", []).unwrap();
    let _ = db.execute("DELETE FROM audit_full_tiles", []).unwrap();
    drop(db);
    d.spawn();
    refuse(&d, 3);
    let _ = checkpoint(&mut d.public_client(), signed + 3);
    let (signed, _) = stop(&mut d);
    assert_eq!(tile_count(&d), 1);
    assert_eq!(whole_count(&d), 1);

    // A level-1 tile hash rewritten, then put back.
    let tile = ("audit_tiles", "hash");
    let kept = swap_blob(&d, tile, "level = 1 AND idx = 0", &[0; 32]);
    refuses_to_sign_over(&mut d, signed, "a rewritten tile hash");
    let _ = swap_blob(&d, tile, "level = 1 AND idx = 0", &kept);
    d.spawn();
    refuse(&d, 3);
    let _ = checkpoint(&mut d.public_client(), signed + 3);
    let (signed, _) = stop(&mut d);

    // The last note replaced by one "signed" by a key no one knows (as an
    // insider would, to cover a rewrite): not believed.
    let note: String = sqlite(&d)
        .query_row(
            "SELECT note FROM checkpoints WHERE size = ?1",
            [signed],
            |r| r.get(0),
        )
        .unwrap();
    let set_note = |d: &Daemon, note: &str| {
        let sql = "UPDATE checkpoints SET note = ?1 WHERE size = ?2";
        assert_eq!(
            sqlite(d)
                .execute(sql, rusqlite::params![note, signed])
                .unwrap(),
            1
        );
    };
    let (body, _) = note.rsplit_once("\n\n").unwrap();
    let forged = format!(
        "{body}\n\n\u{2014} {} {}\n",
        daemon::AUDIT_ORIGIN,
        B64.encode([7u8; 68])
    );
    set_note(&d, &forged);
    refuses_to_sign_over(&mut d, signed, "a note no known key signed");
    set_note(&d, &note);

    // A checkpoint row beyond the log: refused at once, not waited for.
    let beyond = signed + 1000;
    let insert = "INSERT INTO checkpoints (size, note) VALUES (?1, ?2)";
    let _ = sqlite(&d)
        .execute(insert, rusqlite::params![beyond, note])
        .unwrap();
    d.spawn();
    refuse(&d, 3);
    std::thread::sleep(Duration::from_secs(2));
    let said = format!("disagrees with the checkpoint it signed at size {beyond}");
    assert!(d.log().contains(&said), "{}", d.log());
    let _ = stop(&mut d);
    let _ = sqlite(&d)
        .execute("DELETE FROM checkpoints WHERE size = ?1", [beyond])
        .unwrap();

    // The last signed leaf (at the log's right edge) rewritten.
    assert_ne!(signed % 256, 0, "the last leaf is outside a full tile");
    let leaf = ("audit_log", "leaf");
    let last = format!("seq = {}", signed - 1);
    let kept = swap_blob(&d, leaf, &last, &[0; 32]);
    refuses_to_sign_over(&mut d, signed, "a rewritten leaf at the right edge");
    let _ = swap_blob(&d, leaf, &last, &kept);

    // An entry inside a full tile replaced, with its leaf hash to match:
    // the daemon's O(log n) start reads the tile's level-1 hash, not its
    // leaves, and goes on; the independent client, proving the entry it
    // reads against the signed root, refuses it. The tile is served from
    // its whole row, as signed: the neighbours' proofs still hold.
    let db = sqlite(&d);
    let _ = db
        .execute(
            "UPDATE audit_log SET entry = (SELECT entry FROM audit_log WHERE seq = 6),
                                  leaf = (SELECT leaf FROM audit_log WHERE seq = 6)
             WHERE seq = 5",
            [],
        )
        .unwrap();
    drop(db);
    d.spawn();
    // One checkpoint round: the node's upper tree is filled and checked.
    refuse(&d, 1);
    let _ = checkpoint(&mut d.public_client(), signed + 1);
    let tile0 = d.public_client().get("/tile/0/000");
    assert_eq!(tile0.status, 200);
    let note = checkpoint(&mut d.public_client(), signed);
    let (size, root) = open(&note, &verifier(&d, &note)).unwrap();
    let tiles = Http {
        client: RefCell::new(d.public_client()),
        fetched: RefCell::new(HashMap::new()),
    };
    let reader = TileHashReader::new(size, root, &tiles);
    let log = entries(&mut d.client("auditor"), size);
    let proves = |index: usize| {
        let proof = tlog_tiles::prove_record(size, index as u64, &reader).unwrap();
        let leaf = tlog_tiles::record_hash(&log[index]);
        tlog_tiles::check_record(&proof, size, root, index as u64, leaf).is_ok()
    };
    assert!(!proves(5), "the replaced entry");
    assert!(proves(4), "its neighbour, proved from the tile as signed");
    assert!(proves(300));

    // A row deleted inside a full tile: the tile is still the signed one,
    // from its whole row; the entry bundle is not served shifted (under a
    // year's immutable cache), it is not served.
    let _ = sqlite(&d)
        .execute("DELETE FROM audit_log WHERE seq = 10", [])
        .unwrap();
    assert_eq!(d.public_client().get("/tile/0/000").body, tile0.body);
    let reply = d.client("auditor").get("/v1/audit/log/tile/entries/000");
    assert_eq!(
        reply.status,
        503,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );

    // A whole tile rewritten (one hash changed): the daemon, checking a
    // full tile against its upper tree (rolled up to the signed root),
    // serves neither the tile nor a proof from it; the independent client,
    // handed the tile anyway, refuses it.
    let mut forged = tile0.body.clone();
    forged[6 * 32] ^= 1;
    let _ = swap_blob(
        &d,
        ("audit_full_tiles", "hashes"),
        "tile = 0", // level 0, tile 0 (key: level * 2^40 + index)
        &forged,
    );
    assert_eq!(d.public_client().get("/tile/0/000").status, 503);
    let proof = format!("/v1/audit/proof/inclusion?index=7&size={size}");
    assert_eq!(d.client("auditor").get(&proof).status, 503);
    let proof = format!("/v1/audit/proof/inclusion?index=300&size={size}");
    assert_eq!(d.client("auditor").get(&proof).status, 200);
    assert!(
        d.log()
            .contains("the stored tile 0/0 does not hash to the signed tree"),
        "{}",
        d.log()
    );
    let tiles = Http {
        client: RefCell::new(d.public_client()),
        fetched: RefCell::new(HashMap::from([("/tile/0/000".to_owned(), forged)])),
    };
    let reader = TileHashReader::new(size, root, &tiles);
    let proves = |index: usize| {
        tlog_tiles::prove_record(size, index as u64, &reader).is_ok_and(|proof| {
            let leaf = tlog_tiles::record_hash(&log[index]);
            tlog_tiles::check_record(&proof, size, root, index as u64, leaf).is_ok()
        })
    };
    assert!(!proves(7), "its proof carries the rewritten hash 6");
    assert!(proves(300));
}

/// `dojangctl` with the daemon's configuration: success, and what it said.
fn ctl(d: &Daemon, args: &[&str]) -> (bool, String) {
    let out = d.try_ctl(args);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}

#[test]
fn one_entry_proves_itself_offline_and_a_tampered_proof_does_not() {
    let mut d = Daemon::start(Options::default());
    refuse(&d, 20);
    let note = checkpoint(&mut d.public_client(), 20);
    let verifier = verifier(&d, &note);
    let keys = d.client("auditor").get("/v1/audit/checkpoint").json()["keys"].clone();
    let key = d.scratch().join("audit-key.pem");
    std::fs::write(&key, keys[0]["public_key_pem"].as_str().unwrap()).unwrap();
    let (size, _) = open(&note, &verifier).unwrap();
    let index = entries(&mut d.client("auditor"), size)
        .iter()
        .rposition(|e| AuditEntry::decode(e).unwrap().action == "issue")
        .unwrap();
    let index_text = index.to_string();
    d.signal("TERM");
    let _ = d.wait_exit(Duration::from_secs(20));

    let file = d.scratch().join("entry.tlog-proof");
    let path = file.display().to_string();
    let (ok, said) = ctl(
        &d,
        &["audit", "prove", "--index", &index_text, "--out", &path],
    );
    assert!(ok, "{said}");
    let check = |d: &Daemon| {
        ctl(
            d,
            &[
                "--json",
                "audit",
                "check-proof",
                &path,
                "--key",
                &key.display().to_string(),
                "--origin",
                daemon::AUDIT_ORIGIN,
            ],
        )
    };
    let (ok, said) = check(&d);
    assert!(ok, "{said}");
    let report: serde_json::Value = serde_json::from_str(said.lines().next().unwrap()).unwrap();
    assert_eq!(
        (report["index"].as_u64(), report["action"].as_str()),
        (Some(index as u64), Some("issue"))
    );

    // The same file read by the independent libraries: the note's
    // signature, then the entry's inclusion under the signed root.
    let text = std::fs::read_to_string(&file).unwrap();
    let (head, note) = text.split_once("\n\n").unwrap();
    let (size, root) = open(note, &verifier).unwrap();
    let lines: Vec<&str> = head.lines().collect();
    assert_eq!(lines[0], "c2sp.org/tlog-proof@v1");
    let entry = B64
        .decode(lines[1].strip_prefix("extra ").unwrap())
        .unwrap();
    let proof: Vec<Hash> = lines[3..]
        .iter()
        .map(|h| Hash(B64.decode(h).unwrap().try_into().unwrap()))
        .collect();
    tlog_tiles::check_record(
        &proof,
        size,
        root,
        index as u64,
        tlog_tiles::record_hash(&entry),
    )
    .unwrap();

    // Tampered: another index, another entry, a proof line dropped.
    let other_entry = {
        let mut e = AuditEntry::decode(&entry).unwrap();
        e.outcome = "allow".into();
        B64.encode(e.encode())
    };
    for (what, from, to) in [
        (
            "index",
            format!("index {index}"),
            format!("index {}", index - 1),
        ),
        ("entry", lines[1].to_owned(), format!("extra {other_entry}")),
        ("proof", format!("{}\n", lines[3]), String::new()),
    ] {
        std::fs::write(&file, text.replacen(&from, &to, 1)).unwrap();
        let (ok, said) = check(&d);
        assert!(!ok, "a proof with another {what} was accepted: {said}");
    }
}
