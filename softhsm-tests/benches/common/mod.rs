//! What the benchmarks share: a fresh token with a P-256 document-signer
//! key, and timing helpers.

#![allow(dead_code)] // each benchmark uses its own subset

use std::time::{Duration, Instant};

use pkcs11_shim::pkcs11::Pkcs11Backend;
use pkcs11_shim::{Algorithm, KeyBackend, KeyPurpose, Pkcs11Config, SecretSource};
use softhsm_tests::SoftHsmToken;

/// A fresh token (this process's) with a P-256 document-signer key `label`;
/// the backend that made it is closed again, so a raw cryptoki run can follow.
pub(crate) fn token_with_ds_key(label: &str) -> (SoftHsmToken, Pkcs11Config) {
    let token = SoftHsmToken::new("dojang-bench");
    let config = Pkcs11Config::new(
        softhsm_tests::softhsm_module(),
        token.label(),
        SecretSource::File(token.pin_file()),
    );
    let backend = Pkcs11Backend::open(config.clone()).expect("open token");
    let _ = backend
        .generate(label, KeyPurpose::DocumentSigner, Algorithm::Es256)
        .expect("generate");
    (token, config)
}

/// Runs `f` for about `duration` after a warm-up; microseconds per call.
pub(crate) fn per_call(duration: Duration, mut f: impl FnMut()) -> f64 {
    for _ in 0..100 {
        f();
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < duration {
        f();
        n += 1;
    }
    start.elapsed().as_secs_f64() * 1e6 / n as f64
}

/// The median of the measurements.
pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
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
