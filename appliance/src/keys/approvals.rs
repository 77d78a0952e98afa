//! Dual control: an officer operation is a proposal that takes effect only
//! when `required` distinct officers — the proposer and others — have
//! signed it before it expires. Nobody signs a proposal twice, issuers
//! cannot propose, one rejection ends it. Whether the signatures are good
//! is [`super::order`]'s business; this module keeps the bookkeeping.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

/// What officers can propose.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Operation {
    /// Create a key for a chain (`ds`: with its DS certificate), to sign
    /// after the prepublication period: an on-demand rotation.
    CreateKey {
        /// The chain.
        chain: String,
    },
    /// Activate a pending key now.
    ActivateKey {
        /// The key.
        label: String,
    },
    /// Retire an active key.
    RetireKey {
        /// The key.
        label: String,
    },
    /// Destroy a retired key.
    DestroyKey {
        /// The key.
        label: String,
    },
    /// Revoke a DS key now: CRL, stop signing, mark its credentials.
    EmergencyRevoke {
        /// The key.
        label: String,
        /// Why (recorded).
        reason: String,
    },
    /// Generate the IACA key and root certificate (once), then a first DS
    /// key.
    GenerateIaca,
    /// Adopt the policy file of this SHA-256 (hex), whose full text the
    /// proposal carries: nodes load it once their file has it.
    ChangePolicy {
        /// The new policy file's SHA-256.
        sha256: String,
    },
}

/// Where a proposal stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProposalState {
    /// Waiting for approvals.
    Open,
    /// Enough approvals: carry it out.
    Approved,
    /// Someone rejected it.
    Rejected,
}

impl std::fmt::Display for ProposalState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ProposalState::Open => "open",
            ProposalState::Approved => "approved",
            ProposalState::Rejected => "rejected",
        })
    }
}

/// The key a proposal names, as the registry described it when the
/// proposal was opened: officers sign the kid, not only a label a row could
/// later point elsewhere.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyTarget {
    /// The key's label.
    pub label: String,
    /// Its chain (`ds`, `status-list`, `audit`).
    pub chain: String,
    /// Its kid (the public key's thumbprint).
    pub kid: String,
}

/// A proposal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// Its id.
    pub id: String,
    /// What it would do.
    pub operation: Operation,
    /// Who proposed it (counts as the first approval).
    pub proposer: String,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// After this it can no longer be approved.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// The key it names, if any.
    #[serde(default)]
    pub target: Option<KeyTarget>,
    /// SHA-256 of the policy in force when it was opened: under any other
    /// policy it is void.
    #[serde(default)]
    pub policy_hash: String,
    /// A policy change's full text.
    #[serde(default)]
    pub policy_text: Option<String>,
    /// Officers' signatures over the canonical proposal (base64url), by
    /// identity: the proposer's and the approvers'.
    #[serde(default)]
    pub signatures: BTreeMap<String, String>,
    /// Distinct officers needed (M of N).
    pub required: usize,
    /// Its state.
    pub state: ProposalState,
    /// The officer who rejected it (one is enough to close it).
    #[serde(default)]
    pub rejected_by: Option<String>,
    /// When the last approval came.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub approved_at: Option<OffsetDateTime>,
    /// What carrying it out gave, once approved.
    #[serde(default)]
    pub result: Option<String>,
}

/// Why an officer action was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApprovalError {
    /// The identity does not hold the officer role.
    #[error("{0:?} is not an officer")]
    NotOfficer(String),
    /// The officer already signed it.
    #[error("{0:?} has already signed this proposal")]
    AlreadyApproved(String),
    /// Past its expiry.
    #[error("the proposal expired at {0}")]
    Expired(OffsetDateTime),
    /// Already approved or rejected.
    #[error("the proposal is already {0}")]
    Decided(ProposalState),
    /// M must be at least 2 and at most N.
    #[error("approvals required must be 2 to {officers} (the officers there are), got {required}")]
    Quorum {
        /// Asked for.
        required: usize,
        /// Officers known.
        officers: usize,
    },
}

/// The dual-control settings: M approvals of N officers, proposal lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DualControl {
    /// Distinct officers needed, the proposer included (M, default 2).
    pub required: usize,
    /// Officers there are (N).
    pub officers: usize,
    /// How long a proposal stays open.
    pub lifetime: Duration,
}

impl DualControl {
    /// Opens a proposal by `proposer`, who must be an officer, under the
    /// policy of `policy_hash`; no signature yet (the proposer signs it
    /// like any approver, once it has an id and times).
    pub fn propose(
        &self,
        id: &str,
        operation: Operation,
        proposer: &str,
        is_officer: impl Fn(&str) -> bool,
        policy_hash: &str,
        now: OffsetDateTime,
    ) -> Result<Proposal, ApprovalError> {
        if !is_officer(proposer) {
            return Err(ApprovalError::NotOfficer(proposer.to_owned()));
        }
        if self.required < 2 || self.required > self.officers {
            return Err(ApprovalError::Quorum {
                required: self.required,
                officers: self.officers,
            });
        }
        Ok(Proposal {
            id: id.to_owned(),
            operation,
            proposer: proposer.to_owned(),
            created_at: now,
            expires_at: now + self.lifetime,
            target: None,
            policy_hash: policy_hash.to_owned(),
            policy_text: None,
            signatures: BTreeMap::new(),
            required: self.required,
            state: ProposalState::Open,
            rejected_by: None,
            approved_at: None,
            result: None,
        })
    }
}

