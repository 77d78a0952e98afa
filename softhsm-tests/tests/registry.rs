//! One test suite, two registries: SQLite (a temp file) and PostgreSQL (a
//! fresh schema per test in the `test` database at 127.0.0.1:5432). The
//! invariants are checked under real concurrency: many threads, and on
//! PostgreSQL two registries (as two nodes would) sharing one database.
//!
//! Without a reachable PostgreSQL the PostgreSQL half says it was skipped;
//! under CI (`CI` set) it fails instead, so CI can never skip it silently.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
#![allow(clippy::indexing_slicing, clippy::panic, clippy::expect_used)] // test code: a failed expect, panic or index is a failed test

mod common;

use std::sync::Arc;

use dojang::store::{
    CredentialState, DecisionRecord, IdempotencyKey, IssuanceCommit, PostgresRegistry, Pseudonym,
    Refresh, Registry, SqliteRegistry, StoreError, STATUS_LIST_SIZE,
};

const PG_ADMIN: &str = "host=127.0.0.1 port=5432 user=postgres dbname=test connect_timeout=3";

fn postgres_client() -> Result<postgres::Client, postgres::Error> {
    PG_ADMIN
        .parse::<postgres::Config>()?
        .connect(postgres::NoTls)
}

/// A fresh schema and its URL; `None` (with a loud message) when
/// PostgreSQL is not reachable outside CI.
fn pg_schema() -> Option<(softhsm_tests::daemon::PgSchema, String)> {
    softhsm_tests::daemon::PgSchema::create().map(|schema| {
        let url = schema.url.clone();
        (schema, url)
    })
}

fn sqlite() -> (tempfile::TempDir, Arc<dyn Registry>) {
    let dir = tempfile::tempdir().unwrap();
    let reg = SqliteRegistry::open(&dir.path().join("registry.db")).unwrap();
    (dir, Arc::new(reg))
}

macro_rules! both {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use super::*;
            #[test]
            fn sqlite() {
                let (_dir, reg) = super::sqlite();
                super::$name(&[reg]);
            }
            #[test]
            fn postgres() {
                let Some((_pg, url)) = pg_schema() else { return };
                // Two registries on one database: two nodes.
                let a: Arc<dyn Registry> = Arc::new(PostgresRegistry::open(&url, 8).unwrap());
                let b: Arc<dyn Registry> = Arc::new(PostgresRegistry::open(&url, 8).unwrap());
                super::$name(&[a, b]);
            }
        }
    )*};
}

both!(
    issue_and_read_back,
    one_credential_per_person_under_a_race,
    one_person_per_phone_under_a_race,
    the_last_free_copies_never_go_one_over,
    a_new_phone_supersedes_the_old_one,
    idempotent_commits,
    state_changes_follow_the_lifecycle,
    status_positions_are_never_drawn_twice,
    a_list_filled_to_its_mark_hands_out_each_position_once,
    a_refused_commit_leaves_nothing_behind,
    one_free_copy_per_holder,
    idempotency_keys_refuse_another_body_at_commit,
    suspended_holders_are_not_superseded,
    a_panicking_response_builder_fails_only_its_request,
    refresh_only_for_the_owner_of_an_active_credential,
    key_records_move_forward_once_across_nodes,
    revoking_a_key_marks_what_it_signed_and_sweeps_late_commits,
    one_lease_holder_at_a_time,
    proposals_change_only_from_the_version_read,
    the_first_crl_is_stored_once_under_a_race,
    a_batch_is_one_document_in_copies,
    a_batch_changes_state_as_one_and_each_change_is_recorded,
    a_whole_tile_is_read_in_place_of_its_hashes_and_never_replaced,
);

fn key_record(label: &str, state: dojang::keys::lifecycle::KeyState) -> dojang::store::StoredKey {
    let now = time::OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
    dojang::store::StoredKey {
        chain: "ds".into(),
        kid: format!("kid-of-{label}"),
        certificate: None,
        public_key: vec![0x30, 0x00],
        record: dojang::keys::lifecycle::KeyRecord {
            label: label.into(),
            state,
            created_at: now,
            activate_at: now + time::Duration::days(7),
            cert_not_after: now + time::Duration::days(365),
            signatures: 0,
            last_signature_valid_until: None,
            revoked: false,
        },
        revocation: None,
    }
}

fn key_records_move_forward_once_across_nodes(regs: &[Arc<dyn Registry>]) {
    use dojang::keys::lifecycle::KeyState::*;
    let (a, b) = (&regs[0], &regs[regs.len() - 1]);
    a.add_key(&key_record("ds-1", Active), common::decision("keys.import"))
        .unwrap();
    b.add_key(
        &key_record("ds-2", Pending),
        common::decision("keys.generate"),
    )
    .unwrap();
    // One label, one pending key per chain: a second node's duplicate is refused.
    assert_eq!(
        a.add_key(
            &key_record("ds-2", Pending),
            common::decision("keys.generate")
        ),
        Err(StoreError::Conflict { rule: "keys.label" })
    );
    assert_eq!(
        a.add_key(
            &key_record("ds-3", Pending),
            common::decision("keys.generate")
        ),
        Err(StoreError::Conflict {
            rule: "keys.one_pending"
        })
    );
    // Activation: the old key retires and the new one signs from `at` (earlier
    // than it was due), all or nothing, once.
    let at = time::OffsetDateTime::from_unix_timestamp(1_800_000_100).unwrap();
    let moves = vec![
        ("ds-1".to_owned(), Active, Retired),
        ("ds-2".to_owned(), Pending, Active),
    ];
    let results = race(regs, 4, move |r, _| {
        let mut decision = common::decision("keys.activate");
        decision.node = node_of(r);
        r.move_keys(&moves, at, vec![decision])
    });
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        1,
        "{results:?}"
    );
    assert!(results
        .iter()
        .filter_map(|r| r.as_ref().err())
        .all(|e| *e == StoreError::Conflict { rule: "keys.state" }));
    let keys = b.keys().unwrap();
    assert_eq!(keys[0].record.state, Retired);
    assert_eq!(keys[1].record.state, Active);
    assert_eq!(keys[1].record.activate_at, at);
    // Usage adds up from every node; the latest expiry stays.
    a.add_key_usage("ds-2", 3, 1_900_000_000).unwrap();
    b.add_key_usage("ds-2", 2, 1_850_000_000).unwrap();
    let k = &a.keys().unwrap()[1];
    assert_eq!(k.record.signatures, 5);
    assert_eq!(
        k.record
            .last_signature_valid_until
            .unwrap()
            .unix_timestamp(),
        1_900_000_000
    );
    // A retired key does not come back.
    assert_eq!(
        a.move_keys(
            &[("ds-1".into(), Pending, Active)],
            at,
            vec![common::decision("x")]
        ),
        Err(StoreError::Conflict { rule: "keys.state" })
    );
}

