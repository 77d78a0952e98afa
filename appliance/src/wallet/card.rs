//! The IC-card channel, proved: the holder taps the card on the phone and
//! the card's chip signs, with its own key, a JWT over our issuer
//! identifier, the proof's nonce and the phone key's thumbprint (RFC 7638):
//! `card_proof` in the credential request (Dojang's extension; OpenID4VCI
//! has no member for it). The card's certificate (`x5c`) must chain to the
//! card CA the policy's channel names (`card_ca_sha256`), and its serial is
//! the card the counter named in the offer: the credential is bound to
//! that card and that phone key.

use std::path::PathBuf;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Map, Value};

use super::book::Offer;
use super::oauth_error::OAuthError;
use crate::issuance::Issuer;
use time::OffsetDateTime;

/// The card proof's `typ`.
pub(super) const CARD_PROOF_TYPE: &str = "dojang-card-proof+jwt";
const MAX_CARD_PROOF_BYTES: usize = 8 * 1024;

/// The card CAs the daemon loaded: (SHA-256 hex of the DER, DER).
pub(super) struct CardCas(Vec<(String, Vec<u8>)>);

fn invalid(description: impl Into<String>) -> OAuthError {
    OAuthError::bad("invalid_proof", description)
}

impl CardCas {
    /// Reads every PEM certificate of `files`.
    pub(super) fn load(files: &[PathBuf]) -> Result<Self, String> {
        let mut cas = Vec::new();
        for file in files {
            let pem = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
            let certs = openssl::x509::X509::stack_from_pem(&pem)
                .map_err(|e| format!("{}: {e}", file.display()))?;
            for cert in certs {
                let der = cert.to_der().map_err(|e| e.to_string())?;
                let hex = crate::keys::view::hex(&pkcs11_shim::digest::sha256(&der));
                cas.push((hex, der));
            }
        }
        Ok(CardCas(cas))
    }

    /// The CA whose certificate hashes to `pin`.
    pub(super) fn pinned(&self, pin: &str) -> Option<&[u8]> {
        self.0
            .iter()
            .find(|(hex, _)| hex.eq_ignore_ascii_case(pin))
            .map(|(_, der)| der.as_slice())
    }
}

/// What a card proof must say.
pub(super) struct Expected<'a> {
    pub(super) audience: &'a str,
    pub(super) nonce: &'a str,
    pub(super) phone_thumbprint: &'a str,
    pub(super) ca_der: &'a [u8],
    pub(super) now: time::OffsetDateTime,
}

/// Checks `jwt`; the card certificate's serial (upper-case hex).
pub(super) fn verify(jwt: &str, expected: &Expected<'_>) -> Result<String, OAuthError> {
    let jws = super::proof::parse_jws(jwt, MAX_CARD_PROOF_BYTES, "card proof")?;
    let (header, payload) = (&jws.header, &jws.payload);
    if header.get("typ").and_then(Value::as_str) != Some(CARD_PROOF_TYPE) {
        return Err(invalid(format!(
            "the card proof's typ must be {CARD_PROOF_TYPE}"
        )));
    }
    let (cert, key) = card_certificate(header, expected)?;
    let alg = header.get("alg").and_then(Value::as_str).unwrap_or("");
    if alg != key.algorithm().jose_name() || !super::proof::PROOF_ALGORITHMS.contains(&alg) {
        return Err(invalid(
            "the card proof's alg does not match the card's key",
        ));
    }
    if !key
        .verify(jws.signing_input.as_bytes(), &jws.signature)
        .unwrap_or(false)
    {
        return Err(invalid("the card's signature does not verify"));
    }
    check_claims(payload, expected)?;
    let serial = cert
        .serial_number()
        .to_bn()
        .and_then(|bn| bn.to_hex_str().map(|h| h.to_string()))
        .map_err(|_| invalid("the card's serial does not read"))?;
    Ok(serial.to_ascii_uppercase())
}

