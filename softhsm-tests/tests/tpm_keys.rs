//! The TPM backend against a real software TPM (swtpm).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use pkcs11_shim::tpm::TpmBackend;
use pkcs11_shim::{Algorithm, Error, KeyBackend, KeyPurpose, TpmConfig};
use softhsm_tests::Swtpm;

fn config(tpm: &Swtpm) -> TpmConfig {
    TpmConfig {
        tcti: tpm.tcti(),
        key_dir: tpm.scratch().join("keys"),
        owner_auth: None,
        recovery_interval_ms: 100,
    }
}

#[test]
fn tpm_keys_sign_and_openssl_verifies() {
    let tpm = Swtpm::start();
    let backend = TpmBackend::open(config(&tpm)).unwrap();
    for (label, alg) in [("ds-p256", Algorithm::Es256), ("ds-p384", Algorithm::Es384)] {
        let key = backend
            .generate(label, KeyPurpose::DocumentSigner, alg)
            .unwrap();
        let public = key.public_key.unwrap();
        let signature = backend
            .sign(label, pkcs11_shim::KeyPurpose::DocumentSigner, b"mso bytes")
            .unwrap();
        assert!(
            common::openssl_verifies(&tpm.scratch(), &public, b"mso bytes", &signature),
            "{alg}"
        );
        assert!(
            !common::openssl_verifies(&tpm.scratch(), &public, b"mso bytez", &signature),
            "{alg}"
        );
    }
    // Alternating keys forces loads and flushes within swtpm's three slots.
    for n in 0..10 {
        let label = if n % 2 == 0 { "ds-p256" } else { "ds-p384" };
        let _ = backend
            .sign(label, pkcs11_shim::KeyPurpose::DocumentSigner, b"alternate")
            .unwrap();
    }
    assert!(backend.health().up);
}

#[test]
#[allow(clippy::disallowed_methods)] // tests the shim's own HMAC
fn tpm_hmac_keys_work_and_differ() {
    let tpm = Swtpm::start();
    let backend = TpmBackend::open(config(&tpm)).unwrap();
    let _ = backend
        .generate("pseudonym", KeyPurpose::Pseudonym, Algorithm::HmacSha256)
        .unwrap();
    let _ = backend
        .generate("pseudonym-2", KeyPurpose::Pseudonym, Algorithm::HmacSha256)
        .unwrap();
    let a = backend
        .hmac_sha256(
            "pseudonym",
            pkcs11_shim::KeyPurpose::Pseudonym,
            b"0001013000000",
        )
        .unwrap();
    assert_eq!(
        a,
        backend
            .hmac_sha256(
                "pseudonym",
                pkcs11_shim::KeyPurpose::Pseudonym,
                b"0001013000000"
            )
            .unwrap()
    );
    assert_ne!(
        a,
        backend
            .hmac_sha256(
                "pseudonym-2",
                pkcs11_shim::KeyPurpose::Pseudonym,
                b"0001013000000"
            )
            .unwrap()
    );
    assert!(matches!(
        backend.sign("pseudonym", pkcs11_shim::KeyPurpose::Pseudonym, b"m"),
        Err(Error::WrongKeyType { .. })
    ));
    // A key signs only as what it was made for.
    assert!(matches!(
        backend.sign("pseudonym", pkcs11_shim::KeyPurpose::DocumentSigner, b"m"),
        Err(Error::WrongPurpose { .. })
    ));
}

