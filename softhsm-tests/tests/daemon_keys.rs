//! Officers and the key lifecycle through a running daemon: the two-person
//! rule (signatures from officers' tokens, roles, expiry, M of N,
//! rejection), each class of bad input, `dojangctl`'s officer commands,
//! emergency revocation, and a usage limit reached under issuance.
#![allow(clippy::unwrap_used)]
#![allow(clippy::indexing_slicing, clippy::panic, clippy::expect_used)] // test code: a failed expect, panic or index is a failed test

use std::time::{Duration, Instant};

use softhsm_tests::daemon::{self, Daemon, Options};
use softhsm_tests::https::Reply;

fn problem(reply: &Reply, status: u16, code: &str) -> serde_json::Value {
    let body = reply.json();
    assert_eq!(reply.status, status, "{body}");
    assert_eq!(body["code"], code, "{body}");
    body
}

fn post(d: &Daemon, who: &str, path: &str, body: serde_json::Value) -> Reply {
    d.client(who).post_json(path, &body, &[])
}

fn propose_rotation(d: &Daemon, who: &str) -> String {
    let reply = post(
        d,
        who,
        "/v1/keys/rotate",
        serde_json::json!({"chain": "ds"}),
    );
    assert_eq!(reply.status, 202, "{}", reply.json());
    reply.json()["id"].as_str().unwrap().to_owned()
}

fn audit_text(d: &Daemon) -> String {
    let db = rusqlite::Connection::open(d.scratch().join("registry.db")).unwrap();
    let mut stmt = db
        .prepare("SELECT entry FROM audit_log ORDER BY seq")
        .unwrap();
    let rows = stmt
        .query_map([], |r| r.get::<_, Vec<u8>>(0))
        .unwrap()
        .map(|e| String::from_utf8_lossy(&e.unwrap()).into_owned())
        .collect::<Vec<_>>();
    rows.join("\n")
}

/// An approval body with `digest` and a signature that is not one.
fn forged_approval(digest: &str) -> serde_json::Value {
    let zeros =
        base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, [1u8; 64]);
    serde_json::json!({"digest": digest, "signature": zeros})
}

