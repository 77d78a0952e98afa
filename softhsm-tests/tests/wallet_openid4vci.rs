//! OpenID4VCI issuance to a holder's wallet, end to end: the counter makes
//! an offer over mTLS, an independent wallet (npm @openid4vc/openid4vci
//! with a jose key, `softhsm-tests/wallet/wallet.mjs`) redeems it, and the
//! credential it receives passes the independent verifiers and is bound to
//! the key the wallet proved. Then every refusal the spec names, with its
//! error code, driven by hand.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use base64::Engine;
use serde_json::{json, Value};
use softhsm_tests::daemon::{number, phone, request, Daemon, Options};
use softhsm_tests::https::{Client, Reply};

const GRANT: &str = "urn:ietf:params:oauth:grant-type:pre-authorized_code";

fn wallet_daemon(extra: &str) -> Daemon {
    Daemon::start(Options {
        wallet: Some(extra.to_owned()),
        ..Options::default()
    })
}

/// An offer request for holder `n`: an issuance request without a phone
/// key, on the QR channel (the officer checked the card).
fn offer_request(profile: &str, n: u32) -> Value {
    let mut r = request(profile, &number(n), &Value::Null);
    let _ = r.as_object_mut().unwrap().remove("device_key");
    r["channel"] = json!("qr_office");
    r
}

fn offer(d: &Daemon, profile: &str, n: u32) -> Value {
    let reply = d
        .client("counter")
        .post_json("/v1/offers", &offer_request(profile, n), &[]);
    assert_eq!(reply.status, 201, "{}", reply.text());
    reply.json()
}

/// The scripted wallet: its JSON line, and whether it succeeded.
fn run_wallet(d: &Daemon, offer: &Value) -> (bool, Value) {
    run_wallet_with(d, offer, &[])
}

