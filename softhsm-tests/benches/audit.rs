//! What auditing adds to an issuance, next to one SoftHSM ES256 signature
//! in the same run: building, encoding and hashing the entry and appending
//! it to the Merkle frontier (every issuance), plus a signed checkpoint
//! (root + HSM signature) amortised over the entries between checkpoints.
//! Target: at most 5 % of a signature. The entry's durable write rides in
//! the issuance's own registry transaction; its CPU cost is measured as the
//! difference between transactions that append an entry and the same
//! transactions without one (SQLite, group commit, 16 writers; process CPU
//! time, since the fsync wait is shared with the issuance's own commit).
//!
//! `cargo bench -p softhsm-tests --bench audit` (or `make bench`).

mod common;

use std::time::Duration;

use common::{per_call, BenchResult};

use dojang::audit::checkpoint::{Checkpoint, NoteKey};
use dojang::audit::entry::AuditEntry;
use dojang::audit::merkle::{leaf_hash, Frontier};
use pkcs11_shim::pkcs11::Pkcs11Backend;
use pkcs11_shim::{Algorithm, KeyBackend, KeyPurpose};

/// Entries between two checkpoints.
const CHECKPOINT_EVERY: u64 = 1000;

fn main() -> BenchResult {
    let (_token, config) = common::token_with_ds_key("ds")?;
    let backend = Pkcs11Backend::open(config)?;
    let audit = backend.generate("audit", KeyPurpose::Audit, Algorithm::EdDsa)?;
    let public = audit.public_key.ok_or("the audit key has no public half")?;
    let note_key = NoteKey::new("dojang.example.kr/audit", public)?;
    let seconds = Duration::from_secs(2);

    let sign_us = per_call(seconds, || {
        let _ = std::hint::black_box(backend.sign(
            "ds",
            pkcs11_shim::KeyPurpose::DocumentSigner,
            &[0x5a; 600],
        )?);
        Ok(())
    })?;
    let mut frontier = Frontier::new();
    let mut seq = 0u64;
    let append_us = per_call(seconds, || {
        let entry = AuditEntry {
            time: 1_800_000_000,
            node: "node-a".into(),
            seq,
            actor: "spiffe://mois.go.kr/office-counter".into(),
            action: "issue".into(),
            outcome: "allow".into(),
            rule: None,
            policy_hash: Some(
                "cf0dafa9c11e79bf9b4c100781b07273b436f3563b0b4c52513377e4e10b4b45".into(),
            ),
            profile: Some("mdoc".into()),
            credential_id: Some(format!("{seq:032x}")),
            key_id: Some("-jym6nYZumwvOfMzAKGkwnsxS9-Bms-PtJOZsx21b7Q".into()),
            payload_sha256: Some([7; 32]),
            holder: Some([9; 32]),
            actor_certificate: None,
            // A seal's 32 bytes, as every entry now carries.
            seal: Some([0x5e; 32]),
        };
        frontier.append(leaf_hash(&entry.encode()));
        seq += 1;
        Ok(())
    })?;
    let checkpoint_us = per_call(seconds, || {
        let cp = Checkpoint {
            origin: "dojang.example.kr/audit-log".into(),
            size: frontier.size(),
            root: frontier.root(),
            extensions: Vec::new(),
        };
        let _ = std::hint::black_box(cp.sign(&backend, "audit", &note_key)?);
        Ok(())
    })?;

    let (store_us, empty_us) = common::audit_sql_cpu_us()?;
    let in_tx_us = (store_us - empty_us).max(0.0);
    println!(
        "audit benchmark: one SoftHSM token, 1 thread, log of {} entries",
        frontier.size()
    );
    println!(
        "{:<44} {:>10.2} µs",
        "SoftHSM ES256 signature (shim)", sign_us
    );
    println!(
        "{:<44} {:>10.2} µs",
        "entry build + encode + leaf hash + append", append_us
    );
    println!(
        "{:<44} {:>10.2} µs",
        "checkpoint (root + Ed25519 in the HSM)", checkpoint_us
    );
    println!(
        "{:<44} {:>10.2} µs",
        "CPU: durable append, own transaction (16 writers)", store_us
    );
    println!(
        "{:<44} {:>10.2} µs",
        "CPU: same transactions without the entry", empty_us
    );
    println!(
        "{:<44} {:>10.2} µs",
        "=> CPU of the append inside a transaction", in_tx_us
    );
    let per_issuance = append_us + in_tx_us + checkpoint_us / CHECKPOINT_EVERY as f64;
    println!(
        "auditing per issuance (entry + its SQL in the issuance's transaction + checkpoint every {CHECKPOINT_EVERY}): {per_issuance:.2} µs = {:.1}% of one signature",
        per_issuance / sign_us * 100.0,
    );
    println!(
        "(the target is <= 5% of an issuance; an issuance costs several signatures' worth of CPU: compare with the daemon_load benchmark's CPU per issuance)"
    );
    Ok(())
}
