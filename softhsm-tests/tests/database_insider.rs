//! A database insider against the token: rows forged by direct SQL on a
//! running daemon's registry (SQLite and PostgreSQL) must not make it act on
//! the HSM. A row is not an order: keys marked destroyed stay in the token
//! (the pseudonym key, the IACA, the audit key, the active DS key), an
//! approved proposal nobody approved is closed and not carried out, a row
//! naming the IACA as a status-list key never signs and is never activated,
//! deleted rows get no replacement key while the token holds the key, and a
//! revocation row nobody ordered neither reaches the CRL nor changes what
//! the key signed. A row forged while the token is away is checked once it
//! is back.
//! Each is audited and counted, and the token's objects are the same before
//! and after, as `pkcs11-tool` lists them.
#![allow(clippy::unwrap_used)]
#![allow(clippy::indexing_slicing, clippy::panic, clippy::expect_used)] // test code: a failed expect, panic or index is a failed test

use std::time::{Duration, Instant};

mod insider;

use insider::{metric, Insider};
use softhsm_tests::daemon::{Daemon, Options, PgSchema, Store};
use time::OffsetDateTime;

fn to_standard_base64(url: &str) -> String {
    let mut b64 = url.replace('-', "+").replace('_', "/");
    while !b64.len().is_multiple_of(4) {
        b64.push('=');
    }
    b64
}

/// A proposal row as the registry stores it, approved with signatures no
/// officer made, with no result yet: what `resume` used to carry out.
fn forged_proposal(id: &str, operation: &str) -> String {
    let now = OffsetDateTime::now_utc();
    let at = |t: OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    serde_json::json!({
        "id": id,
        "operation": serde_json::from_str::<serde_json::Value>(operation).unwrap(),
        "proposer": "spiffe://mois.go.kr/officer/kim",
        "created_at": at(now - time::Duration::hours(1)),
        "expires_at": at(now + time::Duration::hours(23)),
        "policy_hash": "",
        "signatures": {
            "spiffe://mois.go.kr/officer/kim": "AAAA",
            "spiffe://mois.go.kr/officer/lee": "AAAA",
        },
        "required": 2,
        "state": "approved",
        "approved_at": at(now - time::Duration::minutes(20)),
    })
    .to_string()
}

