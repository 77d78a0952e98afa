//! The credential endpoint (OpenID4VCI 1.0 §8) and the notification
//! endpoint (§11). A credential request names the offered configuration
//! and carries one `jwt` proof; the proved key is what the credential is
//! bound to, and the issuance is the one path every credential takes
//! (policy again, now with the phone; sign; one durable commit with its
//! audit entry), in the name of the counter client that made the offer.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Value, json};
use time::OffsetDateTime;

use super::book::{Offer, Outcome, TokenRefused};
use super::oauth_error::OAuthError;
use super::service::{Wallet, WalletReply};
use super::{card, proof};
use crate::issuance::Issuer;
use crate::node::Node;
use crate::refusal::{Class, Refusal};

/// Unknown members are ignored (OpenID4VCI 1.0 §8.2, as OAuth does).
#[derive(Deserialize)]
struct CredentialRequest {
    #[serde(default)]
    credential_configuration_id: Option<String>,
    #[serde(default)]
    credential_identifier: Option<String>,
    #[serde(default)]
    proofs: Option<Proofs>,
    /// The drafts' single proof: refused by name.
    #[serde(default)]
    proof: Option<Value>,
    #[serde(default)]
    credential_response_encryption: Option<Value>,
    /// The card chip's signature (`card.rs`), on a channel that needs it.
    #[serde(default)]
    card_proof: Option<String>,
}

#[derive(Deserialize)]
struct Proofs {
    #[serde(default)]
    jwt: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct Notification {
    notification_id: String,
    event: String,
    #[serde(default)]
    #[allow(dead_code)] // the wallet's words: not recorded (free text)
    event_description: Option<String>,
}

fn bad_request(description: &str) -> OAuthError {
    OAuthError::bad("invalid_credential_request", description)
}

/// The one proof of a request for the offered configuration.
fn the_proof<'a>(request: &'a CredentialRequest, offer: &Offer) -> Result<&'a str, OAuthError> {
    if request.credential_response_encryption.is_some() {
        return Err(OAuthError::bad(
            "invalid_encryption_parameters",
            "this issuer does not encrypt credential responses",
        ));
    }
    if request.proof.is_some() {
        return Err(bad_request("send proofs (OpenID4VCI 1.0), not proof"));
    }
    if request.credential_identifier.is_some() {
        return Err(bad_request(
            "credential_identifier is not used here: name the credential_configuration_id",
        ));
    }
    match request.credential_configuration_id.as_deref() {
        Some(id) if id == offer.about.profile => {}
        Some(_) => {
            return Err(OAuthError::bad(
                "unknown_credential_configuration",
                "the offer was for another credential configuration",
            ));
        }
        None => return Err(bad_request("credential_configuration_id is required")),
    }
    let jwts = request
        .proofs
        .as_ref()
        .and_then(|p| p.jwt.as_deref())
        .ok_or_else(|| OAuthError::bad("invalid_proof", "a jwt proof is required"))?;
    match jwts {
        [one] => Ok(one),
        _ => Err(OAuthError::bad(
            "invalid_proof",
            "exactly one jwt proof: batch issuance is not offered",
        )),
    }
}

/// A refusal of the issuance, as the wallet is told it (the rule, never
/// the policy's words: they name clients, channels and offices), and what
/// it does to the token.
fn issuance_refused(p: &Refusal) -> (OAuthError, Outcome<'static>) {
    match p.class {
        // Before anything was signed: the wallet may try again.
        Class::TooManyRequests => (
            OAuthError::unavailable("the issuer is busy; retry in a minute"),
            Outcome::Retry,
        ),
        // Perhaps after a durable commit: never a second credential.
        Class::Internal | Class::Unavailable => (
            OAuthError::unavailable(
                "the credential could not be issued now; ask the counter for a new offer",
            ),
            Outcome::Final,
        ),
        _ => (
            OAuthError::bad(
                "credential_request_denied",
                format!(
                    "the issuance policy refused a credential for this phone (rule {}); ask at the counter",
                    p.rule.as_deref().unwrap_or("none")
                ),
            ),
            Outcome::Final,
        ),
    }
}

impl Wallet {
    /// `POST /credential` with `token` (the bearer access token).
    pub fn credential(
        &self,
        (node, issuer): (&Node, &Issuer),
        (token, body): (&str, &[u8]),
        request_id: &str,
        queued: std::time::Instant,
        now: OffsetDateTime,
    ) -> Result<WalletReply, OAuthError> {
        let at = now.unix_timestamp();
        let answer = match self.book.begin(token, at) {
            Err(TokenRefused::Invalid) => Err(OAuthError::invalid_token(
                "the access token is unknown or expired",
            )),
            Err(TokenRefused::Spent) => Err(OAuthError::invalid_token(
                "the access token's credential was issued",
            )),
            Err(TokenRefused::Busy) => Err(bad_request(
                "a credential request with this access token is in progress",
            )),
            Ok(offer) => {
                let issued = self.issue(&offer, issuer, body, (request_id, queued), now);
                drop(offer);
                let outcome = match &issued {
                    Ok((id, _)) => Outcome::Issued(id),
                    Err((_, outcome)) => *outcome,
                };
                let notification = self.book.finish(token, outcome, at);
                issued
                    .map(|(_, credential)| {
                        let mut answer = serde_json::Map::new();
                        let credentials = json!([{ "credential": credential }]);
                        let _ = answer.insert("credentials".into(), credentials);
                        if let Some(id) = notification {
                            let _ = answer.insert("notification_id".into(), json!(id));
                        }
                        WalletReply::private(&Value::Object(answer))
                    })
                    .map_err(|(e, _)| e)
            }
        };
        node.metrics.wallet.step(
            "credential",
            answer.as_ref().map_or_else(|e| e.error, |_| "ok"),
        );
        answer
    }

