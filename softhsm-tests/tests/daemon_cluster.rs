//! Two `dojangd` nodes sharing one PostgreSQL: the free-issuance quota is
//! never exceeded however the requests race across the nodes.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Barrier};
use std::time::Duration;

use softhsm_tests::daemon::{self, Daemon, Options, PgSchema, Store};

#[test]
fn the_last_free_copies_race_across_two_nodes_and_never_go_one_over() {
    let Some(schema) = PgSchema::create() else {
        return;
    };
    let a = Daemon::start(Options {
        store: Store::Postgres(schema.url.clone()),
        policy: |p| p.replace("quota = 468000", "quota = 10"),
        ..Options::default()
    });
    let b = a.second_node("b");
    let racers = 100u32;
    let barrier = Arc::new(Barrier::new(racers as usize));
    let handles: Vec<_> = (0..racers)
        .map(|i| {
            let target = if i % 2 == 0 {
                a.api_target("counter", false)
            } else {
                b.api_target("gateway", false)
            };
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let (jwk, _) = daemon::phone();
                let request = daemon::request("mdoc", &daemon::number(2000 + i), &jwk);
                let mut c = softhsm_tests::https::Client::new(target);
                let _ = barrier.wait();
                c.post_json("/v1/credentials", &request, &[])
            })
        })
        .collect();
    let replies: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    for r in &replies {
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    }
    let free: Vec<_> = replies
        .iter()
        .map(|r| r.json())
        .filter(|r| r["free_copy"] == true)
        .collect();
    assert_eq!(free.len(), 10, "exactly the quota went free");
    assert!(free.iter().all(|r| r["fee_krw"] == 0));
    assert!(replies
        .iter()
        .map(|r| r.json())
        .filter(|r| r["free_copy"] == false)
        .all(|r| r["fee_krw"] == 5000));
    // Both nodes report the quota spent.
    for node in [&a, &b] {
        let metrics = String::from_utf8(node.ops_client().get("/metrics").body).unwrap();
        assert!(
            metrics.contains("dojang_free_quota_remaining 0\n"),
            "{}",
            metrics
                .lines()
                .filter(|l| l.contains("quota"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    drop(b);
    drop(a);
    drop(schema);
}

/// Rotation every 10 s with 4 s of prepublication, rounds every 200 ms on
/// two nodes: exactly one key per schedule point (no duplicate, no orphan in
/// the token), and both nodes sign with it from its activation.
#[test]
fn two_nodes_rotate_once_per_schedule_point_and_both_switch() {
    let Some(schema) = PgSchema::create() else {
        return;
    };
    let a = Daemon::start(Options {
        store: Store::Postgres(schema.url.clone()),
        policy: |p| {
            p.replace("rotate_every = \"90d\"", "rotate_every = \"10s\"")
                .replace("prepublish = \"7d\"", "prepublish = \"4s\"")
        },
        server: "[server.keys]\nlifecycle_interval_ms = 200\n".into(),
        ..Options::default()
    });
    let b = a.second_node("b");
    // Wait for the first rotation to take effect.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let successor = loop {
        let keys = a.keys();
        if let Some(k) = keys
            .iter()
            .find(|k| k["state"] == "active" && k["label"] != "ds-1")
        {
            break k.clone();
        }
        assert!(std::time::Instant::now() < deadline, "{}", a.log());
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    // Both nodes sign with it (the next one is not due for ~10 s).
    for (node, client) in [(&a, "counter"), (&b, "gateway")] {
        let (jwk, _) = daemon::phone();
        let n = if client == "counter" { 3000 } else { 3001 };
        let reply = node.client(client).post_json(
            "/v1/credentials",
            &daemon::request("mdoc", &daemon::number(n), &jwk),
            &[],
        );
        assert_eq!(reply.status, 201, "{}", reply.json());
        assert_eq!(reply.json()["kid"], successor["kid"]);
        let jwks = node.public_client().get("/.well-known/jwks.json").json();
        assert!(jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["kid"] == successor["kid"]));
    }
    // One key generated per schedule point, by one node: the registry, the
    // audit log and the token agree.
    let keys = a.keys();
    let mut admin = PgSchema::admin();
    let generated: i64 = admin
        .query_one(
            &format!(
                "SELECT COUNT(*) FROM {}.audit_log WHERE position('keys.generate' in encode(entry, 'escape')) > 0
                   AND position('key ds-' in encode(entry, 'escape')) > 0",
                schema.name
            ),
            &[],
        )
        .unwrap()
        .get(0);
    let queued: i64 = admin
        .query_one(
            &format!(
                "SELECT COUNT(*) FROM {}.audit_queue WHERE action = 'keys.generate' AND rule LIKE 'key ds-%'",
                schema.name
            ),
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!((generated + queued) as usize, keys.len() - 1, "{keys:?}");
    let activations: Vec<i64> = keys
        .iter()
        .map(|k| {
            time::OffsetDateTime::parse(
                k["activate_at"].as_str().unwrap(),
                &time::format_description::well_known::Rfc3339,
            )
            .unwrap()
            .unix_timestamp()
        })
        .collect();
    for pair in activations.windows(2) {
        assert!(
            pair[1] - pair[0] >= 9,
            "two keys for one schedule point: {keys:?}"
        );
    }
    let token: serde_json::Value =
        serde_json::from_str(&a.ctl(&["--json", "keys", "list"])).unwrap();
    let in_token = token
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["purpose"] == "document-signer")
        .count();
    // Retired keys' private halves left the token at retirement.
    let signing = keys
        .iter()
        .filter(|k| k["state"] == "pending" || k["state"] == "active")
        .count();
    assert_eq!(in_token, signing, "no orphan key in the token");

    // A policy change approved on node a is taken up by node b: the new
    // file (shared by both here) drops the gateway.
    let text = std::fs::read_to_string(&a.policy).unwrap().replace(
        "identity = \"spiffe://mois.go.kr/wallet-gateway\"",
        "identity = \"spiffe://mois.go.kr/retired-gateway\"",
    );
    std::fs::write(&a.policy, &text).unwrap();
    let sha256 = dojang_policies::Policy::parse("new", &text).unwrap().hash;
    let _ = a.dual_control(
        "kim",
        "lee",
        "/v1/policy/change",
        &serde_json::json!({ "sha256": sha256, "text": text }),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (jwk, _) = daemon::phone();
        let reply = b.client("gateway").post_json(
            "/v1/credentials",
            &daemon::request("mdoc", &daemon::number(3100), &jwk),
            &[],
        );
        if reply.status == 403 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "node b kept the old policy: {}",
            b.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    drop(b);
}

/// The backend holding `d`'s node lock (its application name is
/// `dojangd PID NONCE NODE`).
fn lock_backend(admin: &mut postgres::Client, d: &Daemon) -> i32 {
    admin
        .query_one(
            "SELECT pid FROM pg_stat_activity WHERE application_name LIKE $1",
            &[&format!("dojangd {} % test-1", d.pid())],
        )
        .unwrap()
        .get(0)
}

fn node_lock_daemon(schema: &PgSchema) -> Daemon {
    Daemon::start(Options {
        store: Store::Postgres(schema.url.clone()),
        ..Options::default()
    })
}

#[test]
fn one_process_per_node_even_when_its_lock_connection_is_cut() {
    let Some(schema) = PgSchema::create() else {
        return;
    };
    let mut a = node_lock_daemon(&schema);
    // A second process of node test-1 (a copied configuration, another
    // host): refused before it writes anything, naming the holder.
    let said = a.second_start_refused();
    assert!(
        said.contains("another process holds node test-1's lock"),
        "{said}"
    );
    assert!(said.contains(&format!("dojangd {} ", a.pid())), "{said}");
    assert_eq!(a.audit_count("tls.load"), 1);
    // An insider (or an outage) ends the lock's connection: the node takes
    // the lock again and serves on.
    let mut admin = PgSchema::admin();
    let cut = lock_backend(&mut admin, &a);
    let _ = admin
        .execute("SELECT pg_terminate_backend($1, 5000)", &[&cut])
        .unwrap();
    a.wait_for_log("lock taken again", 1);
    assert_ne!(lock_backend(&mut admin, &a), cut);
    let metrics = String::from_utf8(a.ops_client().get("/metrics").body).unwrap();
    assert!(
        metrics.contains("dojang_node_lock_events_total{event=\"retaken\"} 1\n"),
        "{metrics}"
    );
    assert_eq!(a.issue("mdoc", 1).status, 201);
    // Cut again, another session waiting for the node's lock: it gets the
    // lock as the daemon's session ends, before the daemon looks. The
    // daemon stops, and says why.
    let cut = lock_backend(&mut admin, &a);
    let key = dojang::store::node_lock::node_lock_key(&schema.name, "test-1");
    let waiter = std::thread::spawn(move || {
        let mut other = PgSchema::admin();
        let _ = other
            .execute("SELECT pg_advisory_lock($1)", &[&key])
            .unwrap();
        other
    });
    while admin
        .query_one(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted \
             AND classid = ($1::int8 >> 32)::oid AND objid = ($1::int8 & 4294967295)::oid",
            &[&key],
        )
        .unwrap()
        .get::<_, i64>(0)
        == 0
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = admin
        .execute("SELECT pg_terminate_backend($1, 5000)", &[&cut])
        .unwrap();
    let mut other = waiter.join().unwrap();
    let status = a.wait_exit(Duration::from_secs(30));
    assert!(!status.success());
    let log = a.log();
    assert!(
        log.contains(
            "another process took node test-1's lock while this one's connection was gone"
        ),
        "{log}"
    );
    // Once that session lets go, the node starts again.
    let _ = other
        .execute("SELECT pg_advisory_unlock($1)", &[&key])
        .unwrap();
    a.spawn();
    assert_eq!(a.issue("mdoc", 2).status, 201);
}

#[test]
fn a_frozen_node_loses_its_lock_to_its_restart_and_stops_when_it_wakes() {
    let Some(schema) = PgSchema::create() else {
        return;
    };
    let mut a = node_lock_daemon(&schema);
    // The host stops answering (a frozen VM, a cut network: the server's
    // side of it), and the node is started elsewhere. The start waits for
    // the server to drop the silent session, then serves.
    a.signal("STOP");
    let b = a.twin();
    assert!(
        b.log()
            .contains("silent: waiting for the server to drop it"),
        "{}",
        b.log()
    );
    assert_eq!(b.issue("mdoc", 1).status, 201);
    // The frozen process wakes: it finds its node taken, and stops.
    a.signal("CONT");
    let status = a.wait_exit(Duration::from_secs(30));
    assert!(!status.success());
    assert!(
        a.log().contains(
            "another process took node test-1's lock while this one's connection was gone"
        ),
        "{}",
        a.log()
    );
    assert_eq!(b.issue("mdoc", 2).status, 201);
}
