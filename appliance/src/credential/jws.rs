//! The JWS header an SD-JWT VC is signed under ([`JwsHeader`]): built once
//! per DS key, from its algorithm, `kid` and certificate.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use serde_json::json;

use super::algorithm::SignatureAlgorithm;

/// The JOSE `typ` of an SD-JWT VC.
pub const TYP: &str = "dc+sd-jwt";

/// The JWS header of every SD-JWT VC a DS key signs, encoded once: it only
/// changes with the key.
#[derive(Debug, Clone)]
pub struct JwsHeader {
    encoded: String,
}

impl JwsHeader {
    /// `{"alg", "typ": "dc+sd-jwt", "kid", "x5c": [DS certificate]}`, base64url.
    pub fn new(algorithm: SignatureAlgorithm, kid: &str, ds_certificate_der: &[u8]) -> Self {
        let header = json!({
            "alg": algorithm.jose(),
            "typ": TYP,
            "kid": kid,
            "x5c": [B64.encode(ds_certificate_der)],
        });
        JwsHeader {
            encoded: B64URL.encode(header.to_string()),
        }
    }

    /// `base64url(header)`, the first part of the JWS signing input.
    pub(crate) fn encoded(&self) -> &str {
        &self.encoded
    }
}
