//! Whether a policy was adopted by officers: the registry's record of its
//! adoption, checked down to the first policy. The registry can lie, so a
//! node never runs a policy because a row names it: the first policy must
//! carry M signatures of the officers it names, every later one a change
//! proposal signed by M officers of the policy before it, over its full
//! text.

use dojang_policies::Policy;

use crate::keys::approvals::{Operation, Proposal};
use crate::keys::order::{Adoption, verify_first, verify_order};
use crate::store::{POLICY_DOCUMENT, Registry, policy_adoption_document, policy_text_document};

/// Policy changes a chain may hold before the check gives up (a loop in a
/// forged record must not hang a node).
const MAX_CHANGES: usize = 256;

/// Checks how `policy` (whose text is `text`) was adopted, down to the
/// first policy, which must be `anchor` (the SHA-256 pinned at the key
/// ceremony, outside the registry: a first policy any database writer can
/// self-sign is not enough); the hashes of the policies it descends from,
/// itself first and the first policy last, or why not.
pub fn verify_adoption(
    registry: &dyn Registry,
    policy: &Policy,
    text: &str,
    anchor: &str,
) -> Result<Vec<String>, String> {
    let mut current = (policy.clone(), text.to_owned());
    let mut lineage = Vec::new();
    for _ in 0..MAX_CHANGES {
        let (policy, text) = &current;
        lineage.push(policy.hash.clone());
        let record = registry
            .document(&policy_adoption_document(&policy.hash))
            .map_err(|e| format!("registry: {e}"))?
            .ok_or_else(|| format!("no record of officers adopting policy {}", policy.hash))?;
        let adoption: Adoption = serde_json::from_str(&record).map_err(|e| {
            format!(
                "the adoption record of policy {} is unreadable: {e}",
                policy.hash
            )
        })?;
        let proposal = match adoption {
            Adoption::First { signatures } => {
                if !policy.hash.eq_ignore_ascii_case(anchor) {
                    return Err(format!(
                        "its history starts at policy {}, not at the first policy pinned at the key ceremony \
                         (server.policy_anchor {anchor})",
                        policy.hash
                    ));
                }
                return verify_first(policy, text, &signatures)
                    .map(|()| lineage)
                    .map_err(|e| format!("the first policy {}: {e}", policy.hash));
            }
            Adoption::Change { proposal } => proposal,
        };
        let names_this = matches!(&proposal.operation, Operation::ChangePolicy { sha256 } if *sha256 == policy.hash)
            && proposal.policy_text.as_deref() == Some(text.as_str());
        if !names_this {
            return Err(format!(
                "the adoption record of policy {} is for another policy",
                policy.hash
            ));
        }
        let (before, before_text) = kept_policy(registry, &proposal.policy_hash)?;
        verify_order(&proposal, &before).map_err(|e| {
            format!(
                "policy {} was not adopted by the officers of {}: {e}",
                policy.hash, before.hash
            )
        })?;
        current = (before, before_text);
    }
    Err(format!("more than {MAX_CHANGES} policy changes to check"))
}

/// The policy of SHA-256 `hash` as the registry keeps its text (a text
/// with another hash fails the signature checks that follow: its hash is
/// what officers signed).
fn kept_policy(registry: &dyn Registry, hash: &str) -> Result<(Policy, String), String> {
    let text = registry
        .document(&policy_text_document(hash))
        .map_err(|e| format!("registry: {e}"))?
        .ok_or_else(|| format!("the registry lost the text of policy {hash}"))?;
    let policy = Policy::parse("a kept policy", &text).map_err(|e| e.to_string())?;
    Ok((policy, text))
}

/// Checks a proposal carried out earlier, perhaps under an earlier policy:
/// that policy must be one the policy in force descends from (`lineage`,
/// from [`verify_adoption`]), and M of its officers must have signed.
pub fn verify_past_order(
    registry: &dyn Registry,
    lineage: &[String],
    proposal: &Proposal,
) -> Result<(), String> {
    if !lineage.contains(&proposal.policy_hash) {
        return Err(format!(
            "proposal {} was signed under policy {}, not one the policy in force descends from",
            proposal.id, proposal.policy_hash
        ));
    }
    let (then, _) = kept_policy(registry, &proposal.policy_hash)?;
    verify_order(proposal, &then).map_err(|e| format!("proposal {}: {e}", proposal.id))
}

/// The policy the registry names as adopted, its text and lineage, checked
/// down to `anchor` (for tools that read the registry: `dojangctl`).
pub fn adopted_policy(
    registry: &dyn Registry,
    anchor: &str,
) -> Result<(Policy, String, Vec<String>), String> {
    let hash = registry
        .document(POLICY_DOCUMENT)
        .map_err(|e| format!("registry: {e}"))?
        .ok_or("the registry has no adopted policy yet (officers adopt the first one: dojangctl policy adopt-first)")?;
    let text = registry
        .document(&policy_text_document(&hash))
        .map_err(|e| format!("registry: {e}"))?
        .ok_or_else(|| {
            format!(
                "the registry does not hold the text of adopted policy {hash}: no node has loaded it yet; \
                 the officers who proposed it have the file"
            )
        })?;
    let policy = Policy::parse("the registry's copy", &text).map_err(|e| e.to_string())?;
    if policy.hash != hash {
        return Err(format!(
            "the registry's text of policy {hash} hashes to {}",
            policy.hash
        ));
    }
    let lineage = verify_adoption(registry, &policy, &text, anchor)
        .map_err(|e| format!("policy {hash} was not adopted by officers: {e}"))?;
    Ok((policy, text, lineage))
}
