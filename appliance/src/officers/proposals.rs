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

use super::answers::{
    Requested, approval_problem, key_json, ok, operation_kind, operation_label, operation_summary,
    order_problem, proposal_json,
};
use crate::errors::{json_refusal, store_refusal};
use crate::keys::approvals::{DualControl, KeyTarget, Proposal, ProposalState};
use crate::keys::manager::KeyManager;
use crate::keys::order::{CanonicalProposal, digest, verified_signers};
use crate::node::{LoadError, Node};
use crate::policy::PolicyState;
use crate::refusal::{Answer, Class, Refusal, Reply};
use crate::store::StoreError;

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

/// An approval: the officer's signature over the canonical proposal, and
/// the digest of what the officer's tool showed them.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ApproveBody {
    digest: String,
    signature: String,
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

    /// `POST /v1/keys/...`: opens a proposal (202), unsigned: the proposer
    /// signs it next, like any approver.
    pub fn propose(
        &self,
        client: &crate::node::Caller,
        operation: Result<Requested, Refusal>,
    ) -> Answer {
        let now = OffsetDateTime::now_utc();
        let answer = self.propose_inner(client, operation, now);
        self.officer_step("propose", &answer);
        let hash = self.policy.current().hash.clone();
        self.node
            .audited(client, "officers.propose", answer, &hash, None, now)
    }

    fn propose_inner(
        &self,
        client: &crate::node::Caller,
        requested: Result<Requested, Refusal>,
        now: OffsetDateTime,
    ) -> Answer {
        let policy = self.policy.current();
        let Requested {
            operation,
            policy_text,
        } = requested?;
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
        // The kid officers sign is the token's (or the certificate's), not
        // the row's.
        let target = operation_label(&operation).and_then(|label| {
            let row = keys.iter().find(|k| k.record.label == label)?;
            Some(KeyTarget {
                label: label.to_owned(),
                chain: row.chain.clone(),
                kid: self.actual_kid(label, &keys)?,
            })
        });
        let mut proposal = control
            .propose(&id, operation, client, is_officer, &policy.hash, now)
            .map_err(|e| approval_problem(&e, client))?;
        proposal.target = target;
        proposal.policy_text = policy_text;
        let decision = crate::store::DecisionRecord {
            rule: Some(format!(
                "proposal {id}: {}",
                operation_summary(&proposal.operation)
            )),
            ..self
                .node
                .caller_decision(client, "officers.propose", "open", &policy.hash, now)
        };
        self.node
            .registry
            .add_proposal(&proposal, decision)
            .map_err(store_refusal)?;
        tracing::info!(proposal = %id, officer = %client, operation = %operation_summary(&proposal.operation), "proposal opened");
        ok(Reply::Accepted, proposal_json(&proposal, now))
    }

    /// Adds `client`'s signature (the approval `body`) to `proposal`; its
    /// status after.
    fn sign(
        &self,
        proposal: &mut Proposal,
        client: &crate::node::Caller,
        body: &[u8],
        policy: &Policy,
        now: OffsetDateTime,
    ) -> Result<&'static str, Refusal> {
        let body: ApproveBody = serde_json::from_slice(body).map_err(|e| json_refusal(&e))?;
        let canonical = CanonicalProposal::of(proposal).bytes();
        // Nobody approves blind: the digest is of what the officer's tool
        // showed, and a proposal is never approved for something else than
        // was read.
        if !body.digest.eq_ignore_ascii_case(&digest(&canonical)) {
            return Err(Refusal::new(
                Class::Conflict,
                "digest_mismatch",
                "the approval is for another content than this proposal's: list it and read it again",
            )
            .with_rule("officers.informed_approval"));
        }
        // A proposal already signed by enough officers was an order, and
        // was carried out: one a registry writer set open again is not
        // carried out twice.
        let before = verified_signers(proposal, policy)
            .map_err(|e| order_problem(&self.node, &proposal.operation, &e))?;
        if before >= proposal.required.max(policy.officers.approvals_required) {
            self.node
                .metrics
                .order_refused(operation_kind(&proposal.operation), "replayed_order");
            return Err(Refusal::new(
                Class::Conflict,
                "proposal_decided",
                "this proposal already carries enough officers' signatures: it was an order once and is not carried out again",
            )
            .with_rule("officers.replay"));
        }
        let is_officer = |who: &str| policy.has_role(who, Role::Officer);
        proposal
            .sign(client, body.signature, is_officer, now)
            .map_err(|e| approval_problem(&e, client))?;
        // Every signature must hold over the proposal as it stands, by a key
        // the policy pins: this officer's, and those already there (a row
        // changed after signing, or a signature brought from elsewhere,
        // refuses the whole proposal).
        let verified = verified_signers(proposal, policy)
            .map_err(|e| order_problem(&self.node, &proposal.operation, &e))?;
        Ok(
            match proposal.settle(verified, policy.officers.approvals_required, now) {
                ProposalState::Approved => "approved",
                _ => "open",
            },
        )
    }

    /// `POST /v1/approvals/{id}/approve` (the body signs the canonical
    /// proposal the approver was shown) or `/reject`.
    pub fn decide(
        &self,
        client: &crate::node::Caller,
        id: &str,
        approve: bool,
        body: &[u8],
    ) -> Answer {
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
        client: &crate::node::Caller,
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
        let is_officer = |who: &str| policy.has_role(who, Role::Officer);
        let outcome = if approve {
            self.sign(&mut proposal, client, body, &policy, now)?
        } else {
            proposal
                .reject(client, is_officer, now)
                .map_err(|e| approval_problem(&e, client))?;
            "rejected"
        };
        let decision = crate::store::DecisionRecord {
            rule: Some(format!("proposal {id}")),
            ..self.node.caller_decision(
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