/// The scripted wallet with `extra` arguments.
fn run_wallet_with(d: &Daemon, offer: &Value, extra: &[String]) -> (bool, Value) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("wallet");
    let out = Command::new("node")
        .arg(dir.join("wallet.mjs"))
        .args(["--offer", offer["offer_uri"].as_str().unwrap()])
        .args(["--tx-code", offer["tx_code"].as_str().unwrap()])
        .args(extra)
        .env("NODE_EXTRA_CA_CERTS", d.tls.join("ca.pem"))
        .output()
        .expect("node (make deps installs the wallet's packages)");
    let line = String::from_utf8_lossy(&out.stdout);
    let value = serde_json::from_str(line.trim()).unwrap_or_else(|_| {
        panic!(
            "wallet said: {line}{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.success(), value)
}

/// An independent Python verifier's output; it must accept.
fn python(script: &str, args: &[&Path]) -> String {
    let (ok, out) = common::python_verify(script, args);
    assert!(ok, "{script}: {out}");
    out
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// (action, outcome, rule) of every audit entry.
fn audit_actions(d: &Daemon) -> Vec<(String, String, String)> {
    // Waits until every entry is placed.
    let _ = d.audit_entries();
    let page = d
        .client("auditor")
        .get("/v1/audit/entries?start=0&count=1000")
        .json();
    page["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let entry =
                dojang::audit::entry::AuditEntry::decode(&B64.decode(e.as_str().unwrap()).unwrap())
                    .unwrap();
            (entry.action, entry.outcome, entry.rule.unwrap_or_default())
        })
        .collect()
}

/// The mdoc's device key's x coordinate.
fn cose_x(device_key: &ciborium::Value) -> Vec<u8> {
    device_key
        .as_map()
        .unwrap()
        .iter()
        .find(|(k, _)| k.as_integer() == Some((-2).into()))
        .and_then(|(_, v)| v.as_bytes().cloned())
        .unwrap()
}

#[test]
fn a_wallet_redeems_offers_for_both_formats_bound_to_the_key_it_proved() {
    let d = wallet_daemon("");
    let scratch = d.scratch().to_owned();
    let iaca = scratch.join("pki/iaca.pem");

    let offered = offer(&d, "mdoc", 1);
    assert!(offered["offer_uri"]
        .as_str()
        .unwrap()
        .starts_with("openid-credential-offer://?credential_offer_uri=https%3A%2F%2Flocalhost%3A"));
    assert_eq!(offered["tx_code"].as_str().unwrap().len(), 6);
    assert!(offered["qr"]["svg"].as_str().unwrap().starts_with("<svg"));
    let png = B64.decode(offered["qr"]["png"].as_str().unwrap()).unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"));
    let (ok, got) = run_wallet(&d, &offered);
    assert!(ok, "{got}");
    assert_eq!(got["format"], "mso_mdoc");
    let credential = got["credential"].as_str().unwrap();
    let verified = d.verify_mdoc(credential);
    assert_eq!(
        cose_x(&verified.device_key),
        B64URL.decode(got["jwk"]["x"].as_str().unwrap()).unwrap(),
        "bound to the wallet's proved key"
    );
    let file = write(&scratch, "wallet.mdoc", credential);
    let out = python(
        "verify_mdoc.py",
        &[&file, &iaca, Path::new(dojang::credential::mdoc::DOC_TYPE)],
    );
    assert!(out.contains("\"given_name\": \"길동\""), "{out}");

    let offered = offer(&d, "sd-jwt", 2);
    let (ok, got) = run_wallet(&d, &offered);
    assert!(ok, "{got}");
    assert_eq!(got["format"], "dc+sd-jwt");
    let credential = got["credential"].as_str().unwrap();
    let jwt = credential.split('~').next().unwrap();
    let header: Value =
        serde_json::from_slice(&B64URL.decode(jwt.split('.').next().unwrap()).unwrap()).unwrap();
    let payload: Value =
        serde_json::from_slice(&B64URL.decode(jwt.split('.').nth(1).unwrap()).unwrap()).unwrap();
    assert_eq!(
        payload["cnf"]["jwk"]["x"], got["jwk"]["x"],
        "bound to the proved key"
    );
    let ds_der = B64.decode(header["x5c"][0].as_str().unwrap()).unwrap();
    let ds = openssl::x509::X509::from_der(&ds_der).unwrap();
    let ds_pem = write(
        &scratch,
        "wallet-ds.pem",
        &String::from_utf8(ds.to_pem().unwrap()).unwrap(),
    );
    let file = write(&scratch, "wallet.sdjwt", credential);
    let out = python("verify_sdjwt.py", &[&file, &ds_pem]);
    assert!(out.contains("\"family_name\": \"홍\""), "{out}");

    // Every step is on the record, in the counter's name.
    let actions = audit_actions(&d);
    for action in [
        "offer",
        "wallet.token",
        "issue",
        "wallet.credential_accepted",
    ] {
        let n = actions
            .iter()
            .filter(|(a, outcome, _)| a == action && outcome == "allow")
            .count();
        assert_eq!(n, 2, "{action}: {actions:?}");
    }
    let metrics = d.ops_client().get("/metrics").text();
    assert!(
        metrics.contains("dojang_wallet_steps_total{outcome=\"ok\",step=\"credential\"} 2"),
        "{metrics}"
    );
}

/// A proof JWT signed by `key`, with `header` and `payload` as given.
fn proof(
    key: &openssl::pkey::PKey<openssl::pkey::Private>,
    header: &Value,
    payload: &Value,
) -> String {
    let h = B64URL.encode(header.to_string());
    let p = B64URL.encode(payload.to_string());
    let mut signer =
        openssl::sign::Signer::new(openssl::hash::MessageDigest::sha256(), key).unwrap();
    let der = signer
        .sign_oneshot_to_vec(format!("{h}.{p}").as_bytes())
        .unwrap();
    let raw = pkcs11_shim::ecdsa_der_to_raw(&der, 32).unwrap();
    format!("{h}.{p}.{}", B64URL.encode(raw))
}

/// The wallet side by hand.
struct Holder<'a> {
    client: Client,
    issuer: String,
    daemon: &'a Daemon,
}

impl Holder<'_> {
    fn new(d: &Daemon) -> Holder<'_> {
        Holder {
            client: d.wallet_client(),
            issuer: format!("https://localhost:{}", d.wallet.unwrap().port()),
            daemon: d,
        }
    }

    fn code(&mut self, offered: &Value) -> String {
        let uri = offered["credential_offer_uri"].as_str().unwrap();
        let path = &uri[self.issuer.len()..];
        let document = self.client.get(path).json();
        document["grants"][GRANT]["pre-authorized_code"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    fn token(&mut self, form: &str) -> Reply {
        self.client.send(
            "POST",
            "/token",
            &[("content-type", "application/x-www-form-urlencoded")],
            form.as_bytes().to_vec(),
        )
    }

    fn redeem(&mut self, code: &str, tx_code: &str) -> Reply {
        self.token(&format!(
            "grant_type={}&pre-authorized_code={code}&tx_code={tx_code}",
            GRANT.replace(':', "%3A")
        ))
    }

    /// An access token for a new offer for holder `n`.
    fn access_token(&mut self, profile: &str, n: u32) -> String {
        self.access_token_for(&offer_request(profile, n))
    }

    /// An access token for a new offer of `request`.
    fn access_token_for(&mut self, request: &Value) -> String {
        let reply = self
            .daemon
            .client("counter")
            .post_json("/v1/offers", request, &[]);
        assert_eq!(reply.status, 201, "{}", reply.text());
        let offered = reply.json();
        let code = self.code(&offered);
        let reply = self.redeem(&code, offered["tx_code"].as_str().unwrap());
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.header("cache-control"), Some("no-store"));
        reply.json()["access_token"].as_str().unwrap().to_owned()
    }

    fn nonce(&mut self) -> String {
        let reply = self.client.send("POST", "/nonce", &[], Vec::new());
        reply.json()["c_nonce"].as_str().unwrap().to_owned()
    }

    fn credential(&mut self, token: &str, body: &Value) -> Reply {
        let bearer = format!("Bearer {token}");
        self.client
            .post_json("/credential", body, &[("authorization", bearer.as_str())])
    }
}

fn error_of(reply: &Reply) -> String {
    reply.json()["error"].as_str().unwrap_or("").to_owned()
}

fn good_header(jwk: &Value) -> Value {
    json!({"typ": "openid4vci-proof+jwt", "alg": "ES256", "jwk": jwk})
}

fn request_with(profile: &str, jwt: &str) -> Value {
    json!({"credential_configuration_id": profile, "proofs": {"jwt": [jwt]}})
}

