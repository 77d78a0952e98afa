//! The two-site drill (issue 19): a node at site A on a PostgreSQL primary
//! with a synchronous streaming standby at site B, each site a network
//! namespace. Under load, site A is lost (every process SIGKILLed, the
//! namespace torn down); the standby is promoted and a node at site B, on
//! a clone of the token, issues. Then every credential a client got a 201
//! for is in the registry with its audit entry (RPO 0), the audit log
//! verifies across the failover and contains the checkpoint published
//! before it, the free-copy quota and one-live-per-holder/phone hold, and
//! the status lists and JWKS were fetchable from the static copy at site B
//! throughout. The RTO is printed.
#![allow(clippy::unwrap_used)]
#![allow(clippy::indexing_slicing, clippy::panic, clippy::expect_used)] // test code: a failed expect, panic or index is a failed test

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use softhsm_tests::daemon::{self, Daemon, Options, Store};
use softhsm_tests::https::{Client, Target};
use softhsm_tests::pg::{SiteCa, SiteCluster};
use softhsm_tests::sites::Sites;
use softhsm_tests::web::StaticServer;

const STANDBY: &str = "site_b";

/// Clients issuing to `node` until `stop`, each for holders of its own;
/// the ids of every 201.
fn load(
    node: &Daemon,
    stop: &Arc<AtomicBool>,
    next: &Arc<AtomicU32>,
) -> Vec<std::thread::JoinHandle<Vec<String>>> {
    (0..4)
        .map(|_| {
            let target = node.api_target("counter", false);
            let (stop, next) = (stop.clone(), next.clone());
            std::thread::spawn(move || {
                let mut client = Client::new(target).with_timeout(Duration::from_secs(2));
                let mut ids = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    let (jwk, _) = daemon::phone();
                    let body = daemon::request("sd-jwt", &daemon::number(n), &jwk);
                    match client.try_send(
                        "POST",
                        "/v1/credentials",
                        &[("content-type", "application/json")],
                        serde_json::to_vec(&body).unwrap(),
                    ) {
                        Ok(r) if r.status == 201 => {
                            ids.push(r.json()["id"].as_str().unwrap().to_owned());
                        }
                        Ok(_) => {}
                        // The site is gone: a new connection, until told to stop.
                        Err(_) => {
                            std::thread::sleep(Duration::from_millis(50));
                        }
                    }
                }
                ids
            })
        })
        .collect()
}

