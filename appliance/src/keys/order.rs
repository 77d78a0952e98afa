//! What makes a proposal an order: the canonical bytes officers sign, and
//! checking that enough pinned officers signed exactly those bytes. The
//! registry holds proposals and signatures, but it can lie; the signatures
//! are checked against the keys the policy pins every time a proposal is
//! acted on, so a row changed after signing, a signature copied from
//! another proposal, a key the policy does not pin or one officer counted
//! twice never adds up to an order.
//!
//! The same holds for adopting a policy: the first one is signed by the
//! officers it names ([`Adoption::First`]), every later one by the officers
//! of the policy before it (a change proposal).

use std::collections::BTreeSet;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use dojang_policies::Policy;
use serde::{Deserialize, Serialize};

use super::approvals::{KeyTarget, Operation, Proposal};

/// Names the signed statement, so a signature over one kind of statement
/// never reads as another's.
const PROPOSAL_CONTEXT: &str = "dojang/officer-proposal/v1";
const FIRST_POLICY_CONTEXT: &str = "dojang/first-policy/v1";

/// The fields officers sign, in a fixed order (JSON of this struct is the
/// canonical form: serde writes fields in declaration order).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanonicalProposal {
    /// [`PROPOSAL_CONTEXT`].
    pub context: String,
    /// The proposal's id.
    pub id: String,
    /// What it does (a revocation's reason included).
    pub operation: Operation,
    /// The key it names, with its kid.
    pub target: Option<KeyTarget>,
    /// The policy in force when proposed.
    pub policy_hash: String,
    /// A policy change's full text.
    pub policy_text: Option<String>,
    /// Who opened it.
    pub proposer: String,
    /// When (RFC 3339).
    pub created_at: String,
    /// Until when it may be signed.
    pub expires_at: String,
    /// Signatures needed when opened.
    pub required: usize,
}

impl CanonicalProposal {
    /// The canonical form of `p`, from its fields as they are now.
    pub fn of(p: &Proposal) -> Self {
        CanonicalProposal {
            context: PROPOSAL_CONTEXT.to_owned(),
            id: p.id.clone(),
            operation: p.operation.clone(),
            target: p.target.clone(),
            policy_hash: p.policy_hash.clone(),
            policy_text: p.policy_text.clone(),
            proposer: p.proposer.clone(),
            created_at: rfc3339(p.created_at),
            expires_at: rfc3339(p.expires_at),
            required: p.required,
        }
    }

    /// The bytes officers sign.
    pub fn bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses bytes a daemon sent, checking they are canonical (what is
    /// shown is exactly what is signed).
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let parsed: CanonicalProposal =
            serde_json::from_slice(bytes).map_err(|e| format!("not a canonical proposal: {e}"))?;
        if parsed.context != PROPOSAL_CONTEXT || parsed.bytes() != bytes {
            return Err("not a canonical proposal (context or encoding)".into());
        }
        parsed.text_matches()?;
        Ok(parsed)
    }

    /// A policy change's text must be the policy of its hash (what is read
    /// is what takes effect).
    pub fn text_matches(&self) -> Result<(), String> {
        match (&self.operation, &self.policy_text) {
            (Operation::ChangePolicy { sha256 }, Some(text))
                if digest(text.as_bytes()).eq_ignore_ascii_case(sha256) =>
            {
                Ok(())
            }
            (Operation::ChangePolicy { .. }, _) => {
                Err("the policy text is not the policy of the proposed SHA-256".into())
            }
            (_, None) => Ok(()),
            (_, Some(_)) => Err("a policy text on a proposal that changes no policy".into()),
        }
    }
}

