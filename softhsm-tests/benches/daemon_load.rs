//! Load benchmark of the real daemon: issuance over mTLS with keep-alive,
//! durable SQLite commits, next to the raw 2-thread SoftHSM ES256 rate
//! measured in the same run on the same machine.
//!
//! Reports issuances/s and p50/p99 at saturation and at half that rate
//! (open loop), the daemon's peak RSS, and the ratio to the raw rate.
//! Targets: throughput ≥ 0.5 × raw, p99 ≤ 10 ms at half load, RSS ≤ 100 MiB.
//! The load generator shares the two cores with the daemon.
//!
//! `make bench-load` (or `cargo build --release --bins && cargo bench -p
//! softhsm-tests --bench daemon_load`); `DOJANG_LOAD_SECONDS` (default 10),
//! `DOJANG_LOAD_CONNECTIONS` (default 32), `DOJANG_LOAD_STORE=postgres` (the
//! local PostgreSQL instead of SQLite).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::load::{bodies, env, load};
use common::BenchResult;
use pkcs11_shim::pkcs11::{raw_sign_rate, RawBenchmark};
use secrecy::SecretString;
use softhsm_tests::daemon::{Daemon, Options};

fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn main() -> BenchResult {
    let seconds = env("DOJANG_LOAD_SECONDS", 10);
    let connections = env("DOJANG_LOAD_CONNECTIONS", 32) as usize;
    let duration = Duration::from_secs(seconds);

    // The raw baseline: bare cryptoki, 2 threads, this machine, this run.
    let (token, config) = common::token_with_ds_key("bench-ds")?;
    let raw = |seconds| -> BenchResult<f64> {
        Ok(raw_sign_rate(
            &RawBenchmark {
                module: config.module.clone(),
                token_label: token.label().to_owned(),
                pin: SecretString::from(softhsm_tests::USER_PIN),
                key_label: "bench-ds".into(),
                threads: 2,
                duration: Duration::from_secs(seconds),
            },
            &[0x5a; 256],
        )?)
    };
    // The ceiling the token alone sets: an issuance's HSM work and nothing
    // else, interleaved with raw runs (this VM's speed drifts), medians.
    let (mut raws, mut ceilings) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        raws.push(raw(2)?);
        ceilings.push(common::hsm_work_per_issuance_rate(
            &config,
            "bench-ds",
            "bench-pseudonym",
            Duration::from_secs(2),
        )?);
    }
    let (raw_before, hsm_ceiling) = (common::median(raws), common::median(ceilings));

    // DOJANG_LOAD_STORE=postgres: the registry in a fresh schema of the
    // local PostgreSQL instead of SQLite.
    let postgres = std::env::var("DOJANG_LOAD_STORE").is_ok_and(|s| s == "postgres");
    let schema = if postgres {
        Some(
            softhsm_tests::daemon::PgSchema::create()
                .ok_or("DOJANG_LOAD_STORE=postgres, but no PostgreSQL at 127.0.0.1:5432")?,
        )
    } else {
        None
    };
    let store = match &schema {
        Some(s) => softhsm_tests::daemon::Store::Postgres(s.url.clone()),
        None => softhsm_tests::daemon::Store::Sqlite,
    };
    let d = Daemon::start(Options {
        store,
        limits: format!("max_in_flight = {}\nsigning_threads = 16", connections * 4),
        policy: |p| {
            p.replace(
                "requests_per_minute = 6000",
                "requests_per_minute = 10000000",
            )
        },
        ..Options::default()
    });
    let target = d.api_target("counter", false);
    let pid = d.pid();
    let rss_idle = rss_kib(pid, "VmRSS:");
    // Enough distinct requests for the saturated run at several times the raw rate.
    let count = (raw_before * seconds as f64 * 1.2) as usize + 1000;
    eprintln!("preparing {count} distinct requests…");
    let saturated_bodies = Arc::new(bodies(count, 0)?);
    let _warm = load(
        &target,
        Arc::new(bodies(200, 900_000)?),
        8,
        Duration::from_secs(1),
        None,
    )?;
    eprintln!("saturation phase starting (dojangd pid {pid})");
    let (daemon_cpu, own_cpu) = (
        common::cpu_seconds(&pid.to_string()),
        common::cpu_seconds("self"),
    );
    let mut saturated = load(&target, saturated_bodies, connections, duration, None)?;
    let daemon_cpu = common::cpu_seconds(&pid.to_string()) - daemon_cpu;
    let own_cpu = common::cpu_seconds("self") - own_cpu;
    let half_rate = saturated.rate() / 2.0;
    let half_count = (half_rate * seconds as f64 * 1.1) as usize + 100;
    let half_bodies = Arc::new(bodies(half_count, count as u32 + 1000)?);
    let mut half = load(&target, half_bodies, connections, duration, Some(half_rate))?;
    let rss_peak = rss_kib(pid, "VmHWM:");
    drop(d);
    let raw_after = raw(3)?;
    drop(schema);
    // What the audit entry's SQL adds to an issuance's transaction, this run
    // (measured on SQLite).
    let (append_us, empty_us) = common::audit_sql_cpu_us()?;
    let audit_us = (append_us - empty_us).max(0.0);
    let raw_rate = (raw_before + raw_after) / 2.0;

    println!("daemon load benchmark: POST /v1/credentials over mTLS (HTTP/1.1 keep-alive),");
    println!(
        "  {connections} connections, {seconds} s per phase, {}, mdoc and SD-JWT alternating",
        if postgres {
            "PostgreSQL (local, synchronous_commit on)"
        } else {
            "SQLite synchronous=FULL"
        }
    );
    println!(
        "  raw SoftHSM ES256, 2 threads: {raw_before:.0} sig/s before, {raw_after:.0} after (mean {raw_rate:.0})"
    );
    println!(
        "  saturation: {:.0} issuances/s, p50 {:.2} ms, p99 {:.2} ms, {} failed",
        saturated.rate(),
        saturated.percentile(0.50),
        saturated.percentile(0.99),
        saturated.failed
    );
    println!(
        "  CPU at saturation: dojangd {:.2} cores ({:.0} µs per issuance), load generator {:.2} cores",
        daemon_cpu / saturated.elapsed.as_secs_f64(),
        daemon_cpu * 1e6 / saturated.issued.max(1) as f64,
        own_cpu / saturated.elapsed.as_secs_f64()
    );
    let per_issuance_us = daemon_cpu * 1e6 / saturated.issued.max(1) as f64;
    println!(
        "  auditing: the entry's SQL adds {audit_us:.1} µs CPU to an issuance's transaction = {:.1}% of the daemon's CPU per issuance (target <= 5%){}",
        audit_us / per_issuance_us * 100.0,
        if postgres {
            " [measured on SQLite: not this run's store]"
        } else {
            ""
        }
    );
    println!(
        "  half load ({half_rate:.0}/s offered): {:.0} issuances/s, p50 {:.2} ms, p99 {:.2} ms, {} failed",
        half.rate(),
        half.percentile(0.50),
        half.percentile(0.99),
        half.failed
    );
    println!(
        "  daemon RSS: {:.1} MiB idle, {:.1} MiB peak",
        rss_idle as f64 / 1024.0,
        rss_peak as f64 / 1024.0
    );
    println!(
        "  HSM work of one issuance alone (signature + pseudonym HMAC through the shim, 2 threads): {hsm_ceiling:.0}/s = {:.2} of the raw rate before it, the ceiling before TLS, JSON, CBOR and the store",
        hsm_ceiling / raw_before
    );
    // What the target leaves for everything but the HSM, on two cores.
    let budget_us = 2e6 / (0.5 * raw_rate);
    let hsm_us = 2e6 / hsm_ceiling;
    println!(
        "  at 0.5 x raw the two cores allow {budget_us:.0} µs of CPU per issuance; its HSM work takes {hsm_us:.0} µs of it, leaving {:.0} µs for TLS, HTTP, JSON, CBOR, the store and the audit entry (this run's daemon spent {:.0} µs on them)",
        budget_us - hsm_us,
        per_issuance_us - hsm_us
    );
    println!(
        "  ratio throughput / raw 2-thread rate: {:.2}  (target >= 0.50)",
        saturated.rate() / raw_rate
    );
    println!(
        "  p99 at half load {:.2} ms (target <= 10 ms); peak RSS {:.1} MiB (target <= 100 MiB)",
        half.percentile(0.99),
        rss_peak as f64 / 1024.0
    );
    Ok(())
}
