//! The wallet listener's errors, in the form OAuth and OpenID4VCI define
//! (`{"error", "error_description"}`, RFC 6749 §5.2, OpenID4VCI 1.0 §8.3.1.2),
//! not problem+json: that is what wallets parse. Descriptions never echo a
//! value the wallet sent.

use serde::Serialize;

/// One refusal: its HTTP status, the spec's error code, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthError {
    /// HTTP status.
    pub status: u16,
    /// The spec's error code (`invalid_grant`, `invalid_proof`, …).
    pub error: &'static str,
    /// Why, for the wallet's developer.
    pub description: String,
}

#[derive(Serialize)]
struct Body<'a> {
    error: &'a str,
    error_description: &'a str,
}

impl OAuthError {
    /// A 400 with `error`.
    pub fn bad(error: &'static str, description: impl Into<String>) -> Self {
        OAuthError {
            status: 400,
            error,
            description: description.into(),
        }
    }

    /// 401 `invalid_token` (RFC 6750 §3.1).
    pub fn invalid_token(description: impl Into<String>) -> Self {
        OAuthError {
            status: 401,
            error: "invalid_token",
            description: description.into(),
        }
    }

    /// 503 `temporarily_unavailable`.
    pub fn unavailable(description: impl Into<String>) -> Self {
        OAuthError {
            status: 503,
            error: "temporarily_unavailable",
            description: description.into(),
        }
    }

    /// 500 `server_error`.
    pub fn server_error() -> Self {
        OAuthError {
            status: 500,
            error: "server_error",
            description: "internal error".into(),
        }
    }

    /// The JSON body.
    pub fn body(&self) -> Vec<u8> {
        serde_json::to_vec(&Body {
            error: self.error,
            error_description: &self.description,
        })
        .unwrap_or_default()
    }
}
