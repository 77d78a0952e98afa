//! Credential build cost against one SoftHSM ES256 signature, in one run on
//! one fresh token: building and encoding an mdoc and an SD-JWT VC with 12
//! elements (everything but the signature), against the signature itself.
//! Target: building costs at most 10% of the signature.
//!
//! `cargo bench -p softhsm-tests --bench credentials` (or `make bench`).

mod common;

use std::time::Duration;

use common::{median, per_call, BenchResult};

use dojang::credential::claims::{HolderData, ResidentCardClaims};
use dojang::credential::mdoc::UnsignedMdoc;
use dojang::credential::sdjwt::UnsignedSdJwt;
use dojang::credential::{sample, DocumentSigner, SignatureValidity, StatusReference};
use dojang::pki::{ceremony, PkiStore};
use openssl::bn::BigNumContext;
use openssl::ec::{EcGroup, EcKey, PointConversionForm};
use openssl::nid::Nid;
use pkcs11_shim::pkcs11::Pkcs11Backend;
use pkcs11_shim::{Algorithm, KeyBackend, Pkcs11Config, PublicKey, SecretSource};
use softhsm_tests::SoftHsmToken;
use time::macros::date;
use time::OffsetDateTime;

const ROUNDS: usize = 5;

fn main() -> BenchResult {
    let token = SoftHsmToken::new("dojang-bench");
    let backend = Pkcs11Backend::open(Pkcs11Config::new(
        softhsm_tests::softhsm_module(),
        token.label(),
        SecretSource::File(token.pin_file()),
    ))?;
    let pki: dojang::pki::PkiConfig = toml::from_str(&format!(
        "dir = \"{}\"\norganization = \"Bench\"\niaca_common_name = \"Bench IACA\"\n\
         issuer_alt_name = \"https://id.example.kr\"\ncrl_url = \"https://id.example.kr/crl\"\n",
        token.scratch().join("pki").display()
    ))?;
    let now = OffsetDateTime::now_utc();
    let _ = ceremony::init(&backend, &pki, "ds-1", Algorithm::Es256, now)?;
    let cert = PkiStore::new(&pki.dir).ds_for_signing(None, now)?;
    let signer = DocumentSigner::new(&backend, cert)?;

    let holder = HolderData {
        portrait: Some(vec![0xd8; 1024]), // the 12th element
        ..sample::holder()
    };
    let claims =
        ResidentCardClaims::derive(&holder, date!(2026 - 12 - 27), 3, "서울특별시 종로구청장")?;
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
    let phone = EcKey::generate(&group)?;
    let mut ctx = BigNumContext::new()?;
    let point = phone
        .public_key()
        .to_bytes(&group, PointConversionForm::UNCOMPRESSED, &mut ctx)?;
    let device = PublicKey::from_ec_point(Algorithm::Es256, &point)?;
    let validity = SignatureValidity::starting(now, 90, signer.certificate_window())?;
    let status = StatusReference {
        idx: 123_456,
        uri: "https://id.example.kr/status/1".into(),
    };
    let dummy_signature = vec![0u8; 64];
    let seconds = Duration::from_secs(1);
    let input = vec![0x5a; 600]; // about an MSO Sig_structure
    let element_count = dojang::credential::mdoc::elements(&claims).len();
    let (mut mdocs, mut sdjwts, mut signs) = (Vec::new(), Vec::new(), Vec::new());
    // Interleaved rounds, medians: this machine's noise moves any single
    // measurement by 10-20%.
    for _ in 0..ROUNDS {
        let mdoc_us = per_call(seconds, || {
            let unsigned = UnsignedMdoc::build(
                &claims,
                &device,
                &validity,
                Some(&status),
                signer.algorithm(),
                signer.certificate_der(),
            )?;
            let input = unsigned.signing_input();
            let _ = std::hint::black_box(&input);
            let _ = std::hint::black_box(unsigned.finish(&dummy_signature));
            Ok(())
        })?;
        let sdjwt_us = per_call(seconds, || {
            let unsigned = UnsignedSdJwt::build(
                &claims,
                &device,
                &validity,
                Some(&status),
                "https://id.example.kr",
                signer.jws_header(),
            )?;
            let _ = std::hint::black_box(unsigned.signing_input());
            let _ = std::hint::black_box(unsigned.finish(&dummy_signature));
            Ok(())
        })?;
        let sign_us = per_call(seconds, || {
            let _ = std::hint::black_box(backend.sign(
                "ds-1",
                pkcs11_shim::KeyPurpose::DocumentSigner,
                &input,
            )?);
            Ok(())
        })?;
        mdocs.push(mdoc_us);
        sdjwts.push(sdjwt_us);
        signs.push(sign_us);
    }
    let (mdoc_us, sdjwt_us, sign_us) = (median(mdocs), median(sdjwts), median(signs));

    println!("credential build benchmark: {element_count} elements, one SoftHSM token, 1 thread, median of {ROUNDS} rounds");
    println!("{:<34} {:>10}", "operation", "µs/call");
    println!("{:<34} {:>10.1}", "SoftHSM ES256 signature (shim)", sign_us);
    println!("{:<34} {:>10.1}", "mdoc build + encode", mdoc_us);
    println!("{:<34} {:>10.1}", "SD-JWT VC build + encode", sdjwt_us);
    for (name, cost) in [("mdoc", mdoc_us), ("SD-JWT VC", sdjwt_us)] {
        let ratio = cost / sign_us;
        println!(
            "{name} build / signature: {:.1}% (target <= 10%): {}",
            ratio * 100.0,
            if ratio <= 0.10 { "met" } else { "NOT met" }
        );
    }
    Ok(())
}
