//! The phone's proof of possession: a JWT of type `openid4vci-proof+jwt`
//! (OpenID4VCI 1.0 §8.2.1.1, Appendix F.1) signed by the key the credential
//! will be bound to, over our issuer identifier and a nonce we gave out.
//! Checked here: the header (type, an asymmetric algorithm we accept, the
//! key as a public `jwk` and nothing else), the signature, `aud`, `iat`;
//! the nonce is the caller's to take (after the signature: a forged proof
//! must not burn a wallet's nonce).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use serde_json::{Map, Value};

use super::oauth_error::OAuthError;

/// The proof JWT's `typ`.
pub const PROOF_TYPE: &str = "openid4vci-proof+jwt";
/// The algorithms a proof may use (the phone key algorithms we bind).
pub const PROOF_ALGORITHMS: [&str; 3] = ["ES256", "ES384", "EdDSA"];
/// How old a proof's `iat` may be, and how far ahead (clock skew).
const IAT_PAST_S: i64 = 300;
const IAT_FUTURE_S: i64 = 60;
/// Longer proofs are refused before decoding.
const MAX_PROOF_BYTES: usize = 8 * 1024;

/// A proof that verified: the key it binds and the nonce it claims.
#[derive(Debug)]
pub struct Proved {
    /// The phone's public key, as the JWK it sent.
    pub jwk: Value,
    /// Its `nonce` claim.
    pub nonce: String,
}

fn invalid(description: impl Into<String>) -> OAuthError {
    OAuthError::bad("invalid_proof", description)
}

/// A compact JWS from a wallet, taken apart: nothing verified yet.
pub(super) struct CompactJws {
    pub(super) header: Map<String, Value>,
    pub(super) payload: Map<String, Value>,
    pub(super) signature: Vec<u8>,
    /// `header.payload`, as signed.
    pub(super) signing_input: String,
}

/// Takes `jwt` (the `what`, for messages) apart: at most `max` bytes, three
/// base64url parts, JSON objects, and no critical extension (RFC 7515
/// §4.1.11: none is understood here).
pub(super) fn parse_jws(jwt: &str, max: usize, what: &str) -> Result<CompactJws, OAuthError> {
    if jwt.len() > max {
        return Err(invalid(format!("the {what} is too long")));
    }
    let mut parts = jwt.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid(format!("the {what} is not a compact JWS")));
    };
    let object =
        |part: &str, name: &str| match B64URL.decode(part).map(|b| serde_json::from_slice(&b)) {
            Ok(Ok(Value::Object(map))) => Ok(map),
            _ => Err(invalid(format!(
                "the {what}'s {name} is not a base64url JSON object"
            ))),
        };
    let jws = CompactJws {
        header: object(h, "header")?,
        payload: object(p, "payload")?,
        signature: B64URL
            .decode(s)
            .map_err(|_| invalid(format!("the {what}'s signature is not base64url")))?,
        signing_input: format!("{h}.{p}"),
    };
    if jws.header.contains_key("crit") {
        return Err(invalid(format!(
            "the {what}'s header names critical extensions (crit): none is understood"
        )));
    }
    Ok(jws)
}

/// A NumericDate claim in whole seconds (it may carry a fraction).
fn seconds(payload: &Map<String, Value>, claim: &str) -> Option<i64> {
    payload
        .get(claim)
        .and_then(Value::as_f64)
        .map(|t| t.floor() as i64)
}

/// `iat` within 5 minutes back and 1 ahead of `now` (clock skew).
pub(super) fn check_iat(
    payload: &Map<String, Value>,
    now: i64,
    what: &str,
) -> Result<(), OAuthError> {
    match seconds(payload, "iat") {
        Some(iat) if iat >= now - IAT_PAST_S && iat <= now + IAT_FUTURE_S => Ok(()),
        _ => Err(invalid(format!(
            "the {what}'s iat is missing or outside the accepted window (5 minutes back, 1 ahead)"
        ))),
    }
}

