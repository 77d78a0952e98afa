//! What the registry keeps and promises, whatever the database: the
//! credential, decision and idempotency types, the [`Registry`] trait, and
//! the rules both databases apply the same way (state transitions, refresh
//! ownership, status-index blocks).

use std::fmt;

use super::keyring::KeyRegistry;

/// A holder pseudonym: HMAC-SHA256 of the resident number under the HSM's
/// pseudonym key. `Debug` shows a prefix only.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Pseudonym(pub [u8; 32]);

impl fmt::Debug for Pseudonym {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pseudonym({:02x}{:02x}…)", self.0[0], self.0[1])
    }
}

/// A credential's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialState {
    /// Valid.
    Active,
    /// Temporarily invalid (status 0x02).
    Suspended,
    /// Revoked (status 0x01).
    Revoked,
    /// Replaced by a credential on the holder's new phone (status 0x01).
    Superseded,
}

impl CredentialState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialState::Active => "active",
            CredentialState::Suspended => "suspended",
            CredentialState::Revoked => "revoked",
            CredentialState::Superseded => "superseded",
        }
    }

    pub(crate) fn parse(text: &str) -> Result<Self, StoreError> {
        Ok(match text {
            "active" => CredentialState::Active,
            "suspended" => CredentialState::Suspended,
            "revoked" => CredentialState::Revoked,
            "superseded" => CredentialState::Superseded,
            other => {
                return Err(StoreError::Internal(format!(
                    "unknown state {other:?} in the store"
                )));
            }
        })
    }

    /// The IETF Token Status List value: 0 valid, 1 invalid, 2 suspended.
    pub fn status_value(self) -> u8 {
        match self {
            CredentialState::Active => 0,
            CredentialState::Revoked | CredentialState::Superseded => 1,
            CredentialState::Suspended => 2,
        }
    }
}

/// What the registry knows about a holder and a phone, for the policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HolderFacts {
    /// The holder's live (active or suspended) credential: on this phone?
    pub holder_live_on_same_device: Option<bool>,
    /// The holder's live credential is suspended.
    pub holder_suspended: bool,
    /// The phone holds another holder's live credential.
    pub device_bound_to_other_holder: bool,
    /// Free copies issued so far.
    pub free_copies_issued: u64,
    /// The holder has had a mobile ID before (any state).
    pub held_before: bool,
}

/// Status-list positions reserved for one node: drawn at random from the
/// list's free ones, in the order drawn, none ever handed out twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusPositions {
    /// The list.
    pub list: u32,
    /// The positions, in the order they were drawn.
    pub indexes: Vec<u64>,
}

/// A new credential's registry row.
#[derive(Debug, Clone)]
pub struct NewCredential {
    /// Random id (hex).
    pub id: String,
    /// The holder's pseudonym.
    pub holder: Pseudonym,
    /// RFC 7638 thumbprint of the phone's key.
    pub device: String,
    /// Profile name.
    pub profile: String,
    /// `kid` of the DS key that signed it.
    pub kid: String,
    /// Status list and index.
    pub status_list: u32,
    /// Index in the list.
    pub status_index: u64,
    /// Unix seconds.
    pub issued_at: i64,
    /// Signature valid until (unix seconds).
    pub valid_until: i64,
    /// The document's last day, "YYYY-MM-DD".
    pub document_expiry: String,
    /// HMAC (in the HSM) of the document's claims: a refresh must present
    /// the same claims. Never the claims themselves.
    pub claims_mac: [u8; 32],
    /// Whether it carries a portrait (a wallet's refresh must show it).
    pub has_portrait: bool,
}

/// The decision recorded with an operation: the registry appends it to the
/// audit log in the same transaction as the operation itself.
#[derive(Debug, Clone, Default)]
pub struct DecisionRecord {
    /// The node that decided.
    pub node: String,
    /// Unix seconds.
    pub at: i64,
    /// Client or officer identity.
    pub actor: String,
    /// SHA-256 of the certificate the actor presented (none for the
    /// daemon's own decisions and the operator's tool).
    pub actor_certificate: Option<[u8; 32]>,
    /// `issue`, `revoke`, `suspend`, `reinstate`, `refresh`, …
    pub action: String,
    /// `allow` / `deny`.
    pub outcome: String,
    /// The refusing rule, if any.
    pub rule: Option<String>,
    /// SHA-256 of the policy file (hex).
    pub policy_hash: String,
    /// Credential profile.
    pub profile: Option<String>,
    /// Key id of the signing key.
    pub key_id: Option<String>,
    /// SHA-256 of what was signed and handed out.
    pub payload_sha256: Option<[u8; 32]>,
}

