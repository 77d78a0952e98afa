//! What a wallet reads before it asks: the credential issuer metadata
//! (OpenID4VCI 1.0 §12.2), the OAuth authorization server metadata (RFC
//! 8414: the pre-authorized code grant, anonymous access), and an offer
//! (§4.1.1). One credential configuration per policy profile, named after
//! it; display data in Korean and English.

use dojang_policies::{CredentialFormat, Policy};
use serde_json::{Value, json};

use super::proof::PROOF_ALGORITHMS;
use crate::credential::{mdoc, sdjwt};

/// The pre-authorized code grant's type.
pub const PRE_AUTHORIZED_GRANT: &str = "urn:ietf:params:oauth:grant-type:pre-authorized_code";

/// (claim, Korean, English) for the display of the main claims.
const CLAIMS: [(&str, &str, &str, &str); 6] = [
    ("family_name", "family_name", "성", "Family name"),
    ("given_name", "given_name", "이름", "Given name"),
    ("birth_date", "birthdate", "생년월일", "Date of birth"),
    ("resident_address", "address", "주소", "Address"),
    ("issue_date", "issuance_date", "발급일", "Date of issue"),
    (
        "expiry_date",
        "expiry_date",
        "유효기간 만료일",
        "Date of expiry",
    ),
];

fn display(ko: &str, en: &str) -> Value {
    json!([{"name": ko, "locale": "ko-KR"}, {"name": en, "locale": "en-US"}])
}

fn configuration(format: CredentialFormat) -> Value {
    let proofs = json!({"jwt": {"proof_signing_alg_values_supported": PROOF_ALGORITHMS}});
    let card = display("모바일 주민등록증", "Mobile Resident Registration Card");
    match format {
        CredentialFormat::Mdoc => {
            let claims: Vec<Value> = CLAIMS
                .iter()
                .map(|(element, _, ko, en)| {
                    json!({"path": [mdoc::NAMESPACE, element], "display": display(ko, en)})
                })
                .collect();
            json!({
                "format": "mso_mdoc",
                "doctype": mdoc::DOC_TYPE,
                "cryptographic_binding_methods_supported": ["cose_key"],
                // COSE algorithm ids: ES256, ES384.
                "credential_signing_alg_values_supported": [-7, -35],
                "proof_types_supported": proofs,
                "credential_metadata": {"display": card, "claims": claims},
            })
        }
        CredentialFormat::SdJwtVc => {
            let claims: Vec<Value> = CLAIMS
                .iter()
                .map(|(_, claim, ko, en)| json!({"path": [claim], "display": display(ko, en)}))
                .collect();
            json!({
                "format": "dc+sd-jwt",
                "vct": sdjwt::VCT,
                "cryptographic_binding_methods_supported": ["jwk"],
                "credential_signing_alg_values_supported": ["ES256", "ES384"],
                "proof_types_supported": proofs,
                "credential_metadata": {"display": card, "claims": claims},
            })
        }
    }
}

/// `/.well-known/openid-credential-issuer`, declaring batches of up to
/// `batch_size` credentials when it is over 1.
pub fn issuer_metadata(base_url: &str, policy: &Policy, batch_size: usize) -> Value {
    let configurations: serde_json::Map<String, Value> = policy
        .profiles
        .iter()
        .map(|(name, profile)| (name.clone(), configuration(profile.format)))
        .collect();
    let mut metadata = json!({
        "credential_issuer": base_url,
        "credential_endpoint": format!("{base_url}/credential"),
        "nonce_endpoint": format!("{base_url}/nonce"),
        "notification_endpoint": format!("{base_url}/notification"),
        // Dojang's extension: a presented credential signed again.
        "dojang_refresh_endpoint": format!("{base_url}/refresh"),
        "display": display("행정안전부", "Ministry of the Interior and Safety"),
        "credential_configurations_supported": configurations,
    });
    if batch_size > 1
        && let Some(m) = metadata.as_object_mut()
    {
        let _ = m.insert(
            "batch_credential_issuance".into(),
            json!({ "batch_size": batch_size }),
        );
    }
    metadata
}

/// `/.well-known/oauth-authorization-server`: this listener is its own
/// authorization server, for the pre-authorized code grant only.
pub fn authorization_server_metadata(base_url: &str) -> Value {
    json!({
        "issuer": base_url,
        "token_endpoint": format!("{base_url}/token"),
        "grant_types_supported": [PRE_AUTHORIZED_GRANT],
        "pre-authorized_grant_anonymous_access_supported": true,
        "response_types_supported": [],
        "token_endpoint_auth_methods_supported": ["none"],
    })
}

/// The offer a wallet fetches from `credential_offer_uri`.
pub(super) fn offer(base_url: &str, profile: &str, code: &str) -> Value {
    json!({
        "credential_issuer": base_url,
        "credential_configuration_ids": [profile],
        "grants": {
            PRE_AUTHORIZED_GRANT: {
                "pre-authorized_code": code,
                "tx_code": {
                    "input_mode": "numeric",
                    "length": 6,
                    "description": "창구에서 안내받은 6자리 숫자 / the 6 digits given at the counter",
                },
            },
        },
    })
}

/// The offer's URI (what the QR code holds), by reference.
pub(super) fn offer_uri(base_url: &str, handle: &str) -> String {
    let target = format!("{base_url}/offers/{handle}");
    format!(
        "openid-credential-offer://?credential_offer_uri={}",
        percent_encode(&target)
    )
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_offer_uri_carries_the_offer_location_percent_encoded() {
        assert_eq!(
            super::offer_uri("https://w.example:8443/id", "a_b-c"),
            "openid-credential-offer://?credential_offer_uri=https%3A%2F%2Fw.example%3A8443%2Fid%2Foffers%2Fa_b-c"
        );
    }
}
