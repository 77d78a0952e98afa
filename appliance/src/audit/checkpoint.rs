//! Checkpoints in the C2SP tlog-checkpoint format, as C2SP signed notes:
//!
//! ```text
//! <origin>\n<tree size>\n<base64 root hash>\n\n— <key name> base64(key ID || signature)\n
//! ```
//!
//! Signed by the audit key in the HSM: Ed25519 (signature type 0x01, over
//! the note text) where the token has it, else ECDSA P-256 (type 0x02, a DER
//! signature over SHA-256 of the text, key ID from the SPKI, as
//! transparency-dev/witness does).

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use pkcs11_shim::digest::sha256;
use pkcs11_shim::{Algorithm, KeyBackend, PublicKey, ecdsa_der_to_raw, ecdsa_raw_to_der};

use super::merkle::Hash;

/// A tree head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's origin line (its name).
    pub origin: String,
    /// Leaves in the tree.
    pub size: u64,
    /// Root hash.
    pub root: Hash,
    /// Extension lines after the root (C2SP allows them; signed with the
    /// rest): `dojang-handover <base64 SHA-256 of the next key's SPKI>`
    /// names the audit key this checkpoint hands trust to.
    pub extensions: Vec<String>,
}

/// The extension line naming the audit key a checkpoint hands trust to.
pub const HANDOVER: &str = "dojang-handover";

/// The hand-over extension for `key`.
pub fn handover_line(key: &NoteKey) -> String {
    format!("{HANDOVER} {}", B64.encode(sha256(key.public.spki_der())))
}

/// Why a note was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NoteError {
    /// Not a signed note / checkpoint.
    #[error("malformed checkpoint: {0}")]
    Malformed(String),
    /// No signature by the expected key.
    #[error("no signature by {0}")]
    NotSigned(String),
    /// The expected key's signature does not verify.
    #[error("the signature by {0} does not verify")]
    BadSignature(String),
    /// The HSM could not sign.
    #[error("signing the checkpoint: {0}")]
    Signing(String),
}

/// The audit key as notes name it.
#[derive(Debug, Clone)]
pub struct NoteKey {
    name: String,
    public: PublicKey,
    id: [u8; 4],
}

impl NoteKey {
    /// `name` (e.g. `dojang.example.kr/audit`) for `public` (Ed25519 or P-256).
    pub fn new(name: &str, public: PublicKey) -> Result<Self, NoteError> {
        if name.is_empty() || name.contains(char::is_whitespace) || name.contains('+') {
            return Err(NoteError::Malformed(
                "key names have no spaces or '+'".into(),
            ));
        }
        let hash = match public.algorithm() {
            Algorithm::EdDsa => {
                let mut input = name.as_bytes().to_vec();
                input.push(0x0a);
                input.push(0x01);
                input.extend_from_slice(public.raw());
                sha256(&input)
            }
            Algorithm::Es256 => sha256(public.spki_der()),
            other => {
                return Err(NoteError::Malformed(format!(
                    "{other} keys do not sign notes"
                )));
            }
        };
        let mut id = [0u8; 4];
        id.copy_from_slice(&hash[..4]);
        Ok(NoteKey {
            name: name.to_owned(),
            public,
            id,
        })
    }

    /// The key's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The public key, SPKI PEM.
    pub fn public_pem(&self) -> String {
        self.public.to_pem().unwrap_or_default()
    }

    /// The key ID its signature lines start with.
    pub fn id(&self) -> [u8; 4] {
        self.id
    }
}

