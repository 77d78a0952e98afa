//! Many threads signing through one backend for several seconds: no error,
//! and every signature verifies.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pkcs11_shim::{Algorithm, KeyBackend, KeyPurpose};
use softhsm_tests::SoftHsmToken;

#[test]
fn eight_threads_sign_for_seconds_without_error_or_corruption() {
    let token = SoftHsmToken::new("dojang-test");
    let backend = common::open(&token);
    let keys = ["ds-a", "ds-b"];
    let mut publics = Vec::new();
    for label in keys {
        let key = backend
            .generate(label, KeyPurpose::DocumentSigner, Algorithm::Es256)
            .unwrap();
        publics.push(key.public_key.unwrap());
    }
    let signed = AtomicU64::new(0);
    let deadline = Instant::now() + Duration::from_secs(4);
    std::thread::scope(|scope| {
        for thread in 0..8u64 {
            let (backend, publics, signed) = (&backend, &publics, &signed);
            let _ = scope.spawn(move || {
                let mut n = 0u64;
                while Instant::now() < deadline {
                    let which = ((thread + n) % 2) as usize;
                    let message = format!("thread {thread} message {n}");
                    let signature = backend
                        .sign(
                            keys[which],
                            pkcs11_shim::KeyPurpose::DocumentSigner,
                            message.as_bytes(),
                        )
                        .unwrap_or_else(|e| panic!("thread {thread}: {e}"));
                    assert!(
                        publics[which]
                            .verify(message.as_bytes(), &signature)
                            .unwrap(),
                        "thread {thread}: corrupted signature"
                    );
                    n += 1;
                }
                let _ = signed.fetch_add(n, Ordering::Relaxed);
            });
        }
    });
    let total = signed.load(Ordering::Relaxed);
    assert!(total > 1_000, "only {total} signatures in 4 s");
    // A sample checked by the openssl CLI too.
    let signature = backend
        .sign("ds-a", pkcs11_shim::KeyPurpose::DocumentSigner, b"sample")
        .unwrap();
    assert!(common::openssl_verifies(
        token.scratch(),
        &publics[0],
        b"sample",
        &signature
    ));
}
