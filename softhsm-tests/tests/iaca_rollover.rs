//! IACA rollover (issue 14): officers make a successor root at a ceremony
//! on the offline token, linked both ways with the current one. Both roots
//! are published (PEM bundle, `/iacas.json`), new DS keys are certified
//! under the successor, credentials under either root verify before,
//! during and after the switch (and a verifier trusting only one root
//! reaches the other through the links), each root keeps a CRL of its
//! own, and the old root retires once nothing it certified is in use.
#![allow(clippy::unwrap_used)]
#![allow(clippy::indexing_slicing, clippy::panic, clippy::expect_used)] // test code: a failed expect, panic or index is a failed test

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dojang::credential::verify::Trust;
use softhsm_tests::daemon::{self, Daemon, Options};

fn issue(d: &Daemon, n: u32) -> String {
    let (jwk, _) = daemon::phone();
    let reply = d.client("counter").post_json(
        "/v1/credentials",
        &daemon::request("mdoc", &daemon::number(n), &jwk),
        &[],
    );
    assert_eq!(reply.status, 201, "{}", reply.json());
    reply.json()["credential"].as_str().unwrap().to_owned()
}

fn verifies(credential: &str, root: &[u8]) -> bool {
    let cbor = base64::Engine::decode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        credential,
    )
    .unwrap();
    dojang::credential::mdoc::verify(
        &cbor,
        &Trust::Iaca(root.to_vec()),
        time::OffsetDateTime::now_utc(),
        Some(dojang::credential::mdoc::DOC_TYPE),
    )
    .is_ok()
}

fn pem_to_der(pem: &str) -> Vec<u8> {
    openssl::x509::X509::from_pem(pem.as_bytes())
        .unwrap()
        .to_der()
        .unwrap()
}

