//! The counter's offer (`POST /v1/offers`, mTLS, issuer role) and the
//! document a wallet fetches from the offer's URI.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::json;
use time::OffsetDateTime;

use std::sync::Arc;

use super::book::{About, Offer};
use super::metadata;
use super::oauth_error::OAuthError;
use super::qr;
use super::service::{Wallet, WalletReply};
use crate::issuance::Issuer;
use crate::node::{Caller, Node, rfc3339};
use crate::refusal::{Answer, Class, Refusal, Reply};

impl Wallet {
    /// `POST /v1/offers`: checked and decided by the policy now; held in
    /// memory; answered with the offer's URI, its QR code (SVG, PNG) and
    /// the transaction code the holder is told.
    pub fn create_offer(
        &self,
        (node, issuer): (&Node, &Issuer),
        client: &Caller,
        body: &[u8],
        now: OffsetDateTime,
    ) -> Answer {
        let offered = issuer.offer(client, body, now);
        node.metrics
            .wallet
            .step("offer", offered.as_ref().map_or_else(|p| p.code, |_| "ok"));
        let offered = offered?;
        self.card_ca_loaded(issuer, &offered)?;
        let profile = offered.profile.clone();
        let offer = Offer {
            request: offered.request,
            about: Arc::new(About {
                client: client.clone(),
                profile: offered.profile,
                policy_hash: offered.policy_hash,
            }),
        };
        let new = self
            .book
            .add_offer(offer, body.len(), now.unix_timestamp())
            .map_err(|_| {
                Refusal::unavailable(
                    "offers_full",
                    "too many offers are pending on this node; retry shortly",
                )
            })?;
        self.gauge(node, now.unix_timestamp());
        let uri = metadata::offer_uri(self.base_url(), &new.handle);
        let code = qr::encode(&uri).ok_or_else(Refusal::internal)?;
        let answer = json!({
            "offer_uri": uri,
            "credential_offer_uri": format!("{}/offers/{}", self.base_url(), new.handle),
            "tx_code": new.tx_code,
            "profile": profile,
            "expires_at": rfc3339(
                OffsetDateTime::from_unix_timestamp(new.expires).unwrap_or(now)
            ),
            "qr": {"svg": qr::svg(&code), "png": B64.encode(qr::png(&code))},
        });
        Ok((
            Reply::Created,
            serde_json::to_vec(&answer).unwrap_or_default(),
        ))
    }

    /// A channel whose card the chip must prove needs its card CA here:
    /// else no wallet could ever redeem the offer.
    fn card_ca_loaded(
        &self,
        issuer: &Issuer,
        offered: &crate::issuance::Offered,
    ) -> Result<(), Refusal> {
        match super::card::channel_pin(issuer, &offered.request) {
            Some(pin) if self.cards.pinned(&pin).is_none() => Err(Refusal::unavailable(
                "card_ca_not_loaded",
                "the policy's card CA for this channel is not among server.wallet.card_cas",
            )),
            _ => Ok(()),
        }
    }

    /// `GET /offers/{handle}`: the offer, while it can be redeemed.
    pub fn offer_document(&self, handle: &str, now: i64) -> Result<WalletReply, OAuthError> {
        let Some((code, profile, _)) = self.book.offer_at(handle, now) else {
            return Err(OAuthError {
                status: 404,
                error: "invalid_request",
                description: "no such offer: it was redeemed, expired or never made".into(),
            });
        };
        Ok(WalletReply::private(&metadata::offer(
            self.base_url(),
            &profile,
            &code,
        )))
    }
}

/// Without a `[server.wallet]` table a node makes no offers.
pub fn wallet_not_configured() -> Refusal {
    Refusal::new(
        Class::NotFound,
        "wallet_not_configured",
        "this node has no [server.wallet] listener: it makes no offers",
    )
}
