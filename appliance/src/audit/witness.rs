//! Witnesses of the log (c2sp.org/tlog-witness) and their cosignatures
//! (c2sp.org/tlog-cosignature, Ed25519 `cosignature/v1`): the request a log
//! sends (`add-checkpoint`), the rules a witness applies to it, and the
//! cosignature lines both sides make and check. No I/O here: the daemon's
//! client is [`super::witnessing`], the witness `dojangctl witness serve`.
//!
//! A cosignature says "as of this time, this is the largest tree of this
//! log I have seen, and it extends every one I saw before": a log that
//! shows two auditors two different trees cannot get both cosigned by one
//! honest witness.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use pkcs11_shim::digest::sha256;
use serde::{Deserialize, Serialize};

use super::checkpoint::{Checkpoint, NoteKey};
use super::merkle::{Hash, verify_consistency};

/// The vkey signature type of Ed25519 cosignatures.
const COSIGNATURE_V1: u8 = 0x04;
/// At most this many consistency proof lines in a request (the spec's cap).
pub const MAX_PROOF_LINES: usize = 63;

/// A cosigner (witness) key as logs and clients name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CosignerKey {
    name: String,
    public: [u8; 32],
    id: [u8; 4],
}

/// Why a cosigner key, a request or a cosignature is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct WitnessError(pub String);

fn malformed(what: impl Into<String>) -> WitnessError {
    WitnessError(what.into())
}

impl CosignerKey {
    /// The cosigner `name` with Ed25519 public key `public`.
    pub fn new(name: &str, public: [u8; 32]) -> Result<Self, WitnessError> {
        if name.is_empty()
            || name.contains(|c: char| c.is_whitespace() || c.is_control() || c == '+')
        {
            return Err(malformed(
                "a cosigner name has no spaces, control characters or '+'",
            ));
        }
        let mut input = name.as_bytes().to_vec();
        input.push(b'\n');
        input.push(COSIGNATURE_V1);
        input.extend_from_slice(&public);
        let mut id = [0u8; 4];
        id.copy_from_slice(&sha256(&input)[..4]);
        Ok(CosignerKey {
            name: name.to_owned(),
            public,
            id,
        })
    }

    /// Parses a vkey: `<name>+<hex key ID>+<base64(0x04 || public key)>`.
    pub fn from_vkey(vkey: &str) -> Result<Self, WitnessError> {
        let mut parts = vkey.trim().splitn(3, '+');
        let (Some(name), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(malformed("a vkey is name+keyid+base64key"));
        };
        let key = B64
            .decode(key)
            .map_err(|_| malformed("the vkey's key is not base64"))?;
        let Some((&COSIGNATURE_V1, public)) = key.split_first() else {
            return Err(malformed(
                "the vkey is not an Ed25519 cosigner key (type 0x04)",
            ));
        };
        let public: [u8; 32] = public
            .try_into()
            .map_err(|_| malformed("an Ed25519 key is 32 bytes"))?;
        let parsed = Self::new(name, public)?;
        if id != hex(&parsed.id) {
            return Err(malformed("the vkey's key ID does not match its key"));
        }
        Ok(parsed)
    }

    /// The vkey others configure this cosigner with.
    pub fn vkey(&self) -> String {
        let mut key = vec![COSIGNATURE_V1];
        key.extend_from_slice(&self.public);
        format!("{}+{}+{}", self.name, hex(&self.id), B64.encode(key))
    }

    /// The cosigner's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The Ed25519 public key (one key under two names is one witness).
    pub fn public(&self) -> &[u8; 32] {
        &self.public
    }

    /// The signature line for `signature` (64 bytes) made at `time` by
    /// this key.
    pub fn line(&self, time: u64, signature: &[u8]) -> String {
        let mut blob = self.id.to_vec();
        blob.extend_from_slice(&time.to_be_bytes());
        blob.extend_from_slice(signature);
        format!("\u{2014} {} {}\n", self.name, B64.encode(blob))
    }

