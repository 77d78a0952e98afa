//! SD-JWT VC issuance (`typ: dc+sd-jwt`) and its verifier.
//!
//! Personal claims travel as disclosures `[salt, name, value]` whose
//! SHA-256 digests sit in `_sd` (with decoys, sorted); the age thresholds
//! and the address's parts each in their own, under plain
//! `age_equal_or_over` and `address` objects. `iss`, `iat`, `nbf`,
//! `exp`, `vct`, `cnf` and `status` are always plain: a holder can never
//! hide them. Serialization: `<JWS>~<D1>~…~<Dn>~`.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use pkcs11_shim::PublicKey;
use serde_json::{Map, Value};
use time::OffsetDateTime;

use super::claims::ResidentCardClaims;
use super::disclosures::{disclosure_digest, reveal_disclosures};
use super::signer::DocumentSigner;
use super::verify::{self, Trust, VerifyError, malformed};
use super::{CredentialError, SignatureValidity, StatusReference, random};

// The header lives apart so that the signer, which builds it once per key,
// and this module, which signs under it, do not import each other.
pub use super::jws::{JwsHeader, TYP};

/// The verifiable credential type of the card.
pub const VCT: &str = "urn:kr:go:mois:mrc:1";
/// Decoy digests added to `_sd`.
const DECOYS: usize = 3;

/// The value of a disclosable claim, written as JSON straight into the
/// disclosure being built (no intermediate strings: see [`UnsignedSdJwt::build`]).
/// Personal data: no `Debug`.
#[derive(Clone, Copy)]
pub enum ClaimValue<'a> {
    /// A JSON string.
    Str(&'a str),
    /// A date as "YYYY-MM-DD".
    Date(time::Date),
    /// A JSON boolean.
    Bool(bool),
    /// A JPEG as a data URL.
    Picture(&'a [u8]),
}

impl ClaimValue<'_> {
    fn write_json(&self, out: &mut String) {
        match *self {
            ClaimValue::Str(s) => push_json_str(out, s),
            ClaimValue::Date(d) => {
                let text = super::cbor::date_text(d);
                out.push('"');
                out.push_str(std::str::from_utf8(&text).unwrap_or_default());
                out.push('"');
            }
            ClaimValue::Bool(b) => out.push_str(if b { "true" } else { "false" }),
            ClaimValue::Picture(jpeg) => {
                out.push_str("\"data:image/jpeg;base64,");
                base64_simd::STANDARD.encode_append(jpeg, out);
                out.push('"');
            }
        }
    }
}

/// Where a disclosable claim sits: at the top of the payload, or as a
/// member of one of the plain objects whose members are disclosed one by
/// one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// A member of the payload.
    Top,
    /// A member of `age_equal_or_over`: each threshold apart, so proving
    /// 17+ says nothing of 18.
    Age,
    /// A member of `address`: the whole address, or a part of it.
    Address,
}

impl Place {
    /// The nested objects, in payload order, with the digests each always
    /// carries (members + decoys): a fixed count, so that whether an
    /// address was split into parts does not show.
    const NESTED: [(Place, &'static str, usize); 2] = [
        (Place::Age, "age_equal_or_over", 3),
        (Place::Address, "address", 6),
    ];
}

/// The selectively disclosable claims, in a stable order.
pub fn disclosable_claims(
    claims: &ResidentCardClaims,
) -> Vec<(Place, &'static str, ClaimValue<'_>)> {
    use ClaimValue::{Bool, Date, Str};
    use Place::{Address, Age, Top};
    let mut out = vec![
        (Top, "family_name", Str(&claims.family_name)),
        (Top, "given_name", Str(&claims.given_name)),
        (Top, "birthdate", Date(claims.birth_date)),
        (Age, "17", Bool(claims.age_over_17)),
        (Age, "18", Bool(claims.age_over_18)),
        (
            Top,
            "resident_number_masked",
            Str(&claims.resident_number_masked),
        ),
        (Address, "formatted", Str(&claims.address)),
        (Address, "country", Str(&claims.issuing_country)),
    ];
    if let Some(parts) = claims.address_parts() {
        out.push((Address, "region", Str(parts.region)));
        out.push((Address, "locality", Str(parts.locality)));
        out.push((Address, "street_address", Str(parts.street)));
    }
    out.extend([
        (Top, "issuance_date", Date(claims.issue_date)),
        (Top, "expiry_date", Date(claims.expiry_date)),
        (Top, "issuing_authority", Str(&claims.issuing_authority)),
        (Top, "issuing_country", Str(&claims.issuing_country)),
    ]);
    if let Some(portrait) = &claims.portrait {
        out.push((Top, "picture", ClaimValue::Picture(portrait)));
    }
    out
}

/// Appends `digests` as a JSON array.
fn push_digests(out: &mut String, digests: &[String]) {
    out.push('[');
    for (i, digest) in digests.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('"');
        out.push_str(digest);
        out.push('"');
    }
    out.push(']');
}

