//! A database insider against two-person control: proposals and policies
//! forged by direct SQL on a running daemon's registry (SQLite and
//! PostgreSQL), with signatures the insider can get — copied, made with
//! their own keys, moved to another officer's name — never make an order.
//! A genuine proposal altered after signing, a signature copied from another
//! proposal, a signature by a key the policy does not pin, one officer's
//! signature counted as another's, and a policy with the officers' keys
//! swapped (its adoption signed by the swapped-in keys): each is refused,
//! audited and counted, DS key ds-1 stays active and unrevoked, and the
//! token's objects are byte-identical before and after (`pkcs11-tool`).
#![allow(clippy::unwrap_used)]
#![allow(clippy::indexing_slicing, clippy::panic, clippy::expect_used)] // test code: a failed expect, panic or index is a failed test

use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use dojang::keys::order::{Adoption, CanonicalProposal, FirstPolicy};
mod insider;

use insider::{metric, Insider};
use softhsm_tests::daemon::{Daemon, Options, PgSchema, Store};

const KIM: &str = "spiffe://mois.go.kr/officer/kim";
const LEE: &str = "spiffe://mois.go.kr/officer/lee";
const PARK: &str = "spiffe://mois.go.kr/officer/park";

use softhsm_tests::{es256_signature as sign, p256_key as insider_key};

/// Officer kim opens a revocation of ds-1 over the API (unsigned yet).
fn open_revocation(d: &Daemon, reason: &str) -> String {
    let reply = d.client("kim").post_json(
        "/v1/keys/ds-1/revoke",
        &serde_json::json!({ "reason": reason }),
        &[],
    );
    assert_eq!(reply.status, 202, "{}", reply.json());
    reply.json()["id"].as_str().unwrap().to_owned()
}

/// `who` approves `id` with their token; the refusal must name `code`.
fn refused(d: &Daemon, who: &str, id: &str, code: &str) {
    let err = d.approve(who, id).unwrap_err();
    assert!(err.contains(code), "{who} on {id}: {err}");
}

fn ds1_untouched(d: &Daemon) {
    let ds1 = d.keys().into_iter().find(|k| k["label"] == "ds-1").unwrap();
    assert_eq!(ds1["state"], "active", "{ds1}");
    assert!(ds1["revoked"].is_null(), "{ds1}");
}

