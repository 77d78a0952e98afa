//! An offline proof that one entry is in the log (c2sp.org/tlog-proof):
//!
//! ```text
//! c2sp.org/tlog-proof@v1
//! extra <base64 of the canonical entry>
//! index <entry index>
//! <base64 inclusion proof hash, leaf's sibling first>…
//!
//! <the signed checkpoint, verbatim>
//! ```
//!
//! The entry rides in `extra` (unauthenticated until its leaf hash is
//! proved against the signed root), so the file alone, the audit public key
//! and the log's origin answer "was this decision logged?" with no network.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

use super::checkpoint::{Checkpoint, NoteError, NoteKey};
use super::entry::AuditEntry;
use super::merkle::{Hash, leaf_hash, verify_inclusion};

/// The first line of every proof.
pub const HEADER: &str = "c2sp.org/tlog-proof@v1";

/// One entry's proof.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryProof {
    /// The canonical entry.
    pub entry: Vec<u8>,
    /// Its index in the log.
    pub index: u64,
    /// Its inclusion proof in the checkpoint's tree.
    pub proof: Vec<Hash>,
    /// The signed checkpoint the proof leads to.
    pub checkpoint: String,
}

/// Why a proof was refused.
#[derive(Debug, thiserror::Error)]
pub enum ProofError {
    /// Not a tlog-proof as this module writes them.
    #[error("malformed proof: {0}")]
    Malformed(String),
    /// The checkpoint is not signed by the trusted key.
    #[error(transparent)]
    Note(#[from] NoteError),
    /// A checkpoint of another log.
    #[error("the checkpoint is of log {0:?}, not the trusted one")]
    Origin(String),
    /// The entry is not at `index` in the signed tree.
    #[error("the entry is not at index {index} of the signed tree of {size} entries")]
    NotIncluded {
        /// Claimed index.
        index: u64,
        /// Signed tree size.
        size: u64,
    },
}

fn malformed(what: &str) -> ProofError {
    ProofError::Malformed(what.to_owned())
}

impl EntryProof {
    /// The proof's text.
    pub fn encode(&self) -> String {
        let mut text = format!(
            "{HEADER}\nextra {}\nindex {}\n",
            B64.encode(&self.entry),
            self.index
        );
        for hash in &self.proof {
            text.push_str(&B64.encode(hash));
            text.push('\n');
        }
        text.push('\n');
        text.push_str(&self.checkpoint);
        text
    }

    /// Parses a proof's text (strictly: one spelling per proof).
    pub fn parse(text: &str) -> Result<Self, ProofError> {
        let (head, checkpoint) = text
            .split_once("\n\n")
            .ok_or_else(|| malformed("no empty line before the checkpoint"))?;
        let mut lines = head.split('\n');
        if lines.next() != Some(HEADER) {
            return Err(malformed("the first line must be c2sp.org/tlog-proof@v1"));
        }
        let entry = lines
            .next()
            .and_then(|l| l.strip_prefix("extra "))
            .and_then(|e| B64.decode(e).ok())
            .ok_or_else(|| malformed("no extra line with the base64 entry"))?;
        let index_text = lines
            .next()
            .and_then(|l| l.strip_prefix("index "))
            .ok_or_else(|| malformed("no index line"))?;
        let index: u64 = index_text
            .parse()
            .ok()
            .filter(|i: &u64| i.to_string() == index_text)
            .ok_or_else(|| malformed("the index is not a decimal without leading zeroes"))?;
        let proof = lines
            .map(|l| {
                B64.decode(l)
                    .ok()
                    .and_then(|h| <Hash>::try_from(h).ok())
                    .filter(|h| B64.encode(h) == l)
                    .ok_or_else(|| malformed("a proof line is not one base64 SHA-256 hash"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(EntryProof {
            entry,
            index,
            proof,
            checkpoint: checkpoint.to_owned(),
        })
    }

    /// Checks the proof against the audit key `key` of the log `origin`:
    /// the decoded entry and the checkpoint that includes it.
    pub fn verify(
        &self,
        key: &NoteKey,
        origin: &str,
    ) -> Result<(AuditEntry, Checkpoint), ProofError> {
        let checkpoint = Checkpoint::open(&self.checkpoint, key)?;
        if checkpoint.origin != origin {
            return Err(ProofError::Origin(checkpoint.origin));
        }
        let entry =
            AuditEntry::decode(&self.entry).map_err(|e| ProofError::Malformed(e.to_string()))?;
        let included = verify_inclusion(
            self.index,
            checkpoint.size,
            &leaf_hash(&self.entry),
            &self.proof,
            &checkpoint.root,
        );
        if !included {
            return Err(ProofError::NotIncluded {
                index: self.index,
                size: checkpoint.size,
            });
        }
        Ok((entry, checkpoint))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> EntryProof {
        EntryProof {
            entry: vec![0xa0],
            index: 41,
            proof: vec![[1; 32], [2; 32]],
            checkpoint: "log\n42\nAAAA\n\n\u{2014} k AAAA\n".into(),
        }
    }

    #[test]
    fn proofs_round_trip_and_other_spellings_are_refused() {
        let text = sample().encode();
        assert_eq!(EntryProof::parse(&text).unwrap(), sample());
        let edits = [
            ("c2sp.org/tlog-proof@v1", "c2sp.org/tlog-proof@v2"),
            ("index 41", "index 041"),
            ("index 41", "index -1"),
            ("extra oA==", "extra !"),
            ("AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=", "AQEB"),
        ];
        for (from, to) in edits {
            assert!(text.contains(from), "{from}");
            assert!(
                EntryProof::parse(&text.replacen(from, to, 1)).is_err(),
                "{to}"
            );
        }
    }
}