impl DecisionRecord {
    /// The audit entry for this decision: `node_seq` is its place in the
    /// node's own sequence.
    pub fn entry(
        &self,
        node_seq: u64,
        credential: Option<&str>,
        holder: Option<&Pseudonym>,
    ) -> crate::audit::entry::AuditEntry {
        crate::audit::entry::AuditEntry {
            time: self.at,
            node: self.node.clone(),
            seq: node_seq,
            actor: self.actor.clone(),
            action: self.action.clone(),
            outcome: self.outcome.clone(),
            rule: self.rule.clone(),
            policy_hash: (!self.policy_hash.is_empty()).then(|| self.policy_hash.clone()),
            profile: self.profile.clone(),
            credential_id: credential.map(str::to_owned),
            key_id: self.key_id.clone(),
            payload_sha256: self.payload_sha256,
            holder: holder.map(|h| h.0),
            actor_certificate: self.actor_certificate,
            seal: None,
        }
    }
}

/// An idempotency key with the hash of the request body it came with.
#[derive(Debug, Clone)]
pub struct IdempotencyKey {
    /// The client's key (`Idempotency-Key`).
    pub key: String,
    /// SHA-256 of the request body.
    pub request_hash: [u8; 32],
}

/// Everything committed for one issuance, in one transaction.
#[derive(Debug, Clone)]
pub struct IssuanceCommit {
    /// The row.
    pub credential: NewCredential,
    /// Retire the holder's live credential on another phone.
    pub supersede: bool,
    /// Take a free first-time copy if any is left.
    pub want_free_copy: bool,
    /// Idempotency key, if the client sent one.
    pub idempotency: Option<IdempotencyKey>,
    /// The decision.
    pub decision: DecisionRecord,
    /// Copies of the credential in a batch, each on its own phone key.
    pub copies: Vec<BatchCopy>,
}

/// A copy of a batch: its row (the holder, claims and document of the
/// credential it copies; its own id, key and status position) and the
/// SHA-256 of what was handed out, for its audit entry.
#[derive(Debug, Clone)]
pub struct BatchCopy {
    /// The row.
    pub credential: NewCredential,
    /// SHA-256 of the signed copy.
    pub payload_sha256: [u8; 32],
}

/// What the transaction did, for building the response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// A free copy was taken (no fee).
    pub free_copy: bool,
    /// Ids of credentials superseded on other phones.
    pub superseded: Vec<String>,
}

/// Builds the response stored under the idempotency key, inside the
/// transaction (the fee depends on whether a free copy was left); before
/// anything is written, for the predicted outcome, where PostgreSQL issues
/// in one statement (so it may be called twice: `Fn`).
pub type Respond = Box<dyn Fn(&Committed) -> Vec<u8> + Send>;

/// A stored credential's metadata (never personal data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialMeta {
    /// Id.
    pub id: String,
    /// Profile.
    pub profile: String,
    /// DS key id.
    pub kid: String,
    /// State.
    pub state: CredentialState,
    /// Status list.
    pub status_list: u32,
    /// Index.
    pub status_index: u64,
    /// Unix seconds.
    pub issued_at: i64,
    /// Unix seconds.
    pub valid_until: i64,
    /// "YYYY-MM-DD".
    pub document_expiry: String,
    /// Suspended because its DS key was revoked (not by a revoker): it may
    /// be refreshed, never reinstated.
    pub suspended_for_key: bool,
    /// The holder's pseudonym (never shown to clients).
    pub holder: Pseudonym,
    /// The phone's key thumbprint (never shown to clients).
    pub device: String,
    /// HMAC of the document's claims (absent for rows from before it was kept).
    pub claims_mac: Option<[u8; 32]>,
    /// Whether it carries a portrait (unknown before migration 13).
    pub has_portrait: Option<bool>,
}

