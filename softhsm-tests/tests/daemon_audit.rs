//! The audit log as the real daemon writes it: every decision recorded in
//! the transaction that makes it, checkpoints signed in the HSM, proofs an
//! auditor checks without trusting the appliance, an export `dojangctl
//! audit verify` accepts, a SIGKILL that loses nothing, two nodes on one
//! PostgreSQL keeping one log, and signing refused while the log cannot be
//! written.
#![allow(clippy::unwrap_used)]
#![allow(clippy::indexing_slicing, clippy::panic, clippy::expect_used)] // test code: a failed expect, panic or index is a failed test

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use dojang::audit::checkpoint::{Checkpoint, NoteKey};
use dojang::audit::entry::AuditEntry;
use dojang::audit::merkle;
use softhsm_tests::daemon::{self, Daemon, Options, PgSchema, Store, AUDIT_ORIGIN};

fn issue(d: &Daemon, n: u32, profile: &str, key: Option<&str>) -> softhsm_tests::https::Reply {
    let (jwk, _) = daemon::phone();
    let headers: Vec<(&str, &str)> = key
        .map(|k| vec![("idempotency-key", k)])
        .unwrap_or_default();
    d.client("counter").post_json(
        "/v1/credentials",
        &daemon::request(profile, &daemon::number(n), &jwk),
        &headers,
    )
}

