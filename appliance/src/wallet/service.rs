//! [`Wallet`]: the OpenID4VCI issuer of one node — its settings and what
//! it holds between a wallet's steps ([`super::book`]). The steps are in
//! `offers.rs` (the counter's offer, the offer document), `token.rs`
//! (token, nonce) and `credential.rs` (credential, notification).

use crate::config::WalletListener;
use crate::node::Node;
use crate::store::DecisionRecord;

use super::book::{About, Book};
use super::card::CardCas;

/// What a wallet step answers: a status, a JSON body, and whether caches
/// must not keep it (tokens, nonces, credentials).
pub struct WalletReply {
    /// HTTP status.
    pub status: u16,
    /// JSON (empty for 204).
    pub body: Vec<u8>,
    /// `Cache-Control: no-store`.
    pub no_store: bool,
}

impl WalletReply {
    /// A 200 JSON answer that caches must not keep.
    pub(super) fn private(body: &serde_json::Value) -> Self {
        WalletReply {
            status: 200,
            body: serde_json::to_vec(body).unwrap_or_default(),
            no_store: true,
        }
    }
}

/// The node's OpenID4VCI issuer.
pub struct Wallet {
    pub(super) settings: WalletListener,
    pub(super) book: Book,
    pub(super) cards: CardCas,
}

impl Wallet {
    /// The issuer for the `[server.wallet]` settings (its card CA files
    /// must read).
    pub fn new(settings: WalletListener) -> Result<Self, String> {
        Ok(Wallet {
            book: Book::new(&settings),
            cards: CardCas::load(&settings.card_cas)?,
            settings,
        })
    }

    /// The credential issuer identifier.
    pub fn base_url(&self) -> &str {
        &self.settings.base_url
    }

    /// The listener's settings.
    pub fn settings(&self) -> &WalletListener {
        &self.settings
    }

    /// Sets the pending gauges.
    pub(super) fn gauge(&self, node: &Node, now: i64) {
        let (offers, tokens, nonces) = self.book.pending(now);
        let pending = &node.metrics.wallet.pending;
        for (kind, n) in [("offers", offers), ("tokens", tokens), ("nonces", nonces)] {
            pending
                .with_label_values(&[kind])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// Records a wallet step as an audit entry, in the name of the counter
    /// client the offer came from (a wallet has no identity of its own).
    pub(super) fn record(
        node: &Node,
        about: &About,
        (action, outcome, rule): (&str, &str, Option<&str>),
        now: time::OffsetDateTime,
    ) -> Result<(), crate::store::StoreError> {
        let record = DecisionRecord {
            rule: rule.map(str::to_owned),
            profile: Some(about.profile.clone()),
            ..node.caller_decision(&about.client, action, outcome, &about.policy_hash, now)
        };
        node.registry.record(record, None)
    }

    /// Drops every expired offer, token and nonce (a periodic task calls
    /// this: holder data must not outlive its offer for want of traffic).
    pub fn purge(&self, node: &Node, now: i64) {
        self.book.purge(now);
        self.gauge(node, now);
    }
}
