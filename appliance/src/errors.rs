//! The refusal each lower layer's error becomes: the registry's, the key
//! backend's, a credential builder's, and a JSON body's. Written once, so
//! every operation refuses the same failure the same way.

use pkcs11_shim::ErrorClass;

use crate::credential::CredentialError;
use crate::refusal::{Class, Refusal};
use crate::store::{REFRESH_SAME_OWNER, StoreError};

/// A JSON error message that never echoes a value from the body (values
/// are personal data): unknown and missing fields are named, everything
/// else is located.
pub fn json_refusal(e: &serde_json::Error) -> Refusal {
    let text = e.to_string();
    let detail = if text.starts_with("unknown field") || text.starts_with("missing field") {
        text.split(", expected").next().unwrap_or("").to_owned()
    } else if e.is_syntax() || e.is_eof() {
        format!(
            "the body is not valid JSON (line {}, column {})",
            e.line(),
            e.column()
        )
    } else {
        format!(
            "a value does not have the expected type (line {}, column {})",
            e.line(),
            e.column()
        )
    };
    let code = if text.starts_with("unknown field") {
        "unknown_field"
    } else {
        "malformed_request"
    };
    Refusal::bad_request(code, detail)
}

/// A registry error: its rule when an invariant refused, else 503/500.
pub fn store_refusal(e: StoreError) -> Refusal {
    match e {
        StoreError::Conflict { rule } => Refusal::new(
            Class::Conflict,
            "registry_conflict",
            match rule {
                "device.one_person" => "this phone already holds another person's mobile ID",
                REFRESH_SAME_OWNER => "the holder or the phone is not the credential's own",
                _ => "the holder already has a live mobile ID",
            },
        )
        .with_rule(rule),
        StoreError::IdempotencyMismatch => Refusal::new(
            Class::Unprocessable,
            "idempotency_key_reused",
            "this Idempotency-Key was used with a different request body",
        )
        .with_rule("idempotency.same_body"),
        StoreError::NotFound => {
            Refusal::new(Class::NotFound, "not_found", "no credential with this id")
        }
        StoreError::InvalidTransition { from, to } => Refusal::new(
            Class::Conflict,
            "invalid_transition",
            format!("a {from} credential cannot become {to}"),
        )
        .with_rule("credential.state_machine"),
        StoreError::Unavailable(_) | StoreError::IdempotencyReplay(_) => {
            tracing::warn!(error = %e, "registry unavailable");
            Refusal::unavailable("store_unavailable", "the registry is unavailable; retry")
        }
        StoreError::Internal(_) => {
            tracing::error!(error = %e, "registry error");
            Refusal::internal()
        }
    }
}

/// A key backend error: 503 either way, worded for whether a retry helps.
pub fn key_refusal(e: &pkcs11_shim::Error) -> Refusal {
    tracing::warn!(error = %e, "key backend call failed");
    match e.class() {
        ErrorClass::Retryable | ErrorClass::DeviceLost => {
            Refusal::unavailable("hsm_unavailable", "the key backend is unavailable; retry")
        }
        _ => Refusal::unavailable(
            "hsm_error",
            "the key backend refused the operation; an operator has been alerted",
        ),
    }
}

/// A credential builder's error.
pub fn credential_refusal(e: CredentialError) -> Refusal {
    match e {
        CredentialError::Invalid(detail) => {
            Refusal::bad_request("invalid_holder_data", detail).with_rule("holder.data")
        }
        CredentialError::Key(k) => key_refusal(&k),
        CredentialError::Encoding(_) => {
            tracing::error!(error = %e, "encoding a credential");
            Refusal::internal()
        }
    }
}
