//! The auditor's API (`/v1/audit/…`, role `auditor`): the latest signed
//! checkpoint, entries by range, inclusion and consistency proofs. With
//! these and the audit public key an auditor checks the log without
//! trusting the appliance.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use dojang_policies::Role;

use serde_json::json;

use super::audit_log::{AuditError, AuditLog, MAX_PAGE};
use super::issue::Answer;
use super::service::Service;
use crate::refusal::{Class, Refusal, Reply};

fn problem(e: AuditError) -> Refusal {
    match e {
        AuditError::Range(detail) => Refusal::bad_request("audit_range", detail),
        AuditError::Busy => Refusal::unavailable("overloaded", "one proof at a time; retry"),
        AuditError::Store(_) | AuditError::Signing(_) => {
            tracing::warn!(error = %e, "audit query failed");
            Refusal::unavailable(
                "store_unavailable",
                "the audit log cannot be read now; retry",
            )
        }
    }
}

/// `name=value` pairs of a query string, numbers only.
pub(crate) fn number(query: &str, name: &str) -> Result<u64, Refusal> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == name)
        .ok_or_else(|| {
            Refusal::bad_request("audit_range", format!("query parameter {name} is required"))
        })?
        .1
        .parse()
        .map_err(|_| {
            Refusal::bad_request(
                "audit_range",
                format!("{name} must be a non-negative integer"),
            )
        })
}

impl Service {
    fn require_auditor(&self, client: &str) -> Result<(), Refusal> {
        if self.current().policy.has_role(client, Role::Auditor) {
            Ok(())
        } else {
            Err(Refusal::new(
                Class::Forbidden,
                "forbidden",
                format!("client {client:?} does not have the auditor role"),
            )
            .with_rule("client.role"))
        }
    }

    /// `GET /v1/audit/checkpoint`: the latest signed note.
    pub(crate) fn audit_checkpoint(&self, client: &str) -> Answer {
        self.require_auditor(client)?;
        match AuditLog::latest(self.registry.as_ref()).map_err(problem)? {
            Some((size, note)) => {
                // The audit keys, oldest first: auditors pin the first and
                // follow hand-overs (checkpoints co-signed by old and new).
                let keys: Vec<_> = self
                    .registry
                    .keys()
                    .map_err(|e| problem(e.into()))?
                    .into_iter()
                    .filter(|k| k.chain == crate::store::AUDIT_CHAIN)
                    .filter_map(|k| {
                        let pem = openssl::pkey::PKey::public_key_from_der(&k.public_key)
                            .and_then(|p| p.public_key_to_pem())
                            .ok()?;
                        Some(json!({
                            "label": k.record.label,
                            "state": k.record.state.as_str(),
                            "revoked": k.record.revoked,
                            "public_key_pem": String::from_utf8_lossy(&pem),
                        }))
                    })
                    .collect();
                Ok((
                    Reply::Ok,
                    json!({"size": size, "note": note, "keys": keys})
                        .to_string()
                        .into_bytes(),
                ))
            }
            None => Err(Refusal::new(
                Class::NotFound,
                "not_found",
                "no checkpoint has been signed yet",
            )),
        }
    }

    /// `GET /v1/audit/entries?start=S&count=C`.
    pub(crate) fn audit_entries(&self, client: &str, query: &str) -> Answer {
        self.require_auditor(client)?;
        let start = number(query, "start")?;
        if start > i64::MAX as u64 {
            return Err(Refusal::bad_request(
                "audit_range",
                "start is beyond any log",
            ));
        }
        let count = number(query, "count")?.min(MAX_PAGE);
        let entries = self
            .registry
            .audit_entries(start, count)
            .map_err(|e| problem(e.into()))?;
        let size = self.registry.audit_size().map_err(|e| problem(e.into()))?;
        let recorded = self
            .registry
            .decision_count()
            .map_err(|e| problem(e.into()))?;
        let body = json!({
            "start": start,
            "size": size,
            // Recorded but not yet placed in the log (a sequencer does, within a second).
            "pending": recorded.saturating_sub(size),
            "entries": entries.iter().map(|e| B64.encode(e)).collect::<Vec<_>>(),
        });
        Ok((Reply::Ok, body.to_string().into_bytes()))
    }

    /// `GET /v1/audit/proof/inclusion?index=I&size=N`.
    pub(crate) fn audit_inclusion(&self, client: &str, query: &str) -> Answer {
        self.require_auditor(client)?;
        let (index, size) = (number(query, "index")?, number(query, "size")?);
        let (leaf, proof) =
            AuditLog::inclusion(self.registry.as_ref(), index, size).map_err(problem)?;
        let body = json!({
            "index": index,
            "size": size,
            "leaf_hash": B64.encode(leaf),
            "proof": proof.iter().map(|h| B64.encode(h)).collect::<Vec<_>>(),
        });
        Ok((Reply::Ok, body.to_string().into_bytes()))
    }

    /// `GET /v1/audit/proof/consistency?from=M&to=N`.
    pub(crate) fn audit_consistency(&self, client: &str, query: &str) -> Answer {
        self.require_auditor(client)?;
        let (from, to) = (number(query, "from")?, number(query, "to")?);
        let proof = AuditLog::consistency(self.registry.as_ref(), from, to).map_err(problem)?;
        let body = json!({
            "from": from,
            "to": to,
            "proof": proof.iter().map(|h| B64.encode(h)).collect::<Vec<_>>(),
        });
        Ok((Reply::Ok, body.to_string().into_bytes()))
    }
}
