//! `POST {base_url}/refresh` (Dojang's extension; docs/wallet.md): the
//! holder's wallet presents a credential as issued with a proof of its
//! phone key over a fresh nonce, and gets it signed again — no visit, no
//! holder data from a backend. The issuer checks the rest
//! (`issuance/presented.rs`).

use serde::Deserialize;
use serde_json::{Value, json};
use time::OffsetDateTime;

use super::oauth_error::OAuthError;
use super::proof;
use super::service::{Wallet, WalletReply};
use crate::issuance::Issuer;
use crate::node::Node;
use crate::refusal::Class;

#[derive(Deserialize)]
struct RefreshRequest {
    credential: String,
    proofs: Proofs,
}

#[derive(Deserialize)]
struct Proofs {
    jwt: Vec<String>,
}

impl Wallet {
    /// A presented credential signed again for the key that proved it.
    pub fn refresh(
        &self,
        (node, issuer): (&Node, &Issuer),
        body: &[u8],
        now: OffsetDateTime,
    ) -> Result<WalletReply, OAuthError> {
        let answer = self.refresh_checked(issuer, body, now);
        node.metrics.wallet.step(
            "refresh",
            answer.as_ref().map_or_else(|e| e.error, |_| "ok"),
        );
        answer
    }

    fn refresh_checked(
        &self,
        issuer: &Issuer,
        body: &[u8],
        now: OffsetDateTime,
    ) -> Result<WalletReply, OAuthError> {
        let bad = |d: &str| OAuthError::bad("invalid_credential_request", d);
        let request: RefreshRequest = serde_json::from_slice(body)
            .map_err(|_| bad("the body must be {credential, proofs: {jwt: [one proof]}}"))?;
        let [jwt] = request.proofs.jwt.as_slice() else {
            return Err(OAuthError::bad("invalid_proof", "exactly one jwt proof"));
        };
        let proved = proof::verify(jwt, self.base_url(), now.unix_timestamp())?;
        if !self.book.take_nonce(&proved.nonce, now.unix_timestamp()) {
            return Err(OAuthError::bad(
                "invalid_nonce",
                "the proof's nonce is not one this issuer gave, or was used or expired: get a new one",
            ));
        }
        let key = serde_json::from_value::<pkcs11_shim::Jwk>(proved.jwk)
            .ok()
            .and_then(|jwk| pkcs11_shim::public_key_from_jwk(&jwk).ok())
            .ok_or_else(OAuthError::server_error)?;
        let (_, answer) = issuer
            .refresh_presented(&request.credential, &key, now)
            .map_err(|p| match (p.class, p.rule.as_deref()) {
                (Class::Internal | Class::Unavailable, _) => {
                    OAuthError::unavailable("the credential cannot be refreshed now; retry")
                }
                (_, Some(crate::store::REFRESH_SAME_OWNER)) => OAuthError::bad(
                    "invalid_proof",
                    "the proof's key is not the key the credential is bound to",
                ),
                (_, rule) => OAuthError::bad(
                    "credential_request_denied",
                    format!(
                        "this credential is not refreshed (rule {}): ask at the counter",
                        rule.unwrap_or("none")
                    ),
                ),
            })?;
        let answer: Value =
            serde_json::from_slice(&answer).map_err(|_| OAuthError::server_error())?;
        let credential = answer
            .get("credential")
            .ok_or_else(OAuthError::server_error)?;
        Ok(WalletReply::private(
            &json!({ "credentials": [{ "credential": credential }] }),
        ))
    }
}