/// The digest of proposal `id` as the daemon lists it.
fn digest_of(d: &Daemon, id: &str) -> String {
    let listed = d.client("kim").get("/v1/approvals").json();
    listed["proposals"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == id)
        .unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn issue(d: &Daemon, n: u32) -> Reply {
    let (jwk, _) = daemon::phone();
    post(
        d,
        "counter",
        "/v1/credentials",
        daemon::request("mdoc", &daemon::number(n), &jwk),
    )
}

#[test]
fn key_operations_need_a_second_officer() {
    let d = Daemon::start(Options::default());
    // Issuers and auditors cannot propose; auditors may look.
    let _ = problem(
        &post(
            &d,
            "counter",
            "/v1/keys/rotate",
            serde_json::json!({"chain": "ds"}),
        ),
        403,
        "forbidden",
    );
    let _ = problem(
        &post(
            &d,
            "auditor",
            "/v1/keys/rotate",
            serde_json::json!({"chain": "ds"}),
        ),
        403,
        "forbidden",
    );
    assert_eq!(d.client("auditor").get("/v1/keys").status, 200);
    let _ = problem(&d.client("counter").get("/v1/keys"), 403, "forbidden");
    let _ = problem(&d.client("counter").get("/v1/approvals"), 403, "forbidden");

    let id = propose_rotation(&d, "kim");
    let approve = format!("/v1/approvals/{id}/approve");
    let digest = digest_of(&d, &id);
    // The proposer signs first: one signature of two, nothing done.
    assert_eq!(d.approve("kim", &id).unwrap()["status"], "open");
    let twice = d.approve("kim", &id).unwrap_err();
    assert!(
        twice.contains("already_approved") && twice.contains("officers.distinct"),
        "{twice}"
    );
    // An approval names the digest of what was read: another is refused.
    let blind = problem(
        &post(&d, "lee", &approve, forged_approval(&"0".repeat(64))),
        409,
        "digest_mismatch",
    );
    assert_eq!(blind["rule"], "officers.informed_approval");
    // A signature that is not lee's token's does not count, and says so.
    let forged = problem(
        &post(&d, "lee", &approve, forged_approval(&digest)),
        403,
        "unverified_order",
    );
    assert_eq!(forged["rule"], "officers.verified_order");
    let _ = problem(
        &post(&d, "lee", &approve, serde_json::json!({})),
        400,
        "malformed_request",
    );
    let _ = problem(
        &post(&d, "counter", &approve, forged_approval(&digest)),
        403,
        "forbidden",
    );
    // Nothing happened yet.
    assert_eq!(d.keys().len(), 1);
    let listed = d.client("lee").get("/v1/approvals").json();
    assert_eq!(listed["proposals"][0]["status"], "open");
    assert_eq!(
        listed["proposals"][0]["approvals"],
        serde_json::json!(["spiffe://mois.go.kr/officer/kim"])
    );

    let approved = d.approve("lee", &id).unwrap();
    assert_eq!(approved["status"], "approved");
    assert!(
        approved["result"].as_str().unwrap().contains("generated"),
        "{approved}"
    );
    let keys = d.keys();
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[1]["state"], "pending");
    // Decided proposals take no more votes.
    let _ = problem(
        &post(&d, "park", &approve, forged_approval(&digest)),
        409,
        "proposal_decided",
    );
    // One pending key at a time.
    let _ = problem(
        &post(
            &d,
            "park",
            "/v1/keys/rotate",
            serde_json::json!({"chain": "ds"}),
        ),
        409,
        "key_state",
    );

    // A rejection closes a proposal.
    let retire = post(&d, "kim", "/v1/keys/ds-1/retire", serde_json::json!({}));
    assert_eq!(retire.status, 202, "{}", retire.json());
    let rid = retire.json()["id"].as_str().unwrap().to_owned();
    let rejected = post(
        &d,
        "park",
        &format!("/v1/approvals/{rid}/reject"),
        serde_json::json!({}),
    );
    assert_eq!(rejected.json()["status"], "rejected");
    let _ = problem(
        &post(
            &d,
            "lee",
            &format!("/v1/approvals/{rid}/approve"),
            forged_approval(&digest_of(&d, &rid)),
        ),
        409,
        "proposal_decided",
    );
    assert_eq!(
        d.keys()[0]["state"],
        "active",
        "the rejected retirement did nothing"
    );

    // Each class of bad input.
    let long_reason = "x".repeat(201);
    for (path, body, status, code) in [
        (
            "/v1/approvals/p-nope/approve",
            serde_json::json!({}),
            404,
            "not_found",
        ),
        (
            "/v1/keys/nope/revoke",
            serde_json::json!({"reason": "lost"}),
            404,
            "not_found",
        ),
        (
            "/v1/keys/rotate",
            serde_json::json!({"chain": "nope"}),
            400,
            "unknown_chain",
        ),
        (
            "/v1/keys/ds-1/revoke",
            serde_json::json!({"reason": " "}),
            400,
            "invalid_reason",
        ),
        (
            "/v1/keys/ds-1/revoke",
            serde_json::json!({"reason": long_reason}),
            400,
            "invalid_reason",
        ),
        (
            "/v1/keys/ds-1/revoke",
            serde_json::json!({"why": "lost"}),
            400,
            "unknown_field",
        ),
        (
            "/v1/keys/ds-1/destroy",
            serde_json::json!({}),
            409,
            "key_state",
        ),
        (
            "/v1/keys/ds-1/activate",
            serde_json::json!({}),
            409,
            "key_state",
        ),
        (
            "/v1/policy/change",
            serde_json::json!({"sha256": "abc", "text": ""}),
            400,
            "invalid_sha256",
        ),
        (
            "/v1/policy/change",
            serde_json::json!({"sha256": "ab".repeat(32), "text": "name = 1"}),
            400,
            "invalid_policy",
        ),
    ] {
        let _ = problem(&post(&d, "kim", path, body), status, code);
    }
    let not_json = d.client("kim").send(
        "POST",
        "/v1/keys/rotate",
        &[("content-type", "text/plain")],
        b"ds".to_vec(),
    );
    let _ = problem(&not_json, 415, "unsupported_media_type");
    let _ = problem(
        &d.client("kim").get("/v1/keys/rotate"),
        405,
        "method_not_allowed",
    );

    // Every step is in the audit log, refusals with their rule.
    let audit = audit_text(&d);
    for step in [
        "officers.propose",
        "officers.approve",
        "officers.execute",
        "officers.reject",
        "keys.generate",
        "officers.informed_approval",
        "officers.verified_order",
    ] {
        assert!(audit.contains(step), "{step} not audited");
    }
}

