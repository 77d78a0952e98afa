//! Officer operations under dual control (`/v1/keys`, `/v1/approvals`):
//! an officer proposes (rotate, revoke, activate, retire or destroy a key),
//! other officers approve until the policy's M is reached, and the node
//! that records the last approval carries it out. Proposals live in the
//! registry, so any node can take any step; each step is an audit entry.

use super::rfc3339;
use dojang_policies::{Policy, Role};

use serde::Deserialize;
use serde_json::json;
use time::OffsetDateTime;

use super::issue::{Answer, json_problem, store_problem};
use super::service::Service;
use crate::keys::approvals::{ApprovalError, DualControl, Operation, Proposal, ProposalState};
use crate::keys::lifecycle::KeyState;
use crate::refusal::{Class, Refusal, Reply};
use crate::store::{CHAINS, IACA_DOCUMENT, POLICY_DOCUMENT, StoreError, StoredKey};

/// Proposals a listing returns at most.
const LIST_LIMIT: u32 = 200;
/// Longest revocation reason kept (it goes to the registry).
const MAX_REASON: usize = 200;
/// An approved proposal without a result this long after its approval was
/// abandoned by the node that approved it.
const RESUME_AFTER_SECONDS: i64 = 60;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RotateBody {
    chain: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeBody {
    reason: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyBody {
    sha256: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ApproveBody {
    operation: Operation,
}

fn forbidden(client: &str) -> Refusal {
    Refusal::new(
        Class::Forbidden,
        "forbidden",
        format!("client {client:?} does not have the officer role"),
    )
    .with_rule("client.role")
}

fn approval_problem(e: &ApprovalError, client: &str) -> Refusal {
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

fn key_state_problem(detail: String, rule: &'static str) -> Refusal {
    Refusal::new(Class::Conflict, "key_state", detail).with_rule(rule)
}

/// A proposal as the API shows it (`status` says `expired` for an open
/// proposal past its time).
fn proposal_json(p: &Proposal, now: OffsetDateTime) -> serde_json::Value {
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

fn ok(status: Reply, body: serde_json::Value) -> Answer {
    Ok((status, body.to_string().into_bytes()))
}

impl Service {
    fn officer_policy(&self, client: &str) -> Result<std::sync::Arc<Policy>, Refusal> {
        let policy = self.current().policy.clone();
        if policy.has_role(client, Role::Officer) {
            Ok(policy)
        } else {
            Err(forbidden(client))
        }
    }

    fn officer_step(&self, step: &str, answer: &Answer) {
        self.metrics
            .officer_steps
            .with_label_values(&[step, if answer.is_ok() { "ok" } else { "refused" }])
            .inc();
    }

    /// `GET /v1/keys`: every key record (officers and auditors).
    pub(crate) fn list_keys(&self, client: &str) -> Answer {
        let policy = self.current().policy.clone();
        if !policy.has_role(client, Role::Officer) && !policy.has_role(client, Role::Auditor) {
            return Err(Refusal::new(
                Class::Forbidden,
                "forbidden",
                format!("client {client:?} has neither the officer nor the auditor role"),
            )
            .with_rule("client.role"));
        }
        let keys = self.registry.keys().map_err(store_problem)?;
        ok(
            Reply::Ok,
            json!({ "keys": keys.iter().map(key_json).collect::<Vec<_>>() }),
        )
    }

    /// `GET /v1/approvals`: proposals, newest first.
    pub(crate) fn list_proposals(&self, client: &str) -> Answer {
        let _ = self.officer_policy(client)?;
        let now = OffsetDateTime::now_utc();
        let proposals = self.registry.proposals(LIST_LIMIT).map_err(store_problem)?;
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

    /// The operation a `POST /v1/keys/...` request asks for.
    pub(crate) fn key_operation(
        action: &str,
        label: Option<&str>,
        body: &[u8],
    ) -> Result<Operation, Refusal> {
        let label = || label.unwrap_or_default().to_owned();
        Ok(match action {
            "rotate" => {
                let body: RotateBody =
                    serde_json::from_slice(body).map_err(|e| json_problem(&e))?;
                Operation::CreateKey { chain: body.chain }
            }
            "revoke" => {
                let body: RevokeBody =
                    serde_json::from_slice(body).map_err(|e| json_problem(&e))?;
                let reason = body.reason.trim();
                if reason.is_empty()
                    || reason.chars().count() > MAX_REASON
                    || reason.chars().any(char::is_control)
                {
                    return Err(Refusal::bad_request(
                        "invalid_reason",
                        format!("reason must be 1 to {MAX_REASON} characters on one line"),
                    ));
                }
                Operation::EmergencyRevoke {
                    label: label(),
                    reason: reason.to_owned(),
                }
            }
            "policy" => {
                let body: PolicyBody =
                    serde_json::from_slice(body).map_err(|e| json_problem(&e))?;
                let sha256 = body.sha256.trim().to_ascii_lowercase();
                if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(Refusal::bad_request(
                        "invalid_sha256",
                        "sha256 must be the policy file's SHA-256 in 64 hex digits",
                    ));
                }
                Operation::ChangePolicy { sha256 }
            }
            "iaca" => Operation::GenerateIaca,
            "activate" => Operation::ActivateKey { label: label() },
            "retire" => Operation::RetireKey { label: label() },
            _ => Operation::DestroyKey { label: label() },
        })
    }

    /// Whether `operation` can be carried out on the keys as they are.
    fn check_operation(
        &self,
        operation: &Operation,
        keys: &[StoredKey],
        now: OffsetDateTime,
    ) -> Result<(), Refusal> {
        let find = |label: &str| {
            keys.iter()
                .find(|k| k.record.label == label)
                .ok_or_else(|| {
                    Refusal::new(Class::NotFound, "not_found", format!("no key {label:?}"))
                })
        };
        let expect = |key: &StoredKey, states: &[KeyState], what: &str| {
            if states.contains(&key.record.state) && !key.record.revoked {
                Ok(())
            } else {
                Err(key_state_problem(
                    format!(
                        "key {} is {}{}: only a {what} key can be",
                        key.record.label,
                        key.record.state.as_str(),
                        if key.record.revoked { " (revoked)" } else { "" }
                    ),
                    "keys.lifecycle",
                ))
            }
        };
        match operation {
            Operation::CreateKey { chain } => {
                if !CHAINS.contains(&chain.as_str()) {
                    return Err(Refusal::bad_request(
                        "unknown_chain",
                        format!("no key chain {chain:?}: rotate one of {CHAINS:?}"),
                    ));
                }
                if keys
                    .iter()
                    .any(|k| k.chain == *chain && k.record.state == KeyState::Pending)
                {
                    return Err(key_state_problem(
                        format!(
                            "a {chain} key is already pending: it takes over at its activation time"
                        ),
                        "keys.one_pending",
                    ));
                }
                Ok(())
            }
            Operation::ActivateKey { label } => {
                expect(find(label)?, &[KeyState::Pending], "pending")
            }
            Operation::RetireKey { label } => expect(find(label)?, &[KeyState::Active], "active"),
            Operation::DestroyKey { label } => {
                let key = find(label)?;
                if key.record.state != KeyState::Retired {
                    return Err(key_state_problem(
                        format!(
                            "key {label} is {}: only a retired key can be destroyed",
                            key.record.state.as_str()
                        ),
                        "keys.lifecycle",
                    ));
                }
                // A key destroyed early leaves valid credentials
                // unverifiable. Without a recorded expiry, nothing it signed
                // outlives its certificate.
                let margin = self.current().policy.keys.retention_margin;
                let last = key
                    .record
                    .last_signature_valid_until
                    .unwrap_or(key.record.cert_not_after);
                if now < last + margin && !key.record.revoked {
                    return Err(key_state_problem(
                        format!(
                            "key {label} signed credentials valid until {}: keep it published until {}",
                            rfc3339(last),
                            rfc3339(last + margin)
                        ),
                        "keys.retention",
                    ));
                }
                Ok(())
            }
            Operation::GenerateIaca => {
                // Any trace of a root: loaded here, kept in the registry,
                // its key in the token, or DS keys (certified by one).
                let exists = self.current().iaca.is_some()
                    || self
                        .registry
                        .document(IACA_DOCUMENT)
                        .map_err(store_problem)?
                        .is_some()
                    || self.backend.find(&self.pki_config.iaca_key).is_ok()
                    || keys.iter().any(|k| k.chain == crate::store::DS_CHAIN);
                if exists {
                    return Err(Refusal::new(
                        Class::Conflict,
                        "iaca_exists",
                        "the IACA exists: it is generated once",
                    )
                    .with_rule("pki.one_iaca"));
                }
                Ok(())
            }
            Operation::ChangePolicy { sha256 } => {
                let adopted = self
                    .registry
                    .document(POLICY_DOCUMENT)
                    .map_err(store_problem)?;
                if adopted.as_deref() == Some(sha256.as_str()) {
                    return Err(Refusal::new(
                        Class::Conflict,
                        "policy_adopted",
                        "this policy is the one in force",
                    )
                    .with_rule("policy.change"));
                }
                Ok(())
            }
            Operation::EmergencyRevoke { label, .. } => {
                let key = find(label)?;
                if key.record.revoked || key.record.state == KeyState::Destroyed {
                    return Err(key_state_problem(
                        format!("key {label} is already revoked or destroyed"),
                        "keys.lifecycle",
                    ));
                }
                Ok(())
            }
        }
    }

    /// `POST /v1/keys/...`: opens a proposal (202).
    pub(crate) fn propose(&self, client: &str, operation: Result<Operation, Refusal>) -> Answer {
        let now = OffsetDateTime::now_utc();
        let answer = self.propose_inner(client, operation, now);
        self.officer_step("propose", &answer);
        let hash = self.current().policy.hash.clone();
        self.audited(client, "officers.propose", answer, &hash, None, now)
    }

    fn propose_inner(
        &self,
        client: &str,
        operation: Result<Operation, Refusal>,
        now: OffsetDateTime,
    ) -> Answer {
        let policy = self.officer_policy(client)?;
        let operation = operation?;
        let keys = self.registry.keys().map_err(store_problem)?;
        self.check_operation(&operation, &keys, now)?;
        let control = DualControl {
            required: policy.officers.approvals_required,
            officers: policy.officers().count(),
            lifetime: policy.officers.proposal_lifetime,
        };
        let mut id = [0u8; 8];
        openssl::rand::rand_bytes(&mut id).map_err(|_| internal())?;
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
            ..self.decision(client, "officers.propose", "open", &policy.hash, now)
        };
        self.registry
            .add_proposal(&proposal, decision)
            .map_err(store_problem)?;
        tracing::info!(proposal = %id, officer = %client, operation = %operation_summary(&proposal.operation), "proposal opened");
        ok(Reply::Accepted, proposal_json(&proposal, now))
    }

    /// `POST /v1/approvals/{id}/approve` (the body repeats the operation
    /// the approver saw) or `/reject`.
    pub(crate) fn decide(&self, client: &str, id: &str, approve: bool, body: &[u8]) -> Answer {
        let now = OffsetDateTime::now_utc();
        let step = if approve { "approve" } else { "reject" };
        let answer = self.decide_inner(client, id, approve, body, now);
        self.officer_step(step, &answer);
        let hash = self.current().policy.hash.clone();
        self.audited(
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
        let policy = self.officer_policy(client)?;
        let stored = self.registry.proposal(id).map_err(|e| match e {
            StoreError::NotFound => {
                Refusal::new(Class::NotFound, "not_found", "no proposal with this id")
            }
            e => store_problem(e),
        })?;
        let mut proposal = stored.proposal;
        if approve {
            // An approval names what it approves: nobody approves blind, and
            // a proposal is never approved for something else than was read.
            let seen: ApproveBody = serde_json::from_slice(body).map_err(|e| json_problem(&e))?;
            if seen.operation != proposal.operation {
                return Err(Refusal::new(
                    Class::Conflict,
                    "operation_mismatch",
                    "the operation in the approval is not the proposal's: list the proposal and read it again",
                )
                .with_rule("officers.informed_approval"));
            }
        }
        let is_officer = |who: &str| policy.has_role(who, Role::Officer);
        let outcome = if approve {
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
        .map_err(|e| approval_problem(&e, client))?;
        let decision = crate::store::DecisionRecord {
            rule: Some(format!("proposal {id}")),
            ..self.decision(
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
        self.registry
            .update_proposal(&proposal, stored.version, decision)
            .map_err(|e| match e {
                StoreError::Conflict { rule } => Refusal::new(
                    Class::Conflict,
                    "proposal_changed",
                    "another officer changed this proposal at the same time; list it and try again",
                )
                .with_rule(rule),
                e => store_problem(e),
            })?;
        if proposal.state != ProposalState::Approved {
            return ok(Reply::Ok, proposal_json(&proposal, now));
        }
        // Approved: this node carries it out and records what happened.
        let result = self.carry_out(client, &mut proposal, stored.version + 1, now)?;
        let _done = result?;
        ok(Reply::Ok, proposal_json(&proposal, now))
    }

    /// Executes an approved proposal and records its result on it (row at
    /// `version`); the outer error is the record failing, the inner one the
    /// operation.
    fn carry_out(
        &self,
        actor: &str,
        proposal: &mut Proposal,
        version: i64,
        now: OffsetDateTime,
    ) -> Result<Result<String, Refusal>, Refusal> {
        let result = self.execute(&proposal.operation, now);
        proposal.result = Some(match &result {
            Ok(done) => done.clone(),
            Err(p) => format!("failed: {}", p.detail),
        });
        let decision = crate::store::DecisionRecord {
            rule: Some(format!(
                "proposal {}: {}",
                proposal.id,
                operation_summary(&proposal.operation)
            )),
            ..self.decision(
                actor,
                "officers.execute",
                if result.is_ok() { "ok" } else { "failed" },
                &self.current().policy.hash,
                now,
            )
        };
        self.registry
            .update_proposal(proposal, version, decision)
            .map_err(store_problem)?;
        self.metrics
            .officer_steps
            .with_label_values(&["execute", if result.is_ok() { "ok" } else { "failed" }])
            .inc();
        Ok(result)
    }

    /// Approved proposals whose execution never got recorded (the node
    /// stopped between the approval and the result): the acting node
    /// carries them out. Repeating an operation that did happen is refused
    /// by its state check, and that refusal is what gets recorded.
    pub(crate) fn resume_approved(&self, now: OffsetDateTime) {
        let Ok(proposals) = self.registry.proposals(LIST_LIMIT) else {
            return;
        };
        for stored in proposals {
            let mut proposal = stored.proposal;
            let stalled = proposal.state == ProposalState::Approved
                && proposal.result.is_none()
                && proposal
                    .approved_at
                    .is_some_and(|at| now - at > time::Duration::seconds(RESUME_AFTER_SECONDS));
            if !stalled {
                continue;
            }
            tracing::warn!(proposal = %proposal.id, "carrying out an approved proposal left unfinished");
            if let Err(p) = self.carry_out("dojangd", &mut proposal, stored.version, now) {
                tracing::warn!(proposal = %proposal.id, error = %p.detail, "recording a resumed proposal");
            }
            // One per round: the lease must not run out under a long queue.
            return;
        }
    }

    /// Carries out an approved operation; what it did, for the record.
    fn execute(&self, operation: &Operation, now: OffsetDateTime) -> Result<String, Refusal> {
        let keys = self.registry.keys().map_err(store_problem)?;
        self.check_operation(operation, &keys, now)?;
        let failed = |detail: String| {
            tracing::warn!(error = %detail, "approved key operation failed");
            Refusal::new(Class::Conflict, "operation_failed", detail).with_rule("keys.lifecycle")
        };
        let done = match operation {
            Operation::CreateKey { chain } => {
                // Whole seconds: the registry keeps activation times so.
                let activate_at = (now + self.current().policy.keys.prepublish)
                    .replace_nanosecond(0)
                    .unwrap_or(now);
                let label = self
                    .generate_key(chain, activate_at, "officer rotation", now)
                    .map_err(failed)?;
                format!(
                    "key {label} generated: published now, signs from {}",
                    rfc3339(activate_at)
                )
            }
            Operation::ActivateKey { label } => {
                self.activate_key(&keys, label, now).map_err(failed)?;
                format!("key {label} signs from now")
            }
            Operation::RetireKey { label } => {
                self.retire_key(&keys, label, "officer retirement", now)
                    .map_err(failed)?;
                format!("key {label} retired")
            }
            Operation::DestroyKey { label } => {
                self.destroy_key(&keys, label, now).map_err(failed)?;
                format!("key {label} destroyed")
            }
            Operation::GenerateIaca => self.generate_iaca(now).map_err(failed)?,
            Operation::ChangePolicy { sha256 } => {
                let decision = crate::store::DecisionRecord {
                    rule: Some(format!("policy {sha256}: approved by officers")),
                    ..self.decision("dojangd", "policy.adopt", "ok", sha256, now)
                };
                self.registry
                    .set_document(POLICY_DOCUMENT, sha256, decision)
                    .map_err(store_problem)?;
                match self.reload(now) {
                    Ok(()) => format!("policy {sha256} adopted and loaded"),
                    Err(e) => format!(
                        "policy {sha256} adopted; this node keeps the old one until its file has it ({})",
                        e.0
                    ),
                }
            }
            Operation::EmergencyRevoke { label, reason } => {
                let changed = self.revoke_key(label, reason, now).map_err(failed)?;
                format!(
                    "key {label} revoked and on the CRL; {changed} credentials it signed changed status"
                )
            }
        };
        // The change is committed; a view that cannot be rebuilt now is
        // rebuilt by the next lifecycle round.
        if let Err(e) = self.refresh_keys(true) {
            tracing::warn!(error = %e.0, "reloading keys after an officer operation");
        }
        Ok(done)
    }
}

impl Service {
    /// The IACA key and root certificate in the token, kept in the registry
    /// for every node, then a first DS key signing at once.
    fn generate_iaca(&self, now: OffsetDateTime) -> Result<String, String> {
        let (der, facts) = self
            .metrics
            .hsm("generate_iaca", || {
                crate::pki::ceremony::iaca_in_token(
                    self.backend,
                    &self.pki_config,
                    pkcs11_shim::Algorithm::Es256,
                    now,
                )
            })
            .map_err(|e| format!("generating the IACA: {e}"))?;
        let pem = crate::pki::cert_pem(&der).map_err(|e| e.to_string())?;
        let decision = crate::store::DecisionRecord {
            rule: Some(format!("IACA valid until {}", rfc3339(facts.not_after))),
            ..self.decision(
                "dojangd",
                "pki.iaca",
                "ok",
                &self.current().policy.hash,
                now,
            )
        };
        // The first root stored wins; a concurrent generation on another
        // node (the same token key, another certificate) gives up here.
        if !self
            .registry
            .set_document_if_absent(IACA_DOCUMENT, &pem, decision)
            .map_err(|e| e.to_string())?
        {
            return Err("another node generated the IACA at the same time".into());
        }
        self.reload(now).map_err(|e| e.0)?;
        let label = self.generate_key(
            crate::store::DS_CHAIN,
            now.replace_nanosecond(0).unwrap_or(now),
            "first document signer",
            now,
        )?;
        Ok(format!(
            "IACA generated (valid until {}); first DS key {label} signs from now",
            rfc3339(facts.not_after)
        ))
    }
}

fn internal() -> Refusal {
    Refusal::new(Class::Internal, "internal", "internal error")
}

/// One line for logs and the audit log (no reason text: it is free text).
fn operation_summary(operation: &Operation) -> String {
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