fn insider_cannot_act_on_the_token(store: Store, mut insider: impl FnMut(&Daemon) -> Insider) {
    let d = Daemon::start(Options {
        store,
        server: "[server.keys]\nlifecycle_interval_ms = 200\n".into(),
        ..Options::default()
    });
    let mut sql = insider(&d);
    let (jwk, _) = softhsm_tests::daemon::phone();
    let issued = d.client("counter").post_json(
        "/v1/credentials",
        &softhsm_tests::daemon::request("mdoc", &softhsm_tests::daemon::number(1), &jwk),
        &[],
    );
    assert_eq!(issued.status, 201);
    let uri = issued.json()["status"]["uri"].as_str().unwrap().to_owned();
    // The mdoc names the CBOR form; the JWT form is at the same URI
    // without `.cwt`.
    let status_path = uri[uri.find("/status").unwrap()..].trim_end_matches(".cwt");
    let before = d.token_objects();
    for label in ["iaca", "pseudonym", "audit-1", "ds-1", "status-list-1"] {
        assert!(before.contains(&format!("label:      {label}")), "{before}");
    }
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let status_kid = sql.kid("status-list-1");
    // The active DS key and the audit key, marked destroyed; the pseudonym
    // key and the IACA given rows of their own, destroyed.
    sql.run("UPDATE {s}.signing_keys SET state = 'destroyed' WHERE label IN ('ds-1', 'audit-1')");
    for label in ["pseudonym", "iaca"] {
        sql.run(&format!(
            "INSERT INTO {{s}}.signing_keys (label, chain, kid, state, created_at, activate_at, certificate, public_key, cert_not_after, signatures) \
             SELECT '{label}', chain, kid, 'destroyed', created_at, activate_at, certificate, public_key, cert_not_after, 0 \
             FROM {{s}}.signing_keys WHERE label = 'ds-1'"
        ));
    }
    // An approved proposal to destroy the status-list key that no officer
    // approved: only the row says so.
    let body = forged_proposal(
        "forged-approved",
        r#"{"kind": "destroy_key", "label": "status-list-1"}"#,
    )
    .replace('\'', "''");
    sql.run(&format!(
        "INSERT INTO {{s}}.proposals (id, created_at, body, version) VALUES ('forged-approved', {now}, '{body}', 1)"
    ));

    // The daemon's rounds (200 ms) and its token check (every 10 s) run.
    let deadline = Instant::now() + Duration::from_secs(40);
    // Each finding may come in a round of its own: wait for all of them.
    let findings = [
        "keys.reconcile",
        "officers.resume",
        "proposal forged-approved",
        "officers.verified_order",
        "ds-1",
        "audit-1",
        "pseudonym (purpose_mismatch)",
    ];
    loop {
        let audit = sql.audit();
        if findings.iter().all(|f| audit.contains(f)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no audit of the forged rows:\n{audit}\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    std::thread::sleep(Duration::from_secs(1));

    assert_eq!(before, d.token_objects(), "the token's objects changed");
    let audit = sql.audit();
    assert!(audit.contains("proposal forged-approved"), "{audit}");
    assert!(audit.contains("officers.verified_order"), "{audit}");
    for found in ["ds-1", "audit-1", "pseudonym (purpose_mismatch)"] {
        assert!(audit.contains(found), "{found} not in the audit:\n{audit}");
    }
    assert_eq!(metric(&d, "dojang_keys_retained_in_token "), 2.0);
    assert_eq!(
        metric(
            &d,
            "dojang_key_orders_refused_total{order=\"destroy_key\",reason=\"unverified_approval\"}"
        ),
        1.0
    );
    assert!(
        metric(
            &d,
            "dojang_key_orders_refused_total{order=\"reconcile\",reason=\"purpose_mismatch\"}"
        ) >= 1.0
    );

    // The insider puts the DS and audit rows back (the lifecycle acts on
    // one chain after another and stops at the first refusal), then turns
    // the IACA's row into a status-list key due to take over now:
    // a row that would make the root sign status lists and retire (and so
    // destroy) the real status-list key.
    sql.run("UPDATE {s}.signing_keys SET state = 'active' WHERE label IN ('ds-1', 'audit-1')");
    sql.run(&format!(
        "UPDATE {{s}}.signing_keys SET chain = 'status-list', state = 'pending', activate_at = {now}, \
         public_key = (SELECT public_key FROM {{s}}.signing_keys WHERE label = 'status-list-1') WHERE label = 'iaca'"
    ));
    let activate =
        "dojang_key_orders_refused_total{order=\"activate\",reason=\"purpose_mismatch\"}";
    let sign = "dojang_key_orders_refused_total{order=\"sign\",reason=\"purpose_mismatch\"}";
    // The lifecycle rests 30 s after the refusals above.
    let deadline = Instant::now() + Duration::from_secs(50);
    while metric(&d, activate) < 1.0 || metric(&d, sign) < 1.0 {
        assert!(
            Instant::now() < deadline,
            "the forged status-list row was not refused:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(before, d.token_objects(), "the token's objects changed");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sql.audit().contains("keys.activate") {
        assert!(
            Instant::now() < deadline,
            "the refused activation is not audited:\n{}",
            sql.audit()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    // The status list is still signed, by the real key.
    let list = d.public_client().get(status_path);
    assert_eq!(list.status, 200, "{}", d.log());
    let token = String::from_utf8(list.body).unwrap();
    let header = token.split('.').next().unwrap();
    let header: serde_json::Value = serde_json::from_slice(
        &openssl::base64::decode_block(&to_standard_base64(header)).unwrap(),
    )
    .unwrap();
    assert_eq!(header["kid"], status_kid);

    // A revocation nobody ordered, then rows deleted: the registry says no
    // key signs for the DS chain, but the token still holds its key. The
    // key stops signing, yet its private half stays and no replacement is
    // made on that word.
    sql.run("DELETE FROM {s}.signing_keys WHERE label = 'iaca'");
    let gap =
        "dojang_key_orders_refused_total{order=\"generate\",reason=\"token_holds_chain_key\"}";
    for lie in [
        format!(
            "UPDATE {{s}}.signing_keys SET revoked_at = {now}, revoked_reason = 'forged' WHERE label = 'ds-1'"
        ),
        "DELETE FROM {s}.signing_keys WHERE chain = 'ds'".to_owned(),
    ] {
        let refused_before = metric(&d, gap);
        sql.run(&lie);
        // The lifecycle rests 30 s after a refusal.
        let deadline = Instant::now() + Duration::from_secs(50);
        while metric(&d, gap) <= refused_before {
            assert!(Instant::now() < deadline, "no refusal after {lie}:\n{}", d.log());
            std::thread::sleep(Duration::from_millis(300));
        }
        assert_eq!(before, d.token_objects(), "the token's objects changed after {lie}");
    }
    // The forged revocation was never the officers': the IACA did not list
    // ds-1 and what it signed kept its status.
    let unordered =
        "dojang_key_orders_refused_total{order=\"revoke\",reason=\"unverified_revocation\"}";
    assert!(metric(&d, unordered) >= 1.0, "{}", d.log());
    assert!(sql
        .audit()
        .contains("revocation row without a verified order"));
    let crl = d.public_client().get("/iaca.crl");
    if crl.status == 200 {
        let crl = openssl::x509::X509Crl::from_der(&crl.body).unwrap();
        assert!(
            softhsm_tests::crl_serials(&crl).is_empty(),
            "a forged revocation reached the CRL"
        );
    }
    let credential = issued.json()["id"].as_str().unwrap().to_owned();
    let meta = d
        .client("counter")
        .get(&format!("/v1/credentials/{credential}"));
    assert_eq!(meta.status, 200, "{}", meta.json());
    let state = meta.json()["state"].clone();
    assert!(state != "suspended" && state != "revoked", "{state}");
}

#[test]
fn forged_rows_do_not_act_on_the_token_sqlite() {
    insider_cannot_act_on_the_token(Store::Sqlite, Insider::sqlite);
}

#[test]
fn forged_rows_do_not_act_on_the_token_postgres() {
    let Some(schema) = PgSchema::create() else {
        return;
    };
    let name = schema.name.clone();
    insider_cannot_act_on_the_token(Store::Postgres(schema.url.clone()), move |_| {
        Insider::postgres(&name)
    });
    drop(schema);
}

/// A row forged while the token is away is let through unchecked (the
/// token cannot say whose key it is); once the token answers it is checked
/// and refused, though the registry does not change again. Here the
/// insider gives the status-list key's row the audit key's public key, so
/// that verifiers would be told to trust another key for status lists.
#[test]
fn a_row_forged_while_the_token_is_away_is_refused_once_it_is_back() {
    let mut d = Daemon::start(Options {
        via_p11kit: true,
        ..Options::default()
    });
    let mut sql = Insider::sqlite(&d);
    let refused = "dojang_key_orders_refused_total{order=\"sign\",reason=\"public_key_mismatch\"}";
    d.p11kit().kill();
    sql.run(
        "UPDATE {s}.signing_keys SET public_key = \
         (SELECT public_key FROM {s}.signing_keys WHERE label = 'audit-1') WHERE label = 'status-list-1'",
    );
    // The reload builds the key view while the token is away.
    d.signal("HUP");
    d.wait_for_log("reloaded TLS files, CRLs, policy and PKI", 1);
    assert_eq!(metric(&d, refused), 0.0, "checked with no token?");

    d.p11kit().restart();
    d.wait_until(
        Duration::from_secs(20),
        "the forged row was not checked once the token was back",
        || metric(&d, refused) >= 1.0,
    );
    let status_jwks = d.public_client().get("/status/jwks.json");
    let audit_kid = sql.kid("audit-1");
    assert!(
        !String::from_utf8_lossy(&status_jwks.body).contains(&audit_kid),
        "the forged key is still published for status lists"
    );
}
