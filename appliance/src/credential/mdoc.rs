//! ISO/IEC 18013-5 mdoc issuance: `IssuerSigned` with the MSO in a
//! COSE_Sign1, and its verifier.
//!
//! Document type and namespace (our own reverse-DNS name under the
//! Ministry of the Interior and Safety, which keeps the resident register):
//! [`DOC_TYPE`] = [`NAMESPACE`] = `kr.go.mois.mrc.1`. See
//! `docs/credential-profile.md` for the elements.
//!
//! ```text
//! IssuerSigned = { "nameSpaces": { ns => [ #6.24(bstr .cbor IssuerSignedItem) ] },
//!                  "issuerAuth": COSE_Sign1 }      ; payload #6.24(bstr .cbor MSO)
//! ```
//! Each item's digest is SHA-256 over its whole `#6.24(...)` encoding.
//! digestIDs are random and decoy digests are mixed in, so the MSO tells
//! nothing about which or how many elements exist.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use ciborium::Value;
use coset::{AsCborValue, CoseSign1, Label};
use pkcs11_shim::{Algorithm, PublicKey};
use time::OffsetDateTime;

use super::cbor::{Writer, encode, get, parse_tdate};
use super::claims::ResidentCardClaims;
use super::signer::DocumentSigner;
use super::verify::{self, Trust, VerifyError, malformed};
use super::{CredentialError, SignatureValidity, StatusReference, random};

/// The document type of the Korean mobile resident registration card.
pub const DOC_TYPE: &str = "kr.go.mois.mrc.1";
/// Its namespace.
pub const NAMESPACE: &str = "kr.go.mois.mrc.1";
/// COSE header label of x5chain (RFC 9360).
const X5CHAIN: u64 = 33;
/// Decoy digests added to each namespace.
const DECOYS: usize = 3;
/// Random bytes per item (ISO 18013-5 asks for at least 16).
const SALT_LEN: usize = 32;