#[test]
fn proposals_expire_and_m_of_n_counts_distinct_officers() {
    let d = Daemon::start(Options {
        policy: |p| {
            p.replace("approvals_required = 2", "approvals_required = 3")
                .replace("proposal_lifetime = \"24h\"", "proposal_lifetime = \"5s\"")
        },
        ..Options::default()
    });
    let id = propose_rotation(&d, "kim");
    assert_eq!(d.approve("kim", &id).unwrap()["status"], "open", "1 of 3");
    assert_eq!(d.approve("lee", &id).unwrap()["status"], "open", "2 of 3");
    let again = d.approve("lee", &id).unwrap_err();
    assert!(
        again.contains("already_approved") && again.contains("officers.distinct"),
        "{again}"
    );
    let approve = format!("/v1/approvals/{id}/approve");
    let digest = digest_of(&d, &id);
    std::thread::sleep(Duration::from_millis(5200));
    let expired = problem(
        &post(&d, "park", &approve, forged_approval(&digest)),
        409,
        "proposal_expired",
    );
    assert_eq!(expired["rule"], "officers.proposal_lifetime");
    assert_eq!(
        d.client("kim").get("/v1/approvals").json()["proposals"][0]["status"],
        "expired"
    );
    assert_eq!(d.keys().len(), 1, "an expired proposal does nothing");

    let id = propose_rotation(&d, "park");
    for who in ["park", "kim"] {
        assert_eq!(d.approve(who, &id).unwrap()["status"], "open");
    }
    let third = d.approve("lee", &id).unwrap();
    assert_eq!(third["status"], "approved", "{third}");
    assert_eq!(third["approvals"].as_array().unwrap().len(), 3);
    assert_eq!(d.keys().len(), 2);
}

#[test]
fn dojangctl_speaks_for_officers() {
    let d = Daemon::start(Options::default());
    let list = d.officer_ctl("kim", &["keys", "list"]).unwrap();
    assert!(list.contains("ds-1") && list.contains("active"), "{list}");
    let opened = d.officer_ctl("kim", &["keys", "rotate", "ds"]).unwrap();
    assert!(
        opened.contains("rotate ds") && opened.contains("1 of 2"),
        "{opened}"
    );
    let id = d.open_proposal_id("lee");
    // kim signed when proposing: a second signature is refused.
    let own = d.approve("kim", &id).unwrap_err();
    assert!(
        own.contains("already_approved") && own.contains("officers.distinct"),
        "{own}"
    );
    // Nobody approves what they did not confirm: off a terminal, without
    // the digest, or with another digest, nothing is signed.
    let unconfirmed = d.officer_ctl("lee", &["approve", &id]).unwrap_err();
    assert!(unconfirmed.contains("--expect"), "{unconfirmed}");
    let other = d
        .officer_ctl("lee", &["approve", &id, "--expect", &"0".repeat(64)])
        .unwrap_err();
    assert!(other.contains("nothing signed"), "{other}");
    // What lee is shown is every signed field.
    let digest = digest_of(&d, &id);
    let done = d
        .officer_ctl("lee", &["approve", &id, "--expect", &digest])
        .unwrap();
    for field in [
        "operation:  rotate ds",
        "proposer:   spiffe://mois.go.kr/officer/kim",
        "policy:",
        "expires:",
        "generated",
        &digest,
    ] {
        assert!(done.contains(field), "{field} not shown: {done}");
    }
    let keys: serde_json::Value =
        serde_json::from_str(&d.officer_ctl("park", &["--json", "keys", "list"]).unwrap()).unwrap();
    let ds: Vec<&serde_json::Value> = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["chain"] == "ds")
        .collect();
    assert_eq!(ds[1]["state"], "pending");
    // A key by its kid; the proposal is rejected.
    let kid = ds[0]["kid"].as_str().unwrap();
    let revoke = d
        .officer_ctl(
            "park",
            &["--json", "keys", "revoke", kid, "--reason", "drill"],
        )
        .unwrap();
    let revoke: serde_json::Value = serde_json::from_str(&revoke).unwrap();
    assert_eq!(revoke["operation"]["label"], "ds-1");
    let rejected = d
        .officer_ctl("kim", &["reject", revoke["id"].as_str().unwrap()])
        .unwrap();
    assert!(rejected.contains("rejected"), "{rejected}");
    // Not an officer: the daemon says why.
    let err = d.officer_ctl("counter", &["keys", "rotate"]).unwrap_err();
    assert!(
        err.contains("403 forbidden") && err.contains("client.role"),
        "{err}"
    );
}

