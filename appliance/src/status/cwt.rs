//! The CBOR form of a status-list token (`application/statuslist+cwt`),
//! what ISO 18013-5 mdoc readers fetch: a tagged COSE_Sign1 whose
//! protected header carries `alg`, `kid`, `typ` (16) and, once the key is
//! certified, `x5chain` (33: its certificate from the IACA), and whose
//! payload is a CWT claims set: `sub` (2), `iat` (6), `exp` (4), `ttl` (65534) and
//! `status_list` (65533) = `{"bits": 2, "lst": <zlib bytes>}`.

use ciborium::Value;
use coset::{
    CborSerializable, CoseSign1, CoseSign1Builder, HeaderBuilder, Label, TaggedCborSerializable,
};
use pkcs11_shim::{KeyBackend, KeyPurpose, PublicKey};

use super::list::{BITS, StatusError, StatusList, StatusListToken, TokenFields};
use crate::credential::SignatureAlgorithm;

/// The media type, also the protected header's `typ`.
pub const CWT_TYPE: &str = "application/statuslist+cwt";
const TYP: i64 = 16;
const SUB: i64 = 2;
const EXP: i64 = 4;
const IAT: i64 = 6;
const TTL: i64 = 65534;
const STATUS_LIST: i64 = 65533;
const X5CHAIN: i64 = 33;

/// Signs `list` as a `statuslist+cwt` with the status-list key `label`.
pub fn sign_cwt(
    backend: &dyn KeyBackend,
    label: &str,
    list: &StatusList,
    fields: &TokenFields<'_>,
) -> Result<Vec<u8>, StatusError> {
    let key = backend.find(label)?;
    if key.purpose != KeyPurpose::StatusList {
        return Err(StatusError::WrongPurpose(label.to_owned()));
    }
    let algorithm =
        SignatureAlgorithm::of_key(key.algorithm).map_err(|e| StatusError::Token(e.to_string()))?;
    let int = |n: i64| Value::Integer(n.into());
    let claims = Value::Map(vec![
        (int(SUB), Value::Text(fields.uri.to_owned())),
        (int(IAT), int(fields.iat)),
        (int(EXP), int(fields.exp)),
        (int(TTL), Value::Integer(fields.ttl.into())),
        (
            int(STATUS_LIST),
            Value::Map(vec![
                (Value::Text("bits".into()), int(i64::from(BITS))),
                (Value::Text("lst".into()), Value::Bytes(list.compressed()?)),
            ]),
        ),
    ]);
    let mut payload = Vec::new();
    ciborium::into_writer(&claims, &mut payload).map_err(|e| StatusError::Token(e.to_string()))?;
    let mut protected = HeaderBuilder::new()
        .algorithm(algorithm.cose())
        .key_id(key.kid().unwrap_or_default().into_bytes())
        .value(TYP, Value::Text(CWT_TYPE.to_owned()));
    if let Some(der) = fields.certificate {
        // RFC 9360: one certificate is a bare bstr; protected, so the
        // chain a reader builds is the one the key signed over.
        protected = protected.value(X5CHAIN, Value::Bytes(der.to_vec()));
    }
    let protected = protected.build();
    let sign1 = CoseSign1Builder::new()
        .protected(protected)
        .payload(payload)
        .try_create_signature(b"", |to_be_signed| {
            backend.sign(label, KeyPurpose::StatusList, to_be_signed)
        })?
        .build();
    sign1
        .to_tagged_vec()
        .map_err(|e| StatusError::Token(e.to_string()))
}

/// Verifies a `statuslist+cwt` with the status-list key's public half and
/// returns what it says (expiry is the caller's to judge).
pub fn verify_cwt(token: &[u8], key: &PublicKey) -> Result<StatusListToken, StatusError> {
    let bad = |m: &str| StatusError::Token(m.to_owned());
    let sign1 = CoseSign1::from_tagged_slice(token)
        .or_else(|_| CoseSign1::from_slice(token))
        .map_err(|_| bad("not a COSE_Sign1"))?;
    let header_value = |label: i64| {
        sign1
            .protected
            .header
            .rest
            .iter()
            .find(|(l, _)| *l == Label::Int(label))
            .map(|(_, v)| v)
    };
    let typ = header_value(TYP);
    if typ != Some(&Value::Text(CWT_TYPE.to_owned())) {
        return Err(bad("typ is not application/statuslist+cwt"));
    }
    let expected = SignatureAlgorithm::of_key(key.algorithm())
        .map_err(|_| bad("not a signing key"))?
        .cose();
    if sign1.protected.header.alg != Some(coset::RegisteredLabelWithPrivate::Assigned(expected)) {
        return Err(bad("alg does not match the key"));
    }
    sign1
        .verify_signature(b"", |signature, data| match key.verify(data, signature) {
            Ok(true) => Ok(()),
            _ => Err(()),
        })
        .map_err(|()| bad("the signature does not verify"))?;
    let payload = sign1.payload.as_deref().ok_or_else(|| bad("no payload"))?;
    let claims: Value = ciborium::from_reader(payload).map_err(|_| bad("payload is not CBOR"))?;
    let claims = claims.as_map().ok_or_else(|| bad("claims are not a map"))?;
    let claim = |n: i64| {
        claims
            .iter()
            .find(|(k, _)| k.as_integer() == Some(n.into()))
            .map(|(_, v)| v)
    };
    let number = |n: i64, what: &str| -> Result<i128, StatusError> {
        claim(n)
            .and_then(Value::as_integer)
            .map(i128::from)
            .ok_or_else(|| bad(what))
    };
    let list = claim(STATUS_LIST)
        .and_then(Value::as_map)
        .ok_or_else(|| bad("no status_list"))?;
    let member = |name: &str| {
        list.iter()
            .find(|(k, _)| k.as_text() == Some(name))
            .map(|(_, v)| v)
    };
    if member("bits").and_then(Value::as_integer) != Some(BITS.into()) {
        return Err(bad("bits is not 2"));
    }
    let lst = member("lst")
        .and_then(Value::as_bytes)
        .ok_or_else(|| bad("no lst"))?;
    Ok(StatusListToken {
        uri: claim(SUB)
            .and_then(Value::as_text)
            .ok_or_else(|| bad("no sub"))?
            .to_owned(),
        iat: i64::try_from(number(IAT, "no iat")?).map_err(|_| bad("iat"))?,
        exp: i64::try_from(number(EXP, "no exp")?).map_err(|_| bad("exp"))?,
        ttl: u64::try_from(number(TTL, "no ttl").unwrap_or(0)).unwrap_or(0),
        list: StatusList::from_compressed(lst)?,
        certificate: match header_value(X5CHAIN) {
            None => None,
            Some(Value::Bytes(der)) => Some(der.clone()),
            Some(Value::Array(chain)) => chain.first().and_then(Value::as_bytes).cloned(),
            Some(_) => return Err(bad("x5chain is not a certificate")),
        },
    })
}