#[test]
fn wallet_refusals_carry_the_spec_s_error_codes() {
    let d = wallet_daemon("");
    let mut h = Holder::new(&d);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();

    // Metadata in both forms a wallet asks for.
    let metadata = h.client.get("/.well-known/openid-credential-issuer").json();
    assert_eq!(metadata["credential_issuer"], h.issuer.as_str());
    assert_eq!(
        metadata["credential_configurations_supported"]["mdoc"]["doctype"],
        dojang::credential::mdoc::DOC_TYPE
    );
    let server = h
        .client
        .get("/.well-known/oauth-authorization-server")
        .json();
    assert_eq!(
        server["pre-authorized_grant_anonymous_access_supported"],
        true
    );

    // The token endpoint.
    let offered = offer(&d, "sd-jwt", 10);
    let code = h.code(&offered);
    let tx_code = offered["tx_code"].as_str().unwrap();
    let wrong = if tx_code == "000000" {
        "000001"
    } else {
        "000000"
    };
    assert_eq!(
        error_of(&h.token("grant_type=password")),
        "unsupported_grant_type"
    );
    assert_eq!(
        error_of(&h.redeem("never-issued", tx_code)),
        "invalid_grant"
    );
    for _ in 0..3 {
        let reply = h.redeem(&code, wrong);
        assert_eq!(
            (reply.status, error_of(&reply)),
            (400, "invalid_grant".into())
        );
    }
    let dead = h.redeem(&code, tx_code);
    assert_eq!(
        error_of(&dead),
        "invalid_grant",
        "three wrong codes kill the offer"
    );
    let offered = offer(&d, "sd-jwt", 11);
    let code = h.code(&offered);
    let tx_code = offered["tx_code"].as_str().unwrap();
    assert_eq!(h.redeem(&code, tx_code).status, 200);
    assert_eq!(
        error_of(&h.redeem(&code, tx_code)),
        "invalid_grant",
        "single use"
    );

    // The credential endpoint.
    let (jwk, key) = phone();
    let (other_jwk, other_key) = phone();
    let audience = h.issuer.clone();
    let payload = |nonce: &str| json!({"aud": audience, "iat": now, "nonce": nonce});
    let token = h.access_token("sd-jwt", 12);
    let no_bearer = h.client.post_json("/credential", &json!({}), &[]);
    assert_eq!(no_bearer.status, 401);
    assert_eq!(no_bearer.header("www-authenticate"), Some("Bearer"));
    let basic = h.client.post_json(
        "/credential",
        &json!({}),
        &[("authorization", "Basic dTpw")],
    );
    assert_eq!(
        (basic.status, error_of(&basic)),
        (401, "invalid_token".into())
    );
    assert!(basic
        .header("www-authenticate")
        .unwrap()
        .contains("invalid_token"));
    let mut cases: Vec<(&str, Value, &str)> = Vec::new();
    let n = h.nonce();
    cases.push((
        "foreign nonce",
        request_with(
            "sd-jwt",
            &proof(&key, &good_header(&jwk), &payload("not-ours")),
        ),
        "invalid_nonce",
    ));
    let mut aud = payload(&n);
    aud["aud"] = json!("https://another.example");
    cases.push((
        "wrong aud",
        request_with("sd-jwt", &proof(&key, &good_header(&jwk), &aud)),
        "invalid_proof",
    ));
    let mut typ = good_header(&jwk);
    typ["typ"] = json!("JWT");
    cases.push((
        "wrong typ",
        request_with("sd-jwt", &proof(&key, &typ, &payload(&n))),
        "invalid_proof",
    ));
    for alg in ["none", "HS256"] {
        let mut header = good_header(&jwk);
        header["alg"] = json!(alg);
        cases.push((
            "alg",
            request_with("sd-jwt", &proof(&key, &header, &payload(&n))),
            "invalid_proof",
        ));
    }
    let mut private = jwk.clone();
    private["d"] = json!(B64URL.encode(key.ec_key().unwrap().private_key().to_vec()));
    cases.push((
        "private key",
        request_with("sd-jwt", &proof(&key, &good_header(&private), &payload(&n))),
        "invalid_proof",
    ));
    cases.push((
        "another key signed",
        request_with(
            "sd-jwt",
            &proof(&other_key, &good_header(&jwk), &payload(&n)),
        ),
        "invalid_proof",
    ));
    cases.push((
        "configuration",
        request_with("mdoc", &proof(&key, &good_header(&jwk), &payload(&n))),
        "unknown_credential_configuration",
    ));
    let good = proof(&key, &good_header(&jwk), &payload(&n));
    cases.push((
        "batch",
        json!({"credential_configuration_id": "sd-jwt", "proofs": {"jwt": [good, good]}}),
        "invalid_proof",
    ));
    // A token survives a few correctable refusals, then is spent.
    for (i, (what, body, error)) in cases.into_iter().enumerate() {
        let reply = h.credential(&token, &body);
        if i < 5 {
            assert_eq!(
                (reply.status, error_of(&reply)),
                (400, error.to_owned()),
                "{what}: {}",
                reply.text()
            );
        } else {
            assert_eq!(
                error_of(&reply),
                "invalid_token",
                "after five tries: {what}"
            );
        }
    }
    // None of the refusals spent the nonce.
    let token = h.access_token("sd-jwt", 15);
    let issued = h.credential(
        &token,
        &request_with("sd-jwt", &proof(&key, &good_header(&jwk), &payload(&n))),
    );
    assert_eq!(issued.status, 200, "{}", issued.text());
    let issued = issued.json();
    assert!(issued["credentials"][0]["credential"]
        .as_str()
        .unwrap()
        .contains('~'));
    let fresh = h.nonce();
    let again = h.credential(
        &token,
        &request_with("sd-jwt", &proof(&key, &good_header(&jwk), &payload(&fresh))),
    );
    assert_eq!(
        (again.status, error_of(&again)),
        (401, "invalid_token".into()),
        "a spent token"
    );
    // A replayed nonce, with a fresh token.
    let token = h.access_token("sd-jwt", 13);
    let replayed = h.credential(
        &token,
        &request_with(
            "sd-jwt",
            &proof(&other_key, &good_header(&other_jwk), &payload(&n)),
        ),
    );
    assert_eq!(error_of(&replayed), "invalid_nonce");
    // The policy decides again with the phone: a phone bound to another
    // holder (holder 15 above) is refused for holder 13.
    let fresh = h.nonce();
    let taken = h.credential(
        &token,
        &request_with("sd-jwt", &proof(&key, &good_header(&jwk), &payload(&fresh))),
    );
    assert_eq!(
        error_of(&taken),
        "credential_request_denied",
        "{}",
        taken.text()
    );

    // Notifications.
    let bearer = |t: &str| format!("Bearer {t}");
    let token = h.access_token("mdoc", 14);
    let (jwk, key) = phone();
    let fresh = h.nonce();
    let issued = h
        .credential(
            &token,
            &request_with("mdoc", &proof(&key, &good_header(&jwk), &payload(&fresh))),
        )
        .json();
    let id = issued["notification_id"].as_str().unwrap();
    let auth = bearer(&token);
    let mut notify = |body: Value| {
        h.client
            .post_json("/notification", &body, &[("authorization", auth.as_str())])
    };
    assert_eq!(
        error_of(&notify(
            json!({"notification_id": id, "event": "credential_lost"})
        )),
        "invalid_notification_request"
    );
    assert_eq!(
        error_of(&notify(
            json!({"notification_id": "nope", "event": "credential_accepted"})
        )),
        "invalid_notification_id"
    );
    assert_eq!(
        notify(json!({"notification_id": id, "event": "credential_failure"})).status,
        204
    );
    assert_eq!(
        error_of(&notify(
            json!({"notification_id": id, "event": "credential_accepted"})
        )),
        "invalid_notification_id",
        "once"
    );

    // Wrong transaction codes are on the record.
    let entries = d.audit_entries().join("\n");
    assert!(
        entries.contains("wallet.tx_code_attempts"),
        "the dead code is recorded"
    );
}

