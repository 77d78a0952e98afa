//! What an auditor reads from the log: entries (CBOR) and checkpoints
//! (signed notes).
#![no_main]

use std::sync::LazyLock;

use dojang::audit::checkpoint::{Checkpoint, NoteKey};
use dojang::audit::entry::AuditEntry;
use libfuzzer_sys::fuzz_target;

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
    }
});
