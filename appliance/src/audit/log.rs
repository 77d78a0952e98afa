//! The daemon's side of the audit log. Entries are appended by the registry
//! in the same transaction as what they record (so there is no unaudited
//! signature); this module signs checkpoints over them with the audit key in
//! the HSM and answers auditors' questions (entries, proofs, tiles).
//!
//! A frontier (O(log n) hashes) follows the log for checkpoints; each
//! checkpoint stores the tile hashes it completed ([`super::tiles`]), so a
//! node's start and every proof read O(log n) tiles. Before it extends the
//! log, a node checks that the stored log still has the root of the last
//! signed checkpoint: a rewritten entry or tile is refused, not signed over.

use std::sync::Mutex;

use pkcs11_shim::KeyBackend;

use crate::audit::checkpoint::{Checkpoint, NoteError, NoteKey, handover_line};
use crate::audit::integrity::{CheckError, Integrity};
use crate::audit::merkle::{Frontier, Hash, TILE_HEIGHT, root};
use crate::audit::tile_path::TILE_WIDTH;
use crate::audit::tiles::{HashSource, LogHashes, TreeError, TreeReader};
use crate::audit::upper_tree::UpperTree;
use crate::store::{Registry, StoreError};

/// Largest page of entries an auditor may ask for at once.
pub const MAX_PAGE: u64 = 1000;

/// The log as this node sees it.
pub struct AuditLog {
    origin: String,
    frontier: Mutex<Frontier>,
}

/// Who signs a checkpoint: the audit key in force, and the outgoing one on
/// the first checkpoint after a rotation (the hand-over auditors follow).
pub struct Signers<'a> {
    /// The key in force: (label in the token, note key).
    pub current: (&'a str, &'a NoteKey),
    /// The key that signed the previous checkpoint, if it is another one.
    pub outgoing: Option<(&'a str, &'a NoteKey)>,
    /// Every audit key the registry records (revoked ones too): what the
    /// last stored checkpoint may be signed by. A note none of them signed
    /// is not believed.
    pub known: &'a [NoteKey],
}

/// An auditor's question that cannot be answered.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The question is malformed or out of range (400/404).
    #[error("{0}")]
    Range(String),
    /// The store failed (503).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The stored log no longer has the root of a signed checkpoint: an
    /// entry or a tile hash was rewritten. Nothing is signed over it.
    #[error("the stored audit log disagrees with the checkpoint it signed at size {0}")]
    Rewritten(u64),
    /// Signing failed (503).
    #[error("signing a checkpoint: {0}")]
    Signing(String),
    /// Entries not yet signed were deleted, edited or moved since they
    /// were decided ([`super::integrity`]). Nothing is signed over them.
    #[error("the audit log was tampered with before a checkpoint covered it: {0}")]
    Tampered(super::integrity::Finding),
}

impl From<CheckError> for AuditError {
    fn from(e: CheckError) -> Self {
        match e {
            CheckError::Found(finding) => AuditError::Tampered(finding),
            CheckError::Unavailable(why) => AuditError::Store(StoreError::Unavailable(why)),
        }
    }
}

impl From<TreeError> for AuditError {
    fn from(e: TreeError) -> Self {
        match e {
            TreeError::Store(e) => AuditError::Store(e),
            other @ (TreeError::Missing { .. } | TreeError::Rewritten { .. }) => {
                AuditError::Store(StoreError::Internal(other.to_string()))
            }
        }
    }
}

impl AuditLog {
    /// The log `origin`.
    pub fn new(origin: &str) -> Result<Self, String> {
        if origin.is_empty() || origin.contains(char::is_whitespace) || origin.contains('+') {
            return Err(format!(
                "audit origin {origin:?}: no spaces or '+' (it names the log and its keys)"
            ));
        }
        Ok(AuditLog {
            origin: origin.to_owned(),
            frontier: Mutex::new(Frontier::new()),
        })
    }