#[test]
fn the_counter_hears_refusals_at_once_and_offers_expire() {
    // The policy wants the IC card proved by a CA this node did not load.
    CARD_CA_PIN.set("ab".repeat(32)).unwrap();
    let d = Daemon::start(Options {
        policy: pin_the_card_ca,
        wallet: Some("offer_ttl_s = 5".into()),
        ..Options::default()
    });
    let counter = |body: &Value| d.client("counter").post_json("/v1/offers", body, &[]);
    // Too young: the policy refuses at the counter, not at the phone.
    let mut young = offer_request("mdoc", 20);
    young["holder"]["resident_number"] = json!(format!(
        "{}-4000001",
        (time::OffsetDateTime::now_utc().date() - time::Duration::days(365 * 10))
            .format(time::macros::format_description!(
                "[year repr:last_two][month][day]"
            ))
            .unwrap()
    ));
    let refused = counter(&young);
    assert_eq!(refused.status, 422, "{}", refused.text());
    assert_eq!(refused.json()["code"], "policy_denied");
    let mut keyed = offer_request("mdoc", 21);
    keyed["device_key"] = phone().0;
    assert_eq!(counter(&keyed).json()["code"], "malformed_request");
    let mut tapped = offer_request("mdoc", 25);
    tapped["channel"] = json!("ic_card");
    let unprovable = counter(&tapped);
    assert_eq!(unprovable.status, 503);
    assert_eq!(unprovable.json()["code"], "card_ca_not_loaded");
    let stranger = d
        .client("stranger")
        .post_json("/v1/offers", &offer_request("mdoc", 22), &[]);
    assert_eq!(stranger.status, 403);

    // An offer dies with its lifetime.
    let mut h = Holder::new(&d);
    let offered = offer(&d, "mdoc", 23);
    let code = h.code(&offered);
    std::thread::sleep(std::time::Duration::from_secs(6));
    assert_eq!(
        error_of(&h.redeem(&code, offered["tx_code"].as_str().unwrap())),
        "invalid_grant"
    );
    let path = &offered["credential_offer_uri"].as_str().unwrap()[h.issuer.len()..];
    assert_eq!(h.client.get(path).status, 404);

    // A node without a wallet listener makes no offers.
    let plain = Daemon::start(Options::default());
    let reply = plain
        .client("counter")
        .post_json("/v1/offers", &offer_request("mdoc", 24), &[]);
    assert_eq!(
        (reply.status, reply.json()["code"].clone()),
        (404, json!("wallet_not_configured"))
    );
}

/// The card CA's SHA-256, for the policy (a `fn` rewrites the policy).
static CARD_CA_PIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();

fn pin_the_card_ca(policy: String) -> String {
    policy.replace(
        "fee_krw = 5000\n",
        &format!(
            "fee_krw = 5000\ncard_ca_sha256 = \"{}\"\n",
            CARD_CA_PIN.get().unwrap()
        ),
    )
}

