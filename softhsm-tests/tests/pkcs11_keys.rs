//! The PKCS#11 backend against a real SoftHSM token: key attributes,
//! signatures checked by openssl, HMAC, listing, destruction, bad input.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
#![allow(clippy::indexing_slicing, clippy::panic, clippy::expect_used)] // test code: a failed expect, panic or index is a failed test

mod common;

use pkcs11_shim::pkcs11::Pkcs11Backend;
use pkcs11_shim::{Algorithm, Error, ErrorClass, KeyBackend, KeyPurpose, MAX_SIGN_INPUT};
use softhsm_tests::{SoftHsmToken, USER_PIN};

#[test]
fn every_offered_algorithm_signs_and_openssl_verifies() {
    let token = SoftHsmToken::new("dojang-test");
    let backend = common::open(&token);
    let offered = backend.algorithms();
    for alg in [Algorithm::Es256, Algorithm::Es384, Algorithm::EdDsa] {
        assert!(
            offered.contains(&alg),
            "SoftHSM 2.6 offers {alg}: {offered:?}"
        );
    }
    for (label, alg) in [
        ("ds-p256", Algorithm::Es256),
        ("ds-p384", Algorithm::Es384),
        ("ds-ed25519", Algorithm::EdDsa),
    ] {
        let key = backend
            .generate(label, KeyPurpose::DocumentSigner, alg)
            .unwrap();
        let public = key
            .public_key
            .clone()
            .expect("signing keys have a public key");
        assert_eq!(public.algorithm(), alg);
        for message in [
            &b"x"[..],
            b"the MSO bytes would be here",
            &vec![0xa5; 100_000][..],
        ] {
            let signature = backend
                .sign(label, pkcs11_shim::KeyPurpose::DocumentSigner, message)
                .unwrap();
            assert_eq!(signature.len(), alg.signature_len());
            assert!(
                common::openssl_verifies(token.scratch(), &public, message, &signature),
                "{alg}"
            );
            let mut tampered = message.to_vec();
            tampered[0] ^= 1;
            assert!(
                !common::openssl_verifies(token.scratch(), &public, &tampered, &signature),
                "{alg} tampered"
            );
        }
    }
}

#[test]
fn keys_are_sensitive_local_and_never_extractable() {
    let token = SoftHsmToken::new("dojang-test");
    let backend = common::open(&token);
    let _ = backend
        .generate("ds-1", KeyPurpose::DocumentSigner, Algorithm::Es256)
        .unwrap();
    let _ = backend
        .generate("pseudonym-1", KeyPurpose::Pseudonym, Algorithm::HmacSha256)
        .unwrap();
    drop(backend);

    // OpenSC's view of the token, independent of the shim.
    let listing = token.pkcs11_tool(&["--list-objects"]);
    let listing = String::from_utf8_lossy(&listing.stdout).to_string();
    for label in ["ds-1", "pseudonym-1"] {
        let block = object_blocks(&listing)
            .into_iter()
            .find(|b| b.contains(&format!("label:      {label}\n")) && !b.starts_with("Public Key"))
            .unwrap_or_else(|| panic!("{label} not listed:\n{listing}"));
        for flag in [
            "sensitive",
            "always sensitive",
            "never extractable",
            "local",
        ] {
            assert!(block.contains(flag), "{label} lacks {flag}:\n{block}");
        }
        // pkcs11-tool prints no usage for generic secrets; HMAC use is tested below.
        if label.starts_with("ds") {
            assert!(
                block.contains("Usage:      sign"),
                "{label} cannot sign:\n{block}"
            );
        }
        for forbidden in ["decrypt", "unwrap", "derive"] {
            assert!(
                !block.contains(forbidden),
                "{label} may {forbidden}:\n{block}"
            );
        }
    }
    // Reading CKA_VALUE must not yield key material.
    for (ty, label) in [("privkey", "ds-1"), ("secrkey", "pseudonym-1")] {
        let read = token.pkcs11_tool(&["--read-object", "--type", ty, "--label", label]);
        assert!(
            !read.status.success() || read.stdout.is_empty(),
            "{label} value was readable"
        );
    }
}