    /// The log's origin line.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Signs a checkpoint of the whole log if it grew past the last one;
    /// the new size, if one was signed. With `integrity`, the entries it
    /// adds are checked first (a daemon always does; the tile benchmark's
    /// synthetic entries carry no real seals).
    pub fn checkpoint(
        &self,
        backend: &dyn KeyBackend,
        registry: &dyn Registry,
        signers: &Signers<'_>,
        integrity: Option<&Integrity>,
    ) -> Result<Option<u64>, AuditError> {
        let mut frontier = self
            .frontier
            .lock()
            .map_err(|_| AuditError::Signing("frontier lock poisoned".into()))?;
        while registry.sequence_audit()? > 0 {}
        // The latest checkpoint before the size: another node signing in
        // between must not look like a checkpoint beyond the log.
        let latest = registry.latest_checkpoint()?;
        let size = registry.audit_size()?;
        // Entries this node has taken into its tree are gone.
        if size < frontier.size() {
            return Err(AuditError::Rewritten(frontier.size()));
        }
        let last = latest.as_ref().map_or(0, |(s, _)| *s);
        let signed = match &latest {
            Some((signed_size, note)) => take_up(
                &mut frontier,
                registry,
                signers,
                integrity,
                size,
                (*signed_size, note),
            )?,
            None => None,
        };
        let mut extensions = Vec::new();
        match integrity {
            // Exactly the leaves the check verified go into the tree.
            Some(integrity) => {
                let checked = integrity.check(registry, frontier.size(), size, signed.as_ref())?;
                for leaf in checked.leaves {
                    frontier.append(leaf);
                }
                extensions.push(checked.line);
            }
            // Tiles stored page by page: a bulk load's leaves are read back
            // for its whole tiles while the pages are still cached.
            None => {
                while frontier.size() < size {
                    let next = (frontier.size() + MAX_PAGE * 10).min(size);
                    extend(&mut frontier, registry, next)?;
                    store_tile_hashes(&mut frontier, registry)?;
                }
            }
        }
        store_tile_hashes(&mut frontier, registry)?;
        sync_upper_tree(registry, &frontier)?;
        if size == 0 || size <= last {
            return Ok(None);
        }
        // The outgoing key signs that the incoming one follows it.
        if signers.outgoing.is_some() {
            extensions.push(handover_line(signers.current.1));
        }
        let checkpoint = Checkpoint {
            origin: self.origin.clone(),
            size,
            root: frontier.root(),
            extensions,
        };
        let (label, key) = signers.current;
        let mut note = checkpoint
            .sign(backend, label, key)
            .map_err(|e| AuditError::Signing(e.to_string()))?;
        if let Some((label, key)) = signers.outgoing {
            note = Checkpoint::cosign(&note, backend, label, key)
                .map_err(|e| AuditError::Signing(e.to_string()))?;
        }
        registry.add_checkpoint(size, &note)?;
        Ok(Some(size))
    }

    /// The tree size of the latest checkpoint and its signed note.
    pub fn latest(registry: &dyn Registry) -> Result<Option<(u64, String)>, AuditError> {
        Ok(registry.latest_checkpoint()?)
    }

    /// Proofs are over trees a checkpoint covers: beyond the latest one,
    /// the tile hashes are not stored yet.
    fn check_size(registry: &dyn Registry, size: u64) -> Result<(), AuditError> {
        let signed = registry.latest_checkpoint()?.map_or(0, |(s, _)| s);
        if size == 0 || size > signed {
            return Err(AuditError::Range(format!(
                "tree size {size} is not in 1..={signed} (the latest checkpoint)"
            )));
        }
        Ok(())
    }

    /// The inclusion proof of entry `index` in the tree of `size` entries,
    /// with the entry's leaf hash.
    pub fn inclusion(
        registry: &dyn Registry,
        index: u64,
        size: u64,
    ) -> Result<(Hash, Vec<Hash>), AuditError> {
        if index >= size {
            return Err(AuditError::Range(format!(
                "index {index} is not below size {size}"
            )));
        }
        Self::check_size(registry, size)?;
        let hashes = LogHashes(registry);
        let reader = TreeReader::new(&hashes);
        let proof = reader.inclusion(index, size)?;
        let leaf = reader.subtree(0, index)?;
        Ok((leaf, proof))
    }

    /// The consistency proof between trees of `from` and `to` entries.
    pub fn consistency(
        registry: &dyn Registry,
        from: u64,
        to: u64,
    ) -> Result<Vec<Hash>, AuditError> {
        if from == 0 || from > to {
            return Err(AuditError::Range(format!(
                "sizes {from} and {to}: need 0 < from <= to"
            )));
        }
        Self::check_size(registry, to)?;
        Ok(TreeReader::new(&LogHashes(registry)).consistency(from, to)?)
    }
}

