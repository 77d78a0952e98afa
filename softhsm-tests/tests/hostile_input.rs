//! Every parser that sees outside bytes, fed random and mutated input: it
//! may refuse, it must not panic. A quick property check in every test run;
//! the coverage-guided fuzzing of the same parsers is `fuzz/` (`make fuzz`).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use dojang::credential::verify::Trust;
use dojang::credential::{mdoc, sdjwt};
use dojang::status::StatusList;
use dojang_policies::resident_number::ResidentNumber;
use dojang_policies::{Policy, SHIPPED_POLICY};
use proptest::prelude::*;
use time::macros::datetime;

fn annex_d() -> Vec<u8> {
    let hex = include_str!("data/iso18013-5-annex-d-issuer-signed.hex")
        .trim()
        .to_owned();
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

fn annex_d_trust() -> Trust {
    Trust::DocumentSigner(
        dojang::pki::cert_der_from_pem(include_bytes!("data/iso18013-5-annex-d-ds.pem")).unwrap(),
    )
}

const SD_JWT: &str = include_str!("data/rfc9901-a3-issued.sd-jwt");

fn issuer_key() -> pkcs11_shim::PublicKey {
    let jwk: pkcs11_shim::Jwk =
        serde_json::from_str(include_str!("data/rfc9901-example-issuer.jwk")).unwrap();
    pkcs11_shim::public_key_from_jwk(&jwk).unwrap()
}

fn sd_jwt_trust() -> Trust {
    let jwk: pkcs11_shim::Jwk =
        serde_json::from_str(include_str!("data/rfc9901-example-issuer.jwk")).unwrap();
    Trust::IssuerKey(pkcs11_shim::public_key_from_jwk(&jwk).unwrap())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn mdoc_verifier_survives_mutations(pos in 0usize..6800, byte in any::<u8>(), cut in 0usize..6800) {
        let mut bytes = annex_d();
        let pos = pos % bytes.len();
        bytes[pos] = byte;
        bytes.truncate(cut.max(1).min(bytes.len()));
        let _ = mdoc::verify(&bytes, &annex_d_trust(), datetime!(2021-01-01 00:00 UTC), None);
    }

    #[test]
    fn mdoc_verifier_survives_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = mdoc::verify(&bytes, &annex_d_trust(), datetime!(2021-01-01 00:00 UTC), None);
    }

    #[test]
    fn sd_jwt_verifier_survives_mutations(pos in 0usize..5000, c in proptest::char::any(), cut in 0usize..5000) {
        let mut text: Vec<char> = SD_JWT.trim().chars().collect();
        let pos = pos % text.len();
        text[pos] = c;
        text.truncate(cut.max(1).min(text.len()));
        let text: String = text.into_iter().collect();
        let _ = sdjwt::verify(&text, &sd_jwt_trust(), datetime!(2026-01-01 00:00 UTC), None);
    }

    #[test]
    fn sd_jwt_verifier_survives_random_text(text in "[A-Za-z0-9_~.\\-]{0,300}") {
        let _ = sdjwt::verify(&text, &sd_jwt_trust(), datetime!(2026-01-01 00:00 UTC), None);
    }

    #[test]
    fn status_lists_and_numbers_survive_random_input(text in "\\PC{0,80}", bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        let _ = StatusList::decode(&text);
        let _ = StatusList::decode(&base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, &bytes));
        let _ = ResidentNumber::parse(&text);
        let _ = dojang::pki::profile::check_ds(&bytes, None);
    }

    #[test]
    fn audit_parsers_survive_random_input(text in "\\PC{0,200}", bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
        let _ = dojang::audit::entry::AuditEntry::decode(&bytes);
        let _ = dojang::audit::checkpoint::Checkpoint::parse_body(&text);
        let key = dojang::audit::checkpoint::NoteKey::new("example.kr/audit", issuer_key()).unwrap();
        let _ = dojang::audit::checkpoint::Checkpoint::open(&text, &key);
        let _ = dojang::audit::checkpoint::Checkpoint::open(&format!("a\n1\nAAAA\n\n{text}"), &key);
    }

    #[test]
    fn policy_parser_survives_mutations(pos in 0usize..4000, c in proptest::char::any()) {
        let mut text: Vec<char> = SHIPPED_POLICY.chars().collect();
        let pos = pos % text.len();
        text[pos] = c;
        let text: String = text.into_iter().collect();
        let _ = Policy::parse("mutated.toml", &text);
    }
}