/// A CA, or a certificate of `subject_key` signed by `ca` with `serial`.
fn certificate(
    subject_key: &openssl::pkey::PKeyRef<impl openssl::pkey::HasPublic>,
    ca: Option<(
        &openssl::x509::X509,
        &openssl::pkey::PKey<openssl::pkey::Private>,
    )>,
    signer: &openssl::pkey::PKey<openssl::pkey::Private>,
    (name, serial): (&str, u32),
) -> openssl::x509::X509 {
    use openssl::x509::{extension::BasicConstraints, X509Builder, X509NameBuilder};
    let mut subject = X509NameBuilder::new().unwrap();
    subject.append_entry_by_text("CN", name).unwrap();
    let subject = subject.build();
    let mut b = X509Builder::new().unwrap();
    b.set_version(2).unwrap();
    let serial = openssl::bn::BigNum::from_u32(serial).unwrap();
    b.set_serial_number(&serial.to_asn1_integer().unwrap())
        .unwrap();
    b.set_subject_name(&subject).unwrap();
    b.set_issuer_name(ca.map_or(&subject, |(c, _)| c.subject_name()))
        .unwrap();
    b.set_pubkey(subject_key).unwrap();
    b.set_not_before(&openssl::asn1::Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    b.set_not_after(&openssl::asn1::Asn1Time::days_from_now(365).unwrap())
        .unwrap();
    if ca.is_none() {
        b.append_extension(BasicConstraints::new().critical().ca().build().unwrap())
            .unwrap();
    }
    b.sign(signer, openssl::hash::MessageDigest::sha256())
        .unwrap();
    b.build()
}

fn pem(dir: &Path, name: &str, cert: &openssl::x509::X509) -> PathBuf {
    write(
        dir,
        name,
        &String::from_utf8(cert.to_pem().unwrap()).unwrap(),
    )
}

#[test]
fn an_ic_card_tap_is_proved_by_the_card_s_chip() {
    // The card: a key born in a SoftHSM token (its chip), certified by the
    // card CA the policy pins.
    let card = softhsm_tests::SoftHsmToken::create("card");
    let made = card.pkcs11_tool(&[
        "--keypairgen",
        "--key-type",
        "EC:prime256v1",
        "--label",
        "card",
        "--id",
        "01",
    ]);
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let spki = card.scratch().join("card.spki");
    let read = card.pkcs11_tool(&[
        "--read-object",
        "--type",
        "pubkey",
        "--label",
        "card",
        "-o",
        spki.to_str().unwrap(),
    ]);
    assert!(
        read.status.success(),
        "{}",
        String::from_utf8_lossy(&read.stderr)
    );
    let chip = openssl::pkey::PKey::public_key_from_der(&std::fs::read(&spki).unwrap()).unwrap();
    let dir = card.scratch();
    let ca_key = softhsm_tests::p256_key();
    let ca = certificate(&ca_key, None, &ca_key, ("Card CA", 1));
    let ca_file = pem(dir, "card-ca.pem", &ca);
    CARD_CA_PIN
        .set(dojang::keys::view::hex(&openssl::sha::sha256(
            &ca.to_der().unwrap(),
        )))
        .unwrap();
    let card_cert = pem(
        dir,
        "card.pem",
        &certificate(&chip, Some((&ca, &ca_key)), &ca_key, ("card", 0x0A1B_2C3D)),
    );
    let rogue_key = softhsm_tests::p256_key();
    let rogue = certificate(&rogue_key, None, &rogue_key, ("Rogue CA", 1));
    let rogue_cert = pem(
        dir,
        "rogue.pem",
        &certificate(
            &chip,
            Some((&rogue, &rogue_key)),
            &rogue_key,
            ("card", 0x0A1B_2C3D),
        ),
    );
    // The wallet asks the chip to sign (pkcs11-tool: raw r||s over the digest).
    let sign = dir.join("card-sign");
    std::fs::write(
        &sign,
        format!(
            "#!/bin/sh\nSOFTHSM2_CONF={conf} exec pkcs11-tool --module {module} --token-label card --login \
             --pin \"$(cat {pin})\" --sign --mechanism ECDSA --label card -i \"$1\" -o \"$2\" 2>/dev/null\n",
            conf = card.conf_path().display(),
            module = softhsm_tests::softhsm_module().display(),
            pin = card.pin_file().display(),
        ),
    )
    .unwrap();
    let mut mode = std::fs::metadata(&sign).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut mode, 0o755);
    std::fs::set_permissions(&sign, mode).unwrap();

    let d = Daemon::start(Options {
        policy: pin_the_card_ca,
        wallet: Some(format!(
            "card_cas = [\"{}\"]\nbatch_size = 2",
            ca_file.display()
        )),
        ..Options::default()
    });
    let tap_as = |profile: &str, n: u32, serial: &str, cert: Option<&Path>| {
        let mut request = offer_request(profile, n);
        request["channel"] = json!("ic_card");
        request["card"]["serial"] = json!(serial);
        let reply = d.client("counter").post_json("/v1/offers", &request, &[]);
        assert_eq!(reply.status, 201, "{}", reply.text());
        let offered = reply.json();
        let mut extra: Vec<String> = Vec::new();
        if let Some(cert) = cert {
            extra = vec![
                "--card-cert".into(),
                cert.display().to_string(),
                "--card-sign".into(),
                sign.display().to_string(),
            ];
        }
        run_wallet_with(&d, &offered, &extra)
    };
    let tap = |n: u32, serial: &str, cert: Option<&Path>| tap_as("mdoc", n, serial, cert);
    // The chip vouches for one phone key: no batch on a card channel.
    let mut request = offer_request("mdoc", 35);
    request["channel"] = json!("ic_card");
    request["card"]["serial"] = json!("0A1B2C3D");
    let offered = d
        .client("counter")
        .post_json("/v1/offers", &request, &[])
        .json();
    let (ok, got) = run_wallet_with(
        &d,
        &offered,
        &[
            "--card-cert".into(),
            card_cert.display().to_string(),
            "--card-sign".into(),
            sign.display().to_string(),
            "--batch".into(),
            "2".into(),
        ],
    );
    assert!(
        !ok && got.to_string().contains("one credential per tap"),
        "{got}"
    );
    // Both formats (the wallet checks each with its own libraries).
    let (ok, got) = tap_as("sd-jwt", 34, "0A1B2C3D", Some(&card_cert));
    assert!(ok, "{got}");
    assert_eq!(got["format"], "dc+sd-jwt");
    let (ok, got) = tap(30, "0A1B2C3D", Some(&card_cert));
    assert!(ok, "{got}");
    let verified = d.verify_mdoc(got["credential"].as_str().unwrap());
    assert_eq!(
        cose_x(&verified.device_key),
        B64URL.decode(got["jwk"]["x"].as_str().unwrap()).unwrap()
    );
    let file = write(
        d.scratch(),
        "tapped.mdoc",
        got["credential"].as_str().unwrap(),
    );
    let iaca = d.scratch().join("pki/iaca.pem");
    let out = python(
        "verify_mdoc.py",
        &[&file, &iaca, Path::new(dojang::credential::mdoc::DOC_TYPE)],
    );
    assert!(out.contains("\"given_name\": \"길동\""), "{out}");
    // No tap, a card of another CA, another card than the counter named.
    for (n, serial, cert, why) in [
        (31, "0A1B2C3D", None, "card_proof"),
        (32, "0A1B2C3D", Some(rogue_cert.as_path()), "card CA"),
        (
            33,
            "0A1B2C3E",
            Some(card_cert.as_path()),
            "not the card the counter named",
        ),
    ] {
        let (ok, got) = tap(n, serial, cert);
        assert!(!ok, "{why}: {got}");
        let said = got.to_string();
        assert!(
            said.contains("invalid_proof") && said.contains(why),
            "{why}: {said}"
        );
    }
}

