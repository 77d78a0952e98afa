//! The IACA offline (issue 14): its key lives in a token no daemon
//! configuration names; officers' ceremonies create the root and certify
//! the DS keys the daemon generates ahead of need. The daemon's token holds
//! no IACA key, a tampered ceremony response is refused and audited, the
//! spare pool warns when drained and refills at a ceremony, and an
//! emergency revocation switches to the published spare with no failed
//! request.
#![allow(clippy::unwrap_used)]
#![allow(clippy::indexing_slicing, clippy::panic, clippy::expect_used)] // test code: a failed expect, panic or index is a failed test

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use softhsm_tests::daemon::{self, Daemon, Options};

/// A daemon whose first DS ceremony is done and whose first key (the
/// emergency spare, pending at once) the lifecycle has made active.
fn offline() -> Daemon {
    let d = start_offline();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !d.keys().iter().any(|k| k["state"] == "active") {
        assert!(Instant::now() < deadline, "{}", d.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    d
}

fn start_offline() -> Daemon {
    Daemon::start(Options {
        offline_iaca: true,
        policy: |p| {
            p.replace(
                "requests_per_minute = 6000",
                "requests_per_minute = 1000000",
            )
        },
        ..Options::default()
    })
}

fn issue(d: &Daemon, n: u32) -> serde_json::Value {
    let (jwk, _) = daemon::phone();
    let reply = d.client("counter").post_json(
        "/v1/credentials",
        &daemon::request("mdoc", &daemon::number(n), &jwk),
        &[],
    );
    assert_eq!(reply.status, 201, "{}", reply.json());
    reply.json()
}

fn readiness(d: &Daemon, check: &str) -> String {
    let body = d.ops_client().get("/readyz").json();
    body["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == check)
        .map(|c| c["detail"].as_str().unwrap().to_owned())
        .unwrap_or_else(|| panic!("no {check} check: {body}"))
}

fn active_ds(d: &Daemon) -> serde_json::Value {
    d.keys()
        .into_iter()
        .find(|k| k["state"] == "active")
        .expect("an active DS key")
}

fn openssl(args: &[&str], input: &[u8]) -> (bool, String) {
    use std::io::Write;
    let mut child = std::process::Command::new("openssl")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn the_online_token_holds_no_iaca_key_and_chains_pass_strict_checks() {
    let d = offline();
    let objects = d.token_objects();
    assert!(
        objects.contains("document-signer") || objects.contains("ds-"),
        "the spares are in the daemon's token: {objects}"
    );
    assert!(
        !objects.to_lowercase().contains("label:      iaca"),
        "no IACA key in the daemon's token: {objects}"
    );
    let issued = issue(&d, 1);
    let verified = d.verify_mdoc(issued["credential"].as_str().unwrap());
    assert_eq!(verified.doc_type, dojang::credential::mdoc::DOC_TYPE);
    // The DS certificate the verifiers fetch chains to the IACA, strictly.
    let label = active_ds(&d)["label"].as_str().unwrap().to_owned();
    let ds = d.public_client().get(&format!("/ds/{label}.pem")).body;
    let iaca = d.scratch().join("pki/iaca.pem");
    let (ok, why) = openssl(
        &["verify", "-x509_strict", "-CAfile", iaca.to_str().unwrap()],
        &ds,
    );
    assert!(ok, "openssl verify -x509_strict: {why}");
    // And an independent ISO 18013-5 Annex B validator (isomdl's
    // ValidationRuleset::Mdl) accepts the chain, field by field.
    let ds_file = d.scratch().join("active-ds.pem");
    std::fs::write(&ds_file, &ds).unwrap();
    let out = std::process::Command::new(softhsm_tests::annexb_validator())
        .arg(&iaca)
        .arg(&ds_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "isomdl Annex B: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    // The CRL the certificates name is one DER CRL from the ceremony.
    let crl = d.public_client().get("/iaca.crl");
    assert_eq!(crl.status, 200);
    let (ok, why) = openssl(
        &["crl", "-inform", "DER", "-noout", "-nextupdate"],
        &crl.body,
    );
    assert!(ok, "openssl crl -inform DER: {why}");
    // Every online command that would need the IACA key says so.
    let out = d.try_ctl(&["pki", "issue-ds", "--label", "ds-forged"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("the IACA is offline"),
        "{err}"
    );
    let proposed = d
        .client("kim")
        .post_json("/v1/pki/iaca", &serde_json::json!({}), &[]);
    assert_eq!(proposed.status, 409, "{}", proposed.json());
    assert_eq!(proposed.json()["code"], "iaca_offline");
}

/// A ceremony over `request` changed by `edit` (officers sign the changed
/// request's record: the IACA signs what it was given); the response.
fn ceremony_over(d: &Daemon, request: &Path, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let mut changed: serde_json::Value =
        serde_json::from_slice(&std::fs::read(request).unwrap()).unwrap();
    edit(&mut changed);
    let path = d.scratch().join(format!(
        "changed-{}.json",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::write(&path, serde_json::to_vec_pretty(&changed).unwrap()).unwrap();
    d.certify(&path)
}

fn json_of(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn with(d: &Daemon, response: &serde_json::Value) -> PathBuf {
    let path = d.scratch().join(format!(
        "tampered-{}.json",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::write(&path, serde_json::to_vec(response).unwrap()).unwrap();
    path
}

/// A CSR for a key the daemon never generated (base64 DER) and its kid.
fn foreign_csr() -> (String, String) {
    use base64::Engine;
    let group = openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1).unwrap();
    let key =
        openssl::pkey::PKey::from_ec_key(openssl::ec::EcKey::generate(&group).unwrap()).unwrap();
    let mut req = openssl::x509::X509ReqBuilder::new().unwrap();
    req.set_pubkey(&key).unwrap();
    req.sign(&key, openssl::hash::MessageDigest::sha256())
        .unwrap();
    let der = req.build().to_der().unwrap();
    let kid = pkcs11_shim::PublicKey::from_spki_der(&key.public_key_to_der().unwrap())
        .unwrap()
        .kid();
    (base64::engine::general_purpose::STANDARD.encode(der), kid)
}

#[test]
fn a_tampered_ceremony_response_is_refused_and_audited() {
    let d = offline();
    d.wait_for_uncertified(1);
    let request = d.ceremony_request();
    let genuine = json_of(&d.certify(&request));
    let refused = |response: &serde_json::Value, rule: &str| {
        let err = d.import_ceremony(&with(&d, response)).unwrap_err();
        assert!(
            err.contains("ceremony_refused") && err.contains(rule),
            "{rule}: {err}"
        );
    };
    // A certificate the IACA issued for a key the daemon did not generate,
    // under the label of one it did.
    let (csr, kid) = foreign_csr();
    let foreign = json_of(&ceremony_over(&d, &request, |r| {
        r["keys"][0]["csr"] = csr.into();
        r["keys"][0]["kid"] = kid.into();
    }));
    let mut tampered = genuine.clone();
    tampered["certificates"][0] = foreign["certificates"][0].clone();
    refused(&tampered, "ceremony.foreign_key");
    // The daemon's key, but not the profile it asked for (a 10-day window).
    let short = json_of(&ceremony_over(&d, &request, |r| {
        let from = r["keys"][0]["not_before"].as_i64().unwrap();
        r["keys"][0]["not_after"] = (from + 10 * 86_400).into();
    }));
    let mut tampered = genuine.clone();
    tampered["certificates"][0] = short["certificates"][0].clone();
    refused(&tampered, "ceremony.profile");
    // A status-list signer's certificate (no DS purpose) for a key the
    // daemon asked a DS certificate for: the purpose is the request's.
    let other_purpose = json_of(&ceremony_over(&d, &request, |r| {
        r["keys"][0]["purpose"] = "status-list".into();
    }));
    let mut tampered = genuine.clone();
    tampered["certificates"][0] = other_purpose["certificates"][0].clone();
    refused(&tampered, "ceremony.profile");
    // One officer's signature gone: under M.
    let mut tampered = genuine.clone();
    let first = tampered["signatures"]
        .as_object()
        .unwrap()
        .keys()
        .next()
        .unwrap()
        .clone();
    let _ = tampered["signatures"]
        .as_object_mut()
        .unwrap()
        .remove(&first);
    refused(&tampered, "ceremony.officers");
    // A certificate dropped.
    let mut tampered = genuine.clone();
    let _ = tampered["certificates"].as_array_mut().unwrap().pop();
    refused(&tampered, "ceremony.missing_certificate");
    // The genuine one is taken, once; replayed, it is refused.
    let _ = d.import_ceremony(&with(&d, &genuine)).unwrap();
    refused(&genuine, "ceremony.replayed");
    // Each refusal is in the audit log, with the rule that refused it.
    let entries = d.audit_entries().concat();
    for rule in [
        "ceremony.foreign_key",
        "ceremony.profile",
        "ceremony.officers",
        "ceremony.missing_certificate",
        "ceremony.replayed",
    ] {
        assert!(entries.contains(rule), "{rule} not audited");
    }
    assert!(entries.contains("ceremony.import"));
}

#[test]
fn a_drained_spare_pool_warns_and_a_ceremony_refills_it() {
    let d = offline();
    // After the first ceremony one certified spare waits (the emergency
    // one was the first signer, another took its place).
    let deadline = Instant::now() + Duration::from_secs(20);
    while d.spare_keys("certified") < 1 || d.spare_keys("emergency") < 1 {
        assert!(Instant::now() < deadline, "{}", d.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!readiness(&d, "spare_pool").starts_with("WARNING"));
    // A rotation takes it: no certified spare is left for the schedule.
    let approved = d.dual_control(
        "kim",
        "lee",
        "/v1/keys/rotate",
        &serde_json::json!({"chain": "ds"}),
    );
    assert!(
        approved["result"].as_str().unwrap().contains("generated"),
        "{approved}"
    );
    assert_eq!(d.spare_keys("certified"), 0);
    let detail = readiness(&d, "spare_pool");
    assert!(
        detail.starts_with("WARNING") && detail.contains("ceremony"),
        "{detail}"
    );
    // The daemon has generated replacements; a ceremony certifies them.
    d.wait_for_uncertified(2);
    let _ = d
        .import_ceremony(&d.certify(&d.ceremony_request()))
        .unwrap();
    assert!(d.spare_keys("certified") >= 2, "{}", d.log());
    assert!(!readiness(&d, "spare_pool").starts_with("WARNING"));
}

#[test]
fn an_emergency_revocation_switches_to_the_published_spare_without_a_failed_request() {
    let d = offline();
    let old = active_ds(&d);
    let jwks = d.public_client().get("/.well-known/jwks.json").json();
    let published: Vec<String> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..3u32)
        .map(|t| {
            let target = d.api_target("counter", false);
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut client = softhsm_tests::https::Client::new(target);
                let mut kids = Vec::new();
                for n in 0u32.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let (jwk, _) = daemon::phone();
                    let reply = client.post_json(
                        "/v1/credentials",
                        &daemon::request("mdoc", &daemon::number(100 + t * 10_000 + n), &jwk),
                        &[],
                    );
                    assert_eq!(
                        reply.status,
                        201,
                        "{}",
                        String::from_utf8_lossy(&reply.body)
                    );
                    kids.push(reply.json()["kid"].as_str().unwrap().to_owned());
                }
                kids
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(800));
    let label = old["label"].as_str().unwrap();
    let _ = d.dual_control(
        "kim",
        "lee",
        &format!("/v1/keys/{label}/revoke"),
        &serde_json::json!({"reason": "key compromise"}),
    );
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    let kids: Vec<String> = workers
        .into_iter()
        .flat_map(|w| w.join().expect("no request failed"))
        .collect();
    let new = active_ds(&d);
    let new_kid = new["kid"].as_str().unwrap();
    assert_ne!(new_kid, old["kid"].as_str().unwrap());
    assert!(
        published.iter().any(|k| k == new_kid),
        "the key that took over was published before the revocation"
    );
    assert!(
        kids.iter().any(|k| k == new_kid),
        "the spare signed under load"
    );
    // The CRL waits for a ceremony: readiness says so until one is held.
    let detail = readiness(&d, "crl");
    assert!(
        detail.contains("WARNING") && detail.contains(label),
        "{detail}"
    );
    let request = d.ceremony_request();
    let asked = json_of(&request);
    assert_eq!(asked["revoke"].as_array().unwrap().len(), 1, "{asked}");
    let _ = d.import_ceremony(&d.certify(&request)).unwrap();
    let crl = d.public_client().get("/iaca.crl").body;
    let (ok, text) = openssl(&["crl", "-inform", "DER", "-noout", "-text"], &crl);
    assert!(ok, "{text}");
    let serial = asked["revoke"][0].as_str().unwrap();
    assert!(
        text.to_uppercase().contains(&serial.to_uppercase()),
        "the CRL lists {serial}: {text}"
    );
    assert!(!readiness(&d, "crl").contains("WARNING"));
}