fn revoking_a_key_marks_what_it_signed_and_sweeps_late_commits(regs: &[Arc<dyn Registry>]) {
    use dojang::keys::lifecycle::KeyState::*;
    let reg = regs[0].as_ref();
    // `common::issuance` signs with "kid-1": the key of this record.
    let mut key = key_record("ds-1", Active);
    key.kid = "kid-1".into();
    reg.add_key(&key, common::decision("keys.import")).unwrap();
    let c = commit(reg, 1, "d-1");
    let first = c.credential.id.clone();
    let _ = reg.commit_issuance("c", c, respond()).unwrap();
    let revocation = dojang::store::KeyRevocation {
        label: "ds-1".into(),
        reason: "drill".into(),
        at: time::OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap(),
        credentials: Some(CredentialState::Suspended),
    };
    assert_eq!(
        reg.revoke_key(&revocation, common::decision("keys.revoke")),
        Ok(1)
    );
    assert_eq!(
        reg.credential(&first).unwrap().state,
        CredentialState::Suspended
    );
    let k = &reg.keys().unwrap()[0];
    assert!(k.record.revoked && k.record.state == Retired);
    assert_eq!(k.revocation.as_ref().unwrap().0, "drill");
    assert_eq!(
        dojang::store::revoked_serials(&reg.keys().unwrap()).unwrap(),
        Vec::<Vec<u8>>::new(),
        "no certificate here, so no serial"
    );
    // Signed before the revocation, committed after: the sweep catches it.
    let c = commit(reg, 2, "d-2");
    let late = c.credential.id.clone();
    let _ = reg.commit_issuance("c", c, respond()).unwrap();
    assert_eq!(
        reg.credential(&late).unwrap().state,
        CredentialState::Active
    );
    // Each sweep that moves something writes its audit entry with the move.
    let sweep = || -> dojang::store::MovedAudit {
        Box::new(|moved| common::decision(&format!("keys.revoke moved {moved}")))
    };
    let entries = reg.decision_count().unwrap();
    assert_eq!(
        reg.mark_signed_by("kid-1", CredentialState::Suspended, sweep()),
        Ok(1)
    );
    assert_eq!(
        reg.decision_count().unwrap(),
        entries + 2,
        "one entry naming the credential, one for the sweep"
    );
    let late_meta = reg.credential(&late).unwrap();
    assert_eq!(late_meta.state, CredentialState::Suspended);
    assert!(late_meta.suspended_for_key && reg.credential(&first).unwrap().suspended_for_key);
    // What the revoked key signed is never reinstated…
    assert_eq!(
        reg.set_state(
            &first,
            CredentialState::Active,
            common::decision("reinstate")
        )
        .map(|_| ()),
        Err(StoreError::Conflict {
            rule: dojang::store::REINSTATE_KEY_REVOKED
        })
    );
    // …it is refreshed: signed by another key at a new position, the old
    // one revoked for good.
    let new = reg.reserve_status_indexes(1).unwrap();
    let moved = reg
        .refresh(
            refresh(&late, 2, "d-2", Some((new.list, new.indexes[0]))),
            common::decision("refresh"),
        )
        .unwrap();
    assert_eq!(moved.state, CredentialState::Active);
    assert!(!moved.suspended_for_key);
    assert_eq!(
        (moved.kid.as_str(), moved.status_index),
        ("kid-2", new.indexes[0])
    );
    let listed = reg.status_entries(late_meta.status_list).unwrap();
    assert!(listed.contains(&(late_meta.status_index, CredentialState::Revoked)));
    assert!(listed.contains(&(new.indexes[0], CredentialState::Active)));
    // Revoke moves suspended ones too (not the refreshed one: another key
    // signed it); a destroyed key cannot be revoked.
    let entries = reg.decision_count().unwrap();
    assert_eq!(
        reg.mark_signed_by("kid-1", CredentialState::Revoked, sweep()),
        Ok(1)
    );
    assert_eq!(
        reg.mark_signed_by("kid-1", CredentialState::Revoked, sweep()),
        Ok(0)
    );
    assert_eq!(
        reg.decision_count().unwrap(),
        entries + 2,
        "a sweep that moves nothing writes no entry"
    );
    assert_eq!(
        reg.credential(&late).unwrap().state,
        CredentialState::Active
    );
    assert_eq!(
        reg.revoke_key(&revocation, common::decision("keys.revoke"))
            .map(|_| ()),
        Ok(()),
        "revoking again changes nothing and fails nothing"
    );
}

fn one_lease_holder_at_a_time(regs: &[Arc<dyn Registry>]) {
    let (a, b) = (&regs[0], &regs[regs.len() - 1]);
    assert_eq!(a.lease("keys", "node-a", 400), Ok(true));
    assert_eq!(b.lease("keys", "node-b", 400), Ok(false));
    assert_eq!(a.lease("keys", "node-a", 400), Ok(true), "renewed");
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(b.lease("keys", "node-b", 400), Ok(true), "taken over");
    assert_eq!(a.lease("keys", "node-a", 400), Ok(false));
    // Another lease name is independent.
    assert_eq!(a.lease("other", "node-a", 400), Ok(true));
}

fn proposals_change_only_from_the_version_read(regs: &[Arc<dyn Registry>]) {
    use dojang::keys::approvals::{DualControl, Operation};
    let (a, b) = (&regs[0], &regs[regs.len() - 1]);
    let now = time::OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
    let control = DualControl {
        required: 2,
        officers: 3,
        lifetime: time::Duration::hours(1),
    };
    let officers = |id: &str| id.starts_with("officer-");
    let p = control
        .propose(
            "p-0001",
            Operation::CreateKey { chain: "ds".into() },
            "officer-kim",
            officers,
            "policy-hash",
            now,
        )
        .unwrap();
    a.add_proposal(&p, common::decision("officers.propose"))
        .unwrap();
    let stored = b.proposal("p-0001").unwrap();
    assert_eq!(stored.proposal, p);
    // Two officers approve from the same read: one wins.
    let mut lee = stored.proposal.clone();
    lee.sign("officer-lee", "sig-lee".into(), officers, now)
        .unwrap();
    let mut park = stored.proposal.clone();
    park.sign("officer-park", "sig-park".into(), officers, now)
        .unwrap();
    assert_eq!(
        a.update_proposal(&lee, stored.version, common::decision("officers.approve")),
        Ok(())
    );
    assert_eq!(
        b.update_proposal(&park, stored.version, common::decision("officers.approve")),
        Err(StoreError::Conflict {
            rule: "approvals.concurrent"
        })
    );
    let listed = b.proposals(10).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].proposal.signatures.len(), 1);
    assert_eq!(listed[0].proposal, lee);
    assert_eq!(listed[0].version, stored.version + 1);
    assert_eq!(a.proposal("p-nope").err(), Some(StoreError::NotFound));
    // The CRL every node serves, each version with its audit entry.
    let entries = a.decision_count().unwrap();
    assert_eq!(a.crl(), Ok(None));
    let crl = |n: u32| format!("-----BEGIN X509 CRL-----\n{n}\n");
    a.set_crl(&crl(1), None, common::decision("pki.crl"))
        .unwrap();
    assert_eq!(b.crl().unwrap(), Some(crl(1)));
    // A node that read no CRL, or an older one, cannot put its own there.
    let stale = StoreError::Conflict {
        rule: dojang::store::CRL_CONCURRENT,
    };
    assert_eq!(
        b.set_crl(&crl(2), None, common::decision("pki.crl")),
        Err(stale.clone())
    );
    b.set_crl(&crl(2), Some(&crl(1)), common::decision("pki.crl"))
        .unwrap();
    assert_eq!(
        a.set_crl(&crl(3), Some(&crl(1)), common::decision("pki.crl")),
        Err(stale)
    );
    assert_eq!(a.crl().unwrap(), Some(crl(2)));
    assert_eq!(
        a.decision_count().unwrap(),
        entries + 2,
        "refused writes log nothing"
    );
    // A document stored only once: the loser writes neither it nor an entry.
    let first = |reg: &Arc<dyn Registry>, body: &str| {
        reg.set_document_if_absent("iaca.pem", body, common::decision("pki.iaca"))
    };
    assert_eq!(first(a, "root a"), Ok(true));
    assert_eq!(first(b, "root b"), Ok(false));
    assert_eq!(b.document("iaca.pem").unwrap().as_deref(), Some("root a"));
    assert_eq!(a.decision_count().unwrap(), entries + 3);
}

