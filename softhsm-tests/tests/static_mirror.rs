//! The static mirror: with no node running, verifiers get everything they
//! fetch (key sets, certificates, CRL, status lists, the log's checkpoint
//! and its hash tiles)
//! from a plain web server we did not write (Python's `http.server`) over
//! a copy of the mirror directory, and check it with libraries we did not
//! write (sd-jwt, jwcrypto, cbor2, cryptography, openssl).
#![allow(clippy::unwrap_used)]
#![allow(clippy::indexing_slicing, clippy::panic, clippy::expect_used)] // test code: a failed expect, panic or index is a failed test

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use softhsm_tests::daemon::{Daemon, Options};
use softhsm_tests::https::{Client, Target};
use softhsm_tests::wait_until;
use softhsm_tests::web::StaticServer;

/// `path` from the static server, saved under `dir` for the verifiers.
fn fetch(web: &StaticServer, path: &str, dir: &Path) -> PathBuf {
    let reply = Client::new(Target::plain(web.addr)).get(path);
    assert_eq!(reply.status, 200, "{path} from the static server");
    let file = dir.join(path.trim_start_matches('/').replace('/', "_"));
    std::fs::write(&file, &reply.body).unwrap();
    file
}

fn python(script: &str, args: &[&Path]) -> serde_json::Value {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(dir.join("../.venv/bin/python"))
        .arg(dir.join("python").join(script))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Waits until the mirror's status list `path` shows `bit` at `idx`.
fn wait_for_bit(mirror: &Path, path: &str, form: &str, idx: u64, bit: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let read = python(
            "verify_status_list.py",
            &[
                form.as_ref(),
                &mirror.join(path),
                &mirror.join("status/jwks.json"),
                idx.to_string().as_ref(),
            ],
        );
        if read["status"] == bit {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{path}[{idx}] never became {bit}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn verifiers_keep_working_from_the_static_mirror_while_no_node_runs() {
    let mut d = Daemon::start(Options {
        public: "mirror_dir = \"{scratch}/mirror\"".into(),
        ..Options::default()
    });
    let mirror = d.scratch().join("mirror");
    let issued = [d.issued("sd-jwt", 40), d.issued("mdoc", 41)];
    let mut counter = d.client("counter");
    let (sd_jwt, mdoc) = (&issued[0], &issued[1]);
    for (credential, action) in [(sd_jwt, "revoke"), (mdoc, "suspend")] {
        let id = credential["id"].as_str().unwrap();
        let reply = counter.send(
            "POST",
            &format!("/v1/credentials/{id}/{action}"),
            &[],
            Vec::new(),
        );
        assert_eq!(
            reply.status,
            200,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
    }
    let list = sd_jwt["status"]["uri"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_owned();
    let (sd_idx, mdoc_idx) = (
        sd_jwt["status"]["idx"].as_u64().unwrap(),
        mdoc["status"]["idx"].as_u64().unwrap(),
    );
    wait_for_bit(&mirror, &format!("status/{list}"), "jwt", sd_idx, 1);
    wait_for_bit(&mirror, &format!("status/{list}.cwt"), "cwt", mdoc_idx, 2);
    // The checkpoint covering both changes reaches the mirror too.
    let entries = d.audit_entries().len() as u64;
    let deadline = Instant::now() + Duration::from_secs(30);
    while checkpoint_size(&mirror.join("checkpoint")) < entries {
        assert!(
            Instant::now() < deadline,
            "the mirror's checkpoint stays behind"
        );
        std::thread::sleep(Duration::from_millis(300));
    }

    // The site is lost: the node dies; the mirror is copied elsewhere.
    d.signal("KILL");
    let _ = d.wait_exit(Duration::from_secs(10));
    let copy = d.scratch().join("mirror-copy");
    assert!(Command::new("cp")
        .arg("-a")
        .arg(&mirror)
        .arg(&copy)
        .status()
        .unwrap()
        .success());
    let web = StaticServer::start(&copy, None);
    let fetched = d.scratch().join("fetched");
    std::fs::create_dir_all(&fetched).unwrap();

    // The manifest lists every file with its digest, and nothing else lies there.
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fetch(&web, "/mirror.json", &fetched)).unwrap())
            .unwrap();
    let files = manifest["files"].as_object().unwrap();
    for (path, entry) in files {
        let body = std::fs::read(copy.join(path)).unwrap();
        let digest = openssl::sha::sha256(&body);
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(entry["sha256"], hex, "{path}");
    }
    for path in [
        "status/jwks.json",
        ".well-known/jwks.json",
        "iaca.pem",
        "iaca.crl",
        "checkpoint",
    ] {
        assert!(files.contains_key(path), "{path} missing from the manifest");
    }
    assert_eq!(
        files[&format!("status/{list}")]["media_type"],
        "application/statuslist+jwt"
    );

    // SD-JWT VC: the issuer key from the mirror's JWKS and DS certificate.
    let jwks = fetch(&web, "/.well-known/jwks.json", &fetched);
    let kids: Vec<String> =
        serde_json::from_slice::<serde_json::Value>(&std::fs::read(&jwks).unwrap()).unwrap()
            ["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_owned())
            .collect();
    assert!(kids.contains(&sd_jwt["kid"].as_str().unwrap().to_owned()));
    let credential = fetched.join("credential.sd-jwt");
    std::fs::write(&credential, sd_jwt["credential"].as_str().unwrap()).unwrap();
    let ds = fetch(
        &web,
        &format!("/ds/{}.pem", sd_jwt["key_label"].as_str().unwrap()),
        &fetched,
    );
    let _ = python("verify_sdjwt.py", &[&credential, &ds]);

    // Status lists in both forms, keys from the mirror, chained to the IACA
    // from the mirror, valid for the documented outage (a day by default).
    let iaca = fetch(&web, "/iaca.pem", &fetched);
    let status_keys = fetch(&web, "/status/jwks.json", &fetched);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    for (path, form, idx, bit) in [
        (format!("/status/{list}"), "jwt", sd_idx, 1),
        (format!("/status/{list}.cwt"), "cwt", mdoc_idx, 2),
    ] {
        let token = fetch(&web, &path, &fetched);
        let read = python(
            "verify_status_list.py",
            &[
                form.as_ref(),
                &token,
                &status_keys,
                idx.to_string().as_ref(),
                &iaca,
            ],
        );
        assert_eq!(read["status"], bit, "{path}: {read}");
        assert!(
            read["exp"].as_i64().unwrap() > now + 23 * 3600,
            "{path}: {read}"
        );
    }

    // The CRL, checked by openssl against the mirror's IACA.
    let crl = fetch(&web, "/iaca.crl", &fetched);
    let out = Command::new("openssl")
        .args(["crl", "-inform", "DER", "-noout", "-in"])
        .arg(&crl)
        .arg("-CAfile")
        .arg(&iaca)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && said.contains("verify OK"), "{said}");

    // The checkpoint is one the registry holds, covering the changes.
    let registry = dojang::store::SqliteRegistry::open(&d.scratch().join("registry.db")).unwrap();
    let signed = dojang::store::Registry::checkpoints(&registry).unwrap();
    let served = fetch(&web, "/checkpoint", &fetched);
    assert!(checkpoint_size(&served) >= entries);
    let served = std::fs::read_to_string(served).unwrap();
    assert!(signed.iter().any(|(_, note)| *note == served), "{served}");

    // Its hash tiles are in the mirror: a tiled-log client we did not
    // write (tlog_tiles) recomputes the signed root from them.
    assert_tiles_prove(&served, &web);
}

/// The tree size of the node's latest checkpoint, as the public listener
/// serves it.
fn served_size(d: &Daemon) -> u64 {
    let reply = d.public_client().get("/checkpoint");
    assert_eq!(reply.status, 200);
    String::from_utf8_lossy(&reply.body)
        .lines()
        .nth(1)
        .and_then(|l| l.parse().ok())
        .unwrap()
}

#[test]
fn a_mirror_that_cannot_write_tiles_keeps_its_checkpoint_and_still_publishes_status() {
    let d = Daemon::start(Options {
        public: "mirror_dir = \"{scratch}/mirror\"".into(),
        ..Options::default()
    });
    let mirror = d.scratch().join("mirror");
    let sd_jwt = d.issued("sd-jwt", 50);
    wait_until(
        Duration::from_secs(30),
        "no first checkpoint in the mirror",
        || checkpoint_size(&mirror.join("checkpoint")) > 0,
    );
    // The tiles' directory cannot be made (a file is in its place).
    std::fs::remove_dir_all(mirror.join("tile")).unwrap();
    std::fs::write(mirror.join("tile"), b"not a directory").unwrap();
    let before = checkpoint_size(&mirror.join("checkpoint"));
    let id = sd_jwt["id"].as_str().unwrap();
    let reply = d.client("counter").send(
        "POST",
        &format!("/v1/credentials/{id}/revoke"),
        &[],
        Vec::new(),
    );
    assert_eq!(reply.status, 200);
    let list = sd_jwt["status"]["uri"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_owned();
    let idx = sd_jwt["status"]["idx"].as_u64().unwrap();
    // The status lists go on...
    wait_for_bit(&mirror, &format!("status/{list}"), "jwt", idx, 1);
    // ...while the checkpoint file stays the one whose tiles are there,
    // though the node signed a later one.
    wait_until(
        Duration::from_secs(30),
        "the node signs no later checkpoint",
        || served_size(&d) > before,
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(checkpoint_size(&mirror.join("checkpoint")), before);
    // Once the tiles can be written, the mirror catches up.
    std::fs::remove_file(mirror.join("tile")).unwrap();
    let target = served_size(&d);
    wait_until(
        Duration::from_secs(30),
        "the mirror's checkpoint stays behind",
        || checkpoint_size(&mirror.join("checkpoint")) >= target,
    );
    let web = StaticServer::start(&mirror, None);
    let note = std::fs::read_to_string(mirror.join("checkpoint")).unwrap();
    assert_tiles_prove(&note, &web);
}

/// The static server's hash tiles prove the last entry of the checkpoint
/// `note` (read by `tlog_tiles`, a client we did not write).
fn assert_tiles_prove(note: &str, web: &StaticServer) {
    let size: u64 = note.lines().nth(1).unwrap().parse().unwrap();
    let root: [u8; 32] = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        note.lines().nth(2).unwrap(),
    )
    .unwrap()
    .try_into()
    .unwrap();
    let mirrored = Mirrored { web };
    let reader = tlog_tiles::TileHashReader::new(size, tlog_tiles::Hash(root), &mirrored);
    assert!(tlog_tiles::prove_record(size, size - 1, &reader).is_ok());
}

/// Hash tiles from the static server (`tlog_tiles` names them with the
/// height, as Go's sumdb does; tlog-tiles paths have none).
struct Mirrored<'a> {
    web: &'a StaticServer,
}

impl tlog_tiles::TileReader for Mirrored<'_> {
    fn height(&self) -> u8 {
        8
    }

    fn read_tiles(&self, tiles: &[tlog_tiles::Tile]) -> Result<Vec<Vec<u8>>, tlog_tiles::Error> {
        Ok(tiles
            .iter()
            .map(|t| {
                let path = t.path().replacen("tile/8/", "/tile/", 1);
                let reply = Client::new(Target::plain(self.web.addr)).get(&path);
                assert_eq!(reply.status, 200, "{path} from the static server");
                reply.body
            })
            .collect())
    }

    fn save_tiles(&self, _tiles: &[tlog_tiles::Tile], _data: &[Vec<u8>]) {}
}

/// The tree size a signed checkpoint note states (0 before one exists).
fn checkpoint_size(path: &Path) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|note| note.lines().nth(1).and_then(|l| l.parse().ok()))
        .unwrap_or(0)
}
