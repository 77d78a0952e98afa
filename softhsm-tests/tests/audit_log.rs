//! The audit log's offline verifier against every way of tampering with a
//! log, on checkpoints signed by an audit key in SoftHSM (Ed25519, and
//! ECDSA P-256 as a TPM would need).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
#![allow(clippy::indexing_slicing, clippy::panic, clippy::expect_used)] // test code: a failed expect, panic or index is a failed test

mod common;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use dojang::audit::bundle::{self, Bundle, BundleError, TrustedLog, FORMAT};
use dojang::audit::checkpoint::{handover_line, Checkpoint, NoteError, NoteKey};
use dojang::audit::entry::AuditEntry;
use dojang::audit::merkle;
use pkcs11_shim::pkcs11::Pkcs11Backend;
use pkcs11_shim::{Algorithm, KeyBackend, KeyPurpose};
use softhsm_tests::SoftHsmToken;

const ORIGIN: &str = "dojang.example.kr/audit-log";

fn entry(node: &str, seq: u64) -> AuditEntry {
    AuditEntry {
        time: 1_800_000_000 + seq as i64,
        node: node.into(),
        seq,
        actor: "spiffe://mois.go.kr/office-counter".into(),
        action: "issue".into(),
        outcome: "allow".into(),
        rule: None,
        policy_hash: Some("ab".repeat(32)),
        profile: Some("mdoc".into()),
        credential_id: Some(format!("cred-{node}-{seq}")),
        key_id: Some("kid-1".into()),
        payload_sha256: Some([seq as u8; 32]),
        holder: Some([0x5a; 32]),
        actor_certificate: None,
        seal: None,
    }
}

struct Log {
    backend: Pkcs11Backend,
    key: NoteKey,
    trusted: TrustedLog,
    pem: String,
    entries: Vec<Vec<u8>>,
    _token: SoftHsmToken,
}

impl Log {
    fn new(alg: Algorithm) -> Self {
        let token = SoftHsmToken::new("dojang-audit");
        let backend = common::open(&token);
        let info = backend.generate("audit-1", KeyPurpose::Audit, alg).unwrap();
        let public = info.public_key.unwrap();
        let pem = public.to_pem().unwrap();
        let trusted = TrustedLog {
            key: public.clone(),
            key_name: "dojang.example.kr/audit".into(),
            origin: ORIGIN.into(),
        };
        let key = NoteKey::new("dojang.example.kr/audit", public).unwrap();
        // Two nodes interleaved, 20 entries.
        let entries = (0..20u64)
            .map(|i| entry(if i % 2 == 0 { "node-a" } else { "node-b" }, i / 2).encode())
            .collect();
        Log {
            backend,
            key,
            trusted,
            pem,
            entries,
            _token: token,
        }
    }

    fn checkpoint(&self, entries: &[Vec<u8>], size: usize) -> String {
        let leaves: Vec<_> = entries[..size]
            .iter()
            .map(|e| merkle::leaf_hash(e))
            .collect();
        Checkpoint {
            origin: ORIGIN.into(),
            size: size as u64,
            root: merkle::root(&leaves),
            extensions: Vec::new(),
        }
        .sign(&self.backend, "audit-1", &self.key)
        .unwrap()
    }

    /// Checkpoints every 5 entries over the honest log.
    fn bundle(&self) -> Bundle {
        Bundle {
            format: FORMAT.into(),
            origin: ORIGIN.into(),
            key_name: "dojang.example.kr/audit".into(),
            public_key_pem: self.pem.clone(),
            handover_keys_pem: Vec::new(),
            entries: self.entries.iter().map(|e| B64.encode(e)).collect(),
            checkpoints: [5, 10, 15, 20]
                .iter()
                .map(|&n| self.checkpoint(&self.entries, n))
                .collect(),
        }
    }
}

#[test]
fn an_honest_log_verifies() {
    let log = Log::new(Algorithm::EdDsa);
    let report = bundle::verify(&log.bundle(), &log.trusted).unwrap();
    assert_eq!(
        (
            report.entries,
            report.checkpoints,
            report.signed_size,
            report.unsigned_tail
        ),
        (20, 4, 20, 0)
    );
    // The note is the C2SP format: body, blank line, em-dash signature line.
    let note = &log.bundle().checkpoints[0];
    let lines: Vec<&str> = note.lines().collect();
    assert_eq!(lines[0], ORIGIN);
    assert_eq!(lines[1], "5");
    assert_eq!(lines[3], "");
    assert!(
        lines[4].starts_with("\u{2014} dojang.example.kr/audit "),
        "{note}"
    );
    // Entries after the last checkpoint are reported as not yet signed.
    let mut b = log.bundle();
    let _ = b.checkpoints.pop();
    assert_eq!(bundle::verify(&b, &log.trusted).unwrap().unsigned_tail, 5);
    // Nothing signed at all is not a valid log.
    b.checkpoints.clear();
    assert_eq!(
        bundle::verify(&b, &log.trusted),
        Err(BundleError::NoCheckpoint)
    );
    // A whole log re-made and signed by another key, or for another origin, is refused.
    let other = log
        .backend
        .generate("audit-x", KeyPurpose::Audit, Algorithm::EdDsa)
        .unwrap();
    let mut b = log.bundle();
    b.public_key_pem = other.public_key.unwrap().to_pem().unwrap();
    assert!(matches!(
        bundle::verify(&b, &log.trusted),
        Err(BundleError::Untrusted { .. })
    ));
    let mut b = log.bundle();
    b.origin = "elsewhere.example/log".into();
    assert!(matches!(
        bundle::verify(&b, &log.trusted),
        Err(BundleError::Untrusted { .. })
    ));
}

