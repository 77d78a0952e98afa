//! What the registry keeps about signing keys and officer proposals, so
//! every node of a cluster sees the same key chain: records with their
//! state and certificate, usage counts, a lease that picks the one node
//! acting on a schedule, proposals, and the IACA's current CRL.

use time::OffsetDateTime;

use super::{CredentialState, DecisionRecord, StoreError};

use crate::keys::approvals::Proposal;
use crate::keys::lifecycle::{KeyRecord, KeyState};

/// The rule a CRL write refuses under when another CRL was stored meanwhile.
pub const CRL_CONCURRENT: &str = "pki.crl_concurrent";

/// The audit entry for credentials moved by a key's revocation, given how
/// many moved (known only inside the transaction).
pub type MovedAudit = Box<dyn Fn(u64) -> DecisionRecord + Send>;

/// The chain of document-signer keys (they sign every credential profile).
pub const DS_CHAIN: &str = "ds";
/// The chain of status-list keys (they sign `statuslist+jwt` tokens).
pub const STATUS_CHAIN: &str = "status-list";
/// The chain of audit keys (they sign the audit log's checkpoints).
pub const AUDIT_CHAIN: &str = "audit";
/// Every chain the daemon rotates.
pub const CHAINS: [&str; 3] = [DS_CHAIN, STATUS_CHAIN, AUDIT_CHAIN];
/// The IACA's current CRL (PEM).
pub const CRL_DOCUMENT: &str = "iaca.crl";
/// The SHA-256 (hex) of the policy officers adopted.
pub const POLICY_DOCUMENT: &str = "policy.sha256";
/// The registry's copy of the policy text whose SHA-256 is `hash` (hex),
/// kept once a node has loaded it, so an operator can restore the file
/// every node must have (`dojangctl policy adopted`).
pub fn policy_text_document(hash: &str) -> String {
    format!("policy.toml/{hash}")
}
/// How the policy of SHA-256 `hash` was adopted (officers' signatures, JSON
/// of [`crate::keys::order::Adoption`]): every node checks it before
/// running that policy.
pub fn policy_adoption_document(hash: &str) -> String {
    format!("policy.adoption/{hash}")
}
/// The officers' signed order revoking key `label` (JSON of the approved
/// proposal): a revocation row without it is not put on a CRL.
pub fn revocation_order_document(label: &str) -> String {
    format!("revocation.order/{label}")
}
/// The IACA rollovers officers held (JSON list of
/// `pki::exchange::RolloverCertificates`, oldest first): each successor
/// root with its links; trusted only through the link from the root before.
pub const ROLLOVER_DOCUMENT: &str = "iaca.rollovers";
/// The CRL (PEM) of a successor root, by its short key id (the first
/// root's is [`CRL_DOCUMENT`]).
pub fn root_crl_document(short_key_id: &str) -> String {
    format!("iaca.crl/{short_key_id}")
}
/// The DS spare pool (offline IACA): keys generated in the token ahead of
/// need, and the certificates ceremonies issued for them (JSON).
pub const POOL_DOCUMENT: &str = "ds.pool";
/// A ceremony request the daemon made (its exact JSON bytes).
pub fn ceremony_request_document(id: &str) -> String {
    format!("ceremony.request/{id}")
}
/// The record digest of the response that answered request `id`: a
/// request is answered once.
pub fn ceremony_answer_document(id: &str) -> String {
    format!("ceremony.answer/{id}")
}
/// The IACA certificate (PEM), when officers had the daemon generate it.
pub const IACA_DOCUMENT: &str = "iaca.pem";
/// The check value of the pseudonym key every holder in the registry was
/// recognised with (`issuance::pseudonym_key_check`): a node whose token
/// holds another key refuses to start.
pub const PSEUDONYM_CHECK_DOCUMENT: &str = "pseudonym.check";

