//! Synthetic audit entries for logs grown by direct SQL (the tile
//! benchmark, the upper tree's tests): what a denial writes, canonical,
//! with a fixed seal (no real key: these logs are checkpointed without
//! the seal check).

use dojang::audit::entry::AuditEntry;

/// The canonical bytes of denial `seq` of node `node`.
pub fn audit_entry(node: &str, seq: u64) -> Vec<u8> {
    AuditEntry {
        time: 1_800_000_000 + (seq / 1000) as i64,
        node: node.into(),
        seq,
        actor: "spiffe://mois.go.kr/office-counter".into(),
        action: "issue".into(),
        outcome: "deny".into(),
        rule: Some("holder.min_age".into()),
        policy_hash: None,
        profile: None,
        credential_id: None,
        key_id: None,
        payload_sha256: None,
        holder: None,
        actor_certificate: None,
        seal: Some([0x5e; 32]),
    }
    .encode()
}