fn pseudonym(n: u32) -> Pseudonym {
    let mut p = [0u8; 32];
    p[..4].copy_from_slice(&n.to_be_bytes());
    p[31] = 0xaa;
    Pseudonym(p)
}

/// The node a registry handle stands for: each is a node of its own, and
/// nodes have names of their own (their audit numbers are their own).
fn node_of(reg: &dyn Registry) -> String {
    format!("node-{:x}", std::ptr::from_ref(reg).cast::<()>() as usize)
}

fn commit(reg: &dyn Registry, holder: u32, device: &str) -> IssuanceCommit {
    let range = reg.reserve_status_indexes(1).unwrap();
    let mut id = [0u8; 16];
    openssl::rand::rand_bytes(&mut id).unwrap();
    let id: String = id.iter().map(|b| format!("{b:02x}")).collect();
    let mut c = common::issuance(&id, pseudonym(holder), device, range.list, range.indexes[0]);
    c.decision.node = node_of(reg);
    c
}

/// A refresh of `id` by holder `holder` on `device`, signed by "kid-2".
fn refresh(id: &str, holder: u32, device: &str, new_position: Option<(u32, u64)>) -> Refresh {
    Refresh {
        id: id.to_owned(),
        holder: pseudonym(holder),
        device: device.to_owned(),
        kid: "kid-2".to_owned(),
        valid_until: 1,
        new_position,
    }
}

fn respond() -> dojang::store::Respond {
    Box::new(|c| format!("free={}", c.free_copy).into_bytes())
}

