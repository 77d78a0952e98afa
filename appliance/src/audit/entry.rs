//! Audit entries and their canonical encoding: a CBOR map with small
//! integer keys in ascending order, absent fields omitted, shortest
//! encodings only. The leaf hash covers exactly these bytes, and a decoder
//! refuses any other encoding of the same entry.
//!
//! An entry never holds a resident number, a name, an address or a
//! portrait: the holder appears only as the HSM pseudonym.

use ciborium::Value;

use crate::credential::cbor::Writer;

/// The encoding version.
pub const VERSION: u64 = 1;

/// One decision or operation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditEntry {
    /// Unix seconds.
    pub time: i64,
    /// The node that wrote it.
    pub node: String,
    /// Per-node sequence number, from 0, without gaps.
    pub seq: u64,
    /// Client or officer identity.
    pub actor: String,
    /// `issue`, `deny`, `revoke`, `rotate`, `start`, …
    pub action: String,
    /// `allow`, `deny`, `ok`, `error`.
    pub outcome: String,
    /// The refusing policy rule.
    pub rule: Option<String>,
    /// The policy's SHA-256 (hex).
    pub policy_hash: Option<String>,
    /// Credential profile.
    pub profile: Option<String>,
    /// Credential id.
    pub credential_id: Option<String>,
    /// Key id of the signing key.
    pub key_id: Option<String>,
    /// SHA-256 of the signed payload.
    pub payload_sha256: Option<[u8; 32]>,
    /// The holder pseudonym.
    pub holder: Option<[u8; 32]>,
    /// SHA-256 of the certificate the actor presented.
    pub actor_certificate: Option<[u8; 32]>,
    /// The node's seal over every other field ([`super::seal`]); absent
    /// only on entries written before seals existed.
    pub seal: Option<[u8; 32]>,
}

/// Why bytes are not a valid entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed audit entry: {0}")]
pub struct EntryError(pub String);

fn bad(what: impl Into<String>) -> EntryError {
    EntryError(what.into())
}