#[test]
fn a_batch_gives_each_credential_its_own_key_and_status_and_one_fate() {
    let d = wallet_daemon("batch_size = 3");
    let mut h = Holder::new(&d);
    let metadata = h.client.get("/.well-known/openid-credential-issuer").json();
    assert_eq!(metadata["batch_credential_issuance"]["batch_size"], 3);
    let offered = offer(&d, "sd-jwt", 50);
    let (ok, got) = run_wallet_with(&d, &offered, &["--batch".into(), "3".into()]);
    assert!(ok, "{got}");
    let credentials = got["credentials"].as_array().unwrap();
    assert_eq!(credentials.len(), 3);
    let mut positions = Vec::new();
    for (i, credential) in credentials.iter().enumerate() {
        let jwt = credential.as_str().unwrap().split('~').next().unwrap();
        let payload: Value =
            serde_json::from_slice(&B64URL.decode(jwt.split('.').nth(1).unwrap()).unwrap())
                .unwrap();
        assert_eq!(
            payload["cnf"]["jwk"]["x"], got["jwks"][i]["x"],
            "copy {i}'s key"
        );
        positions.push((
            payload["status"]["status_list"]["uri"]
                .as_str()
                .unwrap()
                .to_owned(),
            payload["status"]["status_list"]["idx"].as_u64().unwrap(),
        ));
    }
    positions.sort();
    positions.dedup();
    assert_eq!(positions.len(), 3, "a status position each");
    // The copies are on the record; revoking one revokes the document.
    let _ = d.audit_entries();
    let page = d
        .client("auditor")
        .get("/v1/audit/entries?start=0&count=1000")
        .json();
    let copy = page["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            dojang::audit::entry::AuditEntry::decode(&B64.decode(e.as_str().unwrap()).unwrap())
                .unwrap()
        })
        .filter(|e| e.action == "issue.copy")
        .map(|e| e.credential_id.unwrap())
        .collect::<Vec<_>>();
    assert_eq!(copy.len(), 2);
    let revoked = d.client("counter").post_json(
        &format!("/v1/credentials/{}/revoke", copy[1]),
        &json!({}),
        &[],
    );
    assert_eq!(revoked.status, 200, "{}", revoked.text());
    for (uri, idx) in &positions {
        assert_eq!(d.status_bit(uri, *idx), 1, "{uri}#{idx}");
    }

    // An mdoc batch: each copy passes pymdoccbor, bound to its own key.
    let offered = offer(&d, "mdoc", 52);
    let (ok, got) = run_wallet_with(&d, &offered, &["--batch".into(), "2".into()]);
    assert!(ok, "{got}");
    let iaca = d.scratch().join("pki/iaca.pem");
    for (i, credential) in got["credentials"].as_array().unwrap().iter().enumerate() {
        let credential = credential.as_str().unwrap();
        let verified = d.verify_mdoc(credential);
        assert_eq!(
            cose_x(&verified.device_key),
            B64URL
                .decode(got["jwks"][i]["x"].as_str().unwrap())
                .unwrap()
        );
        let file = write(d.scratch(), &format!("batch-{i}.mdoc"), credential);
        let out = python(
            "verify_mdoc.py",
            &[&file, &iaca, Path::new(dojang::credential::mdoc::DOC_TYPE)],
        );
        assert!(out.contains("\"given_name\": \"길동\""), "{out}");
    }

    // Proofs a batch refuses: more than batch_size, one key twice.
    let token = h.access_token("mdoc", 51);
    let (jwk, key) = phone();
    let nonce = h.nonce();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let jwt = proof(
        &key,
        &good_header(&jwk),
        &json!({"aud": h.issuer, "iat": now, "nonce": nonce}),
    );
    for (jwts, why) in [
        (vec![jwt.clone(); 4], "batch_size"),
        (vec![jwt.clone(), jwt.clone()], "same key"),
    ] {
        let reply = h.credential(
            &token,
            &json!({"credential_configuration_id": "mdoc", "proofs": {"jwt": jwts}}),
        );
        assert_eq!(error_of(&reply), "invalid_proof", "{why}: {}", reply.text());
    }
}