impl Checkpoint {
    /// The checkpoint's note text.
    pub fn body(&self) -> String {
        let mut body = format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            B64.encode(self.root)
        );
        for line in &self.extensions {
            body.push_str(line);
            body.push('\n');
        }
        body
    }

    /// Whether this checkpoint (whose signature was checked) hands trust to
    /// `key`.
    pub fn hands_over_to(&self, key: &NoteKey) -> bool {
        let wanted = handover_line(key);
        self.extensions.contains(&wanted)
    }

    /// Parses a note text (the body) into a checkpoint.
    pub fn parse_body(body: &str) -> Result<Self, NoteError> {
        let bad = |m: &str| NoteError::Malformed(m.to_owned());
        let mut lines = body.split('\n');
        let origin = lines
            .next()
            .filter(|o| !o.is_empty())
            .ok_or_else(|| bad("no origin line"))?;
        let size_text = lines.next().ok_or_else(|| bad("no size line"))?;
        if size_text.is_empty()
            || (size_text.len() > 1 && size_text.starts_with('0'))
            || !size_text.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(bad("the size is not a decimal number"));
        }
        let size = size_text
            .parse()
            .map_err(|_| bad("the size is out of range"))?;
        let root = B64
            .decode(lines.next().ok_or_else(|| bad("no root line"))?)
            .ok()
            .and_then(|r| <[u8; 32]>::try_from(r).ok())
            .ok_or_else(|| bad("the root is not 32 base64 bytes"))?;
        // The body ends with a newline: the last split piece is empty.
        let mut extensions: Vec<String> = lines.map(str::to_owned).collect();
        if extensions.pop().is_some_and(|last| !last.is_empty()) {
            return Err(bad("the body must end with a newline"));
        }
        if extensions.iter().any(String::is_empty) {
            return Err(bad("empty extension line"));
        }
        Ok(Checkpoint {
            origin: origin.to_owned(),
            size,
            root,
            extensions,
        })
    }

    /// Signs the checkpoint with the audit key `label` in the HSM.
    pub fn sign(
        &self,
        backend: &dyn KeyBackend,
        label: &str,
        key: &NoteKey,
    ) -> Result<String, NoteError> {
        let body = self.body();
        let raw = backend
            .sign(label, pkcs11_shim::KeyPurpose::Audit, body.as_bytes())
            .map_err(|e| NoteError::Signing(e.to_string()))?;
        let signature = match key.public.algorithm() {
            Algorithm::EdDsa => raw,
            _ => ecdsa_raw_to_der(&raw).map_err(|e| NoteError::Signing(e.to_string()))?,
        };
        if !verify_signature(key, body.as_bytes(), &signature) {
            return Err(NoteError::Signing(
                "the HSM's signature does not verify with the audit key".into(),
            ));
        }
        let mut blob = key.id.to_vec();
        blob.extend_from_slice(&signature);
        Ok(format!(
            "{body}\n\u{2014} {} {}\n",
            key.name,
            B64.encode(blob)
        ))
    }

    /// Adds `key`'s signature to a note signed by [`Checkpoint::sign`]: a
    /// checkpoint signed by the outgoing and the incoming audit key hands
    /// trust from one to the other.
    pub fn cosign(
        note: &str,
        backend: &dyn KeyBackend,
        label: &str,
        key: &NoteKey,
    ) -> Result<String, NoteError> {
        let (body, _) = note
            .rsplit_once("\n\n")
            .ok_or_else(|| NoteError::Malformed("no blank line before the signatures".into()))?;
        let checkpoint = Self::parse_body(&format!("{body}\n"))?;
        let signed = checkpoint.sign(backend, label, key)?;
        let line = signed
            .rsplit_once("\n\n")
            .map(|(_, line)| line)
            .ok_or_else(|| NoteError::Signing("no signature line".into()))?;
        Ok(format!("{note}{line}"))
    }

    /// The key IDs of a note's signature lines (unverified), in order.
    pub fn signer_ids(note: &str) -> Vec<[u8; 4]> {
        Self::signer_ids_where(note, |_| true)
    }

    /// The key IDs of the signature lines by keys named `name` (the log's
    /// own, not its witnesses'), unverified, in order.
    pub fn signer_ids_named(note: &str, name: &str) -> Vec<[u8; 4]> {
        Self::signer_ids_where(note, |n| n == name)
    }

    fn signer_ids_where(note: &str, named: impl Fn(&str) -> bool) -> Vec<[u8; 4]> {
        let Some((_, signatures)) = note.rsplit_once("\n\n") else {
            return Vec::new();
        };
        signatures
            .lines()
            .filter_map(|line| line.strip_prefix("\u{2014} "))
            .filter_map(|rest| rest.split_once(' '))
            .filter(|(name, _)| named(name))
            .filter_map(|(_, sig)| B64.decode(sig).ok())
            .filter_map(|blob| blob.get(..4).and_then(|id| <[u8; 4]>::try_from(id).ok()))
            .collect()
    }

    /// Verifies a signed note by `key` and returns the checkpoint.
    pub fn open(note: &str, key: &NoteKey) -> Result<Self, NoteError> {
        let (body, signatures) = note
            .rsplit_once("\n\n")
            .map(|(b, s)| (format!("{b}\n"), s))
            .ok_or_else(|| NoteError::Malformed("no blank line before the signatures".into()))?;
        if note.chars().any(|c| c.is_control() && c != '\n') {
            return Err(NoteError::Malformed("control characters".into()));
        }
        if !signatures.ends_with('\n') || signatures.trim().is_empty() {
            return Err(NoteError::Malformed(
                "the signature block must end with a newline".into(),
            ));
        }
        let mut found = false;
        for line in signatures.lines() {
            let Some(rest) = line.strip_prefix("\u{2014} ") else {
                return Err(NoteError::Malformed(format!(
                    "not a signature line: {line:?}"
                )));
            };
            let Some((name, sig)) = rest.split_once(' ') else {
                return Err(NoteError::Malformed(
                    "signature line without a signature".into(),
                ));
            };
            let Ok(blob) = B64.decode(sig) else {
                return Err(NoteError::Malformed("signature is not base64".into()));
            };
            // A 4-byte key ID, then a signature of at least one byte.
            let id_and_signature = blob
                .split_first_chunk::<4>()
                .filter(|(_, signature)| !signature.is_empty());
            let (Some((id, signature)), false) = (id_and_signature, name.is_empty()) else {
                return Err(NoteError::Malformed(
                    "a signature line needs a name, a key ID and a signature".into(),
                ));
            };
            if name != key.name || *id != key.id {
                continue; // another key's signature: ignored, as C2SP says
            }
            found = true;
            if !verify_signature(key, body.as_bytes(), signature) {
                return Err(NoteError::BadSignature(key.name.clone()));
            }
        }
        if !found {
            return Err(NoteError::NotSigned(key.name.clone()));
        }
        Self::parse_body(&body)
    }
}