fn forged_signatures_make_no_order(store: Store, mut insider: impl FnMut(&Daemon) -> Insider) {
    let d = Daemon::start(Options {
        store,
        server: "[server.keys]\nlifecycle_interval_ms = 200\n".into(),
        ..Options::default()
    });
    let mut sql = insider(&d);
    let before = d.token_objects();
    let bad =
        "dojang_key_orders_refused_total{order=\"emergency_revoke\",reason=\"bad_signature\"}";
    let unpinned =
        "dojang_key_orders_refused_total{order=\"emergency_revoke\",reason=\"unpinned_key\"}";

    // A genuine proposal, signed by kim, then altered: another key.
    let altered = open_revocation(&d, "drill");
    let _ = d.approve("kim", &altered).unwrap();
    let mut p = sql.proposal(&altered);
    p.operation = dojang::keys::approvals::Operation::EmergencyRevoke {
        label: "audit-1".into(),
        reason: "drill".into(),
    };
    if let Some(target) = p.target.as_mut() {
        target.label = "audit-1".into();
    }
    sql.set_proposal(&p);
    refused(&d, "lee", &altered, "unverified_order");

    // kim's genuine signature of a rotation, copied onto a revocation.
    let rotation =
        d.client("kim")
            .post_json("/v1/keys/rotate", &serde_json::json!({"chain": "ds"}), &[]);
    let rotation = rotation.json()["id"].as_str().unwrap().to_owned();
    let _ = d.approve("kim", &rotation).unwrap();
    let kims = sql.proposal(&rotation).signatures[KIM].clone();
    let copied = open_revocation(&d, "copied");
    let mut p = sql.proposal(&copied);
    let _ = p.signatures.insert(KIM.into(), kims.clone());
    sql.set_proposal(&p);
    refused(&d, "lee", &copied, "unverified_order");

    // A good signature over the exact proposal, by a key no policy pins:
    // under a name of the insider's, and under kim's.
    let mallory = insider_key();
    for name in ["spiffe://mois.go.kr/officer/mallory", KIM] {
        let id = open_revocation(&d, "unpinned");
        let mut p = sql.proposal(&id);
        let message = CanonicalProposal::of(&p).bytes();
        let _ = p.signatures.insert(name.into(), sign(&mallory, &message));
        sql.set_proposal(&p);
        let code = if name == KIM {
            "unverified_order"
        } else {
            "officer_key_not_pinned"
        };
        refused(&d, "lee", &id, code);
    }

    // kim's signature of this very proposal, counted again as park's.
    let twice = open_revocation(&d, "twice");
    let _ = d.approve("kim", &twice).unwrap();
    let mut p = sql.proposal(&twice);
    let _ = p.signatures.insert(PARK.into(), p.signatures[KIM].clone());
    sql.set_proposal(&p);
    refused(&d, "lee", &twice, "unverified_order");

    // The officers' keys swapped: a policy pinning the insider's keys for
    // kim and lee, its first-policy adoption signed by those keys, named
    // the adopted one.
    let running = std::fs::read_to_string(&d.policy).unwrap();
    let hash = dojang_policies::Policy::parse("p", &running).unwrap().hash;
    assert_eq!(
        sql.document("policy.sha256").as_deref(),
        Some(hash.as_str())
    );
    let (a1, a2) = (insider_key(), insider_key());
    let mut swapped = running.clone();
    for (name, key) in [("kim", &a1), ("lee", &a2)] {
        let pinned = d
            .officer_ctl(name, &["--json", "officer", "enroll", "--identity", "x"])
            .unwrap();
        let pinned: serde_json::Value = serde_json::from_str(&pinned).unwrap();
        let ours = STANDARD.encode(key.public_key_to_der().unwrap());
        swapped = swapped.replace(pinned["signing_key"].as_str().unwrap(), &ours);
    }
    let forged = dojang_policies::Policy::parse("forged", &swapped).unwrap();
    let statement = FirstPolicy::new(&swapped).bytes();
    let adoption = Adoption::First {
        signatures: [
            (KIM.to_owned(), sign(&a1, &statement)),
            (LEE.to_owned(), sign(&a2, &statement)),
        ]
        .into(),
    };
    sql.set_document(&format!("policy.toml/{}", forged.hash), &swapped);
    sql.set_document(
        &format!("policy.adoption/{}", forged.hash),
        &serde_json::to_string(&adoption).unwrap(),
    );
    sql.set_document("policy.sha256", &forged.hash);
    let unadopted =
        "dojang_key_orders_refused_total{order=\"change_policy\",reason=\"unverified_adoption\"}";
    d.wait_until(
        Duration::from_secs(30),
        "the swapped policy was not refused",
        || metric(&d, unadopted) >= 1.0,
    );
    // The node keeps the policy its officers adopted, and serves.
    let ready = d.ops_client().get("/readyz");
    assert_eq!(ready.status, 200, "{}", d.log());
    // Readiness shows the refusals (the node is right to refuse: it stays ready).
    let ready = String::from_utf8_lossy(&ready.body).into_owned();
    assert!(ready.contains("refused since start"), "{ready}");
    // Orders signed by the swapped-in keys are not kim's and lee's.
    let swapped_order = open_revocation(&d, "swapped");
    let mut p = sql.proposal(&swapped_order);
    let message = CanonicalProposal::of(&p).bytes();
    let _ = p.signatures.insert(KIM.into(), sign(&a1, &message));
    sql.set_proposal(&p);
    refused(&d, "park", &swapped_order, "unverified_order");

    // Each refusal counted and audited; nothing changed in the token.
    assert!(metric(&d, bad) >= 5.0, "{}", metric(&d, bad));
    assert!(metric(&d, unpinned) >= 1.0);
    // The audit log takes entries in order, a moment after (PostgreSQL's
    // sequencer).
    let deadline = Instant::now() + Duration::from_secs(10);
    for rule in [
        "officers.verified_order",
        "officers.pinned_key",
        "policy.follow",
    ] {
        while !sql.audit().contains(rule) {
            assert!(
                Instant::now() < deadline,
                "{rule} not audited:\n{}",
                sql.audit()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    ds1_untouched(&d);
    assert_eq!(d.keys().len(), 1, "the rotation was never approved");
    assert_eq!(before, d.token_objects(), "the token's objects changed");

    // A reason that would redraw the officer's terminal: dojangctl shows
    // nothing and signs nothing.
    let escaped = open_revocation(&d, "drill");
    let mut p = sql.proposal(&escaped);
    p.operation = dojang::keys::approvals::Operation::EmergencyRevoke {
        label: "ds-1".into(),
        reason: "drill\u{1b}[2A\u{1b}[2K".into(),
    };
    sql.set_proposal(&p);
    refused(&d, "lee", &escaped, "control or bidirectional characters");
    // A key named by a kid a row was given: the daemon's proposal names the
    // token's kid, and dojangctl refuses to sign it.
    let real_kid = d.keys()[0]["kid"].as_str().unwrap().to_owned();
    sql.set_kid("ds-1", "forged-kid");
    let err = d
        .officer_ctl("kim", &["keys", "revoke", "forged-kid", "--reason", "x"])
        .unwrap_err();
    assert!(err.contains("not the key forged-kid you named"), "{err}");
    sql.set_kid("ds-1", &real_kid);
    assert_eq!(before, d.token_objects(), "the token's objects changed");

    // A forged history: the running policy re-recorded as a change from the
    // insider's self-signed policy, and a revocation of ds-1 "ordered" under
    // it. The history does not start at the ceremony's first policy (the
    // node's policy_anchor): a reload refuses it, ds-1 stays off the CRL,
    // and `dojangctl pki crl` and `policy adopted` refuse the registry.
    let to_running = {
        let mut p = dojang::keys::approvals::DualControl {
            required: 2,
            officers: 3,
            lifetime: time::Duration::hours(1),
        }
        .propose(
            "p-aaaaaaaaaaaaaaaa",
            dojang::keys::approvals::Operation::ChangePolicy {
                sha256: hash.clone(),
            },
            KIM,
            |_| true,
            &forged.hash,
            time::OffsetDateTime::now_utc(),
        )
        .unwrap();
        p.policy_text = Some(running.clone());
        let message = CanonicalProposal::of(&p).bytes();
        let _ = p.signatures.insert(KIM.into(), sign(&a1, &message));
        let _ = p.signatures.insert(LEE.into(), sign(&a2, &message));
        p.state = dojang::keys::approvals::ProposalState::Approved;
        p
    };
    sql.set_document(
        &format!("policy.adoption/{hash}"),
        &serde_json::to_string(&Adoption::Change {
            proposal: Box::new(to_running),
        })
        .unwrap(),
    );
    sql.set_document("policy.sha256", &hash);
    let ds1 = d.keys().into_iter().find(|k| k["label"] == "ds-1").unwrap();
    let mut order = dojang::keys::approvals::DualControl {
        required: 2,
        officers: 3,
        lifetime: time::Duration::hours(1),
    }
    .propose(
        "p-bbbbbbbbbbbbbbbb",
        dojang::keys::approvals::Operation::EmergencyRevoke {
            label: "ds-1".into(),
            reason: "forged".into(),
        },
        KIM,
        |_| true,
        &forged.hash,
        time::OffsetDateTime::now_utc(),
    )
    .unwrap();
    order.target = Some(dojang::keys::approvals::KeyTarget {
        label: "ds-1".into(),
        chain: "ds".into(),
        kid: ds1["kid"].as_str().unwrap().to_owned(),
    });
    let message = CanonicalProposal::of(&order).bytes();
    let _ = order.signatures.insert(KIM.into(), sign(&a1, &message));
    let _ = order.signatures.insert(LEE.into(), sign(&a2, &message));
    sql.set_document(
        "revocation.order/ds-1",
        &serde_json::to_string(&order).unwrap(),
    );
    sql.revoke("ds-1");
    d.signal("HUP");
    let unordered =
        "dojang_key_orders_refused_total{order=\"revoke\",reason=\"unverified_revocation\"}";
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(&d, unordered) < 1.0 || !d.log().contains("reload refused") {
        assert!(
            Instant::now() < deadline,
            "the forged history was not refused:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        d.log().contains("not at the first policy pinned"),
        "{}",
        d.log()
    );
    let crl = d.public_client().get("/iaca.crl");
    if crl.status == 200 {
        let crl = openssl::x509::X509Crl::from_der(&crl.body).unwrap();
        assert!(
            softhsm_tests::crl_serials(&crl).is_empty(),
            "a forged order reached the CRL"
        );
    }
    for args in [&["pki", "crl"][..], &["policy", "adopted"][..]] {
        let out = d.try_ctl(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("not adopted by officers"),
            "{args:?}: {err}"
        );
    }
    assert_eq!(before, d.token_objects(), "the token's objects changed");

    // The same officers with their own tokens still can, once.
    let approved = d.dual_control(
        "kim",
        "lee",
        "/v1/keys/rotate",
        &serde_json::json!({"chain": "ds"}),
    );
    assert_eq!(approved["status"], "approved", "{approved}");
    assert_ne!(before, d.token_objects(), "a real order acts on the token");
    let keys = d.keys().len();
    // Set open again with its signatures: another approval does not carry
    // it out a second time.
    let id = approved["id"].as_str().unwrap();
    let mut p = sql.proposal(id);
    p.state = dojang::keys::approvals::ProposalState::Open;
    p.result = None;
    p.approved_at = None;
    sql.set_proposal(&p);
    let replay = d.approve("park", id).unwrap_err();
    assert!(replay.contains("officers.replay"), "{replay}");
    assert_eq!(d.keys().len(), keys, "an order carried out twice");
}

#[test]
fn forged_signatures_make_no_order_sqlite() {
    forged_signatures_make_no_order(Store::Sqlite, Insider::sqlite);
}

#[test]
fn forged_signatures_make_no_order_postgres() {
    let Some(schema) = PgSchema::create() else {
        return;
    };
    let name = schema.name.clone();
    forged_signatures_make_no_order(Store::Postgres(schema.url.clone()), move |_| {
        Insider::postgres(&name)
    });
    drop(schema);
}