fn check_open(
    p: &Proposal,
    officer: &str,
    is_officer: &impl Fn(&str) -> bool,
    now: OffsetDateTime,
) -> Result<(), ApprovalError> {
    if !is_officer(officer) {
        return Err(ApprovalError::NotOfficer(officer.to_owned()));
    }
    if p.state != ProposalState::Open {
        return Err(ApprovalError::Decided(p.state));
    }
    if now >= p.expires_at {
        return Err(ApprovalError::Expired(p.expires_at));
    }
    Ok(())
}

impl Proposal {
    /// `officer` adds their `signature` (checked by the caller). Nobody
    /// signs twice.
    pub fn sign(
        &mut self,
        officer: &str,
        signature: String,
        is_officer: impl Fn(&str) -> bool,
        now: OffsetDateTime,
    ) -> Result<(), ApprovalError> {
        check_open(self, officer, &is_officer, now)?;
        if self.signatures.contains_key(officer) {
            return Err(ApprovalError::AlreadyApproved(officer.to_owned()));
        }
        let _ = self.signatures.insert(officer.to_owned(), signature);
        Ok(())
    }

    /// With `verified` distinct officers' signatures checked good, the
    /// proposal is approved once they reach the larger of the M it opened
    /// with and `required_now` (today's policy).
    pub fn settle(
        &mut self,
        verified: usize,
        required_now: usize,
        now: OffsetDateTime,
    ) -> ProposalState {
        if self.state == ProposalState::Open && verified >= self.required.max(required_now) {
            self.state = ProposalState::Approved;
            self.approved_at = Some(now);
        }
        self.state
    }

    /// `officer` (the proposer included) rejects: the proposal is closed.
    pub fn reject(
        &mut self,
        officer: &str,
        is_officer: impl Fn(&str) -> bool,
        now: OffsetDateTime,
    ) -> Result<(), ApprovalError> {
        check_open(self, officer, &is_officer, now)?;
        self.state = ProposalState::Rejected;
        self.rejected_by = Some(officer.to_owned());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2027-01-10 09:00 +9);
    const OFFICERS: [&str; 3] = ["officer-kim", "officer-lee", "officer-park"];

    fn is_officer(id: &str) -> bool {
        OFFICERS.contains(&id)
    }

    fn control(required: usize) -> DualControl {
        DualControl {
            required,
            officers: OFFICERS.len(),
            lifetime: Duration::hours(24),
        }
    }

    fn open(required: usize) -> Proposal {
        let operation = Operation::CreateKey { chain: "ds".into() };
        control(required)
            .propose("p-1", operation, "officer-kim", is_officer, "h", NOW)
            .unwrap()
    }

    #[test]
    fn nobody_signs_twice_and_m_verified_signatures_approve() {
        let mut p = open(2);
        assert!(p.signatures.is_empty());
        p.sign("officer-kim", "s1".into(), is_officer, NOW).unwrap();
        assert_eq!(
            p.sign("officer-kim", "s2".into(), is_officer, NOW),
            Err(ApprovalError::AlreadyApproved("officer-kim".into()))
        );
        assert_eq!(p.settle(1, 2, NOW), ProposalState::Open);
        p.sign("officer-lee", "s3".into(), is_officer, NOW).unwrap();
        assert_eq!(p.settle(2, 2, NOW), ProposalState::Approved);
        assert_eq!(p.approved_at, Some(NOW));
        assert_eq!(
            p.sign("officer-park", "s4".into(), is_officer, NOW),
            Err(ApprovalError::Decided(ProposalState::Approved))
        );
    }

    #[test]
    fn a_raised_m_applies() {
        // Opened with M = 2, policy now says 3.
        let mut p = open(2);
        assert_eq!(p.settle(2, 3, NOW), ProposalState::Open);
        assert_eq!(p.settle(3, 3, NOW), ProposalState::Approved);
    }

    #[test]
    fn expiry_roles_rejection_and_quorum_are_enforced() {
        let mut p = open(2);
        assert_eq!(
            p.sign(
                "officer-lee",
                "s".into(),
                is_officer,
                NOW + Duration::hours(24)
            ),
            Err(ApprovalError::Expired(p.expires_at))
        );
        assert_eq!(
            p.sign(
                "spiffe://mois.go.kr/office-counter",
                "s".into(),
                is_officer,
                NOW
            ),
            Err(ApprovalError::NotOfficer(
                "spiffe://mois.go.kr/office-counter".into()
            ))
        );
        p.reject("officer-park", is_officer, NOW).unwrap();
        assert_eq!(
            p.sign("officer-lee", "s".into(), is_officer, NOW),
            Err(ApprovalError::Decided(ProposalState::Rejected))
        );
        assert_eq!(p.settle(3, 2, NOW), ProposalState::Rejected);
        // An issuer cannot propose; a quorum of 1 or more than the officers is refused.
        let issuer = control(2).propose(
            "p-2",
            Operation::CreateKey { chain: "ds".into() },
            "spiffe://x/issuer",
            is_officer,
            "h",
            NOW,
        );
        assert!(matches!(issuer, Err(ApprovalError::NotOfficer(_))));
        for required in [1, 4] {
            let q = control(required).propose(
                "p-3",
                Operation::CreateKey { chain: "ds".into() },
                "officer-kim",
                is_officer,
                "h",
                NOW,
            );
            assert!(matches!(q, Err(ApprovalError::Quorum { .. })), "{required}");
        }
    }
}
