//! [`Officers`]: operations under dual control (`/v1/keys`,
//! `/v1/approvals`). An officer proposes (rotate, revoke, activate, retire
//! or destroy a key, adopt a policy, generate the IACA), other officers
//! approve until the policy's M is reached, and the node that records the
//! last approval carries it out. Proposals live in the registry, so any
//! node can take any step; each step is an audit entry. The router admits
//! only officers (and auditors to the key list).

use std::sync::Arc;

use dojang_policies::{Policy, Role};
use serde::Deserialize;
use serde_json::json;
use time::OffsetDateTime;

use crate::errors::{json_refusal, store_refusal};
use crate::keys::approvals::{ApprovalError, DualControl, Operation, Proposal, ProposalState};
use crate::keys::manager::KeyManager;
use crate::node::{LoadError, Node, rfc3339};
use crate::policy::PolicyState;
use crate::refusal::{Answer, Class, Refusal, Reply};
use crate::store::{StoreError, StoredKey};

/// Proposals a listing returns at most.
pub(super) const LIST_LIMIT: u32 = 200;
/// An approved proposal without a result this long after its approval was
/// abandoned by the node that approved it (longer than any operation:
/// a large revocation sweep, the IACA's generation).
pub(super) const UNFINISHED_AFTER_SECONDS: i64 = 600;

/// Loads the policy and keys again after an approved change (a service
/// concern: the officers only ask for it).
pub trait Reload: Send + Sync {
    /// Reloads; the old state stays on an error.
    fn reload(&self, now: OffsetDateTime) -> Result<(), LoadError>;
}

/// Officer operations.
pub struct Officers {
    pub(super) node: Node,
    pub(super) policy: Arc<PolicyState>,
    pub(super) keys: Arc<KeyManager>,
    pub(super) reloader: Arc<dyn Reload>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ApproveBody {
    operation: Operation,
}

pub(super) fn approval_problem(e: &ApprovalError, client: &str) -> Refusal {
    let conflict = |code, rule| Refusal::new(Class::Conflict, code, e.to_string()).with_rule(rule);
    match e {
        ApprovalError::NotOfficer(_) => forbidden(client),
        ApprovalError::SelfApproval => Refusal::new(
            Class::Forbidden,
            "self_approval",
            "an officer cannot approve their own proposal: another officer must",
        )
        .with_rule("officers.two_person"),
        ApprovalError::AlreadyApproved(_) => conflict("already_approved", "officers.distinct"),
        ApprovalError::Expired(_) => conflict("proposal_expired", "officers.proposal_lifetime"),
        ApprovalError::Decided(_) => conflict("proposal_decided", "officers.decided"),
        ApprovalError::Quorum { .. } => conflict("no_quorum", "officers.approvals_required"),
    }
}

pub(super) fn forbidden(client: &str) -> Refusal {
    Refusal::new(
        Class::Forbidden,
        "forbidden",
        format!("client {client:?} does not have the officer role"),
    )
    .with_rule("client.role")
}

/// A proposal as the API shows it (`status` says `expired` for an open
/// proposal past its time).
pub(super) fn proposal_json(p: &Proposal, now: OffsetDateTime) -> serde_json::Value {
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
        "approvals": p.approvals,
        "required": p.required,
        "status": status,
        "rejected_by": p.rejected_by,
        "result": p.result,
    })
}

fn key_json(k: &StoredKey) -> serde_json::Value {
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

/// Approves or rejects `proposal` as `client`; the proposal's new status.
fn step(
    proposal: &mut Proposal,
    client: &str,
    approve: bool,
    policy: &Policy,
    now: OffsetDateTime,
) -> Result<&'static str, Refusal> {
    let is_officer = |who: &str| policy.has_role(who, Role::Officer);
    if approve {
        proposal
            .approve(client, is_officer, policy.officers.approvals_required, now)
            .map(|state| {
                if state == ProposalState::Approved {
                    "approved"
                } else {
                    "open"
                }
            })
    } else {
        proposal
            .reject(client, is_officer, now)
            .map(|()| "rejected")
    }
    .map_err(|e| approval_problem(&e, client))
}

impl Officers {
    /// Officer operations over the key manager; `reloader` reloads the
    /// service after an adopted policy or a generated IACA.
    pub fn new(
        node: Node,
        policy: Arc<PolicyState>,
        keys: Arc<KeyManager>,
        reloader: Arc<dyn Reload>,
    ) -> Self {
        Officers {
            node,
            policy,
            keys,
            reloader,
        }
    }

    fn officer_step(&self, step: &str, answer: &Answer) {
        self.node
            .metrics
            .officer_steps
            .with_label_values(&[step, if answer.is_ok() { "ok" } else { "refused" }])
            .inc();
    }

    /// `GET /v1/keys`: every key record (officers and auditors).
    pub fn list_keys(&self) -> Answer {
        let keys = self.node.registry.keys().map_err(store_refusal)?;
        ok(
            Reply::Ok,
            json!({ "keys": keys.iter().map(key_json).collect::<Vec<_>>() }),
        )
    }