    /// The time of this key's first valid cosignature among `lines`
    /// (signature lines) on the checkpoint `body`; lines of other keys,
    /// and this key's lines that do not verify, are passed over.
    pub fn verify(&self, body: &str, lines: &str) -> Result<u64, WitnessError> {
        lines
            .lines()
            .filter(|line| self.claims(line))
            .find_map(|line| self.cosignature_time(body, line))
            .ok_or_else(|| malformed(format!("no valid cosignature by {}", self.name)))
    }

    /// Whether a signature line names this key (name and key ID), valid
    /// or not.
    pub fn claims(&self, line: &str) -> bool {
        line.strip_prefix("\u{2014} ")
            .and_then(|rest| rest.split_once(' '))
            .filter(|(name, _)| *name == self.name)
            .and_then(|(_, blob)| B64.decode(blob).ok())
            .is_some_and(|blob| blob.get(..4) == Some(&self.id[..]))
    }

    fn cosignature_time(&self, body: &str, line: &str) -> Option<u64> {
        let (_, blob) = line.strip_prefix("\u{2014} ")?.split_once(' ')?;
        let blob = B64.decode(blob).ok()?;
        let (time, signature) = (blob.get(4..12)?, blob.get(12..)?);
        let time = u64::from_be_bytes(time.try_into().ok()?);
        let ok = blob.len() == 76
            && time <= i64::MAX as u64
            && ed25519_verifies(&self.public, &cosigned_message(body, time), signature);
        ok.then_some(time)
    }
}

/// What a v1 cosignature signs: the header, the time, the checkpoint body.
pub fn cosigned_message(body: &str, time: u64) -> Vec<u8> {
    format!("cosignature/v1\ntime {time}\n{body}").into_bytes()
}

fn ed25519_verifies(public: &[u8; 32], message: &[u8], signature: &[u8]) -> bool {
    openssl::pkey::PKey::public_key_from_raw_bytes(public, openssl::pkey::Id::ED25519)
        .and_then(|key| {
            openssl::sign::Verifier::new_without_digest(&key)?.verify_oneshot(signature, message)
        })
        .unwrap_or(false)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An `add-checkpoint` request: the size the log believes the witness
/// holds, the consistency proof from it, and the signed checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddCheckpoint {
    /// The previous size (0: the witness has none).
    pub old: u64,
    /// The consistency proof from `old` to the checkpoint's size.
    pub proof: Vec<Hash>,
    /// The checkpoint as a signed note.
    pub note: String,
}

impl AddCheckpoint {
    /// The request body.
    pub fn encode(&self) -> String {
        let mut body = format!("old {}\n", self.old);
        for hash in &self.proof {
            body.push_str(&B64.encode(hash));
            body.push('\n');
        }
        body.push('\n');
        body.push_str(&self.note);
        body
    }

    /// Parses a request body (a 400 when it fails).
    pub fn parse(body: &[u8]) -> Result<Self, WitnessError> {
        let text = std::str::from_utf8(body).map_err(|_| malformed("not UTF-8"))?;
        let (head, note) = text
            .split_once("\n\n")
            .ok_or_else(|| malformed("no empty line before the checkpoint"))?;
        let mut lines = head.split('\n');
        let old = lines
            .next()
            .and_then(|l| l.strip_prefix("old "))
            .filter(|n| *n == "0" || !n.starts_with('0'))
            .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| malformed("the first line is `old <size>`"))?;
        let proof = lines
            .map(|l| {
                B64.decode(l)
                    .ok()
                    .and_then(|h| <Hash>::try_from(h).ok())
                    .ok_or_else(|| malformed("a proof line is not a base64 hash"))
            })
            .collect::<Result<Vec<Hash>, _>>()?;
        if proof.len() > MAX_PROOF_LINES {
            return Err(malformed("more than 63 proof lines"));
        }
        Ok(AddCheckpoint {
            old,
            proof,
            note: note.to_owned(),
        })
    }
}