fn verify_signature(key: &NoteKey, text: &[u8], signature: &[u8]) -> bool {
    let raw = match key.public.algorithm() {
        Algorithm::EdDsa => signature.to_vec(),
        // Strict DER: the signature must be exactly its own re-encoding
        // (no trailing bytes, no alternative encodings).
        _ => match ecdsa_der_to_raw(signature, 32) {
            Ok(raw) if ecdsa_raw_to_der(&raw).is_ok_and(|der| der == signature) => raw,
            _ => return false,
        },
    };
    key.public.verify(text, &raw).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use openssl::ec::{EcGroup, EcKey};
    use openssl::hash::MessageDigest;
    use openssl::nid::Nid;
    use openssl::pkey::PKey;
    use openssl::sign::Signer;

    fn p256() -> (PKey<openssl::pkey::Private>, NoteKey) {
        let key = PKey::from_ec_key(
            EcKey::generate(&EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap()).unwrap(),
        )
        .unwrap();
        let public = PublicKey::from_spki_der(&key.public_key_to_der().unwrap()).unwrap();
        (key, NoteKey::new("example.kr/audit", public).unwrap())
    }

    fn note_with(
        key: &PKey<openssl::pkey::Private>,
        note_key: &NoteKey,
        tamper: impl Fn(&mut Vec<u8>),
    ) -> String {
        let body = Checkpoint {
            origin: "example.kr/log".into(),
            size: 3,
            root: [7; 32],
            extensions: Vec::new(),
        }
        .body();
        let mut signer = Signer::new(MessageDigest::sha256(), key).unwrap();
        let mut der = signer.sign_oneshot_to_vec(body.as_bytes()).unwrap();
        tamper(&mut der);
        let mut blob = note_key.id.to_vec();
        blob.extend_from_slice(&der);
        format!("{body}\n\u{2014} {} {}\n", note_key.name, B64.encode(blob))
    }

    #[test]
    fn ecdsa_notes_open_and_malleated_signatures_do_not() {
        let (key, note_key) = p256();
        let good = note_with(&key, &note_key, |_| {});
        let cp = Checkpoint::open(&good, &note_key).unwrap();
        assert_eq!(
            (cp.origin.as_str(), cp.size, cp.root),
            ("example.kr/log", 3, [7; 32])
        );
        // Trailing bytes after the DER signature.
        let padded = note_with(&key, &note_key, |der| der.push(0));
        assert_eq!(
            Checkpoint::open(&padded, &note_key),
            Err(NoteError::BadSignature("example.kr/audit".into()))
        );
        // No final newline after the signature line.
        assert!(matches!(
            Checkpoint::open(good.trim_end(), &note_key),
            Err(NoteError::Malformed(_))
        ));
        // Another key's line only: not signed by ours.
        let (other_key, other_note_key) = p256();
        let foreign = note_with(&other_key, &other_note_key, |_| {});
        assert!(matches!(
            Checkpoint::open(&foreign, &note_key),
            Err(NoteError::NotSigned(_))
        ));
    }

    #[test]
    fn bodies_are_strict() {
        assert!(Checkpoint::parse_body("log\n012\nAAAA\n").is_err());
        assert!(Checkpoint::parse_body("\n1\nAAAA\n").is_err());
        assert!(
            Checkpoint::parse_body("log\n1\nAAAA\n").is_err(),
            "root is 32 bytes"
        );
    }
}