/// Splits `pkcs11-tool --list-objects` output into one block per object,
/// each starting with its "… Key Object; …" header line.
fn object_blocks(listing: &str) -> Vec<String> {
    let mut blocks: Vec<String> = Vec::new();
    for line in listing.lines() {
        if line.contains(" Object;") || blocks.is_empty() {
            blocks.push(String::new());
        }
        let block = blocks.last_mut().expect("pushed above");
        block.push_str(line);
        block.push('\n');
    }
    blocks
}

#[test]
#[allow(clippy::disallowed_methods)] // tests the shim's own HMAC
fn hmac_is_deterministic_per_key_and_keys_differ() {
    let token = SoftHsmToken::new("dojang-test");
    let backend = common::open(&token);
    let _ = backend
        .generate("pseudonym-a", KeyPurpose::Pseudonym, Algorithm::HmacSha256)
        .unwrap();
    let _ = backend
        .generate("pseudonym-b", KeyPurpose::Pseudonym, Algorithm::HmacSha256)
        .unwrap();
    let a1 = backend
        .hmac_sha256(
            "pseudonym-a",
            pkcs11_shim::KeyPurpose::Pseudonym,
            b"0001013000000",
        )
        .unwrap();
    let a2 = backend
        .hmac_sha256(
            "pseudonym-a",
            pkcs11_shim::KeyPurpose::Pseudonym,
            b"0001013000000",
        )
        .unwrap();
    let b1 = backend
        .hmac_sha256(
            "pseudonym-b",
            pkcs11_shim::KeyPurpose::Pseudonym,
            b"0001013000000",
        )
        .unwrap();
    let a3 = backend
        .hmac_sha256(
            "pseudonym-a",
            pkcs11_shim::KeyPurpose::Pseudonym,
            b"0001013000001",
        )
        .unwrap();
    assert_eq!(a1, a2);
    assert_ne!(a1, b1);
    assert_ne!(a1, a3);
    // An HMAC key cannot sign and a signing key cannot MAC.
    assert!(matches!(
        backend.sign("pseudonym-a", pkcs11_shim::KeyPurpose::Pseudonym, b"m"),
        Err(Error::WrongKeyType { .. })
    ));
    let _ = backend
        .generate("ds", KeyPurpose::DocumentSigner, Algorithm::Es256)
        .unwrap();
    assert!(matches!(
        backend.hmac_sha256("ds", pkcs11_shim::KeyPurpose::DocumentSigner, b"m"),
        Err(Error::WrongKeyType { .. })
    ));
    // An HMAC key MACs only as what it was made for: the pseudonym key
    // derives no response seals.
    let err = backend
        .hmac_sha256("pseudonym-a", KeyPurpose::ResponseSeal, b"m")
        .unwrap_err();
    assert!(matches!(err, Error::WrongPurpose { .. }), "{err}");
    // A key signs only as what it was made for: a DS key is no status-list
    // or audit key, and the caller cannot say otherwise.
    for purpose in [KeyPurpose::StatusList, KeyPurpose::Audit, KeyPurpose::Iaca] {
        let err = backend.sign("ds", purpose, b"m").unwrap_err();
        assert!(matches!(err, Error::WrongPurpose { .. }), "{err}");
        assert!(err.to_string().contains("document-signer"), "{err}");
    }
}

