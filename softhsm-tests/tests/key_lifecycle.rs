//! The key lifecycle with a controllable clock: the service runs in this
//! process on a real SoftHSM token and SQLite registry, and each round is
//! given its "now" (the daemon passes the system time). Scheduled rotation
//! with prepublication, usage limits, certificate expiry, destruction after
//! retention, and one acting node among two sharing a registry.
#![allow(clippy::unwrap_used)]
#![allow(clippy::indexing_slicing, clippy::panic, clippy::expect_used)] // test code: a failed expect, panic or index is a failed test

mod common;

use std::sync::Arc;

use dojang::metrics::Metrics;
use dojang::pki::profile;
use dojang::service::Service;
use dojang::store::{Registry, SqliteRegistry};
use softhsm_tests::daemon::{Daemon, Options};
use time::{Duration, OffsetDateTime};

const LEASE_MS: i64 = 3_000;

/// Two officers whose approval keys this process holds (software keys, for
/// a test that signs an order in-process), added to the fixture's officers.
static SOFT_OFFICERS: std::sync::OnceLock<
    [(String, openssl::pkey::PKey<openssl::pkey::Private>); 2],
> = std::sync::OnceLock::new();

fn soft_officers() -> &'static [(String, openssl::pkey::PKey<openssl::pkey::Private>); 2] {
    SOFT_OFFICERS.get_or_init(|| {
        [
            (
                "spiffe://test/officer/a".to_owned(),
                softhsm_tests::p256_key(),
            ),
            (
                "spiffe://test/officer/b".to_owned(),
                softhsm_tests::p256_key(),
            ),
        ]
    })
}

/// The policy with the software officers pinned too.
fn with_soft_officers(policy: String) -> String {
    soft_officers().iter().fold(policy, |text, (who, key)| {
        let spki = openssl::base64::encode_block(&key.public_key_to_der().unwrap());
        format!("{text}\n[[clients]]\nidentity = \"{who}\"\nroles = [\"officer\"]\nsigning_key = \"{spki}\"\n")
    })
}

/// An emergency revocation of `key` signed by the two software officers
/// under the adopted policy, kept as the daemon keeps an order it carries out.
fn keep_signed_revocation(registry: &dyn Registry, key: &dojang::store::StoredKey) {
    use dojang::keys::approvals::{DualControl, KeyTarget, Operation};
    let hash = registry
        .document(dojang::store::POLICY_DOCUMENT)
        .unwrap()
        .unwrap();
    let control = DualControl {
        required: 2,
        officers: 5,
        lifetime: Duration::hours(1),
    };
    let (a, _) = &soft_officers()[0];
    let mut order = control
        .propose(
            "p-0123456789abcdef",
            Operation::EmergencyRevoke {
                label: key.record.label.clone(),
                reason: "drill".into(),
            },
            a,
            |_| true,
            &hash,
            OffsetDateTime::now_utc(),
        )
        .unwrap();
    order.target = Some(KeyTarget {
        label: key.record.label.clone(),
        chain: key.chain.clone(),
        kid: key.kid.clone(),
    });
    let message = dojang::keys::order::CanonicalProposal::of(&order).bytes();
    for (who, pkey) in soft_officers() {
        let _ = order
            .signatures
            .insert(who.clone(), softhsm_tests::es256_signature(pkey, &message));
    }
    registry
        .set_document(
            &dojang::store::revocation_order_document(&key.record.label),
            &serde_json::to_string(&order).unwrap(),
            common::decision("keys.revoke_order"),
        )
        .unwrap();
}

struct InProcess {
    _daemon: Daemon,
    service: Arc<Service>,
    registry: Arc<dyn Registry>,
    backend: &'static dyn pkcs11_shim::KeyBackend,
    config: dojang::config::Config,
}

fn in_process(policy: fn(String) -> String) -> InProcess {
    let d = Daemon::start(Options {
        policy,
        spawn: false,
        ..Options::default()
    });
    d.activate_token();
    let config = dojang::cli::load_config(&d.config).unwrap();
    let backend: &'static Arc<dyn pkcs11_shim::KeyBackend> =
        Box::leak(Box::new(dojang::cli::open_backend(&config).unwrap()));
    let registry = dojang::cli::open_registry(&config).unwrap();
    let service = node(&config, backend.as_ref(), registry.clone(), "a");
    InProcess {
        _daemon: d,
        service,
        registry,
        backend: backend.as_ref(),
        config,
    }
}

