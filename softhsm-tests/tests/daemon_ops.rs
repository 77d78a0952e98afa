//! The daemon as operators run it: timeouts against slow clients, the HSM
//! going away and coming back, SIGHUP reloads good and bad, SIGTERM
//! draining, and metrics a Prometheus server can read.
#![allow(clippy::unwrap_used)]
#![allow(clippy::indexing_slicing, clippy::panic, clippy::expect_used)] // test code: a failed expect, panic or index is a failed test

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use softhsm_tests::daemon::{self, Daemon, Options};

fn issue(d: &Daemon, client: &str, n: u32, profile: &str) -> softhsm_tests::https::Reply {
    let (jwk, _) = daemon::phone();
    d.client(client).post_json(
        "/v1/credentials",
        &daemon::request(profile, &daemon::number(n), &jwk),
        &[],
    )
}

#[test]
fn slow_and_idle_connections_are_closed_while_others_are_served() {
    let d = Daemon::start(Options {
        limits: "header_read_timeout_ms = 500\nidle_timeout_ms = 1500".into(),
        ..Options::default()
    });
    let open = |d: &Daemon| {
        softhsm_tests::https::raw_tls(
            d.api,
            &d.tls.join("ca.pem"),
            Some((&d.tls.join("counter.pem"), &d.tls.join("counter.key"))),
        )
    };
    // Headers that never finish.
    let mut slow = open(&d);
    slow.write_all(b"POST /v1/credentials HTTP/1.1\r\nhost: localhost\r\n")
        .unwrap();
    let started = Instant::now();
    // Meanwhile another client is served.
    assert_eq!(issue(&d, "counter", 1, "mdoc").status, 201);
    let _ = softhsm_tests::https::read_all(&mut slow);
    let slow_closed = started.elapsed();
    assert!(
        slow_closed < Duration::from_secs(5),
        "slow headers held the connection for {slow_closed:?}"
    );

    // An idle HTTP/2 connection is closed by the idle timeout, a busy one
    // is kept.
    let mut h2 = softhsm_tests::https::Client::new(d.api_target("counter", true));
    assert_eq!(h2.get("/v1/credentials/x").status, 404);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(h2.get("/v1/credentials/x").status, 404, "closed too early");
    std::thread::sleep(Duration::from_millis(4000));
    let late = h2.try_send("GET", "/v1/credentials/x", &[], Vec::new());
    assert!(late.is_err(), "idle connection still open: {late:?}");
    let mut fresh = softhsm_tests::https::Client::new(d.api_target("counter", true));
    assert_eq!(fresh.get("/v1/credentials/x").status, 404);
}

/// Sends `bytes` (over and over) `chunk` bytes every `every` until the
/// server closes the connection; how long after the first write it did
/// (`None`: not within `give_up`).
fn trickle_until_closed(
    tls: &mut openssl::ssl::SslStream<std::net::TcpStream>,
    bytes: &[u8],
    chunk: usize,
    every: Duration,
    give_up: Duration,
) -> Option<Duration> {
    use std::io::Read;
    tls.get_ref()
        .set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    for piece in bytes.chunks(chunk).cycle() {
        if started.elapsed() > give_up {
            return None;
        }
        if tls.write_all(piece).is_err() {
            return Some(started.elapsed());
        }
        let until = Instant::now() + every;
        while Instant::now() < until {
            match tls.read(&mut buf) {
                Ok(0) => return Some(started.elapsed()),
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return Some(started.elapsed()),
            }
        }
    }
    None
}