/// `digests` with random decoys up to `count`, sorted: the order says
/// nothing of the claims.
fn with_decoys(mut digests: Vec<String>, count: usize) -> Result<Vec<String>, CredentialError> {
    while digests.len() < count {
        digests.push(base64_simd::URL_SAFE_NO_PAD.encode_to_string(random::<32>()?));
    }
    digests.sort_unstable();
    Ok(digests)
}

// base64-simd encodes on the issuance path: the builder base64-encodes
// every disclosure and the payload (and the portrait twice), and the plain
// `base64` engine made that a quarter of an issuance's CPU time.

/// Appends `s` as a JSON string literal (RFC 8259 §7 escaping).
fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A credential's disclosures and the digests of each, by place.
struct Disclosed {
    disclosures: Vec<String>,
    top: Vec<String>,
    nested: [Vec<String>; Place::NESTED.len()],
}

impl Disclosed {
    /// Salts and encodes every disclosable claim.
    fn build(claims: &ResidentCardClaims) -> Result<Self, CredentialError> {
        let disclosable = disclosable_claims(claims);
        let mut disclosures = Vec::with_capacity(disclosable.len());
        let mut top = Vec::with_capacity(disclosable.len() + DECOYS);
        let mut nested: [Vec<String>; Place::NESTED.len()] = Default::default();
        let mut json = String::with_capacity(256);
        for (place, name, value) in disclosable {
            json.clear();
            json.push_str("[\"");
            base64_simd::URL_SAFE_NO_PAD.encode_append(random::<16>()?, &mut json);
            json.push_str("\",\"");
            json.push_str(name);
            json.push_str("\",");
            value.write_json(&mut json);
            json.push(']');
            let disclosure = base64_simd::URL_SAFE_NO_PAD.encode_to_string(json.as_bytes());
            let digest = disclosure_digest(&disclosure);
            let group = Place::NESTED
                .iter()
                .position(|(p, _, _)| *p == place)
                .and_then(|i| nested.get_mut(i));
            match group {
                Some(group) => group.push(digest),
                None => top.push(digest),
            }
            disclosures.push(disclosure);
        }
        Ok(Disclosed {
            disclosures,
            top,
            nested,
        })
    }
}

/// An SD-JWT VC built and waiting for its issuer signature.
pub struct UnsignedSdJwt {
    signing_input: String,
    disclosures: Vec<String>,
}

impl UnsignedSdJwt {
    /// Builds payload and disclosures under `header`. Pure apart from the
    /// salts. JSON is written directly: this runs once per issuance and a
    /// tree of `serde_json::Value`s cost more than the rest put together.
    pub fn build(
        claims: &ResidentCardClaims,
        device_key: &PublicKey,
        validity: &SignatureValidity,
        status: Option<&StatusReference>,
        issuer: &str,
        header: &JwsHeader,
    ) -> Result<Self, CredentialError> {
        let Disclosed {
            disclosures,
            top,
            nested,
        } = Disclosed::build(claims)?;
        let decoyed = top.len() + DECOYS;
        let top = with_decoys(top, decoyed)?;

        let mut payload = String::with_capacity(1024);
        payload.push_str("{\"iss\":");
        push_json_str(&mut payload, issuer);
        payload.push_str(&format!(
            ",\"iat\":{},\"nbf\":{},\"exp\":{},\"vct\":\"{VCT}\",\"cnf\":{{\"jwk\":",
            validity.signed.unix_timestamp(),
            validity.valid_from.unix_timestamp(),
            validity.valid_until.unix_timestamp()
        ));
        let jwk = device_key.jwk();
        payload.push_str(&format!(
            "{{\"kty\":\"{}\",\"crv\":\"{}\",\"x\":\"{}\"",
            jwk.kty, jwk.crv, jwk.x
        ));
        if let Some(y) = &jwk.y {
            payload.push_str(&format!(",\"y\":\"{y}\""));
        }
        payload.push_str("}}");
        if let Some(status) = status {
            payload.push_str(&format!(
                ",\"status\":{{\"status_list\":{{\"idx\":{},\"uri\":",
                status.idx
            ));
            push_json_str(&mut payload, &status.uri);
            payload.push_str("}}");
        }
        for ((_, name, count), digests) in Place::NESTED.iter().zip(nested) {
            payload.push_str(&format!(",\"{name}\":{{\"_sd\":"));
            push_digests(&mut payload, &with_decoys(digests, *count)?);
            payload.push('}');
        }
        payload.push_str(",\"_sd_alg\":\"sha-256\",\"_sd\":");
        push_digests(&mut payload, &top);
        payload.push('}');
        let disclosed_len: usize = disclosures.iter().map(|d| d.len() + 1).sum();
        // Room for the signature and the disclosures too: finish() appends in place.
        let mut signing_input = String::with_capacity(
            header.encoded().len() + payload.len() * 4 / 3 + 140 + disclosed_len,
        );
        signing_input.push_str(header.encoded());
        signing_input.push('.');
        base64_simd::URL_SAFE_NO_PAD.encode_append(payload.as_bytes(), &mut signing_input);
        Ok(UnsignedSdJwt {
            signing_input,
            disclosures,
        })
    }

