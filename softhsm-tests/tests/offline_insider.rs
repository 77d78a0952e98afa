//! A database insider against the offline IACA (issue 14): rows are not
//! certificates. A DS row whose certificate the insider made (for the
//! right key, naming the IACA's key id, signed by another key) is neither
//! published nor signed with; a revoked or signing key written back into
//! the spare pool is never taken; a root written into the rollovers
//! document without the current root's link is not trusted.
#![allow(clippy::unwrap_used)]
#![allow(clippy::indexing_slicing, clippy::panic, clippy::expect_used)] // test code: a failed expect, panic or index is a failed test

mod insider;

use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use insider::{metric, Insider};
use openssl::asn1::Asn1Time;
use openssl::bn::BigNum;
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::x509::extension::{AuthorityKeyIdentifier, BasicConstraints, KeyUsage};
use openssl::x509::{X509Builder, X509Extension, X509NameBuilder, X509};
use softhsm_tests::daemon::{Daemon, Options};

fn offline() -> Daemon {
    let d = Daemon::start(Options {
        offline_iaca: true,
        ..Options::default()
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while !d.keys().iter().any(|k| k["state"] == "active") {
        assert!(Instant::now() < deadline, "{}", d.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    d
}

fn key() -> PKey<Private> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap()
}

/// The insider's own root: the real IACA's name and key identifier, the
/// insider's key.
fn forged_root(iaca: &X509, key: &PKey<Private>) -> X509 {
    let ski = iaca.subject_key_id().unwrap().as_slice().to_vec();
    let mut b = X509Builder::new().unwrap();
    b.set_version(2).unwrap();
    b.set_serial_number(&BigNum::from_u32(7).unwrap().to_asn1_integer().unwrap())
        .unwrap();
    b.set_subject_name(iaca.subject_name()).unwrap();
    b.set_issuer_name(iaca.subject_name()).unwrap();
    b.set_pubkey(key).unwrap();
    b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::days_from_now(365).unwrap())
        .unwrap();
    b.append_extension(
        BasicConstraints::new()
            .critical()
            .ca()
            .pathlen(0)
            .build()
            .unwrap(),
    )
    .unwrap();
    b.append_extension(
        KeyUsage::new()
            .critical()
            .key_cert_sign()
            .crl_sign()
            .build()
            .unwrap(),
    )
    .unwrap();
    let hex: Vec<String> = ski.iter().map(|b| format!("{b:02X}")).collect();
    #[allow(deprecated)] // the builder has no way to set a chosen identifier
    let ext =
        X509Extension::new_nid(None, None, Nid::SUBJECT_KEY_IDENTIFIER, &hex.join(":")).unwrap();
    b.append_extension(ext).unwrap();
    b.sign(key, MessageDigest::sha256()).unwrap();
    b.build()
}

/// A certificate for `subject_key` (SPKI DER) issued in `issuer`'s name
/// and key identifier, signed by `key`; a CA certificate if `ca`.
fn forged_cert(issuer: &X509, key: &PKey<Private>, subject_key: &[u8], ca: bool) -> X509 {
    let subject = PKey::public_key_from_der(subject_key).unwrap();
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", "forged").unwrap();
    let mut b = X509Builder::new().unwrap();
    b.set_version(2).unwrap();
    b.set_serial_number(&BigNum::from_u32(99).unwrap().to_asn1_integer().unwrap())
        .unwrap();
    b.set_subject_name(&name.build()).unwrap();
    b.set_issuer_name(issuer.subject_name()).unwrap();
    b.set_pubkey(&subject).unwrap();
    b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::days_from_now(300).unwrap())
        .unwrap();
    if ca {
        b.append_extension(
            BasicConstraints::new()
                .critical()
                .ca()
                .pathlen(0)
                .build()
                .unwrap(),
        )
        .unwrap();
        b.append_extension(KeyUsage::new().critical().key_cert_sign().build().unwrap())
            .unwrap();
    }
    let aki = AuthorityKeyIdentifier::new()
        .keyid(true)
        .build(&b.x509v3_context(Some(issuer), None))
        .unwrap();
    b.append_extension(aki).unwrap();
    b.sign(key, MessageDigest::sha256()).unwrap();
    b.build()
}

fn iaca(d: &Daemon) -> X509 {
    X509::from_der(&d.iaca_der()).unwrap()
}

fn public_key_of(db: &rusqlite::Connection, label: &str) -> Vec<u8> {
    db.query_row(
        "SELECT public_key FROM signing_keys WHERE label = ?1",
        [label],
        |r| r.get(0),
    )
    .unwrap()
}

#[test]
fn a_ds_row_with_a_certificate_the_iaca_did_not_issue_neither_publishes_nor_signs() {
    let d = offline();
    let active = d
        .keys()
        .into_iter()
        .find(|k| k["state"] == "active")
        .unwrap();
    let label = active["label"].as_str().unwrap().to_owned();
    let db = rusqlite::Connection::open(d.scratch().join("registry.db")).unwrap();
    db.busy_timeout(Duration::from_secs(10)).unwrap();
    let attacker = key();
    let root = forged_root(&iaca(&d), &attacker);
    let forged = forged_cert(&root, &attacker, &public_key_of(&db, &label), false);
    let der = forged.to_der().unwrap();
    let _ = db
        .execute(
            "UPDATE signing_keys SET certificate = ?1 WHERE label = ?2",
            rusqlite::params![der, label],
        )
        .unwrap();
    let refused =
        "dojang_key_orders_refused_total{order=\"publish\",reason=\"unverified_certificate\"}";
    let jwks = || String::from_utf8(d.public_client().get("/.well-known/jwks.json").body).unwrap();
    // The refusal is counted while the new key view is built, and that
    // view is served a moment later: until then the key's earlier,
    // genuine publication stands.
    d.wait_until(
        Duration::from_secs(20),
        "the forged certificate refused, and its key withdrawn",
        || metric(&d, refused) >= 1.0 && !jwks().contains(active["kid"].as_str().unwrap()),
    );
    assert!(
        !jwks().contains(&B64.encode(&der)),
        "the forged certificate is not published"
    );
    // Nothing signs with it: issuance stops (the safe direction).
    let (jwk, _) = softhsm_tests::daemon::phone();
    let reply = d.client("counter").post_json(
        "/v1/credentials",
        &softhsm_tests::daemon::request("mdoc", &softhsm_tests::daemon::number(9), &jwk),
        &[],
    );
    assert_eq!(reply.status, 503, "{}", reply.json());
    assert_eq!(reply.json()["code"], "no_signing_key");
}

#[test]
fn a_key_written_back_into_the_pool_or_a_root_without_a_link_is_not_trusted() {
    let d = offline();
    let active = d
        .keys()
        .into_iter()
        .find(|k| k["state"] == "active")
        .unwrap();
    let label = active["label"].as_str().unwrap().to_owned();
    let mut insider = Insider::sqlite(&d);
    // The leading node settles the pool after the first key goes active
    // (it publishes the next emergency spare); the insider writes after,
    // or the node's write would undo the insider's.
    let mut last = insider.document("ds.pool");
    let mut steady_since = std::time::Instant::now();
    let deadline = steady_since + Duration::from_secs(20);
    while steady_since.elapsed() < Duration::from_secs(2) {
        assert!(
            std::time::Instant::now() < deadline,
            "the pool never settled"
        );
        std::thread::sleep(Duration::from_millis(100));
        let now = insider.document("ds.pool");
        if now != last {
            last = now;
            steady_since = std::time::Instant::now();
        }
    }
    // The signing key, as the only certified spare and the emergency one.
    let db = rusqlite::Connection::open(d.scratch().join("registry.db")).unwrap();
    db.busy_timeout(Duration::from_secs(10)).unwrap();
    let certificate: Vec<u8> = db
        .query_row(
            "SELECT certificate FROM signing_keys WHERE label = ?1",
            [&label],
            |r| r.get(0),
        )
        .unwrap();
    let pool = serde_json::json!({"keys": [{
        "label": label,
        "kid": active["kid"],
        "public_key": B64.encode(public_key_of(&db, &label)),
        "created": 0,
        "certificate": B64.encode(certificate),
        "emergency": true,
    }]});
    insider.set_document("ds.pool", &pool.to_string());
    // Officers rotate: the key is not taken a second time.
    let proposed =
        d.client("kim")
            .post_json("/v1/keys/rotate", &serde_json::json!({"chain": "ds"}), &[]);
    assert_eq!(proposed.status, 202, "{}", proposed.json());
    let id = proposed.json()["id"].as_str().unwrap().to_owned();
    let _ = d.approve("kim", &id);
    let outcome = d.approve("lee", &id);
    assert!(
        outcome
            .as_ref()
            .is_err_and(|e| e.contains("no certified DS key")),
        "{outcome:?}"
    );
    assert!(
        metric(
            &d,
            "dojang_key_orders_refused_total{order=\"spare\",reason=\"already_a_key\"}"
        ) >= 1.0
    );
    assert!(d.keys().iter().all(|k| k["state"] != "pending"));

    // A root of the insider's, "linked" by certificates the insider made.
    let attacker = key();
    let root = forged_root(&iaca(&d), &attacker);
    let own = root.public_key().unwrap().public_key_to_der().unwrap();
    let link = forged_cert(&root, &attacker, &own, true);
    let rollovers = serde_json::json!([{
        "root": B64.encode(root.to_der().unwrap()),
        "link": B64.encode(link.to_der().unwrap()),
        "back_link": B64.encode(link.to_der().unwrap()),
    }]);
    insider.set_document("iaca.rollovers", &rollovers.to_string());
    let unverified =
        "dojang_key_orders_refused_total{order=\"rollover\",reason=\"unverified_link\"}";
    d.wait_until(
        Duration::from_secs(20),
        "the forged rollover refused",
        || metric(&d, unverified) >= 1.0,
    );
    let listed = d.public_client().get("/iacas.json").json();
    assert_eq!(listed["iacas"].as_array().unwrap().len(), 1, "{listed}");
    let bundle = String::from_utf8(d.public_client().get("/iaca.pem").body).unwrap();
    assert_eq!(bundle.matches("BEGIN CERTIFICATE").count(), 1);
}

#[test]
fn a_crl_the_iaca_did_not_sign_is_not_served() {
    let d = offline();
    let genuine = d.public_client().get("/iaca.crl").body;
    // The insider's CRL: the IACA's name, another key, nothing revoked.
    let forged_pem = dojang::devtls::DevCa::generate("Dojang Test IACA")
        .unwrap()
        .crl(&[], 30)
        .unwrap();
    let forged = openssl::x509::X509Crl::from_pem(forged_pem.as_bytes())
        .unwrap()
        .to_der()
        .unwrap();
    let mut insider = Insider::sqlite(&d);
    insider.set_document("iaca.crl", &forged_pem);
    d.wait_until(
        Duration::from_secs(20),
        "the view rebuilt from the changed CRL row",
        || d.public_client().get("/iaca.crl").body != genuine,
    );
    let served = d.public_client().get("/iaca.crl");
    assert_ne!(served.body, forged, "the forged CRL is served");
    assert_eq!(
        served.status, 404,
        "no CRL rather than one the IACA did not sign"
    );
}