// One token per test process, so the P-256 key gets its own test.
#[test]
fn an_ecdsa_audit_key_signs_verifiable_checkpoints() {
    let log = Log::new(Algorithm::Es256);
    assert!(bundle::verify(&log.bundle(), &log.trusted).is_ok());
}

#[test]
fn each_kind_of_tampering_is_caught_and_named() {
    let log = Log::new(Algorithm::EdDsa);

    // A deleted entry.
    let mut b = log.bundle();
    let _ = b.entries.remove(7); // node-b's entry 3: its entry 4 is where the gap shows
    assert_eq!(
        bundle::verify(&b, &log.trusted),
        Err(BundleError::Sequence {
            index: 8,
            node: "node-b".into(),
            expected: 3,
            found: 4
        })
    );

    // A modified entry (re-encoded validly, so only the signature notices).
    let mut b = log.bundle();
    let mut e = entry("node-b", 1);
    e.outcome = "deny".into();
    b.entries[3] = B64.encode(e.encode());
    assert_eq!(
        bundle::verify(&b, &log.trusted),
        Err(BundleError::Root { index: 0, size: 5 })
    );

    // Two entries swapped (of different nodes, so sequences still look fine).
    let mut b = log.bundle();
    b.entries.swap(12, 13);
    assert!(matches!(
        bundle::verify(&b, &log.trusted),
        Err(BundleError::Sequence { .. } | BundleError::Root { .. })
    ));
    let mut b = log.bundle();
    b.entries.swap(11, 12);
    let err = bundle::verify(&b, &log.trusted).unwrap_err();
    assert!(
        matches!(
            err,
            BundleError::Root { index: 2, size: 15 } | BundleError::Sequence { .. }
        ),
        "{err}"
    );

    // A truncated tail.
    let mut b = log.bundle();
    b.entries.truncate(18);
    assert_eq!(
        bundle::verify(&b, &log.trusted),
        Err(BundleError::Truncated {
            index: 3,
            size: 20,
            entries: 18
        })
    );

    // An inserted entry (with a plausible next sequence number at the end).
    let mut b = log.bundle();
    b.entries.insert(4, B64.encode(entry("node-c", 0).encode()));
    assert!(matches!(
        bundle::verify(&b, &log.trusted),
        Err(BundleError::Root { index: 0, size: 5 })
    ));

    // A fork: a second checkpoint of size 10 over a different history.
    let mut b = log.bundle();
    let mut other = log.entries.clone();
    other[9] = entry("node-b", 99).encode();
    b.checkpoints.insert(2, log.checkpoint(&other, 10));
    assert_eq!(
        bundle::verify(&b, &log.trusted),
        Err(BundleError::Fork {
            first: 1,
            index: 2,
            size: 10
        })
    );

    // A rolled-back checkpoint.
    let mut b = log.bundle();
    b.checkpoints.push(log.checkpoint(&log.entries, 15));
    assert_eq!(
        bundle::verify(&b, &log.trusted),
        Err(BundleError::Rollback {
            index: 4,
            size: 15,
            previous: 20
        })
    );

    // A checkpoint signed by another key under the same name.
    let other_key = log
        .backend
        .generate("audit-2", KeyPurpose::Audit, Algorithm::EdDsa)
        .unwrap();
    let forged_key =
        NoteKey::new("dojang.example.kr/audit", other_key.public_key.unwrap()).unwrap();
    let leaves: Vec<_> = log.entries.iter().map(|e| merkle::leaf_hash(e)).collect();
    let forged = Checkpoint {
        origin: ORIGIN.into(),
        size: 20,
        root: merkle::root(&leaves),
        extensions: Vec::new(),
    }
    .sign(&log.backend, "audit-2", &forged_key)
    .unwrap();
    let mut b = log.bundle();
    b.checkpoints[3] = forged;
    let err = bundle::verify(&b, &log.trusted).unwrap_err();
    assert!(matches!(err, BundleError::Note { index: 3, .. }), "{err}");

    // A signature byte flipped.
    let mut b = log.bundle();
    let mut note = b.checkpoints[1].clone().into_bytes();
    let last = note.len() - 5;
    note[last] = if note[last] == b'A' { b'B' } else { b'A' };
    b.checkpoints[1] = String::from_utf8(note).unwrap();
    assert!(matches!(
        bundle::verify(&b, &log.trusted),
        Err(BundleError::Note { index: 1, .. })
    ));
}