#[test]
fn trickled_http2_headers_are_cut_by_the_header_timeout_and_http1_idles_by_the_idle_timeout() {
    let d = Daemon::start(Options {
        limits: "header_read_timeout_ms = 500\nidle_timeout_ms = 6000".into(),
        ..Options::default()
    });
    let counter = (d.tls.join("counter.pem"), d.tls.join("counter.key"));
    let ca = d.tls.join("ca.pem");
    let h2 = |d: &Daemon| {
        let mut tls = softhsm_tests::https::raw_tls_alpn(
            d.api,
            &ca,
            Some((&counter.0, &counter.1)),
            b"\x02h2",
        );
        assert_eq!(tls.ssl().selected_alpn_protocol(), Some(&b"h2"[..]));
        tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
        tls.write_all(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]).unwrap(); // empty SETTINGS
        tls
    };
    // A HEADERS frame announcing 200 bytes of header block, sent a byte at
    // a time: cut at the header timeout (500 ms), not the idle one (6 s).
    let mut slow = h2(&d);
    let mut frame = vec![0, 0, 200, 0x1, 0x4, 0, 0, 0, 1];
    frame.extend(std::iter::repeat_n(0x82u8, 200));
    let closed = trickle_until_closed(
        &mut slow,
        &frame,
        1,
        Duration::from_millis(100),
        Duration::from_secs(15),
    )
    .expect("a trickled HEADERS frame held the connection for 15 s");
    assert!(
        closed >= Duration::from_millis(400) && closed < Duration::from_millis(3000),
        "trickled HTTP/2 headers closed after {closed:?}"
    );
    // The same through a header block of small complete frames: a HEADERS
    // without END_HEADERS, then a whole CONTINUATION every 200 ms.
    let mut blocky = h2(&d);
    blocky
        .write_all(&[0, 0, 1, 0x1, 0, 0, 0, 0, 1, 0x82])
        .unwrap();
    let continuation = [0u8, 0, 1, 0x9, 0, 0, 0, 0, 1, 0x84];
    let started = Instant::now();
    let closed = trickle_until_closed(
        &mut blocky,
        &continuation,
        continuation.len(),
        Duration::from_millis(200),
        Duration::from_secs(15),
    )
    .map(|_| started.elapsed())
    .expect("an open header block held the connection for 15 s");
    assert!(
        closed < Duration::from_millis(3000),
        "open header block closed after {closed:?}"
    );

    // A kept-alive HTTP/1.1 connection idle past the header timeout but not
    // the idle timeout is still open; it closes at the idle timeout.
    let mut h1 = softhsm_tests::https::Client::new(d.api_target("counter", false));
    assert_eq!(h1.get("/v1/credentials/x").status, 404);
    std::thread::sleep(Duration::from_millis(1500));
    let kept = h1.try_send("GET", "/v1/credentials/x", &[], Vec::new());
    assert_eq!(
        kept.map(|r| r.status),
        Ok(404),
        "an HTTP/1.1 keep-alive idle was cut by the header timeout"
    );
    std::thread::sleep(Duration::from_millis(8000));
    let late = h1.try_send("GET", "/v1/credentials/x", &[], Vec::new());
    assert!(
        late.is_err(),
        "an HTTP/1.1 idle connection outlived the idle timeout"
    );
    // Trickled HTTP/1.1 headers are still cut at the header timeout.
    let mut slow_h1 = softhsm_tests::https::raw_tls(d.api, &ca, Some((&counter.0, &counter.1)));
    let closed = trickle_until_closed(
        &mut slow_h1,
        b"GET /v1/credentials/x HTTP/1.1\r\nhost: localhost\r\nx-pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        1,
        Duration::from_millis(100),
        Duration::from_secs(15),
    )
    .expect("trickled HTTP/1.1 headers held the connection for 15 s");
    assert!(
        closed < Duration::from_millis(3000),
        "trickled HTTP/1.1 headers closed after {closed:?}"
    );
}