#[test]
fn tpm_keys_survive_a_tpm_restart_and_a_new_process_context() {
    let mut tpm = Swtpm::start();
    let backend = TpmBackend::open(config(&tpm)).unwrap();
    let key = backend
        .generate("ds", KeyPurpose::DocumentSigner, Algorithm::Es256)
        .unwrap();
    let public = key.public_key.clone().unwrap();
    let _ = backend
        .sign("ds", pkcs11_shim::KeyPurpose::DocumentSigner, b"before")
        .unwrap();

    tpm.restart(); // power cycle: every transient object and session is gone
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let signature = loop {
        match backend.sign(
            "ds",
            pkcs11_shim::KeyPurpose::DocumentSigner,
            b"after restart",
        ) {
            Ok(sig) => break sig,
            Err(err) => {
                assert!(err.is_retryable(), "{err}");
                assert!(std::time::Instant::now() < deadline, "no recovery: {err}");
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
    };
    assert!(common::openssl_verifies(
        &tpm.scratch(),
        &public,
        b"after restart",
        &signature
    ));
    assert!(backend.health().recoveries >= 1);
    drop(backend);

    // A fresh backend (as after a daemon restart) finds the same key.
    let backend = TpmBackend::open(config(&tpm)).unwrap();
    assert_eq!(backend.find("ds").unwrap(), key);
    let signature = backend
        .sign(
            "ds",
            pkcs11_shim::KeyPurpose::DocumentSigner,
            b"new context",
        )
        .unwrap();
    assert!(public.verify(b"new context", &signature).unwrap());
}

#[test]
#[allow(clippy::disallowed_methods)] // tests the shim's own HMAC input checks and destroy
fn tpm_bad_input_gets_clear_errors() {
    let tpm = Swtpm::start();
    let backend = TpmBackend::open(config(&tpm)).unwrap();
    let err = backend
        .generate("ed", KeyPurpose::DocumentSigner, Algorithm::EdDsa)
        .unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }), "{err}");
    assert!(matches!(
        backend.sign("missing", pkcs11_shim::KeyPurpose::DocumentSigner, b"m"),
        Err(Error::KeyNotFound { .. })
    ));
    let _ = backend
        .generate("ds", KeyPurpose::DocumentSigner, Algorithm::Es256)
        .unwrap();
    assert!(matches!(
        backend.generate("ds", KeyPurpose::DocumentSigner, Algorithm::Es256),
        Err(Error::KeyExists { .. })
    ));
    assert!(matches!(
        backend.sign("ds", pkcs11_shim::KeyPurpose::DocumentSigner, b""),
        Err(Error::InvalidInput(_))
    ));
    assert!(matches!(
        backend.sign(
            "../etc/passwd",
            pkcs11_shim::KeyPurpose::DocumentSigner,
            b"m"
        ),
        Err(Error::InvalidInput(_))
    ));
    let err = backend
        .hmac_sha256("ds", pkcs11_shim::KeyPurpose::Pseudonym, &[0; 2000])
        .unwrap_err();
    assert!(matches!(err, Error::InvalidInput(_)), "{err}");
    backend.destroy("ds").unwrap();
    assert!(matches!(backend.find("ds"), Err(Error::KeyNotFound { .. })));
}

#[test]
fn a_corrupt_key_blob_fails_that_key_only() {
    let tpm = Swtpm::start();
    let cfg = config(&tpm);
    let backend = TpmBackend::open(cfg.clone()).unwrap();
    let _ = backend
        .generate("good", KeyPurpose::DocumentSigner, Algorithm::Es256)
        .unwrap();
    let _ = backend
        .generate("bad", KeyPurpose::DocumentSigner, Algorithm::Es256)
        .unwrap();
    let path = cfg.key_dir.join("bad.tpmkey");
    let text = std::fs::read_to_string(&path).unwrap();
    // Flip one hex digit near the end of the wrapped private area.
    let mut bytes = text.into_bytes();
    let pos = bytes.len() - 10;
    bytes[pos] = if bytes[pos] == b'0' { b'1' } else { b'0' };
    std::fs::write(&path, bytes).unwrap();
    let err = backend
        .sign("bad", pkcs11_shim::KeyPurpose::DocumentSigner, b"m")
        .unwrap_err();
    assert!(
        !err.is_retryable(),
        "a corrupt blob is not a lost TPM: {err}"
    );
    // The TPM connection was kept: the good key signs at once.
    let started = std::time::Instant::now();
    let _ = backend
        .sign("good", pkcs11_shim::KeyPurpose::DocumentSigner, b"m")
        .unwrap();
    assert!(started.elapsed() < std::time::Duration::from_secs(1));
    assert_eq!(backend.health().recoveries, 0);
}
