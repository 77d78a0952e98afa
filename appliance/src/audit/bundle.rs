//! Exported audit bundles and their offline verification: an auditor with
//! the bundle and the audit public key can tell whether the log is complete
//! and unaltered, and if not, where it first went wrong.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};

use super::checkpoint::{Checkpoint, NoteError, NoteKey};
use super::entry::AuditEntry;
use super::merkle::{self, Hash};
use super::seal::Sealer;

/// The bundle format's name.
pub const FORMAT: &str = "dojang-audit-bundle/1";

/// A self-contained export: entries (canonical CBOR, base64), the signed
/// checkpoints in the order they were made, and the audit key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bundle {
    /// [`FORMAT`].
    pub format: String,
    /// The log's origin line.
    pub origin: String,
    /// The audit key's note name.
    pub key_name: String,
    /// The audit public key the log started with (the auditor's anchor),
    /// SPKI PEM.
    pub public_key_pem: String,
    /// Later audit keys (SPKI PEM). Each is trusted only from a checkpoint
    /// signed by it and by a key already trusted (a hand-over), never for
    /// being listed here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub handover_keys_pem: Vec<String>,
    /// Entries in log order.
    pub entries: Vec<String>,
    /// Signed checkpoints, oldest first.
    pub checkpoints: Vec<String>,
}

/// What the auditor trusts, from outside the bundle: the audit public key,
/// the key's note name and the log's origin.
#[derive(Debug, Clone)]
pub struct TrustedLog {
    /// The audit public key.
    pub key: pkcs11_shim::PublicKey,
    /// The key's name in signed notes.
    pub key_name: String,
    /// The log's origin line.
    pub origin: String,
}

/// What a good bundle proves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Entries in the bundle.
    pub entries: u64,
    /// Checkpoints verified.
    pub checkpoints: u64,
    /// The latest checkpoint's size.
    pub signed_size: u64,
    /// Entries after the latest checkpoint (not yet covered by a signature).
    pub unsigned_tail: u64,
    /// The newest key the log trusts at its end (SPKI PEM): the anchor, or
    /// the last key a trusted key handed over to; never a key only listed.
    pub latest_key_pem: String,
}

/// The first problem found, precisely.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    /// Not a bundle, or not this format.
    #[error("not a {FORMAT} bundle: {0}")]
    Format(String),
    /// Entry `index` does not decode.
    #[error("entry {index}: {reason}")]
    Entry {
        /// Position in the log.
        index: u64,
        /// Why.
        reason: String,
    },
    /// A node's sequence numbers skip or repeat (an entry deleted, inserted or moved).
    #[error(
        "entry {index}: node {node:?} has sequence {found}, expected {expected} (an entry was deleted, inserted or moved before it)"
    )]
    Sequence {
        /// Position in the log.
        index: u64,
        /// The node.
        node: String,
        /// Expected seq.
        expected: u64,
        /// Found seq.
        found: u64,
    },
    /// Checkpoint `index` is not a valid note by the audit key.
    #[error("checkpoint {index}: {cause}")]
    Note {
        /// Position among the checkpoints.
        index: u64,
        /// Why (in the message, not a chained source: printed once).
        cause: NoteError,
    },
    /// A checkpoint for another log.
    #[error("checkpoint {index}: origin {found:?} is not this log's {expected:?}")]
    Origin {
        /// Position among the checkpoints.
        index: u64,
        /// Expected origin.
        expected: String,
        /// Found origin.
        found: String,
    },
    /// A checkpoint covers more entries than the bundle has (the tail was cut).
    #[error(
        "checkpoint {index} signs {size} entries but the log has only {entries}: entries were removed from the end"
    )]
    Truncated {
        /// Position among the checkpoints.
        index: u64,
        /// Its size.
        size: u64,
        /// Entries present.
        entries: u64,
    },
    /// A checkpoint smaller than an earlier one.
    #[error(
        "checkpoint {index} has size {size}, smaller than an earlier checkpoint's {previous}: the log was rolled back"
    )]
    Rollback {
        /// Position among the checkpoints.
        index: u64,
        /// Its size.
        size: u64,
        /// The earlier size.
        previous: u64,
    },
    /// Two signed checkpoints of one size with different roots.
    #[error(
        "checkpoints {first} and {index} both sign size {size} with different roots: the log forked"
    )]
    Fork {
        /// The earlier checkpoint.
        first: u64,
        /// This one.
        index: u64,
        /// The size.
        size: u64,
    },
    /// The entries do not hash to the signed root.
    #[error(
        "checkpoint {index}: entries 0..{size} do not hash to its signed root; the first entry that differs from what was signed is at or before {size}"
    )]
    Root {
        /// Position among the checkpoints.
        index: u64,
        /// Its size.
        size: u64,
    },
    /// The bundle names another key or log than the one trusted.
    #[error("the bundle is for {found}, not the trusted {expected}")]
    Untrusted {
        /// What the auditor trusts.
        expected: String,
        /// What the bundle says.
        found: String,
    },
    /// No checkpoint: nothing in the bundle is signed.
    #[error("the bundle has no checkpoint: nothing in it is signed")]
    NoCheckpoint,
}