fn node(
    config: &dojang::config::Config,
    backend: &'static dyn pkcs11_shim::KeyBackend,
    registry: Arc<dyn Registry>,
    name: &str,
) -> Arc<Service> {
    let mut server = config.server.clone().unwrap();
    server.node_id = name.into();
    Arc::new(
        Service::new(
            backend,
            registry,
            Arc::new(Metrics::new()),
            &server,
            config.credential().unwrap().clone(),
            config.pki().unwrap().clone(),
        )
        .unwrap(),
    )
}

/// The DS chain's keys (the status-list chain rotates beside it).
fn ds_keys(registry: &dyn Registry) -> Vec<dojang::store::StoredKey> {
    registry
        .keys()
        .unwrap()
        .into_iter()
        .filter(|k| k.chain == "ds")
        .collect()
}

fn states(registry: &dyn Registry) -> Vec<(String, &'static str)> {
    ds_keys(registry)
        .iter()
        .map(|k| (k.record.label.clone(), k.record.state.as_str()))
        .collect()
}

fn signer_at(service: &Service, at: OffsetDateTime) -> String {
    service.current().signer(at).unwrap().label().to_owned()
}

/// The kids of the issuer's JWKS (document signers).
fn jwks_kids(service: &Service) -> Vec<String> {
    kids(&service.current().keys.jwks)
}

/// The kids of the status-list keys' JWKS.
fn status_jwks_kids(service: &Service) -> Vec<String> {
    kids(&service.current().keys.status_jwks)
}

fn kids(jwks: &[u8]) -> Vec<String> {
    let jwks: serde_json::Value = serde_json::from_slice(jwks).unwrap();
    jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect()
}

fn audit_text(registry: &dyn Registry) -> String {
    let size = registry.audit_size().unwrap();
    registry
        .audit_entries(0, size)
        .unwrap()
        .iter()
        .map(|e| String::from_utf8_lossy(e).into_owned())
        .collect()
}

#[test]
fn scheduled_rotation_prepublishes_then_switches_at_the_configured_time() {
    let t = in_process(|p| p);
    let (s, registry) = (&t.service, t.registry.as_ref());
    let t0 = OffsetDateTime::now_utc();
    s.keys_tick(t0, LEASE_MS);
    assert_eq!(states(registry), [("ds-1".to_owned(), "active")]);
    // Due after 90 days, announced 7 days before: nothing at day 80.
    s.keys_tick(t0 + Duration::days(80), LEASE_MS);
    assert_eq!(ds_keys(registry).len(), 1);
    // Day 84: a successor is published, to sign from day 91.
    let day84 = t0 + Duration::days(84);
    s.keys_tick(day84, LEASE_MS);
    s.keys_tick(day84 + Duration::hours(1), LEASE_MS);
    let keys = ds_keys(registry);
    assert_eq!(keys.len(), 2, "one successor, however many rounds");
    let next = &keys[1];
    assert_eq!(next.record.state.as_str(), "pending");
    assert_eq!(
        next.record.activate_at.unix_timestamp(),
        (day84 + Duration::days(7)).unix_timestamp()
    );
    assert!(
        jwks_kids(s).contains(&next.kid),
        "published before it signs"
    );
    // Its certificate is a DS certificate of this IACA.
    let (iaca_der, iaca) = dojang::pki::PkiStore::new(&t.config.pki().unwrap().dir)
        .iaca()
        .unwrap();
    let der = next.certificate.as_ref().unwrap();
    let _ = profile::check_ds(der, Some(&iaca)).unwrap();
    let issuer_key = openssl::x509::X509::from_der(&iaca_der)
        .unwrap()
        .public_key()
        .unwrap();
    assert!(openssl::x509::X509::from_der(der)
        .unwrap()
        .verify(&issuer_key)
        .unwrap());
    // The switch is at the activation time, to the second, on every node,
    // before any round moves the records.
    let switch = next.record.activate_at;
    assert_eq!(signer_at(s, switch - Duration::seconds(1)), "ds-1");
    assert_eq!(signer_at(s, switch), next.record.label);
    s.keys_tick(switch, LEASE_MS);
    assert_eq!(
        states(registry),
        [
            ("ds-1".to_owned(), "retired"),
            (next.record.label.clone(), "active")
        ]
    );
    // Retired keys stay published (what they signed is still valid).
    assert!(jwks_kids(s).contains(&ds_keys(registry)[0].kid));
    // The status-list chain rotated on the same schedule: its new key
    // signs from the same second, and both are published (in their own
    // JWKS, never the issuer's).
    let status: Vec<_> = registry
        .keys()
        .unwrap()
        .into_iter()
        .filter(|k| k.chain == "status-list")
        .collect();
    assert_eq!(status.len(), 2, "{status:?}");
    assert_eq!(status[1].record.state.as_str(), "active");
    assert_eq!(
        s.current()
            .keys
            .status_key_at(switch)
            .map(|k| k.label.as_str()),
        Some(status[1].record.label.as_str())
    );
    assert!(status.iter().all(|k| status_jwks_kids(s).contains(&k.kid)));
    assert!(!status.iter().any(|k| jwks_kids(s).contains(&k.kid)));
    assert!(audit_text(registry).contains("scheduled rotation"));
}