fn entries(auditor: &mut softhsm_tests::https::Client) -> Vec<AuditEntry> {
    // Decisions recorded but not yet placed in the log are placed within a second.
    let deadline = Instant::now() + Duration::from_secs(10);
    while auditor.get("/v1/audit/entries?start=0&count=1").json()["pending"] != 0 {
        assert!(Instant::now() < deadline, "entries still pending");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut out = Vec::new();
    loop {
        let page = auditor
            .get(&format!("/v1/audit/entries?start={}&count=1000", out.len()))
            .json();
        let batch = page["entries"].as_array().unwrap().clone();
        if batch.is_empty() {
            return out;
        }
        for e in batch {
            out.push(AuditEntry::decode(&B64.decode(e.as_str().unwrap()).unwrap()).unwrap());
        }
    }
}

fn wait_checkpoint(auditor: &mut softhsm_tests::https::Client, at_least: u64) -> (u64, String) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let reply = auditor.get("/v1/audit/checkpoint");
        if reply.status == 200 {
            let body = reply.json();
            let size = body["size"].as_u64().unwrap();
            if size >= at_least {
                return (size, body["note"].as_str().unwrap().to_owned());
            }
        }
        assert!(
            Instant::now() < deadline,
            "no checkpoint of {at_least} entries"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// SHA-256 of the DER certificate client `name` presents.
fn certificate_sha256(d: &Daemon, name: &str) -> [u8; 32] {
    let pem = std::fs::read(d.tls.join(format!("{name}.pem"))).unwrap();
    let der = openssl::x509::X509::from_pem(&pem)
        .unwrap()
        .to_der()
        .unwrap();
    openssl::sha::sha256(&der)
}

fn b64_hash(v: &serde_json::Value) -> [u8; 32] {
    B64.decode(v.as_str().unwrap()).unwrap().try_into().unwrap()
}

#[test]
fn every_decision_is_logged_signed_provable_and_exported() {
    let mut d = Daemon::start(Options::default());
    assert_eq!(issue(&d, 1, "mdoc", None).status, 201);
    let second = issue(&d, 2, "sd-jwt", None).json();
    let young = d.client("counter").post_json(
        "/v1/credentials",
        &daemon::request("mdoc", "150101-3123456", &daemon::phone().0),
        &[],
    );
    assert_eq!(young.status, 422);
    let id = second["id"].as_str().unwrap();
    assert_eq!(
        d.client("counter")
            .send(
                "POST",
                &format!("/v1/credentials/{id}/revoke"),
                &[],
                Vec::new()
            )
            .status,
        200
    );
    // Only auditors read the log.
    assert_eq!(d.client("counter").get("/v1/audit/checkpoint").status, 403);

    let mut auditor = d.client("auditor");
    let deadline = Instant::now() + Duration::from_secs(10);
    let round_made = |e: &&AuditEntry| e.action == "pki.crl" || e.action == "keys.certify";
    let log = loop {
        let log = entries(&mut auditor);
        if log.iter().filter(round_made).count() == 2 || Instant::now() > deadline {
            break log;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // The first CRL and the status-list key's certificate (the online
    // IACA certifies it) come from the lifecycle thread, whenever its
    // first round runs: once each, but not at a fixed place.
    assert_eq!(log.iter().filter(|e| e.action == "pki.crl").count(), 1);
    assert_eq!(log.iter().filter(|e| e.action == "keys.certify").count(), 1);
    let actions: Vec<(&str, &str)> = log
        .iter()
        .filter(|e| !round_made(e))
        .map(|e| (e.action.as_str(), e.outcome.as_str()))
        .collect();
    assert_eq!(
        actions,
        [
            // The key ceremony adopts the policy (its text, the officers'
            // signatures, its hash); the first start records the pseudonym
            // key's check value and takes the ceremony's IACA, DS key,
            // status-list and audit key into the registry.
            ("policy.keep", "ok"),
            ("policy.adoption", "ok"),
            ("policy.adopt", "ok"),
            ("keys.pseudonym_check", "ok"),
            ("pki.iaca", "ok"),
            ("keys.import", "active"),
            ("keys.import", "active"),
            ("keys.import", "active"),
            ("start", "ok"),
            ("tls.load", "ok"),
            ("issue", "allow"),
            ("issue", "allow"),
            ("issue", "deny"),
            ("revoke", "allow"),
            // The counter's refused read of the log.
            ("audit.read", "deny"),
        ]
    );
    let refused_read = log.iter().find(|e| e.action == "audit.read").unwrap();
    assert_eq!(refused_read.rule.as_deref(), Some("client.role"));
    assert!(
        refused_read.actor.ends_with("office-counter"),
        "{}",
        refused_read.actor
    );
    // A client's entries name the certificate it presented; the daemon's
    // own, none.
    let counter = certificate_sha256(&d, "counter");
    for e in &log {
        let expected = (e.actor.ends_with("office-counter")).then_some(counter);
        assert_eq!(e.actor_certificate, expected, "{e:?}");
    }
    let issues: Vec<_> = log.iter().filter(|e| e.action == "issue").collect();
    let denial = issues.iter().find(|e| e.outcome == "deny").unwrap();
    assert_eq!(denial.rule.as_deref(), Some("holder.minimum_age"));
    assert!(
        denial.holder.is_some(),
        "denials name the holder's pseudonym"
    );
    let issued = issues[1];
    assert_eq!(issued.credential_id.as_deref(), Some(id));
    assert_eq!(issued.key_id.as_deref(), second["kid"].as_str());
    assert_eq!(
        issued.payload_sha256,
        Some(pkcs11_shim::digest::sha256(
            second["credential"].as_str().unwrap().as_bytes()
        ))
    );
    // The ceremony's entries are dojangctl's, the rest this node's.
    assert!(log
        .iter()
        .all(|e| e.node == "test-1" || (e.node == "dojangctl" && e.action.starts_with("policy."))));
    // Each writer's entries are numbered from 0 without a gap.
    for node in ["dojangctl", "test-1"] {
        let seqs: Vec<u64> = log
            .iter()
            .filter(|e| e.node == node)
            .map(|e| e.seq)
            .collect();
        assert_eq!(seqs, (0..seqs.len() as u64).collect::<Vec<_>>(), "{node}");
    }

    // A checkpoint signed by the audit key, and proofs against it.
    let (size, note) = wait_checkpoint(&mut auditor, log.len() as u64);
    let (bundle, key_pem) = d.export_audit("audit");
    let der = openssl::pkey::PKey::public_key_from_pem(&std::fs::read(&key_pem).unwrap())
        .unwrap()
        .public_key_to_der()
        .unwrap();
    let key = NoteKey::new(
        AUDIT_ORIGIN,
        pkcs11_shim::PublicKey::from_spki_der(&der).unwrap(),
    )
    .unwrap();
    let checkpoint = Checkpoint::open(&note, &key).unwrap();
    assert_eq!(checkpoint.size, size);
    let leaves: Vec<_> = log
        .iter()
        .take(size as usize)
        .map(|e| merkle::leaf_hash(&e.encode()))
        .collect();
    assert_eq!(merkle::root(&leaves), checkpoint.root);
    for index in 0..size {
        let proof = auditor
            .get(&format!(
                "/v1/audit/proof/inclusion?index={index}&size={size}"
            ))
            .json();
        assert_eq!(b64_hash(&proof["leaf_hash"]), leaves[index as usize]);
        let path: Vec<[u8; 32]> = proof["proof"]
            .as_array()
            .unwrap()
            .iter()
            .map(b64_hash)
            .collect();
        assert!(merkle::verify_inclusion(
            index,
            size,
            &leaves[index as usize],
            &path,
            &checkpoint.root
        ));
    }
    let consistency = auditor
        .get(&format!("/v1/audit/proof/consistency?from=2&to={size}"))
        .json();
    let path: Vec<[u8; 32]> = consistency["proof"]
        .as_array()
        .unwrap()
        .iter()
        .map(b64_hash)
        .collect();
    assert!(merkle::verify_consistency(
        2,
        size,
        &merkle::root(&leaves[..2]),
        &checkpoint.root,
        &path
    ));
    let bad = auditor.get(&format!(
        "/v1/audit/proof/inclusion?index={size}&size={size}"
    ));
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["code"], "audit_range");

    // Stopped: a stop entry and a final checkpoint over everything, and the
    // export verifies offline with the key and origin the auditor trusts.
    d.signal("TERM");
    assert!(d.wait_exit(Duration::from_secs(15)).success());
    let _ = d.ctl(&["audit", "export", "--out", &bundle.display().to_string()]);
    let out = std::process::Command::new(softhsm_tests::workspace_binary("dojangctl"))
        .args(["--json", "audit", "verify"])
        .arg(&bundle)
        .arg("--key")
        .arg(&key_pem)
        .args(["--origin", AUDIT_ORIGIN])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert_eq!(report["entries"], log.len() + 1, "and the stop entry");
    assert_eq!(report["unsigned_tail"], 0);

    // No personal data anywhere in the store.
    for file in ["registry.db", "registry.db-wal"] {
        let bytes = std::fs::read(d.scratch().join(file)).unwrap_or_default();
        for personal in ["홍", "길동", "000515", "150101", "종로구", "SN-0000"] {
            assert!(
                !bytes
                    .windows(personal.len())
                    .any(|w| w == personal.as_bytes()),
                "{file} holds {personal}"
            );
        }
    }
}

#[test]
fn sigkill_under_load_loses_nothing_and_replays_answers() {
    let mut d = Daemon::start(Options::default());
    let clients = 6u32;
    let barrier = Arc::new(Barrier::new(clients as usize + 1));
    let threads: Vec<_> = (0..clients)
        .map(|t| {
            let target = d.api_target("counter", false);
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let mut client = softhsm_tests::https::Client::new(target);
                let _ = barrier.wait();
                let mut answers = BTreeMap::new();
                let mut pending = None;
                for n in 0u32.. {
                    let (jwk, _) = daemon::phone();
                    let body = serde_json::to_vec(&daemon::request(
                        if n % 2 == 0 { "mdoc" } else { "sd-jwt" },
                        &daemon::number(t * 10_000 + n),
                        &jwk,
                    ))
                    .unwrap();
                    let key = format!("load-{t}-{n}");
                    let headers = [
                        ("content-type", "application/json"),
                        ("idempotency-key", key.as_str()),
                    ];
                    match client.try_send("POST", "/v1/credentials", &headers, body.clone()) {
                        Ok(r) if r.status == 201 => {
                            let _ = answers.insert(key, r.body);
                        }
                        Ok(r) => panic!("{}: {}", r.status, String::from_utf8_lossy(&r.body)),
                        Err(_) => {
                            pending = Some((key, body));
                            break;
                        }
                    }
                }
                (answers, pending)
            })
        })
        .collect();
    let _ = barrier.wait();
    std::thread::sleep(Duration::from_millis(800));
    d.signal("KILL");
    let _ = d.wait_exit(Duration::from_secs(10));
    let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    // The start laid out the registry's log file, and the kill left it
    // holding transactions that are in no other file. The restart lays it
    // out again only once SQLite has copied them into the database (its
    // first connection recovers the log, and closing it copies it in):
    // the answers below are checked against what comes back.
    let laid_out = "the registry's log file laid out in full";
    let before_restart = d.log();
    assert!(before_restart.contains(laid_out), "{before_restart}");

    d.spawn();
    let restart = d.log().split_off(before_restart.len());
    assert!(restart.contains(laid_out), "{restart}");
    let mut client = d.client("counter");
    let mut answered = 0usize;
    for (answers, pending) in &results {
        // Answers given before the crash are replayed byte for byte.
        for body in answers.values().rev().take(3) {
            let r: serde_json::Value = serde_json::from_slice(body).unwrap();
            assert_eq!(
                client
                    .get(&format!("/v1/credentials/{}", r["id"].as_str().unwrap()))
                    .json()["state"],
                "active"
            );
        }
        answered += answers.len();
        // The request in flight at the crash: retried with its key, it either
        // committed before the crash (the same answer comes back) or not
        // (it is issued now). Either way exactly one credential.
        if let Some((key, body)) = pending {
            let r = client.send(
                "POST",
                "/v1/credentials",
                &[
                    ("content-type", "application/json"),
                    ("idempotency-key", key),
                ],
                body.clone(),
            );
            assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
            let again = client.send(
                "POST",
                "/v1/credentials",
                &[
                    ("content-type", "application/json"),
                    ("idempotency-key", key),
                ],
                body.clone(),
            );
            assert_eq!(again.body, r.body);
            answered += 1;
        }
    }
    // The registry and the log agree one to one, and the log verifies.
    let mut auditor = d.client("auditor");
    let log = entries(&mut auditor);
    let issued: Vec<&str> = log
        .iter()
        .filter(|e| e.action == "issue" && e.outcome == "allow")
        .map(|e| e.credential_id.as_deref().unwrap())
        .collect();
    let unique: HashSet<&str> = issued.iter().copied().collect();
    assert_eq!(unique.len(), issued.len(), "a credential with two entries");
    let db = rusqlite::Connection::open(d.scratch().join("registry.db")).unwrap();
    let mut stmt = db.prepare("SELECT id FROM credentials").unwrap();
    let stored: HashSet<String> = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(stored.len(), issued.len());
    assert!(issued.iter().all(|id| stored.contains(*id)));
    assert_eq!(
        stored.len(),
        answered,
        "every credential reached its client"
    );
    assert_eq!(
        log.iter().filter(|e| e.action == "start").count(),
        2,
        "two starts, no stop: it was killed"
    );
    let (size, _) = wait_checkpoint(&mut auditor, log.len() as u64);
    assert!(size >= log.len() as u64);
    // And the whole log, across the crash, verifies offline.
    d.signal("TERM");
    let status = d.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "exit {status}:\n{}", d.log());
    let _ = export_and_verify(&d, "after-crash", &["--min-size", &size.to_string()]);
}

