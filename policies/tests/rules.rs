//! Table tests of every rule of the shipped programme policy, at its
//! boundaries. Pure: no store, no clock.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use dojang_policies::{
    DenialKind, IssuanceRequest, Outcome, Policy, RegistryFacts, Role, SHIPPED_POLICY,
};
use time::macros::{date, datetime};
use time::{Date, OffsetDateTime};

const COUNTER: &str = "spiffe://mois.go.kr/office-counter";
const JONGNO: &str = "1111000000";

/// The shipped policy with the pilot switched on for nine codes.
fn pilot_policy() -> Policy {
    let codes: Vec<String> = (0..9).map(|i| format!("\"11{i}1000000\"")).collect();
    let text = SHIPPED_POLICY
        .replace("enabled = false", "enabled = true")
        .replace(
            "municipalities = []",
            &format!("municipalities = [{}]", codes.join(", ")),
        );
    Policy::parse("pilot.toml", &text).unwrap()
}

fn shipped() -> Policy {
    Policy::parse("kr-mobile-resident-card.toml", SHIPPED_POLICY).unwrap()
}

fn request(birth: Date) -> IssuanceRequest {
    IssuanceRequest {
        profile: "mdoc".into(),
        channel: "qr_office".into(),
        municipality: JONGNO.into(),
        first_time: false,
        birth_date: birth,
        citizen: true,
        card_issue_date: Some(date!(2020 - 01 - 01)),
        card_serial: Some("A1234567".into()),
    }
}

fn decide(
    policy: &Policy,
    client: &str,
    req: &IssuanceRequest,
    facts: &RegistryFacts,
    now: OffsetDateTime,
) -> Result<dojang_policies::Obligations, (&'static str, DenialKind)> {
    let decision = policy.evaluate_issuance(client, req, facts, now);
    assert_eq!(decision.policy_hash, policy.hash);
    assert!(!decision.trace.is_empty());
    match decision.outcome {
        Outcome::Allow(o) => Ok(o),
        Outcome::Deny(d) => {
            assert_eq!(
                decision.trace.last().map(|r| (r.rule, r.passed)),
                Some((d.rule, false))
            );
            Err((d.rule, d.kind))
        }
    }
}

const NOW: OffsetDateTime = datetime!(2027-01-10 03:00 UTC);

fn denied(req: &IssuanceRequest, facts: &RegistryFacts, now: OffsetDateTime) -> &'static str {
    decide(&shipped(), COUNTER, req, facts, now).unwrap_err().0
}

#[test]
fn seventeen_on_the_issue_date_in_seoul_not_utc() {
    let birth = date!(2009 - 12 - 27);
    let policy = shipped();
    let facts = RegistryFacts::default();
    // 15:00 UTC on 26 December is 00:00 on 27 December in Seoul: the 17th birthday.
    assert!(
        decide(
            &policy,
            COUNTER,
            &request(birth),
            &facts,
            datetime!(2026-12-26 15:00 UTC)
        )
        .is_ok()
    );
    // One second earlier it is still the 26th in Seoul.
    assert_eq!(
        decide(
            &policy,
            COUNTER,
            &request(birth),
            &facts,
            datetime!(2026-12-26 14:59:59 UTC)
        )
        .unwrap_err()
        .0,
        "holder.minimum_age"
    );
    // Turning 17 tomorrow (Seoul) is refused today.
    assert_eq!(
        denied(
            &request(date!(2009 - 12 - 28)),
            &facts,
            datetime!(2026-12-27 12:00 UTC)
        ),
        "holder.minimum_age"
    );
}

#[test]
fn leap_day_births_turn_seventeen_on_the_first_of_march() {
    let birth = date!(2008 - 02 - 29);
    let facts = RegistryFacts::default();
    assert_eq!(
        denied(&request(birth), &facts, datetime!(2025-02-28 12:00 +9)),
        "holder.minimum_age"
    );
    let mut req = request(birth);
    req.card_issue_date = Some(date!(2024 - 06 - 01));
    assert!(
        decide(
            &shipped(),
            COUNTER,
            &req,
            &facts,
            datetime!(2025-03-01 00:00 +9)
        )
        .is_ok()
    );
}

#[test]
fn three_years_of_validity_including_from_a_leap_day() {
    let facts = RegistryFacts::default();
    let o = decide(
        &shipped(),
        COUNTER,
        &request(date!(1990 - 05 - 05)),
        &facts,
        datetime!(2028-02-29 10:00 +9),
    )
    .unwrap();
    assert_eq!(
        (o.issue_date, o.expiry_date),
        (date!(2028 - 02 - 29), date!(2031 - 02 - 28))
    );
    let o = decide(
        &shipped(),
        COUNTER,
        &request(date!(1990 - 05 - 05)),
        &facts,
        datetime!(2026-12-27 10:00 +9),
    )
    .unwrap();
    assert_eq!(o.expiry_date, date!(2029 - 12 - 27));
}