/// The bundle with checkpoints published outside it (a mirror's copy, a
/// witness's) placed among its own by size, so [`verify`] holds the log
/// to them as to its own: a log shorter than one was rolled back
/// ([`BundleError::Truncated`]), one that hashes differently forked. A
/// note whose size cannot be read goes last (and fails there).
pub fn with_published(mut bundle: Bundle, published: &[String]) -> Bundle {
    let size = |note: &str| -> u64 {
        note.lines()
            .nth(1)
            .and_then(|l| l.parse().ok())
            .unwrap_or(u64::MAX)
    };
    for note in published {
        let at = bundle
            .checkpoints
            .iter()
            .position(|c| size(c) > size(note))
            .unwrap_or(bundle.checkpoints.len());
        bundle.checkpoints.insert(at, note.clone());
    }
    bundle
}

/// Verifies a bundle against what the auditor trusts. Entries after the
/// latest checkpoint are reported in [`Report::unsigned_tail`]: nothing
/// vouches for them yet, and the caller decides whether that is acceptable.
pub fn verify(bundle: &Bundle, trusted: &TrustedLog) -> Result<Report, BundleError> {
    check_trusted(bundle, trusted)?;
    let keys = vec![
        NoteKey::new(&trusted.key_name, trusted.key.clone())
            .map_err(|e| BundleError::Format(e.to_string()))?,
    ];
    let candidates = handover_candidates(bundle, trusted)?;
    if bundle.checkpoints.is_empty() {
        return Err(BundleError::NoCheckpoint);
    }
    let leaves = entry_leaves(bundle)?;
    let mut replay = Replay {
        origin: &trusted.origin,
        leaves: &leaves,
        keys,
        candidates,
        frontier: merkle::Frontier::new(),
        seen: Vec::new(),
    };
    for (index, note) in bundle.checkpoints.iter().enumerate() {
        replay.checkpoint(index as u64, note)?;
    }
    let signed_size = replay.seen.last().map_or(0, |c| c.size);
    let latest_key_pem = replay
        .keys
        .last()
        .map(NoteKey::public_pem)
        .unwrap_or_default();
    Ok(Report {
        latest_key_pem,
        entries: leaves.len() as u64,
        checkpoints: replay.seen.len() as u64,
        signed_size,
        unsigned_tail: leaves.len() as u64 - signed_size,
    })
}

/// The bundle's format, and its key, key name and origin against the trusted ones.
fn check_trusted(bundle: &Bundle, trusted: &TrustedLog) -> Result<(), BundleError> {
    if bundle.format != FORMAT {
        return Err(BundleError::Format(format!("format {:?}", bundle.format)));
    }
    let public = openssl::pkey::PKey::public_key_from_pem(bundle.public_key_pem.as_bytes())
        .and_then(|k| k.public_key_to_der())
        .map_err(|e| BundleError::Format(format!("public key: {e}")))?;
    if public != trusted.key.spki_der()
        || bundle.key_name != trusted.key_name
        || bundle.origin != trusted.origin
    {
        return Err(BundleError::Untrusted {
            expected: format!(
                "log {:?} signed by {:?} with the trusted key",
                trusted.origin, trusted.key_name
            ),
            found: format!(
                "log {:?} signed by {:?} with the bundle's key",
                bundle.origin, bundle.key_name
            ),
        });
    }
    Ok(())
}

