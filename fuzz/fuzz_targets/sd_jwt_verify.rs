//! The SD-JWT VC verifier (compact JWS, disclosures, `_sd` digests, key
//! binding), trusting RFC 9901's example issuer key.
#![no_main]

use std::sync::LazyLock;

use dojang::credential::sdjwt;
use dojang::credential::verify::Trust;
use libfuzzer_sys::fuzz_target;
use time::macros::datetime;

static TRUST: LazyLock<Trust> = LazyLock::new(|| {
    let text = include_str!("../../softhsm-tests/tests/data/rfc9901-example-issuer.jwk");
    let jwk: pkcs11_shim::Jwk = serde_json::from_str(text).expect("RFC 9901's issuer JWK");
    Trust::IssuerKey(pkcs11_shim::public_key_from_jwk(&jwk).expect("a P-256 point"))
});

fuzz_target!(|bytes: &[u8]| {
    if let Ok(text) = std::str::from_utf8(bytes) {
        let _ = sdjwt::verify(text, &TRUST, datetime!(2026-01-01 00:00 UTC), None);
    }
});