/// Runs `n` closures at once (spread over the registries), returns their results.
fn race<T: Send + 'static>(
    regs: &[Arc<dyn Registry>],
    n: usize,
    f: impl Fn(&dyn Registry, usize) -> T + Send + Sync + 'static,
) -> Vec<T> {
    let f = Arc::new(f);
    let barrier = Arc::new(std::sync::Barrier::new(n));
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let (f, barrier, reg) = (f.clone(), barrier.clone(), regs[i % regs.len()].clone());
            std::thread::spawn(move || {
                let _ = barrier.wait();
                f(reg.as_ref(), i)
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

fn issue_and_read_back(regs: &[Arc<dyn Registry>]) {
    let reg = regs[0].as_ref();
    let c = commit(reg, 1, "phone-1");
    let id = c.credential.id.clone();
    let (committed, response) = reg.commit_issuance("client", c, respond()).unwrap();
    assert!(!committed.free_copy);
    assert_eq!(response, b"free=false");
    let meta = regs[regs.len() - 1].credential(&id).unwrap();
    assert_eq!(meta.state, CredentialState::Active);
    assert_eq!(meta.document_expiry, "2029-12-27");
    assert_eq!(reg.decision_count().unwrap(), 1);
    let facts = reg.facts(&pseudonym(1), "phone-1").unwrap();
    assert_eq!(facts.holder_live_on_same_device, Some(true));
    let facts = reg.facts(&pseudonym(2), "phone-1").unwrap();
    assert!(facts.device_bound_to_other_holder);
    assert!(matches!(reg.credential("nope"), Err(StoreError::NotFound)));
    reg.ping().unwrap();
}

fn one_credential_per_person_under_a_race(regs: &[Arc<dyn Registry>]) {
    let results = race(regs, 50, |reg, i| {
        let c = commit(reg, 7, &format!("phone-{i}"));
        reg.commit_issuance("client", c, respond())
    });
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(
        ok,
        1,
        "{:?}",
        results
            .iter()
            .filter(|r| r.is_err())
            .take(3)
            .collect::<Vec<_>>()
    );
    for r in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(
            *r,
            StoreError::Conflict {
                rule: "holder.one_active"
            }
        );
    }
    assert_eq!(regs[0].decision_count().unwrap(), 1);
}

fn one_person_per_phone_under_a_race(regs: &[Arc<dyn Registry>]) {
    let results = race(regs, 50, |reg, i| {
        let c = commit(reg, 100 + i as u32, "the-phone");
        reg.commit_issuance("client", c, respond())
    });
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
    for r in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(
            *r,
            StoreError::Conflict {
                rule: "device.one_person"
            }
        );
    }
}

fn the_last_free_copies_never_go_one_over(regs: &[Arc<dyn Registry>]) {
    let reg = regs[0].as_ref();
    reg.set_free_quota(10).unwrap();
    let results = race(regs, 100, |reg, i| {
        let mut c = commit(reg, 1000 + i as u32, &format!("phone-{i}"));
        c.want_free_copy = true;
        reg.commit_issuance("client", c, respond())
            .map(|(c, _)| c.free_copy)
    });
    let free = results.iter().filter(|r| matches!(r, Ok(true))).count();
    let paid = results.iter().filter(|r| matches!(r, Ok(false))).count();
    assert_eq!(
        (free, paid),
        (10, 90),
        "every request issues; exactly the quota is free"
    );
    assert_eq!(reg.free_quota().unwrap(), (10, 10));
    // Lowering the quota below what was used keeps it at what was used.
    reg.set_free_quota(3).unwrap();
    assert_eq!(reg.free_quota().unwrap(), (10, 10));
}

fn a_new_phone_supersedes_the_old_one(regs: &[Arc<dyn Registry>]) {
    let reg = regs[0].as_ref();
    let old = commit(reg, 5, "old-phone");
    let old_id = old.credential.id.clone();
    let _ = reg.commit_issuance("client", old, respond()).unwrap();
    assert_eq!(
        reg.facts(&pseudonym(5), "new-phone")
            .unwrap()
            .holder_live_on_same_device,
        Some(false)
    );
    let mut new = commit(reg, 5, "new-phone");
    new.supersede = true;
    let new_index = new.credential.status_index;
    let (committed, _) = reg.commit_issuance("client", new, respond()).unwrap();
    assert_eq!(committed.superseded, vec![old_id.clone()]);
    assert_eq!(
        reg.credential(&old_id).unwrap().state,
        CredentialState::Superseded
    );
    let entries = reg.status_entries(1).unwrap();
    let old_meta = reg.credential(&old_id).unwrap();
    assert!(entries.contains(&(old_meta.status_index, CredentialState::Superseded)));
    assert!(entries.contains(&(new_index, CredentialState::Active)));
    assert_eq!(CredentialState::Superseded.status_value(), 1);
    // The old phone is free again.
    assert!(
        !reg.facts(&pseudonym(6), "old-phone")
            .unwrap()
            .device_bound_to_other_holder
    );
}

/// A head credential of holder `holder` on `device` with copies on `copies`.
fn batch(reg: &dyn Registry, holder: u32, device: &str, copies: &[&str]) -> IssuanceCommit {
    let mut head = commit(reg, holder, device);
    head.copies = copies
        .iter()
        .map(|d| dojang::store::BatchCopy {
            credential: commit(reg, holder, d).credential,
            payload_sha256: [7; 32],
        })
        .collect();
    head
}

fn a_batch_is_one_document_in_copies(regs: &[Arc<dyn Registry>]) {
    let reg = regs[0].as_ref();
    let first = batch(reg, 40, "key-a", &["key-b", "key-c"]);
    let head = first.credential.id.clone();
    let copies: Vec<String> = first
        .copies
        .iter()
        .map(|c| c.credential.id.clone())
        .collect();
    let decision = first.decision.clone();
    let entries_before = reg.decision_count().unwrap();
    let _ = reg.commit_issuance("client", first, respond()).unwrap();
    // One audit entry for the credential, one per copy.
    assert_eq!(reg.decision_count().unwrap(), entries_before + 3);
    for id in std::iter::once(&head).chain(&copies) {
        assert_eq!(reg.credential(id).unwrap().state, CredentialState::Active);
    }
    // Still one live document per holder, and each copy's key is taken.
    let again = commit(reg, 40, "key-d");
    assert!(matches!(
        reg.commit_issuance("client", again, respond()),
        Err(StoreError::Conflict { .. })
    ));
    let taken = commit(reg, 41, "key-b");
    assert!(matches!(
        reg.commit_issuance("client", taken, respond()),
        Err(StoreError::Conflict { .. })
    ));
    // Suspending a copy suspends the batch; reinstating the head reinstates it.
    let d = |action: &str| DecisionRecord {
        action: action.into(),
        ..decision.clone()
    };
    let _ = reg
        .set_state(&copies[1], CredentialState::Suspended, d("suspend"))
        .unwrap();
    for id in std::iter::once(&head).chain(&copies) {
        assert_eq!(
            reg.credential(id).unwrap().state,
            CredentialState::Suspended,
            "{id}"
        );
    }
    let _ = reg
        .set_state(&head, CredentialState::Active, d("reinstate"))
        .unwrap();
    // A new phone supersedes the whole batch.
    let mut moved = batch(reg, 40, "key-e", &["key-f"]);
    moved.supersede = true;
    let (committed, _) = reg.commit_issuance("client", moved, respond()).unwrap();
    assert_eq!(committed.superseded.len(), 3);
    for id in std::iter::once(&head).chain(&copies) {
        assert_eq!(
            reg.credential(id).unwrap().state,
            CredentialState::Superseded
        );
    }
}

fn a_batch_changes_state_as_one_and_each_change_is_recorded(regs: &[Arc<dyn Registry>]) {
    let reg = regs[0].as_ref();
    let first = batch(reg, 45, "key-45a", &["key-45b", "key-45c"]);
    let head = first.credential.id.clone();
    let copies: Vec<String> = first
        .copies
        .iter()
        .map(|c| c.credential.id.clone())
        .collect();
    let decision = first.decision.clone();
    let _ = reg.commit_issuance("client", first, respond()).unwrap();
    let d = |action: &str| DecisionRecord {
        action: action.into(),
        ..decision.clone()
    };
    let _ = reg
        .set_state(&head, CredentialState::Suspended, d("suspend"))
        .unwrap();
    // The document is suspended, whichever row the facts meet.
    let facts = reg.facts(&pseudonym(45), "key-45c").unwrap();
    assert!(facts.holder_suspended);
    assert_eq!(facts.holder_live_on_same_device, Some(true));
    // Revoking a copy revokes every member, suspended ones too, one audit
    // entry per row.
    let before = reg.decision_count().unwrap();
    let _ = reg
        .set_state(&copies[0], CredentialState::Revoked, d("revoke"))
        .unwrap();
    assert_eq!(reg.decision_count().unwrap(), before + 3);
    for id in std::iter::once(&head).chain(&copies) {
        assert_eq!(reg.credential(id).unwrap().state, CredentialState::Revoked);
    }
}

fn idempotent_commits(regs: &[Arc<dyn Registry>]) {
    let key = IdempotencyKey {
        key: "k-1".into(),
        request_hash: [1; 32],
    };
    let results = race(regs, 10, move |reg, i| {
        let mut c = commit(reg, 9, "phone-9");
        c.idempotency = Some(key.clone());
        reg.commit_issuance(
            "client",
            c,
            Box::new(move |_| format!("response-{i}").into_bytes()),
        )
    });
    let committed: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(committed.len(), 1, "{results:?}");
    let original = committed[0].1.clone();
    for r in &results {
        match r {
            Ok((_, bytes)) => assert_eq!(*bytes, original),
            Err(StoreError::IdempotencyReplay(bytes)) => assert_eq!(*bytes, original),
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    let reg = regs[0].as_ref();
    let same = IdempotencyKey {
        key: "k-1".into(),
        request_hash: [1; 32],
    };
    assert_eq!(
        reg.idempotent_response("client", &same).unwrap(),
        Some(original)
    );
    let other_body = IdempotencyKey {
        key: "k-1".into(),
        request_hash: [2; 32],
    };
    assert_eq!(
        reg.idempotent_response("client", &other_body),
        Err(StoreError::IdempotencyMismatch)
    );
    // Keys are per client.
    assert_eq!(
        reg.idempotent_response("another-client", &other_body)
            .unwrap(),
        None
    );
    // Expired answers go (the commit is stamped with its issuance time).
    let issued = 1_800_000_000;
    assert_eq!(
        reg.purge_idempotency(issued, 100).unwrap(),
        0,
        "not older yet"
    );
    assert_eq!(reg.purge_idempotency(issued + 1, 100).unwrap(), 1);
    assert_eq!(reg.idempotent_response("client", &same).unwrap(), None);
}

fn state_changes_follow_the_lifecycle(regs: &[Arc<dyn Registry>]) {
    let reg = regs[0].as_ref();
    let c = commit(reg, 11, "phone-11");
    let id = c.credential.id.clone();
    let decision = c.decision.clone();
    let _ = reg.commit_issuance("client", c, respond()).unwrap();
    let d = |action: &str| DecisionRecord {
        action: action.into(),
        ..decision.clone()
    };
    assert_eq!(
        reg.set_state(&id, CredentialState::Suspended, d("suspend"))
            .unwrap()
            .state,
        CredentialState::Suspended
    );
    // A suspended credential still holds the phone and the person.
    assert!(
        reg.facts(&pseudonym(12), "phone-11")
            .unwrap()
            .device_bound_to_other_holder
    );
    assert_eq!(
        reg.set_state(&id, CredentialState::Active, d("reinstate"))
            .unwrap()
            .state,
        CredentialState::Active
    );
    assert_eq!(
        reg.set_state(&id, CredentialState::Revoked, d("revoke"))
            .unwrap()
            .state,
        CredentialState::Revoked
    );
    assert_eq!(
        reg.set_state(&id, CredentialState::Active, d("reinstate")),
        Err(StoreError::InvalidTransition {
            from: "revoked",
            to: "active"
        })
    );
    assert_eq!(
        reg.set_state("missing", CredentialState::Revoked, d("revoke")),
        Err(StoreError::NotFound)
    );
    assert_eq!(reg.decision_count().unwrap(), 4);
}

fn status_positions_are_never_drawn_twice(regs: &[Arc<dyn Registry>]) {
    let blocks = race(regs, 20, |reg, _| reg.reserve_status_indexes(200).unwrap());
    let mut drawn: Vec<(u32, u64)> = blocks
        .iter()
        .flat_map(|b| b.indexes.iter().map(move |i| (b.list, *i)))
        .collect();
    assert_eq!(drawn.len(), 4000);
    assert!(drawn.iter().all(|(_, i)| *i < STATUS_LIST_SIZE));
    drawn.sort_unstable();
    drawn.dedup();
    assert_eq!(drawn.len(), 4000, "a position was drawn twice");
    // Drawn at random, not in order: a block is not sorted.
    assert!(blocks.iter().all(|b| !b.indexes.is_sorted()));
}

/// Near its fill mark half a list's positions are kept: most late draws
/// hit one and are drawn again (several per statement on PostgreSQL), and
/// none is handed out twice; the block past the mark opens the next list.
fn a_list_filled_to_its_mark_hands_out_each_position_once(regs: &[Arc<dyn Registry>]) {
    use dojang::store::{STATUS_BLOCK_MAX, STATUS_LIST_FILL};
    let blocks: Vec<_> = (0..=STATUS_LIST_FILL / STATUS_BLOCK_MAX)
        .map(|i| {
            let reg = &regs[i as usize % regs.len()];
            reg.reserve_status_indexes(STATUS_BLOCK_MAX).unwrap()
        })
        .collect();
    let (last, full) = blocks.split_last().unwrap();
    let list = full[0].list;
    assert!(full
        .iter()
        .all(|b| b.list == list && b.indexes.len() == 4096));
    assert_eq!(last.list, list + 1);
    let mut drawn: Vec<u64> = full.iter().flat_map(|b| b.indexes.clone()).collect();
    drawn.sort_unstable();
    drawn.dedup();
    assert_eq!(
        drawn.len() as u64,
        STATUS_LIST_FILL,
        "a position was drawn twice"
    );
    assert!(drawn.iter().all(|i| *i < STATUS_LIST_SIZE));
}

fn a_refused_commit_leaves_nothing_behind(regs: &[Arc<dyn Registry>]) {
    let reg = regs[0].as_ref();
    reg.set_free_quota(5).unwrap();
    let _ = reg
        .commit_issuance("client", commit(reg, 1, "phone-x"), respond())
        .unwrap();
    let decisions = reg.decision_count().unwrap();
    // Another person on the same phone, wanting a free copy: the quota is
    // taken before the insert fails, and must come back with the rollback.
    let mut c = commit(reg, 2, "phone-x");
    c.want_free_copy = true;
    assert_eq!(
        reg.commit_issuance("client", c, respond()).unwrap_err(),
        StoreError::Conflict {
            rule: "device.one_person"
        }
    );
    assert_eq!(reg.free_quota().unwrap(), (0, 5));
    assert_eq!(reg.decision_count().unwrap(), decisions);
}

fn one_free_copy_per_holder(regs: &[Arc<dyn Registry>]) {
    let reg = regs[0].as_ref();
    reg.set_free_quota(100).unwrap();
    let mut first = commit(reg, 3, "phone-a");
    first.want_free_copy = true;
    assert!(
        reg.commit_issuance("client", first, respond())
            .unwrap()
            .0
            .free_copy
    );
    // Moving to a new phone and claiming to be a first-time applicant again.
    let mut again = commit(reg, 3, "phone-b");
    again.want_free_copy = true;
    again.supersede = true;
    let (committed, _) = reg.commit_issuance("client", again, respond()).unwrap();
    assert!(!committed.free_copy);
    assert_eq!(reg.free_quota().unwrap(), (1, 100));
}

fn idempotency_keys_refuse_another_body_at_commit(regs: &[Arc<dyn Registry>]) {
    let reg = regs[0].as_ref();
    let mut c = commit(reg, 4, "phone-4");
    c.idempotency = Some(IdempotencyKey {
        key: "k".into(),
        request_hash: [7; 32],
    });
    let _ = reg.commit_issuance("client", c, respond()).unwrap();
    let mut other = commit(reg, 40, "phone-40");
    other.idempotency = Some(IdempotencyKey {
        key: "k".into(),
        request_hash: [8; 32],
    });
    assert_eq!(
        reg.commit_issuance("client", other, respond()).unwrap_err(),
        StoreError::IdempotencyMismatch
    );
    assert!(matches!(
        reg.reserve_status_indexes(0),
        Err(StoreError::Internal(_))
    ));
    assert!(matches!(
        reg.reserve_status_indexes(dojang::store::STATUS_BLOCK_MAX + 1),
        Err(StoreError::Internal(_))
    ));
}

fn suspended_holders_are_not_superseded(regs: &[Arc<dyn Registry>]) {
    let reg = regs[0].as_ref();
    let c = commit(reg, 21, "phone-21");
    let (id, decision) = (c.credential.id.clone(), c.decision.clone());
    let _ = reg.commit_issuance("client", c, respond()).unwrap();
    let _ = reg
        .set_state(&id, CredentialState::Suspended, decision)
        .unwrap();
    let facts = reg.facts(&pseudonym(21), "phone-22").unwrap();
    assert!(facts.holder_suspended);
    // Were the policy bypassed, the store still keeps the suspended one.
    let mut new = commit(reg, 21, "phone-22");
    new.supersede = true;
    assert_eq!(
        reg.commit_issuance("client", new, respond()).unwrap_err(),
        StoreError::Conflict {
            rule: "holder.one_active"
        }
    );
    assert_eq!(
        reg.credential(&id).unwrap().state,
        CredentialState::Suspended
    );
}

fn a_panicking_response_builder_fails_only_its_request(regs: &[Arc<dyn Registry>]) {
    let reg = regs[0].as_ref();
    let c = commit(reg, 31, "phone-31");
    let id = c.credential.id.clone();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        reg.commit_issuance("client", c, Box::new(|_| panic!("response builder bug")))
    }));
    // SQLite runs the builder on its writer thread: the caller gets an
    // error; PostgreSQL runs it on the caller's thread: the panic reaches it.
    if let Ok(outcome) = result {
        assert!(
            matches!(outcome, Err(StoreError::Unavailable(_))),
            "{outcome:?}"
        );
    }
    assert_eq!(
        reg.credential(&id),
        Err(StoreError::NotFound),
        "nothing of it was kept"
    );
    // The registry still works.
    let _ = reg
        .commit_issuance("client", commit(reg, 32, "phone-32"), respond())
        .unwrap();
}