/// Takes the frontier up to the latest checkpoint `(signed_size, note)`,
/// checking the stored log still has its root; the checkpoint, opened,
/// when the frontier stands at it.
fn take_up(
    frontier: &mut Frontier,
    registry: &dyn Registry,
    signers: &Signers<'_>,
    integrity: Option<&Integrity>,
    size: u64,
    (signed_size, note): (u64, &str),
) -> Result<Option<Checkpoint>, AuditError> {
    // Signed entries gone, or a checkpoint row beyond the log.
    if signed_size > size {
        return Err(AuditError::Rewritten(signed_size));
    }
    if frontier.size() == 0 {
        *frontier = resume(registry, signed_size)?;
    }
    // Another node may have signed since: the log must still hold what it
    // signed before this node extends it; the frontier takes those entries
    // only once their root is the signed one.
    if frontier.size() < signed_size {
        let mut candidate = frontier.clone();
        // Where this node has checked up to the frontier, it checks the
        // other node's entries too, and their numbers must be the ones that
        // node signed: a note by a key an insider added to the registry
        // cannot make it skip them.
        let mine = match integrity.filter(|i| i.holds(candidate.size())) {
            Some(integrity) => {
                let checked = integrity.check(registry, candidate.size(), signed_size, None)?;
                checked
                    .leaves
                    .iter()
                    .for_each(|leaf| candidate.append(*leaf));
                Some(checked.line)
            }
            None => {
                extend(&mut candidate, registry, signed_size)?;
                None
            }
        };
        let opened = check_signed_root(&candidate, signed_size, note, signers)?;
        if mine.is_some_and(|line| !opened.extensions.contains(&line)) {
            return Err(AuditError::Rewritten(signed_size));
        }
        *frontier = candidate;
        return Ok(Some(opened));
    }
    if frontier.size() == signed_size {
        return check_signed_root(frontier, signed_size, note, signers).map(Some);
    }
    Ok(None)
}

/// The frontier at the last signed checkpoint, from O(log n) tiles; from
/// every leaf where the tile hashes are not stored yet (a log older than
/// the tiles), storing them on the way.
fn resume(registry: &dyn Registry, signed_size: u64) -> Result<Frontier, AuditError> {
    match TreeReader::new(&LogHashes(registry)).frontier(signed_size) {
        Ok(frontier) => Ok(frontier),
        // Signed entries gone: the log was truncated or cut.
        Err(TreeError::Missing { level: 0, .. }) => Err(AuditError::Rewritten(signed_size)),
        Err(TreeError::Missing { .. }) => {
            tracing::info!(
                entries = signed_size,
                "audit log: storing its tile hashes (once, from every leaf)"
            );
            // Stored only once the root is checked against the signed note.
            let mut frontier = Frontier::new();
            extend(&mut frontier, registry, signed_size)?;
            Ok(frontier)
        }
        Err(e) => Err(e.into()),
    }
}

/// Appends leaves to `frontier` up to `size`, a page at a time.
fn extend(frontier: &mut Frontier, registry: &dyn Registry, size: u64) -> Result<(), AuditError> {
    while frontier.size() < size {
        let next = (frontier.size() + MAX_PAGE * 10).min(size);
        for leaf in registry.audit_leaves(frontier.size(), next)? {
            frontier.append(leaf);
        }
        if frontier.size() < next {
            return Err(AuditError::Store(StoreError::Internal(
                "the audit log has a gap".into(),
            )));
        }
    }
    Ok(())
}

/// Stores the tile hashes `frontier` completed; kept for the next round if
/// the store fails. A stored hash that differs means a rewritten log.
fn store_tile_hashes(frontier: &mut Frontier, registry: &dyn Registry) -> Result<(), AuditError> {
    let hashes = frontier.take_tile_hashes();
    let mut runs: Vec<(u8, u64, Vec<Hash>)> = Vec::new();
    for &(level, index, hash) in &hashes {
        match runs.last_mut() {
            Some((l, start, run)) if *l == level && *start + run.len() as u64 == index => {
                run.push(hash);
            }
            _ => runs.push((level, index, vec![hash])),
        }
    }
    runs.sort_by_key(|(level, start, _)| (*level, *start));
    let stored = runs.iter().try_for_each(|(level, start, run)| {
        registry.add_audit_tile_hashes(*level, *start, run)?;
        store_full_tiles(registry, *level, *start, run)
    });
    if let Err(e) = stored {
        frontier.restore_tile_hashes(hashes);
        return Err(match e {
            AuditError::Store(StoreError::Conflict { .. }) => {
                AuditError::Rewritten(frontier.size())
            }
            other => other,
        });
    }
    Ok(())
}

/// Tiles of base hashes read per round trip while filling the upper tree.
const UPPER_TILES_PER_READ: usize = 64;