/// An element value of the card. Personal data: no `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub enum ElementValue<'a> {
    /// tstr
    Text(&'a str),
    /// bool
    Bool(bool),
    /// full-date, `#6.1004`
    FullDate(time::Date),
    /// bstr
    Bytes(&'a [u8]),
}

/// The (identifier, value) elements of the card, in a stable order.
pub fn elements(claims: &ResidentCardClaims) -> Vec<(&'static str, ElementValue<'_>)> {
    use ElementValue::{Bool, FullDate, Text};
    let mut items = vec![
        ("family_name", Text(&claims.family_name)),
        ("given_name", Text(&claims.given_name)),
        ("birth_date", FullDate(claims.birth_date)),
        ("age_over_17", Bool(claims.age_over_17)),
        ("age_over_18", Bool(claims.age_over_18)),
        (
            "resident_number_masked",
            Text(&claims.resident_number_masked),
        ),
        ("resident_address", Text(&claims.address)),
        ("issue_date", FullDate(claims.issue_date)),
        ("expiry_date", FullDate(claims.expiry_date)),
        ("issuing_authority", Text(&claims.issuing_authority)),
        ("issuing_country", Text(&claims.issuing_country)),
    ];
    if let Some(portrait) = &claims.portrait {
        items.push(("portrait", ElementValue::Bytes(portrait)));
    }
    items
}

fn write_value(w: &mut Writer, value: &ElementValue<'_>) {
    let _ = match value {
        ElementValue::Text(t) => w.text(t),
        ElementValue::Bool(b) => w.bool(*b),
        ElementValue::FullDate(d) => w.full_date(*d),
        ElementValue::Bytes(b) => w.bytes(b),
    };
}

/// The holder's device key as a COSE_Key (RFC 9053).
fn write_cose_key(w: &mut Writer, key: &PublicKey) -> Result<(), CredentialError> {
    let raw = key.raw();
    match key.algorithm() {
        Algorithm::Es256 | Algorithm::Es384 => {
            let crv = if key.algorithm() == Algorithm::Es256 {
                1
            } else {
                2
            };
            // `raw` is 04 || X || Y (PublicKey checked it): X and Y are
            // the two halves after the 04.
            let Some((0x04, coordinates)) = raw.split_first() else {
                return Err(CredentialError::Encoding(
                    "device key is not an uncompressed EC point".into(),
                ));
            };
            let (x, y) = coordinates.split_at(coordinates.len() / 2);
            // kty: EC2, crv, x, y
            let _ = w
                .map(4)
                .uint(1)
                .uint(2)
                .negative(0)
                .uint(crv)
                .negative(1)
                .bytes(x)
                .negative(2)
                .bytes(y);
        }
        Algorithm::EdDsa => {
            // kty: OKP, crv: Ed25519, x
            let _ = w
                .map(3)
                .uint(1)
                .uint(1)
                .negative(0)
                .uint(6)
                .negative(1)
                .bytes(raw);
        }
        other => {
            return Err(CredentialError::Invalid(format!(
                "{other} is not a device key type"
            )));
        }
    }
    Ok(())
}

/// Random, distinct digest IDs (31 bits, so they stay small CBOR uints).
/// Being random, they say nothing about the elements' order or number.
fn unique_digest_ids(count: usize) -> Result<Vec<u32>, CredentialError> {
    let mut ids = Vec::with_capacity(count);
    while ids.len() < count {
        let id = u32::from_be_bytes(random::<4>()?) & 0x7fff_ffff;
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    Ok(ids)
}

/// The protected header `{1: alg}`, encoded.
fn protected_header(algorithm: super::SignatureAlgorithm) -> Vec<u8> {
    let mut w = Writer::with_capacity(4);
    let _ = w.map(1).uint(1);
    let _ = match algorithm {
        super::SignatureAlgorithm::Es256 => w.negative(6), // -7
        super::SignatureAlgorithm::Es384 => w.negative(34), // -35
        super::SignatureAlgorithm::EdDsa => w.negative(7), // -8
    };
    w.bytes
}

/// An mdoc built and waiting for its issuer signature.
pub struct UnsignedMdoc<'a> {
    /// Each `#6.24(bstr .cbor IssuerSignedItem)`, encoded.
    items: Vec<Vec<u8>>,
    protected: Vec<u8>,
    /// `#6.24(bstr .cbor MSO)`, encoded: the COSE payload.
    payload: Vec<u8>,
    ds_certificate_der: &'a [u8],
}

impl<'a> UnsignedMdoc<'a> {
    /// Builds the items and the MSO. Pure apart from the random salts and
    /// digest IDs.
    pub fn build(
        claims: &ResidentCardClaims,
        device_key: &PublicKey,
        validity: &SignatureValidity,
        status: Option<&StatusReference>,
        algorithm: super::SignatureAlgorithm,
        ds_certificate_der: &'a [u8],
    ) -> Result<Self, CredentialError> {
        let elements = elements(claims);
        let ids = unique_digest_ids(elements.len() + DECOYS)?;
        let mut items = Vec::with_capacity(elements.len());
        let mut digests: Vec<(u32, [u8; 32])> = Vec::with_capacity(ids.len());
        let mut item = Writer::with_capacity(256);
        for ((identifier, value), id) in elements.iter().zip(&ids) {
            item.bytes.clear();
            let _ = item
                .map(4)
                .text("digestID")
                .uint(u64::from(*id))
                .text("random")
                .bytes(&random::<SALT_LEN>()?)
                .text("elementIdentifier")
                .text(identifier)
                .text("elementValue");
            write_value(&mut item, value);
            let mut wrapped = Writer::with_capacity(item.bytes.len() + 8);
            let _ = wrapped.tag(24).bytes(&item.bytes);
            digests.push((*id, pkcs11_shim::digest::sha256(&wrapped.bytes)));
            items.push(wrapped.bytes);
        }
        for id in ids.iter().skip(items.len()) {
            digests.push((*id, random::<32>()?));
        }
        digests.sort_unstable_by_key(|(id, _)| *id);

        let mut mso = Writer::with_capacity(1024);
        let _ = mso
            .map(if status.is_some() { 7 } else { 6 })
            .text("version")
            .text("1.0")
            .text("digestAlgorithm")
            .text("SHA-256")
            .text("valueDigests")
            .map(1)
            .text(NAMESPACE)
            .map(digests.len());
        for (id, digest) in &digests {
            let _ = mso.uint(u64::from(*id)).bytes(digest);
        }
        let _ = mso.text("deviceKeyInfo").map(1).text("deviceKey");
        write_cose_key(&mut mso, device_key)?;
        let _ = mso
            .text("docType")
            .text(DOC_TYPE)
            .text("validityInfo")
            .map(4)
            .text("signed")
            .tdate(validity.signed)
            .text("validFrom")
            .tdate(validity.valid_from)
            .text("validUntil")
            .tdate(validity.valid_until)
            .text("expectedUpdate")
            .tdate(validity.valid_until);
        if let Some(status) = status {
            let _ = mso
                .text("status")
                .map(1)
                .text("status_list")
                .map(2)
                .text("idx")
                .uint(status.idx)
                .text("uri")
                .text(&status.uri);
        }
        let mut payload = Writer::with_capacity(mso.bytes.len() + 8);
        let _ = payload.tag(24).bytes(&mso.bytes);
        Ok(UnsignedMdoc {
            items,
            protected: protected_header(algorithm),
            payload: payload.bytes,
            ds_certificate_der,
        })
    }

    /// The COSE Sig_structure the issuer signs:
    /// `["Signature1", protected, h'', payload]`.
    pub fn signing_input(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(self.payload.len() + 32);
        let _ = w
            .array(4)
            .text("Signature1")
            .bytes(&self.protected)
            .bytes(&[])
            .bytes(&self.payload);
        w.bytes
    }

    /// Adds the raw signature and encodes the `IssuerSigned` structure.
    pub fn finish(self, signature: &[u8]) -> Vec<u8> {
        let size = self.items.iter().map(Vec::len).sum::<usize>()
            + self.payload.len()
            + self.ds_certificate_der.len()
            + signature.len()
            + 128;
        let mut w = Writer::with_capacity(size);
        let _ = w
            .map(2)
            .text("nameSpaces")
            .map(1)
            .text(NAMESPACE)
            .array(self.items.len());
        for item in &self.items {
            let _ = w.raw(item);
        }
        // issuerAuth: untagged COSE_Sign1 with x5chain (33) unprotected.
        let _ = w
            .text("issuerAuth")
            .array(4)
            .bytes(&self.protected)
            .map(1)
            .uint(X5CHAIN)
            .bytes(self.ds_certificate_der)
            .bytes(&self.payload)
            .bytes(signature);
        w.bytes
    }
}

/// Builds and signs an mdoc; returns the CBOR `IssuerSigned`.
pub fn issue(
    signer: &DocumentSigner<'_>,
    claims: &ResidentCardClaims,
    device_key: &PublicKey,
    validity: &SignatureValidity,
    status: Option<&StatusReference>,
) -> Result<Vec<u8>, CredentialError> {
    if validity.valid_until > signer.not_after() {
        return Err(CredentialError::Invalid(
            "the signature would outlive the DS certificate".into(),
        ));
    }
    let unsigned = UnsignedMdoc::build(
        claims,
        device_key,
        validity,
        status,
        signer.algorithm(),
        signer.certificate_der(),
    )?;
    let signature = signer.sign(&unsigned.signing_input())?;
    Ok(unsigned.finish(&signature))
}

/// The delivery form: base64url of the CBOR (OpenID4VCI `mso_mdoc`).
pub fn to_base64url(issuer_signed: &[u8]) -> String {
    B64URL.encode(issuer_signed)
}

/// A verified mdoc. `Debug` shows element names only: values are personal data.
#[derive(Clone)]
pub struct VerifiedMdoc {
    /// The MSO's docType.
    pub doc_type: String,
    /// Disclosed elements per namespace.
    pub elements: BTreeMap<String, BTreeMap<String, Value>>,
    /// Signature validity from the MSO.
    pub valid_from: OffsetDateTime,
    /// Signature validity from the MSO.
    pub valid_until: OffsetDateTime,
    /// The status-list reference, if any.
    pub status: Option<StatusReference>,
    /// The holder's device key (COSE_Key).
    pub device_key: Value,
}

impl std::fmt::Debug for VerifiedMdoc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: BTreeMap<&String, Vec<&String>> = self
            .elements
            .iter()
            .map(|(ns, items)| (ns, items.keys().collect()))
            .collect();
        f.debug_struct("VerifiedMdoc")
            .field("doc_type", &self.doc_type)
            .field("elements", &names)
            .field("valid_from", &self.valid_from)
            .field("valid_until", &self.valid_until)
            .finish_non_exhaustive()
    }
}

