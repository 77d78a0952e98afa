//! The daemon's limits, each observed from outside: per-client rate limit
//! (429), requests in flight (503), connections per listener, the TLS
//! handshake timeout, TLS 1.3 only, and JSON logs without personal data.
#![allow(clippy::unwrap_used)]
#![allow(clippy::indexing_slicing)] // test code: a failed index is a failed test

use std::io::{Read, Write};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use softhsm_tests::daemon::{self, Daemon, Options};

fn issue(d: &Daemon, n: u32) -> softhsm_tests::https::Reply {
    let (jwk, _) = daemon::phone();
    d.client("counter").post_json(
        "/v1/credentials",
        &daemon::request("mdoc", &daemon::number(n), &jwk),
        &[],
    )
}

#[test]
fn a_client_over_its_rate_gets_429_with_retry_after() {
    let d = Daemon::start(Options {
        policy: |p| p.replace("requests_per_minute = 6000", "requests_per_minute = 3"),
        ..Options::default()
    });
    // The window is a calendar minute: start early in one.
    let second = time::OffsetDateTime::now_utc().second();
    if second > 50 {
        std::thread::sleep(Duration::from_secs(u64::from(61 - second)));
    }
    for n in 0..3 {
        assert_eq!(issue(&d, n).status, 201);
    }
    let refused = issue(&d, 3);
    assert_eq!(
        refused.status,
        429,
        "{}",
        String::from_utf8_lossy(&refused.body)
    );
    assert_eq!(refused.json()["rule"], "client.rate_limit");
    let wait: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait));
    // Refused before any HSM or database work, and audited once a minute.
    let hmacs = || {
        let text = String::from_utf8(d.ops_client().get("/metrics").body).unwrap();
        text.lines()
            .find(|l| l.starts_with("dojang_hsm_operations_total{op=\"hmac\",result=\"ok\"}"))
            .and_then(|l| l.rsplit(' ').next())
            .map_or(0.0, |v| v.parse::<f64>().unwrap())
    };
    let before = hmacs();
    for n in 10..15 {
        assert_eq!(issue(&d, n).status, 429);
    }
    assert_eq!(hmacs(), before, "no HSM work for a client over its rate");
    let rate_entries = d
        .audit_entries()
        .iter()
        .filter(|e| e.contains("client.rate_limit"))
        .count();
    assert_eq!(rate_entries, 1, "one audit entry for the minute's flood");
    // Another client has its own budget.
    let (jwk, _) = daemon::phone();
    let other = d.client("gateway").post_json(
        "/v1/credentials",
        &daemon::request("mdoc", &daemon::number(4), &jwk),
        &[],
    );
    assert_eq!(other.status, 201);
}

#[test]
fn requests_beyond_the_in_flight_limit_get_503_not_a_queue() {
    let d = Daemon::start(Options {
        limits: "max_in_flight = 1\nsigning_threads = 1".into(),
        ..Options::default()
    });
    let racers = 24;
    let barrier = Arc::new(Barrier::new(racers));
    let handles: Vec<_> = (0..racers as u32)
        .map(|i| {
            let target = d.api_target("counter", false);
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let (jwk, _) = daemon::phone();
                let request = daemon::request("sd-jwt", &daemon::number(100 + i), &jwk);
                let mut c = softhsm_tests::https::Client::new(target);
                // Connect first so that the requests, not the handshakes, race.
                let _ = c.get("/v1/credentials/x");
                let _ = barrier.wait();
                c.post_json("/v1/credentials", &request, &[])
            })
        })
        .collect();
    let replies: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let busy: Vec<_> = replies.iter().filter(|r| r.status == 503).collect();
    assert!(
        replies.iter().all(|r| r.status == 201 || r.status == 503),
        "{:?}",
        replies.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    assert!(
        !busy.is_empty(),
        "24 simultaneous requests, one slot, none refused"
    );
    assert!(replies.iter().any(|r| r.status == 201));
    for r in busy {
        assert_eq!(r.json()["code"], "overloaded");
        assert_eq!(r.header("retry-after"), Some("1"));
    }
    // Refused requests left nothing behind: each can be sent again.
    assert_eq!(issue(&d, 999).status, 201);
}

