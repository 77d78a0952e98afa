//! SD-JWT VC issuance (`typ: dc+sd-jwt`) and its verifier.
//!
//! Personal claims travel as disclosures `[salt, name, value]` whose
//! SHA-256 digests sit in `_sd` (with decoys, sorted). `iss`, `iat`, `nbf`,
//! `exp`, `vct`, `cnf` and `status` are always plain: a holder can never
//! hide them. Serialization: `<JWS>~<D1>~…~<Dn>~`.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use pkcs11_shim::PublicKey;
use serde_json::{Map, Value};
use time::OffsetDateTime;

use super::claims::ResidentCardClaims;
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
/// Claims that must never be selectively disclosable.
const ALWAYS_PLAIN: [&str; 8] = [
    "iss", "iat", "nbf", "exp", "vct", "cnf", "status", "_sd_alg",
];

/// The value of a disclosable claim, written as JSON straight into the
/// disclosure being built (no intermediate strings: see [`UnsignedSdJwt::build`]).
/// Personal data: no `Debug`.
#[derive(Clone, Copy)]
pub enum ClaimValue<'a> {
    /// A JSON string.
    Str(&'a str),
    /// A date as "YYYY-MM-DD".
    Date(time::Date),
    /// `{"17": bool, "18": bool}`.
    AgeOver {
        /// 17 or older.
        seventeen: bool,
        /// 18 or older.
        eighteen: bool,
    },
    /// `{"formatted": …, "country": …}`.
    Address {
        /// The whole address.
        formatted: &'a str,
        /// ISO 3166 alpha-2.
        country: &'a str,
    },
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
            ClaimValue::AgeOver {
                seventeen,
                eighteen,
            } => {
                out.push_str(&format!("{{\"17\":{seventeen},\"18\":{eighteen}}}"));
            }
            ClaimValue::Address { formatted, country } => {
                out.push_str("{\"formatted\":");
                push_json_str(out, formatted);
                out.push_str(",\"country\":");
                push_json_str(out, country);
                out.push('}');
            }
            ClaimValue::Picture(jpeg) => {
                out.push_str("\"data:image/jpeg;base64,");
                base64_simd::STANDARD.encode_append(jpeg, out);
                out.push('"');
            }
        }
    }
}

/// The selectively disclosable claims, in a stable order.
pub fn disclosable_claims(claims: &ResidentCardClaims) -> Vec<(&'static str, ClaimValue<'_>)> {
    use ClaimValue::{Date, Str};
    let mut out = vec![
        ("family_name", Str(&claims.family_name)),
        ("given_name", Str(&claims.given_name)),
        ("birthdate", Date(claims.birth_date)),
        (
            "age_equal_or_over",
            ClaimValue::AgeOver {
                seventeen: claims.age_over_17,
                eighteen: claims.age_over_18,
            },
        ),
        (
            "resident_number_masked",
            Str(&claims.resident_number_masked),
        ),
        (
            "address",
            ClaimValue::Address {
                formatted: &claims.address,
                country: &claims.issuing_country,
            },
        ),
        ("issuance_date", Date(claims.issue_date)),
        ("expiry_date", Date(claims.expiry_date)),
        ("issuing_authority", Str(&claims.issuing_authority)),
        ("issuing_country", Str(&claims.issuing_country)),
    ];
    if let Some(portrait) = &claims.portrait {
        out.push(("picture", ClaimValue::Picture(portrait)));
    }
    out
}

fn disclosure_digest(disclosure: &str) -> String {
    base64_simd::URL_SAFE_NO_PAD
        .encode_to_string(pkcs11_shim::digest::sha256(disclosure.as_bytes()))
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
        let disclosable = disclosable_claims(claims);
        let mut disclosures = Vec::with_capacity(disclosable.len());
        let mut digests = Vec::with_capacity(disclosable.len() + DECOYS);
        let mut json = String::with_capacity(256);
        for (name, value) in disclosable {
            json.clear();
            json.push_str("[\"");
            base64_simd::URL_SAFE_NO_PAD.encode_append(random::<16>()?, &mut json);
            json.push_str("\",\"");
            json.push_str(name);
            json.push_str("\",");
            value.write_json(&mut json);
            json.push(']');
            let disclosure = base64_simd::URL_SAFE_NO_PAD.encode_to_string(json.as_bytes());
            digests.push(disclosure_digest(&disclosure));
            disclosures.push(disclosure);
        }
        for _ in 0..DECOYS {
            digests.push(base64_simd::URL_SAFE_NO_PAD.encode_to_string(random::<32>()?));
        }
        digests.sort_unstable();

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
        payload.push_str(",\"_sd_alg\":\"sha-256\",\"_sd\":[");
        for (i, digest) in digests.iter().enumerate() {
            if i > 0 {
                payload.push(',');
            }
            payload.push('"');
            payload.push_str(digest);
            payload.push('"');
        }
        payload.push_str("]}");
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
    let mut payload = decode_json(p, "JWT payload")?;
    let signature = B64URL
        .decode(s)
        .map_err(|_| malformed("signature is not base64url"))?;

    let typ = header.get("typ").and_then(Value::as_str);
    if !matches!(typ, Some("dc+sd-jwt") | Some("vc+sd-jwt")) {
        return Err(malformed(format!("typ {typ:?} is not dc+sd-jwt")));
    }
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or_else(|| VerifyError::Algorithm("no alg".into()))?;
    let ds_der = match header
        .get("x5c")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
    {
        Some(first) => Some(
            first
                .as_str()
                .and_then(|c| B64.decode(c).ok())
                .ok_or_else(|| malformed("x5c[0] is not base64 DER"))?,
        ),
        None => None,
    };
    let key = verify::trusted_key(ds_der.as_deref(), trust, now)?;
    verify::check_algorithm(alg, &key)?;
    verify::check_signature(&key, format!("{h}.{p}").as_bytes(), &signature)?;

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
    let exp =
        numeric_date(&payload, "exp")?.ok_or_else(|| VerifyError::Validity("no exp".into()))?;
    let iat = numeric_date(&payload, "iat")?;
    if iat.is_some_and(|iat| iat > now + time::Duration::minutes(5)) {
        return Err(VerifyError::Validity("issued in the future (iat)".into()));
    }
    let nbf = numeric_date(&payload, "nbf")?.or(iat);
    verify::check_validity(nbf.unwrap_or(OffsetDateTime::UNIX_EPOCH), exp, now)?;

    let mut table = Disclosures::parse(&disclosures)?;
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
    let disclosed = table.names;
    Ok(VerifiedSdJwt {
        header,
        claims: payload,
        disclosed,
    })
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