/// Parses exactly one CBOR data item: trailing bytes are refused.
fn parse_cbor(bytes: &[u8], what: &str) -> Result<Value, VerifyError> {
    let mut rest = bytes;
    let value = ciborium::from_reader(&mut rest)
        .map_err(|e| malformed(format!("{what} is not CBOR: {e}")))?;
    if !rest.is_empty() {
        return Err(malformed(format!(
            "{what} has {} bytes after its CBOR item",
            rest.len()
        )));
    }
    Ok(value)
}

fn as_map<'a>(value: &'a Value, what: &str) -> Result<&'a [(Value, Value)], VerifyError> {
    value
        .as_map()
        .map(Vec::as_slice)
        .ok_or_else(|| malformed(format!("{what} is not a map")))
}

fn tag24_bytes<'a>(value: &'a Value, what: &str) -> Result<&'a [u8], VerifyError> {
    match value {
        Value::Tag(24, inner) => inner
            .as_bytes()
            .map(Vec::as_slice)
            .ok_or_else(|| malformed(format!("{what}: tag 24 must wrap a byte string"))),
        _ => Err(malformed(format!("{what} is not a #6.24 item"))),
    }
}

/// Verifies an `IssuerSigned` (CBOR bytes): the DS certificate against
/// `trust`, the issuer signature, every element's digest, the validity at
/// `now`, and the docType when `expected_doc_type` is given.
pub fn verify(
    issuer_signed: &[u8],
    trust: &Trust,
    now: OffsetDateTime,
    expected_doc_type: Option<&str>,
) -> Result<VerifiedMdoc, VerifyError> {
    let root = parse_cbor(issuer_signed, "IssuerSigned")?;
    let root = as_map(&root, "IssuerSigned")?;
    let issuer_auth = get(root, "issuerAuth").ok_or_else(|| malformed("no issuerAuth"))?;
    let cose = CoseSign1::from_cbor_value(issuer_auth.clone())
        .map_err(|e| malformed(format!("issuerAuth is not a COSE_Sign1: {e}")))?;

    // The algorithm must be in the protected header.
    let alg = match &cose.protected.header.alg {
        Some(coset::RegisteredLabelWithPrivate::Assigned(a)) => *a,
        _ => {
            return Err(VerifyError::Algorithm(
                "no alg in the protected header".into(),
            ));
        }
    };
    let alg_name = match alg {
        coset::iana::Algorithm::ES256 => "ES256",
        coset::iana::Algorithm::ES384 => "ES384",
        coset::iana::Algorithm::EdDSA => "EdDSA",
        other => {
            return Err(VerifyError::Algorithm(format!(
                "COSE algorithm {other:?} is not accepted"
            )));
        }
    };
    let x5chain = cose
        .unprotected
        .rest
        .iter()
        .chain(&cose.protected.header.rest)
        .find(|(label, _)| *label == Label::Int(X5CHAIN as i64))
        .map(|(_, v)| v);
    let ds_der = match x5chain {
        Some(Value::Bytes(der)) => Some(der.as_slice()),
        Some(Value::Array(chain)) => chain.first().and_then(Value::as_bytes).map(Vec::as_slice),
        _ => None,
    };
    let key = verify::trusted_key(ds_der, trust, now)?;
    verify::check_algorithm(alg_name, &key)?;
    let tbs = cose.tbs_data(b"");
    verify::check_signature(&key, &tbs, &cose.signature)?;

    let payload = cose
        .payload
        .as_deref()
        .ok_or_else(|| malformed("issuerAuth has no payload"))?;
    let mso = parse_cbor(
        tag24_bytes(&parse_cbor(payload, "MSO payload")?, "MSO")?,
        "MSO",
    )?;
    let mso = as_map(&mso, "MSO")?;
    let field = |name: &str| get(mso, name).ok_or_else(|| malformed(format!("MSO has no {name}")));
    if field("version")?.as_text() != Some("1.0") {
        return Err(malformed("MSO version is not \"1.0\""));
    }
    if field("digestAlgorithm")?.as_text() != Some("SHA-256") {
        return Err(malformed("MSO digestAlgorithm is not SHA-256"));
    }
    let doc_type = field("docType")?
        .as_text()
        .ok_or_else(|| malformed("docType is not text"))?
        .to_owned();
    if let Some(expected) = expected_doc_type
        && doc_type != expected
    {
        return Err(VerifyError::DocType(doc_type));
    }
    let validity = as_map(field("validityInfo")?, "validityInfo")?;
    let date = |name: &str| {
        get(validity, name)
            .and_then(parse_tdate)
            .ok_or_else(|| malformed(format!("validityInfo.{name} is not a tdate")))
    };
    let (signed, valid_from, valid_until) =
        (date("signed")?, date("validFrom")?, date("validUntil")?);
    if valid_from > valid_until || signed > valid_until {
        return Err(VerifyError::Validity("inconsistent validityInfo".into()));
    }
    verify::check_validity(valid_from, valid_until, now)?;

    let value_digests = as_map(field("valueDigests")?, "valueDigests")?;
    let mut elements = BTreeMap::new();
    let name_spaces = get(root, "nameSpaces").ok_or_else(|| malformed("no nameSpaces"))?;
    for (ns, items) in as_map(name_spaces, "nameSpaces")? {
        let ns = ns
            .as_text()
            .ok_or_else(|| malformed("namespace is not text"))?;
        let digests = as_map(
            get(value_digests, ns)
                .ok_or_else(|| VerifyError::Digest(format!("{ns} (no digests)")))?,
            "valueDigests namespace",
        )?;
        let items = items
            .as_array()
            .ok_or_else(|| malformed("namespace items are not an array"))?;
        let mut seen_ids = BTreeSet::new();
        let out: &mut BTreeMap<String, Value> = elements.entry(ns.to_owned()).or_default();
        for wrapped in items {
            let item = parse_cbor(
                tag24_bytes(wrapped, "IssuerSignedItem")?,
                "IssuerSignedItem",
            )?;
            let item = as_map(&item, "IssuerSignedItem")?;
            let id = get(item, "digestID")
                .and_then(Value::as_integer)
                .ok_or_else(|| malformed("digestID is not an integer"))?;
            let name = get(item, "elementIdentifier")
                .and_then(Value::as_text)
                .ok_or_else(|| malformed("elementIdentifier is not text"))?;
            if get(item, "random")
                .and_then(Value::as_bytes)
                .is_none_or(|r| r.len() < 16)
            {
                return Err(malformed(format!(
                    "{name}: random must be at least 16 bytes"
                )));
            }
            let value = get(item, "elementValue")
                .ok_or_else(|| malformed(format!("{name}: no elementValue")))?;
            if !seen_ids.insert(i128::from(id)) {
                return Err(VerifyError::Digest(format!(
                    "{ns}/{name} (digestID reused)"
                )));
            }
            let signed_digest = digests
                .iter()
                .find(|(k, _)| k.as_integer() == Some(id))
                .and_then(|(_, v)| v.as_bytes());
            let digest = pkcs11_shim::digest::sha256(
                &encode(wrapped).map_err(|e| malformed(e.to_string()))?,
            );
            if signed_digest.map(Vec::as_slice) != Some(&digest[..]) {
                return Err(VerifyError::Digest(format!("{ns}/{name}")));
            }
            if out.insert(name.to_owned(), value.clone()).is_some() {
                return Err(malformed(format!("{ns}/{name} disclosed twice")));
            }
        }
    }

    let device_key = get(
        as_map(field("deviceKeyInfo")?, "deviceKeyInfo")?,
        "deviceKey",
    )
    .ok_or_else(|| malformed("no deviceKey"))?
    .clone();
    let status = match get(mso, "status") {
        None => None,
        Some(status) => {
            let list = get(as_map(status, "status")?, "status_list")
                .ok_or_else(|| malformed("status without status_list"))?;
            let list = as_map(list, "status_list")?;
            Some(StatusReference {
                idx: get(list, "idx")
                    .and_then(Value::as_integer)
                    .and_then(|i| u64::try_from(i).ok())
                    .ok_or_else(|| malformed("status_list.idx"))?,
                uri: get(list, "uri")
                    .and_then(Value::as_text)
                    .ok_or_else(|| malformed("status_list.uri"))?
                    .to_owned(),
            })
        }
    };
    Ok(VerifiedMdoc {
        doc_type,
        elements,
        valid_from,
        valid_until,
        status,
        device_key,
    })
}
