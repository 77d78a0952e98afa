//! The mdoc verifier (IssuerSigned CBOR, COSE_Sign1, MSO, digests, chain),
//! trusting the ISO 18013-5 Annex D document signer; seeds are the Annex D
//! IssuerSigned and its mutations.
#![no_main]

use std::sync::LazyLock;

use dojang::credential::mdoc;
use dojang::credential::verify::Trust;
use libfuzzer_sys::fuzz_target;
use time::macros::datetime;

static TRUST: LazyLock<Trust> = LazyLock::new(|| {
    let pem = include_bytes!("../../softhsm-tests/tests/data/iso18013-5-annex-d-ds.pem");
    Trust::DocumentSigner(dojang::pki::cert_der_from_pem(pem).expect("the Annex D DS"))
});

fuzz_target!(|bytes: &[u8]| {
    let _ = mdoc::verify(bytes, &TRUST, datetime!(2021-01-01 00:00 UTC), None);
});