/// A key as the registry keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredKey {
    /// Which chain (`ds`).
    pub chain: String,
    /// The public key's `kid` (JWK thumbprint): what credentials name.
    pub kid: String,
    /// The DS certificate (DER), for a `ds` key.
    pub certificate: Option<Vec<u8>>,
    /// The public key (SPKI DER): kept after the key is destroyed (audit
    /// checkpoints it signed stay verifiable).
    pub public_key: Vec<u8>,
    /// Lifecycle facts.
    pub record: KeyRecord,
    /// Why it was emergency-revoked, and when.
    pub revocation: Option<(String, OffsetDateTime)>,
}

impl StoredKey {
    /// The kid of the key its DS certificate certifies: the IACA signed
    /// that, while the row's `kid` is only a row. `None` without a
    /// certificate, or an unreadable one.
    pub fn certificate_kid(&self) -> Option<String> {
        let der = self.certificate.as_deref()?;
        let spki = openssl::x509::X509::from_der(der)
            .and_then(|c| c.public_key())
            .and_then(|k| k.public_key_to_der())
            .ok()?;
        pkcs11_shim::PublicKey::from_spki_der(&spki)
            .ok()
            .map(|k| k.kid())
    }
}

/// A proposal with the version its row had when read (updates check it).
#[derive(Debug, Clone)]
pub struct StoredProposal {
    /// The proposal.
    pub proposal: Proposal,
    /// Row version.
    pub version: i64,
}

/// Emergency revocation of a key, as one registry change.
#[derive(Debug, Clone)]
pub struct KeyRevocation {
    /// The key.
    pub label: String,
    /// Recorded reason.
    pub reason: String,
    /// When.
    pub at: OffsetDateTime,
    /// What becomes of the `active` (and `suspended`) credentials it signed.
    pub credentials: Option<CredentialState>,
}

/// The key and proposal half of the registry.
pub trait KeyRegistry {
    /// Every key record, oldest first.
    fn keys(&self) -> Result<Vec<StoredKey>, StoreError>;
    /// Adds a key (state from its record); `keys.label` if the label is
    /// taken, `keys.one_pending` if its chain already has a pending key.
    fn add_key(&self, key: &StoredKey, decision: DecisionRecord) -> Result<(), StoreError>;
    /// Moves keys between states, all or none, with one audit entry per
    /// decision; `keys.state` if a key is not in the expected state
    /// (another node moved it first). A key made active signs from `at` if
    /// its activation time was later.
    fn move_keys(
        &self,
        moves: &[(String, KeyState, KeyState)],
        at: OffsetDateTime,
        decisions: Vec<DecisionRecord>,
    ) -> Result<(), StoreError>;
    /// Marks a key revoked (an active or pending key retires at once) and
    /// changes the status of what it signed; the credentials changed.
    fn revoke_key(
        &self,
        revocation: &KeyRevocation,
        decision: DecisionRecord,
    ) -> Result<u64, StoreError>;
    /// Adds signatures made by a key and the latest expiry among them.
    fn add_key_usage(
        &self,
        label: &str,
        signatures: u64,
        last_valid_until: i64,
    ) -> Result<(), StoreError>;
    /// Takes or renews the lease `name` for `holder` for `ttl_ms`, by the
    /// database's clock (nodes' clocks may differ); false while another
    /// holder's lease runs.
    fn lease(&self, name: &str, holder: &str, ttl_ms: i64) -> Result<bool, StoreError>;
    /// Stores the IACA's certificate of the status-list key `label`
    /// (`certificates.1`) in place of the one read (`certificates.0`:
    /// `None` for none, or an older root's) and its end, with its audit
    /// entry; whether this call stored
    /// it (another node, or an earlier import, may have). What reads it
    /// back checks it: a row is never trusted.
    fn certify_key(
        &self,
        label: &str,
        certificates: (Option<&[u8]>, &[u8]),
        not_after: OffsetDateTime,
        decision: DecisionRecord,
    ) -> Result<bool, StoreError>;
    /// Moves credentials signed by `kid` that are still in a source state of
    /// `to` (see `revocation_sources`) to `to`; how many. For what was
    /// signed with a key while its revocation committed. When any moved,
    /// `audit(how many)` is recorded in the same transaction.
    fn mark_signed_by(
        &self,
        kid: &str,
        to: CredentialState,
        audit: MovedAudit,
    ) -> Result<u64, StoreError>;
    /// Stores a new proposal (`version` is ignored).
    fn add_proposal(&self, proposal: &Proposal, decision: DecisionRecord)
    -> Result<(), StoreError>;
    /// Replaces a proposal if its row is still at `version`;
    /// `approvals.concurrent` if someone else changed it first.
    fn update_proposal(
        &self,
        proposal: &Proposal,
        version: i64,
        decision: DecisionRecord,
    ) -> Result<(), StoreError>;
    /// One proposal.
    fn proposal(&self, id: &str) -> Result<StoredProposal, StoreError>;
    /// Proposals newest first, at most `limit`.
    fn proposals(&self, limit: u32) -> Result<Vec<StoredProposal>, StoreError>;
    /// Replaces a document every node shares ([`POLICY_DOCUMENT`]; the CRL
    /// goes through [`set_crl`](Self::set_crl)), with its audit entry in the
    /// same transaction.
    fn set_document(
        &self,
        name: &str,
        body: &str,
        decision: DecisionRecord,
    ) -> Result<(), StoreError>;
    /// Stores a shared document unless one of that name exists; whether
    /// this call stored it (the first of several nodes wins). The audit
    /// entry is recorded with it, and only if it was stored.
    fn set_document_if_absent(
        &self,
        name: &str,
        body: &str,
        decision: DecisionRecord,
    ) -> Result<bool, StoreError>;
    /// A shared document, if the registry has it.
    fn document(&self, name: &str) -> Result<Option<String>, StoreError>;
    /// The current CRL (PEM), if one was issued.
    fn crl(&self) -> Result<Option<String>, StoreError> {
        self.document(CRL_DOCUMENT)
    }
    /// Replaces the CRL `replaces` (`None`: there was none) with `pem`,
    /// with its audit entry. A node that read an older CRL than the stored
    /// one (another node published meanwhile) gets `Conflict`: two CRLs
    /// never take the same place, whichever node believed it led.
    fn set_crl(
        &self,
        pem: &str,
        replaces: Option<&str>,
        decision: DecisionRecord,
    ) -> Result<(), StoreError>;
}