#[test]
fn the_pilot_window_and_municipalities() {
    let policy = pilot_policy();
    let facts = RegistryFacts::default();
    let mut req = request(date!(1990 - 05 - 05));
    req.municipality = "1101000000".into();
    assert_eq!(
        (policy.pilot.first_day, policy.pilot.last_day),
        (date!(2026 - 12 - 27), date!(2027 - 02 - 26))
    );
    for (now, ok) in [
        (datetime!(2026-12-26 23:59:59 +9), false),
        (datetime!(2026-12-27 00:00 +9), true),
        (datetime!(2027-02-26 23:59:59 +9), true),
        (datetime!(2027-02-27 00:00 +9), false),
    ] {
        let result = decide(&policy, COUNTER, &req, &facts, now);
        assert_eq!(result.is_ok(), ok, "{now}: {result:?}");
        if !ok {
            assert_eq!(result.unwrap_err().0, "pilot.window");
        }
    }
    req.municipality = "4100000000".into();
    assert_eq!(
        decide(&policy, COUNTER, &req, &facts, NOW).unwrap_err().0,
        "pilot.municipality"
    );
    // With the pilot off (as shipped), any municipality.
    assert!(decide(&shipped(), COUNTER, &req, &facts, NOW).is_ok());
}

#[test]
fn clients_need_the_issuer_role_and_the_profile() {
    let facts = RegistryFacts::default();
    let req = request(date!(1990 - 05 - 05));
    let policy = shipped();
    assert_eq!(
        decide(&policy, "spiffe://elsewhere/x", &req, &facts, NOW).unwrap_err(),
        ("client.role", DenialKind::Forbidden)
    );
    let mut other = req.clone();
    other.profile = "photo-id".into();
    assert_eq!(
        decide(&policy, COUNTER, &other, &facts, NOW).unwrap_err(),
        ("client.profile", DenialKind::Forbidden)
    );
    let text = SHIPPED_POLICY.replace(
        "roles = [\"issuer\"]\nprofiles = [\"mdoc\", \"sd-jwt\"]",
        "roles = [\"issuer\"]\nprofiles = [\"sd-jwt\"]",
    );
    let policy = Policy::parse("p.toml", &text).unwrap();
    let gateway = "spiffe://mois.go.kr/wallet-gateway";
    assert_eq!(
        decide(&policy, gateway, &req, &facts, NOW).unwrap_err().0,
        "client.profile"
    );
    assert!(policy.has_role(COUNTER, Role::Revoker));
    assert!(!policy.has_role(gateway, Role::Revoker));
}

#[test]
fn rate_limits_channels_cards_and_citizenship() {
    let req = request(date!(1990 - 05 - 05));
    let busy = RegistryFacts {
        client_requests_this_minute: 6000,
        ..RegistryFacts::default()
    };
    assert_eq!(
        decide(&shipped(), COUNTER, &req, &busy, NOW).unwrap_err(),
        ("client.rate_limit", DenialKind::RateLimited)
    );
    let facts = RegistryFacts::default();
    let mut r = req.clone();
    r.channel = "fax".into();
    assert_eq!(denied(&r, &facts, NOW), "channel.known");
    let mut r = req.clone();
    r.card_serial = None;
    assert_eq!(denied(&r, &facts, NOW), "holder.physical_card");
    let mut r = req.clone();
    r.card_issue_date = Some(date!(2027 - 06 - 01));
    assert_eq!(denied(&r, &facts, NOW), "holder.physical_card");
    let mut r = req;
    r.citizen = false;
    assert_eq!(denied(&r, &facts, NOW), "holder.citizen");
}

#[test]
fn fees_and_the_free_first_time_copies() {
    let mut req = request(date!(1990 - 05 - 05));
    req.channel = "ic_card".into();
    let policy = shipped();
    let fresh = RegistryFacts::default();
    assert_eq!(
        decide(&policy, COUNTER, &req, &fresh, NOW).unwrap().fee_krw,
        5000
    );
    req.first_time = true;
    let o = decide(&policy, COUNTER, &req, &fresh, NOW).unwrap();
    assert_eq!((o.fee_krw, o.use_free_copy), (0, true));
    let last = RegistryFacts {
        free_copies_issued: 467_999,
        ..RegistryFacts::default()
    };
    assert!(
        decide(&policy, COUNTER, &req, &last, NOW)
            .unwrap()
            .use_free_copy
    );
    let gone = RegistryFacts {
        free_copies_issued: 468_000,
        ..RegistryFacts::default()
    };
    let o = decide(&policy, COUNTER, &req, &gone, NOW).unwrap();
    assert_eq!((o.fee_krw, o.use_free_copy), (5000, false));
    req.channel = "qr_office".into();
    assert_eq!(
        decide(&policy, COUNTER, &req, &gone, NOW).unwrap().fee_krw,
        0
    );
}

