//! Key-layer benchmark, one run, one fresh SoftHSM token: a bare cryptoki
//! ES256 loop against signatures through the shim's trait, at 1 and 2
//! threads, interleaved over several rounds (median reported); then the
//! swtpm signing rate. Prints the shim/raw ratio (target ≥ 0.95 at 2 threads).
//!
//! `cargo bench -p softhsm-tests --bench keys` (or `make bench`).
//! `DOJANG_BENCH_SECONDS` sets the length of each measurement (default 2).

mod common;

use std::time::{Duration, Instant};

use common::{joined, median, BenchResult};
use pkcs11_shim::pkcs11::{raw_sign_rate, Pkcs11Backend, RawBenchmark};
use pkcs11_shim::tpm::TpmBackend;
use pkcs11_shim::{Algorithm, KeyBackend, KeyPurpose, TpmConfig};
use secrecy::SecretString;
use softhsm_tests::{Swtpm, USER_PIN};

const ROUNDS: usize = 7;
const MESSAGE: &[u8] = &[0x5a; 256]; // about the size of a COSE Sig_structure for an MSO digest

fn shim_rate(
    backend: &dyn KeyBackend,
    label: &str,
    threads: usize,
    duration: Duration,
) -> BenchResult<f64> {
    let start = Instant::now();
    let deadline = start + duration;
    let signed = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| -> BenchResult<u64> {
                    let mut n = 0u64;
                    while Instant::now() < deadline {
                        let _ = backend.sign(
                            label,
                            pkcs11_shim::KeyPurpose::DocumentSigner,
                            MESSAGE,
                        )?;
                        n += 1;
                    }
                    Ok(n)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| joined(h.join(), "signing"))
            .sum::<BenchResult<u64>>()
    })?;
    Ok(signed as f64 / start.elapsed().as_secs_f64())
}

fn main() -> BenchResult {
    let seconds: u64 = std::env::var("DOJANG_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let duration = Duration::from_secs(seconds);
    let (token, config) = common::token_with_ds_key("bench-ds")?;
    let raw = |threads| RawBenchmark {
        module: config.module.clone(),
        token_label: token.label().to_owned(),
        pin: SecretString::from(USER_PIN),
        key_label: "bench-ds".into(),
        threads,
        duration,
    };

    println!(
        "key-layer benchmark: SoftHSM ES256, {ROUNDS} interleaved rounds of {seconds} s, median"
    );
    println!(
        "{:<8} {:>14} {:>14} {:>8}",
        "threads", "raw sig/s", "shim sig/s", "ratio"
    );
    let mut ratio_at_two = 0.0;
    for threads in [1usize, 2] {
        let (mut raws, mut shims) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            raws.push(raw_sign_rate(&raw(threads), MESSAGE)?);
            let backend = Pkcs11Backend::open(config.clone())?;
            shims.push(shim_rate(&backend, "bench-ds", threads, duration)?);
        }
        let (raw_rate, shim_rate) = (median(raws), median(shims));
        let ratio = shim_rate / raw_rate;
        if threads == 2 {
            ratio_at_two = ratio;
        }
        println!("{threads:<8} {raw_rate:>14.0} {shim_rate:>14.0} {ratio:>8.3}");
    }
    println!(
        "shim/raw at 2 threads: {ratio_at_two:.3} (target >= 0.95): {}",
        if ratio_at_two >= 0.95 {
            "met"
        } else {
            "NOT met"
        }
    );

    let tpm = Swtpm::start();
    let backend = TpmBackend::open(TpmConfig {
        tcti: tpm.tcti(),
        key_dir: tpm.scratch().join("keys"),
        owner_auth: None,
        recovery_interval_ms: 1000,
    })?;
    let _ = backend.generate("bench-tpm", KeyPurpose::DocumentSigner, Algorithm::Es256)?;
    let tpm_rate = shim_rate(&backend, "bench-tpm", 1, duration)?;
    println!("swtpm ES256 through the shim (password session, 1 thread): {tpm_rate:.0} sig/s");
    Ok(())
}