/// The serial numbers of revoked keys' certificates (for the CRL); an
/// unreadable certificate is an error, never a serial left off.
pub fn revoked_serials(keys: &[StoredKey]) -> Result<Vec<Vec<u8>>, StoreError> {
    keys.iter()
        .filter(|k| k.record.revoked)
        .filter_map(|k| k.certificate.as_deref().map(|der| (&k.record.label, der)))
        .map(|(label, der)| {
            openssl::x509::X509::from_der(der)
                .and_then(|c| c.serial_number().to_bn())
                .map(|bn| bn.to_vec())
                .map_err(|e| StoreError::Internal(format!("certificate of key {label}: {e}")))
        })
        .collect()
}

pub(crate) fn proposal_json(p: &Proposal) -> Result<String, StoreError> {
    serde_json::to_string(p).map_err(|e| StoreError::Internal(e.to_string()))
}

pub(crate) fn proposal_from(json: &str, version: i64) -> Result<StoredProposal, StoreError> {
    serde_json::from_str(json)
        .map(|proposal| StoredProposal { proposal, version })
        .map_err(|e| StoreError::Internal(format!("stored proposal: {e}")))
}

pub(crate) fn state_from(text: &str) -> Result<KeyState, StoreError> {
    KeyState::parse(text).ok_or_else(|| StoreError::Internal(format!("key state {text:?}")))
}

pub(crate) fn time_from(seconds: i64) -> Result<OffsetDateTime, StoreError> {
    OffsetDateTime::from_unix_timestamp(seconds).map_err(|e| StoreError::Internal(e.to_string()))
}

/// The credential states an emergency revocation moves to `to`.
pub(crate) fn revocation_sources(to: CredentialState) -> &'static [&'static str] {
    match to {
        CredentialState::Revoked => &["active", "suspended"],
        _ => &["active"],
    }
}
