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
use coset::{AsCborValue, CoseSign1};
use pkcs11_shim::PublicKey;
use time::OffsetDateTime;

use super::cbor::{Writer, as_map, encode, get, parse_cbor, parse_tdate, tag24_bytes};
use super::claims::ResidentCardClaims;
use super::cose::{X5CHAIN, cose_algorithm, protected_header, write_cose_key, x5chain_certificate};
use super::signer::DocumentSigner;
use super::verify::{self, Trust, VerifyError, malformed};
use super::{CredentialError, SignatureValidity, StatusReference, random};

/// The document type of the Korean mobile resident registration card.
pub const DOC_TYPE: &str = "kr.go.mois.mrc.1";
/// Its namespace.
pub const NAMESPACE: &str = "kr.go.mois.mrc.1";
/// Decoy digests added to each namespace.
const DECOYS: usize = 3;
/// Random bytes per item (ISO 18013-5 asks for at least 16).
const SALT_LEN: usize = 32;

/// A digest ID and the SHA-256 the MSO gives for it.
type DigestEntry = (u32, [u8; 32]);

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
    ];
    // The address's parts, each its own element: a reader can ask for the
    // district alone.
    if let Some(parts) = claims.address_parts() {
        items.extend([
            ("resident_region", Text(parts.region)),
            ("resident_locality", Text(parts.locality)),
            ("resident_street", Text(parts.street)),
        ]);
    }
    items.extend([
        ("issue_date", FullDate(claims.issue_date)),
        ("expiry_date", FullDate(claims.expiry_date)),
        ("issuing_authority", Text(&claims.issuing_authority)),
        ("issuing_country", Text(&claims.issuing_country)),
    ]);
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

/// Each element as `#6.24(bstr .cbor IssuerSignedItem)` under its digest
/// ID, and the digests by ID (decoys for the IDs left over), sorted by ID.
fn signed_items(
    elements: &[(&'static str, ElementValue<'_>)],
    ids: &[u32],
) -> Result<(Vec<Vec<u8>>, Vec<DigestEntry>), CredentialError> {
    let mut items = Vec::with_capacity(elements.len());
    let mut digests: Vec<DigestEntry> = Vec::with_capacity(ids.len());
    let mut item = Writer::with_capacity(256);
    for ((identifier, value), id) in elements.iter().zip(ids) {
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
    Ok((items, digests))
}

/// The MobileSecurityObject, encoded: digests, device key, docType,
/// validity and the status reference.
fn encode_mso(
    digests: &[DigestEntry],
    device_key: &PublicKey,
    validity: &SignatureValidity,
    status: Option<&StatusReference>,
) -> Result<Vec<u8>, CredentialError> {
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
    for (id, digest) in digests {
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
    Ok(mso.bytes)
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
        let (items, digests) = signed_items(&elements, &ids)?;
        let mso = encode_mso(&digests, device_key, validity, status)?;
        let mut payload = Writer::with_capacity(mso.len() + 8);
        let _ = payload.tag(24).bytes(&mso);
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
    /// The RFC 7638 thumbprint of the key that signed it (the DS `kid`).
    pub signer_kid: String,
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
    let cose = issuer_auth(root)?;
    let signer_kid = check_issuer_signature(&cose, trust, now)?
        .jwk()
        .thumbprint();
    let mso = decode_mso(&cose)?;
    let mso = as_map(&mso, "MSO")?;
    let doc_type = check_doc_type(mso, expected_doc_type)?;
    let (valid_from, valid_until) = check_validity_info(mso, now)?;
    let elements = check_name_spaces(root, mso)?;
    let device_key = device_key(mso)?;
    let status = status_reference(mso)?;
    Ok(VerifiedMdoc {
        doc_type,
        elements,
        valid_from,
        valid_until,
        status,
        device_key,
        signer_kid,
    })
}

/// `issuerAuth` as a COSE_Sign1.
fn issuer_auth(root: &[(Value, Value)]) -> Result<CoseSign1, VerifyError> {
    let issuer_auth = get(root, "issuerAuth").ok_or_else(|| malformed("no issuerAuth"))?;
    CoseSign1::from_cbor_value(issuer_auth.clone())
        .map_err(|e| malformed(format!("issuerAuth is not a COSE_Sign1: {e}")))
}

/// The algorithm, the DS certificate (x5chain against `trust`) and the
/// issuer signature over the COSE Sig_structure.
fn check_issuer_signature(
    cose: &CoseSign1,
    trust: &Trust,
    now: OffsetDateTime,
) -> Result<PublicKey, VerifyError> {
    let alg_name = cose_algorithm(cose)?;
    let key = verify::trusted_key(x5chain_certificate(cose), trust, now)?;
    verify::check_algorithm(alg_name, &key)?;
    let tbs = cose.tbs_data(b"");
    verify::check_signature(&key, &tbs, &cose.signature).map(|()| key)
}

/// The MSO from the COSE payload `#6.24(bstr .cbor MSO)`.
fn decode_mso(cose: &CoseSign1) -> Result<Value, VerifyError> {
    let payload = cose
        .payload
        .as_deref()
        .ok_or_else(|| malformed("issuerAuth has no payload"))?;
    parse_cbor(
        tag24_bytes(&parse_cbor(payload, "MSO payload")?, "MSO")?,
        "MSO",
    )
}

/// A field the MSO must have.
fn mso_field<'a>(mso: &'a [(Value, Value)], name: &str) -> Result<&'a Value, VerifyError> {
    get(mso, name).ok_or_else(|| malformed(format!("MSO has no {name}")))
}