/// A time as RFC 3339 (as the API shows it).
fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Hex SHA-256 of `bytes`: the digest officers compare (`--expect`).
pub fn digest(bytes: &[u8]) -> String {
    openssl::sha::sha256(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Why signatures do not make an order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrderRefusal {
    /// A stored signature does not verify over the proposal as it stands:
    /// the proposal was changed after signing, or the signature was made
    /// for something else.
    #[error(
        "the signature of {0:?} does not verify over this proposal: it was changed after signing or the signature belongs to another"
    )]
    BadSignature(String),
    /// A signature under an identity the policy pins no key for.
    #[error("{0:?} has no approval key pinned in the policy in force")]
    Unpinned(String),
    /// Opened under another policy (officers or M may have changed).
    #[error("the proposal was opened under policy {0}, not the one in force: propose it again")]
    OtherPolicy(String),
    /// Fewer distinct pinned keys than M.
    #[error("{have} of {need} officers' signatures")]
    Short {
        /// Distinct good signatures.
        have: usize,
        /// Needed.
        need: usize,
    },
}

impl OrderRefusal {
    /// A short stable name (metrics, problem codes).
    pub fn reason(&self) -> &'static str {
        match self {
            OrderRefusal::BadSignature(_) => "bad_signature",
            OrderRefusal::Unpinned(_) => "unpinned_key",
            OrderRefusal::OtherPolicy(_) => "other_policy",
            OrderRefusal::Short { .. } => "too_few_signatures",
        }
    }
}

/// Whether `signature` (base64url raw `r || s`) by `identity` verifies over
/// `message` with the key `policy` pins for that identity.
pub fn check_signature(
    policy: &Policy,
    identity: &str,
    message: &[u8],
    signature: &str,
) -> Result<Vec<u8>, OrderRefusal> {
    let spki = policy
        .officer_key(identity)
        .ok_or_else(|| OrderRefusal::Unpinned(identity.to_owned()))?;
    let good = URL_SAFE_NO_PAD
        .decode(signature)
        .ok()
        .zip(pkcs11_shim::PublicKey::from_spki_der(spki).ok())
        .is_some_and(|(raw, key)| key.verify(message, &raw).unwrap_or(false));
    if good {
        Ok(spki.to_vec())
    } else {
        Err(OrderRefusal::BadSignature(identity.to_owned()))
    }
}

/// Every signature of `p` must verify, by a key `policy` pins, over `p`'s
/// canonical bytes; the number of distinct keys among them.
pub fn verified_signers(p: &Proposal, policy: &Policy) -> Result<usize, OrderRefusal> {
    if p.policy_hash != policy.hash {
        return Err(OrderRefusal::OtherPolicy(p.policy_hash.clone()));
    }
    let message = CanonicalProposal::of(p).bytes();
    let mut keys = BTreeSet::new();
    for (identity, signature) in &p.signatures {
        let _ = keys.insert(check_signature(policy, identity, &message, signature)?);
    }
    Ok(keys.len())
}

/// Checks `p` is an order under `policy`: every signature good and at
/// least M distinct pinned officers.
pub fn verify_order(p: &Proposal, policy: &Policy) -> Result<(), OrderRefusal> {
    let have = verified_signers(p, policy)?;
    let need = p.required.max(policy.officers.approvals_required);
    if have < need {
        return Err(OrderRefusal::Short { have, need });
    }
    Ok(())
}

/// The statement officers sign to adopt the first policy: its full text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirstPolicy {
    /// [`FIRST_POLICY_CONTEXT`].
    pub context: String,
    /// The policy's SHA-256.
    pub policy_hash: String,
    /// The policy's text.
    pub policy_text: String,
}

impl FirstPolicy {
    /// The statement for `text`.
    pub fn new(text: &str) -> Self {
        FirstPolicy {
            context: FIRST_POLICY_CONTEXT.to_owned(),
            policy_hash: digest(text.as_bytes()),
            policy_text: text.to_owned(),
        }
    }