    /// The JWS signing input (`base64url(header).base64url(payload)`).
    pub fn signing_input(&self) -> &[u8] {
        self.signing_input.as_bytes()
    }

    /// Adds the raw signature: `JWT~D1~…~Dn~`.
    pub fn finish(self, signature: &[u8]) -> String {
        let mut out = self.signing_input;
        out.push('.');
        base64_simd::URL_SAFE_NO_PAD.encode_append(signature, &mut out);
        out.push('~');
        for d in &self.disclosures {
            out.push_str(d);
            out.push('~');
        }
        out
    }
}

/// Builds and signs an SD-JWT VC.
pub fn issue(
    signer: &DocumentSigner<'_>,
    claims: &ResidentCardClaims,
    device_key: &PublicKey,
    validity: &SignatureValidity,
    status: Option<&StatusReference>,
    issuer: &str,
) -> Result<String, CredentialError> {
    if validity.valid_until > signer.not_after() {
        return Err(CredentialError::Invalid(
            "the signature would outlive the DS certificate".into(),
        ));
    }
    let unsigned = UnsignedSdJwt::build(
        claims,
        device_key,
        validity,
        status,
        issuer,
        signer.jws_header(),
    )?;
    let signature = signer.sign(unsigned.signing_input())?;
    Ok(unsigned.finish(&signature))
}

/// A verified SD-JWT VC. `Debug` shows claim names only: values are personal data.
#[derive(Clone)]
pub struct VerifiedSdJwt {
    /// The JWS header.
    pub header: Map<String, Value>,
    /// The payload with every disclosed claim put in place (`_sd` removed).
    pub claims: Map<String, Value>,
    /// Names of the claims that came from disclosures.
    pub disclosed: BTreeSet<String>,
}

impl std::fmt::Debug for VerifiedSdJwt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifiedSdJwt")
            .field("claims", &self.claims.keys().collect::<Vec<_>>())
            .field("disclosed", &self.disclosed)
            .finish_non_exhaustive()
    }
}

fn decode_json(part: &str, what: &str) -> Result<Map<String, Value>, VerifyError> {
    let bytes = B64URL
        .decode(part)
        .map_err(|_| malformed(format!("{what} is not base64url")))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(malformed(format!("{what} is not a JSON object"))),
    }
}

fn numeric_date(
    payload: &Map<String, Value>,
    name: &str,
) -> Result<Option<OffsetDateTime>, VerifyError> {
    match payload.get(name) {
        None => Ok(None),
        Some(v) => v
            .as_i64()
            .and_then(|t| OffsetDateTime::from_unix_timestamp(t).ok())
            .map(Some)
            .ok_or_else(|| malformed(format!("{name} is not a NumericDate"))),
    }
}

/// Verifies an SD-JWT VC (issuance form, no key binding): the issuer key
/// (x5c against `trust`, or a pinned issuer key), the JWS signature, every
/// disclosure's digest, the validity at `now`, and `vct` when
/// `expected_vct` is given.
pub fn verify(
    sd_jwt: &str,
    trust: &Trust,
    now: OffsetDateTime,
    expected_vct: Option<&str>,
) -> Result<VerifiedSdJwt, VerifyError> {
    let parts = Parts::parse(sd_jwt)?;
    parts.check_signature(trust, now)?;
    check_payload(&parts.header, &parts.payload, expected_vct)?;
    check_times(&parts.payload, now)?;
    let (claims, disclosed) = reveal_disclosures(parts.payload, &parts.disclosures)?;
    Ok(VerifiedSdJwt {
        header: parts.header,
        claims,
        disclosed,
    })
}

/// An SD-JWT taken apart and decoded, nothing checked yet.
struct Parts<'a> {
    /// `base64url(header)`, as signed.
    encoded_header: &'a str,
    /// `base64url(payload)`, as signed.
    encoded_payload: &'a str,
    header: Map<String, Value>,
    payload: Map<String, Value>,
    signature: Vec<u8>,
    /// The disclosures after the JWT, still encoded.
    disclosures: Vec<&'a str>,
}