#[test]
fn hsm_loss_gives_503_and_not_ready_then_recovers_by_itself() {
    let mut d = Daemon::start(Options {
        via_p11kit: true,
        ..Options::default()
    });
    assert_eq!(issue(&d, "counter", 1, "mdoc").status, 201);
    d.p11kit().kill();
    let reply = issue(&d, "counter", 2, "mdoc");
    assert_eq!(
        reply.status,
        503,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert!(reply.header("retry-after").is_some());
    let code = reply.json()["code"].clone();
    assert_eq!(code, "hsm_unavailable");
    std::thread::sleep(Duration::from_millis(1100)); // readiness is cached for a second
    let ready = d.ops_client().get("/readyz");
    assert_eq!(ready.status, 503);
    let checks = ready.json()["checks"].clone();
    assert_eq!(checks[0]["name"], "key_backend");
    assert_eq!(checks[0]["ok"], false);

    d.p11kit().restart();
    d.wait_ready(Duration::from_secs(20));
    assert_eq!(issue(&d, "counter", 3, "sd-jwt").status, 201);
}

/// A key view rebuilt while the token is gone (here by a SIGHUP; in CI
/// once by a round that found a registry change) holds no DS signer. The
/// registry does not change when the token comes back, so the view must be
/// built again for the token's sake, or issuance stays refused for good.
#[test]
fn a_key_view_built_while_the_hsm_is_lost_is_built_again_once_it_is_back() {
    let mut d = Daemon::start(Options {
        via_p11kit: true,
        ..Options::default()
    });
    assert_eq!(issue(&d, "counter", 1, "mdoc").status, 201);
    d.p11kit().kill();
    d.signal("HUP");
    d.wait_for_log("no DS key can sign: issuance refused until one is ready", 1);
    assert_eq!(issue(&d, "counter", 2, "mdoc").status, 503);

    d.p11kit().restart();
    d.wait_ready(Duration::from_secs(20));
    assert_eq!(issue(&d, "counter", 3, "sd-jwt").status, 201);
}

/// Operators tell threads apart by name (`top -H`, `perf`, `ionice` see
/// the 15 bytes Linux keeps); ARCHITECTURE.md lists them.
#[test]
fn each_thread_shows_under_a_name_of_its_own() {
    let d = Daemon::start(Options::default());
    let names: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", d.pid()))
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|name| name.trim_end().to_owned())
        .collect();
    // tokio's workers share theirs (`dojang-io`), as the list says.
    let mut seen = std::collections::HashSet::new();
    let shared: Vec<&String> = names
        .iter()
        .filter(|name| *name != "dojang-io" && !seen.insert(name.as_str()))
        .collect();
    assert!(shared.is_empty(), "{shared:?} name two threads: {names:?}");
    for pool in ["dojang-sign-0", "dojang-pub-0", "dojang-proof-0"] {
        assert!(names.iter().any(|n| n == pool), "{pool} in {names:?}");
    }
}

#[test]
fn a_second_daemon_of_the_same_registry_is_refused_before_it_writes() {
    let mut d = Daemon::start(Options::default());
    assert_eq!(d.audit_count("tls.load"), 1);
    // The unit started twice, or an operator's copy of the configuration.
    let said = d.second_start_refused();
    assert!(said.contains("the SQLite registry is in use"), "{said}");
    assert!(
        said.contains(&format!("held by process {} (dojangd serve)", d.pid())),
        "{said}"
    );
    // Nothing of the refused process reached the log; the first serves on.
    assert_eq!(d.audit_count("tls.load"), 1);
    assert_eq!(issue(&d, "counter", 1, "mdoc").status, 201);
    // A "stale lock" removed by hand: the daemon locks a new file at once,
    // counts it, and a second start is still refused.
    let lock_events = |d: &Daemon| {
        let text = String::from_utf8(d.ops_client().get("/metrics").body).unwrap();
        let metrics = parse_metrics(&text);
        ["retaken", "unreachable", "lost"]
            .map(|event| metrics[&format!("dojang_node_lock_events_total{{event=\"{event}\"}}")])
    };
    assert_eq!(lock_events(&d), [0.0, 0.0, 0.0]);
    std::fs::remove_file(d.scratch().join("registry.db.lock")).unwrap();
    d.wait_for_log("lock taken again", 1);
    assert_eq!(lock_events(&d), [1.0, 0.0, 0.0]);
    assert!(d
        .second_start_refused()
        .contains("the SQLite registry is in use"));
    // A daemon killed outright leaves its lock file, not its lock.
    d.signal("KILL");
    let _ = d.wait_exit(Duration::from_secs(10));
    d.spawn();
    assert_eq!(d.audit_count("tls.load"), 2);
    assert_eq!(issue(&d, "counter", 2, "mdoc").status, 201);
}

