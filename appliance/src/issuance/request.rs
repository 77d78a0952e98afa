//! The API's request bodies and their checks before anything touches the
//! HSM: the holder data and phone key parsed, lengths bounded, the card's
//! date read. Messages never echo a value (values are personal data).

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use dojang_policies::resident_number::ResidentNumber;
use pkcs11_shim::{Jwk, public_key_from_jwk};
use serde::Deserialize;

use crate::credential::claims::HolderData;
use crate::refusal::{Class, Refusal};

/// `POST /v1/credentials`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct IssueRequest {
    pub(super) profile: String,
    pub(super) holder: HolderIn,
    /// A public JWK; read as JSON first so private members are seen
    /// (null in an offer's request).
    pub(super) device_key: serde_json::Value,
    pub(super) channel: String,
    pub(super) municipality: String,
    pub(super) first_time: bool,
    #[serde(default)]
    pub(super) card: Option<CardIn>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HolderIn {
    pub(super) family_name: String,
    pub(super) given_name: String,
    pub(super) resident_number: String,
    pub(super) address: String,
    /// JPEG, base64.
    #[serde(default)]
    pub(super) portrait: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CardIn {
    /// YYYY-MM-DD.
    pub(super) issue_date: String,
    pub(super) serial: String,
}

/// `POST /v1/credentials/{id}/refresh`: the holder data and phone key again
/// (the registry keeps neither), to re-sign the same document.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RefreshRequest {
    pub(super) holder: HolderIn,
    pub(super) device_key: serde_json::Value,
}

/// `POST /v1/credentials/{id}/revoke|suspend|reinstate`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct StateChangeRequest {
    /// Why (kept out of the registry; a short code is enough).
    #[serde(default)]
    #[allow(dead_code)]
    pub(super) reason: Option<String>,
}

/// What a validated request carries into the policy and the builders.
pub(super) struct Validated {
    pub(super) request: IssueRequest,
    pub(super) number: ResidentNumber,
    pub(super) holder: HolderData,
    /// None for an offer (the wallet proves its key later).
    pub(super) device: Option<pkcs11_shim::PublicKey>,
    pub(super) card_issue_date: Option<time::Date>,
}

impl Validated {
    /// The phone key's JWK thumbprint (empty for an offer: no phone yet).
    pub(super) fn device_thumbprint(&self) -> String {
        self.device
            .as_ref()
            .map(|d| d.jwk().thumbprint())
            .unwrap_or_default()
    }
}

/// JWK members that carry private key material (RFC 7518 §6.2.2, §6.3.2,
/// §6.4): a phone never sends its private key, and one that did has lost it.
const PRIVATE_JWK_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

/// The first member of `jwk` that carries private key material, if any
/// (a phone key from a backend, or from a wallet's proof).
pub fn private_jwk_member(jwk: &serde_json::Value) -> Option<&'static str> {
    PRIVATE_JWK_MEMBERS
        .into_iter()
        .find(|m| jwk.get(*m).is_some())
}

/// The phone's public key from its JWK: public members only, a curve the
/// appliance accepts, a point on it.
pub(super) fn device_public_key(
    jwk: &serde_json::Value,
) -> Result<pkcs11_shim::PublicKey, Refusal> {
    let invalid = |detail: String| {
        Refusal::bad_request("invalid_device_key", detail).with_rule("device_key.public_only")
    };
    if let Some(member) = private_jwk_member(jwk) {
        return Err(invalid(format!(
            "device_key carries private key material ({member:?}): send the public key only, and treat this one as compromised"
        )));
    }
    let jwk: Jwk = serde_json::from_value(jwk.clone())
        .map_err(|e| invalid(format!("device_key is not a JWK: {e}")))?;
    public_key_from_jwk(&jwk).map_err(|e| Refusal::bad_request("invalid_device_key", e.to_string()))
}

/// A birth date a living holder can have: not in the future, not before
/// 1900 (the oldest Korean on record was born after it).
fn plausible_birth_date(number: &ResidentNumber) -> Result<(), Refusal> {
    let birth = number.birth_date();
    let today = dojang_policies::calendar::seoul_date(time::OffsetDateTime::now_utc());
    let refuse = |detail: &str| {
        Err(
            Refusal::bad_request("invalid_resident_number", detail.to_owned())
                .with_rule("holder.birth_date"),
        )
    };
    if birth > today {
        return refuse("the resident number's birth date is in the future");
    }
    if birth.year() < 1900 {
        return refuse("the resident number's birth date is before 1900");
    }
    Ok(())
}

/// A portrait is a JPEG (SOI … EOI) or a JPEG 2000 image (JP2 box or
/// codestream), as ISO 18013-5 allows: not arbitrary bytes under an image's
/// name.
fn image(portrait: &[u8]) -> bool {
    const JP2: [u8; 12] = [
        0, 0, 0, 0x0c, b'j', b'P', b' ', b' ', 0x0d, 0x0a, 0x87, 0x0a,
    ];
    let jpeg = portrait.starts_with(&[0xff, 0xd8, 0xff]) && portrait.ends_with(&[0xff, 0xd9]);
    let jpeg2000 = portrait.starts_with(&JP2) || portrait.starts_with(&[0xff, 0x4f, 0xff, 0x51]);
    jpeg || jpeg2000
}