/// Exports the log with `dojangctl audit export`, checks it with `dojangctl
/// audit verify` (plus `extra` arguments) against the exported key, and
/// returns that key (SPKI DER).
fn export_and_verify(d: &Daemon, name: &str, extra: &[&str]) -> Vec<u8> {
    let (bundle, key) = d.export_audit(name);
    let out = std::process::Command::new(softhsm_tests::workspace_binary("dojangctl"))
        .args(["audit", "verify"])
        .arg(&bundle)
        .arg("--key")
        .arg(&key)
        .args(["--origin", AUDIT_ORIGIN])
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    openssl::pkey::PKey::public_key_from_pem(&std::fs::read(&key).unwrap())
        .unwrap()
        .public_key_to_der()
        .unwrap()
}

#[test]
fn two_nodes_on_postgres_keep_one_log_and_the_invariants() {
    let Some(schema) = PgSchema::create() else {
        return;
    };
    let a = Daemon::start(Options {
        store: Store::Postgres(schema.url.clone()),
        node_id: "a".into(),
        ..Options::default()
    });
    let b = a.second_node("b");
    // 20 requests for one person on one phone over both nodes: exactly one
    // credential. (On different phones each would supersede the last.)
    let barrier = Arc::new(Barrier::new(20));
    let (phone, _) = daemon::phone();
    let handles: Vec<_> = (0..20)
        .map(|i| {
            let target = if i % 2 == 0 {
                a.api_target("counter", false)
            } else {
                b.api_target("counter", false)
            };
            let barrier = barrier.clone();
            let jwk = phone.clone();
            std::thread::spawn(move || {
                let request = daemon::request("mdoc", &daemon::number(777), &jwk);
                let mut c = softhsm_tests::https::Client::new(target);
                let _ = barrier.wait();
                c.post_json("/v1/credentials", &request, &[]).status
            })
        })
        .collect();
    let statuses: Vec<u16> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        1,
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 201 || *s == 409),
        "{statuses:?}"
    );
    // Then concurrent issuance over both nodes, and 40 people racing for one
    // phone: exactly one of them gets it.
    let streams: Vec<_> = (0..4u32)
        .map(|t| {
            let target = if t % 2 == 0 {
                a.api_target("counter", false)
            } else {
                b.api_target("gateway", false)
            };
            std::thread::spawn(move || {
                let mut c = softhsm_tests::https::Client::new(target);
                for n in 0..10u32 {
                    let (jwk, _) = daemon::phone();
                    let r = c.post_json(
                        "/v1/credentials",
                        &daemon::request("sd-jwt", &daemon::number(1000 + t * 100 + n), &jwk),
                        &[],
                    );
                    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
                }
            })
        })
        .collect();
    let shared_phone = daemon::phone().0;
    let barrier = Arc::new(Barrier::new(40));
    let racers: Vec<_> = (0..40u32)
        .map(|i| {
            let target = if i % 2 == 0 {
                a.api_target("counter", false)
            } else {
                b.api_target("counter", false)
            };
            let (barrier, jwk) = (barrier.clone(), shared_phone.clone());
            std::thread::spawn(move || {
                let request = daemon::request("mdoc", &daemon::number(5000 + i), &jwk);
                let mut c = softhsm_tests::https::Client::new(target);
                let _ = barrier.wait();
                c.post_json("/v1/credentials", &request, &[]).status
            })
        })
        .collect();
    for s in streams {
        s.join().unwrap();
    }
    let raced: Vec<u16> = racers.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(raced.iter().filter(|s| **s == 201).count(), 1, "{raced:?}");
    assert!(raced.iter().all(|s| *s == 201 || *s == 409), "{raced:?}");
    let answered = 1 + 40 + 1;
    let mut auditor = b.client("auditor");
    let log = entries(&mut auditor);
    let issued = log
        .iter()
        .filter(|e| e.action == "issue" && e.outcome == "allow")
        .count();
    assert_eq!(issued, answered);
    // Every stored credential has exactly one issuance entry, and no entry
    // names a credential the registry lacks.
    let mut pg = PgSchema::admin();
    let stored: HashSet<String> = pg
        .query(&format!("SELECT id FROM {}.credentials", schema.name), &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let logged: Vec<&str> = log
        .iter()
        .filter(|e| e.action == "issue" && e.outcome == "allow")
        .map(|e| e.credential_id.as_deref().unwrap())
        .collect();
    assert_eq!(logged.len(), stored.len());
    assert!(logged.iter().all(|id| stored.contains(*id)));
    // Through PostgreSQL's queue too, each entry names the certificate.
    let presented: Vec<(&str, Option<[u8; 32]>)> =
        [("counter", "office-counter"), ("gateway", "wallet-gateway")]
            .into_iter()
            .flat_map(|(file, identity)| {
                [&a, &b].map(|d| (identity, Some(certificate_sha256(d, file))))
            })
            .collect();
    for e in log.iter().filter(|e| e.action == "issue") {
        assert!(
            presented
                .iter()
                .any(|(identity, c)| e.actor.ends_with(identity) && *c == e.actor_certificate),
            "{e:?}"
        );
    }
    let denied = log.iter().filter(|e| e.outcome == "deny").count();
    // Each losing racer was refused by the policy (recorded) or by the
    // database's unique index at commit (nothing to record: nothing decided).
    assert!(denied <= 19 + 39);
    // The two nodes, and the key ceremony's dojangctl.
    let nodes: HashSet<&str> = log.iter().map(|e| e.node.as_str()).collect();
    assert_eq!(nodes.len(), 3, "{nodes:?}");
    for node in nodes {
        let seqs: Vec<u64> = log
            .iter()
            .filter(|e| e.node == node)
            .map(|e| e.seq)
            .collect();
        assert_eq!(
            seqs,
            (0..seqs.len() as u64).collect::<Vec<_>>(),
            "node {node}"
        );
    }
    // One log: both nodes serve the same checkpoints.
    let (size, note) = wait_checkpoint(&mut auditor, log.len() as u64);
    let from_a = a.client("auditor").get("/v1/audit/checkpoint").json();
    let der = export_and_verify(&a, "pg-audit", &["--allow-unsigned-tail"]);
    let key = NoteKey::new(
        AUDIT_ORIGIN,
        pkcs11_shim::PublicKey::from_spki_der(&der).unwrap(),
    )
    .unwrap();
    assert_eq!(Checkpoint::open(&note, &key).unwrap().size, size);
    // Node a serves checkpoints of the same log, signed by the same key.
    let theirs = Checkpoint::open(from_a["note"].as_str().unwrap(), &key).unwrap();
    assert!(theirs.size <= log.len() as u64 + 2);
    drop(b);
    drop(a);
    drop(schema);
}