fn refresh_only_for_the_owner_of_an_active_credential(regs: &[Arc<dyn Registry>]) {
    let reg = regs[0].as_ref();
    let c = commit(reg, 60, "phone-60");
    let id = c.credential.id.clone();
    let decision = c.decision.clone();
    let _ = reg.commit_issuance("client", c, respond()).unwrap();
    let d = |action: &str| DecisionRecord {
        action: action.into(),
        ..decision.clone()
    };
    let other = regs[regs.len() - 1].as_ref();
    let mut first = refresh(&id, 60, "phone-60", None);
    first.valid_until = 1_809_000_000;
    let meta = other.refresh(first, d("refresh")).unwrap();
    assert_eq!(meta.kid, "kid-2");
    assert_eq!(meta.valid_until, 1_809_000_000);
    assert_eq!(meta.document_expiry, "2029-12-27");
    assert_eq!(meta.issued_at, 1_800_000_000);
    for (holder, device) in [(61, "phone-60"), (60, "phone-61")] {
        assert_eq!(
            reg.refresh(refresh(&id, holder, device, None), d("refresh")),
            Err(StoreError::Conflict {
                rule: dojang::store::REFRESH_SAME_OWNER
            })
        );
    }
    assert_eq!(
        reg.refresh(refresh("missing", 60, "phone-60", None), d("refresh")),
        Err(StoreError::NotFound)
    );
    // An active credential keeps its position.
    assert_eq!(
        reg.refresh(refresh(&id, 60, "phone-60", Some((1, 7))), d("refresh")),
        Err(StoreError::InvalidTransition {
            from: "active",
            to: "refreshed"
        })
    );
    let _ = reg
        .set_state(&id, CredentialState::Suspended, d("suspend"))
        .unwrap();
    // A revoker's suspension stands: not refreshed, in place or moved.
    for position in [None, Some((1, 7))] {
        assert_eq!(
            reg.refresh(refresh(&id, 60, "phone-60", position), d("refresh")),
            Err(StoreError::InvalidTransition {
                from: "suspended",
                to: "refreshed"
            })
        );
    }
    assert_eq!(reg.credential(&id).unwrap().kid, "kid-2");
    assert_eq!(reg.decision_count().unwrap(), 3);
}

#[test]
fn postgres_tls_is_verified_when_required() {
    // Debian's PostgreSQL serves a self-signed certificate (or no TLS at
    // all): with sslmode=require neither may be accepted.
    if postgres_client().is_err() && std::env::var_os("CI").is_none() {
        eprintln!("SKIPPED: PostgreSQL not reachable; CI runs this test");
        return;
    }
    let Err(e) = PostgresRegistry::open(&format!("{PG_ADMIN} sslmode=require"), 1) else {
        panic!("an unverified server certificate was accepted");
    };
    assert!(e.to_string().to_lowercase().contains("tls"), "{e}");
}

