//! The PKI ceremony and both credential formats from `dojangctl`, against a
//! fresh token, as an officer and a verifier would run them.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::process::{Command, Output};

use softhsm_tests::{dojangctl, workspace_binary, SoftHsmToken};

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn pki_init_then_both_formats_issue_and_verify_from_the_cli() {
    let token = SoftHsmToken::create("ceremony");
    let init = ok(dojangctl(&token, &["pki", "init"]));
    for expected in [
        "generated key \"iaca\"",
        "generated key \"ds-1\"",
        "iaca.pem",
        "iaca.crl.pem",
        "ds-1.pem",
    ] {
        assert!(init.contains(expected), "{init}");
    }
    // Once only.
    let again = dojangctl(&token, &["pki", "init"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("the IACA is created once"));

    // Samples never touch the configured token: they come from throwaway
    // keys in a development token, destroyed afterwards, under a sample
    // IACA nobody trusts.
    token.init_token("dojang-sample");
    let production = token.pkcs11_tool(&["--list-objects"]);
    let refused = dojangctl(
        &token,
        &[
            "credential",
            "sample",
            "--format",
            "mdoc",
            "--token",
            token.label(),
            "--pin-file",
            token.pin_file().to_str().unwrap(),
        ],
    );
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("is the configured token"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let real_iaca = token.scratch().join("pki/iaca.pem");
    let sample_iaca = token.scratch().join("sample-iaca.pem");
    for format in ["mdoc", "sd-jwt"] {
        let credential = ok(dojangctl(
            &token,
            &[
                "credential",
                "sample",
                "--format",
                format,
                "--iaca-out",
                sample_iaca.to_str().unwrap(),
                "--pin-file",
                token.pin_file().to_str().unwrap(),
            ],
        ));
        let file = token.scratch().join(format!("sample.{format}"));
        std::fs::write(&file, &credential).unwrap();
        let report = ok(Command::new(workspace_binary("dojangctl"))
            .args(["verify", "--iaca"])
            .arg(&sample_iaca)
            .arg(&file)
            .output()
            .unwrap());
        let report: serde_json::Value = serde_json::from_str(&report).unwrap();
        assert_eq!(report["valid"], true, "{report}");
        let masked = if format == "mdoc" {
            &report["elements"]["kr.go.mois.mrc.1"]["resident_number_masked"]
        } else {
            &report["claims"]["resident_number_masked"]
        };
        assert_eq!(masked, "000515-3******");
        assert!(
            !credential.contains("000515-3012345"),
            "the full resident number leaked"
        );
        // The real IACA does not vouch for a sample.
        let out = Command::new(workspace_binary("dojangctl"))
            .args(["verify", "--iaca"])
            .arg(&real_iaca)
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            !out.status.success(),
            "{format}: a sample chains to the real IACA"
        );

        // A flipped character is refused with a reason and a failure status.
        let mut tampered = credential.trim().to_owned().into_bytes();
        let middle = tampered.len() / 2;
        tampered[middle] = if tampered[middle] == b'A' { b'B' } else { b'A' };
        std::fs::write(&file, &tampered).unwrap();
        let out = Command::new(workspace_binary("dojangctl"))
            .args(["verify", "--iaca"])
            .arg(&sample_iaca)
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            !out.status.success(),
            "{format}: tampered credential accepted"
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).starts_with("dojangctl: "),
            "{format}"
        );
    }
    // The production token is as it was; the throwaway keys are gone.
    assert_eq!(
        token.pkcs11_tool(&["--list-objects"]).stdout,
        production.stdout
    );
    let sample_objects = Command::new("pkcs11-tool")
        .arg("--module")
        .arg(softhsm_tests::softhsm_module())
        .args([
            "--token-label",
            "dojang-sample",
            "--login",
            "--pin",
            softhsm_tests::USER_PIN,
            "--list-objects",
        ])
        .env("SOFTHSM2_CONF", token.conf_path())
        .output()
        .unwrap();
    assert!(sample_objects.status.success());
    assert!(
        !String::from_utf8_lossy(&sample_objects.stdout).contains("label:"),
        "throwaway keys left behind: {}",
        String::from_utf8_lossy(&sample_objects.stdout)
    );

    // A second document signer from the PKI ceremony.
    let _ = ok(dojangctl(&token, &["pki", "issue-ds", "--label", "ds-2"]));
    assert!(token.scratch().join("pki/ds/ds-2.pem").exists());
}

#[test]
fn bad_device_keys_are_refused_with_a_clear_error() {
    let token = SoftHsmToken::create("ceremony");
    let _ = ok(dojangctl(&token, &["pki", "init"]));
    let cases = [
        // The P-256 generator with y changed: not on the curve.
        (
            r#"{"kty":"EC","crv":"P-256","x":"axfR8uEsQkf4vOblY6RA8ncDfYEt6zOg9KE5RdiYwpY","y":"T-NC4v4af5uO5-tKfA-eFivOM1drMV7Oy7ZAaDe_UfY"}"#,
            "not a valid P-256 key",
        ),
        (
            r#"{"kty":"EC","crv":"secp256k1","x":"AA","y":"AA"}"#,
            "is not accepted",
        ),
        (r#"{"kty":"RSA","crv":"","x":"AQAB"}"#, "is not accepted"),
        (r#"{"kty":"EC","crv":"P-256","x":"AA"}"#, "without \"y\""),
    ];
    for (jwk, expected) in cases {
        let path = token.scratch().join("device.jwk");
        std::fs::write(&path, jwk).unwrap();
        let out = dojangctl(
            &token,
            &[
                "credential",
                "sample",
                "--format",
                "sd-jwt",
                "--device-jwk",
                path.to_str().unwrap(),
                "--pin-file",
                token.pin_file().to_str().unwrap(),
            ],
        );
        assert!(!out.status.success(), "{jwk} accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expected), "{jwk}: {err}");
    }
}

#[test]
fn commands_without_their_config_tables_say_what_is_missing() {
    let token = SoftHsmToken::create("ceremony");
    let path = token.scratch().join("keys-only.toml");
    std::fs::write(
        &path,
        format!(
            "[keys]\nbackend = \"pkcs11\"\n[keys.pkcs11]\nmodule = \"{}\"\ntoken_label = \"ceremony\"\npin = {{ file = \"{}\" }}\n",
            softhsm_tests::softhsm_module().display(),
            token.pin_file().display()
        ),
    )
    .unwrap();
    let out = Command::new(workspace_binary("dojangctl"))
        .arg("--config")
        .arg(&path)
        .args(["pki", "init"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("[pki] table"));
}
