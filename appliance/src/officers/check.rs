//! What an officer may ask for, and whether it can be carried out on the
//! keys as they are: the parsed operation of a `POST /v1/keys/…` request,
//! and the checks every proposal passes when proposed and again when
//! executed.

use serde::Deserialize;
use time::OffsetDateTime;

use super::answers::{Requested, operation_kind, operation_label};
use super::proposals::Officers;
use crate::errors::{json_refusal, store_refusal};
use crate::keys::approvals::{Operation, Proposal};
use crate::keys::lifecycle::KeyState;
use crate::node::rfc3339;
use crate::refusal::{Class, Refusal};
use crate::store::{CHAINS, IACA_DOCUMENT, POLICY_DOCUMENT, StoredKey};

/// Longest revocation reason kept (it goes to the registry).
const MAX_REASON: usize = 200;

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
    /// The full text: officers sign what they adopt, not a hash of it.
    text: String,
}

fn key_state_problem(detail: String, rule: &'static str) -> Refusal {
    Refusal::new(Class::Conflict, "key_state", detail).with_rule(rule)
}

impl Officers {
    /// The operation a `POST /v1/keys/...` request asks for.
    pub fn key_operation(
        action: &str,
        label: Option<&str>,
        body: &[u8],
    ) -> Result<Requested, Refusal> {
        let label = || label.unwrap_or_default().to_owned();
        let mut policy_text = None;
        let operation = match action {
            "rotate" => {
                let body: RotateBody =
                    serde_json::from_slice(body).map_err(|e| json_refusal(&e))?;
                Operation::CreateKey { chain: body.chain }
            }
            "revoke" => {
                let body: RevokeBody =
                    serde_json::from_slice(body).map_err(|e| json_refusal(&e))?;
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
                    serde_json::from_slice(body).map_err(|e| json_refusal(&e))?;
                let sha256 = body.sha256.trim().to_ascii_lowercase();
                if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(Refusal::bad_request(
                        "invalid_sha256",
                        "sha256 must be the policy file's SHA-256 in 64 hex digits",
                    ));
                }
                let policy = dojang_policies::Policy::parse("the proposed policy", &body.text)
                    .map_err(|e| {
                        Refusal::bad_request("invalid_policy", e.to_string())
                            .with_rule("policy.valid")
                    })?;
                if policy.hash != sha256 {
                    return Err(Refusal::bad_request(
                        "policy_hash_mismatch",
                        format!("the text's SHA-256 is {}, not {sha256}", policy.hash),
                    )
                    .with_rule("policy.change"));
                }
                policy_text = Some(body.text);
                Operation::ChangePolicy { sha256 }
            }
            "iaca" => Operation::GenerateIaca,
            "activate" => Operation::ActivateKey { label: label() },
            "retire" => Operation::RetireKey { label: label() },
            _ => Operation::DestroyKey { label: label() },
        };
        Ok(Requested {
            operation,
            policy_text,
        })
    }

    /// Whether `operation` can be carried out on the keys as they are.
    pub(super) fn check_operation(
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
            Operation::DestroyKey { label } => self.check_destroy(find(label)?, now),
            Operation::GenerateIaca => self.check_no_iaca(keys),
            Operation::ChangePolicy { sha256 } => self.check_new_policy(sha256),
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

    /// Only a retired key whose signatures have all expired (plus the
    /// retention margin) is destroyed: one destroyed early leaves valid
    /// credentials unverifiable. (A row the registry already calls
    /// destroyed is not ordered again: an insider could mark the active key
    /// destroyed and have officers remove it.)
    fn check_destroy(&self, key: &StoredKey, now: OffsetDateTime) -> Result<(), Refusal> {
        let label = &key.record.label;
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
        let margin = self.policy.current().keys.retention_margin;
        let last = key
            .record
            .last_signature_valid_until
            .unwrap_or(key.record.cert_not_after);
        // A date near the end of time (a forged row) must not overflow.
        let until = last.checked_add(margin).unwrap_or(last);
        if now < until && !key.record.revoked {
            return Err(key_state_problem(
                format!(
                    "key {label} signed credentials valid until {}: keep it published until {}",
                    rfc3339(last),
                    rfc3339(until)
                ),
                "keys.retention",
            ));
        }
        Ok(())
    }

    /// The key an order names by label must still be the key officers
    /// signed for: the kid of the token's key under that label (or of its
    /// certificate, once the private half is gone), not the row's kid,
    /// which anyone writing the registry can change.
    pub(super) fn check_target(&self, proposal: &Proposal) -> Result<(), Refusal> {
        let Some(label) = operation_label(&proposal.operation) else {
            return Ok(());
        };
        let signed = proposal
            .target
            .as_ref()
            .filter(|t| t.label == label)
            .map(|t| t.kid.clone());
        let keys = self.node.registry.keys().map_err(store_refusal)?;
        let actual = self.actual_kid(label, &keys);
        if signed.is_some() && signed == actual {
            return Ok(());
        }
        self.node
            .metrics
            .order_refused(operation_kind(&proposal.operation), "target_mismatch");
        Err(Refusal::new(
            Class::Forbidden,
            "unverified_order",
            format!("the key under {label:?} is not the key the officers signed for"),
        )
        .with_rule("officers.verified_order"))
    }

    /// The kid of the key under `label`: the token's key, else its
    /// certificate's, else (neither left) the row's.
    pub(super) fn actual_kid(&self, label: &str, keys: &[StoredKey]) -> Option<String> {
        let row = keys.iter().find(|k| k.record.label == label);
        self.node
            .backend
            .find(label)
            .ok()
            .and_then(|k| k.kid())
            .or_else(|| row.and_then(StoredKey::certificate_kid))
            .or_else(|| row.map(|k| k.kid.clone()))
    }

    /// The IACA is generated once: any trace of a root refuses another.
    fn check_no_iaca(&self, keys: &[StoredKey]) -> Result<(), Refusal> {
        if self.keys.pki_config().offline() {
            return Err(Refusal::new(
                Class::Conflict,
                "iaca_offline",
                "the IACA is offline (pki.iaca_custody = \"offline\"): it is created at a root ceremony on the offline token (dojangctl ceremony), never in this daemon's token",
            )
            .with_rule("pki.iaca_custody"));
        }
        // Any trace of a root: loaded here, kept in the registry,
        // its key in the token, or DS keys (certified by one).
        let exists = self.keys.view().iaca.is_some()
            || self
                .node
                .registry
                .document(IACA_DOCUMENT)
                .map_err(store_refusal)?
                .is_some()
            || self
                .node
                .backend
                .find(&self.keys.pki_config().iaca_key)
                .is_ok()
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

    /// A policy change must change the policy.
    fn check_new_policy(&self, sha256: &str) -> Result<(), Refusal> {
        let adopted = self
            .node
            .registry
            .document(POLICY_DOCUMENT)
            .map_err(store_refusal)?;
        if adopted.as_deref() == Some(sha256) {
            return Err(Refusal::new(
                Class::Conflict,
                "policy_adopted",
                "this policy is the one in force",
            )
            .with_rule("policy.change"));
        }
        Ok(())
    }
}