#[test]
fn a_new_sqlite_registry_uses_small_pages_and_durable_wal() {
    let (dir, _reg) = sqlite();
    let db = rusqlite::Connection::open(dir.path().join("registry.db")).unwrap();
    let pragma = |name: &str| -> String {
        db.query_row(&format!("PRAGMA {name}"), [], |r| {
            r.get::<_, rusqlite::types::Value>(0)
        })
        .map(|v| format!("{v:?}"))
        .unwrap()
    };
    assert_eq!(pragma("page_size"), "Integer(1024)");
    assert_eq!(pragma("journal_mode"), "Text(\"wal\")");
}

#[test]
fn a_revoked_key_s_credentials_are_found_by_index() {
    let (dir, _reg) = sqlite();
    let db = rusqlite::Connection::open(dir.path().join("registry.db")).unwrap();
    let plan: Vec<String> = db
        .prepare("EXPLAIN QUERY PLAN UPDATE credentials SET state = 'revoked' WHERE kid = ?1 AND state = ?2")
        .unwrap()
        .query_map(["kid-1", "active"], |r| r.get::<_, String>(3))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(
        plan.iter().any(|step| step.contains("credentials_by_key")),
        "{plan:?}"
    );
}

/// Nodes that all saw no CRL sign a first one at once: one is stored, with
/// one audit entry, and every other is refused.
fn the_first_crl_is_stored_once_under_a_race(regs: &[Arc<dyn Registry>]) {
    let entries = regs[0].decision_count().unwrap();
    let results = race(regs, 8, |reg, i| {
        reg.set_crl(
            &format!("-----BEGIN X509 CRL-----\nfirst {i}\n"),
            None,
            common::decision("pki.crl"),
        )
    });
    let stored: Vec<usize> = (0..results.len()).filter(|&i| results[i].is_ok()).collect();
    assert_eq!(stored.len(), 1, "{results:?}");
    assert!(results.iter().all(|r| r.is_ok()
        || *r
            == Err(StoreError::Conflict {
                rule: dojang::store::CRL_CONCURRENT
            })));
    assert_eq!(
        regs[0].crl().unwrap(),
        Some(format!("-----BEGIN X509 CRL-----\nfirst {}\n", stored[0]))
    );
    assert_eq!(regs[0].decision_count().unwrap(), entries + 1);
}

/// A tile stored whole answers the ranges inside it from its one row; it is
/// stored once (another is refused) and only at full width.
fn a_whole_tile_is_read_in_place_of_its_hashes_and_never_replaced(regs: &[Arc<dyn Registry>]) {
    let (writer, reader) = (&regs[0], regs.last().unwrap());
    let hashes = |tag: u8| -> Vec<[u8; 32]> { (0..=255u8).map(|i| [tag ^ i; 32]).collect() };
    writer.add_audit_tile_hashes(1, 0, &hashes(0)).unwrap();
    let read = |ranges: &[(u8, u64, u64)]| reader.audit_hash_ranges(ranges).unwrap();
    assert_eq!(read(&[(1, 10, 20)]), vec![hashes(0)[10..20].to_vec()]);

    // Rows and whole tile differ here only to show which one is read.
    writer.add_audit_full_tiles(1, 0, &[hashes(0x80)]).unwrap();
    assert_eq!(
        read(&[(1, 10, 20), (1, 255, 256)]),
        vec![hashes(0x80)[10..20].to_vec(), hashes(0x80)[255..].to_vec()]
    );
    // A range beyond the tile is read hash by hash.
    assert_eq!(read(&[(1, 250, 260)]), vec![hashes(0)[250..].to_vec()]);

    let refused = Err(StoreError::Conflict {
        rule: "audit.tile_hash",
    });
    writer.add_audit_full_tiles(1, 0, &[hashes(0x80)]).unwrap();
    assert_eq!(writer.add_audit_full_tiles(1, 0, &[hashes(0x40)]), refused);
    assert_eq!(
        writer.add_audit_full_tiles(1, 1, &[hashes(0x40)[..255].to_vec()]),
        refused
    );
    assert_eq!(read(&[(1, 0, 1)]), vec![hashes(0x80)[..1].to_vec()]);
}

fn key_4100() -> IdempotencyKey {
    IdempotencyKey {
        key: "k-4100".into(),
        request_hash: [41; 32],
    }
}