fn write(d: &Daemon, name: &str, text: &str) -> PathBuf {
    let path = d.scratch().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn openssl_verify(ca: &Path, untrusted: Option<&Path>, leaf: &Path) -> (bool, String) {
    let mut command = std::process::Command::new("openssl");
    let _ = command.args(["verify", "-x509_strict", "-CAfile"]).arg(ca);
    if let Some(u) = untrusted {
        let _ = command.arg("-untrusted").arg(u);
    }
    let out = command.arg(leaf).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

fn iacas(d: &Daemon) -> Vec<serde_json::Value> {
    d.public_client().get("/iacas.json").json()["iacas"]
        .as_array()
        .unwrap()
        .clone()
}

fn active_label(d: &Daemon) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(k) = d.keys().into_iter().find(|k| k["state"] == "active") {
            return k["label"].as_str().unwrap().to_owned();
        }
        assert!(Instant::now() < deadline, "{}", d.log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_rollover_keeps_credentials_under_both_roots_verifying() {
    let d = Daemon::start(Options {
        offline_iaca: true,
        ..Options::default()
    });
    let old_label = active_label(&d);
    let old_root = d.iaca_der();
    let before = issue(&d, 1);
    assert!(verifies(&before, &old_root));

    // The rollover ceremony: kim and lee sign, the offline token acts.
    let record = d.ceremony_record(&["--rollover", "--common-name", "Dojang Test IACA 2"]);
    let signatures = [
        d.ceremony_sign("kim", &record),
        d.ceremony_sign("lee", &record),
    ];
    let response = d.scratch().join("rollover-response.json");
    let out = d.ceremony_run(&record, &signatures, None, &response);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Links swapped (each then certifies the wrong key): refused.
    let mut tampered: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&response).unwrap()).unwrap();
    let forward = tampered["rollover"]["link"].clone();
    tampered["rollover"]["link"] = tampered["rollover"]["back_link"].clone();
    tampered["rollover"]["back_link"] = forward;
    let tampered_file = write(&d, "tampered-rollover.json", &tampered.to_string());
    let refused = d.import_ceremony(&tampered_file).unwrap_err();
    assert!(refused.contains("ceremony.chain"), "{refused}");
    let imported = d.import_ceremony(&response).unwrap();
    assert!(imported.contains("IACA rollover"), "{imported}");
    // Taken once.
    let replayed = d.import_ceremony(&response).unwrap_err();
    assert!(replayed.contains("ceremony.replayed"), "{replayed}");

    // Both roots published: the PEM bundle and the machine-readable list.
    let bundle = String::from_utf8(d.public_client().get("/iaca.pem").body).unwrap();
    assert_eq!(bundle.matches("BEGIN CERTIFICATE").count(), 2, "{bundle}");
    let listed = iacas(&d);
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert_eq!(listed[0]["status"], "retiring");
    assert_eq!(listed[1]["status"], "current");
    let new_root = pem_to_der(listed[1]["certificate"].as_str().unwrap());
    assert_eq!(
        pem_to_der(listed[0]["certificate"].as_str().unwrap()),
        old_root
    );
    let new_crl = d.public_client().get(listed[1]["crl"].as_str().unwrap());
    assert_eq!(new_crl.status, 200, "the successor's CRL is served");
    assert!(
        verifies(&before, &old_root),
        "during: the old root's credential"
    );

    // New DS keys are certified under the successor (the old root signs
    // its own CRL at the same ceremony), and one takes over.
    d.wait_for_uncertified(3);
    let request = d.ceremony_request();
    let asked: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&request).unwrap()).unwrap();
    assert_eq!(asked["iaca_key_id"], listed[1]["key_id"]);
    assert_eq!(asked["older_roots"][0]["iaca_key_id"], listed[0]["key_id"]);
    let _ = d.import_ceremony(&d.certify(&request)).unwrap();
    let new_label = d.rotate_now();
    assert_ne!(new_label, old_label);
    let after = issue(&d, 2);
    assert!(
        verifies(&after, &new_root),
        "after: the successor's credential"
    );
    assert!(
        !verifies(&after, &old_root),
        "not under the old root directly"
    );
    assert!(
        verifies(&before, &old_root),
        "after: the old root's credential"
    );

    // The DS certificates chain strictly to their roots. The links let a
    // verifier trusting one root authenticate the other's key: Annex B
    // gives an IACA pathLen 0, so a link is checked against its issuer
    // (then the successor is trusted as a root), never used as an
    // intermediate in a DS chain.
    let ds = |label: &str| {
        String::from_utf8(d.public_client().get(&format!("/ds/{label}.pem")).body).unwrap()
    };
    let old_ds = write(&d, "old-ds.pem", &ds(&old_label));
    let new_ds = write(&d, "new-ds.pem", &ds(&new_label));
    let old_pem = write(
        &d,
        "old-root.pem",
        listed[0]["certificate"].as_str().unwrap(),
    );
    let new_pem = write(
        &d,
        "new-root.pem",
        listed[1]["certificate"].as_str().unwrap(),
    );
    let links = listed[1]["links"].as_array().unwrap();
    assert_eq!(links.len(), 2, "old signs new, new signs old");
    let link_of =
        |n: usize| openssl::x509::X509::from_pem(links[n].as_str().unwrap().as_bytes()).unwrap();
    let (old_x509, new_x509) = (
        openssl::x509::X509::from_der(&old_root).unwrap(),
        openssl::x509::X509::from_der(&new_root).unwrap(),
    );
    let key_der = |c: &openssl::x509::X509| c.public_key().unwrap().public_key_to_der().unwrap();
    let (forward, back) = (link_of(0), link_of(1));
    assert!(
        forward.verify(&old_x509.public_key().unwrap()).unwrap(),
        "the old root signed the link"
    );
    assert_eq!(
        key_der(&forward),
        key_der(&new_x509),
        "…to the successor's key"
    );
    assert!(
        back.verify(&new_x509.public_key().unwrap()).unwrap(),
        "the successor signed the back link"
    );
    assert_eq!(key_der(&back), key_der(&old_x509), "…to the old root's key");
    let forward_file = write(&d, "link.pem", links[0].as_str().unwrap());
    let (ok, why) = openssl_verify(&old_pem, None, &forward_file);
    assert!(ok, "the link verifies strictly under the old root: {why}");
    for (ca, leaf) in [(&old_pem, &old_ds), (&new_pem, &new_ds)] {
        let (ok, why) = openssl_verify(ca, None, leaf);
        assert!(ok, "{} -> {}: {why}", leaf.display(), ca.display());
    }
    let (crossed, _) = openssl_verify(&old_pem, None, &new_ds);
    assert!(
        !crossed,
        "a successor's DS certificate does not chain to the old root directly"
    );
    let out = std::process::Command::new(softhsm_tests::annexb_validator())
        .arg(&new_pem)
        .arg(&new_ds)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // The old root retires once nothing it certified is in use: here its
    // last DS key is revoked and destroyed by officers (in the normal
    // course the lifecycle destroys it once what it signed expired).
    let _ = d.dual_control(
        "kim",
        "lee",
        &format!("/v1/keys/{old_label}/revoke"),
        &serde_json::json!({"reason": "retiring the old root"}),
    );
    let _ = d.dual_control(
        "lee",
        "park",
        &format!("/v1/keys/{old_label}/destroy"),
        &serde_json::json!({}),
    );
    let listed = iacas(&d);
    assert_eq!(listed[0]["status"], "retired", "{listed:?}");
    let bundle = String::from_utf8(d.public_client().get("/iaca.pem").body).unwrap();
    assert_eq!(bundle.matches("BEGIN CERTIFICATE").count(), 1);
    assert_eq!(pem_to_der(&bundle), new_root);
    assert!(verifies(&issue(&d, 3), &new_root));
}