#[test]
fn a_usage_limit_rotates_at_once() {
    let t = in_process(|p| p.replace("max_signatures = 50000000", "max_signatures = 10"));
    let (s, registry) = (&t.service, t.registry.as_ref());
    let t0 = OffsetDateTime::now_utc();
    // Nine signatures: under the limit.
    for _ in 0..9 {
        s.keys
            .count_signature("ds-1", (t0 + Duration::days(90)).unix_timestamp());
    }
    s.keys_tick(t0 + Duration::days(1), LEASE_MS);
    assert_eq!(ds_keys(registry).len(), 1);
    assert_eq!(ds_keys(registry)[0].record.signatures, 9);
    s.keys
        .count_signature("ds-1", (t0 + Duration::days(91)).unix_timestamp());
    let day2 = t0 + Duration::days(2);
    s.keys_tick(day2, LEASE_MS);
    let keys = ds_keys(registry);
    assert_eq!(keys[0].record.signatures, 10);
    assert_eq!(
        keys[0]
            .record
            .last_signature_valid_until
            .unwrap()
            .unix_timestamp(),
        (t0 + Duration::days(91)).unix_timestamp()
    );
    // Due now: the successor signs at once.
    assert_eq!(keys.len(), 2);
    assert_eq!(
        keys[1].record.activate_at.unix_timestamp(),
        day2.unix_timestamp()
    );
    assert_eq!(signer_at(s, day2), keys[1].record.label);
    assert!(audit_text(registry).contains("usage limit reached"));
}

#[test]
fn an_ending_certificate_rotates_before_the_schedule() {
    // A certificate with less left than a signature's validity (90 days of
    // its 365) is replaced, even when the schedule would wait.
    let t0 = OffsetDateTime::now_utc();
    let t = in_process(|p| p.replace("rotate_every = \"90d\"", "rotate_every = \"400d\""));
    let (s, registry) = (&t.service, t.registry.as_ref());
    s.keys_tick(t0 + Duration::days(260), LEASE_MS);
    assert_eq!(ds_keys(registry).len(), 1);
    // Day 270: 95 days left, 88 at the end of the prepublication: the
    // successor is published now and signs in 7 days.
    let day270 = t0 + Duration::days(270);
    s.keys_tick(day270, LEASE_MS);
    let keys = ds_keys(registry);
    assert_eq!(keys.len(), 2);
    assert_eq!(
        keys[1].record.activate_at.unix_timestamp(),
        (day270 + Duration::days(7)).unix_timestamp()
    );
    assert!(audit_text(registry).contains("certificate ending"));
}

#[test]
fn retired_keys_are_destroyed_only_after_what_they_signed_expired() {
    let t = in_process(|p| p);
    let (s, registry) = (&t.service, t.registry.as_ref());
    let t0 = OffsetDateTime::now_utc();
    let ds1_kid = ds_keys(registry)[0].kid.clone();
    // ds-1 signs something valid until day 100, then is rotated out.
    s.keys
        .count_signature("ds-1", (t0 + Duration::days(100)).unix_timestamp());
    s.keys_tick(t0 + Duration::days(84), LEASE_MS);
    s.keys_tick(t0 + Duration::days(91), LEASE_MS);
    assert_eq!(states(registry)[0], ("ds-1".to_owned(), "retired"));
    // Retired: it never signs again, so its private half left the token at
    // once; its public half stays published for verifiers.
    assert!(
        matches!(
            t.backend.find("ds-1"),
            Err(pkcs11_shim::Error::KeyNotFound { .. })
        ),
        "private half gone from the token at retirement"
    );
    // Kept published for the 30-day margin after day 100.
    s.keys_tick(t0 + Duration::days(129), LEASE_MS);
    assert_eq!(states(registry)[0], ("ds-1".to_owned(), "retired"));
    assert!(jwks_kids(s).contains(&ds1_kid), "still published");
    s.keys_tick(t0 + Duration::days(130) + Duration::minutes(1), LEASE_MS);
    assert_eq!(states(registry)[0], ("ds-1".to_owned(), "destroyed"));
    assert!(!jwks_kids(s).contains(&ds1_kid), "gone from the JWKS");
    assert!(!s.current().keys.ds_pem.contains_key("ds-1"));
}

