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
    pub(super) device_key: Jwk,
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
    pub(super) device_key: Jwk,
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
    pub(super) device: pkcs11_shim::PublicKey,
    pub(super) card_issue_date: Option<time::Date>,
}

/// The holder data and phone key of a request, checked.
pub(super) fn holder_and_device(
    holder: &HolderIn,
    device_key: &Jwk,
) -> Result<(ResidentNumber, HolderData, pkcs11_shim::PublicKey), Refusal> {
    let number = ResidentNumber::parse(&holder.resident_number).map_err(|e| {
        Refusal::bad_request("invalid_resident_number", e.to_string())
            .with_rule("holder.resident_number_format")
    })?;
    let device = public_key_from_jwk(device_key)
        .map_err(|e| Refusal::bad_request("invalid_device_key", e.to_string()))?;
    let portrait =
        match &holder.portrait {
            Some(b64) => Some(B64.decode(b64).map_err(|_| {
                Refusal::bad_request("invalid_holder_data", "portrait is not base64")
            })?),
            None => None,
        };
    let data = HolderData {
        family_name: holder.family_name.clone(),
        given_name: holder.given_name.clone(),
        resident_number: number.clone(),
        address: holder.address.clone(),
        portrait,
    };
    Ok((number, data, device))
}

pub(super) fn validate(request: IssueRequest) -> Result<Validated, Refusal> {
    let (number, holder, device) = holder_and_device(&request.holder, &request.device_key)?;
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
    if request.municipality.len() > 16 || request.profile.len() > 64 || request.channel.len() > 64 {
        return Err(Refusal::bad_request(
            "malformed_request",
            "profile, channel or municipality too long",
        ));
    }
    Ok(Validated {
        request,
        number,
        holder,
        device,
        card_issue_date,
    })
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
