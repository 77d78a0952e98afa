//! `dojangctl keys` run as an officer would, against a fresh SoftHSM token.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::process::{Command, Output};

use softhsm_tests::{dojangctl, workspace_binary, write_config, SoftHsmToken};

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn an_officer_generates_lists_and_shows_keys() {
    let token = SoftHsmToken::create("ceremony");
    let out = dojangctl(
        &token,
        &[
            "keys",
            "generate",
            "--label",
            "iaca-root",
            "--purpose",
            "iaca",
        ],
    );
    assert!(stdout(&out).contains("generated iaca key \"iaca-root\" (ES256)"));
    let out = dojangctl(
        &token,
        &[
            "--json",
            "keys",
            "generate",
            "--label",
            "ds-1",
            "--purpose",
            "document-signer",
            "--alg",
            "ES384",
        ],
    );
    let ds: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(ds["alg"], "ES384");
    assert_eq!(ds["jwk"]["crv"], "P-384");
    let _ = stdout(&dojangctl(
        &token,
        &[
            "keys",
            "generate",
            "--label",
            "pseudonym",
            "--purpose",
            "pseudonym",
            "--alg",
            "HS256",
        ],
    ));

    let list = stdout(&dojangctl(&token, &["keys", "list"]));
    let labels: Vec<&str> = list
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(labels, ["ds-1", "iaca-root", "pseudonym"], "{list}");

    let shown: serde_json::Value = serde_json::from_str(&stdout(&dojangctl(
        &token,
        &["--json", "keys", "show", "iaca-root"],
    )))
    .unwrap();
    assert_eq!(shown["purpose"], "iaca");
    assert_eq!(shown["jwk"]["kty"], "EC");
    assert_eq!(shown["jwk"]["kid"], shown["kid"]);
    // The PEM is a real public key that openssl reads and matches the JWK x.
    let pem_path = token.scratch().join("iaca.pem");
    std::fs::write(&pem_path, shown["pem"].as_str().unwrap()).unwrap();
    let text = Command::new("openssl")
        .args(["pkey", "-pubin", "-noout", "-text", "-in"])
        .arg(&pem_path)
        .output()
        .unwrap();
    assert!(text.status.success());
    assert!(String::from_utf8_lossy(&text.stdout).contains("NIST CURVE: P-256"));

    let text = stdout(&dojangctl(&token, &["keys", "show", "iaca-root"]));
    assert!(
        text.contains("-----BEGIN PUBLIC KEY-----") && text.contains("\"crv\":\"P-256\""),
        "{text}"
    );
}

#[test]
fn operator_mistakes_get_clear_messages_and_a_failure_status() {
    let token = SoftHsmToken::create("ceremony");
    let cases: [(&[&str], &str); 4] = [
        (
            &[
                "keys",
                "generate",
                "--label",
                "k",
                "--purpose",
                "document-signer",
                "--alg",
                "RS256",
            ],
            "unknown algorithm \"RS256\"",
        ),
        (
            &["keys", "generate", "--label", "k", "--purpose", "signing"],
            "unknown key purpose \"signing\"",
        ),
        (&["keys", "show", "missing"], "no key labelled \"missing\""),
        (
            &[
                "keys",
                "generate",
                "--label",
                "k",
                "--purpose",
                "pseudonym",
                "--alg",
                "ES256",
            ],
            "cannot use ES256",
        ),
    ];
    for (args, expected) in cases {
        let out = dojangctl(&token, args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expected), "{args:?}: {err}");
    }
    // A config with an unknown key names the line.
    let config = token.scratch().join("bad.toml");
    std::fs::write(&config, "[keys]\nbackend = \"pkcs11\"\n[keys.pkcs11]\nmodule = \"/m.so\"\ntoken_label = \"x\"\npin = { file = \"/p\" }\nslot = 3\n").unwrap();
    let out = Command::new(workspace_binary("dojangd"))
        .args(["validate", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 7") && err.contains("slot"), "{err}");
}

#[test]
fn dojangd_validate_probes_the_token() {
    let token = SoftHsmToken::create("ceremony");
    let out = Command::new(workspace_binary("dojangd"))
        .args(["validate", "--probe", "--config"])
        .arg(write_config(&token))
        .env("SOFTHSM2_CONF", token.conf_path())
        .output()
        .unwrap();
    let text = stdout(&out);
    assert!(text.contains("valid; pkcs11 backend up"), "{text}");
}