#[test]
fn sighup_applies_a_good_policy_and_refuses_a_broken_one() {
    let d = Daemon::start(Options::default());
    assert_eq!(issue(&d, "gateway", 1, "mdoc").status, 201);
    let adopted = std::fs::read_to_string(&d.policy).unwrap();

    // A broken policy: refused, the old one stays.
    std::fs::write(&d.policy, "name = \"broken\"\nbogus = 1\n").unwrap();
    d.signal("HUP");
    d.wait_for_log("reload refused", 1);
    assert_eq!(issue(&d, "gateway", 2, "mdoc").status, 201);

    // A broken CRL file: refused as a whole too.
    let crl = d.tls.join("crl.pem");
    let good_crl = std::fs::read(&crl).unwrap();
    std::fs::write(
        &crl,
        "-----BEGIN X509 CRL-----\nnot a CRL\n-----END X509 CRL-----\n",
    )
    .unwrap();
    std::fs::write(&d.policy, &adopted).unwrap();
    d.signal("HUP");
    d.wait_for_log("reload refused", 2);
    assert_eq!(issue(&d, "counter", 3, "mdoc").status, 201);
    std::fs::write(&crl, good_crl).unwrap();

    // A good policy that drops the gateway: not loaded until two officers
    // adopt it, then the gateway loses access at once.
    let without_gateway = adopted.replace(
        "identity = \"spiffe://mois.go.kr/wallet-gateway\"",
        "identity = \"spiffe://mois.go.kr/retired-gateway\"",
    );
    std::fs::write(&d.policy, &without_gateway).unwrap();
    d.signal("HUP");
    d.wait_for_log("reload refused", 3);
    assert!(d.log().contains("officers adopted"), "{}", d.log());
    assert_eq!(issue(&d, "gateway", 6, "mdoc").status, 201);
    let hash = dojang_policies::Policy::parse("new", &without_gateway)
        .unwrap()
        .hash;
    let file = d.policy.display().to_string();
    let opened = d.officer_ctl("kim", &["policy", "propose", &file]).unwrap();
    // The proposal carries the text, which the officers are shown in full.
    assert!(
        opened.contains(&hash)
            && opened.contains("| identity = \"spiffe://mois.go.kr/retired-gateway\""),
        "{opened}"
    );
    let id = d.open_proposal_id("lee");
    let approved = d.approve("lee", &id).unwrap();
    assert!(
        approved["result"]
            .as_str()
            .unwrap()
            .contains("adopted and loaded"),
        "{approved}"
    );
    let reply = issue(&d, "gateway", 4, "mdoc");
    assert_eq!(
        reply.status,
        403,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(issue(&d, "counter", 5, "sd-jwt").status, 201);
}

#[test]
fn sighup_applies_a_new_crl_to_new_connections() {
    let d = Daemon::start(Options::default());
    assert_eq!(issue(&d, "counter", 1, "mdoc").status, 201);
    // A connection the client opened before the reload.
    let mut before = d.client("counter");
    assert_eq!(before.get("/v1/credentials/x").status, 404);
    let _ = std::fs::copy(d.tls.join("crl-counter-revoked.pem"), d.tls.join("crl.pem")).unwrap();
    d.signal("HUP");
    d.wait_for_log("reloaded TLS files", 1);
    let (jwk, _) = daemon::phone();
    let refused = d.client("counter").try_send(
        "POST",
        "/v1/credentials",
        &[("content-type", "application/json")],
        serde_json::to_vec(&daemon::request("mdoc", &daemon::number(2), &jwk)).unwrap(),
    );
    assert!(refused.is_err(), "a revoked client was let in: {refused:?}");
    // Its old connection was closed by the reload too.
    std::thread::sleep(Duration::from_millis(300));
    let old = before.try_send("GET", "/v1/credentials/x", &[], Vec::new());
    assert!(
        old.is_err(),
        "a connection from before the CRL still serves: {old:?}"
    );
    // Other clients are unaffected.
    assert_eq!(issue(&d, "gateway", 3, "mdoc").status, 201);
}

#[test]
fn a_changed_client_crl_file_applies_without_a_signal_and_readiness_watches_it() {
    let d = Daemon::start(Options::default());
    let ready = d.ops_client().get("/readyz").json();
    let detail = ready["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "client_crls")
        .map(|c| c["detail"].as_str().unwrap().to_owned())
        .expect("a client_crls check");
    assert!(detail.contains("nextUpdate in"), "{detail}");
    let metrics = String::from_utf8(d.ops_client().get("/metrics").body).unwrap();
    assert!(
        metrics.contains("dojang_client_crl_next_update_seconds{file=\"crl.pem\"}"),
        "{metrics}"
    );
    assert_eq!(issue(&d, "counter", 1, "mdoc").status, 201);
    // The CA revokes `counter`; the operator replaces the file, no SIGHUP.
    let _ = std::fs::copy(d.tls.join("crl-counter-revoked.pem"), d.tls.join("crl.pem")).unwrap();
    d.wait_for_log("a client CRL file changed", 1);
    d.wait_for_log("reloaded TLS files", 1);
    let (jwk, _) = daemon::phone();
    let refused = d.client("counter").try_send(
        "POST",
        "/v1/credentials",
        &[("content-type", "application/json")],
        serde_json::to_vec(&daemon::request("mdoc", &daemon::number(2), &jwk)).unwrap(),
    );
    assert!(refused.is_err(), "a revoked client was let in: {refused:?}");
    assert_eq!(issue(&d, "gateway", 3, "mdoc").status, 201);
}

/// `sha256:HEX` of the DER of the first PEM object in `path` (a
/// certificate or a CRL), as `openssl … -outform DER | sha256sum` gives.
fn der_fingerprint(path: &std::path::Path) -> String {
    let pem = std::fs::read(path).unwrap();
    let der = openssl::x509::X509::from_pem(&pem)
        .and_then(|c| c.to_der())
        .or_else(|_| openssl::x509::X509Crl::from_pem(&pem).and_then(|c| c.to_der()))
        .unwrap();
    let hex: String = openssl::sha::sha256(&der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

#[test]
fn what_the_listeners_loaded_is_audited_by_fingerprint_and_no_entry_names_a_host_path() {
    let d = Daemon::start(Options::default());
    let ca = der_fingerprint(&d.tls.join("ca.pem"));
    let crl_before = der_fingerprint(&d.tls.join("crl.pem"));
    let api_certificate = der_fingerprint(&d.tls.join("server.pem"));
    let iaca = der_fingerprint(&d.scratch().join("pki/iaca.pem"));
    assert_eq!(issue(&d, "counter", 1, "mdoc").status, 201);
    let _ = std::fs::copy(d.tls.join("crl-counter-revoked.pem"), d.tls.join("crl.pem")).unwrap();
    let crl_after = der_fingerprint(&d.tls.join("crl.pem"));
    assert_ne!(crl_before, crl_after);
    d.signal("HUP");
    d.wait_for_log("reloaded TLS files", 1);
    let entries = d.audit_entries();
    let entry = |action: &str| {
        entries
            .iter()
            .find(|e| e.contains(action))
            .unwrap_or_else(|| panic!("no {action} entry in {entries:#?}"))
    };
    let start = entry("tls.load");
    for expected in [
        format!("client-ca {ca}"),
        format!("client-crl {crl_before}"),
        format!("api-certificate {api_certificate}"),
    ] {
        assert!(start.contains(&expected), "{expected} not in {start:?}");
    }
    // SIGHUP's reload, and maybe the CRL watcher's before it: each names
    // the new list only.
    let reloads: Vec<&String> = entries.iter().filter(|e| e.contains("reload")).collect();
    assert!(!reloads.is_empty(), "no reload entry in {entries:#?}");
    for reload in reloads {
        assert!(
            reload.contains(&format!("client-crl {crl_after}")),
            "{reload:?}"
        );
        assert!(!reload.contains(&crl_before), "{reload:?}");
    }
    assert!(entry("pki.iaca").contains(&format!("IACA {iaca}")));
    // Entries say what, never where: no path of this host is in the log.
    let root = d.scratch().to_str().unwrap().to_owned();
    let tls = d.tls.to_str().unwrap().to_owned();
    for e in &entries {
        assert!(
            !e.contains(&root) && !e.contains(&tls) && !e.contains("/tmp/"),
            "an entry names a host path: {e:?}"
        );
    }
}

/// A registry row naming a policy whose text no node has (SQLite).
fn adopt_elsewhere(d: &Daemon) {
    let db = rusqlite::Connection::open(d.scratch().join("registry.db")).unwrap();
    let _ = db
        .execute(
            "UPDATE pki_documents SET body = ?1 WHERE name = 'policy.sha256'",
            ["ab".repeat(32)],
        )
        .unwrap();
}

#[test]
fn sigterm_answers_every_request_it_committed_then_exits() {
    let mut d = Daemon::start(Options::default());
    let clients = 8;
    let barrier = Arc::new(Barrier::new(clients + 1));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let threads: Vec<_> = (0..clients as u32)
        .map(|t| {
            let target = d.api_target("counter", false);
            let barrier = barrier.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut client = softhsm_tests::https::Client::new(target);
                let _ = barrier.wait();
                let mut issued = 0u32;
                for n in 0u32.. {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    let (jwk, _) = daemon::phone();
                    let request = daemon::request("mdoc", &daemon::number(t * 10_000 + n), &jwk);
                    let body = serde_json::to_vec(&request).unwrap();
                    match client.try_send(
                        "POST",
                        "/v1/credentials",
                        &[("content-type", "application/json")],
                        body,
                    ) {
                        Ok(r) if r.status == 201 => issued += 1,
                        // Stopping: refused before any work, with Retry-After.
                        Ok(r) if r.status == 503 => {
                            assert_eq!(r.json()["code"], "shutting_down");
                            assert!(r.header("retry-after").is_some());
                            break;
                        }
                        Ok(r) => panic!("{}: {}", r.status, String::from_utf8_lossy(&r.body)),
                        Err(e) => {
                            eprintln!("client {t}: {e}");
                            break;
                        }
                    }
                }
                issued
            })
        })
        .collect();
    let _ = barrier.wait();
    std::thread::sleep(Duration::from_millis(700));
    d.signal("TERM");
    let status = d.wait_exit(Duration::from_secs(15));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let answered: u32 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert!(status.success(), "exit status {status}:\n{}", d.log());
    assert!(answered > 0);
    let log = d.log();
    assert!(log.contains("draining"), "{log}");
    assert!(log.contains("stopped"), "{log}");
    // Every issuance the registry committed reached its client.
    let db = rusqlite::Connection::open(d.scratch().join("registry.db")).unwrap();
    let credentials: i64 = db
        .query_row("SELECT COUNT(*) FROM credentials", [], |r| r.get(0))
        .unwrap();
    assert_eq!(credentials, i64::from(answered));
}

/// Parses the Prometheus text format strictly enough to catch a malformed
/// exposition: `# HELP`/`# TYPE` comments and `name{labels} value` samples.
fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix("# ") {
            assert!(
                [
                    "HELP dojang_",
                    "TYPE dojang_",
                    "HELP process_",
                    "TYPE process_"
                ]
                .iter()
                .any(|p| comment.starts_with(p)),
                "{line}"
            );
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("value in {line}"));
        let name = series.split('{').next().unwrap();
        // Ours, and the standard process_* metrics.
        assert!(
            name.starts_with("dojang_") || name.starts_with("process_"),
            "{line}"
        );
        assert!(
            name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
            "{line}"
        );
        if let Some(labels) = series.strip_prefix(name) {
            if !labels.is_empty() {
                assert!(labels.starts_with('{') && labels.ends_with('}'), "{line}");
            }
        }
        let _ = samples.insert(series.to_owned(), value);
    }
    samples
}

