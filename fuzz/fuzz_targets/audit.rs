//! What an auditor reads from the log: entries (CBOR) and checkpoints
//! (signed notes); what a witness reads from a log (`add-checkpoint`
//! requests) and a log from a witness (vkeys, cosignature lines).
#![no_main]

use std::sync::LazyLock;

use dojang::audit::checkpoint::{Checkpoint, NoteKey};
use dojang::audit::entry::AuditEntry;
use dojang::audit::witness::{AddCheckpoint, CosignerKey, Witnessed, check};
use libfuzzer_sys::fuzz_target;

static WITNESS: LazyLock<CosignerKey> =
    LazyLock::new(|| CosignerKey::new("witness.example/w1", [7; 32]).expect("a cosigner key"));

static KEY: LazyLock<NoteKey> = LazyLock::new(|| {
    let text = include_str!("../../softhsm-tests/tests/data/rfc9901-example-issuer.jwk");
    let jwk: pkcs11_shim::Jwk = serde_json::from_str(text).expect("RFC 9901's issuer JWK");
    let key = pkcs11_shim::public_key_from_jwk(&jwk).expect("a P-256 point");
    NoteKey::new("example.kr/audit", key).expect("a note key")
});

fuzz_target!(|bytes: &[u8]| {
    let _ = AuditEntry::decode(bytes);
    if let Ok(text) = std::str::from_utf8(bytes) {
        let _ = Checkpoint::parse_body(text);
        let _ = Checkpoint::open(text, &KEY);
        let _ = CosignerKey::from_vkey(text);
        let _ = WITNESS.verify("example.kr/audit\n1\nAAAA\n", text);
    }
    if let Ok(request) = AddCheckpoint::parse(bytes) {
        let held = Witnessed {
            size: 1,
            root: "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into(),
        };
        let _ = check(&request, "example.kr/audit", std::slice::from_ref(&KEY), Some(&held));
        let _ = request.encode();
    }
});