#[test]
fn emergency_revocation_stops_signing_lists_the_certificate_and_marks_credentials() {
    // Rounds far apart: the test sees the daemon between revocation and a
    // successor (which the next round would generate by itself).
    let d = Daemon::start(Options {
        server: "[server.keys]\nlifecycle_interval_ms = 600000\n".into(),
        ..Options::default()
    });
    let mut signed = Vec::new();
    for n in 0..2 {
        let reply = issue(&d, 700 + n);
        assert_eq!(reply.status, 201, "{}", reply.json());
        signed.push(reply.json());
    }
    let approved = d.dual_control(
        "kim",
        "lee",
        "/v1/keys/ds-1/revoke",
        &serde_json::json!({"reason": "token backup lost"}),
    );
    assert!(
        approved["result"]
            .as_str()
            .unwrap()
            .contains("2 credentials"),
        "{approved}"
    );
    // Signing stops at once.
    let _ = problem(&issue(&d, 710), 503, "no_signing_key");
    let ready = d.ops_client().get("/readyz");
    assert_eq!(ready.status, 503);
    assert!(String::from_utf8_lossy(&ready.body).contains("ds-1 revoked"));
    // The certificate is on the IACA's CRL, which verifies.
    let public = &mut d.public_client();
    let crl = openssl::x509::X509Crl::from_der(&public.get("/iaca.crl").body).unwrap();
    let ds1 = openssl::x509::X509::from_pem(&public.get("/ds/ds-1.pem").body).unwrap();
    let iaca = openssl::x509::X509::from_der(&d.iaca_der()).unwrap();
    assert!(crl.verify(&iaca.public_key().unwrap()).unwrap());
    let listed = softhsm_tests::crl_serials(&crl);
    assert_eq!(listed, [ds1.serial_number().to_bn().unwrap().to_vec()]);
    // Verifiers that trust keys no longer find it.
    let jwks = public.get("/.well-known/jwks.json").json();
    assert!(!jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .any(|k| k["kid"] == signed[0]["kid"]));
    // What it signed is suspended (the shipped policy's choice).
    for credential in &signed {
        let meta = d.client("counter").get(&format!(
            "/v1/credentials/{}",
            credential["id"].as_str().unwrap()
        ));
        assert_eq!(meta.json()["state"], "suspended");
        let status = &credential["status"];
        assert_eq!(
            d.status_bit(
                status["uri"].as_str().unwrap(),
                status["idx"].as_u64().unwrap()
            ),
            2
        );
    }
    // A revoked key cannot be brought back.
    let _ = problem(
        &post(
            &d,
            "kim",
            "/v1/keys/ds-1/revoke",
            serde_json::json!({"reason": "again"}),
        ),
        409,
        "key_state",
    );
    // Officers put a successor in place: issuance and readiness come back.
    let label = d.rotate_now();
    // The revoked key retired with its revocation: no rotation retired it.
    assert!(!d
        .audit_entries()
        .iter()
        .any(|e| e.contains("keys.retire") && e.contains(": rotation")));
    let reply = issue(&d, 720);
    assert_eq!(reply.status, 201, "{}", reply.json());
    assert_eq!(reply.json()["key_label"], label.as_str());
    assert_eq!(d.ops_client().get("/readyz").status, 200);
    // An offline CRL (`dojangctl pki crl`) follows the stored one: later
    // (its number is its thisUpdate), listing the same key, and served
    // once the daemon reads its keys again (an officer step here).
    let _ = d.ctl(&["pki", "crl"]);
    let _ = d.rotate_now();
    // This rotation's two halves are entries: the new key's activation and
    // the outgoing key's retirement.
    assert!(
        d.audit_entries()
            .iter()
            .any(|e| e.contains("keys.retire") && e.contains(&format!("key {label}: rotation"))),
        "no keys.retire entry for the rotated-out key {label}"
    );
    let offline = openssl::x509::X509Crl::from_der(&public.get("/iaca.crl").body).unwrap();
    assert!(offline.last_update() > crl.last_update());
    assert!(offline.verify(&iaca.public_key().unwrap()).unwrap());
    assert_eq!(softhsm_tests::crl_serials(&offline), listed);
}

