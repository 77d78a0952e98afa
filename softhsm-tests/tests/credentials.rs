//! Credentials signed by SoftHSM keys under a real IACA → DS chain, checked
//! by our verifier and by independent ones (pymdoccbor, sd-jwt, openssl).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
#![allow(clippy::indexing_slicing, clippy::panic, clippy::expect_used)] // test code: a failed expect, panic or index is a failed test

mod common;

use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use common::{phone_key, python_verify, PkiFixture};
use dojang::credential::claims::ResidentCardClaims;
use dojang::credential::verify::{Trust, VerifyError};
use dojang::credential::{mdoc, sample, sdjwt, SignatureValidity};
use dojang_policies::calendar::seoul_date;
use time::macros::datetime;
use time::OffsetDateTime;

fn claims(now: OffsetDateTime) -> ResidentCardClaims {
    ResidentCardClaims::derive(
        &sample::holder(),
        seoul_date(now),
        3,
        "서울특별시 종로구청장",
    )
    .unwrap()
}

fn issue_both(f: &PkiFixture) -> (Vec<u8>, String) {
    let now = OffsetDateTime::now_utc();
    let signer = f.signer();
    let validity = SignatureValidity::starting(now, 90, signer.certificate_window()).unwrap();
    let device = phone_key();
    let status = dojang::credential::StatusReference {
        idx: 42,
        uri: "https://id.example.kr/status/1".into(),
    };
    let m = mdoc::issue(&signer, &claims(now), &device, &validity, Some(&status)).unwrap();
    let s = sdjwt::issue(
        &signer,
        &claims(now),
        &device,
        &validity,
        Some(&status),
        "https://id.example.kr",
    )
    .unwrap();
    (m, s)
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn mdoc_round_trip_verified_by_us_and_by_pymdoccbor() {
    let f = PkiFixture::new(365);
    let (m, _) = issue_both(&f);
    let now = OffsetDateTime::now_utc();
    let verified = mdoc::verify(&m, &Trust::Iaca(f.iaca_der()), now, Some(mdoc::DOC_TYPE)).unwrap();
    let els = &verified.elements[mdoc::NAMESPACE];
    assert_eq!(els["family_name"].as_text(), Some("홍"));
    assert_eq!(
        els["resident_number_masked"].as_text(),
        Some("000515-3******")
    );
    assert_eq!(els["age_over_17"].as_bool(), Some(true));
    assert_eq!(verified.status.as_ref().map(|s| s.idx), Some(42));
    assert!(verified.valid_until <= f.signer().not_after());

    let file = write(f.token.scratch(), "cred.mdoc", &mdoc::to_base64url(&m));
    let (ok, out) = python_verify(
        "verify_mdoc.py",
        &[&file, &f.store.iaca_path(), Path::new(mdoc::DOC_TYPE)],
    );
    assert!(ok, "pymdoccbor refused: {out}");
    assert!(out.contains("\"given_name\": \"길동\""), "{out}");
}

#[test]
fn sd_jwt_round_trip_verified_by_us_and_by_the_sd_jwt_package() {
    let f = PkiFixture::new(365);
    let (_, s) = issue_both(&f);
    let now = OffsetDateTime::now_utc();
    let verified = sdjwt::verify(&s, &Trust::Iaca(f.iaca_der()), now, Some(sdjwt::VCT)).unwrap();
    assert_eq!(verified.header["typ"], "dc+sd-jwt");
    assert_eq!(verified.header["alg"], "ES256");
    assert_eq!(verified.claims["given_name"], "길동");
    assert_eq!(verified.claims["status"]["status_list"]["idx"], 42);
    for plain in ["iss", "iat", "nbf", "exp", "vct", "cnf", "status"] {
        assert!(
            !verified.disclosed.contains(plain),
            "{plain} was disclosable"
        );
        assert!(verified.claims.contains_key(plain), "{plain} missing");
    }
    // Selective disclosure: dropping disclosures still verifies, and hides them.
    let mut parts: Vec<&str> = s.split('~').collect();
    parts.retain(|p| {
        let decoded = B64URL
            .decode(p)
            .ok()
            .map(|b| String::from_utf8_lossy(&b).into_owned());
        !decoded.is_some_and(|d| d.contains("\"resident_number_masked\""))
    });
    let partial = parts.join("~");
    let verified = sdjwt::verify(&partial, &Trust::Iaca(f.iaca_der()), now, None).unwrap();
    assert!(!verified.claims.contains_key("resident_number_masked"));

    let file = write(f.token.scratch(), "cred.sdjwt", &s);
    let ds = f.store.ds_path("ds-1");
    let (ok, out) = python_verify("verify_sdjwt.py", &[&file, &ds]);
    assert!(ok, "sd-jwt refused: {out}");
    assert!(out.contains("\"family_name\": \"홍\""), "{out}");
}

#[test]
fn every_flipped_mdoc_byte_is_detected() {
    let f = PkiFixture::new(365);
    let (m, _) = issue_both(&f);
    let trust = Trust::Iaca(f.iaca_der());
    let now = OffsetDateTime::now_utc();
    assert!(mdoc::verify(&m, &trust, now, Some(mdoc::DOC_TYPE)).is_ok());
    let mut accepted = Vec::new();
    for i in 0..m.len() {
        let mut tampered = m.clone();
        tampered[i] ^= 0x01;
        if mdoc::verify(&tampered, &trust, now, Some(mdoc::DOC_TYPE)).is_ok() {
            accepted.push(i);
        }
    }
    assert!(
        accepted.is_empty(),
        "undetected flips at byte offsets {accepted:?} of {}",
        m.len()
    );
}

#[test]
fn tampered_mdoc_elements_are_refused_by_pymdoccbor_too() {
    let f = PkiFixture::new(365);
    let (m, _) = issue_both(&f);
    // Replace the family name inside its item: same length, so the CBOR stays well-formed.
    let needle = "홍".as_bytes();
    let pos = m.windows(needle.len()).position(|w| w == needle).unwrap();
    let mut tampered = m.clone();
    tampered[pos..pos + needle.len()].copy_from_slice("김".as_bytes());
    let err = mdoc::verify(
        &tampered,
        &Trust::Iaca(f.iaca_der()),
        OffsetDateTime::now_utc(),
        None,
    )
    .unwrap_err();
    assert!(matches!(err, VerifyError::Digest(_)), "{err}");
    let file = write(
        f.token.scratch(),
        "tampered.mdoc",
        &mdoc::to_base64url(&tampered),
    );
    let (ok, out) = python_verify(
        "verify_mdoc.py",
        &[&file, &f.store.iaca_path(), Path::new(mdoc::DOC_TYPE)],
    );
    assert!(!ok, "pymdoccbor accepted a tampered element: {out}");
}

#[test]
fn every_altered_sd_jwt_character_is_detected() {
    let f = PkiFixture::new(365);
    let (_, s) = issue_both(&f);
    let trust = Trust::Iaca(f.iaca_der());
    let now = OffsetDateTime::now_utc();
    let bytes = s.as_bytes();
    let mut accepted = Vec::new();
    for i in 0..bytes.len() {
        if bytes[i] == b'~' {
            continue; // separators: dropping a disclosure is the holder's right
        }
        let mut tampered = bytes.to_vec();
        tampered[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).unwrap();
        if sdjwt::verify(&tampered, &trust, now, Some(sdjwt::VCT)).is_ok() {
            accepted.push(i);
        }
    }
    assert!(accepted.is_empty(), "undetected changes at {accepted:?}");

    // And the independent verifier refuses a disclosure that was edited.
    let mut parts: Vec<String> = s.split('~').map(str::to_owned).collect();
    let idx = parts
        .iter()
        .position(|p| {
            B64URL
                .decode(p)
                .is_ok_and(|b| String::from_utf8_lossy(&b).contains("given_name"))
        })
        .unwrap();
    let edited = String::from_utf8(B64URL.decode(&parts[idx]).unwrap())
        .unwrap()
        .replace("길동", "철수");
    parts[idx] = B64URL.encode(edited);
    let tampered = parts.join("~");
    let err = sdjwt::verify(&tampered, &trust, now, None).unwrap_err();
    assert!(matches!(err, VerifyError::Digest(_)), "{err}");
    // The sd-jwt package drops a disclosure no digest references instead of
    // rejecting the SD-JWT (RFC 9901 §7.1 says reject; we do): the edited
    // value must at least never come out of it.
    let file = write(f.token.scratch(), "tampered.sdjwt", &tampered);
    let (_, out) = python_verify("verify_sdjwt.py", &[&file, &f.store.ds_path("ds-1")]);
    assert!(
        !out.contains("철수") && !out.contains("given_name"),
        "sd-jwt revealed an edited disclosure: {out}"
    );
}

#[test]
fn untrusted_chains_algorithms_and_expired_credentials_are_refused() {
    let f = PkiFixture::new(365);
    let (m, s) = issue_both(&f);
    let now = OffsetDateTime::now_utc();
    // Another IACA (another appliance's root, here in the same token) does
    // not vouch for this DS.
    let mut other = common::pki_config(&f.token.scratch().join("other-pki"), 365);
    other.iaca_key = "iaca-other".into();
    let _ = dojang::pki::ceremony::init(
        &f.backend,
        &other,
        "ds-other",
        pkcs11_shim::Algorithm::Es256,
        now,
    )
    .unwrap();
    let wrong = Trust::Iaca(dojang::pki::PkiStore::new(&other.dir).iaca().unwrap().0);
    assert!(matches!(
        mdoc::verify(&m, &wrong, now, None),
        Err(VerifyError::Certificate(_))
    ));
    assert!(matches!(
        sdjwt::verify(&s, &wrong, now, None),
        Err(VerifyError::Certificate(_))
    ));
    // After the signature validity.
    let later = now + time::Duration::days(91);
    let trust = Trust::Iaca(f.iaca_der());
    assert!(matches!(
        mdoc::verify(&m, &trust, later, None),
        Err(VerifyError::Validity(_))
    ));
    assert!(matches!(
        sdjwt::verify(&s, &trust, later, None),
        Err(VerifyError::Validity(_))
    ));
    // Wrong document type.
    assert!(matches!(
        mdoc::verify(&m, &trust, now, Some("org.iso.18013.5.1.mDL")),
        Err(VerifyError::DocType(_))
    ));
    // alg "none" and HS256 headers are refused before any signature check.
    let jwt_end = s.find('~').unwrap();
    let (jwt, rest) = s.split_at(jwt_end);
    let payload = jwt.split('.').nth(1).unwrap();
    for alg in ["none", "HS256", "ES384"] {
        let header = B64URL.encode(format!(r#"{{"alg":"{alg}","typ":"dc+sd-jwt"}}"#));
        let forged = format!("{header}.{payload}.{}", B64URL.encode([0u8; 64])) + rest;
        let err = sdjwt::verify(&forged, &Trust::IssuerKey(ds_key(&f)), now, None).unwrap_err();
        assert!(matches!(err, VerifyError::Algorithm(_)), "{alg}: {err}");
    }
}

fn ds_key(f: &PkiFixture) -> pkcs11_shim::PublicKey {
    use pkcs11_shim::KeyBackend;
    f.backend.find("ds-1").unwrap().public_key.unwrap()
}

#[test]
fn signature_validity_never_outlives_the_ds_certificate() {
    let f = PkiFixture::new(10); // a DS certificate valid for ten days
    let signer = f.signer();
    let now = OffsetDateTime::now_utc();
    let validity = SignatureValidity::starting(now, 90, signer.certificate_window()).unwrap();
    assert_eq!(validity.valid_until, signer.not_after());
    let m = mdoc::issue(&signer, &claims(now), &phone_key(), &validity, None).unwrap();
    let verified = mdoc::verify(&m, &Trust::Iaca(f.iaca_der()), now, None).unwrap();
    assert_eq!(verified.valid_until, signer.not_after());
    // The document itself is still valid three years.
    assert_eq!(
        verified.elements[mdoc::NAMESPACE]["expiry_date"],
        ciborium::Value::Tag(
            1004,
            Box::new(ciborium::Value::Text(claims(now).expiry_date.to_string()))
        )
    );
    // A validity asked to reach past the certificate is refused at signing.
    let mut too_long = validity;
    too_long.valid_until = signer.not_after() + time::Duration::seconds(1);
    assert!(mdoc::issue(&signer, &claims(now), &phone_key(), &too_long, None).is_err());
}

#[test]
fn the_iso_annex_d_example_verifies_apart_from_its_dates() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let hex = std::fs::read_to_string(data.join("iso18013-5-annex-d-issuer-signed.hex")).unwrap();
    let bytes: Vec<u8> = (0..hex.trim().len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex.trim()[i..i + 2], 16).unwrap())
        .collect();
    let ds = dojang::pki::cert_der_from_pem(
        &std::fs::read(data.join("iso18013-5-annex-d-ds.pem")).unwrap(),
    )
    .unwrap();
    let trust = Trust::DocumentSigner(ds);
    let in_validity = datetime!(2021-01-01 00:00 UTC);
    let verified =
        mdoc::verify(&bytes, &trust, in_validity, Some("org.iso.18013.5.1.mDL")).unwrap();
    assert_eq!(
        verified.elements["org.iso.18013.5.1"]["family_name"].as_text(),
        Some("Doe")
    );
    assert_eq!(verified.elements["org.iso.18013.5.1"].len(), 6);
    // Today the example's certificate and MSO have expired: that, and only that, fails.
    let err = mdoc::verify(&bytes, &trust, OffsetDateTime::now_utc(), None).unwrap_err();
    assert!(
        matches!(err, VerifyError::Certificate(ref m) if m.contains("validity")),
        "{err}"
    );
}

/// The disclosures of `sd_jwt` whose claim name is one of `names`, with
/// the issuer-signed JWT: what a holder presents.
fn present(sd_jwt: &str, names: &[&str]) -> String {
    let mut parts = sd_jwt.split('~');
    let jwt = parts.next().unwrap();
    let kept: Vec<&str> = parts
        .filter(|d| {
            let Some(bytes) = B64URL.decode(d).ok().filter(|b| !b.is_empty()) else {
                return false;
            };
            let parts: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            names.iter().any(|n| parts[1] == *n)
        })
        .collect();
    format!("{jwt}~{}~", kept.join("~"))
}

#[test]
fn age_thresholds_and_address_parts_are_disclosed_apart() {
    let f = PkiFixture::new(365);
    let (m, s) = issue_both(&f);
    let now = OffsetDateTime::now_utc();
    let trust = Trust::Iaca(f.iaca_der());
    // The nested objects always carry the same number of digests.
    let payload: serde_json::Value = serde_json::from_slice(
        &B64URL
            .decode(s.split('~').next().unwrap().split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        payload["age_equal_or_over"]["_sd"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    assert_eq!(payload["address"]["_sd"].as_array().unwrap().len(), 6);

    // A holder proves 17+ and the district, and nothing else.
    let shown = present(&s, &["17", "locality"]);
    let verified = sdjwt::verify(&shown, &trust, now, Some(sdjwt::VCT)).unwrap();
    assert_eq!(
        verified.claims["age_equal_or_over"],
        serde_json::json!({"17": true})
    );
    assert_eq!(
        verified.claims["address"],
        serde_json::json!({"locality": "종로구"})
    );
    assert!(!verified.claims.contains_key("family_name"));
    // Every part can be shown; the whole address too.
    let all = sdjwt::verify(&s, &trust, now, Some(sdjwt::VCT)).unwrap();
    assert_eq!(all.claims["address"]["region"], "서울특별시");
    assert_eq!(all.claims["address"]["street_address"], "세종대로 209");
    assert_eq!(
        all.claims["address"]["formatted"],
        "서울특별시 종로구 세종대로 209"
    );
    assert_eq!(all.claims["age_equal_or_over"]["18"], true);

    // The sd-jwt package reads the presentation the same way.
    let file = write(f.token.scratch(), "shown.sdjwt", &shown);
    let (ok, out) = python_verify("verify_sdjwt.py", &[&file, &f.store.ds_path("ds-1")]);
    assert!(ok, "sd-jwt refused: {out}");
    let out: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        out["payload"]["age_equal_or_over"],
        serde_json::json!({"17": true})
    );
    assert_eq!(
        out["payload"]["address"],
        serde_json::json!({"locality": "종로구"})
    );

    // In the mdoc each part is an element of its own.
    let verified = mdoc::verify(&m, &trust, now, Some(mdoc::DOC_TYPE)).unwrap();
    let els = &verified.elements[mdoc::NAMESPACE];
    assert_eq!(els["resident_region"].as_text(), Some("서울특별시"));
    assert_eq!(els["resident_locality"].as_text(), Some("종로구"));
    assert_eq!(els["resident_street"].as_text(), Some("세종대로 209"));
}

#[test]
fn the_sd_jwt_specification_example_verifies() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let sd_jwt = std::fs::read_to_string(data.join("rfc9901-a3-issued.sd-jwt")).unwrap();
    let jwk: pkcs11_shim::Jwk = serde_json::from_str(
        &std::fs::read_to_string(data.join("rfc9901-example-issuer.jwk")).unwrap(),
    )
    .unwrap();
    let key = pkcs11_shim::public_key_from_jwk(&jwk).unwrap();
    let at = datetime!(2026-01-01 00:00 UTC); // iat 2023-05-02, exp 2029-09-01
    let verified = sdjwt::verify(
        sd_jwt.trim(),
        &Trust::IssuerKey(key),
        at,
        Some("urn:eudi:pid:de:1"),
    )
    .unwrap();
    assert_eq!(verified.claims["given_name"], "Erika");
    assert_eq!(verified.claims["address"]["locality"], "Köln");
    assert_eq!(verified.claims["nationalities"][0], "DE");
    assert_eq!(verified.claims["age_equal_or_over"]["18"], true);
}

#[test]
fn ds_certificates_pass_an_openssl_read_of_the_annex_b_profile() {
    let f = PkiFixture::new(457);
    let text = |path: &Path| {
        let out = std::process::Command::new("openssl")
            .args(["x509", "-noout", "-text", "-in"])
            .arg(path)
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    };
    let ds = text(&f.store.ds_path("ds-1"));
    let iaca = text(&f.store.iaca_path());
    let next_line = |t: &str, header: &str| {
        let mut lines = t.lines();
        let _ = lines
            .find(|l| l.contains(header))
            .unwrap_or_else(|| panic!("no {header}:\n{t}"));
        lines.next().unwrap().trim().to_owned()
    };
    assert!(ds.contains("X509v3 Key Usage: critical"), "{ds}");
    assert_eq!(next_line(&ds, "X509v3 Key Usage"), "Digital Signature");
    assert!(ds.contains("X509v3 Extended Key Usage: critical"), "{ds}");
    assert_eq!(
        next_line(&ds, "X509v3 Extended Key Usage"),
        "1.0.18013.5.1.2"
    );
    assert_eq!(
        next_line(&ds, "X509v3 Authority Key Identifier"),
        next_line(&iaca, "X509v3 Subject Key Identifier")
    );
    // Key identifiers per RFC 5280 method (1), as Annex B validators
    // recompute them: SHA-1 over the subjectPublicKey bits (OpenSSL's own
    // computation, `openssl x509 -pubkey` then its BIT STRING).
    for (path, which) in [(f.store.ds_path("ds-1"), &ds), (f.store.iaca_path(), &iaca)] {
        let cert = openssl::x509::X509::from_pem(&std::fs::read(&path).unwrap()).unwrap();
        let spki = cert.public_key().unwrap().public_key_to_der().unwrap();
        let bits = &spki[spki.len() - 65..]; // P-256: the uncompressed point
        let method_1 = openssl::sha::sha1(bits)
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":");
        assert_eq!(next_line(which, "X509v3 Subject Key Identifier"), method_1);
    }
    // OpenSSL's strict X.509 checks accept the chain.
    let strict = std::process::Command::new("openssl")
        .args(["verify", "-x509_strict", "-CAfile"])
        .arg(f.store.iaca_path())
        .arg(f.store.ds_path("ds-1"))
        .output()
        .unwrap();
    assert!(strict.status.success(), "{strict:?}");
    assert!(next_line(&ds, "X509v3 Issuer Alternative Name").starts_with("URI:https://"));
    assert!(ds.contains("URI:https://id.example.kr/iaca.crl"), "{ds}");
    assert!(ds.contains("Subject: C = KR") && iaca.contains("Subject: C = KR"));
    assert!(iaca.contains("X509v3 Basic Constraints: critical"));
    assert_eq!(
        next_line(&iaca, "X509v3 Basic Constraints"),
        "CA:TRUE, pathlen:0"
    );
    assert_eq!(
        next_line(&iaca, "X509v3 Key Usage"),
        "Certificate Sign, CRL Sign"
    );
    let serial = next_line(&ds, "Serial Number:").replace(':', "");
    assert!(serial.len() >= 16, "serial {serial} under 64 bits");
    // Chain and CRL, by openssl.
    let verify = std::process::Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(f.store.iaca_path())
        .arg("-crl_check")
        .arg("-CRLfile")
        .arg(f.store.crl_path())
        .arg(f.store.ds_path("ds-1"))
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
}