#[test]
fn metrics_parse_and_move() {
    let d = Daemon::start(Options::default());
    let mut ops = d.ops_client();
    assert_eq!(ops.get("/healthz").status, 200);
    let before = parse_metrics(&String::from_utf8(ops.get("/metrics").body).unwrap());
    assert_eq!(before["dojang_key_backend_up"], 1.0);
    assert_eq!(before["dojang_build_info{version=\"0.1.0\"}"], 1.0);
    assert_eq!(before["dojang_free_quota_remaining"], 468_000.0);
    // The standard process metrics, read from the daemon's /proc/self.
    assert!(before["process_resident_memory_bytes"] > 1_048_576.0);
    assert!(before["process_open_fds"] >= 3.0);
    assert!(before["process_threads"] >= 2.0);
    assert!(before["process_start_time_seconds"] > 1.7e9);
    assert!(before["process_max_fds"] >= 64.0);
    assert!(before.contains_key("process_cpu_seconds_total"));
    assert!(before["dojang_ds_certificate_expiry_seconds{key=\"ds-1\"}"] > 86_400.0);
    // DS keys only: the status-list and audit keys have no certificate.
    assert!(
        before
            .keys()
            .filter(|k| k.starts_with("dojang_ds_certificate_expiry_seconds"))
            .all(|k| k.contains("key=\"ds-")),
        "{before:?}"
    );

    assert_eq!(issue(&d, "counter", 1, "mdoc").status, 201);
    let mut young = daemon::request("mdoc", "150101-3123456", &daemon::phone().0);
    young["card"]["issue_date"] = "2021-03-02".into();
    assert_eq!(
        d.client("counter")
            .post_json("/v1/credentials", &young, &[])
            .status,
        422
    );
    let after = parse_metrics(&String::from_utf8(ops.get("/metrics").body).unwrap());
    let get = |m: &BTreeMap<String, f64>, k: &str| m.get(k).copied().unwrap_or(0.0);
    assert_eq!(
        get(
            &after,
            "dojang_issuances_total{outcome=\"issued\",profile=\"mdoc\"}"
        ) - get(
            &before,
            "dojang_issuances_total{outcome=\"issued\",profile=\"mdoc\"}"
        ),
        1.0
    );
    assert_eq!(
        get(
            &after,
            "dojang_policy_denials_total{rule=\"holder.minimum_age\"}"
        ),
        1.0
    );
    assert_eq!(
        get(
            &after,
            "dojang_http_requests_total{listener=\"api\",route=\"/v1/credentials\",status=\"2xx\"}"
        ),
        1.0
    );
    // Every answered request's time, the refused one's too, by listener
    // and route (the health check before the first scrape on ops).
    let api = "listener=\"api\",route=\"/v1/credentials\"";
    let timed = |m, series: &str| get(m, &format!("dojang_http_request_duration_seconds_{series}"));
    assert_eq!(timed(&after, &format!("count{{{api}}}")), 2.0);
    assert!(timed(&after, &format!("sum{{{api}}}")) > 0.0);
    assert_eq!(timed(&after, &format!("bucket{{{api},le=\"+Inf\"}}")), 2.0);
    assert_eq!(
        timed(&before, "count{listener=\"ops\",route=\"/healthz\"}"),
        1.0
    );
    assert_eq!(get(&after, "dojang_free_quota_remaining"), 467_999.0);
    assert!(
        get(
            &after,
            "dojang_hsm_operations_total{op=\"sign\",result=\"ok\"}"
        ) >= 1.0
    );
    assert_eq!(
        get(
            &after,
            "dojang_issuance_duration_seconds_count{profile=\"mdoc\"}"
        ),
        1.0
    );
    // Each stage of the one issued credential, once (the refusal is not
    // an issuance's timing); its signature took some time.
    for stage in [
        "queue",
        "prior",
        "validate",
        "pseudonym",
        "facts",
        "policy",
        "status_index",
        "sign",
        "commit",
    ] {
        let count = format!("dojang_issuance_stage_seconds_count{{stage=\"{stage}\"}}");
        assert_eq!(get(&after, &count), 1.0, "{count}");
    }
    assert!(get(&after, "dojang_issuance_stage_seconds_sum{stage=\"sign\"}") > 0.0);
    // Counted, whatever this machine made of a first issuance.
    assert!(after.contains_key("dojang_issuance_slow_total"));
    assert!(after.contains_key("dojang_signing_queue_depth"));
    assert!(after.contains_key("dojang_hsm_sessions{state=\"idle\"}"));
    assert!(get(&after, "dojang_audit_log_entries") >= 1.0);
    // The store's upkeep: an SQLite node writes no groups, and one
    // issuance is far from the WAL's bound.
    assert_eq!(get(&after, "dojang_store_grouped_issuances_total"), 0.0);
    assert_eq!(get(&after, "dojang_sqlite_wal_restarts_total"), 0.0);
    // SQLite's writer saw its group commits: at least the issuance's (the
    // refusal's audit entry and the node's own writes add theirs), each
    // with its run and its COMMIT timed.
    let batches = get(&after, "dojang_sqlite_batch_writes_count");
    assert!(batches >= 1.0, "{batches}");
    assert!(get(&after, "dojang_sqlite_batch_writes_sum") >= batches);
    for part in ["run", "commit"] {
        let count = format!("dojang_sqlite_writer_seconds_count{{part=\"{part}\"}}");
        assert!(get(&after, &count) >= 1.0, "{count}");
    }
    assert!(get(&after, "dojang_sqlite_writer_seconds_sum{part=\"commit\"}") > 0.0);
}

