//! Carrying out approved operations: executing one and recording its
//! result on the proposal, closing (never resuming) approved proposals
//! left unfinished, and generating the IACA.

use time::OffsetDateTime;

use super::answers::{operation_kind, operation_summary, order_problem};
use super::proposals::{LIST_LIMIT, Officers, UNFINISHED_AFTER_SECONDS};
use crate::errors::store_refusal;
use crate::keys::approvals::{Operation, Proposal, ProposalState};
use crate::keys::manager::DestroyOrder;
use crate::keys::order::{Adoption, CanonicalProposal, verify_order};
use crate::node::rfc3339;
use crate::refusal::{Class, Refusal};
use crate::store::{
    IACA_DOCUMENT, POLICY_DOCUMENT, policy_adoption_document, policy_text_document,
};

impl Officers {
    /// Executes an approved proposal and records its result on it (row at
    /// `version`); the outer error is the record failing, the inner one the
    /// operation.
    pub(super) fn carry_out(
        &self,
        actor: &crate::node::Caller,
        proposal: &mut Proposal,
        version: i64,
        now: OffsetDateTime,
    ) -> Result<Result<String, Refusal>, Refusal> {
        // The order is checked where it is carried out, from the proposal
        // as it stands: never on the word of a state column.
        let policy = self.policy.current();
        verify_order(proposal, &policy)
            .map_err(|e| order_problem(&self.node, &proposal.operation, &e))?;
        self.check_target(proposal)?;
        let result = self.execute(proposal, now);
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
            ..self.node.caller_decision(
                actor,
                "officers.execute",
                if result.is_ok() { "ok" } else { "failed" },
                &self.policy.current().hash,
                now,
            )
        };
        self.node
            .registry
            .update_proposal(proposal, version, decision)
            .map_err(store_refusal)?;
        self.node
            .metrics
            .officer_steps
            .with_label_values(&["execute", if result.is_ok() { "ok" } else { "failed" }])
            .inc();
        Ok(result)
    }

    /// Approved proposals whose execution never got recorded: the node
    /// that took the last approval stopped in between, or somebody wrote
    /// the row. Either way a row saying "approved" is not an order (the
    /// registry can lie), so nothing is carried out: the proposal is closed
    /// as not carried out, audited and counted, and officers propose again.
    pub fn close_interrupted(&self, now: OffsetDateTime) {
        let Ok(proposals) = self.node.registry.proposals(LIST_LIMIT) else {
            return;
        };
        for stored in proposals {
            let mut proposal = stored.proposal;
            let stalled = proposal.state == ProposalState::Approved
                && proposal.result.is_none()
                && proposal
                    .approved_at
                    .is_none_or(|at| now - at > time::Duration::seconds(UNFINISHED_AFTER_SECONDS));
            if !stalled {
                continue;
            }
            let summary = operation_summary(&proposal.operation);
            tracing::warn!(proposal = %proposal.id, operation = %summary, "an approved proposal was never carried out: closed, not resumed");
            proposal.result = Some(
                "not carried out: approved but left unfinished, and an approved row is not an order; propose it again"
                    .to_owned(),
            );
            let decision = crate::store::DecisionRecord {
                rule: Some(format!(
                    "officers.verified_order: proposal {}: {summary}",
                    proposal.id
                )),
                ..self.node.decision(
                    "dojangd",
                    "officers.resume",
                    "refused",
                    &self.policy.current().hash,
                    now,
                )
            };
            self.node
                .metrics
                .order_refused(operation_kind(&proposal.operation), "unverified_approval");
            self.node
                .metrics
                .officer_steps
                .with_label_values(&["resume", "refused"])
                .inc();
            if let Err(e) = self
                .node
                .registry
                .update_proposal(&proposal, stored.version, decision)
            {
                tracing::warn!(proposal = %proposal.id, error = %e, "closing an unfinished proposal");
            }
        }
    }

    /// Carries out an approved operation; what it did, for the record.
    fn execute(&self, proposal: &Proposal, now: OffsetDateTime) -> Result<String, Refusal> {
        let operation = &proposal.operation;
        let keys = self.node.registry.keys().map_err(store_refusal)?;
        self.check_operation(operation, &keys, now)?;
        let failed = |detail: String| {
            tracing::warn!(error = %detail, "approved key operation failed");
            Refusal::new(Class::Conflict, "operation_failed", detail).with_rule("keys.lifecycle")
        };
        let done = match operation {
            Operation::CreateKey { chain } => {
                // Whole seconds: the registry keeps activation times so.
                let activate_at = (now + self.policy.current().keys.prepublish)
                    .replace_nanosecond(0)
                    .unwrap_or(now);
                let label = self
                    .keys
                    .generate_key(chain, activate_at, "officer rotation", now)
                    .map_err(failed)?;
                format!(
                    "key {label} generated: published now, signs from {}",
                    rfc3339(activate_at)
                )
            }
            Operation::ActivateKey { label } => {
                self.keys.activate_key(&keys, label, now).map_err(failed)?;
                format!("key {label} signs from now")
            }
            Operation::RetireKey { label } => {
                self.keys
                    .retire_key(&keys, label, "officer retirement", now)
                    .map_err(failed)?;
                self.keys.forget_retired(&keys, label);
                format!("key {label} retired")
            }
            Operation::DestroyKey { label } => {
                self.keys
                    .destroy_key(&keys, label, DestroyOrder::Officers, now)
                    .map_err(failed)?;
                format!("key {label} destroyed")
            }
            Operation::GenerateIaca => self.generate_iaca(now).map_err(failed)?,
            Operation::ChangePolicy { sha256 } => {
                self.adopt_policy(proposal, sha256, now)?;
                match self.reloader.reload(now) {
                    Ok(()) => format!("policy {sha256} adopted and loaded"),
                    Err(e) => format!(
                        "policy {sha256} adopted; this node keeps the old one until its file has it ({})",
                        e.0
                    ),
                }
            }
            Operation::EmergencyRevoke { label, reason } => {
                let changed = self
                    .keys
                    .revoke_key(proposal, label, reason, now)
                    .map_err(failed)?;
                format!(
                    "key {label} revoked and on the CRL; {changed} credentials it signed changed status"
                )
            }
        };
        // The change is committed; a view that cannot be rebuilt now is
        // rebuilt by the next lifecycle round.
        if let Err(e) = self.keys.refresh_keys(true) {
            tracing::warn!(error = %e.0, "reloading keys after an officer operation");
        }
        Ok(done)
    }

    /// Records an approved policy change: its text, the signed proposal as
    /// the record of its adoption (every node checks it before following),
    /// then the adopted hash.
    fn adopt_policy(
        &self,
        proposal: &Proposal,
        sha256: &str,
        now: OffsetDateTime,
    ) -> Result<(), Refusal> {
        if let Err(e) = CanonicalProposal::of(proposal).text_matches() {
            return Err(
                Refusal::new(Class::Conflict, "operation_failed", e).with_rule("policy.change")
            );
        }
        let text = proposal.policy_text.as_deref().ok_or_else(|| {
            Refusal::new(
                Class::Conflict,
                "operation_failed",
                "the proposal carries no policy text",
            )
            .with_rule("policy.change")
        })?;
        let record = serde_json::to_string(&Adoption::Change {
            proposal: Box::new(proposal.clone()),
        })
        .map_err(|_| Refusal::internal())?;
        let hash = self.policy.current().hash.clone();
        let decision = |action: &str, rule: String| crate::store::DecisionRecord {
            rule: Some(rule),
            ..self.node.decision("dojangd", action, "ok", &hash, now)
        };
        let registry = &self.node.registry;
        let _ = registry
            .set_document_if_absent(
                &policy_text_document(sha256),
                text,
                decision(
                    "policy.keep",
                    format!("policy {sha256}: text kept in the registry"),
                ),
            )
            .map_err(store_refusal)?;
        registry
            .set_document(
                &policy_adoption_document(sha256),
                &record,
                decision(
                    "policy.adoption",
                    format!(
                        "policy {sha256}: proposal {} signed by officers",
                        proposal.id
                    ),
                ),
            )
            .map_err(store_refusal)?;
        registry
            .set_document(
                POLICY_DOCUMENT,
                sha256,
                decision(
                    "policy.adopt",
                    format!("policy {sha256}: approved by officers"),
                ),
            )
            .map_err(store_refusal)
    }

    /// The IACA key and root certificate in the token, kept in the registry
    /// for every node, then a first DS key signing at once.
    fn generate_iaca(&self, now: OffsetDateTime) -> Result<String, String> {
        if self.keys.pki_config().offline() {
            return Err(
                "the IACA is offline (pki.iaca_custody = \"offline\"): it is created at a root ceremony on the offline token (dojangctl ceremony), never in this daemon's token"
                    .into(),
            );
        }
        let (der, facts) = self
            .node
            .metrics
            .hsm("generate_iaca", || {
                crate::pki::ceremony::iaca_in_token(
                    self.node.backend,
                    self.keys.pki_config(),
                    pkcs11_shim::Algorithm::Es256,
                    now,
                )
            })
            .map_err(|e| format!("generating the IACA: {e}"))?;
        let pem = crate::pki::cert_pem(&der).map_err(|e| e.to_string())?;
        let decision = crate::store::DecisionRecord {
            rule: Some(crate::pki::iaca_rule(&der, facts.not_after)),
            ..self.node.decision(
                "dojangd",
                "pki.iaca",
                "ok",
                &self.policy.current().hash,
                now,
            )
        };
        // The first root stored wins; a concurrent generation on another
        // node (the same token key, another certificate) gives up here.
        if !self
            .node
            .registry
            .set_document_if_absent(IACA_DOCUMENT, &pem, decision)
            .map_err(|e| e.to_string())?
        {
            return Err("another node generated the IACA at the same time".into());
        }
        self.reloader.reload(now).map_err(|e| e.0)?;
        let label = self.keys.generate_key(
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
