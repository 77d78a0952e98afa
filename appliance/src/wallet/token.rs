//! The token endpoint (pre-authorized code grant, OpenID4VCI 1.0 §6) and
//! the nonce endpoint (§7). A code is single use; a wrong transaction code
//! costs one of the offer's tries and the last one kills the code; each
//! grant and each wrong code is an audit entry in the counter's name.

use serde_json::json;
use time::OffsetDateTime;

use super::book::{About, Checked};
use super::form;
use super::metadata::PRE_AUTHORIZED_GRANT;
use super::oauth_error::OAuthError;
use super::service::{Wallet, WalletReply};
use crate::node::Node;

impl Wallet {
    /// `POST /token`, a form body.
    pub fn token(
        &self,
        node: &Node,
        body: &[u8],
        now: OffsetDateTime,
    ) -> Result<WalletReply, OAuthError> {
        let answer = self.token_checked(node, body, now);
        node.metrics
            .wallet
            .step("token", answer.as_ref().map_or_else(|e| e.error, |_| "ok"));
        self.gauge(node, now.unix_timestamp());
        answer
    }

    fn token_checked(
        &self,
        node: &Node,
        body: &[u8],
        now: OffsetDateTime,
    ) -> Result<WalletReply, OAuthError> {
        let form = form::parse(body).ok_or_else(|| {
            OAuthError::bad(
                "invalid_request",
                "the body is not a form, or repeats a parameter",
            )
        })?;
        let field = |name: &str| form.get(name).map(String::as_str);
        if field("grant_type") != Some(PRE_AUTHORIZED_GRANT) {
            return Err(OAuthError::bad(
                "unsupported_grant_type",
                "only the pre-authorized code grant is served",
            ));
        }
        let (Some(code), Some(tx_code)) = (field("pre-authorized_code"), field("tx_code")) else {
            return Err(OAuthError::bad(
                "invalid_request",
                "pre-authorized_code and tx_code are required",
            ));
        };
        let at = now.unix_timestamp();
        let record = |about: &About, outcome, rule| {
            Self::record(node, about, ("wallet.token", outcome, rule), now).map_err(|e| {
                tracing::warn!(error = %e, "recording a wallet token step");
                OAuthError::unavailable("the decision cannot be recorded now; retry")
            })
        };
        let about = match self.book.check_code(code, tx_code, at) {
            Checked::Unknown => {
                return Err(OAuthError::bad(
                    "invalid_grant",
                    "the pre-authorized code is unknown, used, expired or dead",
                ));
            }
            Checked::WrongTxCode { about, dead } => {
                let rule = if dead {
                    "wallet.tx_code_attempts"
                } else {
                    "wallet.tx_code"
                };
                record(&about, "deny", Some(rule))?;
                return Err(OAuthError::bad(
                    "invalid_grant",
                    if dead {
                        "wrong transaction code, and no try is left: the offer is dead; ask the counter for a new one"
                    } else {
                        "wrong transaction code"
                    },
                ));
            }
            Checked::Right(about) => about,
        };
        // Recorded before the code is spent: a grant that cannot be
        // recorded leaves the offer redeemable.
        record(&about, "allow", None)?;
        let token = self
            .book
            .grant(code, at)
            .map_err(|_| OAuthError::unavailable("too many tokens pending; retry shortly"))?
            .ok_or_else(|| OAuthError::bad("invalid_grant", "the pre-authorized code was used"))?;
        Ok(WalletReply::private(&json!({
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": self.settings.access_token_ttl_s,
        })))
    }

    /// `POST /nonce`: a fresh `c_nonce` for one proof.
    pub fn nonce(&self, node: &Node, now: i64) -> Result<WalletReply, OAuthError> {
        let nonce = self.book.new_nonce(now);
        node.metrics.wallet.step(
            "nonce",
            if nonce.is_ok() {
                "ok"
            } else {
                "temporarily_unavailable"
            },
        );
        let nonce = nonce.map_err(|_| OAuthError::unavailable("too many nonces pending; retry"))?;
        Ok(WalletReply::private(&json!({ "c_nonce": nonce })))
    }
}