/// The card's certificate from `x5c`, chained to the pinned card CA, and
/// its key.
fn card_certificate(
    header: &Map<String, Value>,
    expected: &Expected<'_>,
) -> Result<(openssl::x509::X509, pkcs11_shim::PublicKey), OAuthError> {
    let certificate = match header
        .get("x5c")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
    {
        Some([Value::String(der)]) => B64
            .decode(der)
            .map_err(|_| invalid("the card proof's x5c is not base64"))?,
        _ => {
            return Err(invalid(
                "the card proof's x5c must be the card's one certificate",
            ));
        }
    };
    crate::credential::verify::chain_verifies(&certificate, expected.ca_der, expected.now)
        .map_err(|_| invalid("the card's certificate does not chain to the card CA the policy names, or is not valid now"))?;
    let cert = openssl::x509::X509::from_der(&certificate)
        .map_err(|_| invalid("the card's certificate does not parse"))?;
    let key = cert
        .public_key()
        .and_then(|k| k.public_key_to_der())
        .ok()
        .and_then(|spki| pkcs11_shim::PublicKey::from_spki_der(&spki).ok())
        .ok_or_else(|| invalid("the card's key is not one this issuer reads"))?;
    Ok((cert, key))
}

/// `aud`, `nonce`, `phone_jkt` and `iat`.
fn check_claims(payload: &Map<String, Value>, expected: &Expected<'_>) -> Result<(), OAuthError> {
    let claim = |name: &str| payload.get(name).and_then(Value::as_str);
    if claim("aud") != Some(expected.audience)
        || claim("nonce") != Some(expected.nonce)
        || claim("phone_jkt") != Some(expected.phone_thumbprint)
    {
        return Err(invalid(
            "the card proof must name this issuer (aud), the proof's nonce and the phone key's thumbprint (phone_jkt)",
        ));
    }
    super::proof::check_iat(payload, expected.now.unix_timestamp(), "card proof")
}

/// The card CA (SHA-256 hex) the policy pins for the channel an offer's
/// `request` names, if any: then the chip must prove the card.
pub(super) fn channel_pin(
    issuer: &Issuer,
    request: &serde_json::Map<String, Value>,
) -> Option<String> {
    let channel = request.get("channel").and_then(Value::as_str)?;
    let policy = issuer.current().policy;
    policy.channels.get(channel)?.card_ca_sha256.clone()
}

/// On a channel whose policy names a card CA: the card's chip signed
/// this nonce and this phone key, and it is the card the counter named.
pub(super) fn check_card(
    (cards, audience): (&CardCas, &str),
    offer: &Offer,
    issuer: &Issuer,
    (card_proof, proved, batch): (Option<&str>, &super::proof::Proved, usize),
    now: OffsetDateTime,
) -> Result<(), OAuthError> {
    let Some(pin) = channel_pin(issuer, &offer.request) else {
        return Ok(());
    };
    let ca_der = cards
        .pinned(&pin)
        .ok_or_else(|| OAuthError::unavailable("the card CA is not loaded on this node"))?;
    // The chip vouches for one phone key: no copies on other phones.
    if batch > 1 {
        return Err(OAuthError::bad(
            "invalid_proof",
            "a card channel issues one credential per tap: no batch",
        ));
    }
    let jwt = card_proof.ok_or_else(|| {
        OAuthError::bad(
            "invalid_proof",
            "this offer's channel needs the card's signature (card_proof): tap the card",
        )
    })?;
    let phone_thumbprint = serde_json::from_value::<pkcs11_shim::Jwk>(proved.jwk.clone())
        .map(|jwk| jwk.thumbprint())
        .map_err(|_| OAuthError::server_error())?;
    let expected = Expected {
        audience,
        nonce: &proved.nonce,
        phone_thumbprint: &phone_thumbprint,
        ca_der,
        now,
    };
    let serial = verify(jwt, &expected)?;
    let named = offer
        .request
        .get("card")
        .and_then(|c| c.get("serial"))
        .and_then(Value::as_str)
        .unwrap_or("");
    if !named.eq_ignore_ascii_case(&serial) {
        return Err(OAuthError::bad(
            "invalid_proof",
            "the tapped card is not the card the counter named",
        ));
    }
    Ok(())
}