#[test]
fn one_active_id_per_person_and_one_person_per_phone() {
    let req = request(date!(1990 - 05 - 05));
    let taken = RegistryFacts {
        device_bound_to_other_holder: true,
        ..RegistryFacts::default()
    };
    assert_eq!(
        decide(&shipped(), COUNTER, &req, &taken, NOW).unwrap_err(),
        ("device.one_person", DenialKind::Conflict)
    );
    let same = RegistryFacts {
        holder_active_on_same_device: Some(true),
        ..RegistryFacts::default()
    };
    assert_eq!(
        decide(&shipped(), COUNTER, &req, &same, NOW).unwrap_err(),
        ("holder.one_active", DenialKind::Conflict)
    );
    let new_phone = RegistryFacts {
        holder_active_on_same_device: Some(false),
        ..RegistryFacts::default()
    };
    assert!(
        decide(&shipped(), COUNTER, &req, &new_phone, NOW)
            .unwrap()
            .supersede_previous
    );
    assert!(
        !decide(&shipped(), COUNTER, &req, &RegistryFacts::default(), NOW)
            .unwrap()
            .supersede_previous
    );
}

#[test]
fn policy_files_are_parsed_strictly() {
    let err = Policy::parse(
        "p.toml",
        &SHIPPED_POLICY.replace("minimum_age = 17", "minimum_age = 17\nmaximum_age = 99"),
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with("p.toml:") && text.contains("maximum_age") && text.contains("line"),
        "{text}"
    );
    let err = Policy::parse(
        "p.toml",
        &SHIPPED_POLICY.replace("enabled = false", "enabled = true"),
    )
    .unwrap_err();
    assert!(err.to_string().contains("municipalities is empty"), "{err}");
    let err = Policy::parse(
        "p.toml",
        &SHIPPED_POLICY.replace("municipalities = []", "municipalities = [\"Jongno\"]"),
    )
    .unwrap_err();
    assert!(err.to_string().contains("10-digit"), "{err}");
    let err = Policy::parse(
        "p.toml",
        &SHIPPED_POLICY.replace("profiles = [\"mdoc\", \"sd-jwt\"]", "profiles = [\"mdl\"]"),
    )
    .unwrap_err();
    assert!(err.to_string().contains("unknown profile"), "{err}");
    let pin = |value: &str| {
        Policy::parse(
            "p.toml",
            &SHIPPED_POLICY.replace(
                "fee_krw = 5000\n",
                &format!("fee_krw = 5000\ncard_ca_sha256 = \"{value}\"\n"),
            ),
        )
    };
    let err = pin("not hex").unwrap_err();
    assert!(err.to_string().contains("card_ca_sha256"), "{err}");
    let pinned = pin(&"0a".repeat(32)).unwrap();
    assert!(pinned.channels["ic_card"].card_ca_sha256.is_some());
    // The hash identifies the exact bytes.
    let a = shipped();
    let b = Policy::parse("p.toml", &format!("{SHIPPED_POLICY}\n")).unwrap();
    assert_ne!(a.hash, b.hash);
    assert_eq!(a.hash.len(), 64);
}

#[test]
fn a_first_time_claim_the_registry_contradicts_is_refused_not_believed() {
    let mut req = request(date!(1990 - 05 - 15));
    req.first_time = true;
    let held = RegistryFacts {
        holder_held_before: true,
        ..RegistryFacts::default()
    };
    assert_eq!(
        decide(&shipped(), COUNTER, &req, &held, NOW).unwrap_err(),
        ("holder.first_time", DenialKind::Policy)
    );
    // Said truthfully, it is issued, for a fee.
    req.first_time = false;
    let o = decide(&shipped(), COUNTER, &req, &held, NOW).unwrap();
    assert!(!o.use_free_copy);
    // A first application is free.
    req.first_time = true;
    assert!(
        decide(&shipped(), COUNTER, &req, &RegistryFacts::default(), NOW)
            .unwrap()
            .use_free_copy
    );
}

#[test]
fn an_office_counter_issues_for_its_own_district_only() {
    let bound = shipped_with(|text| {
        text.replace(
            "identity = \"spiffe://mois.go.kr/office-counter\"\nroles = [\"issuer\", \"revoker\"]\n",
            "identity = \"spiffe://mois.go.kr/office-counter\"\nroles = [\"issuer\", \"revoker\"]\nmunicipalities = [\"1111000000\"]\n",
        )
    });
    let mut req = request(date!(1990 - 05 - 15));
    assert!(decide(&bound, COUNTER, &req, &RegistryFacts::default(), NOW).is_ok());
    req.municipality = "2611000000".into();
    assert_eq!(
        decide(&bound, COUNTER, &req, &RegistryFacts::default(), NOW).unwrap_err(),
        ("client.municipality", DenialKind::Forbidden)
    );
    // Unbound (the shipped policy), any district.
    assert!(decide(&shipped(), COUNTER, &req, &RegistryFacts::default(), NOW).is_ok());
    // A code that is not one is refused when the policy loads.
    for bad in ["111100000", "11110000a0"] {
        let text = SHIPPED_POLICY.replace(
            "roles = [\"issuer\", \"revoker\"]\n",
            &format!("roles = [\"issuer\", \"revoker\"]\nmunicipalities = [\"{bad}\"]\n"),
        );
        assert!(Policy::parse("p", &text).is_err(), "{bad}");
    }
}

fn shipped_with(edit: impl Fn(&str) -> String) -> Policy {
    let text = edit(SHIPPED_POLICY);
    assert_ne!(text, SHIPPED_POLICY, "the edit applies");
    Policy::parse("p", &text).unwrap()
}
