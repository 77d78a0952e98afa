//! The disclosures of an SD-JWT: the digest the issuer signs for each one,
//! and how a verifier puts every disclosure back in its place in the
//! payload (RFC 9901 §7.1), refusing duplicates, reused digests, unused
//! disclosures and hidden claims that must stay plain.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use serde_json::{Map, Value};

use super::verify::{VerifyError, malformed};

/// Claims that must never be selectively disclosable.
const ALWAYS_PLAIN: [&str; 8] = [
    "iss", "iat", "nbf", "exp", "vct", "cnf", "status", "_sd_alg",
];

/// The digest of an encoded disclosure, as `_sd` and `...` carry it.
pub(crate) fn disclosure_digest(disclosure: &str) -> String {
    base64_simd::URL_SAFE_NO_PAD
        .encode_to_string(pkcs11_shim::digest::sha256(disclosure.as_bytes()))
}

/// Puts every disclosure in its place in `payload` (`_sd_alg` removed) and
/// refuses one that no digest references; the claims and the names
/// disclosed out.
pub(crate) fn reveal_disclosures(
    mut payload: Map<String, Value>,
    disclosures: &[&str],
) -> Result<(Map<String, Value>, BTreeSet<String>), VerifyError> {
    let mut table = Disclosures::parse(disclosures)?;
    let _ = payload.remove("_sd_alg");
    let mut claims = Value::Object(payload);
    table.reveal(&mut claims, 0)?;
    if let Some(unused) = table.unreferenced() {
        return Err(VerifyError::Digest(format!(
            "disclosure {unused} (not referenced by any digest)"
        )));
    }
    let Value::Object(payload) = claims else {
        return Err(malformed("payload is not an object"));
    };
    Ok((payload, table.names))
}

/// Limits the nesting a verifier follows (hostile input).
const MAX_DEPTH: usize = 16;

/// The disclosures of one SD-JWT, by digest, and which were used.
struct Disclosures {
    by_digest: BTreeMap<String, Vec<Value>>,
    used: BTreeSet<String>,
    names: BTreeSet<String>,
}

impl Disclosures {
    fn parse(encoded: &[&str]) -> Result<Self, VerifyError> {
        let mut by_digest = BTreeMap::new();
        for disclosure in encoded {
            let bytes = B64URL
                .decode(disclosure)
                .map_err(|_| malformed("a disclosure is not base64url"))?;
            let Ok(Value::Array(parts)) = serde_json::from_slice::<Value>(&bytes) else {
                return Err(malformed("a disclosure is not a JSON array"));
            };
            if !(2..=3).contains(&parts.len()) || !parts.first().is_some_and(Value::is_string) {
                return Err(malformed(
                    "a disclosure is [salt, name, value] or [salt, value]",
                ));
            }
            if by_digest
                .insert(disclosure_digest(disclosure), parts)
                .is_some()
            {
                return Err(malformed("the same disclosure appears twice"));
            }
        }
        Ok(Disclosures {
            by_digest,
            used: BTreeSet::new(),
            names: BTreeSet::new(),
        })
    }

    fn take(&mut self, digest: &str) -> Result<Option<Vec<Value>>, VerifyError> {
        match self.by_digest.get(digest) {
            None => Ok(None), // a decoy, or a claim the holder did not disclose
            Some(parts) => {
                if !self.used.insert(digest.to_owned()) {
                    return Err(VerifyError::Digest(format!(
                        "digest {digest} referenced twice"
                    )));
                }
                Ok(Some(parts.clone()))
            }
        }
    }

    /// Replaces every `_sd` digest and `{"...": digest}` array element in
    /// `value` by what its disclosure reveals (RFC 9901 §7.1).
    fn reveal(&mut self, value: &mut Value, depth: usize) -> Result<(), VerifyError> {
        if depth > MAX_DEPTH {
            return Err(malformed("disclosures nested too deeply"));
        }
        match value {
            Value::Object(map) => {
                let digests = match map.remove("_sd") {
                    None => Vec::new(),
                    Some(Value::Array(list)) => list,
                    Some(_) => return Err(malformed("_sd is not an array")),
                };
                for key in map.keys().cloned().collect::<Vec<_>>() {
                    if let Some(child) = map.get_mut(&key) {
                        self.reveal(child, depth + 1)?;
                    }
                }
                for digest in digests {
                    let digest = digest
                        .as_str()
                        .ok_or_else(|| malformed("_sd holds a non-string"))?;
                    let Some(parts) = self.take(digest)? else {
                        continue;
                    };
                    let [_salt, Value::String(name), claim] = parts.as_slice() else {
                        return Err(malformed("an _sd digest must point to [salt, name, value]"));
                    };
                    if (depth == 0 && ALWAYS_PLAIN.contains(&name.as_str()))
                        || name == "_sd"
                        || name == "..."
                    {
                        return Err(malformed(format!(
                            "{name} must not be selectively disclosed"
                        )));
                    }
                    let mut claim = claim.clone();
                    self.reveal(&mut claim, depth + 1)?;
                    if map.insert(name.clone(), claim).is_some() {
                        return Err(malformed(format!("{name} appears twice")));
                    }
                    let _ = self.names.insert(name.clone());
                }
            }
            Value::Array(items) => {
                let mut revealed = Vec::with_capacity(items.len());
                for mut item in std::mem::take(items) {
                    let digest = match &item {
                        Value::Object(o) if o.len() == 1 => {
                            o.get("...").and_then(Value::as_str).map(str::to_owned)
                        }
                        _ => None,
                    };
                    match digest {
                        Some(digest) => {
                            let Some(parts) = self.take(&digest)? else {
                                continue;
                            };
                            let [_salt, element] = parts.as_slice() else {
                                return Err(malformed(
                                    "an array digest must point to [salt, value]",
                                ));
                            };
                            let mut element = element.clone();
                            self.reveal(&mut element, depth + 1)?;
                            revealed.push(element);
                        }
                        None => {
                            self.reveal(&mut item, depth + 1)?;
                            revealed.push(item);
                        }
                    }
                }
                *items = revealed;
            }
            _ => {}
        }
        Ok(())
    }

    fn unreferenced(&self) -> Option<String> {
        self.by_digest
            .keys()
            .find(|d| !self.used.contains(*d))
            .cloned()
    }
}