impl<'a> Parts<'a> {
    /// `<header>.<payload>.<signature>~<D1>~…~<Dn>~`, each part decoded.
    fn parse(sd_jwt: &'a str) -> Result<Self, VerifyError> {
        let mut parts = sd_jwt.split('~');
        let jwt = parts.next().unwrap_or_default();
        let disclosures: Vec<&str> = parts.filter(|p| !p.is_empty()).collect();
        let mut sections = jwt.split('.');
        let (Some(h), Some(p), Some(s), None) = (
            sections.next(),
            sections.next(),
            sections.next(),
            sections.next(),
        ) else {
            return Err(malformed("the JWT is not header.payload.signature"));
        };
        let header = decode_json(h, "JWS header")?;
        let payload = decode_json(p, "JWT payload")?;
        let signature = B64URL
            .decode(s)
            .map_err(|_| malformed("signature is not base64url"))?;
        Ok(Parts {
            encoded_header: h,
            encoded_payload: p,
            header,
            payload,
            signature,
            disclosures,
        })
    }

    /// The header's `typ` and `alg`, the issuer key (x5c against `trust`),
    /// and the JWS signature under it.
    fn check_signature(&self, trust: &Trust, now: OffsetDateTime) -> Result<(), VerifyError> {
        let typ = self.header.get("typ").and_then(Value::as_str);
        if !matches!(typ, Some("dc+sd-jwt") | Some("vc+sd-jwt")) {
            return Err(malformed(format!("typ {typ:?} is not dc+sd-jwt")));
        }
        let alg = self
            .header
            .get("alg")
            .and_then(Value::as_str)
            .ok_or_else(|| VerifyError::Algorithm("no alg".into()))?;
        let ds_der = x5c_certificate(&self.header)?;
        let key = verify::trusted_key(ds_der.as_deref(), trust, now)?;
        verify::check_algorithm(alg, &key)?;
        verify::check_signature(
            &key,
            format!("{}.{}", self.encoded_header, self.encoded_payload).as_bytes(),
            &self.signature,
        )
    }
}

/// The DS certificate in `x5c[0]`, if the header carries one.
fn x5c_certificate(header: &Map<String, Value>) -> Result<Option<Vec<u8>>, VerifyError> {
    match header
        .get("x5c")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
    {
        Some(first) => Ok(Some(
            first
                .as_str()
                .and_then(|c| B64.decode(c).ok())
                .ok_or_else(|| malformed("x5c[0] is not base64 DER"))?,
        )),
        None => Ok(None),
    }
}

/// `_sd_alg`, `vct` (when one is expected) and no `crit` header.
fn check_payload(
    header: &Map<String, Value>,
    payload: &Map<String, Value>,
    expected_vct: Option<&str>,
) -> Result<(), VerifyError> {
    match payload.get("_sd_alg").and_then(Value::as_str) {
        Some("sha-256") | None => {}
        Some(other) => return Err(malformed(format!("_sd_alg {other:?} is not sha-256"))),
    }
    if let Some(expected) = expected_vct {
        let vct = payload
            .get("vct")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if vct != expected {
            return Err(VerifyError::DocType(vct.to_owned()));
        }
    }
    if header.contains_key("crit") {
        return Err(malformed("JWS crit headers are not supported"));
    }
    Ok(())
}

/// `exp` (required), `iat` (not in the future) and `nbf` against `now`.
fn check_times(payload: &Map<String, Value>, now: OffsetDateTime) -> Result<(), VerifyError> {
    let exp =
        numeric_date(payload, "exp")?.ok_or_else(|| VerifyError::Validity("no exp".into()))?;
    let iat = numeric_date(payload, "iat")?;
    if iat.is_some_and(|iat| iat > now + time::Duration::minutes(5)) {
        return Err(VerifyError::Validity("issued in the future (iat)".into()));
    }
    let nbf = numeric_date(payload, "nbf")?.or(iat);
    verify::check_validity(nbf.unwrap_or(OffsetDateTime::UNIX_EPOCH), exp, now)
}

/// The disclosed claims as a sorted map (for printing).
pub fn claim_map(verified: &VerifiedSdJwt) -> BTreeMap<String, Value> {
    verified.claims.clone().into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_round_trip_through_serde_json() {
        for s in [
            "plain",
            "홍길동",
            "quote \" back\\slash",
            "tab\tnew\nline\u{1}",
            "",
        ] {
            let mut out = String::new();
            push_json_str(&mut out, s);
            assert_eq!(serde_json::from_str::<String>(&out).unwrap(), s, "{out}");
        }
    }
}
