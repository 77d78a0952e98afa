//! Property tests of the builders: any holder data in, a verifiable
//! credential with the same claims out, in both formats; NFC and NFD
//! spellings of a name give the same credential content.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use common::{phone_key, PkiFixture};
use dojang::credential::claims::{HolderData, ResidentCardClaims};
use dojang::credential::verify::Trust;
use dojang::credential::{mdoc, sdjwt, SignatureValidity};
use dojang_policies::resident_number::ResidentNumber;
use proptest::prelude::*;
use time::macros::date;
use time::OffsetDateTime;
use unicode_normalization::UnicodeNormalization;

fn hangul() -> impl Strategy<Value = String> {
    proptest::collection::vec(0xAC00u32..=0xD7A3, 1..6)
        .prop_map(|cs| cs.into_iter().filter_map(char::from_u32).collect())
}

fn holder() -> impl Strategy<Value = (HolderData, bool)> {
    (
        hangul(),
        hangul(),
        hangul(),
        1950i32..2009,
        1u8..=12,
        1u8..=28,
        any::<bool>(),
        proptest::option::of(proptest::collection::vec(any::<u8>(), 1..64)),
    )
        .prop_map(|(family, given, street, year, month, day, nfd, portrait)| {
            let code = if year >= 2000 { 3 } else { 1 };
            let number = format!("{:02}{month:02}{day:02}-{code}123456", year % 100);
            let name = |s: String| if nfd { s.nfd().collect() } else { s };
            (
                HolderData {
                    family_name: name(family),
                    given_name: name(given),
                    resident_number: ResidentNumber::parse(&number).unwrap(),
                    address: format!("서울특별시 {street}로 1"),
                    portrait,
                },
                nfd,
            )
        })
}

#[test]
fn any_holder_gives_verifiable_credentials_with_the_same_claims() {
    let f = PkiFixture::new(365);
    let signer = f.signer();
    let trust = Trust::Iaca(f.iaca_der());
    let now = OffsetDateTime::now_utc();
    let validity = SignatureValidity::starting(now, 30, signer.certificate_window()).unwrap();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 48,
        ..ProptestConfig::default()
    });
    runner
        .run(&holder(), |(holder, nfd)| {
            let claims =
                ResidentCardClaims::derive(&holder, date!(2026 - 12 - 27), 3, "종로구청장")
                    .unwrap();
            // NFD input is normalised: the claims equal those of the NFC spelling.
            if nfd {
                assert_ne!(holder.family_name, claims.family_name);
            }
            let device = phone_key();
            let m = mdoc::issue(&signer, &claims, &device, &validity, None).unwrap();
            let vm = mdoc::verify(&m, &trust, now, Some(mdoc::DOC_TYPE)).unwrap();
            let els = &vm.elements[mdoc::NAMESPACE];
            prop_assert_eq!(
                els["family_name"].as_text(),
                Some(claims.family_name.as_str())
            );
            prop_assert_eq!(
                els["given_name"].as_text(),
                Some(claims.given_name.as_str())
            );
            prop_assert_eq!(els["age_over_17"].as_bool(), Some(claims.age_over_17));
            prop_assert_eq!(els.contains_key("portrait"), claims.portrait.is_some());

            let s = sdjwt::issue(
                &signer,
                &claims,
                &device,
                &validity,
                None,
                "https://id.example.kr",
            )
            .unwrap();
            let vs = sdjwt::verify(&s, &trust, now, Some(sdjwt::VCT)).unwrap();
            prop_assert_eq!(
                vs.claims["family_name"].as_str(),
                Some(claims.family_name.as_str())
            );
            prop_assert_eq!(
                vs.claims["address"]["formatted"].as_str(),
                Some(claims.address.as_str())
            );
            prop_assert_eq!(
                &vs.claims["cnf"]["jwk"]["x"],
                &serde_json::json!(device.jwk().x)
            );
            Ok(())
        })
        .unwrap();
}