#[test]
#[allow(clippy::disallowed_methods)] // tests the shim's own destroy
fn keys_are_found_listed_and_destroyed_across_reopen() {
    let token = SoftHsmToken::new("dojang-test");
    let backend = common::open(&token);
    let made = backend
        .generate("iaca", KeyPurpose::Iaca, Algorithm::Es256)
        .unwrap();
    let _ = backend
        .generate("audit", KeyPurpose::Audit, Algorithm::Es256)
        .unwrap();
    drop(backend);

    let backend = common::open(&token);
    let found = backend.find("iaca").unwrap();
    assert_eq!(found, made);
    assert_eq!(found.purpose, KeyPurpose::Iaca);
    let labels: Vec<_> = backend
        .list()
        .unwrap()
        .into_iter()
        .map(|k| k.label)
        .collect();
    assert_eq!(labels, ["audit", "iaca"]);
    backend.destroy("audit").unwrap();
    assert!(matches!(
        backend.find("audit"),
        Err(Error::KeyNotFound { .. })
    ));
    assert!(matches!(
        backend.sign("audit", pkcs11_shim::KeyPurpose::Audit, b"m"),
        Err(Error::KeyNotFound { .. })
    ));
    assert_eq!(backend.list().unwrap().len(), 1);
    let health = backend.health();
    assert!(health.up, "{health:?}");
    assert_eq!(health.sessions.map(|s| s.total), Some(4));
}

#[test]
#[allow(clippy::disallowed_methods)] // tests the shim's own HMAC input checks
fn bad_input_gets_clear_errors() {
    let token = SoftHsmToken::new("dojang-test");
    let backend = common::open(&token);
    let _ = backend
        .generate("ds", KeyPurpose::DocumentSigner, Algorithm::Es256)
        .unwrap();

    let err = backend
        .sign("no-such-key", pkcs11_shim::KeyPurpose::DocumentSigner, b"m")
        .unwrap_err();
    assert!(matches!(err, Error::KeyNotFound { .. }), "{err}");
    assert_eq!(err.class(), ErrorClass::KeyMissing);
    assert!(err.to_string().contains("no-such-key"));

    let err = backend
        .sign("ds", pkcs11_shim::KeyPurpose::DocumentSigner, b"")
        .unwrap_err();
    assert!(matches!(err, Error::InvalidInput(_)), "{err}");
    let err = backend
        .sign(
            "ds",
            pkcs11_shim::KeyPurpose::DocumentSigner,
            &vec![0; MAX_SIGN_INPUT + 1],
        )
        .unwrap_err();
    assert!(err.to_string().contains("exceeds"), "{err}");
    let err = backend
        .hmac_sha256("ds", pkcs11_shim::KeyPurpose::Pseudonym, &[])
        .unwrap_err();
    assert!(matches!(err, Error::InvalidInput(_)), "{err}");

    let err = backend
        .generate("ds", KeyPurpose::DocumentSigner, Algorithm::Es256)
        .unwrap_err();
    assert!(matches!(err, Error::KeyExists { .. }), "{err}");
    let err = backend
        .generate("bad label!", KeyPurpose::DocumentSigner, Algorithm::Es256)
        .unwrap_err();
    assert!(matches!(err, Error::InvalidInput(_)), "{err}");
    let err = backend
        .generate("p", KeyPurpose::Pseudonym, Algorithm::Es256)
        .unwrap_err();
    assert!(matches!(err, Error::InvalidInput(_)), "{err}");
    let err = Algorithm::from_jose_name("RS256").unwrap_err();
    assert!(err.to_string().contains("RS256"), "{err}");
    assert!(!err.is_retryable());
}

#[test]
fn a_wrong_pin_is_refused_without_revealing_it() {
    let token = SoftHsmToken::new("dojang-test");
    let wrong = token.scratch().join("wrong-pin");
    std::fs::write(&wrong, "135799\n").unwrap();
    let mut config = common::config_for(&token);
    config.pin = pkcs11_shim::SecretSource::File(wrong);
    let err = Pkcs11Backend::open(config).unwrap_err();
    assert!(matches!(err, Error::PinRejected { .. }), "{err}");
    let text = format!("{err} {err:?}");
    assert!(
        !text.contains("135799") && !text.contains(USER_PIN),
        "{text}"
    );
    assert!(text.contains("CKR_PIN_INCORRECT"), "{text}");
}