/// Fetches what verifiers need from the static copy until `stop`; the
/// failures.
fn verifier(
    static_copy: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<String>> {
    std::thread::spawn(move || {
        let mut failures = Vec::new();
        let mut rounds = 0u32;
        while !stop.load(Ordering::Relaxed) || rounds == 0 {
            for path in [
                "/.well-known/jwks.json",
                "/status/jwks.json",
                "/status/1",
                "/status/1.cwt",
                "/iaca.crl",
            ] {
                // A connection per fetch: http.server speaks HTTP/1.0.
                let mut client =
                    Client::new(Target::plain(static_copy)).with_timeout(Duration::from_secs(2));
                match client.try_send("GET", path, &[], Vec::new()) {
                    Ok(r) if r.status == 200 && !r.body.is_empty() => {}
                    Ok(r) => failures.push(format!("{path}: {}", r.status)),
                    Err(e) => failures.push(format!("{path}: {e}")),
                }
            }
            rounds += 1;
            std::thread::sleep(Duration::from_millis(100));
        }
        failures
    })
}

fn checkpoint_size(note: &str) -> u64 {
    note.lines()
        .nth(1)
        .and_then(|l| l.parse().ok())
        .unwrap_or(0)
}

/// A SoftHSM copy of `d`'s token with a configuration of its own: the
/// stand-in for the HSM's own cloning to site B.
fn clone_token(d: &Daemon) -> std::path::PathBuf {
    let dir = d.scratch().join("site-b-hsm");
    std::fs::create_dir_all(&dir).unwrap();
    assert!(std::process::Command::new("cp")
        .arg("-a")
        .arg(d.scratch().join("tokens"))
        .arg(&dir)
        .status()
        .unwrap()
        .success());
    let conf = dir.join("softhsm2.conf");
    let original = std::fs::read_to_string(d.token_conf()).unwrap();
    let text = original.replace(
        &d.scratch().join("tokens").display().to_string(),
        &dir.join("tokens").display().to_string(),
    );
    assert_ne!(text, original, "the clone names its own token directory");
    std::fs::write(&conf, text).unwrap();
    conf
}

/// The audit entries in `db`, placed in the log or still queued, as text.
fn stored_entries(db: &mut postgres::Client) -> String {
    db.query(
        "SELECT entry FROM audit_log UNION ALL \
         SELECT entry FROM audit_queue WHERE entry IS NOT NULL",
        &[],
    )
    .unwrap()
    .iter()
    .map(|row| String::from_utf8_lossy(row.get::<_, &[u8]>(0)).into_owned())
    .collect()
}

/// Waits until `node` has placed every queued entry in the log: a number
/// the lost site took and never committed holds its later entries back
/// until the sequencer fills it, `GAP_WAIT_MS` after they were queued.
fn wait_until_placed(db: &mut postgres::Client) {
    let started = Instant::now();
    loop {
        let queued: i64 = db
            .query_one("SELECT COUNT(*) FROM audit_queue", &[])
            .unwrap()
            .get(0);
        if queued == 0 {
            println!(
                "site drill: the queue was placed in the log {} ms after the check began",
                started.elapsed().as_millis()
            );
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{queued} audit entries still queued after 60 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Every id in `issued` is in the registry (`db`) with its audit entry at
/// once (queued or placed), and in `node`'s log once the queue is placed;
/// the log verifies from the pinned key and contains `published`.
fn check_nothing_lost(
    node: &Daemon,
    db: &mut postgres::Client,
    issued: &[String],
    published: &str,
    audit_key: &Path,
) {
    let registered: std::collections::HashSet<String> = db
        .query("SELECT id FROM credentials", &[])
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    let lost: Vec<&String> = issued
        .iter()
        .filter(|id| !registered.contains(*id))
        .collect();
    let stored = stored_entries(db);
    let unrecorded: Vec<&String> = issued
        .iter()
        .filter(|id| !stored.contains(id.as_str()))
        .collect();
    wait_until_placed(db);
    let bundle = node.scratch().join(format!("log-{}.json", node.api.port()));
    let _ = node.ctl(&["audit", "export", "--out", bundle.to_str().unwrap()]);
    let bundle_json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&bundle).unwrap()).unwrap();
    let entries: String = bundle_json["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let raw = base64::Engine::decode(
                &base64::engine::general_purpose::STANDARD,
                e.as_str().unwrap(),
            )
            .unwrap();
            String::from_utf8_lossy(&raw).into_owned()
        })
        .collect();
    let unaudited: Vec<&String> = issued
        .iter()
        .filter(|id| !entries.contains(id.as_str()))
        .collect();
    let first = |v: &[&String]| format!("{:?}", &v[..v.len().min(5)]);
    assert!(
        lost.is_empty(),
        "{} acknowledged but lost: {}",
        lost.len(),
        first(&lost)
    );
    assert!(
        unrecorded.is_empty(),
        "no audit entry stored: {}",
        first(&unrecorded)
    );
    assert!(
        unaudited.is_empty(),
        "no audit entry: {}",
        first(&unaudited)
    );
    assert!(
        bundle_json["checkpoints"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c == published),
        "the published checkpoint is one of the log's"
    );
    let verified = node.ctl(&[
        "audit",
        "verify",
        bundle.to_str().unwrap(),
        "--key",
        audit_key.to_str().unwrap(),
        "--origin",
        daemon::AUDIT_ORIGIN,
        "--min-size",
        &checkpoint_size(published).to_string(),
        "--allow-unsigned-tail",
    ]);
    assert!(verified.contains("valid"), "{verified}");
}

/// The free-copy quota counts exactly the free copies; one live
/// credential per holder and per phone.
fn check_invariants(db: &mut postgres::Client) {
    let quota_used: i64 = db
        .query_one(
            "SELECT COALESCE(SUM(used), 0)::BIGINT FROM quota_shards",
            &[],
        )
        .unwrap()
        .get(0);
    let free_copies: i64 = db
        .query_one("SELECT COUNT(*) FROM credentials WHERE free_copy", &[])
        .unwrap()
        .get(0);
    assert_eq!(
        quota_used, free_copies,
        "the quota counts the free copies exactly"
    );
    for column in ["holder", "device"] {
        let twice: i64 = db
            .query_one(
                &format!(
                    "SELECT COUNT(*) FROM (SELECT {column} FROM credentials \
                     WHERE state IN ('active', 'suspended') GROUP BY {column} HAVING COUNT(*) > 1) AS t"
                ),
                &[],
            )
            .unwrap()
            .get(0);
        assert_eq!(twice, 0, "one live credential per {column}");
    }
}

/// Stops `clients` and gathers the ids they got a 201 for.
fn gather(stop: &AtomicBool, clients: Vec<std::thread::JoinHandle<Vec<String>>>) -> Vec<String> {
    stop.store(true, Ordering::Relaxed);
    clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect()
}