/// Officers adopted a policy this node's file does not have (they sign
/// its text; the file reaches the nodes later): this node stops issuing
/// and taking officer steps, and readiness says why.
#[test]
fn a_node_without_the_adopted_policy_refuses_work() {
    let d = Daemon::start(Options::default());
    assert_eq!(issue(&d, "counter", 1, "mdoc").status, 201);
    let text = std::fs::read_to_string(&d.policy)
        .unwrap()
        .replace("quota = 468000", "quota = 400000");
    let sha256 = dojang_policies::Policy::parse("new", &text).unwrap().hash;
    let approved = d.dual_control(
        "kim",
        "lee",
        "/v1/policy/change",
        &serde_json::json!({"sha256": sha256, "text": text}),
    );
    assert!(
        approved["result"]
            .as_str()
            .unwrap()
            .contains("keeps the old one until its file has it"),
        "{approved}"
    );
    let refused = issue(&d, "counter", 2, "mdoc");
    assert_eq!(refused.status, 503);
    assert_eq!(refused.json()["code"], "policy_not_adopted");
    let officer =
        d.client("kim")
            .post_json("/v1/keys/rotate", &serde_json::json!({"chain": "ds"}), &[]);
    assert_eq!(officer.status, 503);
    let ready = d.ops_client().get("/readyz");
    assert_eq!(ready.status, 503);
    assert!(String::from_utf8_lossy(&ready.body).contains("officers adopted policy"));
    // The file arrives: the node follows (its text is what was signed).
    std::fs::write(&d.policy, &text).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while issue(&d, "counter", 3, "mdoc").status != 201 {
        assert!(Instant::now() < deadline, "did not follow: {}", d.log());
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A node's policy file lost or replaced: it refuses to start on another
/// file, and the adopted text comes back from the registry byte for byte.
#[test]
fn the_adopted_policy_file_is_restored_from_the_registry() {
    let mut d = Daemon::start(Options::default());
    let adopted = std::fs::read(&d.policy).unwrap();
    d.signal("TERM");
    assert!(d.wait_exit(Duration::from_secs(15)).success());
    let other = String::from_utf8(adopted.clone())
        .unwrap()
        .replace("quota = 468000", "quota = 1");
    std::fs::write(&d.policy, other).unwrap();
    let refused = d
        .command("dojangd")
        .args(["serve", "--config"])
        .arg(&d.config)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("dojangctl policy adopted --out FILE")
    );

    let restored = d.scratch().join("restored.toml");
    let out = d.ctl(&[
        "policy",
        "adopted",
        "--out",
        &restored.display().to_string(),
    ]);
    assert!(out.contains("wrote"), "{out}");
    assert_eq!(std::fs::read(&restored).unwrap(), adopted);
    let _ = std::fs::copy(&restored, &d.policy).unwrap();
    d.spawn();

    // An adopted hash whose text no node has loaded: said so, nothing written.
    adopt_elsewhere(&d);
    let missing = d.try_ctl(&["policy", "adopted"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("does not hold the text"));
    assert!(missing.stdout.is_empty());
}

/// No policy is trusted on first use: without the key ceremony's adoption
/// the daemon refuses to start and says how; a registry whose policy an
/// older build adopted unsigned is brought under signatures by the same
/// ceremony; a signed adoption is never replaced that way.
#[test]
fn the_first_policy_is_adopted_by_its_officers_not_by_a_first_start() {
    let mut d = Daemon::start(Options {
        adopt_policy: false,
        spawn: false,
        ..Options::default()
    });
    let refused = d
        .command("dojangd")
        .args(["serve", "--config"])
        .arg(&d.config)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("no policy adopted yet") && err.contains("policy sign-first"),
        "{err}"
    );
    // An older build's first start: the hash adopted, no signatures.
    let db = rusqlite::Connection::open(d.scratch().join("registry.db")).unwrap();
    let _ = db
        .execute(
            "INSERT INTO pki_documents (name, body) VALUES ('policy.sha256', ?1)",
            ["ab".repeat(32)],
        )
        .unwrap();
    // One officer's signature is not enough.
    let kim = d.sign_first_policy("kim");
    let short = d.record_first_policy(&[kim]);
    assert!(!short.status.success());
    assert!(
        String::from_utf8_lossy(&short.stderr).contains("1 of 2"),
        "{short:?}"
    );
    d.adopt_first_policy(&["kim", "lee"]);
    d.spawn();
    assert_eq!(d.ops_client().get("/readyz").status, 200, "{}", d.log());
    // Signed now: a second ceremony cannot replace it.
    let again = d.record_first_policy(&[
        d.scratch().join("first-policy-kim.json"),
        d.scratch().join("first-policy-lee.json"),
    ]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("later policies are proposed"));
}
