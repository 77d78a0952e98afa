//! Status lists as a verifier fetches them: the `lst` text (base64url,
//! zlib), raw compressed bytes (a zlib bomb must be refused), and the CWT.
#![no_main]

use std::sync::LazyLock;

use dojang::status::{StatusList, verify_cwt};
use libfuzzer_sys::fuzz_target;

static KEY: LazyLock<pkcs11_shim::PublicKey> = LazyLock::new(|| {
    let text = include_str!("../../softhsm-tests/tests/data/rfc9901-example-issuer.jwk");
    let jwk: pkcs11_shim::Jwk = serde_json::from_str(text).expect("RFC 9901's issuer JWK");
    pkcs11_shim::public_key_from_jwk(&jwk).expect("a P-256 point")
});

fuzz_target!(|bytes: &[u8]| {
    let _ = StatusList::from_compressed(bytes);
    let _ = verify_cwt(bytes, &KEY);
    if let Ok(text) = std::str::from_utf8(bytes) {
        let _ = StatusList::decode(text);
    }
});