/// PostgreSQL issues in one statement; with every quota shard locked
/// (statements in flight elsewhere) the statement waits for one: the
/// issuance ends with its free copy, taken once, and its key's response,
/// once the shards are free — no void, no transaction.
#[test]
fn a_free_copy_behind_locked_shards_is_waited_for_on_postgres() {
    let Some((pg, url)) = pg_schema() else { return };
    let reg: Arc<dyn Registry> = Arc::new(PostgresRegistry::open(&url, 8).unwrap());
    reg.set_free_quota(100).unwrap();
    let mut insider = softhsm_tests::daemon::PgSchema::admin();
    let shards = pg.hold_quota_shards(&mut insider);
    let waiting = {
        let reg = Arc::clone(&reg);
        std::thread::spawn(move || {
            let mut c = commit(reg.as_ref(), 4100, "phone-4100");
            c.want_free_copy = true;
            c.idempotency = Some(key_4100());
            reg.commit_issuance("client", c, respond())
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(!waiting.is_finished(), "the issuance waits for a shard");
    shards.commit().unwrap();
    let (committed, response) = waiting.join().unwrap().unwrap();
    assert!(committed.free_copy);
    assert_eq!(response, b"free=true");
    // Its key keeps the response built for it.
    assert_eq!(
        reg.idempotent_response("client", &key_4100()).unwrap(),
        Some(b"free=true".to_vec())
    );
    assert_eq!(reg.free_quota().unwrap(), (1, 100));
    // Plain issuances take the one-statement path; the count stays exact.
    for i in 0..5 {
        let mut c = commit(reg.as_ref(), 4200 + i, &format!("phone-{}", 4200 + i));
        c.want_free_copy = true;
        let (committed, _) = reg.commit_issuance("client", c, respond()).unwrap();
        assert!(committed.free_copy);
    }
    assert_eq!(reg.free_quota().unwrap(), (6, 100));
    // Six entries, no void: no statement gave its number up.
    for _ in 0..3 {
        let _ = reg.sequence_audit().unwrap();
    }
    let entries = reg.audit_entries(0, 100).unwrap();
    let voids = entries
        .iter()
        .filter(|e| dojang::audit::entry::AuditEntry::decode(e).unwrap().action == "audit.void")
        .count();
    assert_eq!((entries.len(), voids), (6, 0));
}

/// Free copies taken at once from eight threads on PostgreSQL: every
/// statement writes its issuance, so no number is given up to a void. The
/// shard is picked once per statement; picked in the update's `WHERE`, it
/// was picked again (`random()`) when the update rechecked a row another
/// statement had just changed, matched nothing, and about one statement in
/// 200 left a `statement.wrote_nothing` void.
#[test]
fn free_copies_taken_at_once_leave_no_void_on_postgres() {
    let Some((_pg, url)) = pg_schema() else {
        return;
    };
    let reg: Arc<dyn Registry> = Arc::new(PostgresRegistry::open(&url, 8).unwrap());
    reg.set_free_quota(1_000_000).unwrap();
    let (threads, each) = (8, 600);
    let _ = race(&[Arc::clone(&reg)], threads, move |reg, t| {
        for i in 0..each {
            let holder = u32::try_from(20_000 + t * each + i).unwrap();
            let mut c = commit(reg, holder, &format!("phone-{holder}"));
            c.want_free_copy = true;
            let (committed, _) = reg.commit_issuance("client", c, respond()).unwrap();
            assert!(committed.free_copy);
        }
    });
    let issued = (threads * each) as u64;
    assert_eq!(reg.free_quota().unwrap(), (issued, 1_000_000));
    sequence_all(reg.as_ref());
    let entries = reg.audit_entries(0, issued + 100).unwrap();
    let voids = entries
        .iter()
        .filter(|e| dojang::audit::entry::AuditEntry::decode(e).unwrap().action == "audit.void")
        .count();
    assert_eq!((entries.len() as u64, voids), (issued, 0));
}

/// Places every recorded decision, and voids for the numbers given up, in
/// the log. The sequencer's advisory lock is database-wide, so a test in
/// another schema sequencing at the same moment makes a round place
/// nothing: rounds go on until nothing recorded is left unplaced.
fn sequence_all(reg: &dyn Registry) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let placed = reg.sequence_audit().unwrap();
        if placed == 0 && reg.audit_size().unwrap() == reg.decision_count().unwrap() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "decisions left unplaced"
        );
        if placed == 0 {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

/// A commit asking for a free copy for each of `holders`, each on a phone
/// of its own.
fn free_copy_commits(reg: &dyn Registry, holders: &[u32]) -> Vec<IssuanceCommit> {
    holders
        .iter()
        .enumerate()
        .map(|(i, &holder)| {
            let mut c = commit(reg, holder, &format!("phone-{holder}-{i}"));
            c.want_free_copy = true;
            c
        })
        .collect()
}

/// The log once every decision is placed, decoded, and the rules of its
/// voids.
fn placed_entries(reg: &dyn Registry) -> (Vec<dojang::audit::entry::AuditEntry>, Vec<String>) {
    sequence_all(reg);
    let entries: Vec<_> = reg
        .audit_entries(0, 100)
        .unwrap()
        .iter()
        .map(|e| dojang::audit::entry::AuditEntry::decode(e).unwrap())
        .collect();
    let void_rules = entries
        .iter()
        .filter(|e| e.action == "audit.void")
        .map(|v| v.rule.clone().unwrap_or_default())
        .collect();
    (entries, void_rules)
}

/// Issues `commits` on PostgreSQL, the first alone and the others queued
/// behind it: `reg` writes one issuance group at a time (a pool of two),
/// and the first group's statement waits on the free-copy shards, which an
/// insider's transaction holds until the others have had time to queue.
/// Each result, in order.
fn issue_behind_a_held_group(
    reg: &Arc<PostgresRegistry>,
    schema: &softhsm_tests::daemon::PgSchema,
    commits: Vec<IssuanceCommit>,
) -> Vec<Result<bool, StoreError>> {
    let mut insider = softhsm_tests::daemon::PgSchema::admin();
    let insider_pid: i32 = insider
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0);
    let held = schema.hold_quota_shards(&mut insider);
    let spawn = |c: IssuanceCommit| {
        let reg = Arc::clone(reg);
        std::thread::spawn(move || {
            reg.commit_issuance("client", c, respond())
                .map(|(committed, _)| committed.free_copy)
        })
    };
    let mut commits = commits.into_iter();
    let mut issuing = vec![spawn(commits.next().unwrap())];
    let mut watcher = softhsm_tests::daemon::PgSchema::admin();
    let waiting = format!(
        "SELECT COUNT(*) FROM pg_stat_activity WHERE {insider_pid} = ANY(pg_blocking_pids(pid))"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while watcher.query_one(&waiting, &[]).unwrap().get::<_, i64>(0) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the first issuance never waited"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    issuing.extend(commits.map(spawn));
    // Well within the connections' 5 s lock timeout.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    held.commit().unwrap();
    issuing.into_iter().map(|h| h.join().unwrap()).collect()
}

/// Issuances that arrive while a node's groups are all in flight are
/// written together, by one statement, each as it would have been alone:
/// the quota moves by each free copy, and the log holds one entry each and
/// no void.
#[test]
fn issuances_queued_behind_a_group_in_flight_are_written_as_one_on_postgres() {
    let Some(schema) = softhsm_tests::daemon::PgSchema::create() else {
        return;
    };
    let reg = Arc::new(PostgresRegistry::open(&schema.url, 2).unwrap());
    reg.set_free_quota(100_000).unwrap();
    let holders: Vec<u32> = (31_000..31_007).collect();
    let commits = free_copy_commits(reg.as_ref(), &holders);
    let results = issue_behind_a_held_group(&reg, &schema, commits);
    assert!(results.iter().all(|r| *r == Ok(true)), "{results:?}");
    assert_eq!(
        reg.upkeep().grouped_issuances,
        6,
        "the six queued went in as one group"
    );
    assert_eq!(reg.free_quota().unwrap(), (7, 100_000));
    let (entries, voids) = placed_entries(reg.as_ref());
    assert_eq!((entries.len(), voids.len()), (7, 0));
}

/// Two issuances for one holder (a retried request, a twin) queued
/// together: the second is left out of the group and goes on alone, in its
/// own transaction, which refuses it by the one-live-credential rule; the
/// group writes the others, so a twin cannot make its neighbours wait for
/// transactions of their own.
#[test]
fn a_twin_queued_with_a_group_goes_on_alone_on_postgres() {
    let Some(schema) = softhsm_tests::daemon::PgSchema::create() else {
        return;
    };
    let reg = Arc::new(PostgresRegistry::open(&schema.url, 2).unwrap());
    reg.set_free_quota(100_000).unwrap();
    let commits = free_copy_commits(reg.as_ref(), &[32_000, 32_001, 32_002, 32_003, 32_002]);
    let results = issue_behind_a_held_group(&reg, &schema, commits);
    // Whichever twin reached the queue second is refused.
    let refused: Vec<_> = (0..results.len())
        .filter(|&i| results[i].is_err())
        .collect();
    assert!(refused == [2] || refused == [4], "{results:?}");
    for i in refused {
        assert_eq!(
            results[i],
            Err(StoreError::Conflict {
                rule: "holder.one_active"
            })
        );
    }
    assert_eq!(results.iter().filter(|r| **r == Ok(true)).count(), 4);
    assert_eq!(
        reg.upkeep().grouped_issuances,
        3,
        "the group wrote the three others"
    );
    assert_eq!(reg.free_quota().unwrap(), (4, 100_000));
    let (entries, rules) = placed_entries(reg.as_ref());
    // At most the refused twin's transaction's number, if it took one.
    assert!(
        rules.iter().all(|r| r == "transaction.rolled_back") && rules.len() <= 1,
        "{rules:?}"
    );
    assert_eq!(entries.len(), 4 + rules.len());
}

/// A group refused by the database (a holder in it was issued by another
/// node while the group waited) writes nothing: its numbers are voided as
/// rolled back, and each of its issuances goes on alone, in its own
/// transaction, so only that holder's is refused.
#[test]
fn a_group_refused_for_one_holder_sends_each_issuance_on_alone_on_postgres() {
    let Some(schema) = softhsm_tests::daemon::PgSchema::create() else {
        return;
    };
    let reg = Arc::new(PostgresRegistry::open(&schema.url, 2).unwrap());
    let other_node = PostgresRegistry::open(&schema.url, 2).unwrap();
    reg.set_free_quota(100_000).unwrap();
    let commits = free_copy_commits(reg.as_ref(), &[34_000, 34_001, 34_002, 34_003, 34_004]);
    // The other node issues 34_002 (no free copy: it needs no shard) while
    // the group is held.
    let elsewhere = commit(&other_node, 34_002, "phone-34002-elsewhere");
    let other = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(300));
        other_node
            .commit_issuance("client", elsewhere, respond())
            .map(|_| ())
    });
    let results = issue_behind_a_held_group(&reg, &schema, commits);
    other.join().unwrap().unwrap();
    assert_eq!(
        results,
        [
            Ok(true),
            Ok(true),
            Err(StoreError::Conflict {
                rule: "holder.one_active"
            }),
            Ok(true),
            Ok(true)
        ]
    );
    assert_eq!(reg.upkeep().grouped_issuances, 0, "the group wrote nothing");
    assert_eq!(reg.free_quota().unwrap(), (4, 100_000));
    let (entries, rules) = placed_entries(reg.as_ref());
    // The group's four numbers, and the refused one's transaction's if it
    // took one.
    assert!(
        rules.iter().all(|r| r == "transaction.rolled_back") && (4..=5).contains(&rules.len()),
        "{:?}",
        entries
            .iter()
            .map(|e| (&e.action, &e.rule, &e.node, e.seq))
            .collect::<Vec<_>>()
    );
    // Five credentials: four here, one on the other node.
    assert_eq!(entries.len(), 5 + rules.len());
}