/// The MSO's version and digest algorithm, and its docType (checked when
/// one is expected).
fn check_doc_type(
    mso: &[(Value, Value)],
    expected_doc_type: Option<&str>,
) -> Result<String, VerifyError> {
    if mso_field(mso, "version")?.as_text() != Some("1.0") {
        return Err(malformed("MSO version is not \"1.0\""));
    }
    if mso_field(mso, "digestAlgorithm")?.as_text() != Some("SHA-256") {
        return Err(malformed("MSO digestAlgorithm is not SHA-256"));
    }
    let doc_type = mso_field(mso, "docType")?
        .as_text()
        .ok_or_else(|| malformed("docType is not text"))?
        .to_owned();
    if let Some(expected) = expected_doc_type
        && doc_type != expected
    {
        return Err(VerifyError::DocType(doc_type));
    }
    Ok(doc_type)
}

/// `validityInfo`: consistent, and valid at `now`; (validFrom, validUntil) out.
fn check_validity_info(
    mso: &[(Value, Value)],
    now: OffsetDateTime,
) -> Result<(OffsetDateTime, OffsetDateTime), VerifyError> {
    let validity = as_map(mso_field(mso, "validityInfo")?, "validityInfo")?;
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
    Ok((valid_from, valid_until))
}

/// Every disclosed element of every namespace against its digest in
/// `valueDigests`; the elements by namespace out.
fn check_name_spaces(
    root: &[(Value, Value)],
    mso: &[(Value, Value)],
) -> Result<BTreeMap<String, BTreeMap<String, Value>>, VerifyError> {
    let value_digests = as_map(mso_field(mso, "valueDigests")?, "valueDigests")?;
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
            let (name, value) = check_item(ns, wrapped, digests, &mut seen_ids)?;
            if out.insert(name.clone(), value).is_some() {
                return Err(malformed(format!("{ns}/{name} disclosed twice")));
            }
        }
    }
    Ok(elements)
}

/// One `#6.24(IssuerSignedItem)` of namespace `ns`: well formed, its
/// digestID not reused, its digest the signed one; (identifier, value) out.
fn check_item(
    ns: &str,
    wrapped: &Value,
    digests: &[(Value, Value)],
    seen_ids: &mut BTreeSet<i128>,
) -> Result<(String, Value), VerifyError> {
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
    let value =
        get(item, "elementValue").ok_or_else(|| malformed(format!("{name}: no elementValue")))?;
    if !seen_ids.insert(i128::from(id)) {
        return Err(VerifyError::Digest(format!(
            "{ns}/{name} (digestID reused)"
        )));
    }
    let signed_digest = digests
        .iter()
        .find(|(k, _)| k.as_integer() == Some(id))
        .and_then(|(_, v)| v.as_bytes());
    let digest =
        pkcs11_shim::digest::sha256(&encode(wrapped).map_err(|e| malformed(e.to_string()))?);
    if signed_digest.map(Vec::as_slice) != Some(&digest[..]) {
        return Err(VerifyError::Digest(format!("{ns}/{name}")));
    }
    Ok((name.to_owned(), value.clone()))
}

/// The holder's device key (COSE_Key) from `deviceKeyInfo`.
fn device_key(mso: &[(Value, Value)]) -> Result<Value, VerifyError> {
    let info = as_map(mso_field(mso, "deviceKeyInfo")?, "deviceKeyInfo")?;
    Ok(get(info, "deviceKey")
        .ok_or_else(|| malformed("no deviceKey"))?
        .clone())
}

/// The status-list reference, if the MSO has one.
fn status_reference(mso: &[(Value, Value)]) -> Result<Option<StatusReference>, VerifyError> {
    let Some(status) = get(mso, "status") else {
        return Ok(None);
    };
    let list = get(as_map(status, "status")?, "status_list")
        .ok_or_else(|| malformed("status without status_list"))?;
    let list = as_map(list, "status_list")?;
    Ok(Some(StatusReference {
        idx: get(list, "idx")
            .and_then(Value::as_integer)
            .and_then(|i| u64::try_from(i).ok())
            .ok_or_else(|| malformed("status_list.idx"))?,
        uri: get(list, "uri")
            .and_then(Value::as_text)
            .ok_or_else(|| malformed("status_list.uri"))?
            .to_owned(),
    }))
}
