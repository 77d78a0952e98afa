//! What officer steps answer and record: the refusals of dual control
//! and of orders that do not verify, proposals and keys as the API shows
//! them, one-line summaries for logs and metrics, and what a `POST` asks
//! officers to sign.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::json;
use time::OffsetDateTime;

use crate::keys::approvals::{ApprovalError, Operation, Proposal, ProposalState};
use crate::keys::order::{CanonicalProposal, OrderRefusal, digest};
use crate::node::{Node, rfc3339};
use crate::refusal::{Answer, Class, Refusal, Reply};
use crate::store::StoredKey;

/// What a `POST` asks officers to sign: the operation, and a policy
/// change's full text.
pub struct Requested {
    /// The operation.
    pub operation: Operation,
    /// A policy change's text (its SHA-256 is the operation's).
    pub policy_text: Option<String>,
}

pub(super) fn approval_problem(e: &ApprovalError, client: &str) -> Refusal {
    let conflict = |code, rule| Refusal::new(Class::Conflict, code, e.to_string()).with_rule(rule);
    match e {
        ApprovalError::NotOfficer(_) => forbidden(client),
        ApprovalError::AlreadyApproved(_) => conflict("already_approved", "officers.distinct"),
        ApprovalError::Expired(_) => conflict("proposal_expired", "officers.proposal_lifetime"),
        ApprovalError::Decided(_) => conflict("proposal_decided", "officers.decided"),
        ApprovalError::Quorum { .. } => conflict("no_quorum", "officers.approvals_required"),
    }
}

fn forbidden(client: &str) -> Refusal {
    Refusal::new(
        Class::Forbidden,
        "forbidden",
        format!("client {client:?} does not have the officer role"),
    )
    .with_rule("client.role")
}

/// Signatures that do not make an order: refused with the rule, counted
/// (the audit entry is the caller's answer).
pub(super) fn order_problem(node: &Node, operation: &Operation, e: &OrderRefusal) -> Refusal {
    node.metrics
        .order_refused(operation_kind(operation), e.reason());
    let (code, rule) = match e {
        OrderRefusal::Unpinned(_) => ("officer_key_not_pinned", "officers.pinned_key"),
        OrderRefusal::OtherPolicy(_) => ("proposal_policy_changed", "officers.policy_in_force"),
        OrderRefusal::BadSignature(_) | OrderRefusal::Short { .. } => {
            ("unverified_order", "officers.verified_order")
        }
    };
    Refusal::new(Class::Forbidden, code, e.to_string()).with_rule(rule)
}

/// A proposal as the API shows it (`status` says `expired` for an open
/// proposal past its time). `canonical` (base64url) is what officers sign
/// and `digest` its SHA-256: an officer's tool shows the fields it parses
/// from `canonical`, never from the rest.
pub(super) fn proposal_json(p: &Proposal, now: OffsetDateTime) -> serde_json::Value {
    let canonical = CanonicalProposal::of(p).bytes();
    let status = match p.state {
        ProposalState::Open if now >= p.expires_at => "expired",
        ProposalState::Open => "open",
        ProposalState::Approved => "approved",
        ProposalState::Rejected => "rejected",
    };
    json!({
        "id": p.id,
        "operation": p.operation,
        "proposer": p.proposer,
        "created_at": rfc3339(p.created_at),
        "expires_at": rfc3339(p.expires_at),
        "target": p.target,
        "policy_hash": p.policy_hash,
        "approvals": p.signatures.keys().collect::<Vec<_>>(),
        "required": p.required,
        "canonical": URL_SAFE_NO_PAD.encode(&canonical),
        "digest": digest(&canonical),
        "status": status,
        "rejected_by": p.rejected_by,
        "result": p.result,
    })
}

pub(super) fn key_json(k: &StoredKey) -> serde_json::Value {
    let r = &k.record;
    json!({
        "label": r.label,
        "chain": k.chain,
        "kid": k.kid,
        "state": r.state.as_str(),
        "created_at": rfc3339(r.created_at),
        "activate_at": rfc3339(r.activate_at),
        "certificate_not_after": rfc3339(r.cert_not_after),
        "signatures": r.signatures,
        "last_signature_valid_until": r.last_signature_valid_until.map(rfc3339),
        "revoked": k.revocation.as_ref().map(|(reason, at)| json!({"reason": reason, "at": rfc3339(*at)})),
    })
}

pub(super) fn ok(status: Reply, body: serde_json::Value) -> Answer {
    Ok((status, body.to_string().into_bytes()))
}

/// The key an operation names.
pub(super) fn operation_label(operation: &Operation) -> Option<&str> {
    match operation {
        Operation::ActivateKey { label }
        | Operation::RetireKey { label }
        | Operation::DestroyKey { label }
        | Operation::EmergencyRevoke { label, .. } => Some(label),
        Operation::CreateKey { .. } | Operation::GenerateIaca | Operation::ChangePolicy { .. } => {
            None
        }
    }
}

/// One line for logs and the audit log (no reason text: it is free text).
pub(super) fn operation_summary(operation: &Operation) -> String {
    match operation {
        Operation::CreateKey { chain } => format!("rotate {chain}"),
        Operation::ActivateKey { label } => format!("activate {label}"),
        Operation::RetireKey { label } => format!("retire {label}"),
        Operation::DestroyKey { label } => format!("destroy {label}"),
        Operation::EmergencyRevoke { label, .. } => format!("revoke {label}"),
        Operation::ChangePolicy { sha256 } => format!("adopt policy {sha256}"),
        Operation::GenerateIaca => "generate the IACA".to_owned(),
    }
}

/// The operation's kind, as metrics label it.
pub(super) fn operation_kind(operation: &Operation) -> &'static str {
    match operation {
        Operation::CreateKey { .. } => "create_key",
        Operation::ActivateKey { .. } => "activate_key",
        Operation::RetireKey { .. } => "retire_key",
        Operation::DestroyKey { .. } => "destroy_key",
        Operation::EmergencyRevoke { .. } => "emergency_revoke",
        Operation::GenerateIaca => "generate_iaca",
        Operation::ChangePolicy { .. } => "change_policy",
    }
}