/// Checks every sealed entry's seal with `sealer` (the HSM's seal keys:
/// on the appliance only); how many entries were sealed.
pub fn check_seals(bundle: &Bundle, sealer: &Sealer) -> Result<u64, BundleError> {
    let mut sealed = 0;
    for (index, encoded) in bundle.entries.iter().enumerate() {
        let index = index as u64;
        let (_, entry) = decoded(index, encoded)?;
        if entry.seal.is_none() {
            continue;
        }
        let verifies = sealer.verifies(&entry).map_err(|e| BundleError::Entry {
            index,
            reason: e.to_string(),
        })?;
        if !verifies {
            return Err(BundleError::Entry {
                index,
                reason: format!(
                    "node {:?} number {}: the seal does not verify (edited or renumbered after it was written)",
                    entry.node, entry.seq
                ),
            });
        }
        sealed += 1;
    }
    Ok(sealed)
}

/// The hand-over keys the bundle lists, as note keys: candidates only,
/// trusted once a trusted key hands over to them.
fn handover_candidates(bundle: &Bundle, trusted: &TrustedLog) -> Result<Vec<NoteKey>, BundleError> {
    let mut candidates = Vec::new();
    for pem in &bundle.handover_keys_pem {
        let der = openssl::pkey::PKey::public_key_from_pem(pem.as_bytes())
            .and_then(|k| k.public_key_to_der())
            .map_err(|e| BundleError::Format(format!("hand-over key: {e}")))?;
        let public = pkcs11_shim::PublicKey::from_spki_der(&der)
            .map_err(|e| BundleError::Format(format!("hand-over key: {e}")))?;
        candidates.push(
            NoteKey::new(&trusted.key_name, public)
                .map_err(|e| BundleError::Format(e.to_string()))?,
        );
    }
    Ok(candidates)
}

/// Entry `index`, decoded.
fn decoded(index: u64, encoded: &str) -> Result<(Vec<u8>, AuditEntry), BundleError> {
    let bytes = B64.decode(encoded).map_err(|_| BundleError::Entry {
        index,
        reason: "not base64".into(),
    })?;
    let entry = AuditEntry::decode(&bytes).map_err(|e| BundleError::Entry {
        index,
        reason: e.to_string(),
    })?;
    Ok((bytes, entry))
}

/// Every entry decoded, each node's sequence numbers without a gap or a
/// repeat, no unsealed entry after a sealed one (only the log's beginning,
/// written before seals existed, may be unsealed); the Merkle leaf hashes
/// out, in log order.
fn entry_leaves(bundle: &Bundle) -> Result<Vec<Hash>, BundleError> {
    let mut leaves: Vec<Hash> = Vec::with_capacity(bundle.entries.len());
    let mut next_seq: BTreeMap<String, u64> = BTreeMap::new();
    let mut sealed_seen = false;
    for (index, encoded) in bundle.entries.iter().enumerate() {
        let index = index as u64;
        let (bytes, entry) = decoded(index, encoded)?;
        if entry.seal.is_none() && sealed_seen {
            return Err(BundleError::Entry {
                index,
                reason: "not sealed, after sealed entries (written without the HSM)".into(),
            });
        }
        sealed_seen |= entry.seal.is_some();
        let expected = next_seq.entry(entry.node.clone()).or_insert(0);
        if entry.seq != *expected {
            return Err(BundleError::Sequence {
                index,
                node: entry.node,
                expected: *expected,
                found: entry.seq,
            });
        }
        *expected += 1;
        leaves.push(merkle::leaf_hash(&bytes));
    }
    Ok(leaves)
}