impl AuditEntry {
    /// The canonical bytes (what the Merkle leaf hashes).
    pub fn encode(&self) -> Vec<u8> {
        let mut fields: Vec<(u64, Field<'_>)> = vec![
            (0, Field::Uint(VERSION)),
            (1, Field::Int(self.time)),
            (2, Field::Text(&self.node)),
            (3, Field::Uint(self.seq)),
            (4, Field::Text(&self.actor)),
            (5, Field::Text(&self.action)),
            (6, Field::Text(&self.outcome)),
        ];
        let optional = [
            (7, self.rule.as_deref().map(Field::Text)),
            (8, self.policy_hash.as_deref().map(Field::Text)),
            (9, self.profile.as_deref().map(Field::Text)),
            (10, self.credential_id.as_deref().map(Field::Text)),
            (11, self.key_id.as_deref().map(Field::Text)),
            (12, self.payload_sha256.as_ref().map(|h| Field::Bytes(h))),
            (13, self.holder.as_ref().map(|h| Field::Bytes(h))),
            (14, self.actor_certificate.as_ref().map(|h| Field::Bytes(h))),
            (15, self.seal.as_ref().map(|h| Field::Bytes(h))),
        ];
        fields.extend(optional.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))));
        let mut w = Writer::with_capacity(256);
        let _ = w.map(fields.len());
        for (key, field) in fields {
            let _ = w.uint(key);
            let _ = match field {
                Field::Uint(n) => w.uint(n),
                Field::Int(n) if n >= 0 => w.uint(n as u64),
                Field::Int(n) => w.negative((-1 - n) as u64),
                Field::Text(t) => w.text(t),
                Field::Bytes(b) => w.bytes(b),
            };
        }
        w.bytes
    }

    /// Decodes canonical bytes; any other encoding is refused.
    pub fn decode(bytes: &[u8]) -> Result<Self, EntryError> {
        let mut rest = bytes;
        let value: Value =
            ciborium::from_reader(&mut rest).map_err(|e| bad(format!("not CBOR: {e}")))?;
        if !rest.is_empty() {
            return Err(bad("trailing bytes"));
        }
        let Value::Map(pairs) = value else {
            return Err(bad("not a map"));
        };
        let mut fields: Vec<(u64, Value)> = Vec::with_capacity(pairs.len());
        for (k, v) in pairs {
            let k = k
                .as_integer()
                .and_then(|i| u64::try_from(i).ok())
                .ok_or_else(|| bad("keys are small unsigned integers"))?;
            fields.push((k, v));
        }
        let get = |key: u64| fields.iter().find(|(k, _)| *k == key).map(|(_, v)| v);
        let text = |key: u64| -> Result<Option<String>, EntryError> {
            match get(key) {
                None => Ok(None),
                Some(Value::Text(t)) => Ok(Some(t.clone())),
                Some(_) => Err(bad(format!("field {key} is not text"))),
            }
        };
        let required = |key: u64| text(key)?.ok_or_else(|| bad(format!("field {key} missing")));
        let hash = |key: u64| -> Result<Option<[u8; 32]>, EntryError> {
            match get(key) {
                None => Ok(None),
                Some(Value::Bytes(b)) => b
                    .as_slice()
                    .try_into()
                    .map(Some)
                    .map_err(|_| bad(format!("field {key} is not 32 bytes"))),
                Some(_) => Err(bad(format!("field {key} is not bytes"))),
            }
        };
        let integer = |key: u64| -> Result<i128, EntryError> {
            get(key)
                .and_then(Value::as_integer)
                .map(i128::from)
                .ok_or_else(|| bad(format!("field {key} missing or not an integer")))
        };
        if integer(0)? != i128::from(VERSION) {
            return Err(bad("unknown version"));
        }
        let entry = AuditEntry {
            time: i64::try_from(integer(1)?).map_err(|_| bad("time out of range"))?,
            node: required(2)?,
            seq: u64::try_from(integer(3)?).map_err(|_| bad("seq out of range"))?,
            actor: required(4)?,
            action: required(5)?,
            outcome: required(6)?,
            rule: text(7)?,
            policy_hash: text(8)?,
            profile: text(9)?,
            credential_id: text(10)?,
            key_id: text(11)?,
            payload_sha256: hash(12)?,
            holder: hash(13)?,
            actor_certificate: hash(14)?,
            seal: hash(15)?,
        };
        if entry.encode() != bytes {
            return Err(bad(
                "not in canonical form (unknown fields, key order or encoding)",
            ));
        }
        Ok(entry)
    }
}

enum Field<'a> {
    Uint(u64),
    Int(i64),
    Text(&'a str),
    Bytes(&'a [u8]),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> AuditEntry {
        AuditEntry {
            time: 1_800_000_000,
            node: "node-a".into(),
            seq: 7,
            actor: "spiffe://mois.go.kr/office-counter".into(),
            action: "issue".into(),
            outcome: "allow".into(),
            rule: None,
            policy_hash: Some("ab".repeat(32)),
            profile: Some("mdoc".into()),
            credential_id: Some("c-1".into()),
            key_id: Some("kid".into()),
            payload_sha256: Some([1; 32]),
            holder: Some([2; 32]),
            actor_certificate: Some([3; 32]),
            seal: Some([4; 32]),
        }
    }

    #[test]
    fn entries_round_trip_canonically() {
        let e = sample();
        let bytes = e.encode();
        assert_eq!(AuditEntry::decode(&bytes).unwrap(), e);
        let mut minimal = sample();
        minimal.policy_hash = None;
        minimal.holder = None;
        minimal.actor_certificate = None;
        minimal.seal = None;
        assert_eq!(AuditEntry::decode(&minimal.encode()).unwrap(), minimal);
    }

    #[test]
    fn other_encodings_of_the_same_entry_are_refused() {
        let bytes = sample().encode();
        // Same map through ciborium with an extra field appended.
        let mut value: Value = ciborium::from_reader(&bytes[..]).unwrap();
        if let Value::Map(pairs) = &mut value {
            pairs.push((Value::Integer(99.into()), Value::Bool(true)));
        }
        let mut extra = Vec::new();
        ciborium::into_writer(&value, &mut extra).unwrap();
        assert!(AuditEntry::decode(&extra).is_err());
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(AuditEntry::decode(&trailing).is_err());
    }
}