/// A group's free copies come from one quota shard: when no shard has room
/// for all of them (a quota of 100 is 64 shards of one or two), the group
/// writes nothing, its numbers are voided as such, and each issuance takes
/// its free copy in its own transaction, from any shard with room.
#[test]
fn a_group_no_shard_has_room_for_sends_each_issuance_on_alone_on_postgres() {
    let Some(schema) = softhsm_tests::daemon::PgSchema::create() else {
        return;
    };
    let reg = Arc::new(PostgresRegistry::open(&schema.url, 2).unwrap());
    reg.set_free_quota(100).unwrap();
    let holders: Vec<u32> = (33_000..33_005).collect();
    let commits = free_copy_commits(reg.as_ref(), &holders);
    let results = issue_behind_a_held_group(&reg, &schema, commits);
    assert!(results.iter().all(|r| *r == Ok(true)), "{results:?}");
    assert_eq!(reg.upkeep().grouped_issuances, 0);
    assert_eq!(reg.free_quota().unwrap(), (5, 100));
    let (entries, rules) = placed_entries(reg.as_ref());
    assert_eq!(rules, ["statement.wrote_nothing"; 4]);
    assert_eq!(entries.len(), 5 + 4);
}

/// A holder who had a free copy (revoked since) asks for one again, in a
/// group: the group writes nothing rather than give a second one, its
/// numbers are voided as such, and the holder's own transaction issues a
/// paid copy; the others take their free copies alone.
#[test]
fn a_group_with_a_holder_who_had_a_free_copy_writes_nothing_on_postgres() {
    let Some(schema) = softhsm_tests::daemon::PgSchema::create() else {
        return;
    };
    let reg = Arc::new(PostgresRegistry::open(&schema.url, 2).unwrap());
    reg.set_free_quota(100_000).unwrap();
    let mut first = commit(reg.as_ref(), 36_002, "phone-36002-before");
    first.want_free_copy = true;
    let revoked = first.credential.id.clone();
    let revoke = DecisionRecord {
        action: "revoke".into(),
        ..first.decision.clone()
    };
    let (committed, _) = reg.commit_issuance("client", first, respond()).unwrap();
    assert!(committed.free_copy);
    let _ = reg
        .set_state(&revoked, CredentialState::Revoked, revoke)
        .unwrap();
    let commits = free_copy_commits(reg.as_ref(), &[36_000, 36_001, 36_002, 36_003, 36_004]);
    let results = issue_behind_a_held_group(&reg, &schema, commits);
    assert_eq!(results, [Ok(true), Ok(true), Ok(false), Ok(true), Ok(true)]);
    assert_eq!(reg.upkeep().grouped_issuances, 0, "the group wrote nothing");
    assert_eq!(reg.free_quota().unwrap(), (5, 100_000));
    let (entries, rules) = placed_entries(reg.as_ref());
    assert_eq!(rules, ["statement.wrote_nothing"; 4]);
    // The first copy, its revocation, five issuances and four voids.
    assert_eq!(entries.len(), 2 + 5 + 4);
}

/// A statement that cannot give the free copy asked for (no shard has room
/// left) writes nothing: the transaction decides (a paid copy), and the
/// statement's audit number is filled by a void that says why.
#[test]
fn a_statement_that_wrote_nothing_is_voided_as_such_on_postgres() {
    let Some((_pg, url)) = pg_schema() else {
        return;
    };
    let reg = PostgresRegistry::open(&url, 8).unwrap();
    reg.set_free_quota(0).unwrap();
    let mut c = commit(&reg, 4300, "phone-4300");
    c.want_free_copy = true;
    let (committed, response) = reg.commit_issuance("client", c, respond()).unwrap();
    assert!(!committed.free_copy);
    assert_eq!(response, b"free=false");
    for _ in 0..3 {
        let _ = reg.sequence_audit().unwrap();
    }
    let rules: Vec<(String, Option<String>)> = reg
        .audit_entries(0, 100)
        .unwrap()
        .iter()
        .map(|e| {
            let e = dojang::audit::entry::AuditEntry::decode(e).unwrap();
            (e.action, e.rule)
        })
        .collect();
    let voids: Vec<_> = rules.iter().filter(|(a, _)| a == "audit.void").collect();
    assert_eq!(voids.len(), 1, "{rules:?}");
    assert_eq!(voids[0].1.as_deref(), Some("statement.wrote_nothing"));
    assert_eq!(rules.len(), 2, "{rules:?}");
}

/// A node frozen inside a transaction (a stopped VM between two
/// statements: its kernel still answers for the socket) held the rows it
/// had written, and the other nodes' writes to them waited and then failed
/// on `lock_timeout` (`daemon_cluster`'s frozen node, once in CI). The
/// server ends a session idle in a transaction after 10 s, which gives the
/// rows back. Here the transaction stops in the response builder, which a
/// superseding issuance runs between its statements.
#[test]
fn a_node_frozen_inside_a_transaction_gives_its_rows_back_on_postgres() {
    let Some((_pg, url)) = pg_schema() else {
        return;
    };
    let frozen: Arc<dyn Registry> = Arc::new(PostgresRegistry::open(&url, 4).unwrap());
    let other: Arc<dyn Registry> = Arc::new(PostgresRegistry::open(&url, 4).unwrap());
    let (inside, entered) = std::sync::mpsc::channel::<()>();
    let (wake, asleep) = std::sync::mpsc::channel::<()>();
    let mut c = commit(frozen.as_ref(), 4700, "phone-4700");
    c.supersede = true;
    let stopped = {
        let frozen = Arc::clone(&frozen);
        std::thread::spawn(move || {
            let builder: dojang::store::Respond = Box::new(move |_| {
                let _ = inside.send(());
                let _ = asleep.recv();
                b"too late".to_vec()
            });
            frozen.commit_issuance("client", c, builder)
        })
    };
    entered.recv().unwrap();
    // The server's bound (IDLE_IN_TRANSACTION_MS) and a margin; the other
    // node's lock wait alone (5 s) would not outlast a frozen node.
    std::thread::sleep(std::time::Duration::from_millis(11_500));
    let on_other_phone = commit(other.as_ref(), 4700, "phone-4701");
    let (committed, _) = other
        .commit_issuance("client", on_other_phone, respond())
        .expect("the frozen node's rows were given back");
    assert!(
        committed.superseded.is_empty(),
        "nothing of the frozen node's was live"
    );
    wake.send(()).unwrap();
    assert!(
        stopped.join().unwrap().is_err(),
        "the frozen node's transaction was ended, not committed"
    );
    let facts = other.facts(&pseudonym(4700), "phone-4701").unwrap();
    assert_eq!(facts.holder_live_on_same_device, Some(true));
}