#[test]
fn an_unknown_token_is_reported_with_the_tokens_present() {
    let token = SoftHsmToken::new("dojang-test");
    let mut config = common::config_for(&token);
    config.token_label = Some("elsewhere".into());
    let err = Pkcs11Backend::open(config).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("elsewhere") && text.contains("dojang-test"),
        "{text}"
    );
}

#[test]
fn keys_not_born_in_the_token_are_refused() {
    let token = SoftHsmToken::new("dojang-test");
    // An imported key carrying a Dojang-style id: CKA_LOCAL and
    // CKA_NEVER_EXTRACTABLE give it away.
    let pem = token.scratch().join("imported.pem");
    let status = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
        ])
        .arg(&pem)
        .status()
        .unwrap();
    assert!(status.success());
    let der = token.scratch().join("imported.der");
    let status = std::process::Command::new("openssl")
        .args(["pkey", "-outform", "DER", "-in"])
        .arg(&pem)
        .arg("-out")
        .arg(&der)
        .status()
        .unwrap();
    assert!(status.success());
    // "DJ", version 1, purpose 2 (document signer), 12 bytes.
    let id = "444a0102000000000000000000000000";
    let out = token.pkcs11_tool(&[
        "--write-object",
        der.to_str().unwrap(),
        "--type",
        "privkey",
        "--id",
        id,
        "--label",
        "imported",
        "--sensitive",
        "--private",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A key made by another tool, with its own id.
    let out = token.pkcs11_tool(&[
        "--keypairgen",
        "--key-type",
        "EC:prime256v1",
        "--label",
        "foreign",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let backend = common::open(&token);
    let err = backend
        .sign("imported", pkcs11_shim::KeyPurpose::DocumentSigner, b"m")
        .unwrap_err();
    assert!(matches!(err, Error::KeyPolicy { .. }), "{err}");
    assert!(
        err.to_string().contains("CKA_ALWAYS_SENSITIVE")
            || err.to_string().contains("CKA_LOCAL")
            || err.to_string().contains("CKA_NEVER_EXTRACTABLE"),
        "{err}"
    );
    let err = backend
        .sign("foreign", pkcs11_shim::KeyPurpose::DocumentSigner, b"m")
        .unwrap_err();
    assert!(err.to_string().contains("CKA_ID"), "{err}");
    assert!(
        backend.list().unwrap().is_empty(),
        "foreign keys are not listed"
    );
}

#[test]
fn a_substituted_or_duplicated_public_half_is_refused() {
    let token = SoftHsmToken::new("dojang-test");
    let backend = common::open(&token);
    let _ = backend
        .generate("ds", KeyPurpose::DocumentSigner, Algorithm::Es256)
        .unwrap();
    drop(backend);
    // Someone with write access to the token adds another public key under
    // the same label and id (no PIN is needed for public objects).
    let listing =
        String::from_utf8_lossy(&token.pkcs11_tool(&["--list-objects"]).stdout).to_string();
    let id = listing
        .lines()
        .find_map(|l| l.trim().strip_prefix("ID:"))
        .map(|s| s.trim().to_owned())
        .unwrap();
    let pem = token.scratch().join("other.pem");
    let der = token.scratch().join("other-pub.der");
    assert!(std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out"
        ])
        .arg(&pem)
        .status()
        .unwrap()
        .success());
    assert!(std::process::Command::new("openssl")
        .args(["pkey", "-pubout", "-outform", "DER", "-in"])
        .arg(&pem)
        .arg("-out")
        .arg(&der)
        .status()
        .unwrap()
        .success());
    let out = token.pkcs11_tool(&[
        "--write-object",
        der.to_str().unwrap(),
        "--type",
        "pubkey",
        "--id",
        &id,
        "--label",
        "ds",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let backend = common::open(&token);
    let err = backend.find("ds").unwrap_err();
    assert!(matches!(err, Error::KeyPolicy { .. }), "{err}");
    assert!(err.to_string().contains("2 public objects"), "{err}");
}