#[test]
fn connections_beyond_the_limit_and_silent_handshakes_are_closed() {
    let d = Daemon::start(Options {
        limits: "max_connections = 2\ntls_handshake_timeout_ms = 500".into(),
        ..Options::default()
    });
    // A TCP connection that never starts TLS is closed by the handshake timeout.
    let mut silent = std::net::TcpStream::connect(d.api).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 16];
    let read = silent.read(&mut buf);
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    drop(silent);
    std::thread::sleep(Duration::from_millis(100));

    // Two connections held open take the listener's two slots.
    let tls = |d: &Daemon| {
        softhsm_tests::https::raw_tls(
            d.api,
            &d.tls.join("ca.pem"),
            Some((&d.tls.join("counter.pem"), &d.tls.join("counter.key"))),
        )
    };
    let mut first = tls(&d);
    let mut second = tls(&d);
    for c in [&mut first, &mut second] {
        c.write_all(b"GET /v1/credentials/x HTTP/1.1\r\nhost: localhost\r\n\r\n")
            .unwrap();
        let mut head = [0u8; 12];
        c.read_exact(&mut head).unwrap();
        assert_eq!(&head, b"HTTP/1.1 404");
    }
    // A third is closed at once.
    let mut third = std::net::TcpStream::connect(d.api).unwrap();
    third
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let read = third.read(&mut buf);
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    // Once one closes, a new client is served again.
    drop(first);
    std::thread::sleep(Duration::from_millis(200));
    let mut again = softhsm_tests::https::Client::new(d.api_target("counter", false));
    assert_eq!(again.get("/v1/credentials/x").status, 404);
    let metrics = String::from_utf8(d.ops_client().get("/metrics").body).unwrap();
    assert!(metrics.contains("dojang_connections_refused_total{listener=\"api\"} 1"));
    assert!(metrics.contains("dojang_tls_handshake_failures_total{listener=\"api\"}"));
}

#[test]
fn tls_1_2_is_refused_unless_allowed() {
    let handshake = |d: &Daemon| {
        let out = std::process::Command::new("openssl")
            .args(["s_client", "-tls1_2", "-connect", &d.api.to_string()])
            .arg("-CAfile")
            .arg(d.tls.join("ca.pem"))
            .arg("-cert")
            .arg(d.tls.join("counter.pem"))
            .arg("-key")
            .arg(d.tls.join("counter.key"))
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let strict = Daemon::start(Options::default());
    let refused = handshake(&strict);
    assert!(refused.contains("Cipher is (NONE)"), "{refused}");
    assert!(refused.contains("alert protocol version"), "{refused}");
    drop(strict);
    let lenient = Daemon::start(Options {
        api: "allow_tls12 = true".into(),
        ..Options::default()
    });
    let accepted = handshake(&lenient);
    assert!(!accepted.contains("Cipher is (NONE)"), "{accepted}");
    assert!(accepted.contains("Protocol  : TLSv1.2"), "{accepted}");
}

#[test]
fn json_logs_carry_request_facts_and_no_personal_data() {
    let d = Daemon::start(Options {
        server: "json_logs = true".into(),
        ..Options::default()
    });
    assert_eq!(issue(&d, 1).status, 201);
    let log = d.log();
    let requests: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"] == "request")
        .collect();
    assert_eq!(requests.len(), 1, "{log}");
    let r = &requests[0];
    assert_eq!(r["client"], daemon::COUNTER);
    assert_eq!(r["status"], 201);
    assert_eq!(r["route"], "/v1/credentials");
    assert!(r["request_id"].as_str().is_some_and(|id| id.len() == 16));
    assert!(r["latency_ms"].as_f64().is_some());
    let issuance = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["message"] == "issuance")
        .unwrap();
    assert_eq!(issuance["profile"], "mdoc");
    assert_eq!(issuance["decision"], "issued");
    assert_eq!(issuance["request_id"], r["request_id"]);
    for personal in ["홍", "길동", "000515", "종로구"] {
        assert!(!log.contains(personal));
    }
}
