//! Device loss and recovery without restarting the process: SoftHSM behind
//! `p11-kit server`, the server killed and restarted under the backend.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::{Duration, Instant};

use pkcs11_shim::pkcs11::Pkcs11Backend;
use pkcs11_shim::{Algorithm, KeyBackend, KeyPurpose, Pkcs11Config, SecretSource};
use softhsm_tests::{P11KitServer, SoftHsmToken};

#[test]
fn signing_fails_retryably_while_the_hsm_is_gone_then_recovers() {
    let token = SoftHsmToken::create("dojang-test");
    let mut server = P11KitServer::start(token);
    let mut config = Pkcs11Config::new(
        softhsm_tests::p11kit_client_module(),
        server.token().label(),
        SecretSource::File(server.token().pin_file()),
    );
    config.recovery_interval_ms = 200;
    let backend = Pkcs11Backend::open(config).expect("open through p11-kit");
    let key = backend
        .generate("ds", KeyPurpose::DocumentSigner, Algorithm::Es256)
        .unwrap();
    let public = key.public_key.unwrap();
    let signature = backend
        .sign("ds", pkcs11_shim::KeyPurpose::DocumentSigner, b"before")
        .unwrap();
    assert!(common::openssl_verifies(
        server.token().scratch(),
        &public,
        b"before",
        &signature
    ));

    server.kill();
    for attempt in 0..5 {
        let started = Instant::now();
        let err = backend
            .sign("ds", pkcs11_shim::KeyPurpose::DocumentSigner, b"during")
            .unwrap_err();
        assert!(
            err.is_retryable(),
            "attempt {attempt}: {err} is not retryable"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "a call hung for {:?}",
            started.elapsed()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let health = backend.health();
    assert!(!health.up, "{health:?}");

    server.restart();
    let deadline = Instant::now() + Duration::from_secs(15);
    let signature = loop {
        match backend.sign("ds", pkcs11_shim::KeyPurpose::DocumentSigner, b"after") {
            Ok(sig) => break sig,
            Err(err) => {
                assert!(err.is_retryable(), "{err}");
                assert!(Instant::now() < deadline, "no recovery: {err}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    };
    assert!(common::openssl_verifies(
        server.token().scratch(),
        &public,
        b"after",
        &signature
    ));
    let health = backend.health();
    assert!(health.up, "{health:?}");
    assert!(health.recoveries >= 1, "{health:?}");
}

#[test]
fn sessions_invalidated_under_the_pool_are_replaced_transparently() {
    // Restarting the server between two calls: the next call meets dead
    // session handles, reconnects once and succeeds without the caller
    // seeing an error.
    let token = SoftHsmToken::create("dojang-test");
    let mut server = P11KitServer::start(token);
    let config = Pkcs11Config::new(
        softhsm_tests::p11kit_client_module(),
        server.token().label(),
        SecretSource::File(server.token().pin_file()),
    );
    let backend = Pkcs11Backend::open(config).unwrap();
    let key = backend
        .generate("ds", KeyPurpose::DocumentSigner, Algorithm::Es256)
        .unwrap();
    server.restart();
    let signature = backend
        .sign(
            "ds",
            pkcs11_shim::KeyPurpose::DocumentSigner,
            b"after restart",
        )
        .expect("transparent reconnection");
    assert!(key
        .public_key
        .unwrap()
        .verify(b"after restart", &signature)
        .unwrap());
    assert_eq!(backend.health().recoveries, 1);
}