/// A registry operation that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A uniqueness invariant refused it; `rule` names which.
    #[error("conflict: {rule}")]
    Conflict {
        /// `holder.one_active`, `device.one_person`.
        rule: &'static str,
    },
    /// Same idempotency key, other request body.
    #[error("idempotency key reused with a different request")]
    IdempotencyMismatch,
    /// The same idempotency key committed concurrently: replay its response.
    #[error("idempotency key already committed")]
    IdempotencyReplay(Vec<u8>),
    /// No such credential.
    #[error("no such credential")]
    NotFound,
    /// The state change is not allowed from the current state.
    #[error("a {from} credential cannot be {to}")]
    InvalidTransition {
        /// Current state.
        from: &'static str,
        /// Wanted state.
        to: &'static str,
    },
    /// The database is unreachable, read-only, full…: retry later (503).
    #[error("registry unavailable: {0}")]
    Unavailable(String),
    /// A bug or a corrupt store.
    #[error("registry error: {0}")]
    Internal(String),
}

/// Counts of the store's own upkeep since the process started (metrics).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Upkeep {
    /// Issuances written in a group of two or more (PostgreSQL).
    pub grouped_issuances: u64,
    /// Times the write-ahead log was made to start over past its bound, the
    /// writer waiting meanwhile (SQLite).
    pub wal_restarts: u64,
}

