//! Two `dojangd` nodes sharing one PostgreSQL: the free-issuance quota is
//! never exceeded however the requests race across the nodes.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Barrier};

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