/// Brings the registry's upper tree up to `frontier` (a signed root's, or
/// this node's own from verified leaves): reads the base hashes it lacks
/// from the store, then checks that the tree rolls up to the frontier. A
/// hash that does not is a stored tile hash rewritten: the tree is emptied
/// (proofs read the store again) and nothing is signed. A store short of
/// hashes leaves the tree short; proofs then read the store, which says
/// what is missing.
fn sync_upper_tree(registry: &dyn Registry, frontier: &Frontier) -> Result<(), AuditError> {
    let level = UpperTree::level_for(frontier.size());
    let wanted = frontier.size() >> (TILE_HEIGHT * u32::from(level));
    let lock = registry.audit_upper_tree();
    let poisoned = || AuditError::Store(StoreError::Internal("upper tree lock poisoned".into()));
    let held = {
        let mut tree = lock.write().map_err(|_| poisoned())?;
        tree.set_level(level);
        tree.len()
    };
    let mut ranges = Vec::new();
    let mut start = held;
    while start < wanted {
        let end = ((start / TILE_WIDTH + 1) * TILE_WIDTH).min(wanted);
        ranges.push((level, start, end));
        start = end;
    }
    // Read without the lock: proofs go on meanwhile.
    let mut read = Vec::new();
    'reading: for chunk in ranges.chunks(UPPER_TILES_PER_READ) {
        for (&(_, start, end), hashes) in chunk.iter().zip(registry.audit_hash_ranges(chunk)?) {
            let whole = hashes.len() as u64 == end - start;
            read.extend(hashes);
            if !whole {
                break 'reading;
            }
        }
    }
    let mut tree = lock.write().map_err(|_| poisoned())?;
    // Only this node's checkpoints (one at a time) fill it.
    if tree.level() == level && tree.len() == held {
        tree.extend(&read);
    }
    if tree.len() < wanted || tree.agrees_with(frontier) {
        return Ok(());
    }
    tree.clear();
    Err(AuditError::Rewritten(frontier.size()))
}

/// Full tiles stored whole per write: 64 tiles, 16,384 hashes read back.
const FULL_TILES_PER_WRITE: usize = 64;

/// Stores whole the tiles of level `level - 1` the hashes `run` (level
/// `level`, from `start`) are the roots of: each completed one. Their
/// hashes are read back from the store and each tile must have its root
/// in `run` (which this node computed from verified leaves): a row edited
/// since is a rewritten log, not a tile.
fn store_full_tiles(
    registry: &dyn Registry,
    level: u8,
    start: u64,
    run: &[Hash],
) -> Result<(), AuditError> {
    let Some(below) = level.checked_sub(1) else {
        return Ok(());
    };
    let source = LogHashes(registry);
    for (chunk, roots) in run.chunks(FULL_TILES_PER_WRITE).enumerate() {
        let first = start + (chunk * FULL_TILES_PER_WRITE) as u64;
        let hashes = source.hashes(
            below,
            first * TILE_WIDTH,
            (first + roots.len() as u64) * TILE_WIDTH,
        )?;
        let tiles: Vec<Vec<Hash>> = hashes
            .chunks(TILE_WIDTH as usize)
            .map(<[Hash]>::to_vec)
            .collect();
        let complete = tiles.len() == roots.len()
            && tiles
                .iter()
                .zip(roots)
                .all(|(tile, r)| tile.len() as u64 == TILE_WIDTH && root(tile) == *r);
        if !complete {
            return Err(AuditError::Store(StoreError::Conflict {
                rule: "audit.tile_hash",
            }));
        }
        registry.add_audit_full_tiles(below, first, &tiles)?;
    }
    Ok(())
}

/// Compares the frontier's root with the checkpoint signed at its size,
/// opened with the key in force, the outgoing one or another audit key the
/// registry records. A note none of them signed is not believed.
fn check_signed_root(
    frontier: &Frontier,
    size: u64,
    note: &str,
    signers: &Signers<'_>,
) -> Result<Checkpoint, AuditError> {
    let keys = [signers.current.1]
        .into_iter()
        .chain(signers.outgoing.map(|(_, k)| k))
        .chain(signers.known);
    let mut opened = None;
    for key in keys {
        match Checkpoint::open(note, key) {
            Ok(checkpoint) => {
                opened = Some(checkpoint);
                break;
            }
            Err(NoteError::NotSigned(_)) => continue,
            Err(_) => return Err(AuditError::Rewritten(size)),
        }
    }
    let checkpoint = opened.ok_or(AuditError::Rewritten(size))?;
    if checkpoint.size != size || checkpoint.root != frontier.root() {
        return Err(AuditError::Rewritten(size));
    }
    Ok(checkpoint)
}