/// The registry.
pub trait Registry: KeyRegistry + super::AuditNumbers + Send + Sync {
    /// `sqlite` or `postgres`.
    fn kind(&self) -> &'static str;
    /// Counts of the store's own upkeep.
    fn upkeep(&self) -> Upkeep;
    /// Hands the store's writer its metrics: SQLite's group commits; a
    /// store without such a writer keeps none.
    fn observe_writer(&self, _metrics: crate::metrics::store::WriterMetrics) {}
    /// Sets the free first-time quota (from the policy); never below what was used.
    fn set_free_quota(&self, quota: u64) -> Result<(), StoreError>;
    /// (used, quota) of the free first-time copies.
    fn free_quota(&self) -> Result<(u64, u64), StoreError>;
    /// Facts for the policy.
    fn facts(&self, holder: &Pseudonym, device: &str) -> Result<HolderFacts, StoreError>;
    /// Reserves `count` status-list positions for this node, drawn at
    /// random from the open list's free ones (a new list is opened when
    /// the open one is half drawn).
    fn reserve_status_indexes(&self, count: u64) -> Result<StatusPositions, StoreError>;
    /// Whether status list `list` has been opened (its token is served at
    /// full size from then on).
    fn status_list_exists(&self, list: u32) -> Result<bool, StoreError>;
    /// The stored response for an idempotency key, `IdempotencyMismatch` if
    /// the body differs, `None` if the key is new.
    fn idempotent_response(
        &self,
        client: &str,
        key: &IdempotencyKey,
    ) -> Result<Option<Vec<u8>>, StoreError>;
    /// Commits an issuance durably; `respond` builds the stored response.
    fn commit_issuance(
        &self,
        client: &str,
        commit: IssuanceCommit,
        respond: Respond,
    ) -> Result<(Committed, Vec<u8>), StoreError>;
    /// A credential's metadata.
    fn credential(&self, id: &str) -> Result<CredentialMeta, StoreError>;
    /// The credential at a status position (what a presented credential
    /// names of itself).
    fn credential_at(&self, list: u32, index: u64) -> Result<CredentialMeta, StoreError>;
    /// Changes a credential's state (revoke, suspend, reinstate), recording the decision.
    fn set_state(
        &self,
        id: &str,
        to: CredentialState,
        decision: DecisionRecord,
    ) -> Result<CredentialMeta, StoreError>;
    /// Records a refresh: the active credential `id` of `holder` on
    /// `device` is now signed by `kid` until `valid_until`. Another holder
    /// or phone is refused (`Conflict { rule: REFRESH_SAME_OWNER }`), as is
    /// a credential that is not active.
    fn refresh(
        &self,
        refresh: Refresh,
        decision: DecisionRecord,
    ) -> Result<CredentialMeta, StoreError>;
    /// Every (index, state) of one status list.
    fn status_entries(&self, list: u32) -> Result<Vec<(u64, CredentialState)>, StoreError>;
    /// Decisions recorded (sequenced into the log or waiting to be).
    fn decision_count(&self) -> Result<u64, StoreError>;
    /// Entries in the log: the tree size proofs and checkpoints cover.
    fn audit_size(&self) -> Result<u64, StoreError>;
    /// Gives recorded decisions their place in the log; the number placed.
    /// A store that places each decision as it commits places nothing here.
    fn sequence_audit(&self) -> Result<u64, StoreError>;
    /// Appends a decision that changes nothing else (a denial, a start, a
    /// reload) to the audit log, durably.
    fn record(&self, decision: DecisionRecord, holder: Option<Pseudonym>)
    -> Result<(), StoreError>;
    /// Canonical audit entries `start..start+count` (fewer at the end).
    fn audit_entries(&self, start: u64, count: u64) -> Result<Vec<Vec<u8>>, StoreError>;
    /// Leaf hashes of entries `start..end`.
    fn audit_leaves(&self, start: u64, end: u64) -> Result<Vec<[u8; 32]>, StoreError>;
    /// Stored tile hashes `start..end` of tile level `level` >= 1 (fewer
    /// at the end).
    fn audit_tile_hashes(
        &self,
        level: u8,
        start: u64,
        end: u64,
    ) -> Result<Vec<[u8; 32]>, StoreError>;
    /// Several ranges `(level, start, end)` of tile hashes (level 0: leaf
    /// hashes) in one read: a proof's tiles in one round trip. A range in
    /// a tile stored whole is read from that one row.
    fn audit_hash_ranges(
        &self,
        ranges: &[(u8, u64, u64)],
    ) -> Result<Vec<Vec<[u8; 32]>>, StoreError>;
    /// Stores tile hashes of level `level` >= 1 from index `start`. A hash
    /// already stored stays, and one that differs from it is refused
    /// (`Conflict { rule: "audit.tile_hash" }`): the log was rewritten.
    fn add_audit_tile_hashes(
        &self,
        level: u8,
        start: u64,
        hashes: &[[u8; 32]],
    ) -> Result<(), StoreError>;
    /// The root of leaves `lo..hi` if it is known without reading: a
    /// range a proof at tree size `hi` kept, or a perfect subtree of the
    /// upper tree (both in memory, as read from the store).
    fn audit_known_root(&self, lo: u64, hi: u64) -> Option<[u8; 32]>;
    /// The log's upper tree this registry keeps in memory, filled and
    /// checked by the node's checkpoints (`audit::log`).
    fn audit_upper_tree(&self) -> &std::sync::RwLock<crate::audit::upper_tree::UpperTree>;
    /// Keeps the root of leaves `lo..hi`, a range at the right edge of the
    /// tree of `hi` leaves: every proof at that size needs it.
    fn keep_audit_edge_root(&self, lo: u64, hi: u64, root: [u8; 32]);
    /// Stores full tiles of level `level` whole (each 256 hashes, one
    /// row) from tile `first`, so proofs read one row per tile. A tile
    /// already stored stays, and one that differs from it is refused
    /// (`Conflict { rule: "audit.tile_hash" }`).
    fn add_audit_full_tiles(
        &self,
        level: u8,
        first: u64,
        tiles: &[Vec<[u8; 32]>],
    ) -> Result<(), StoreError>;
    /// Stores a signed checkpoint of the first `size` entries (the first one
    /// stored for a size stays).
    fn add_checkpoint(&self, size: u64, note: &str) -> Result<(), StoreError>;
    /// Replaces the note of checkpoint `size` by `cosigned` (the same note
    /// with witnesses' cosignatures added) if it is still `signed`;
    /// whether it was.
    fn cosign_checkpoint(
        &self,
        size: u64,
        signed: &str,
        cosigned: &str,
    ) -> Result<bool, StoreError>;
    /// Every stored checkpoint, smallest first, as (size, signed note).
    fn checkpoints(&self) -> Result<Vec<(u64, String)>, StoreError>;
    /// The largest checkpoint.
    fn latest_checkpoint(&self) -> Result<Option<(u64, String)>, StoreError>;
    /// Whether the audit log can be written now (a write that changes nothing).
    fn probe_write(&self) -> Result<(), StoreError>;
    /// Whether the database answers.
    fn ping(&self) -> Result<(), StoreError>;
    /// Deletes up to `limit` idempotency rows stored before `before` (unix
    /// seconds); how many went.
    fn purge_idempotency(&self, before: i64, limit: u64) -> Result<u64, StoreError>;
}

