//! `dojangctl policy check|explain` on the shipped policy file and on
//! broken ones.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::path::PathBuf;
use std::process::{Command, Output};

use softhsm_tests::workspace_binary;

fn shipped() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../policies/kr-mobile-resident-card.toml")
}

fn ctl(args: &[&str]) -> Output {
    Command::new(workspace_binary("dojangctl"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn the_shipped_policy_checks_and_broken_files_name_their_line() {
    let out = ctl(&["policy", "check", shipped().to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("valid") && text.contains("sha256"), "{text}");

    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.toml");
    let original = std::fs::read_to_string(shipped()).unwrap();
    std::fs::write(
        &broken,
        original.replace("quota = 468000", "quota = 468000\nquotas = 1"),
    )
    .unwrap();
    let out = ctl(&["policy", "check", broken.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("broken.toml") && err.contains("quotas") && err.contains("line"),
        "{err}"
    );
}

#[test]
fn explain_prints_the_rule_trace_and_exits_by_outcome() {
    let file = shipped();
    let file = file.to_str().unwrap();
    let out = ctl(&[
        "--json",
        "policy",
        "explain",
        file,
        "--channel",
        "ic_card",
        "--first-time",
        "--at",
        "2026-12-27T10:00:00+09:00",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["outcome"]["allow"], true);
    assert_eq!(v["outcome"]["fee_krw"], 0);
    assert_eq!(v["outcome"]["expiry_date"], "2029-12-27");
    assert!(v["trace"].as_array().unwrap().len() >= 9);

    let out = ctl(&[
        "--json",
        "policy",
        "explain",
        file,
        "--birth-date",
        "2009-12-28",
        "--at",
        "2026-12-27T10:00:00+09:00",
    ]);
    assert_eq!(out.status.code(), Some(3));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["outcome"]["rule"], "holder.minimum_age");

    let out = ctl(&["--json", "policy", "explain", file, "--device-taken"]);
    assert_eq!(out.status.code(), Some(3));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["outcome"]["rule"], "device.one_person");
    assert_eq!(v["outcome"]["kind"], "Conflict");
}

#[test]
fn policy_adopted_without_a_configuration_says_why_once() {
    let out = ctl(&["--config", "/nonexistent/dojang.toml", "policy", "adopted"]);
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("cannot read /nonexistent/dojang.toml"),
        "{said}"
    );
    assert_eq!(
        said.matches("No such file or directory").count(),
        1,
        "{said}"
    );
    assert!(out.stdout.is_empty());
}

/// A kid is base64url and may begin with '-': it is still the key argument.
#[test]
fn a_kid_starting_with_a_hyphen_is_a_key_not_an_option() {
    for command in [
        &["keys", "revoke", "-9Zx_kid", "--reason", "drill"][..],
        &["keys", "activate", "-9Zx_kid"][..],
        &["keys", "retire", "-9Zx_kid"][..],
        &["keys", "destroy", "-9Zx_kid"][..],
    ] {
        let out = ctl(command);
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(!said.contains("unexpected argument"), "{command:?}: {said}");
        // Parsed: the refusal is dojangctl's own (no API to send it to),
        // not the argument parser's.
        assert!(said.starts_with("dojangctl: "), "{command:?}: {said}");
    }
}