#[test]
fn trust_passes_to_a_new_audit_key_only_through_a_co_signed_checkpoint() {
    let log = Log::new(Algorithm::EdDsa);
    let next = log
        .backend
        .generate("audit-2", KeyPurpose::Audit, Algorithm::EdDsa)
        .unwrap();
    let next_key = NoteKey::new("dojang.example.kr/audit", next.public_key.unwrap()).unwrap();
    let by = |size: usize, label: &str, key: &NoteKey, extensions: Vec<String>| {
        let leaves: Vec<_> = log.entries[..size]
            .iter()
            .map(|e| merkle::leaf_hash(e))
            .collect();
        Checkpoint {
            origin: ORIGIN.into(),
            size: size as u64,
            root: merkle::root(&leaves),
            extensions,
        }
        .sign(&log.backend, label, key)
        .unwrap()
    };
    // 5 and 10 by the old key; 15 by the old key naming the new one in its
    // text, co-signed by the new key (the hand-over); 20 by the new one.
    let handover = Checkpoint::cosign(
        &by(15, "audit-1", &log.key, vec![handover_line(&next_key)]),
        &log.backend,
        "audit-2",
        &next_key,
    )
    .unwrap();
    assert_eq!(
        Checkpoint::signer_ids(&handover),
        [log.key.id(), next_key.id()]
    );
    let mut b = log.bundle();
    b.handover_keys_pem = vec![next_key.public_pem()];
    b.checkpoints = vec![
        by(5, "audit-1", &log.key, Vec::new()),
        by(10, "audit-1", &log.key, Vec::new()),
        handover,
        by(20, "audit-2", &next_key, Vec::new()),
    ];
    let report = bundle::verify(&b, &log.trusted).unwrap();
    assert_eq!((report.checkpoints, report.signed_size), (4, 20));
    // A signature line appended to a checkpoint that does not name the key
    // (anyone can append one: signatures cover the text only) earns nothing.
    let mut forged = b.clone();
    forged.checkpoints[2] = Checkpoint::cosign(
        &by(15, "audit-1", &log.key, Vec::new()),
        &log.backend,
        "audit-2",
        &next_key,
    )
    .unwrap();
    assert!(matches!(
        bundle::verify(&forged, &log.trusted),
        Err(BundleError::Note {
            index: 3,
            cause: NoteError::NotSigned(_)
        })
    ));
    // Nor does naming a key that did not sign.
    let mut unsigned = b.clone();
    unsigned.checkpoints[2] = by(15, "audit-1", &log.key, vec![handover_line(&next_key)]);
    assert!(bundle::verify(&unsigned, &log.trusted).is_err());
    // Without the hand-over checkpoint, listing the key earns it nothing.
    let mut skipped = b.clone();
    let _ = skipped.checkpoints.remove(2);
    assert!(matches!(
        bundle::verify(&skipped, &log.trusted),
        Err(BundleError::Note {
            index: 2,
            cause: NoteError::NotSigned(_)
        })
    ));
}

#[test]
fn dojangctl_audit_verify_reports_the_first_problem() {
    let log = Log::new(Algorithm::EdDsa);
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.json");
    std::fs::write(&good, serde_json::to_string(&log.bundle()).unwrap()).unwrap();
    let key = dir.path().join("audit.pem");
    std::fs::write(&key, &log.pem).unwrap();
    let ctl = softhsm_tests::workspace_binary("dojangctl");
    let verify = |bundle: &std::path::Path, extra: &[&str]| {
        std::process::Command::new(&ctl)
            .args(["audit", "verify", "--origin", ORIGIN, "--key"])
            .arg(&key)
            .args(extra)
            .arg(bundle)
            .output()
            .unwrap()
    };
    let out = verify(&good, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("20 entries, 4 checkpoints"));
    // A checkpoint seen earlier sets a floor: dropping later ones is caught.
    assert!(!verify(&good, &["--min-size", "21"]).status.success());

    // The newest checkpoint dropped: its entries are unsigned, refused by default.
    let mut b = log.bundle();
    let _ = b.checkpoints.pop();
    let tail = dir.path().join("tail.json");
    std::fs::write(&tail, serde_json::to_string(&b).unwrap()).unwrap();
    let out = verify(&tail, &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("5 entries after the latest checkpoint"));
    assert!(verify(&tail, &["--allow-unsigned-tail"]).status.success());
    assert!(
        !verify(&tail, &["--allow-unsigned-tail", "--min-size", "20"])
            .status
            .success()
    );

    // A truncated log names the checkpoint it contradicts.
    let mut b = log.bundle();
    b.entries.truncate(18);
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, serde_json::to_string(&b).unwrap()).unwrap();
    let out = verify(&bad, &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("checkpoint 3 signs 20 entries but the log has only 18"),
        "{err}"
    );

    // A bundle whose key is not the trusted one is refused before anything else.
    let jwk: pkcs11_shim::Jwk =
        serde_json::from_str(include_str!("data/rfc9901-example-issuer.jwk")).unwrap();
    let other = pkcs11_shim::public_key_from_jwk(&jwk).unwrap();
    std::fs::write(&key, other.to_pem().unwrap()).unwrap();
    let out = verify(&good, &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not the trusted"), "{err}");
}