/// What a witness keeps of one log: the latest checkpoint it cosigned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Witnessed {
    /// Its size.
    pub size: u64,
    /// Its root hash (base64).
    pub root: String,
}

impl Witnessed {
    /// The root hash, if the stored one is a base64 hash (a witness checks
    /// its state when it loads it: see [`Witnessed::check`]).
    pub fn root_hash(&self) -> Option<Hash> {
        B64.decode(&self.root)
            .ok()
            .and_then(|r| <Hash>::try_from(r).ok())
    }

    /// Whether this is a state a witness can go on from.
    pub fn check(&self) -> Result<(), WitnessError> {
        self.root_hash()
            .map(|_| ())
            .ok_or_else(|| malformed("the root is not a base64 SHA-256 hash"))
    }
}

/// Why a witness refuses a checkpoint: each is the HTTP status the
/// protocol gives it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// 400: malformed, or an old size beyond the checkpoint's.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// 403: no signature by a key the witness trusts for the origin.
    #[error("not signed by the log's key")]
    NotSigned,
    /// 404: a log the witness does not follow.
    #[error("unknown log")]
    UnknownLog,
    /// 409: the witness holds another size (sent back to the log).
    #[error("the witness holds size {0}")]
    OtherSize(u64),
    /// 409: the same size with another root hash: a fork.
    #[error("another tree of the same size: a fork")]
    OtherRoot,
    /// 422: the consistency proof does not verify: a fork.
    #[error("the checkpoint does not extend the one the witness holds: a fork")]
    Inconsistent,
}

impl Refused {
    /// The HTTP status of the refusal.
    pub fn status(&self) -> u16 {
        match self {
            Refused::BadRequest(_) => 400,
            Refused::NotSigned => 403,
            Refused::UnknownLog => 404,
            Refused::OtherSize(_) | Refused::OtherRoot => 409,
            Refused::Inconsistent => 422,
        }
    }
}