#[test]
fn dojangctl_offer_shows_the_qr_code_and_the_transaction_code() {
    let d = wallet_daemon("");
    let scratch = d.scratch().to_owned();
    let request = write(
        &scratch,
        "offer.json",
        &offer_request("sd-jwt", 60).to_string(),
    );
    let png = scratch.join("offer.png");
    let ctl = |extra: &[&str]| {
        Command::new(softhsm_tests::workspace_binary("dojangctl"))
            .arg("--api")
            .arg(format!("https://localhost:{}", d.api.port()))
            .arg("--ca")
            .arg(d.tls.join("ca.pem"))
            .arg("--client-cert")
            .arg(d.tls.join("counter.pem"))
            .arg("--client-key")
            .arg(d.tls.join("counter.key"))
            .args(extra)
            .output()
            .unwrap()
    };
    let out = ctl(&[
        "offer",
        "--request",
        request.to_str().unwrap(),
        "--png",
        png.to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Half blocks draw the code; the fields follow.
    assert!(text.contains('▀') && text.contains('█'), "{text}");
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_owned())
            .unwrap_or_else(|| panic!("{name} missing: {text}"))
    };
    let tx_code = field("transaction code");
    assert!(tx_code.len() == 6 && tx_code.bytes().all(|b| b.is_ascii_digit()));
    let offer_uri = field("offer");
    assert!(offer_uri.starts_with("openid-credential-offer://"));
    assert!(std::fs::read(&png).unwrap().starts_with(b"\x89PNG"));
    // What it printed is an offer a wallet redeems.
    let (ok, got) = run_wallet(&d, &json!({"offer_uri": offer_uri, "tx_code": tx_code}));
    assert!(ok, "{got}");
    // A refusal is the daemon's problem, in one line.
    let mut young = offer_request("sd-jwt", 61);
    young["holder"]["resident_number"] = json!("200101-3000001");
    let refused_request = write(&scratch, "young.json", &young.to_string());
    let out = ctl(&["offer", "--request", refused_request.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("policy_denied") && err.contains("holder.minimum_age"),
        "{err}"
    );
}

impl Holder<'_> {
    /// A credential of `profile` for holder `n`, bound to `key`.
    fn issued(
        &mut self,
        request: &Value,
        (jwk, key): (&Value, &openssl::pkey::PKey<openssl::pkey::Private>),
    ) -> String {
        let profile = request["profile"].as_str().unwrap().to_owned();
        let profile = profile.as_str();
        let token = self.access_token_for(request);
        let proved = self.proof_of(jwk, key);
        let reply = self.credential(&token, &request_with(profile, &proved));
        assert_eq!(reply.status, 200, "{}", reply.text());
        reply.json()["credentials"][0]["credential"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// A proof by `key` over a fresh nonce.
    fn proof_of(
        &mut self,
        jwk: &Value,
        key: &openssl::pkey::PKey<openssl::pkey::Private>,
    ) -> String {
        let nonce = self.nonce();
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        proof(
            key,
            &good_header(jwk),
            &json!({"aud": self.issuer, "iat": now, "nonce": nonce}),
        )
    }

    /// `POST /refresh` of `credential` with a proof by `key`.
    fn refresh(
        &mut self,
        credential: &str,
        (jwk, key): (&Value, &openssl::pkey::PKey<openssl::pkey::Private>),
    ) -> Reply {
        let proved = self.proof_of(jwk, key);
        self.client.post_json(
            "/refresh",
            &json!({"credential": credential, "proofs": {"jwt": [proved]}}),
            &[],
        )
    }
}

#[test]
fn a_wallet_has_its_credential_signed_again_without_a_visit() {
    let d = Daemon::start(Options {
        wallet: Some(String::new()),
        server: "[server.keys]\nlifecycle_interval_ms = 600000\n".into(),
        ..Options::default()
    });
    let mut h = Holder::new(&d);
    let (jwk, key) = phone();
    let (other_jwk, other_key) = phone();
    // An SD-JWT VC with a portrait (a minimal JPEG), an mdoc without.
    let mut with_portrait = offer_request("sd-jwt", 70);
    with_portrait["holder"]["portrait"] =
        json!(B64.encode([0xff, 0xd8, 0xff, 0xe0, 0, 0, 0xff, 0xd9]));
    let sd_jwt = h.issued(&with_portrait, (&jwk, &key));
    let (mdoc_jwk, mdoc_key) = phone();
    let mdoc = h.issued(&offer_request("mdoc", 71), (&mdoc_jwk, &mdoc_key));
    let metadata = h.client.get("/.well-known/openid-credential-issuer").json();
    assert_eq!(
        metadata["dojang_refresh_endpoint"],
        format!("{}/refresh", h.issuer)
    );

    // Not yet due: a fresh signature is not renewed (refreshes are not free
    // signatures); nor for another key, nor a credential that is not ours.
    let early = h.refresh(&sd_jwt, (&jwk, &key));
    assert_eq!(
        error_of(&early),
        "credential_request_denied",
        "{}",
        early.text()
    );
    assert!(
        early.text().contains("refresh.too_early"),
        "{}",
        early.text()
    );
    let refused = h.refresh(&sd_jwt, (&other_jwk, &other_key));
    assert_eq!(error_of(&refused), "invalid_proof", "{}", refused.text());
    let mut tampered = sd_jwt.clone();
    let at = tampered.find('.').unwrap() + 5;
    tampered.replace_range(at..=at, if &tampered[at..=at] == "A" { "B" } else { "A" });
    let refused = h.refresh(&tampered, (&jwk, &key));
    assert_eq!(
        error_of(&refused),
        "credential_request_denied",
        "{}",
        refused.text()
    );

    // The DS key is revoked: its credentials are suspended, then signed
    // again by its successor at a new status position.
    let _ = d.dual_control(
        "kim",
        "lee",
        "/v1/keys/ds-1/revoke",
        &json!({"reason": "token backup lost"}),
    );
    let successor = d.rotate_now();
    let old_status = d.verify_mdoc(&mdoc).status.unwrap();
    assert_eq!(
        d.status_bit(&old_status.uri, old_status.idx),
        2,
        "suspended"
    );
    // A database writer extends the document by ten years: the refresh
    // re-signs the expiry that was signed, so it refuses the row's.
    let db = rusqlite::Connection::open(d.scratch().join("registry.db")).unwrap();
    let device = serde_json::from_value::<pkcs11_shim::Jwk>(mdoc_jwk.clone())
        .unwrap()
        .thumbprint();
    let expiry: String = db
        .query_row(
            "SELECT document_expiry FROM credentials WHERE device = ?1",
            [&device],
            |r| r.get(0),
        )
        .unwrap();
    let forge = |value: &str| {
        let changed = db
            .execute(
                "UPDATE credentials SET document_expiry = ?1 WHERE device = ?2",
                [value, device.as_str()],
            )
            .unwrap();
        assert_eq!(changed, 1);
    };
    forge("2099-12-31");
    let extended = h.refresh(&mdoc, (&mdoc_jwk, &mdoc_key));
    assert!(
        extended.text().contains("refresh.same_document"),
        "{}",
        extended.text()
    );
    forge(&expiry);
    let again = h.refresh(&mdoc, (&mdoc_jwk, &mdoc_key));
    assert_eq!(again.status, 200, "{}", again.text());
    let renewed = again.json()["credentials"][0]["credential"]
        .as_str()
        .unwrap()
        .to_owned();
    let verified = d.verify_mdoc(&renewed);
    let new_status = verified.status.clone().unwrap();
    assert_ne!(new_status.idx, old_status.idx, "a new position");
    assert_eq!(d.status_bit(&new_status.uri, new_status.idx), 0);
    assert_eq!(
        d.status_bit(&old_status.uri, old_status.idx),
        1,
        "the old one revoked for good"
    );
    assert_eq!(
        cose_x(&verified.device_key),
        B64URL.decode(mdoc_jwk["x"].as_str().unwrap()).unwrap()
    );
    let keys = d.keys();
    let signer = keys
        .iter()
        .find(|k| k["label"] == successor.as_str())
        .unwrap();
    assert_eq!(verified.signer_kid, signer["kid"].as_str().unwrap());
    // The old copy is dead: refreshed once.
    let stale = h.refresh(&mdoc, (&mdoc_jwk, &mdoc_key));
    assert_eq!(
        error_of(&stale),
        "credential_request_denied",
        "{}",
        stale.text()
    );

    // A holder who withholds the portrait's disclosure gets no photo-less
    // credential; presented whole, it is signed again, portrait and all.
    let stripped: Vec<&str> = sd_jwt
        .split('~')
        .filter(|part| {
            B64URL
                .decode(part)
                .ok()
                .is_none_or(|d| !String::from_utf8_lossy(&d).contains("\"picture\""))
        })
        .collect();
    let stripped = stripped.join("~");
    assert!(stripped.len() < sd_jwt.len());
    let refused = h.refresh(&stripped, (&jwk, &key));
    assert!(
        refused.text().contains("refresh.complete"),
        "{}",
        refused.text()
    );
    let again = h.refresh(&sd_jwt, (&jwk, &key));
    assert_eq!(again.status, 200, "{}", again.text());
    let renewed = again.json()["credentials"][0]["credential"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(renewed.split('~').any(|part| B64URL
        .decode(part)
        .is_ok_and(|d| String::from_utf8_lossy(&d).contains("\"picture\""))));
    assert_eq!(
        audit_actions(&d)
            .iter()
            .filter(|(a, o, _)| a == "wallet.refresh" && o == "allow")
            .count(),
        2
    );
}