#[test]
fn an_unwritable_audit_log_stops_signing_until_it_is_back() {
    let Some(schema) = PgSchema::create() else {
        return;
    };
    // The daemon connects as its own role, which an operator can lock out.
    let role = format!("{}_daemon", schema.name);
    let mut admin = PgSchema::admin();
    admin
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN; GRANT ALL ON SCHEMA {s} TO {role}; \
             ALTER DEFAULT PRIVILEGES IN SCHEMA {s} GRANT ALL ON TABLES TO {role}",
            s = schema.name
        ))
        .unwrap();
    let url = schema.url.replace("user=postgres", &format!("user={role}"));
    let d = Daemon::start(Options {
        store: Store::Postgres(url),
        ..Options::default()
    });
    assert_eq!(issue(&d, 1, "mdoc", None).status, 201);
    admin
        .batch_execute(&format!(
            "REVOKE INSERT, UPDATE ON {s}.audit_queue, {s}.audit_log, {s}.audit_head FROM {role}",
            s = schema.name
        ))
        .unwrap();
    let refused = issue(&d, 2, "mdoc", None);
    assert_eq!(
        refused.status,
        503,
        "{}",
        String::from_utf8_lossy(&refused.body)
    );
    assert!(refused.header("retry-after").is_some());
    std::thread::sleep(Duration::from_millis(1100));
    let ready = d.ops_client().get("/readyz");
    assert_eq!(ready.status, 503);
    let checks = ready.json()["checks"].clone();
    let audit = checks
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "audit_log")
        .unwrap()
        .clone();
    assert_eq!(audit["ok"], false);
    // Nothing was signed-and-kept without its entry.
    let mut check = PgSchema::admin();
    let count = |c: &mut postgres::Client, table: &str| -> i64 {
        c.query_one(
            &format!("SELECT COUNT(*) FROM {}.{table}", schema.name),
            &[],
        )
        .unwrap()
        .get(0)
    };
    assert_eq!(count(&mut check, "credentials"), 1);

    admin
        .batch_execute(&format!(
            "GRANT INSERT, UPDATE ON {s}.audit_queue, {s}.audit_log, {s}.audit_head TO {role}",
            s = schema.name
        ))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while d.ops_client().get("/readyz").status != 200 {
        assert!(Instant::now() < deadline, "not ready again");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(issue(&d, 3, "mdoc", None).status, 201);
    assert_eq!(count(&mut check, "credentials"), 2);
    drop(d);
    let _ = admin.batch_execute(&format!(
        "DROP SCHEMA IF EXISTS {s} CASCADE; DROP OWNED BY {role}; DROP ROLE IF EXISTS {role}",
        s = schema.name
    ));
}

