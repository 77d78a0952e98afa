//! Registry commit throughput for issuance records, with durable commits,
//! next to the raw SoftHSM ES256 rate measured in the same run. Target: the
//! store alone sustains at least twice the HSM's rate, so it is never the
//! ceiling. SQLite in a temp file (WAL, synchronous=FULL, group commit) and
//! PostgreSQL at 127.0.0.1:5432 (a fresh schema in `test`; skipped if absent).
//!
//! `cargo bench -p softhsm-tests --bench registry` (or `make bench`).
//! Every record takes a free first-time copy (the quota counter is the one
//! row all issuances touch); `DOJANG_BENCH_PAID=1` measures without it.
//! `DOJANG_BENCH_THREADS` sets the committing threads (default 32).

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dojang::store::{
    DecisionRecord, IssuanceCommit, NewCredential, PostgresRegistry, Pseudonym, Registry,
    SqliteRegistry,
};
use pkcs11_shim::pkcs11::{raw_sign_rate, RawBenchmark};
use secrecy::SecretString;
use softhsm_tests::USER_PIN;

use common::{joined, BenchResult};

/// Committing threads (`DOJANG_BENCH_THREADS`, default 32).
fn threads() -> usize {
    std::env::var("DOJANG_BENCH_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(32)
}
const SECONDS: u64 = 3;

fn record(thread: usize, n: u64, list: u32, index: u64) -> IssuanceCommit {
    let mut holder = [0u8; 32];
    holder[..8].copy_from_slice(&(thread as u64).to_be_bytes());
    holder[8..16].copy_from_slice(&n.to_be_bytes());
    IssuanceCommit {
        credential: NewCredential {
            id: format!("{thread:04x}-{n:012x}"),
            holder: Pseudonym(holder),
            device: format!("device-{thread}-{n}"),
            profile: "mdoc".into(),
            kid: "bench-kid".into(),
            status_list: list,
            status_index: index,
            issued_at: 1_800_000_000,
            valid_until: 1_808_000_000,
            document_expiry: "2029-12-27".into(),
            claims_mac: [0; 32],
            has_portrait: false,
        },
        supersede: false,
        want_free_copy: std::env::var_os("DOJANG_BENCH_PAID").is_none(),
        idempotency: None,
        decision: DecisionRecord {
            node: "test".into(),
            at: 1_800_000_000,
            actor: "spiffe://bench/client".into(),
            action: "issue".into(),
            outcome: "allow".into(),
            rule: None,
            policy_hash: "ab".repeat(32),
            ..Default::default()
        },
        copies: Vec::new(),
    }
}

fn commits_per_second(registry: Arc<dyn Registry>) -> BenchResult<f64> {
    registry.set_free_quota(1_000_000_000)?;
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + Duration::from_secs(SECONDS);
    let handles: Vec<_> = (0..threads())
        .map(|t| {
            let (registry, done) = (registry.clone(), done.clone());
            std::thread::spawn(move || -> BenchResult {
                let mut n = 0u64;
                let mut block = registry.reserve_status_indexes(1000)?;
                while Instant::now() < deadline {
                    let index = match block.indexes.pop() {
                        Some(index) => index,
                        None => {
                            block = registry.reserve_status_indexes(1000)?;
                            continue;
                        }
                    };
                    let commit = record(t, n, block.list, index);
                    let _ =
                        registry.commit_issuance("bench", commit, Box::new(|_| b"{}".to_vec()))?;
                    n += 1;
                }
                let _ = done.fetch_add(n, Ordering::Relaxed);
                Ok(())
            })
        })
        .collect();
    for h in handles {
        joined(h.join(), "committing")?;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}

fn main() -> BenchResult {
    let (token, config) = common::token_with_ds_key("bench-ds")?;
    let hsm = raw_sign_rate(
        &RawBenchmark {
            module: config.module.clone(),
            token_label: token.label().to_owned(),
            pin: SecretString::from(USER_PIN),
            key_label: "bench-ds".into(),
            threads: 2,
            duration: Duration::from_secs(SECONDS),
        },
        &[0x5a; 256],
    )?;
    println!(
        "registry benchmark: {} committing threads, {SECONDS} s, durable commits",
        threads()
    );
    println!("raw SoftHSM ES256, 2 threads: {hsm:.0} signatures/s");

    let dir = tempfile::tempdir()?;
    let sqlite: Arc<dyn Registry> = Arc::new(SqliteRegistry::open(&dir.path().join("bench.db"))?);
    let rate = commits_per_second(sqlite)?;
    println!(
        "SQLite (WAL, synchronous=FULL, group commit): {rate:.0} issuance records/s = {:.2}x the HSM (target >= 2): {}",
        rate / hsm,
        if rate >= 2.0 * hsm { "met" } else { "NOT met" }
    );

    let admin = "host=127.0.0.1 port=5432 user=postgres dbname=test connect_timeout=3";
    match admin
        .parse::<postgres::Config>()
        .and_then(|c| c.connect(postgres::NoTls))
    {
        Err(e) => println!("PostgreSQL: SKIPPED, not reachable at 127.0.0.1:5432 ({e})"),
        Ok(mut client) => {
            let schema = format!("dj_bench_{}", std::process::id());
            client.batch_execute(&format!(
                "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"
            ))?;
            let url = format!("{admin} options='-c search_path={schema}'");
            let pg: Arc<dyn Registry> = Arc::new(PostgresRegistry::open(&url, threads())?);
            let rate = commits_per_second(pg)?;
            println!(
                "PostgreSQL (synchronous_commit as configured, {} connections): {rate:.0} issuance records/s = {:.2}x the HSM (target >= 2): {}",
                threads(),
                rate / hsm,
                if rate >= 2.0 * hsm { "met" } else { "NOT met" }
            );
            let _ = client.batch_execute(&format!("DROP SCHEMA {schema} CASCADE"));
        }
    }
    Ok(())
}