/// A credential signed again.
#[derive(Debug, Clone)]
pub struct Refresh {
    /// The credential.
    pub id: String,
    /// Its holder, as the request proves it.
    pub holder: Pseudonym,
    /// Its phone's thumbprint, as the request proves it.
    pub device: String,
    /// The DS key that signed it now.
    pub kid: String,
    /// The new signature's end (unix seconds).
    pub valid_until: i64,
    /// Its new status position (list, index), for a credential suspended
    /// because its key was revoked: it becomes active there, and the
    /// position it leaves is revoked for good. `None`: an active
    /// credential keeps its position.
    pub new_position: Option<(u32, u64)>,
}

/// The rule a reinstatement of what a revoked key signed breaks.
pub const REINSTATE_KEY_REVOKED: &str = "reinstate.key_revoked";

/// The rule a refresh for another holder or phone breaks.
pub const REFRESH_SAME_OWNER: &str = "refresh.same_holder_and_phone";

/// A refresh needs its holder and its phone, and the credential active
/// (kept at its position) or suspended because its key was revoked (moved
/// to a new one).
pub(crate) fn check_refresh(
    stored: (&[u8], &str),
    state: CredentialState,
    suspended_for_key: bool,
    refresh: &Refresh,
) -> Result<(), StoreError> {
    if stored.0 != refresh.holder.0 || stored.1 != refresh.device {
        return Err(StoreError::Conflict {
            rule: REFRESH_SAME_OWNER,
        });
    }
    let moves = refresh.new_position.is_some();
    let allowed = match state {
        CredentialState::Active => !moves,
        CredentialState::Suspended => suspended_for_key && moves,
        _ => false,
    };
    if !allowed {
        return Err(StoreError::InvalidTransition {
            from: state.as_str(),
            to: "refreshed",
        });
    }
    Ok(())
}

/// Size of every status list (2 bits a credential: 256 KiB before
/// compression, a few KiB after while mostly valid). Fixed, so a list's
/// length says nothing of how many IDs exist, and every drawn position is
/// in range of every token of its list.
pub const STATUS_LIST_SIZE: u64 = 1 << 20;

/// Positions drawn from a list before the next one opens: half, so a
/// random draw finds a free position in two tries on average, and each
/// holder hides among 2^19 others.
pub const STATUS_LIST_FILL: u64 = STATUS_LIST_SIZE / 2;

/// Largest number of positions reserved at once.
pub const STATUS_BLOCK_MAX: u64 = 4096;

/// Status-position reservations are 1 to [`STATUS_BLOCK_MAX`] positions.
pub(crate) fn check_block(count: u64) -> Result<(), StoreError> {
    if (1..=STATUS_BLOCK_MAX).contains(&count) {
        Ok(())
    } else {
        Err(StoreError::Internal(format!(
            "a status-position reservation is 1 to {STATUS_BLOCK_MAX} positions, not {count}"
        )))
    }
}

fn allowed(from: CredentialState, to: CredentialState) -> bool {
    use CredentialState::*;
    matches!(
        (from, to),
        (Active, Suspended) | (Active, Revoked) | (Suspended, Active) | (Suspended, Revoked)
    )
}

pub(crate) fn check_transition(
    from: CredentialState,
    to: CredentialState,
) -> Result<(), StoreError> {
    if allowed(from, to) {
        Ok(())
    } else {
        Err(StoreError::InvalidTransition {
            from: from.as_str(),
            to: to.as_str(),
        })
    }
}