#[test]
fn of_two_nodes_sharing_a_registry_one_acts() {
    let t = in_process(|p| p);
    // A second node: its own connections to the same registry file.
    let path = t.config.store.as_ref().unwrap().sqlite.clone().unwrap();
    let other: Arc<dyn Registry> = Arc::new(SqliteRegistry::open(&path).unwrap());
    let b = node(&t.config, t.backend, other, "b");
    // The lease runs on the registry's clock: a short one, to see it lapse.
    let lease_ms = 700;
    let day84 = OffsetDateTime::now_utc() + Duration::days(84);
    t.service.keys_tick(day84, lease_ms);
    b.keys_tick(day84, lease_ms);
    b.keys_tick(day84 + Duration::seconds(1), lease_ms);
    assert_eq!(ds_keys(t.registry.as_ref()).len(), 2, "one successor");
    // b takes over once a's lease lapses, and acts on the same records.
    let later = day84 + Duration::days(7);
    std::thread::sleep(std::time::Duration::from_millis(800));
    b.keys_tick(later, lease_ms);
    assert_eq!(states(t.registry.as_ref())[1].1, "active");
    // a, not acting, still takes up the change.
    t.service.keys_tick(later, lease_ms);
    assert_eq!(
        signer_at(&t.service, later),
        signer_at(&b, later),
        "both nodes sign with the new key"
    );
}

#[test]
fn the_acting_node_completes_a_revocation() {
    let t = in_process(with_soft_officers);
    let (s, registry) = (&t.service, t.registry.as_ref());
    let now = OffsetDateTime::now_utc();
    s.keys_tick(now, LEASE_MS);
    let ds1 = ds_keys(registry)[0].clone();
    // Officers' signed revocation, kept, and the revocation committed, but
    // its CRL never signed (the node stopped, or the HSM refused), and a
    // credential signed with the key in flight committed after it.
    keep_signed_revocation(registry, &ds1);
    let revocation = dojang::store::KeyRevocation {
        label: "ds-1".into(),
        reason: "drill".into(),
        at: now,
        credentials: Some(dojang::store::CredentialState::Suspended),
    };
    let _ = registry
        .revoke_key(&revocation, common::decision("keys.revoke"))
        .unwrap();
    let range = registry.reserve_status_indexes(1).unwrap();
    let mut late = common::issuance(
        "0123456789abcdef0123456789abcdef",
        dojang::store::Pseudonym([7; 32]),
        "phone",
        range.list,
        range.indexes[0],
    );
    late.credential.kid = ds1.kid.clone();
    let _ = registry
        .commit_issuance("c", late, Box::new(|_| Vec::new()))
        .unwrap();

    // The next sweep (they run every 10 s).
    let later = now + Duration::seconds(11);
    s.keys_tick(later, LEASE_MS);
    // The CRL lists the key's certificate, and verifies under the IACA.
    let crl =
        openssl::x509::X509Crl::from_pem(registry.crl().unwrap().unwrap().as_bytes()).unwrap();
    let serial = openssl::x509::X509::from_der(ds1.certificate.as_ref().unwrap())
        .unwrap()
        .serial_number()
        .to_bn()
        .unwrap()
        .to_vec();
    let listed = softhsm_tests::crl_serials(&crl);
    assert_eq!(listed, [serial]);
    // The late credential is suspended like the others.
    assert_eq!(
        registry
            .credential("0123456789abcdef0123456789abcdef")
            .unwrap()
            .state,
        dojang::store::CredentialState::Suspended
    );
    // No successor is made on the row's word: the revocation reached the
    // registry, not the token (the node stopped before removing ds-1's
    // private half, or someone wrote the row). Officers decide.
    let keys = ds_keys(registry);
    assert_eq!(
        keys.len(),
        1,
        "a successor was made while the token holds ds-1"
    );
    assert!(t.backend.find("ds-1").is_ok(), "nothing left the token");
    assert!(
        !jwks_kids(s).contains(&ds1.kid),
        "a revoked key leaves the JWKS"
    );
}
