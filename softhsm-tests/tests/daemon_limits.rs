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
        limits: "max_connections = 2\nmax_handshakes = 2\ntls_handshake_timeout_ms = 2000".into(),
        ..Options::default()
    });
    let closed_within = |stream: &mut dyn Read, limit: Duration| {
        let started = Instant::now();
        let mut buf = [0u8; 16];
        let read = stream.read(&mut buf);
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        let took = started.elapsed();
        assert!(took < limit, "closed after {took:?}");
    };
    let silent = |d: &Daemon| {
        let s = std::net::TcpStream::connect(d.api).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    };
    // A TCP connection that never starts TLS is closed by the handshake timeout.
    closed_within(&mut silent(&d), Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(100));

    // Two connections held open take the listener's two places.
    let tls = |d: &Daemon| {
        softhsm_tests::https::raw_tls(
            d.api,
            &d.tls.join("ca.pem"),
            Some((&d.tls.join("counter.pem"), &d.tls.join("counter.key"))),
        )
    };
    let get = |c: &mut openssl::ssl::SslStream<std::net::TcpStream>| {
        c.write_all(b"GET /v1/credentials/x HTTP/1.1\r\nhost: localhost\r\n\r\n")
            .unwrap();
        // The whole answer: its head, then content-length bytes.
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            c.read_exact(&mut byte).unwrap();
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).unwrap();
        assert!(head.starts_with("HTTP/1.1 404"), "{head}");
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let mut body = vec![0u8; length];
        c.read_exact(&mut body).unwrap();
    };
    let mut first = tls(&d);
    let mut second = tls(&d);
    get(&mut first);
    get(&mut second);
    // A third finishes its handshake and is closed at once.
    closed_within(&mut tls(&d), Duration::from_secs(1));

    // Two silent handshakes take the two handshake places; a third ends
    // the oldest of them at once and takes its place. The established
    // connections are served meanwhile: stalled handshakes do not take
    // connection places.
    let mut s1 = silent(&d);
    std::thread::sleep(Duration::from_millis(150));
    let _s2 = silent(&d);
    std::thread::sleep(Duration::from_millis(150));
    let _s3 = silent(&d);
    closed_within(&mut s1, Duration::from_secs(1));
    get(&mut first);
    get(&mut second);

    // Once one closes, a new client is served again, though silent
    // handshakes hold every handshake place: it ends the oldest.
    drop(first);
    std::thread::sleep(Duration::from_millis(300));
    let mut again = softhsm_tests::https::Client::new(d.api_target("counter", false));
    assert_eq!(again.get("/v1/credentials/x").status, 404);
    let metrics = String::from_utf8(d.ops_client().get("/metrics").body).unwrap();
    assert!(
        metrics.contains("dojang_connections_refused_total{listener=\"api\"} 1"),
        "{metrics}"
    );
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

/// p50 and p99 of `samples`.
fn percentiles(samples: &mut [Duration]) -> (Duration, Duration) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    (at(0.5), at(0.99))
}

/// Issues `n` credentials one after another as `counter`; the latencies.
fn issue_timed(d: &Daemon, first: u32, n: u32) -> Vec<Duration> {
    let mut client = d.client("counter");
    let _ = client.get("/v1/credentials/x");
    (first..first + n)
        .map(|i| {
            let (jwk, _) = daemon::phone();
            let request = daemon::request("sd-jwt", &daemon::number(i), &jwk);
            let started = Instant::now();
            let reply = client.post_json("/v1/credentials", &request, &[]);
            assert_eq!(reply.status, 201, "{}", reply.json());
            started.elapsed()
        })
        .collect()
}

