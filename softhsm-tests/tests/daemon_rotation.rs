//! Rotating the DS key while clients issue: two officers approve a new key
//! twice under continuous load. The new key is published at once and signs
//! from its activation time (the policy's prepublication, 2 s here). No
//! request fails, every credential names, and verifies with, the key that
//! signed it, every such key is in the JWKS, and the switch happens at the
//! configured time.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use softhsm_tests::daemon::{self, Daemon, Options};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// A 2 s prepublication, and a client rate limit the load cannot reach
/// (a fast machine issues more than the shipped 6,000 a minute).
fn prepublish_two_seconds(policy: String) -> String {
    policy
        .replace("prepublish = \"7d\"", "prepublish = \"2s\"")
        .replace(
            "requests_per_minute = 6000",
            "requests_per_minute = 1000000",
        )
}

fn time_of(v: &serde_json::Value) -> OffsetDateTime {
    OffsetDateTime::parse(v.as_str().unwrap(), &Rfc3339).unwrap()
}

#[test]
fn rotating_the_ds_key_under_load_fails_no_request() {
    let d = Daemon::start(Options {
        policy: prepublish_two_seconds,
        ..Options::default()
    });
    // Verifiers may cache the key sets for at most half the prepublication,
    // or a prepublished key would sign before they saw it.
    let mut public = d.public_client();
    for path in ["/.well-known/jwks.json", "/status/jwks.json"] {
        let reply = public.get(path);
        assert_eq!(
            reply.header("cache-control"),
            Some("public, max-age=1"),
            "{path}"
        );
    }
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..4u32)
        .map(|t| {
            let target = d.api_target("counter", false);
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut client = softhsm_tests::https::Client::new(target);
                let mut issued = Vec::new();
                for n in 0u32.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let (jwk, _) = daemon::phone();
                    let reply = client.post_json(
                        "/v1/credentials",
                        &daemon::request("mdoc", &daemon::number(t * 10_000 + n), &jwk),
                        &[],
                    );
                    assert_eq!(
                        reply.status,
                        201,
                        "{}",
                        String::from_utf8_lossy(&reply.body)
                    );
                    issued.push(reply.json());
                }
                issued
            })
        })
        .collect();
    let mut rotations = Vec::new();
    for officers in [("kim", "lee"), ("lee", "park")] {
        std::thread::sleep(Duration::from_millis(1500));
        let approved = d.dual_control(
            officers.0,
            officers.1,
            "/v1/keys/rotate",
            &serde_json::json!({"chain": "ds"}),
        );
        assert!(
            approved["result"].as_str().unwrap().contains("generated"),
            "{approved}"
        );
        let pending = d
            .keys()
            .into_iter()
            .find(|k| k["state"] == "pending")
            .expect("the new key is pending");
        // Published before it signs.
        let jwks = d.public_client().get("/.well-known/jwks.json").json();
        assert!(
            jwks["keys"]
                .as_array()
                .unwrap()
                .iter()
                .any(|k| k["kid"] == pending["kid"]),
            "a pending key is in the JWKS"
        );
        rotations.push(pending);
        // The daemon activates it itself at its time.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !d
            .keys()
            .iter()
            .any(|k| k["label"] == rotations.last().unwrap()["label"] && k["state"] == "active")
        {
            assert!(Instant::now() < deadline, "{}", d.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    std::thread::sleep(Duration::from_millis(1000));
    stop.store(true, Ordering::Relaxed);
    let issued: Vec<serde_json::Value> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();

    // Every credential verifies against the IACA and names its signer; the
    // signer's key is in the published JWKS; all three keys signed some.
    let jwks = d.public_client().get("/.well-known/jwks.json").json();
    let published: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|k| k["kid"].as_str())
        .collect();
    let mut by_key: BTreeMap<String, usize> = BTreeMap::new();
    for r in &issued {
        let _ = d.verify_mdoc(r["credential"].as_str().unwrap());
        let kid = r["kid"].as_str().unwrap();
        assert!(published.contains(&kid), "{kid} not in the JWKS");
        *by_key
            .entry(r["key_label"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    let labels: Vec<String> = std::iter::once("ds-1".to_owned())
        .chain(
            rotations
                .iter()
                .map(|k| k["label"].as_str().unwrap().to_owned()),
        )
        .collect();
    let mut signed: Vec<String> = by_key.keys().cloned().collect();
    signed.sort_by_key(|l| labels.iter().position(|x| x == l));
    assert_eq!(signed, labels, "{by_key:?}");
    // The switch happened at the configured time: nothing was signed by a
    // new key before its activation, nor by its predecessor after it. The
    // registry keeps when each was signed (whole seconds); the credentials
    // say only the day.
    let db = rusqlite::Connection::open(d.scratch().join("registry.db")).unwrap();
    let signed_at = |id: &str| -> OffsetDateTime {
        let at: i64 = db
            .query_row(
                "SELECT issued_at FROM credentials WHERE id = ?1",
                [id],
                |r| r.get(0),
            )
            .unwrap();
        OffsetDateTime::from_unix_timestamp(at).unwrap()
    };
    for (i, key) in rotations.iter().enumerate() {
        let from = time_of(&key["activate_at"]);
        for r in &issued {
            let at = signed_at(r["id"].as_str().unwrap());
            if r["key_label"] == key["label"] {
                assert!(
                    at + time::Duration::seconds(1) > from,
                    "signed by {} before its time",
                    key["label"]
                );
            }
            if r["key_label"].as_str() == Some(labels[i].as_str()) {
                assert!(
                    at <= from,
                    "{} signed after its successor took over",
                    labels[i]
                );
            }
        }
    }
    // Exactly one credential per request.
    let stored: i64 = db
        .query_row("SELECT COUNT(*) FROM credentials", [], |r| r.get(0))
        .unwrap();
    assert_eq!(stored as usize, issued.len());
    // The registry counted the signatures of the keys now retired.
    let keys = d.keys();
    let ds1 = keys.iter().find(|k| k["label"] == "ds-1").unwrap();
    assert_eq!(ds1["state"], "retired");
    assert_eq!(ds1["signatures"].as_u64().unwrap() as usize, by_key["ds-1"]);
}
