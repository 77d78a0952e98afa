//! Throughput while officers rotate the DS key, against the same daemon
//! without rotation, in one run: saturated issuance over mTLS for three
//! phases of `DOJANG_LOAD_SECONDS` (default 10): quiet, rotating, quiet.
//! While rotating, two officers approve a new key again and again; each is
//! published at once and signs 1 s later (the policy's prepublication), and
//! the next rotation starts once it signs. The two quiet phases give the
//! noise; the target is no drop beyond it and no failed request.
//!
//! `make bench-rotation` (or `cargo build --release --bins && cargo bench
//! -p softhsm-tests --bench daemon_rotation`).

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::load::{bodies, env, load};
use common::{joined, BenchResult};
use serde_json::Value;
use softhsm_tests::daemon::{Daemon, Options};

fn main() -> BenchResult {
    let seconds = env("DOJANG_LOAD_SECONDS", 10);
    let connections = env("DOJANG_LOAD_CONNECTIONS", 32) as usize;
    let duration = Duration::from_secs(seconds);
    let d = Daemon::start(Options {
        limits: format!("max_in_flight = {}\nsigning_threads = 16", connections * 4),
        policy: |p| {
            p.replace(
                "requests_per_minute = 6000",
                "requests_per_minute = 10000000",
            )
            .replace("prepublish = \"7d\"", "prepublish = \"1s\"")
        },
        server: "[server.keys]\nlifecycle_interval_ms = 200\n".into(),
        ..Options::default()
    });
    let target = d.api_target("counter", false);
    // Enough distinct requests for each phase at a generous rate.
    let per_phase = 8000 * seconds as usize;
    eprintln!("preparing {} distinct requests…", 3 * per_phase + 200);
    let phase =
        |i: usize| -> BenchResult<_> { Ok(Arc::new(bodies(per_phase, (i * per_phase) as u32)?)) };
    let (quiet_before, rotating_phase, quiet_after) = (phase(0)?, phase(1)?, phase(2)?);
    let _warm = load(
        &target,
        Arc::new(bodies(200, 900_000)?),
        8,
        Duration::from_secs(1),
        None,
    )?;

    let before = load(&target, quiet_before, connections, duration, None)?;
    let rotating = Arc::new(AtomicBool::new(true));
    let rotations = std::thread::scope(|scope| -> BenchResult<_> {
        let officers = scope.spawn(|| -> BenchResult<usize> {
            let mut done = 0usize;
            let mut watcher = d.client("auditor");
            let pairs = [("kim", "lee"), ("lee", "park"), ("park", "kim")];
            for &(proposer, approver) in pairs.iter().cycle() {
                if !rotating.load(Ordering::Relaxed) {
                    break;
                }
                let approved = d.dual_control(
                    proposer,
                    approver,
                    "/v1/keys/rotate",
                    &serde_json::json!({"chain": "ds"}),
                );
                assert!(
                    approved
                        .get("result")
                        .and_then(Value::as_str)
                        .is_some_and(|r| r.contains("generated")),
                    "{approved}"
                );
                // Until the new key signs (and so is no longer pending).
                // Watching is load of the harness's own, on the same cores:
                // one kept-alive connection and a look every 200 ms, not a
                // new mTLS handshake every 50 ms.
                let deadline = Instant::now() + Duration::from_secs(10);
                while watcher
                    .get("/v1/keys")
                    .json()
                    .get("keys")
                    .and_then(Value::as_array)
                    .is_some_and(|keys| {
                        keys.iter()
                            .any(|k| k["chain"] == "ds" && k["state"] == "pending")
                    })
                {
                    assert!(Instant::now() < deadline, "the new key never took over");
                    std::thread::sleep(Duration::from_millis(200));
                }
                done += 1;
            }
            Ok(done)
        });
        let during = load(&target, rotating_phase, connections, duration, None);
        rotating.store(false, Ordering::Relaxed);
        Ok((during?, joined(officers.join(), "officers")?))
    })?;
    let (during, rotations) = rotations;
    let after = load(&target, quiet_after, connections, duration, None)?;

    // Every key that signed during the run is in the JWKS.
    let keys = d.keys();
    let jwks = d.public_client().get("/.well-known/jwks.json").json();
    let published = keys.iter().all(|k| {
        jwks.get("keys")
            .and_then(Value::as_array)
            .is_some_and(|j| j.iter().any(|p| p["kid"] == k["kid"]))
    });

    let quiet = (before.rate() + after.rate()) / 2.0;
    let noise = (before.rate() - after.rate()).abs() / quiet;
    let ratio = during.rate() / quiet;
    println!("rotation benchmark: POST /v1/credentials over mTLS, {connections} connections, {seconds} s per phase, SQLite");
    println!(
        "  quiet before: {:.0} issuances/s, {} failed",
        before.rate(),
        before.failed
    );
    println!(
        "  rotating:     {:.0} issuances/s, {} failed, {rotations} rotations (two officers each; new key signs 1 s after approval)",
        during.rate(),
        during.failed
    );
    println!(
        "  quiet after:  {:.0} issuances/s, {} failed",
        after.rate(),
        after.failed
    );
    println!(
        "  ratio rotating / quiet: {ratio:.3}; noise between the quiet phases: {:.1}%  (target: no drop beyond noise, no failure)",
        noise * 100.0
    );
    println!(
        "  keys: {} in the registry, all in the JWKS: {published}",
        keys.len()
    );
    let verdict = if during.failed + before.failed + after.failed == 0
        && ratio >= 1.0 - noise.max(0.02)
        && published
    {
        "met"
    } else {
        "NOT met"
    };
    println!("  target {verdict}");
    Ok(())
}