    /// `GET /v1/approvals`: proposals, newest first.
    pub fn list_proposals(&self) -> Answer {
        let now = OffsetDateTime::now_utc();
        let proposals = self
            .node
            .registry
            .proposals(LIST_LIMIT)
            .map_err(store_refusal)?;
        ok(
            Reply::Ok,
            json!({
                "proposals": proposals
                    .iter()
                    .map(|p| proposal_json(&p.proposal, now))
                    .collect::<Vec<_>>()
            }),
        )
    }

    /// `POST /v1/keys/...`: opens a proposal (202).
    pub fn propose(&self, client: &str, operation: Result<Operation, Refusal>) -> Answer {
        let now = OffsetDateTime::now_utc();
        let answer = self.propose_inner(client, operation, now);
        self.officer_step("propose", &answer);
        let hash = self.policy.current().hash.clone();
        self.node
            .audited(client, "officers.propose", answer, &hash, None, now)
    }

    fn propose_inner(
        &self,
        client: &str,
        operation: Result<Operation, Refusal>,
        now: OffsetDateTime,
    ) -> Answer {
        let policy = self.policy.current();
        let operation = operation?;
        let keys = self.node.registry.keys().map_err(store_refusal)?;
        self.check_operation(&operation, &keys, now)?;
        let control = DualControl {
            required: policy.officers.approvals_required,
            officers: policy.officers().count(),
            lifetime: policy.officers.proposal_lifetime,
        };
        let mut id = [0u8; 8];
        openssl::rand::rand_bytes(&mut id).map_err(|_| Refusal::internal())?;
        let id = format!(
            "p-{}",
            id.iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
        let is_officer = |who: &str| policy.has_role(who, Role::Officer);
        let proposal = control
            .propose(&id, operation, client, is_officer, now)
            .map_err(|e| approval_problem(&e, client))?;
        let decision = crate::store::DecisionRecord {
            rule: Some(format!(
                "proposal {id}: {}",
                operation_summary(&proposal.operation)
            )),
            ..self
                .node
                .decision(client, "officers.propose", "open", &policy.hash, now)
        };
        self.node
            .registry
            .add_proposal(&proposal, decision)
            .map_err(store_refusal)?;
        tracing::info!(proposal = %id, officer = %client, operation = %operation_summary(&proposal.operation), "proposal opened");
        ok(Reply::Accepted, proposal_json(&proposal, now))
    }

    /// `POST /v1/approvals/{id}/approve` (the body repeats the operation
    /// the approver saw) or `/reject`.
    pub fn decide(&self, client: &str, id: &str, approve: bool, body: &[u8]) -> Answer {
        let now = OffsetDateTime::now_utc();
        let step = if approve { "approve" } else { "reject" };
        let answer = self.decide_inner(client, id, approve, body, now);
        self.officer_step(step, &answer);
        let hash = self.policy.current().hash.clone();
        self.node.audited(
            client,
            &format!("officers.{step}"),
            answer,
            &hash,
            None,
            now,
        )
    }

    fn decide_inner(
        &self,
        client: &str,
        id: &str,
        approve: bool,
        body: &[u8],
        now: OffsetDateTime,
    ) -> Answer {
        let policy = self.policy.current();
        let stored = self.node.registry.proposal(id).map_err(|e| match e {
            StoreError::NotFound => {
                Refusal::new(Class::NotFound, "not_found", "no proposal with this id")
            }
            e => store_refusal(e),
        })?;
        let mut proposal = stored.proposal;
        if approve {
            // An approval names what it approves: nobody approves blind, and
            // a proposal is never approved for something else than was read.
            let seen: ApproveBody = serde_json::from_slice(body).map_err(|e| json_refusal(&e))?;
            if seen.operation != proposal.operation {
                return Err(Refusal::new(
                    Class::Conflict,
                    "operation_mismatch",
                    "the operation in the approval is not the proposal's: list the proposal and read it again",
                )
                .with_rule("officers.informed_approval"));
            }
        }
        let outcome = step(&mut proposal, client, approve, &policy, now)?;
        let decision = crate::store::DecisionRecord {
            rule: Some(format!("proposal {id}")),
            ..self.node.decision(
                client,
                if approve {
                    "officers.approve"
                } else {
                    "officers.reject"
                },
                outcome,
                &policy.hash,
                now,
            )
        };
        // Two officers approving at once on two nodes: one wins, the other
        // is told to look again.
        self.node
            .registry
            .update_proposal(&proposal, stored.version, decision)
            .map_err(|e| match e {
                StoreError::Conflict { rule } => Refusal::new(
                    Class::Conflict,
                    "proposal_changed",
                    "another officer changed this proposal at the same time; list it and try again",
                )
                .with_rule(rule),
                e => store_refusal(e),
            })?;
        if proposal.state != ProposalState::Approved {
            return ok(Reply::Ok, proposal_json(&proposal, now));
        }
        // Approved: this node carries it out and records what happened.
        let result = self.carry_out(client, &mut proposal, stored.version + 1, now)?;
        let _done = result?;
        ok(Reply::Ok, proposal_json(&proposal, now))
    }
}
