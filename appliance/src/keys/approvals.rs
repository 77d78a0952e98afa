//! Dual control: an officer operation is a proposal that takes effect only
//! when `required` distinct officers — the proposer and others — have
//! approved it before it expires. Nobody approves their own proposal twice
//! over, issuers cannot propose, one rejection ends it.

use std::collections::BTreeSet;

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
    /// Adopt the policy file of this SHA-256 (hex): nodes load it once
    /// their file has it.
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
    /// Officers in favour, the proposer included.
    pub approvals: BTreeSet<String>,
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
    /// The proposer cannot approve their own proposal.
    #[error("an officer cannot approve their own proposal")]
    SelfApproval,
    /// The officer already approved it.
    #[error("{0:?} has already approved this proposal")]
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
    /// Opens a proposal by `proposer`, who must be an officer.
    pub fn propose(
        &self,
        id: &str,
        operation: Operation,
        proposer: &str,
        is_officer: impl Fn(&str) -> bool,
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
            approvals: BTreeSet::from([proposer.to_owned()]),
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
    /// `officer` approves; the proposal is approved once enough distinct
    /// officers are in favour: the larger of the M it opened with and
    /// `required_now` (today's policy), counting only those who are
    /// officers now (one removed from the policy no longer counts).
    pub fn approve(
        &mut self,
        officer: &str,
        is_officer: impl Fn(&str) -> bool,
        required_now: usize,
        now: OffsetDateTime,
    ) -> Result<ProposalState, ApprovalError> {
        check_open(self, officer, &is_officer, now)?;
        if officer == self.proposer {
            return Err(ApprovalError::SelfApproval);
        }
        if !self.approvals.insert(officer.to_owned()) {
            return Err(ApprovalError::AlreadyApproved(officer.to_owned()));
        }
        let counted = self.approvals.iter().filter(|a| is_officer(a)).count();
        if counted >= self.required.max(required_now) {
            self.state = ProposalState::Approved;
            self.approved_at = Some(now);
        }
        Ok(self.state)
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
            .propose("p-1", operation, "officer-kim", is_officer, NOW)
            .unwrap()
    }

    #[test]
    fn two_of_n_needs_one_other_officer() {
        let mut p = open(2);
        assert_eq!(
            p.approve("officer-kim", is_officer, 2, NOW),
            Err(ApprovalError::SelfApproval)
        );
        assert_eq!(
            p.approve("officer-lee", is_officer, 2, NOW),
            Ok(ProposalState::Approved)
        );
        assert_eq!(
            p.approve("officer-park", is_officer, 2, NOW),
            Err(ApprovalError::Decided(ProposalState::Approved))
        );
    }

    #[test]
    fn m_of_n_counts_distinct_officers() {
        let mut p = open(3);
        assert_eq!(
            p.approve("officer-lee", is_officer, 2, NOW),
            Ok(ProposalState::Open)
        );
        assert_eq!(
            p.approve("officer-lee", is_officer, 2, NOW),
            Err(ApprovalError::AlreadyApproved("officer-lee".into()))
        );
        assert_eq!(
            p.approve("officer-park", is_officer, 2, NOW),
            Ok(ProposalState::Approved)
        );
        assert_eq!(p.approvals.len(), 3);
    }

    #[test]
    fn only_current_officers_count_and_a_raised_m_applies() {
        // Lee left the officers after approving: not counted.
        let mut p = open(3);
        let _ = p.approve("officer-lee", is_officer, 3, NOW).unwrap();
        let without_lee = |id: &str| id != "officer-lee" && is_officer(id);
        assert_eq!(
            p.approve("officer-park", without_lee, 3, NOW),
            Ok(ProposalState::Open)
        );
        // Opened with M = 2, policy now says 3.
        let mut p = open(2);
        assert_eq!(
            p.approve("officer-lee", is_officer, 3, NOW),
            Ok(ProposalState::Open)
        );
        assert_eq!(
            p.approve("officer-park", is_officer, 3, NOW),
            Ok(ProposalState::Approved)
        );
        assert_eq!(p.approved_at, Some(NOW));
    }

    #[test]
    fn expiry_roles_rejection_and_quorum_are_enforced() {
        let mut p = open(2);
        assert_eq!(
            p.approve("officer-lee", is_officer, 2, NOW + Duration::hours(24)),
            Err(ApprovalError::Expired(p.expires_at))
        );
        assert_eq!(
            p.approve("spiffe://mois.go.kr/office-counter", is_officer, 2, NOW),
            Err(ApprovalError::NotOfficer(
                "spiffe://mois.go.kr/office-counter".into()
            ))
        );
        p.reject("officer-park", is_officer, NOW).unwrap();
        assert_eq!(
            p.approve("officer-lee", is_officer, 2, NOW),
            Err(ApprovalError::Decided(ProposalState::Rejected))
        );
        // An issuer cannot propose; a quorum of 1 or more than the officers is refused.
        let issuer = control(2).propose(
            "p-2",
            Operation::CreateKey { chain: "ds".into() },
            "spiffe://x/issuer",
            is_officer,
            NOW,
        );
        assert!(matches!(issuer, Err(ApprovalError::NotOfficer(_))));
        for required in [1, 4] {
            let q = control(required).propose(
                "p-3",
                Operation::CreateKey { chain: "ds".into() },
                "officer-kim",
                is_officer,
                NOW,
            );
            assert!(matches!(q, Err(ApprovalError::Quorum { .. })), "{required}");
        }
    }
}