#[test]
fn site_a_is_lost_under_load_and_site_b_takes_over_with_nothing_lost() {
    let sites = Sites::create();
    let ca_dir = tempfile::tempdir().unwrap();
    let ca = SiteCa::new(ca_dir.path());
    let primary = SiteCluster::primary(&sites.a, STANDBY, &ca);
    let standby = SiteCluster::standby(&sites.a, &sites.b, STANDBY, &ca);
    primary.wait_synchronous(STANDBY);
    let d = Daemon::start(Options {
        store: Store::PostgresVerified(primary.url.clone(), ca.pem.clone()),
        public: "mirror_dir = \"{scratch}/mirror\"".into(),
        spawn: false,
        ..Options::default()
    });
    let node_a = d.node_at("site-a", &sites.a, &primary.url, &d.token_conf());
    let clone = clone_token(&d);
    // The auditors' pinned key, long before the loss.
    let audit_key = d.scratch().join("audit.pem");
    let _ = node_a.ctl(&[
        "audit",
        "export",
        "--out",
        d.scratch().join("before.json").to_str().unwrap(),
        "--key-out",
        audit_key.to_str().unwrap(),
    ]);

    let stop_load = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicU32::new(100));
    let clients = load(&node_a, &stop_load, &next);
    // The mirror has every document before verifiers rely on it.
    let mirror = d.scratch().join("mirror");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(mirror.join("status/1").exists() && mirror.join("checkpoint").exists()) {
        assert!(Instant::now() < deadline, "the mirror was never written");
        std::thread::sleep(Duration::from_millis(200));
    }
    let static_copy = StaticServer::start(&mirror, Some(&sites.b));
    let stop_verifier = Arc::new(AtomicBool::new(false));
    let verifier = verifier(static_copy.addr, stop_verifier.clone());
    std::thread::sleep(Duration::from_secs(4));

    // What was published before the loss: the mirror's checkpoint. Then
    // site A is lost.
    let published = std::fs::read_to_string(mirror.join("checkpoint")).unwrap();
    let lost_at = Instant::now();
    sites.lose(&sites.a);
    std::thread::sleep(Duration::from_millis(500));
    let issued = gather(&stop_load, clients);
    assert!(
        issued.len() >= 4,
        "the load issued {} credentials",
        issued.len()
    );

    // Failover: the standby is promoted, a node at site B starts on it
    // with the cloned token and issues.
    standby.promote();
    let mut node_b = d.node_at("site-b", &sites.b, &standby.url, &clone);
    let _ = node_b.issued("sd-jwt", next.fetch_add(1, Ordering::Relaxed));
    let rto = lost_at.elapsed();
    stop_verifier.store(true, Ordering::Relaxed);
    let failures = verifier.join().unwrap();
    println!(
        "site drill: {} issuances acknowledged at site A; RTO {} ms (loss to the first issuance at site B); {} static fetch failures",
        issued.len(),
        rto.as_millis(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "the static copy failed verifiers {} times, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let mut db = standby.client();
    check_nothing_lost(&node_b, &mut db, &issued, &published, &audit_key);
    check_invariants(&mut db);
    drop(db);

    // Fail-back: site A is rebuilt as a synchronous standby of site B,
    // then a planned switchover (site B's node stops, its database stops
    // after sending everything, site A's is promoted) under load.
    sites.rebuild(&sites.a);
    let rebuilt = SiteCluster::standby(&sites.b, &sites.a, "site_a", &ca);
    standby.require_synchronous("site_a");
    standby.wait_synchronous("site_a");
    let stop_load = Arc::new(AtomicBool::new(false));
    let clients = load(&node_b, &stop_load, &next);
    std::thread::sleep(Duration::from_secs(2));
    let switch_at = Instant::now();
    node_b.signal("TERM");
    let _ = node_b.wait_exit(Duration::from_secs(30));
    let issued_b = gather(&stop_load, clients);
    // Site B's last checkpoint, mirrored as it stopped.
    let published_b = std::fs::read_to_string(mirror.join("checkpoint")).unwrap();
    standby.stop();
    rebuilt.promote();
    let node_a2 = d.node_at("site-a2", &sites.a, &rebuilt.url, &d.token_conf());
    let _ = node_a2.issued("sd-jwt", next.fetch_add(1, Ordering::Relaxed));
    println!(
        "site drill: fail-back after {} more issuances at site B: {} ms from stopping site B to the first issuance at site A",
        issued_b.len(),
        switch_at.elapsed().as_millis()
    );
    let all: Vec<String> = issued.into_iter().chain(issued_b).collect();
    let mut db = rebuilt.client();
    check_nothing_lost(&node_a2, &mut db, &all, &published_b, &audit_key);
    check_invariants(&mut db);
    drop(node_a2);
    drop(node_b);
    drop(node_a);
}