#[test]
fn one_flooding_client_and_stalled_handshakes_lock_out_neither_officers_nor_other_issuers() {
    let d = Daemon::start(Options {
        limits: "max_in_flight = 64\nbody_read_timeout_ms = 30000".into(),
        ..Options::default()
    });
    let mut before = issue_timed(&d, 1, 30);
    let (b50, b99) = percentiles(&mut before);

    // The abuser (the wallet gateway's certificate): 16 HTTP/2 connections
    // of 16 streams each, every body trickled a byte every 500 ms.
    let abuser = d.api_target("gateway", true);
    let flood = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let connections: Vec<_> = (0..16)
                .map(|_| {
                    let abuser = abuser.clone();
                    tokio::spawn(async move {
                        softhsm_tests::abuse::trickled_posts(
                            &abuser,
                            "/v1/credentials",
                            16,
                            Duration::from_secs(20),
                        )
                        .await
                    })
                })
                .collect();
            let mut statuses = Vec::new();
            for c in connections {
                statuses.extend(c.await.unwrap().unwrap());
            }
            statuses
        })
    });
    // 1,000 TCP connections that never start their handshake, 100 a second.
    let api = d.api;
    let stalled = std::thread::spawn(move || {
        let mut held = Vec::new();
        for _ in 0..1000 {
            if let Ok(s) = std::net::TcpStream::connect(api) {
                held.push(s);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        held
    });
    std::thread::sleep(Duration::from_secs(1));

    // Meanwhile the counter issues and an officer lists proposals, then
    // revokes a key under dual control (dojangctl: new connections).
    let mut during = issue_timed(&d, 100, 30);
    let (d50, d99) = percentiles(&mut during);
    let mut officer = d.client("kim");
    let mut listed: Vec<Duration> = (0..20)
        .map(|_| {
            let started = Instant::now();
            assert_eq!(officer.get("/v1/approvals").status, 200);
            started.elapsed()
        })
        .collect();
    let (o50, o99) = percentiles(&mut listed);
    let started = Instant::now();
    let approved = d.dual_control(
        "kim",
        "lee",
        "/v1/keys/ds-1/revoke",
        &serde_json::json!({"reason": "token backup lost"}),
    );
    let revocation = started.elapsed();
    assert_eq!(approved["status"], "approved", "{approved}");
    let held = stalled.join().unwrap();
    let statuses = flood.join().unwrap();
    println!(
        "issuer p50/p99 before {b50:?}/{b99:?}, under attack {d50:?}/{d99:?}; \
         officer GET p50/p99 {o50:?}/{o99:?}; revocation under dual control {revocation:?}; \
         {} stalled handshakes",
        held.len()
    );
    let answered: Vec<u16> = statuses.iter().flatten().copied().collect();
    let refused = answered.iter().filter(|s| matches!(s, 429 | 503)).count();
    println!(
        "abuser: {} streams, {} answered, {refused} refused 429/503",
        statuses.len(),
        answered.len()
    );
    assert!(
        answered.iter().all(|s| matches!(s, 429 | 503 | 408)),
        "{answered:?}"
    );
    assert!(
        refused >= 200,
        "the abuser was refused only {refused} times"
    );
    // Normal latency: within a generous multiple of the quiet figures on a
    // busy 2-core machine (a lock-out would be seconds, or a failure).
    let bound = b99 * 5 + Duration::from_millis(250);
    assert!(
        d99 < bound,
        "issuer p99 {d99:?} under attack, {b99:?} before"
    );
    assert!(o99 < bound, "officer p99 {o99:?} under attack");
}

#[test]
fn audit_reads_are_answered_while_every_signing_thread_hangs_in_the_device() {
    let mut d = Daemon::start(Options {
        via_p11kit: true,
        limits: "signing_threads = 2".into(),
        ..Options::default()
    });
    assert_eq!(issue(&d, 1).status, 201);
    let mut auditor = d.client("auditor");
    let deadline = Instant::now() + Duration::from_secs(20);
    while auditor.get("/v1/audit/checkpoint").status != 200 {
        assert!(Instant::now() < deadline, "no checkpoint");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Every call into the device now hangs: two issuances hold both
    // signing threads.
    d.p11kit().freeze();
    let hung: Vec<_> = (0..2u32)
        .map(|i| {
            let target = d.api_target("counter", false);
            std::thread::spawn(move || {
                let (jwk, _) = daemon::phone();
                let request = daemon::request("sd-jwt", &daemon::number(10 + i), &jwk);
                softhsm_tests::https::Client::new(target)
                    .try_send(
                        "POST",
                        "/v1/credentials",
                        &[("content-type", "application/json")],
                        serde_json::to_vec(&request).unwrap(),
                    )
                    .map(|r| r.status)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(800));
    // The auditor's reads run on their own threads: answered meanwhile.
    let auditor = d.api_target("auditor", false);
    let (tx, rx) = std::sync::mpsc::channel();
    let _reader = std::thread::spawn(move || {
        let mut c = softhsm_tests::https::Client::new(auditor);
        let checkpoint = c.get("/v1/audit/checkpoint").status;
        let entries = c.get("/v1/audit/entries?start=0&count=1").status;
        let _ = tx.send((checkpoint, entries));
    });
    let answered = rx.recv_timeout(Duration::from_secs(5));
    d.p11kit().thaw();
    assert_eq!(
        answered,
        Ok((200, 200)),
        "audit reads waited behind the hung signing threads"
    );
    for h in hung {
        let _ = h.join().unwrap();
    }
}

#[test]
fn the_officers_lane_serves_officers_when_issuance_holds_every_shared_slot_and_no_one_else() {
    let d = Daemon::start(Options {
        limits: "max_in_flight = 6\nreserved_in_flight = 2\nmax_in_flight_per_client = 4\n\
                 body_read_timeout_ms = 30000"
            .into(),
        ..Options::default()
    });
    // The gateway holds the four shared slots with bodies that trickle.
    let gateway = d.api_target("gateway", true);
    let flood = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(softhsm_tests::abuse::trickled_posts(
            &gateway,
            "/v1/credentials",
            4,
            Duration::from_secs(8),
        ))
    });
    std::thread::sleep(Duration::from_millis(1500));
    // Issuance has no slot left.
    assert_eq!(issue(&d, 1).status, 503);
    // An officer's route has the reserved lane.
    assert_eq!(d.client("kim").get("/v1/approvals").status, 200);
    // A client without the route's role does not get the lane: it is told
    // the node is full, not given a slot to be refused in (the lie: a
    // stranger to the role filling the officers' lane).
    let stranger = d.client("auditor").get("/v1/approvals");
    assert_eq!(stranger.status, 503, "{}", stranger.json());
    assert_eq!(stranger.json()["code"], "overloaded");
    let statuses = flood.join().unwrap().unwrap();
    assert!(statuses.iter().all(Option::is_none), "{statuses:?}");
}
