//! The wallet listener's counters: each OpenID4VCI step by outcome (the
//! OAuth error code, or `ok`), and what is pending in memory.

use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};

/// The wallet metrics.
pub struct WalletMetrics {
    /// `dojang_wallet_steps_total{step, outcome}`.
    pub steps: IntCounterVec,
    /// `dojang_wallet_pending{kind}`: offers, tokens, nonces held now.
    pub pending: IntGaugeVec,
}

impl WalletMetrics {
    /// Registered in `r`.
    #[allow(clippy::expect_used)] // fixed definitions, registered once
    pub(super) fn new(r: &Registry) -> Self {
        let steps = IntCounterVec::new(
            Opts::new(
                "dojang_wallet_steps_total",
                "OpenID4VCI steps (offer, token, nonce, credential, notification) by outcome",
            ),
            &["step", "outcome"],
        )
        .expect("metric definition");
        let pending = IntGaugeVec::new(
            Opts::new(
                "dojang_wallet_pending",
                "Offers, access tokens and nonces held in memory",
            ),
            &["kind"],
        )
        .expect("metric definition");
        r.register(Box::new(steps.clone())).expect("registration");
        r.register(Box::new(pending.clone())).expect("registration");
        WalletMetrics { steps, pending }
    }

    /// Counts one step's outcome.
    pub fn step(&self, step: &str, outcome: &str) {
        self.steps.with_label_values(&[step, outcome]).inc();
    }
}