#[test]
fn a_usage_limit_rotates_the_running_daemon() {
    let d = Daemon::start(Options {
        policy: |p| p.replace("max_signatures = 50000000", "max_signatures = 3"),
        server: "[server.keys]\nlifecycle_interval_ms = 200\n".into(),
        ..Options::default()
    });
    for n in 0..3 {
        assert_eq!(issue(&d, 800 + n).json()["key_label"], "ds-1");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let successor = loop {
        let keys = d.keys();
        if let Some(k) = keys
            .iter()
            .find(|k| k["state"] == "active" && k["label"] != "ds-1")
        {
            assert_eq!(keys[0]["state"], "retired");
            assert_eq!(keys[0]["signatures"], 3);
            break k["label"].as_str().unwrap().to_owned();
        }
        assert!(Instant::now() < deadline, "no rotation: {}", d.log());
        std::thread::sleep(Duration::from_millis(100));
    };
    let reply = issue(&d, 810).json();
    assert_eq!(reply["key_label"], successor.as_str());
    let _ = d.verify_mdoc(reply["credential"].as_str().unwrap());
}

#[test]
fn officers_rotate_the_status_list_key() {
    let d = Daemon::start(Options::default());
    let reply = issue(&d, 900);
    assert_eq!(reply.status, 201, "{}", reply.json());
    let status = reply.json()["status"].clone();
    let (uri, idx) = (
        status["uri"].as_str().unwrap(),
        status["idx"].as_u64().unwrap(),
    );
    let old = d.chain_keys("status-list");
    assert_eq!(old.len(), 1);
    let _ = d.dual_control(
        "kim",
        "lee",
        "/v1/keys/rotate",
        &serde_json::json!({"chain": "status-list"}),
    );
    let pending = d.chain_keys("status-list")[1].clone();
    assert_eq!(pending["state"], "pending");
    let _ = d.dual_control(
        "lee",
        "park",
        &format!("/v1/keys/{}/activate", pending["label"].as_str().unwrap()),
        &serde_json::json!({}),
    );
    let keys = d.chain_keys("status-list");
    assert_eq!(keys[0]["state"], "retired");
    assert_eq!(keys[1]["state"], "active");
    // The next token is signed by the new key, found in the status-list
    // JWKS by its kid (status_bit verifies the signature); the old key stays
    // published for tokens verifiers still cache. (The mdoc names the CBOR
    // form; its JWT form is at the same URI without `.cwt`.)
    let token = d.public_client().get(
        uri.replace(&format!("http://{}", d.public), "")
            .trim_end_matches(".cwt"),
    );
    let header: serde_json::Value = serde_json::from_slice(
        &base64::Engine::decode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            String::from_utf8(token.body)
                .unwrap()
                .split('.')
                .next()
                .unwrap(),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(header["kid"], pending["kid"]);
    assert_eq!(d.status_bit(uri, idx), 0);
    let jwks = d.public_client().get("/status/jwks.json").json();
    assert!(jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .any(|k| k["kid"] == old[0]["kid"]));
}

#[test]
fn officers_have_a_running_daemon_generate_the_iaca() {
    let d = Daemon::start(Options {
        pki_init: false,
        ..Options::default()
    });
    // Running, not ready: nothing can sign without a root.
    let ready = d.ops_client().get("/readyz");
    assert_eq!(ready.status, 503);
    assert!(String::from_utf8_lossy(&ready.body).contains("no IACA yet"));
    let _ = problem(&issue(&d, 950), 503, "no_signing_key");
    assert_eq!(d.public_client().get("/iaca.pem").status, 404);
    let _ = problem(
        &post(&d, "counter", "/v1/pki/iaca", serde_json::json!({})),
        403,
        "forbidden",
    );
    // kim proposes with dojangctl, lee approves.
    let opened = d.officer_ctl("kim", &["pki", "propose-iaca"]).unwrap();
    assert!(opened.contains("generate the IACA"), "{opened}");
    let id = d.open_proposal_id("lee");
    let done = d.approve("lee", &id).unwrap();
    assert!(
        done["result"].as_str().unwrap().contains("IACA generated"),
        "{done}"
    );
    // A root, a first DS key, issuance, readiness.
    let iaca_pem = d.public_client().get("/iaca.pem");
    assert_eq!(iaca_pem.status, 200);
    let iaca = openssl::x509::X509::from_pem(&iaca_pem.body).unwrap();
    let _ = dojang::pki::profile::check_iaca(&iaca.to_der().unwrap()).unwrap();
    let reply = issue(&d, 951);
    assert_eq!(reply.status, 201, "{}", reply.json());
    let cbor = base64::Engine::decode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        reply.json()["credential"].as_str().unwrap(),
    )
    .unwrap();
    let _ = dojang::credential::mdoc::verify(
        &cbor,
        &dojang::credential::verify::Trust::Iaca(iaca.to_der().unwrap()),
        time::OffsetDateTime::now_utc(),
        Some(dojang::credential::mdoc::DOC_TYPE),
    )
    .unwrap();
    assert_eq!(d.ops_client().get("/readyz").status, 200);
    // The acting node signs a CRL under the new root at its next round.
    let deadline = Instant::now() + Duration::from_secs(10);
    let crl = loop {
        let reply = d.public_client().get("/iaca.crl");
        if reply.status == 200 {
            assert_eq!(reply.header("content-type"), Some("application/pkix-crl"));
            break openssl::x509::X509Crl::from_der(&reply.body).unwrap();
        }
        assert!(Instant::now() < deadline, "no CRL: {}", d.log());
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(crl.verify(&iaca.public_key().unwrap()).unwrap());
    // Readiness and a metric say how long the served CRL has left.
    std::thread::sleep(Duration::from_millis(1100)); // readiness is cached for a second
    let ready = d.ops_client().get("/readyz").json();
    let check = ready["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "crl")
        .unwrap()
        .clone();
    assert!(
        check["ok"] == true
            && check["detail"]
                .as_str()
                .unwrap()
                .starts_with("nextUpdate in"),
        "{check}"
    );
    let metrics = String::from_utf8(d.ops_client().get("/metrics").body).unwrap();
    let left: i64 = metrics
        .lines()
        .find(|l| l.starts_with("dojang_crl_next_update_seconds "))
        .and_then(|l| l.rsplit(' ').next())
        .unwrap()
        .parse()
        .unwrap();
    assert!(left > 86_400, "{left}");
    // Once.
    let _ = problem(
        &post(&d, "kim", "/v1/pki/iaca", serde_json::json!({})),
        409,
        "iaca_exists",
    );
}

/// The whole two-person rule through `dojangctl`, each officer signing with
/// the approval key in their own token: a rotation, an activation and an
/// emergency revocation, none of which one officer can complete alone.
#[test]
fn two_officers_rotate_and_revoke_through_dojangctl() {
    let d = Daemon::start(Options::default());
    let json = |out: String| -> serde_json::Value { serde_json::from_str(&out).unwrap() };
    let step =
        |who: &str, args: &[&str]| json(d.officer_ctl(who, &[&["--json"], args].concat()).unwrap());
    let approve = |who: &str, id: &str| {
        let digest = digest_of(&d, id);
        step(who, &["approve", id, "--expect", &digest])
    };

    let rotation = step("kim", &["keys", "rotate", "ds"]);
    let id = rotation["id"].as_str().unwrap();
    assert_eq!(rotation["status"], "open");
    // kim alone: a second signature of hers is refused, nothing happens.
    assert!(d
        .approve("kim", id)
        .unwrap_err()
        .contains("already_approved"));
    assert_eq!(d.keys().len(), 1);
    assert_eq!(approve("lee", id)["status"], "approved");
    let new = d.keys()[1]["label"].as_str().unwrap().to_owned();

    let activation = step("park", &["keys", "activate", &new]);
    let id = activation["id"].as_str().unwrap();
    assert_eq!(approve("kim", id)["status"], "approved");
    assert_eq!(d.keys()[1]["state"], "active");

    let revocation = step(
        "lee",
        &["keys", "revoke", &new, "--reason", "token backup lost"],
    );
    let id = revocation["id"].as_str().unwrap();
    assert!(d
        .approve("lee", id)
        .unwrap_err()
        .contains("already_approved"));
    assert_eq!(issue(&d, 990).status, 201, "not revoked by one officer");
    let done = approve("park", id);
    assert!(
        done["result"].as_str().unwrap().contains("revoked"),
        "{done}"
    );
    let _ = problem(&issue(&d, 991), 503, "no_signing_key");
    let crl = d.public_client().get("/iaca.crl");
    let crl = openssl::x509::X509Crl::from_der(&crl.body).unwrap();
    // The same CRL in PEM beside it.
    let pem = d.public_client().get("/iaca.crl.pem");
    assert_eq!(
        openssl::x509::X509Crl::from_pem(&pem.body)
            .unwrap()
            .to_der()
            .unwrap(),
        crl.to_der().unwrap()
    );
    let cert = d.public_client().get(&format!("/ds/{new}.pem"));
    let cert = openssl::x509::X509::from_pem(&cert.body).unwrap();
    assert_eq!(
        softhsm_tests::crl_serials(&crl),
        [cert.serial_number().to_bn().unwrap().to_vec()]
    );
}

/// At a terminal (a pseudo-terminal from `script`), an officer approves by
/// typing the digest's first characters and then the token's PIN, which is
/// never echoed and never on the command line; a wrong digest signs
/// nothing.
#[test]
fn an_officer_confirms_and_types_the_pin_on_a_terminal() {
    let d = Daemon::start(Options::default());
    let id = propose_rotation(&d, "kim");
    let _ = d.approve("kim", &id).unwrap();
    let digest = digest_of(&d, &id);
    let tokens = d.officer_tokens();
    let command = format!(
        "{} --officer-token officer-lee --officer-module {} --api https://localhost:{} \
         --officer-cert {tls}/lee.pem --officer-key {tls}/lee.key --ca {tls}/ca.pem approve {id}",
        softhsm_tests::workspace_binary("dojangctl").display(),
        softhsm_tests::softhsm_module().display(),
        d.api.port(),
        tls = d.tls.display(),
    );
    // Types each line once the terminal shows the prompt it answers (input
    // typed earlier would be echoed before the echo is turned off).
    let at_terminal = |answers: &[(&str, String)]| {
        use std::io::{Read, Write};
        let mut child = std::process::Command::new("script")
            .args(["-qec", &command, "/dev/null"])
            .env("SOFTHSM2_CONF", tokens.conf_path())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = stdout.read(&mut buf) {
                let _ = tx.send(buf[..n].to_vec());
            }
        });
        let mut seen = String::new();
        let mut stdin = child.stdin.take().unwrap();
        for (prompt, line) in answers {
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while !seen.contains(prompt) {
                assert!(
                    std::time::Instant::now() < deadline,
                    "no {prompt:?} in {seen}"
                );
                if let Ok(chunk) = rx.recv_timeout(Duration::from_millis(100)) {
                    seen.push_str(&String::from_utf8_lossy(&chunk));
                }
            }
            stdin.write_all(format!("{line}\n").as_bytes()).unwrap();
            stdin.flush().unwrap();
        }
        let status = child.wait().unwrap();
        reader.join().unwrap();
        seen.extend(
            rx.try_iter()
                .map(|c| String::from_utf8_lossy(&c).into_owned()),
        );
        (status.success(), seen)
    };
    let confirm = "type the digest's first 8 characters";
    let pin = "PIN of the officer token";
    let (ok, text) = at_terminal(&[(confirm, "0".repeat(8))]);
    assert!(!ok && text.contains("not confirmed"), "{text}");
    assert_eq!(d.keys().len(), 1);
    let (ok, text) = at_terminal(&[
        (confirm, digest[..8].to_owned()),
        (pin, softhsm_tests::USER_PIN.to_owned()),
    ]);
    assert!(ok, "{text}");
    assert!(
        text.contains("PIN of the officer token") && text.contains("approved"),
        "{text}"
    );
    assert!(
        !text.contains(softhsm_tests::USER_PIN),
        "the PIN was echoed: {text}"
    );
    assert_eq!(d.keys().len(), 2);
}

/// After a DS key's revocation: what it signed is suspended one entry a
/// credential, refreshed (not reinstated) at a new position, its old
/// position revoked; later sweeps leave a revoker's decisions alone.
#[test]
fn what_a_revoked_key_signed_is_refreshed_never_reinstated() {
    // Short rounds: a successor comes by itself, and the sweep runs.
    let d = Daemon::start(Options {
        server: "[server.keys]\nlifecycle_interval_ms = 300\n".into(),
        ..Options::default()
    });
    let mut holders = Vec::new();
    for n in 0..2 {
        let (jwk, _) = daemon::phone();
        let number = daemon::number(730 + n);
        let reply = post(
            &d,
            "counter",
            "/v1/credentials",
            daemon::request("mdoc", &number, &jwk),
        );
        assert_eq!(reply.status, 201, "{}", reply.json());
        holders.push((reply.json(), number, jwk));
    }
    let _ = d.dual_control(
        "kim",
        "lee",
        "/v1/keys/ds-1/revoke",
        &serde_json::json!({"reason": "token backup lost"}),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while issue(&d, 739).status != 201 {
        assert!(Instant::now() < deadline, "no successor: {}", d.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    let ((a, ..), (b, b_number, b_jwk)) = (&holders[0], &holders[1]);
    let id = |c: &serde_json::Value| c["id"].as_str().unwrap().to_owned();
    let bit = |status: &serde_json::Value| {
        d.status_bit(
            status["uri"].as_str().unwrap(),
            status["idx"].as_u64().unwrap(),
        )
    };
    // Each suspension is an entry naming its credential.
    let entries = d.audit_entries();
    for c in [a, b] {
        assert!(
            entries
                .iter()
                .any(|e| e.contains(&id(c)) && e.contains("suspend")),
            "no suspension entry for {}",
            id(c)
        );
    }
    // Never reinstated while its key is revoked…
    let reinstatement_refused = || {
        let reinstate = post(
            &d,
            "counter",
            &format!("/v1/credentials/{}/reinstate", id(a)),
            serde_json::json!({}),
        );
        assert_eq!(
            problem(&reinstate, 409, "registry_conflict")["rule"],
            "reinstate.key_revoked"
        );
        assert_eq!(bit(&a["status"]), 2);
    };
    reinstatement_refused();
    // …not even when an insider clears the registry's mark: the keys'
    // view (officers' orders) still names the key revoked.
    let db = rusqlite::Connection::open(d.scratch().join("registry.db")).unwrap();
    db.busy_timeout(Duration::from_secs(5)).unwrap();
    let lie = |sql: &str, id: &str| {
        assert_eq!(db.execute(sql, [id]).unwrap(), 1, "{sql}");
    };
    lie(
        "UPDATE credentials SET suspended_for_key = 0 WHERE id = ?1",
        &id(a),
    );
    reinstatement_refused();
    // A revoker's suspension stands, whatever mark an insider puts on it:
    // a credential a valid key signed is not refreshed out of it.
    let (c_jwk, _) = daemon::phone();
    let c_number = daemon::number(733);
    let c = post(
        &d,
        "counter",
        "/v1/credentials",
        daemon::request("mdoc", &c_number, &c_jwk),
    );
    assert_eq!(c.status, 201, "{}", c.json());
    let c = c.json();
    let suspended = post(
        &d,
        "counter",
        &format!("/v1/credentials/{}/suspend", id(&c)),
        serde_json::json!({}),
    );
    assert_eq!(suspended.status, 200, "{}", suspended.json());
    lie(
        "UPDATE credentials SET suspended_for_key = 1 WHERE id = ?1",
        &id(&c),
    );
    let body = serde_json::json!({
        "holder": daemon::request("mdoc", &c_number, &c_jwk)["holder"],
        "device_key": c_jwk,
    });
    let refused = post(
        &d,
        "counter",
        &format!("/v1/credentials/{}/refresh", id(&c)),
        body,
    );
    assert_eq!(
        problem(&refused, 409, "invalid_transition")["rule"],
        "credential.state_machine"
    );
    assert_eq!(bit(&c["status"]), 2);
    // …a revoker may revoke it…
    let revoked = post(
        &d,
        "counter",
        &format!("/v1/credentials/{}/revoke", id(a)),
        serde_json::json!({}),
    );
    assert_eq!(revoked.status, 200, "{}", revoked.json());
    // …and the holder has it refreshed: a valid key signs it at a new
    // position; the position the revoked key's copy names is revoked.
    let body = serde_json::json!({
        "holder": daemon::request("mdoc", b_number, b_jwk)["holder"],
        "device_key": b_jwk,
    });
    let refreshed = post(
        &d,
        "counter",
        &format!("/v1/credentials/{}/refresh", id(b)),
        body,
    );
    assert_eq!(refreshed.status, 200, "{}", refreshed.json());
    let r = refreshed.json();
    assert_ne!(r["kid"], b["kid"]);
    assert_ne!(r["status"], b["status"]);
    let verified = d.verify_mdoc(r["credential"].as_str().unwrap());
    assert_eq!(
        verified.status.as_ref().unwrap().idx,
        r["status"]["idx"].as_u64().unwrap()
    );
    assert_eq!(bit(&r["status"]), 0);
    assert_eq!(bit(&b["status"]), 1);
    assert!(d
        .audit_entries()
        .iter()
        .any(|e| e.contains(&id(b)) && e.contains("refresh")));
    // A sweep (every 10 s for 10 minutes after the revocation) later: the
    // revoker's and the refresh's decisions stand.
    std::thread::sleep(Duration::from_secs(11));
    let state = |c: &serde_json::Value| {
        d.client("counter")
            .get(&format!("/v1/credentials/{}", id(c)))
            .json()["state"]
            .clone()
    };
    assert_eq!(state(a), "revoked");
    assert_eq!(state(b), "active");
    assert_eq!(bit(&r["status"]), 0);
    assert_eq!(bit(&a["status"]), 1);
}
