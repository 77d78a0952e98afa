//! `POST /v1/credentials` and `/refresh` bodies: every check before the HSM
//! or the registry sees them (JSON, holder data, resident number, phone
//! JWK, portrait, card, district code).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    let _ = dojang::issuance::check_issue_body(body);
    let _ = dojang::issuance::check_refresh_body(body);
});