#[test]
fn the_audit_key_rotates_and_auditors_follow_the_hand_over() {
    let d = Daemon::start(Options::default());
    let mut auditor = d.client("auditor");
    assert_eq!(issue(&d, 1, "mdoc", None).status, 201);
    let (before, first_note) = wait_checkpoint(&mut auditor, 1);
    let old_signers = Checkpoint::signer_ids(&first_note);
    let anchor = d.chain_keys("audit")[0].clone();
    // Two officers rotate the audit key and make it sign now.
    let _ = d.dual_control(
        "kim",
        "lee",
        "/v1/keys/rotate",
        &serde_json::json!({"chain": "audit"}),
    );
    let next = d.chain_keys("audit")[1].clone();
    let _ = d.dual_control(
        "lee",
        "park",
        &format!("/v1/keys/{}/activate", next["label"].as_str().unwrap()),
        &serde_json::json!({}),
    );
    assert_eq!(issue(&d, 2, "mdoc", None).status, 201);
    // The first checkpoint after the switch carries both signatures. (The
    // officers' own entries may have been checkpointed by the old key
    // before the switch: wait for the first one the new key signed.)
    let deadline = Instant::now() + Duration::from_secs(15);
    let (handover_size, handover) = loop {
        let (size, note) = wait_checkpoint(&mut auditor, before + 2);
        if Checkpoint::signer_ids(&note)
            .iter()
            .any(|id| !old_signers.contains(id))
        {
            break (size, note);
        }
        assert!(Instant::now() < deadline, "no checkpoint by the new key");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(Checkpoint::signer_ids(&handover).len(), 2, "{handover}");
    let listed = auditor.get("/v1/audit/checkpoint").json();
    assert_eq!(listed["keys"].as_array().unwrap().len(), 2);
    assert_eq!(issue(&d, 3, "mdoc", None).status, 201);
    let (_, later) = wait_checkpoint(&mut auditor, handover_size + 1);
    assert_eq!(Checkpoint::signer_ids(&later).len(), 1, "{later}");
    // The auditor pins the first key; the export verifies through the
    // hand-over, and names that anchor.
    let pinned = export_and_verify(&d, "rotated", &["--allow-unsigned-tail"]);
    let anchor_der = openssl::pkey::PKey::public_key_from_pem(
        listed["keys"][0]["public_key_pem"]
            .as_str()
            .unwrap()
            .as_bytes(),
    )
    .unwrap()
    .public_key_to_der()
    .unwrap();
    assert_eq!(pinned, anchor_der);
    let keys = d.chain_keys("audit");
    assert_eq!(keys[0]["label"], anchor["label"]);
    assert_eq!(keys[0]["state"], "retired");
    // Officers' steps name the certificate each officer presented.
    let officers = [
        ("kim", certificate_sha256(&d, "kim")),
        ("lee", certificate_sha256(&d, "lee")),
        ("park", certificate_sha256(&d, "park")),
    ];
    let steps: Vec<AuditEntry> = entries(&mut auditor)
        .into_iter()
        .filter(|e| e.action.starts_with("officers."))
        .collect();
    assert!(steps.len() >= 3, "{steps:?}");
    for e in &steps {
        assert!(
            officers
                .iter()
                .any(|(name, c)| e.actor.contains(name) && e.actor_certificate == Some(*c)),
            "{e:?}"
        );
    }
}

#[test]
fn every_ds_signature_is_accounted_for_by_the_audit_log() {
    let d = Daemon::start(Options::default());
    let mut auditor = d.client("auditor");
    let mut counter = d.client("counter");
    // Signatures: issuances of both formats, a refresh; no signature: an
    // idempotent replay, a refused request, a sample from dojangctl (it
    // cannot reach this token).
    let mut issued = Vec::new();
    let mut requests = Vec::new();
    for (n, profile) in [(1, "mdoc"), (2, "sd-jwt"), (3, "mdoc")] {
        let (jwk, _) = daemon::phone();
        let request = daemon::request(profile, &daemon::number(n), &jwk);
        let reply = counter.post_json(
            "/v1/credentials",
            &request,
            &[("idempotency-key", &format!("order-{n}"))],
        );
        assert_eq!(reply.status, 201, "{}", reply.json());
        issued.push(reply.json());
        requests.push(request);
    }
    let replay = counter.post_json(
        "/v1/credentials",
        &requests[0],
        &[("idempotency-key", "order-1")],
    );
    assert_eq!(replay.status, 201, "replay: {}", replay.json());
    assert_eq!(replay.json()["id"], issued[0]["id"]);
    let refused = d
        .client("stranger")
        .post_json("/v1/credentials", &requests[2], &[]);
    assert_eq!(refused.status, 403, "a client without the issuer role");
    let id = issued[1]["id"].as_str().unwrap();
    let body = serde_json::json!({
        "holder": requests[1]["holder"],
        "device_key": requests[1]["device_key"],
    });
    let refreshed = counter.post_json(&format!("/v1/credentials/{id}/refresh"), &body, &[]);
    assert_eq!(refreshed.status, 200, "{}", refreshed.json());
    let pin = d.scratch().join("pin");
    let sample = d.try_ctl(&[
        "credential",
        "sample",
        "--format",
        "mdoc",
        "--token",
        "dojangd",
        "--pin-file",
        pin.to_str().unwrap(),
    ]);
    assert!(
        !sample.status.success(),
        "a sample was signed with the daemon's token"
    );
    assert!(
        String::from_utf8_lossy(&sample.stderr).contains("is the configured token"),
        "{}",
        String::from_utf8_lossy(&sample.stderr)
    );

    let ds = d.keys()[0].clone();
    let kid = ds["kid"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let signed_in_log = entries(&mut auditor)
            .iter()
            .filter(|e| e.key_id.as_deref() == Some(kid.as_str()) && e.payload_sha256.is_some())
            .count();
        let counted = d.keys()[0]["signatures"].as_u64().unwrap();
        if signed_in_log == 4 && counted == 4 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "DS signatures: {signed_in_log} in the audit log, {counted} on the key's counter, 4 made"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