    /// The bytes officers sign.
    pub fn bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// How a policy came to be adopted, kept in the registry beside its text
/// and checked by every node that loads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Adoption {
    /// The first policy, signed by M of the officers it names.
    First {
        /// Signatures over [`FirstPolicy::bytes`], by identity.
        signatures: std::collections::BTreeMap<String, String>,
    },
    /// A change, approved under the policy before it.
    Change {
        /// The change proposal as carried out.
        proposal: Box<Proposal>,
    },
}

/// Checks the first policy's adoption: `text` is `policy`'s, and M distinct
/// officers it pins signed it.
pub fn verify_first(
    policy: &Policy,
    text: &str,
    signatures: &std::collections::BTreeMap<String, String>,
) -> Result<(), OrderRefusal> {
    let statement = FirstPolicy::new(text);
    if statement.policy_hash != policy.hash {
        return Err(OrderRefusal::OtherPolicy(statement.policy_hash));
    }
    verify_m_signers(policy, &statement.bytes(), signatures)
}

/// Every signature of `signatures` (identity → base64url signature) good
/// over `message` by a key `policy` pins, and at least M distinct keys.
pub fn verify_m_signers(
    policy: &Policy,
    message: &[u8],
    signatures: &std::collections::BTreeMap<String, String>,
) -> Result<(), OrderRefusal> {
    let mut keys = BTreeSet::new();
    for (identity, signature) in signatures {
        let _ = keys.insert(check_signature(policy, identity, message, signature)?);
    }
    let need = policy.officers.approvals_required;
    if keys.len() < need {
        return Err(OrderRefusal::Short {
            have: keys.len(),
            need,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::approvals::{DualControl, ProposalState};
    use openssl::ec::{EcGroup, EcKey};
    use openssl::nid::Nid;
    use openssl::pkey::{PKey, Private};
    use time::macros::datetime;

    const KIM: &str = "spiffe://mois.go.kr/officer/kim";
    const LEE: &str = "spiffe://mois.go.kr/officer/lee";

    fn key() -> PKey<Private> {
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
        PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap()
    }

    fn sign(key: &PKey<Private>, message: &[u8]) -> String {
        let mut signer =
            openssl::sign::Signer::new(openssl::hash::MessageDigest::sha256(), key).unwrap();
        let der = signer.sign_oneshot_to_vec(message).unwrap();
        URL_SAFE_NO_PAD.encode(pkcs11_shim::ecdsa_der_to_raw(&der, 32).unwrap())
    }

    /// The shipped policy with kim and lee pinned; its text.
    fn policy(kim: &PKey<Private>, lee: &PKey<Private>) -> (Policy, String) {
        let mut text = dojang_policies::SHIPPED_POLICY.to_owned();
        for (who, k) in [(KIM, kim), (LEE, lee)] {
            let spki = openssl::base64::encode_block(&k.public_key_to_der().unwrap());
            text.push_str(&format!(
                "\n[[clients]]\nidentity = \"{who}\"\nroles = [\"officer\"]\nsigning_key = \"{spki}\"\n"
            ));
        }
        (Policy::parse("t", &text).unwrap(), text)
    }

    fn proposal(id: &str, policy: &Policy) -> Proposal {
        let control = DualControl {
            required: 2,
            officers: 2,
            lifetime: time::Duration::hours(1),
        };
        control
            .propose(
                id,
                Operation::EmergencyRevoke {
                    label: "ds-1".into(),
                    reason: "lost".into(),
                },
                KIM,
                |_| true,
                &policy.hash,
                datetime!(2027-01-10 09:00 UTC),
            )
            .unwrap()
    }

    #[test]
    fn the_canonical_bytes_are_exactly_what_parses_back() {
        let (kim, lee) = (key(), key());
        let (policy, _) = policy(&kim, &lee);
        let p = proposal("p-1", &policy);
        let bytes = CanonicalProposal::of(&p).bytes();
        assert_eq!(
            CanonicalProposal::parse(&bytes).unwrap(),
            CanonicalProposal::of(&p)
        );
        // The same content spelled otherwise is not what was signed.
        let spaced = String::from_utf8(bytes).unwrap().replacen(':', ": ", 1);
        assert!(CanonicalProposal::parse(spaced.as_bytes()).is_err());
        assert_eq!(digest(b"abc").len(), 64);
    }

    #[test]
    fn m_distinct_pinned_signatures_over_the_exact_bytes_make_an_order() {
        let (kim, lee, mallory) = (key(), key(), key());
        let (policy, _) = policy(&kim, &lee);
        let mut p = proposal("p-1", &policy);
        let message = CanonicalProposal::of(&p).bytes();
        let _ = p.signatures.insert(KIM.into(), sign(&kim, &message));
        assert_eq!(
            verify_order(&p, &policy),
            Err(OrderRefusal::Short { have: 1, need: 2 })
        );
        let _ = p.signatures.insert(LEE.into(), sign(&lee, &message));
        assert_eq!(verify_order(&p, &policy), Ok(()));
        assert_eq!(p.settle(2, 2, p.created_at), ProposalState::Approved);

        // Altered after signing.
        let mut altered = p.clone();
        altered.operation = Operation::DestroyKey {
            label: "pseudonym".into(),
        };
        assert_eq!(
            verify_order(&altered, &policy),
            Err(OrderRefusal::BadSignature(KIM.into()))
        );
        // A signature from another proposal.
        let mut other = proposal("p-2", &policy);
        let _ = other
            .signatures
            .insert(KIM.into(), p.signatures[KIM].clone());
        assert_eq!(
            verified_signers(&other, &policy),
            Err(OrderRefusal::BadSignature(KIM.into()))
        );
        // Kim's signature under lee's name.
        let mut twice = p.clone();
        let _ = twice
            .signatures
            .insert(LEE.into(), p.signatures[KIM].clone());
        assert_eq!(
            verify_order(&twice, &policy),
            Err(OrderRefusal::BadSignature(LEE.into()))
        );
        // A good signature by a key nobody pinned.
        let mut unpinned = p.clone();
        let name = "spiffe://mois.go.kr/officer/mallory";
        let _ = unpinned
            .signatures
            .insert(name.into(), sign(&mallory, &message));
        assert_eq!(
            verify_order(&unpinned, &policy),
            Err(OrderRefusal::Unpinned(name.into()))
        );
        // Not base64, wrong length.
        let mut garbled = p.clone();
        let _ = garbled.signatures.insert(KIM.into(), "*".into());
        assert_eq!(
            verify_order(&garbled, &policy),
            Err(OrderRefusal::BadSignature(KIM.into()))
        );
        // Opened under another policy.
        let mut stale = p.clone();
        stale.policy_hash = "00".repeat(32);
        assert!(matches!(
            verify_order(&stale, &policy),
            Err(OrderRefusal::OtherPolicy(_))
        ));
    }

    #[test]
    fn the_first_policy_needs_m_of_the_officers_it_names() {
        let (kim, lee, mallory) = (key(), key(), key());
        let (policy, text) = policy(&kim, &lee);
        let statement = FirstPolicy::new(&text).bytes();
        let mut signatures = std::collections::BTreeMap::new();
        let _ = signatures.insert(KIM.to_owned(), sign(&kim, &statement));
        assert!(matches!(
            verify_first(&policy, &text, &signatures),
            Err(OrderRefusal::Short { .. })
        ));
        let _ = signatures.insert(LEE.to_owned(), sign(&mallory, &statement));
        assert_eq!(
            verify_first(&policy, &text, &signatures),
            Err(OrderRefusal::BadSignature(LEE.into()))
        );
        let _ = signatures.insert(LEE.to_owned(), sign(&lee, &statement));
        assert_eq!(verify_first(&policy, &text, &signatures), Ok(()));
        // Another text under the same signatures.
        let other = text.replace("quota = 468000", "quota = 1");
        assert!(verify_first(&policy, &other, &signatures).is_err());
    }
}