/// The witness's rules: whether `request` may be cosigned, given the log
/// it follows (`origin`, signed by any of `log_keys`: after an audit-key
/// rotation the witness is given the new key beside the old) and what it
/// holds (`held`). The checkpoint to cosign, and what to hold from now on.
pub fn check(
    request: &AddCheckpoint,
    origin: &str,
    log_keys: &[NoteKey],
    held: Option<&Witnessed>,
) -> Result<(Checkpoint, Witnessed), Refused> {
    let body = request
        .note
        .split_once("\n\n")
        .map(|(b, _)| b)
        .ok_or_else(|| Refused::BadRequest("the checkpoint is not a signed note".into()))?;
    if body.lines().next() != Some(origin) {
        return Err(Refused::UnknownLog);
    }
    let checkpoint = log_keys
        .iter()
        .find_map(|key| Checkpoint::open(&request.note, key).ok())
        .ok_or(Refused::NotSigned)?;
    if request.old > checkpoint.size {
        return Err(Refused::BadRequest(
            "the old size is beyond the checkpoint's".into(),
        ));
    }
    let held_size = held.map_or(0, |w| w.size);
    if request.old != held_size {
        return Err(Refused::OtherSize(held_size));
    }
    let consistent = match held {
        // The same size (an empty tree included): the same root, and
        // nothing to prove.
        Some(w) if w.size == checkpoint.size => {
            if w.root_hash() != Some(checkpoint.root) {
                return Err(Refused::OtherRoot);
            }
            request.proof.is_empty()
        }
        Some(w) if w.size > 0 => w.root_hash().is_some_and(|root| {
            verify_consistency(
                w.size,
                checkpoint.size,
                &root,
                &checkpoint.root,
                &request.proof,
            )
        }),
        _ => request.proof.is_empty(),
    };
    if !consistent {
        return Err(Refused::Inconsistent);
    }
    let witnessed = Witnessed {
        size: checkpoint.size,
        root: B64.encode(checkpoint.root),
    };
    Ok((checkpoint, witnessed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ed25519() -> (openssl::pkey::PKey<openssl::pkey::Private>, [u8; 32]) {
        let key = openssl::pkey::PKey::generate_ed25519().unwrap();
        let public: [u8; 32] = key.raw_public_key().unwrap().try_into().unwrap();
        (key, public)
    }

    #[test]
    fn vkeys_round_trip_and_a_wrong_id_is_refused() {
        let (_, public) = ed25519();
        let key = CosignerKey::new("witness.example/w1", public).unwrap();
        let vkey = key.vkey();
        assert_eq!(CosignerKey::from_vkey(&vkey).unwrap(), key);
        let (name, rest) = vkey.split_once('+').unwrap();
        let (_, key_part) = rest.split_once('+').unwrap();
        assert!(CosignerKey::from_vkey(&format!("{name}+00000000+{key_part}")).is_err());
        assert!(CosignerKey::from_vkey("w+1+AAAA").is_err());
    }

    #[test]
    fn cosignatures_verify_and_others_do_not() {
        let (private, public) = ed25519();
        let key = CosignerKey::new("witness.example/w1", public).unwrap();
        let body = "example/log\n3\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n";
        let message = cosigned_message(body, 1_700_000_000);
        let signature = openssl::sign::Signer::new_without_digest(&private)
            .unwrap()
            .sign_oneshot_to_vec(&message)
            .unwrap();
        let line = key.line(1_700_000_000, &signature);
        assert_eq!(key.verify(body, &line), Ok(1_700_000_000));
        // A planted line under its name that does not verify hides nothing.
        let planted = key.line(1, &[0; 64]);
        assert!(key.claims(planted.trim_end()));
        assert_eq!(
            key.verify(body, &format!("{planted}{line}")),
            Ok(1_700_000_000)
        );
        assert!(key.verify(body, &planted).is_err());
        for name in ["w\u{1}", "w\u{85}", "w x", "w+x", ""] {
            assert!(CosignerKey::new(name, public).is_err(), "{name:?}");
        }
        assert!(key.verify(&body.replace('3', "4"), &line).is_err());
        let (_, other) = ed25519();
        let stranger = CosignerKey::new("witness.example/w1", other).unwrap();
        assert!(stranger.verify(body, &line).is_err());
    }

    /// A checkpoint of `leaves` signed by a software Ed25519 log key.
    fn signed(
        log: &openssl::pkey::PKey<openssl::pkey::Private>,
        key: &NoteKey,
        leaves: &[Hash],
    ) -> String {
        let body = format!(
            "example/log\n{}\n{}\n",
            leaves.len(),
            B64.encode(crate::audit::merkle::root(leaves))
        );
        let signature = openssl::sign::Signer::new_without_digest(log)
            .unwrap()
            .sign_oneshot_to_vec(body.as_bytes())
            .unwrap();
        let mut blob = key.id().to_vec();
        blob.extend_from_slice(&signature);
        format!("{body}\n\u{2014} example/log {}\n", B64.encode(blob))
    }

    #[test]
    fn a_witness_cosigns_extensions_only() {
        use crate::audit::merkle::consistency_proof;
        let log = openssl::pkey::PKey::generate_ed25519().unwrap();
        let public =
            pkcs11_shim::PublicKey::from_spki_der(&log.public_key_to_der().unwrap()).unwrap();
        let key = NoteKey::new("example/log", public).unwrap();
        let leaves: Vec<Hash> = (0u8..9).map(|i| [i; 32]).collect();
        let request = |old: usize, upto: usize, leaves: &[Hash]| AddCheckpoint {
            old: old as u64,
            proof: if old == 0 || old == upto {
                Vec::new()
            } else {
                consistency_proof(old, &leaves[..upto]).unwrap()
            },
            note: signed(&log, &key, &leaves[..upto]),
        };
        let (_, held) = check(
            &request(0, 4, &leaves),
            "example/log",
            std::slice::from_ref(&key),
            None,
        )
        .unwrap();
        assert_eq!(held.size, 4);
        let (cp, later) = check(
            &request(4, 9, &leaves),
            "example/log",
            std::slice::from_ref(&key),
            Some(&held),
        )
        .unwrap();
        assert_eq!((cp.size, later.size), (9, 9));
        // The same size again is fine; a stale or foreign old size is not.
        assert!(
            check(
                &request(9, 9, &leaves),
                "example/log",
                std::slice::from_ref(&key),
                Some(&later)
            )
            .is_ok()
        );
        assert_eq!(
            check(
                &request(0, 9, &leaves),
                "example/log",
                std::slice::from_ref(&key),
                Some(&later)
            )
            .unwrap_err(),
            Refused::OtherSize(9)
        );
        // A fork: another third leaf.
        let mut forked = leaves.clone();
        forked[2] = [99; 32];
        assert_eq!(
            check(
                &request(4, 9, &forked),
                "example/log",
                std::slice::from_ref(&key),
                Some(&held)
            )
            .unwrap_err(),
            Refused::Inconsistent
        );
        assert_eq!(
            check(
                &request(9, 9, &forked),
                "example/log",
                std::slice::from_ref(&key),
                Some(&later)
            )
            .unwrap_err(),
            Refused::OtherRoot
        );
        assert_eq!(
            check(
                &request(0, 4, &leaves),
                "another/log",
                std::slice::from_ref(&key),
                None
            )
            .unwrap_err(),
            Refused::UnknownLog
        );
        // The same size proves nothing: a proof sent along is refused.
        let padded = AddCheckpoint {
            proof: vec![[1; 32]],
            ..request(9, 9, &leaves)
        };
        assert_eq!(
            check(
                &padded,
                "example/log",
                std::slice::from_ref(&key),
                Some(&later)
            )
            .unwrap_err(),
            Refused::Inconsistent
        );
        // Two empty trees with different roots are two trees.
        let empty = Witnessed {
            size: 0,
            root: B64.encode([5; 32]),
        };
        assert_eq!(
            check(
                &request(0, 0, &leaves),
                "example/log",
                std::slice::from_ref(&key),
                Some(&empty)
            )
            .unwrap_err(),
            Refused::OtherRoot
        );
        assert!(empty.check().is_ok());
        // A new witness (`witness serve --init`) holds the empty tree and
        // takes a log's first checkpoint, and the log's empty one.
        let new = Witnessed {
            size: 0,
            root: B64.encode(crate::audit::merkle::root(&[])),
        };
        for upto in [0, 4] {
            assert!(
                check(
                    &request(0, upto, &leaves),
                    "example/log",
                    std::slice::from_ref(&key),
                    Some(&new)
                )
                .is_ok()
            );
        }
        let unreadable = Witnessed {
            size: 4,
            root: "not base64".into(),
        };
        assert!(unreadable.check().is_err());
        let stranger = openssl::pkey::PKey::generate_ed25519().unwrap();
        let unsigned = AddCheckpoint {
            note: signed(&stranger, &key, &leaves[..4]),
            ..request(0, 4, &leaves)
        };
        assert_eq!(
            check(&unsigned, "example/log", std::slice::from_ref(&key), None).unwrap_err(),
            Refused::NotSigned
        );
    }

    #[test]
    fn requests_round_trip_and_malformed_ones_are_refused() {
        let request = AddCheckpoint {
            old: 5,
            proof: vec![[1; 32], [2; 32]],
            note: "o\n9\nAA==\n\n\u{2014} o AAAA\n".into(),
        };
        assert_eq!(
            AddCheckpoint::parse(request.encode().as_bytes()).unwrap(),
            request
        );
        for bad in [
            "old 05\n\nx",
            "old +5\n\nx",
            "old \n\nx",
            "new 5\n\nx",
            "old 5\nnot a hash\n\nx",
            "old 5\n",
        ] {
            assert!(AddCheckpoint::parse(bad.as_bytes()).is_err(), "{bad:?}");
        }
    }
}
