//! A phone's public key as a JWK (the point must be on the curve).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(jwk) = serde_json::from_slice::<pkcs11_shim::Jwk>(bytes) {
        let _ = pkcs11_shim::public_key_from_jwk(&jwk);
    }
});