/// The checkpoints replayed over the entries, oldest first, in one pass:
/// checkpoint sizes never decrease, so the frontier only grows; each
/// checkpoint's root is compared when its size is reached. (Two checkpoints
/// whose roots are both recomputed from the same entries are consistent by
/// construction: no separate proof is needed.)
struct Replay<'a> {
    /// The trusted log's origin.
    origin: &'a str,
    /// The entries' leaf hashes.
    leaves: &'a [Hash],
    /// Keys trusted so far: the anchor, then those handed over to.
    keys: Vec<NoteKey>,
    /// Listed hand-over keys not yet handed over to.
    candidates: Vec<NoteKey>,
    frontier: merkle::Frontier,
    /// The checkpoints verified so far.
    seen: Vec<Checkpoint>,
}

impl Replay<'_> {
    /// Checkpoint `index`: signed by the trusted keys (and perhaps handing
    /// over), for this log, no fork, no rollback, no truncation, and the
    /// entries hash to its root.
    fn checkpoint(&mut self, index: u64, note: &str) -> Result<(), BundleError> {
        let cp = open_with_trusted(note, &self.keys).map_err(|source| BundleError::Note {
            index,
            cause: source,
        })?;
        self.hand_over(&cp, note);
        if cp.origin != self.origin {
            return Err(BundleError::Origin {
                index,
                expected: self.origin.to_owned(),
                found: cp.origin,
            });
        }
        self.check_size(index, &cp)?;
        self.check_root(index, &cp)?;
        self.seen.push(cp);
        Ok(())
    }

    /// A trusted key hands trust on only by signing a checkpoint whose
    /// text names the next key, which signs it too. (Signatures cover
    /// the text, not each other: a signature line merely added to a
    /// checkpoint vouches for nothing.)
    fn hand_over(&mut self, cp: &Checkpoint, note: &str) {
        let keys = &mut self.keys;
        self.candidates.retain(|candidate| {
            if cp.hands_over_to(candidate) && Checkpoint::open(note, candidate).is_ok() {
                keys.push(candidate.clone());
                false
            } else {
                true
            }
        });
    }

    /// Against the earlier checkpoints and the entries: no fork, no
    /// rollback, not beyond the last entry.
    fn check_size(&self, index: u64, cp: &Checkpoint) -> Result<(), BundleError> {
        if let Some((first, _)) = self
            .seen
            .iter()
            .enumerate()
            .find(|(_, s)| s.size == cp.size && s.root != cp.root)
        {
            return Err(BundleError::Fork {
                first: first as u64,
                index,
                size: cp.size,
            });
        }
        if let Some(previous) = self.seen.last()
            && cp.size < previous.size
        {
            return Err(BundleError::Rollback {
                index,
                size: cp.size,
                previous: previous.size,
            });
        }
        if cp.size > self.leaves.len() as u64 {
            return Err(BundleError::Truncated {
                index,
                size: cp.size,
                entries: self.leaves.len() as u64,
            });
        }
        Ok(())
    }

    /// The entries up to the checkpoint's size hash to its signed root.
    fn check_root(&mut self, index: u64, cp: &Checkpoint) -> Result<(), BundleError> {
        // cp.size <= leaves.len() (checked before): `take` yields exactly
        // the leaves up to the checkpoint.
        for leaf in self
            .leaves
            .iter()
            .take(cp.size as usize)
            .skip(self.frontier.size() as usize)
        {
            self.frontier.append(*leaf);
        }
        if self.frontier.root() != cp.root {
            return Err(BundleError::Root {
                index,
                size: cp.size,
            });
        }
        Ok(())
    }
}

/// Opens a note: every signature line by a trusted key must verify, and at
/// least one must be there.
fn open_with_trusted(note: &str, keys: &[NoteKey]) -> Result<Checkpoint, NoteError> {
    let mut opened = None;
    let mut first_error = None;
    for key in keys {
        match Checkpoint::open(note, key) {
            Ok(cp) => opened = Some(cp),
            Err(NoteError::NotSigned(name)) => {
                let _ = first_error.get_or_insert(NoteError::NotSigned(name));
            }
            // A bad signature by any trusted key fails the note.
            Err(e) => return Err(e),
        }
    }
    opened
        .ok_or_else(|| first_error.unwrap_or_else(|| NoteError::NotSigned("no trusted key".into())))
}