/// The holder data of a request, checked.
fn holder_data(holder: &HolderIn) -> Result<(ResidentNumber, HolderData), Refusal> {
    let number = ResidentNumber::parse(&holder.resident_number).map_err(|e| {
        Refusal::bad_request("invalid_resident_number", e.to_string())
            .with_rule("holder.resident_number_format")
    })?;
    plausible_birth_date(&number)?;
    let portrait =
        match &holder.portrait {
            Some(b64) => Some(B64.decode(b64).map_err(|_| {
                Refusal::bad_request("invalid_holder_data", "portrait is not base64")
            })?),
            None => None,
        };
    if portrait.as_deref().is_some_and(|p| !image(p)) {
        return Err(Refusal::bad_request(
            "invalid_holder_data",
            "portrait is neither a JPEG nor a JPEG 2000 image",
        )
        .with_rule("holder.portrait"));
    }
    let data = HolderData {
        family_name: holder.family_name.clone(),
        given_name: holder.given_name.clone(),
        resident_number: number.clone(),
        address: holder.address.clone(),
        portrait,
    };
    Ok((number, data))
}

/// The holder data and phone key of a request, checked.
pub(super) fn holder_and_device(
    holder: &HolderIn,
    device_key: &serde_json::Value,
) -> Result<(ResidentNumber, HolderData, pkcs11_shim::PublicKey), Refusal> {
    let (number, data) = holder_data(holder)?;
    let device = device_public_key(device_key)?;
    Ok((number, data, device))
}

/// The request's other members: the card's date, the district code, the
/// lengths of the names the policy reads.
fn check_request(request: &IssueRequest) -> Result<Option<time::Date>, Refusal> {
    let card_issue_date = match &request.card {
        Some(card) => Some(
            time::Date::parse(
                &card.issue_date,
                time::macros::format_description!("[year]-[month]-[day]"),
            )
            .map_err(|_| {
                Refusal::bad_request("invalid_card", "card.issue_date must be YYYY-MM-DD")
            })?,
        ),
        None => None,
    };
    if request.card.as_ref().is_some_and(|c| c.serial.len() > 64) {
        return Err(Refusal::bad_request(
            "invalid_card",
            "card.serial is at most 64 characters",
        ));
    }
    // An administrative district code: ten digits, nothing else.
    if request.municipality.len() != 10 || !request.municipality.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(Refusal::bad_request(
            "invalid_municipality",
            "municipality must be a 10-digit administrative district code",
        )
        .with_rule("request.municipality"));
    }
    if request.profile.len() > 64 || request.channel.len() > 64 {
        return Err(Refusal::bad_request(
            "malformed_request",
            "profile or channel too long",
        ));
    }
    Ok(card_issue_date)
}

pub(super) fn validate(request: IssueRequest) -> Result<Validated, Refusal> {
    let (number, holder, device) = holder_and_device(&request.holder, &request.device_key)?;
    let card_issue_date = check_request(&request)?;
    Ok(Validated {
        request,
        number,
        holder,
        device: Some(device),
        card_issue_date,
    })
}

/// An offer's request: everything of an issuance but the phone key, which
/// the wallet proves later (its `device_key` member is null).
pub(super) fn validate_offer(request: IssueRequest) -> Result<Validated, Refusal> {
    if !request.device_key.is_null() {
        return Err(Refusal::bad_request(
            "malformed_request",
            "an offer carries no device_key: the wallet proves its own key",
        ));
    }
    let (number, holder) = holder_data(&request.holder)?;
    let card_issue_date = check_request(&request)?;
    Ok(Validated {
        request,
        number,
        holder,
        device: None,
        card_issue_date,
    })
}

/// Every check an issuance request body passes before the HSM or the
/// registry sees it (the fuzz target `issue_request` drives it).
pub fn check_issue_body(body: &[u8]) -> Result<(), Refusal> {
    let request: IssueRequest =
        serde_json::from_slice(body).map_err(|e| crate::errors::json_refusal(&e))?;
    validate(request).map(drop)
}

/// Every check a refresh request body passes before the HSM or the
/// registry sees it.
pub fn check_refresh_body(body: &[u8]) -> Result<(), Refusal> {
    let request: RefreshRequest =
        serde_json::from_slice(body).map_err(|e| crate::errors::json_refusal(&e))?;
    holder_and_device(&request.holder, &request.device_key).map(drop)
}

pub(super) fn check_id(id: &str) -> Result<(), Refusal> {
    if id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(Refusal::new(
            Class::NotFound,
            "not_found",
            "no credential with this id",
        ))
    }
}
