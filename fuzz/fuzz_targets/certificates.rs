//! Certificates, requests and CRLs that cross the air gap or come from a
//! file: the IACA and leaf profiles, certificate requests, rollover links,
//! CRLs, and the ceremony response that carries them.
#![no_main]

use std::sync::LazyLock;

use dojang::pki::LeafRole;
use dojang::pki::exchange::CeremonyResponse;
use dojang::pki::profile::{check_iaca, check_leaf};
use libfuzzer_sys::fuzz_target;

static IACA: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let pem = include_bytes!("../../softhsm-tests/tests/data/iso18013-5-annex-d-ds.pem");
    dojang::pki::cert_der_from_pem(pem).expect("a certificate")
});

fuzz_target!(|bytes: &[u8]| {
    let root = check_iaca(bytes).ok();
    let _ = check_leaf(bytes, root.as_ref(), LeafRole::DocumentSigner);
    let _ = check_leaf(bytes, root.as_ref(), LeafRole::StatusList);
    if let Ok(key) = dojang::pki::requested_key(bytes) {
        let _ = dojang::pki::rollover::check_link(bytes, &IACA, &key);
    }
    let _ = dojang::pki::rollover::link_names(bytes, &IACA);
    let _ = openssl::x509::X509Crl::from_der(bytes);
    let _ = dojang::pki::cert_der_from_pem(bytes);
    let _ = serde_json::from_slice::<CeremonyResponse>(bytes);
});
