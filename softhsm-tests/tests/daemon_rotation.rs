//! Switching the DS key while clients issue: a new DS certificate and a
//! SIGHUP, twice, under continuous load. No request fails (a request cut by
//! a reload's connection close is retried with its Idempotency-Key, which
//! returns the committed answer if there was one), and every credential
//! names, and verifies with, the key that signed it.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dojang::credential::mdoc;
use dojang::credential::verify::Trust;
use softhsm_tests::daemon::{self, Daemon, Options};
use time::OffsetDateTime;

fn wait_for_reloads(d: &Daemon, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while d.log().matches("reloaded TLS files").count() < count {
        assert!(Instant::now() < deadline, "{}", d.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn switching_the_ds_key_under_load_fails_no_request() {
    let d = Daemon::start(Options::default());
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..4u32)
        .map(|t| {
            let target = d.api_target("counter", false);
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut client = softhsm_tests::https::Client::new(target.clone());
                let mut issued = Vec::new();
                let mut retries = 0;
                for n in 0u32.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let (jwk, _) = daemon::phone();
                    let body = serde_json::to_vec(&daemon::request(
                        "mdoc",
                        &daemon::number(t * 10_000 + n),
                        &jwk,
                    ))
                    .unwrap();
                    let key = format!("rotation-{t}-{n}");
                    let headers = [
                        ("content-type", "application/json"),
                        ("idempotency-key", key.as_str()),
                    ];
                    let reply = loop {
                        match client.try_send("POST", "/v1/credentials", &headers, body.clone()) {
                            Ok(r) => break r,
                            // The reload closed this connection: reconnect and
                            // retry; the key makes the retry safe.
                            Err(_) if retries < 50 => {
                                retries += 1;
                                client = softhsm_tests::https::Client::new(target.clone());
                            }
                            Err(e) => panic!("{e}"),
                        }
                    };
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
    for (round, label) in ["ds-2", "ds-3"].into_iter().enumerate() {
        std::thread::sleep(Duration::from_millis(1200));
        let _ = d.ctl(&["pki", "issue-ds", "--label", label]);
        d.signal("HUP");
        wait_for_reloads(&d, round + 1);
    }
    std::thread::sleep(Duration::from_millis(800));
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
    let iaca = d.iaca_der();
    let mut by_key: BTreeMap<String, usize> = BTreeMap::new();
    for r in &issued {
        let cbor = base64::Engine::decode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            r["credential"].as_str().unwrap(),
        )
        .unwrap();
        let _ = mdoc::verify(
            &cbor,
            &Trust::Iaca(iaca.clone()),
            OffsetDateTime::now_utc(),
            Some(mdoc::DOC_TYPE),
        )
        .unwrap();
        let kid = r["kid"].as_str().unwrap();
        assert!(published.contains(&kid), "{kid} not in the JWKS");
        *by_key
            .entry(r["key_label"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    assert_eq!(
        by_key.keys().cloned().collect::<Vec<_>>(),
        ["ds-1", "ds-2", "ds-3"],
        "{by_key:?}"
    );
    // Exactly one credential per request, however often it was retried.
    let db = rusqlite::Connection::open(d.scratch().join("registry.db")).unwrap();
    let stored: i64 = db
        .query_row("SELECT COUNT(*) FROM credentials", [], |r| r.get(0))
        .unwrap();
    assert_eq!(stored as usize, issued.len());
}
