//! Witnesses of the audit log (c2sp.org/tlog-witness): two `dojangctl
//! witness` processes, one honest and one holding a forked view of the
//! log. The honest one cosigns each checkpoint (its cosignature checked
//! here with openssl against the spec's message, not with our verifier)
//! and the cosignature is published; the other refuses the log's
//! checkpoints as inconsistent and the daemon reports it; with the honest
//! one gone the quorum is not met and the node is not ready, until it is
//! back.
#![allow(clippy::unwrap_used)]
#![allow(clippy::indexing_slicing, clippy::panic, clippy::expect_used)] // test code: a failed expect, panic or index is a failed test

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use softhsm_tests::daemon::{Daemon, Options, AUDIT_ORIGIN};
use softhsm_tests::wait_until;

/// A running `dojangctl witness serve`.
struct WitnessProcess {
    child: Child,
    url: String,
    log: PathBuf,
}

impl Drop for WitnessProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Makes witness `name`'s key; its vkey.
fn witness_key(d: &Daemon, name: &str) -> String {
    let out = d.try_ctl(&[
        "witness",
        "key",
        "--name",
        name,
        "--out",
        d.scratch().join(format!("{name}.key")).to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// `dojangctl witness serve` for witness `name` (its key and state in the
/// scratch directory), not started.
fn serve_command(d: &Daemon, name: &str, port: u16, log_key: &Path) -> std::process::Command {
    let scratch = d.scratch();
    let mut command = d.command("dojangctl");
    let _ = command
        .args(["witness", "serve", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--name", name, "--origin", AUDIT_ORIGIN])
        .arg("--key")
        .arg(scratch.join(format!("{name}.key")))
        .arg("--log-key")
        .arg(log_key)
        .arg("--state")
        .arg(scratch.join(format!("{name}.state.json")));
    command
}

/// Starts witness `name`, new (`--init`) unless it has a state already.
fn start_witness(d: &Daemon, name: &str, port: u16, log_key: &Path) -> WitnessProcess {
    let scratch = d.scratch();
    let log = scratch.join(format!("{name}.log"));
    let new = !scratch.join(format!("{name}.state.json")).exists();
    let child = serve_command(d, name, port, log_key)
        .args(new.then_some("--init"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "witness {name} did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    WitnessProcess {
        child,
        url: format!("http://127.0.0.1:{port}"),
        log,
    }
}

/// A series' value (`None`: not exported).
fn metric(d: &Daemon, series: &str) -> Option<f64> {
    let text = String::from_utf8(d.ops_client().get("/metrics").body).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series).filter(|v| v.starts_with(' ')))
        .and_then(|v| v.trim().parse().ok())
}

fn readiness_check(d: &Daemon) -> (u16, serde_json::Value) {
    let reply = d.ops_client().get("/readyz");
    let body = reply.json();
    let check = body["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "audit_witnesses")
        .cloned()
        .unwrap_or_default();
    (reply.status, check)
}

/// Checks `name`'s cosignature on the public checkpoint as the spec
/// defines it (openssl Ed25519 over `cosignature/v1\ntime T\n` + body).
fn cosigned_by(note: &str, vkey: &str) -> bool {
    let (name, rest) = vkey.split_once('+').unwrap();
    let key = B64.decode(rest.split_once('+').unwrap().1).unwrap();
    assert_eq!(key[0], 0x04, "an Ed25519 cosigner key");
    let public = &key[1..];
    let mut id_input = format!("{name}\n").into_bytes();
    id_input.push(0x04);
    id_input.extend_from_slice(public);
    let id = &openssl::sha::sha256(&id_input)[..4];
    let (body, signatures) = note.split_once("\n\n").unwrap();
    let body = format!("{body}\n");
    let verifier_key =
        openssl::pkey::PKey::public_key_from_raw_bytes(public, openssl::pkey::Id::ED25519).unwrap();
    signatures.lines().any(|line| {
        let Some(blob) = line.strip_prefix(&format!("\u{2014} {name} ")) else {
            return false;
        };
        let blob = B64.decode(blob).unwrap();
        if &blob[..4] != id || blob.len() != 76 {
            return false;
        }
        let time = u64::from_be_bytes(blob[4..12].try_into().unwrap());
        let message = format!("cosignature/v1\ntime {time}\n{body}");
        let now = time::OffsetDateTime::now_utc().unix_timestamp() as u64;
        now.abs_diff(time) < 300
            && openssl::sign::Verifier::new_without_digest(&verifier_key)
                .unwrap()
                .verify_oneshot(&blob[12..], message.as_bytes())
                .unwrap()
    })
}

fn public_checkpoint(d: &Daemon) -> String {
    String::from_utf8(d.public_client().get("/checkpoint").body).unwrap()
}

/// A daemon whose log is witnessed by `w1` (honest) and `w2` (holding
/// a tree of one entry this log never had), quorum 1 (`required`: the node
/// is not ready without it).
struct Witnessed {
    d: Daemon,
    honest: WitnessProcess,
    forked: WitnessProcess,
    honest_vkey: String,
    forked_vkey: String,
    log_key: PathBuf,
    port: u16,
}

fn witnessed(required: bool) -> Witnessed {
    let mut d = Daemon::start(Options::default());
    assert_eq!(d.issue("mdoc", 59).status, 201);
    let mut auditor = d.client("auditor");
    let mut pem = String::new();
    wait_until(Duration::from_secs(30), "no audit key listed", || {
        pem = auditor.get("/v1/audit/checkpoint").json()["keys"][0]["public_key_pem"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        !pem.is_empty()
    });
    let log_key = d.scratch().join("audit-key.pem");
    std::fs::write(&log_key, pem).unwrap();
    let (honest_vkey, forked_vkey) = (witness_key(&d, "w1"), witness_key(&d, "w2"));
    // w2 holds a tree of one entry this log never had.
    std::fs::write(
        d.scratch().join("w2.state.json"),
        serde_json::json!({"origin": AUDIT_ORIGIN, "size": 1, "root": B64.encode([7u8; 32])})
            .to_string(),
    )
    .unwrap();
    let port = softhsm_tests::ports::reserve(3);
    let honest = start_witness(&d, "w1", port, &log_key);
    let forked = start_witness(&d, "w2", port + 1, &log_key);
    d.signal("TERM");
    let _ = d.wait_exit(Duration::from_secs(20));
    let config = std::fs::read_to_string(&d.config).unwrap().replace(
        "checkpoint_interval_ms = 300\n",
        &format!(
            "checkpoint_interval_ms = 300\nwitness_quorum = 1\nrequire_witness_quorum = {required}\nwitnesses = [\
             {{ url = \"{}\", key = \"{honest_vkey}\" }}, {{ url = \"{}\", key = \"{forked_vkey}\" }}]\n",
            honest.url, forked.url
        ),
    );
    std::fs::write(&d.config, config).unwrap();
    d.spawn();
    Witnessed {
        d,
        honest,
        forked,
        honest_vkey,
        forked_vkey,
        log_key,
        port,
    }
}

#[test]
fn an_honest_witness_cosigns_a_forked_one_refuses_and_the_quorum_shows_in_readiness() {
    let Witnessed {
        d,
        honest,
        forked,
        honest_vkey,
        forked_vkey,
        log_key,
        port,
    } = witnessed(true);
    for n in 0..3 {
        assert_eq!(d.issue("mdoc", 60 + n).status, 201);
    }
    // The honest witness's cosignature is published with the checkpoint.
    wait_until(
        Duration::from_secs(30),
        "no cosigned checkpoint published",
        || cosigned_by(&public_checkpoint(&d), &honest_vkey),
    );
    let note = public_checkpoint(&d);
    assert!(!cosigned_by(&note, &forked_vkey), "{note}");
    let size: u64 = note.lines().nth(1).unwrap().parse().unwrap();
    // The check above is a check: another size is not what was cosigned.
    let other = note.replacen(&format!("\n{size}\n"), &format!("\n{}\n", size + 1), 1);
    assert!(!cosigned_by(&other, &honest_vkey));
    let held: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.scratch().join("w1.state.json")).unwrap()).unwrap();
    assert!(held["size"].as_u64().unwrap() >= size);
    // One state, one process: a second witness on w1's state is refused
    // (it would check forks against a state of its own), and so is one
    // whose state is gone (it would start afresh and cosign a fork).
    let refused = |command: &mut std::process::Command| {
        softhsm_tests::refused_within(command, Duration::from_secs(10))
    };
    let second = refused(&mut serve_command(&d, "w1", port + 2, &log_key));
    assert!(second.contains("another witness process"), "{second}");
    let again = refused(serve_command(&d, "w1", port + 2, &log_key).arg("--init"));
    assert!(again.contains("another witness process"), "{again}");
    let _ = std::fs::copy(d.scratch().join("w1.key"), d.scratch().join("w3.key")).unwrap();
    let forgot = refused(&mut serve_command(&d, "w3", port + 2, &log_key));
    assert!(forgot.contains("starts with --init"), "{forgot}");
    // The forked witness refused, and the daemon says so.
    wait_until(Duration::from_secs(30), "the fork is not reported", || {
        metric(
            &d,
            "dojang_audit_witness_refusals_total{reason=\"inconsistent\",witness=\"w2\"}",
        )
        .is_some_and(|n| n >= 1.0)
    });
    assert!(std::fs::read_to_string(&forked.log)
        .unwrap()
        .contains("a fork"));
    assert_eq!(
        metric(&d, "dojang_audit_witness_cosigned{witness=\"w1\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric(&d, "dojang_audit_witness_cosigned{witness=\"w2\"}"),
        Some(0.0)
    );
    assert_eq!(metric(&d, "dojang_audit_witness_quorum_met"), Some(1.0));
    let (status, check) = readiness_check(&d);
    assert_eq!(status, 200, "{check}");
    assert_eq!(check["ok"], true);
    assert!(
        check["detail"]
            .as_str()
            .unwrap()
            .contains("w2: inconsistent"),
        "{check}"
    );

    // Without the honest witness the quorum is not met: not ready.
    let port_of_honest = port;
    drop(honest);
    // Its state stays; `--init` would throw away what it cosigned.
    let reinit = refused(serve_command(&d, "w1", port + 2, &log_key).arg("--init"));
    assert!(
        reinit.contains("--init starts a new witness only"),
        "{reinit}"
    );
    assert_eq!(d.issue("mdoc", 70).status, 201);
    wait_until(
        Duration::from_secs(30),
        "readiness ignores the missing quorum",
        || readiness_check(&d).0 == 503,
    );
    let (_, check) = readiness_check(&d);
    assert_eq!(check["ok"], false, "{check}");
    assert!(
        check["detail"]
            .as_str()
            .unwrap()
            .contains("w1: unreachable"),
        "{check}"
    );
    assert_eq!(metric(&d, "dojang_audit_witness_quorum_met"), Some(0.0));
    // Back, it catches up from the size it holds and the node is ready.
    let _honest = start_witness(&d, "w1", port_of_honest, &log_key);
    wait_until(
        Duration::from_secs(30),
        "the node stays unready with its witness back",
        || readiness_check(&d).0 == 200,
    );
    assert!(cosigned_by(&public_checkpoint(&d), &honest_vkey));
}

/// Copies an SQLite database as an insider would: the file and its
/// write-ahead log, over whatever was at `to`.
fn copy_database(from: &Path, to: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", to.display()));
    }
    for suffix in ["", "-wal"] {
        let source = format!("{}{suffix}", from.display());
        if Path::new(&source).exists() {
            let _ = std::fs::copy(&source, format!("{}{suffix}", to.display())).unwrap();
        }
    }
}

#[test]
fn a_registry_rolled_back_behind_what_a_witness_cosigned_is_reported() {
    let Witnessed {
        mut d,
        honest: _honest,
        forked: _forked,
        honest_vkey,
        ..
    } = witnessed(false);
    wait_until(
        Duration::from_secs(30),
        "no cosigned checkpoint published",
        || cosigned_by(&public_checkpoint(&d), &honest_vkey),
    );
    // An insider keeps a copy of the registry...
    d.signal("TERM");
    let _ = d.wait_exit(Duration::from_secs(20));
    let registry = d.scratch().join("registry.db");
    let copy = d.scratch().join("registry-copy.db");
    copy_database(&registry, &copy);
    d.spawn();
    // ...the log grows and the honest witness cosigns it...
    for n in 0..5 {
        assert_eq!(d.issue("sd-jwt", 80 + n).status, 201);
    }
    let grown = |d: &Daemon| {
        let note = public_checkpoint(d);
        let size: u64 = note.lines().nth(1).unwrap().parse().unwrap();
        (size, cosigned_by(&note, &honest_vkey))
    };
    let copied_size: u64 = {
        let conn = rusqlite::Connection::open(&copy).unwrap();
        conn.query_row("SELECT MAX(size) FROM checkpoints", [], |r| r.get(0))
            .unwrap()
    };
    wait_until(
        Duration::from_secs(30),
        "the grown log is not cosigned",
        || {
            let (size, cosigned) = grown(&d);
            size > copied_size + 5 && cosigned
        },
    );
    // ...and the copy is put back: the witness holds a larger tree.
    d.signal("TERM");
    let _ = d.wait_exit(Duration::from_secs(20));
    copy_database(&copy, &registry);
    d.spawn();
    wait_until(
        Duration::from_secs(30),
        "the rollback is not reported",
        || {
            ["ahead", "inconsistent"].iter().any(|reason| {
                metric(
                    &d,
                    &format!(
                        "dojang_audit_witness_refusals_total{{reason=\"{reason}\",witness=\"w1\"}}"
                    ),
                )
                .is_some_and(|n| n >= 1.0)
            })
        },
    );
    assert!(!cosigned_by(&public_checkpoint(&d), &honest_vkey));
}