/// The key the header names, checked: exactly one of `jwk`, `kid`, `x5c`,
/// and only `jwk` is taken (no DID resolution, no certificate chain here).
fn header_key(header: &Map<String, Value>) -> Result<(&'static str, Value), OAuthError> {
    if header.get("typ").and_then(Value::as_str) != Some(PROOF_TYPE) {
        return Err(invalid(format!("the proof's typ must be {PROOF_TYPE}")));
    }
    let alg = header.get("alg").and_then(Value::as_str).unwrap_or("");
    let Some(alg) = PROOF_ALGORITHMS.into_iter().find(|a| *a == alg) else {
        return Err(invalid(
            "the proof's alg must be one of ES256, ES384, EdDSA (no none, no MAC)",
        ));
    };
    let named = ["jwk", "kid", "x5c"]
        .into_iter()
        .filter(|m| header.contains_key(*m))
        .collect::<Vec<_>>();
    if named.len() != 1 {
        return Err(invalid(
            "the proof's header must carry exactly one of jwk, kid, x5c",
        ));
    }
    let Some(jwk) = header.get("jwk") else {
        return Err(invalid(
            "this issuer takes the proof's key as jwk (kid and x5c are not resolved)",
        ));
    };
    if let Some(member) = crate::issuance::private_jwk_member(jwk) {
        return Err(invalid(format!(
            "the proof's jwk carries private key material ({member:?}): that key is compromised"
        )));
    }
    Ok((alg, jwk.clone()))
}

/// Checks `jwt` against our issuer identifier `audience` at `now` (Unix s).
pub fn verify(jwt: &str, audience: &str, now: i64) -> Result<Proved, OAuthError> {
    let jws = parse_jws(jwt, MAX_PROOF_BYTES, "proof")?;
    let (alg, jwk_value) = header_key(&jws.header)?;
    let jwk: pkcs11_shim::Jwk = serde_json::from_value(jwk_value.clone())
        .map_err(|_| invalid("the proof's jwk is not a public EC or OKP key"))?;
    let key = pkcs11_shim::public_key_from_jwk(&jwk)
        .map_err(|_| invalid("the proof's jwk is not a key this issuer binds"))?;
    if key.algorithm().jose_name() != alg {
        return Err(invalid("the proof's alg does not match its key"));
    }
    if !key
        .verify(jws.signing_input.as_bytes(), &jws.signature)
        .unwrap_or(false)
    {
        return Err(invalid(
            "the proof's signature does not verify with its jwk",
        ));
    }
    check_claims(&jws.payload, audience, now).map(|nonce| Proved {
        jwk: jwk_value,
        nonce,
    })
}