    /// Checks the request and its proof, then issues: (credential id, credential).
    fn issue(
        &self,
        offer: &Arc<Offer>,
        issuer: &Issuer,
        body: &[u8],
        (request_id, queued): (&str, std::time::Instant),
        now: OffsetDateTime,
    ) -> Result<(String, Value), (OAuthError, Outcome<'static>)> {
        let retry = |e: OAuthError| (e, Outcome::Retry);
        let request: CredentialRequest = serde_json::from_slice(body)
            .map_err(|_| retry(bad_request("the body is not a credential request")))?;
        let jwt = the_proof(&request, offer).map_err(retry)?;
        let proved = proof::verify(jwt, self.base_url(), now.unix_timestamp()).map_err(retry)?;
        self.check_card(offer, issuer, (&request, &proved), now)
            .map_err(retry)?;
        if !self.book.take_nonce(&proved.nonce, now.unix_timestamp()) {
            return Err(retry(OAuthError::bad(
                "invalid_nonce",
                "the proof's nonce is not one this issuer gave, or was used or expired: get a new one",
            )));
        }
        let mut members = offer.request.clone();
        let _ = members.insert("device_key".into(), proved.jwk);
        let issue_body = serde_json::to_vec(&members)
            .map_err(|_| (OAuthError::server_error(), Outcome::Retry))?;
        let (_, answer) = issuer
            .issue(
                request_id,
                &offer.about.client,
                (&issue_body, None),
                queued,
                now,
            )
            .map_err(|p| issuance_refused(&p))?;
        let final_error = || (OAuthError::server_error(), Outcome::Final);
        let answer: Value = serde_json::from_slice(&answer).map_err(|_| final_error())?;
        match (answer.get("id"), answer.get("credential")) {
            (Some(Value::String(id)), Some(credential)) => Ok((id.clone(), credential.clone())),
            _ => Err(final_error()),
        }
    }

    /// On a channel whose policy names a card CA: the card's chip signed
    /// this nonce and this phone key, and it is the card the counter named.
    fn check_card(
        &self,
        offer: &Offer,
        issuer: &Issuer,
        (request, proved): (&CredentialRequest, &proof::Proved),
        now: OffsetDateTime,
    ) -> Result<(), OAuthError> {
        let text = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or("").to_owned();
        let channel = text(offer.request.get("channel"));
        let policy = issuer.current().policy;
        let Some(pin) = policy
            .channels
            .get(&channel)
            .and_then(|c| c.card_ca_sha256.clone())
        else {
            return Ok(());
        };
        let ca_der = self
            .cards
            .pinned(&pin)
            .ok_or_else(|| OAuthError::unavailable("the card CA is not loaded on this node"))?;
        let jwt = request.card_proof.as_deref().ok_or_else(|| {
            OAuthError::bad(
                "invalid_proof",
                "this offer's channel needs the card's signature (card_proof): tap the card",
            )
        })?;
        let phone_thumbprint = serde_json::from_value::<pkcs11_shim::Jwk>(proved.jwk.clone())
            .map(|jwk| jwk.thumbprint())
            .map_err(|_| OAuthError::server_error())?;
        let expected = card::Expected {
            audience: self.base_url(),
            nonce: &proved.nonce,
            phone_thumbprint: &phone_thumbprint,
            ca_der,
            now,
        };
        let serial = card::verify(jwt, &expected)?;
        let named = text(offer.request.get("card").and_then(|c| c.get("serial")));
        if !named.eq_ignore_ascii_case(&serial) {
            return Err(OAuthError::bad(
                "invalid_proof",
                "the tapped card is not the card the counter named",
            ));
        }
        Ok(())
    }

    /// `POST /notification` with the access token the credential came with.
    pub fn notification(
        &self,
        node: &Node,
        (token, body): (&str, &[u8]),
        now: OffsetDateTime,
    ) -> Result<WalletReply, OAuthError> {
        let answer = self.notification_checked(node, (token, body), now);
        node.metrics.wallet.step(
            "notification",
            answer.as_ref().map_or_else(|e| e.error, |_| "ok"),
        );
        answer
    }

    fn notification_checked(
        &self,
        node: &Node,
        (token, body): (&str, &[u8]),
        now: OffsetDateTime,
    ) -> Result<WalletReply, OAuthError> {
        let invalid = |d: &str| OAuthError::bad("invalid_notification_request", d);
        let notification: Notification =
            serde_json::from_slice(body).map_err(|_| invalid("the body is not a notification"))?;
        let action = match notification.event.as_str() {
            "credential_accepted" => "wallet.credential_accepted",
            "credential_failure" => "wallet.credential_failure",
            "credential_deleted" => "wallet.credential_deleted",
            _ => {
                return Err(invalid(
                    "event must be credential_accepted, credential_failure or credential_deleted",
                ));
            }
        };
        let issued = self
            .book
            .notified(&notification.notification_id, token, now.unix_timestamp())
            .ok_or_else(|| {
                OAuthError::bad(
                    "invalid_notification_id",
                    "no credential of this access token has this notification_id (or it was notified)",
                )
            })?;
        Self::record(node, &issued.about, (action, "allow", None), now).map_err(|_| {
            OAuthError::unavailable("the notification cannot be recorded now; retry")
        })?;
        tracing::info!(credential = %issued.credential_id, event = %notification.event, "wallet notification");
        Ok(WalletReply {
            status: 204,
            body: Vec::new(),
            no_store: true,
        })
    }
}
