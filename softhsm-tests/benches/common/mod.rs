//! What the benchmarks share: a fresh token with a P-256 document-signer
//! key, and timing helpers.

#![allow(dead_code)] // each benchmark uses its own subset

pub(crate) mod disk;
pub(crate) mod hiccups;
pub(crate) mod invariants;
pub(crate) mod load;
pub(crate) mod stages;
pub(crate) mod threads;

use std::time::{Duration, Instant};

use pkcs11_shim::pkcs11::Pkcs11Backend;
use pkcs11_shim::{Algorithm, KeyBackend, KeyPurpose, Pkcs11Config, SecretSource};
use softhsm_tests::SoftHsmToken;

/// What a benchmark step returns: an error ends the run with its message.
pub(crate) type BenchResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// A fresh token (this process's) with a P-256 document-signer key `label`;
/// the backend that made it is closed again, so a raw cryptoki run can follow.
pub(crate) fn token_with_ds_key(label: &str) -> BenchResult<(SoftHsmToken, Pkcs11Config)> {
    let token = SoftHsmToken::new("dojang-bench");
    let config = Pkcs11Config::new(
        softhsm_tests::softhsm_module(),
        token.label(),
        SecretSource::File(token.pin_file()),
    );
    let backend = Pkcs11Backend::open(config.clone())?;
    let _ = backend.generate(label, KeyPurpose::DocumentSigner, Algorithm::Es256)?;
    Ok((token, config))
}

/// Runs `f` for about `duration` after a warm-up; microseconds per call.
/// The first failing call ends the measurement with its error.
pub(crate) fn per_call(duration: Duration, mut f: impl FnMut() -> BenchResult) -> BenchResult<f64> {
    for _ in 0..100 {
        f()?;
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < duration {
        f()?;
        n += 1;
    }
    Ok(start.elapsed().as_secs_f64() * 1e6 / n as f64)
}

/// The median of the measurements (NaN if there are none).
pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Joins a benchmark thread; a panic in it becomes an error.
pub(crate) fn joined<T>(result: std::thread::Result<BenchResult<T>>, what: &str) -> BenchResult<T> {
    result.map_err(|_| format!("{what} thread panicked"))?
}

/// CPU seconds (user + system) a process has used so far.
pub(crate) fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|v| v.parse::<f64>().ok()))
        .sum();
    ticks / 100.0 // USER_HZ
}

/// CPU µs per durable audit append in a transaction of its own, and per
/// the same transaction without the entry (SQLite, group commit, 16
/// writers): their difference is what an entry adds to the transaction of
/// the decision it records. Measured in the order with, without, without,
/// with, so that a machine slowing down (or speeding up) during the probe
/// does not land on one side only.
pub(crate) fn audit_sql_cpu_us() -> BenchResult<(f64, f64)> {
    let dir = tempfile::tempdir()?;
    let registry = dojang::store::SqliteRegistry::open(&dir.path().join("audit.db"))?;
    let (writers, per_writer) = (16u32, 1500u32);
    let run = |append: bool| -> BenchResult<f64> {
        let cpu = cpu_seconds("self");
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..writers)
                .map(|_| {
                    let registry = &registry;
                    scope.spawn(move || audit_probe_writes(registry, append, per_writer))
                })
                .collect();
            handles
                .into_iter()
                .try_for_each(|h| joined(h.join(), "audit writer"))
        })?;
        Ok((cpu_seconds("self") - cpu) * 1e6 / f64::from(writers * per_writer))
    };
    let (append, empty) = (run(true)?, run(false)?);
    let (empty_again, append_again) = (run(false)?, run(true)?);
    Ok(((append + append_again) / 2.0, (empty + empty_again) / 2.0))
}

/// One probe writer: `count` transactions, each with an audit entry or
/// the same write without one.
fn audit_probe_writes(
    registry: &dyn dojang::store::Registry,
    append: bool,
    count: u32,
) -> BenchResult {
    for _ in 0..count {
        if append {
            let decision = dojang::store::DecisionRecord {
                node: "node-a".into(),
                at: 1_800_000_000,
                actor: "spiffe://mois.go.kr/office-counter".into(),
                action: "issue".into(),
                outcome: "deny".into(),
                rule: Some("holder.minimum_age".into()),
                policy_hash: "cf".repeat(32),
                profile: Some("mdoc".into()),
                ..Default::default()
            };
            registry.record(decision, Some(dojang::store::Pseudonym([9; 32])))?;
        } else {
            registry.probe_write()?;
        }
    }
    Ok(())
}

/// The most issuances a second the token itself allows, whatever else an
/// issuance costs: two threads doing, through the shim, the HSM work of one
/// issuance (a document signature and the holder pseudonym's HMAC) and
/// nothing else. Generates the HMAC key `hmac_label` on the token if absent.
// Measures an issuance's HSM work, of which the pseudonym HMAC is half, on a
// throwaway benchmark token.
#[allow(clippy::disallowed_methods)]
pub(crate) fn hsm_work_per_issuance_rate(
    config: &Pkcs11Config,
    ds_label: &str,
    hmac_label: &str,
    duration: Duration,
) -> BenchResult<f64> {
    let backend = Pkcs11Backend::open(config.clone())?;
    if backend
        .hmac_sha256(hmac_label, pkcs11_shim::KeyPurpose::Pseudonym, b"probe")
        .is_err()
    {
        let _ = backend.generate(hmac_label, KeyPurpose::Pseudonym, Algorithm::HmacSha256)?;
    }
    let start = Instant::now();
    let done = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..2)
            .map(|_| {
                scope.spawn(|| -> BenchResult<u64> {
                    let mut n = 0u64;
                    while start.elapsed() < duration {
                        let _ = backend.hmac_sha256(
                            hmac_label,
                            pkcs11_shim::KeyPurpose::Pseudonym,
                            b"9001011234567",
                        )?;
                        let _ = backend.sign(
                            ds_label,
                            pkcs11_shim::KeyPurpose::DocumentSigner,
                            &[0x5a; 256],
                        )?;
                        n += 1;
                    }
                    Ok(n)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| joined(h.join(), "HSM work"))
            .sum::<BenchResult<u64>>()
    })?;
    Ok(done as f64 / start.elapsed().as_secs_f64())
}

/// CPU seconds used so far by every process whose command name is `name`
/// (PostgreSQL's server processes: `postgres`).
pub(crate) fn cpu_seconds_named(name: &str) -> f64 {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|entry| {
            std::fs::read_to_string(entry.path().join("comm")).is_ok_and(|c| c.trim() == name)
        })
        .map(|entry| cpu_seconds(&entry.file_name().to_string_lossy()))
        .sum()
}

/// CPU seconds the whole machine spent busy (not idle or waiting on I/O)
/// so far, over every core; niced work (a fuzzer at nice 19) left out.
pub(crate) fn machine_busy_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal …: niced threads
    // (a daemon that lowers its signing threads' priority) are busy too.
    let busy: f64 = [0, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&i| fields.get(i))
        .sum();
    busy / 100.0 // USER_HZ
}