/// `aud`, `iat` and the presence of `nonce`.
fn check_claims(
    payload: &Map<String, Value>,
    audience: &str,
    now: i64,
) -> Result<String, OAuthError> {
    let aud_ok = match payload.get("aud") {
        Some(Value::String(a)) => a == audience,
        Some(Value::Array(a)) => {
            a.len() == 1 && a.first().and_then(Value::as_str) == Some(audience)
        }
        _ => false,
    };
    if !aud_ok {
        return Err(invalid("the proof's aud is not this credential issuer"));
    }
    check_iat(payload, now, "proof")?;
    let seconds = |claim: &str| seconds(payload, claim);
    if seconds("exp").is_some_and(|exp| exp <= now - IAT_FUTURE_S)
        || seconds("nbf").is_some_and(|nbf| nbf > now + IAT_FUTURE_S)
        || ["exp", "nbf"]
            .iter()
            .any(|c| payload.contains_key(*c) && seconds(c).is_none())
    {
        return Err(invalid("the proof's exp or nbf says it is not valid now"));
    }
    match payload.get("nonce").and_then(Value::as_str) {
        Some(nonce) if !nonce.is_empty() && nonce.len() <= 256 => Ok(nonce.to_owned()),
        _ => Err(OAuthError::bad(
            "invalid_nonce",
            "the proof carries no c_nonce from this issuer's nonce endpoint",
        )),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use openssl::ec::{EcGroup, EcKey};
    use openssl::nid::Nid;
    use openssl::pkey::{PKey, Private};
    use serde_json::json;

    const AUD: &str = "https://wallet.example";

    fn phone() -> (PKey<Private>, Value) {
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
        let key = EcKey::generate(&group).unwrap();
        let mut ctx = openssl::bn::BigNumContext::new().unwrap();
        let point = key
            .public_key()
            .to_bytes(
                &group,
                openssl::ec::PointConversionForm::UNCOMPRESSED,
                &mut ctx,
            )
            .unwrap();
        let public =
            pkcs11_shim::PublicKey::from_ec_point(pkcs11_shim::Algorithm::Es256, &point).unwrap();
        let jwk = serde_json::to_value(public.jwk()).unwrap();
        (PKey::from_ec_key(key).unwrap(), jwk)
    }

    fn sign(key: &PKey<Private>, header: &Value, payload: &Value) -> String {
        let h = B64URL.encode(header.to_string());
        let p = B64URL.encode(payload.to_string());
        let mut signer =
            openssl::sign::Signer::new(openssl::hash::MessageDigest::sha256(), key).unwrap();
        let der = signer
            .sign_oneshot_to_vec(format!("{h}.{p}").as_bytes())
            .unwrap();
        let raw = pkcs11_shim::ecdsa_der_to_raw(&der, 32).unwrap();
        format!("{h}.{p}.{}", B64URL.encode(raw))
    }

    fn good(jwk: &Value) -> (Value, Value) {
        (
            json!({"typ": PROOF_TYPE, "alg": "ES256", "jwk": jwk}),
            json!({"aud": AUD, "iat": 1000, "nonce": "n-1"}),
        )
    }

    #[test]
    fn a_good_proof_gives_its_key_and_nonce() {
        let (key, jwk) = phone();
        let (h, p) = good(&jwk);
        let proved = verify(&sign(&key, &h, &p), AUD, 1010).unwrap();
        assert_eq!(proved.jwk, jwk);
        assert_eq!(proved.nonce, "n-1");
    }

    #[test]
    fn each_broken_rule_is_refused_with_its_error() {
        let (key, jwk) = phone();
        let (other, _) = phone();
        let refused = |h: Value, p: Value, signer: &PKey<Private>| {
            verify(&sign(signer, &h, &p), AUD, 1010).unwrap_err()
        };
        let (h, p) = good(&jwk);
        let mut cases: Vec<(Value, Value, &PKey<Private>, &str)> = Vec::new();
        let with = |v: &Value, k: &str, x: Value| {
            let mut v = v.clone();
            v[k] = x;
            v
        };
        cases.push((
            with(&h, "typ", json!("JWT")),
            p.clone(),
            &key,
            "invalid_proof",
        ));
        cases.push((
            with(&h, "alg", json!("none")),
            p.clone(),
            &key,
            "invalid_proof",
        ));
        cases.push((
            with(&h, "alg", json!("HS256")),
            p.clone(),
            &key,
            "invalid_proof",
        ));
        cases.push((
            with(&h, "kid", json!("k")),
            p.clone(),
            &key,
            "invalid_proof",
        ));
        let mut private = jwk.clone();
        private["d"] = json!("AAAA");
        cases.push((with(&h, "jwk", private), p.clone(), &key, "invalid_proof"));
        cases.push((
            h.clone(),
            with(&p, "aud", json!("https://other")),
            &key,
            "invalid_proof",
        ));
        cases.push((
            h.clone(),
            with(&p, "iat", json!(100)),
            &key,
            "invalid_proof",
        ));
        cases.push((
            h.clone(),
            with(&p, "iat", json!(2000)),
            &key,
            "invalid_proof",
        ));
        cases.push((h.clone(), p.clone(), &other, "invalid_proof"));
        cases.push((
            h.clone(),
            with(&p, "nonce", json!(null)),
            &key,
            "invalid_nonce",
        ));
        for (i, (h, p, signer, error)) in cases.into_iter().enumerate() {
            assert_eq!(refused(h, p, signer).error, error, "case {i}");
        }
        assert_eq!(verify("a.b", AUD, 0).unwrap_err().error, "invalid_proof");
        // A fractional iat is a NumericDate too.
        let (h, _) = good(&jwk);
        let p = json!({"aud": AUD, "iat": 1000.5, "nonce": "n"});
        assert!(verify(&sign(&key, &h, &p), AUD, 1010).is_ok());
    }
}
