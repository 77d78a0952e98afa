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

/// The proofs of a request for the offered configuration: one, or up to
/// `batch_size` for a batch.
fn the_proofs<'a>(
    request: &'a CredentialRequest,
    offer: &Offer,
    batch_size: usize,
) -> Result<&'a [String], OAuthError> {
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
    if jwts.is_empty() || jwts.len() > batch_size {
        return Err(OAuthError::bad(
            "invalid_proof",
            format!("1 to {batch_size} jwt proofs (the issuer's batch_size)"),
        ));
    }
    Ok(jwts)
}

/// Every check the wallet listener runs on a body before any state is
/// touched (the fuzz target `wallet_request` drives it): the first byte
/// picks the endpoint (0 token form, 1 credential request with its proofs
/// and card proof, 2 notification), the rest is the body.
pub fn check_wallet_input(bytes: &[u8]) {
    const AUDIENCE: &str = "https://wallet.example";
    let Some((kind, body)) = bytes.split_first() else {
        return;
    };
    match kind % 3 {
        0 => drop(super::form::parse(body)),
        1 => {
            let Ok(request) = serde_json::from_slice::<CredentialRequest>(body) else {
                return;
            };
            let jwts = request.proofs.and_then(|p| p.jwt).unwrap_or_default();
            let proved: Vec<_> = jwts
                .iter()
                .filter_map(|jwt| proof::verify(jwt, AUDIENCE, 1_800_000_000).ok())
                .collect();
            let _ = one_batch(&proved);
            if let (Some(jwt), Some(first)) = (request.card_proof.as_deref(), proved.first()) {
                let expected = card::Expected {
                    audience: AUDIENCE,
                    nonce: &first.nonce,
                    phone_thumbprint: "",
                    ca_der: &[],
                    now: time::OffsetDateTime::UNIX_EPOCH,
                };
                let _ = card::verify(jwt, &expected);
            }
        }
        _ => drop(serde_json::from_slice::<Notification>(body)),
    }
}

/// The keys of a batch's proofs: one nonce for all, no key twice.
fn one_batch(proved: &[proof::Proved]) -> Result<(), OAuthError> {
    let mut thumbprints = std::collections::BTreeSet::new();
    for p in proved {
        let jwk: pkcs11_shim::Jwk =
            serde_json::from_value(p.jwk.clone()).map_err(|_| OAuthError::server_error())?;
        if !thumbprints.insert(jwk.thumbprint()) {
            return Err(OAuthError::bad(
                "invalid_proof",
                "two proofs on the same key: each credential of a batch needs its own",
            ));
        }
    }
    if proved
        .windows(2)
        .any(|w| w.first().map(|p| &p.nonce) != w.get(1).map(|p| &p.nonce))
    {
        return Err(OAuthError::bad(
            "invalid_proof",
            "every proof of a batch carries the same nonce",
        ));
    }
    Ok(())
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
                    .map(|(_, credentials)| {
                        let mut answer = serde_json::Map::new();
                        let credentials: Vec<Value> = credentials
                            .into_iter()
                            .map(|credential| json!({ "credential": credential }))
                            .collect();
                        let credentials = Value::Array(credentials);
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
    ) -> Result<(String, Vec<Value>), (OAuthError, Outcome<'static>)> {
        let retry = |e: OAuthError| (e, Outcome::Retry);
        let request: CredentialRequest = serde_json::from_slice(body)
            .map_err(|_| retry(bad_request("the body is not a credential request")))?;
        let jwts = the_proofs(&request, offer, self.settings.batch_size).map_err(retry)?;
        let proved = jwts
            .iter()
            .map(|jwt| proof::verify(jwt, self.base_url(), now.unix_timestamp()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(retry)?;
        one_batch(&proved).map_err(retry)?;
        let (first, copies) = proved
            .split_first()
            .ok_or_else(|| retry(OAuthError::server_error()))?;
        let cards = (&self.cards, self.base_url());
        card::check_card(
            cards,
            offer,
            issuer,
            (request.card_proof.as_deref(), first, proved.len()),
            now,
        )
        .map_err(retry)?;
        if !self.book.take_nonce(&first.nonce, now.unix_timestamp()) {
            return Err(retry(OAuthError::bad(
                "invalid_nonce",
                "the proof's nonce is not one this issuer gave, or was used or expired: get a new one",
            )));
        }
        let mut members = offer.request.clone();
        let _ = members.insert("device_key".into(), first.jwk.clone());
        let issue_body = serde_json::to_vec(&members)
            .map_err(|_| (OAuthError::server_error(), Outcome::Retry))?;
        let copies: Vec<Value> = copies.iter().map(|p| p.jwk.clone()).collect();
        let (_, answer) = issuer
            .issue_batch(
                request_id,
                &offer.about.client,
                (&issue_body, &copies),
                queued,
                now,
            )
            .map_err(|p| issuance_refused(&p))?;
        let final_error = || (OAuthError::server_error(), Outcome::Final);
        let answer: Value = serde_json::from_slice(&answer).map_err(|_| final_error())?;
        let (Some(Value::String(id)), Some(credential)) =
            (answer.get("id"), answer.get("credential"))
        else {
            return Err(final_error());
        };
        let mut credentials = vec![credential.clone()];
        for copy in answer
            .get("copies")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            credentials.push(copy.get("credential").cloned().ok_or_else(final_error)?);
        }
        Ok((id.clone(), credentials))
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
