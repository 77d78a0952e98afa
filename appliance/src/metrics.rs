//! Prometheus metrics, all named `dojang_…` with bounded labels: routes are
//! templates, rules are policy rule ids, profiles come from the policy.
//! Gauges that describe state (quota, certificate expiry, backend up) are
//! refreshed when `/metrics` is scraped.

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

mod process;
pub mod stages;
pub mod store;
pub mod wallet;

/// Every metric the daemon exports.
pub struct Metrics {
    registry: Registry,
    /// Requests by listener, route template and status class.
    pub requests: IntCounterVec,
    /// Time from a request's headers to its response built, by listener
    /// and route template (what the daemon adds; the client also waits
    /// for the network and for TLS on both ends).
    pub request_seconds: HistogramVec,
    /// Issuance latency (seconds), by profile.
    pub issuance_seconds: HistogramVec,
    /// Issuance latency by stage, and the slow ones traced.
    pub issuance_stages: stages::IssuanceStages,
    /// The wallet listener's steps.
    pub wallet: wallet::WalletMetrics,
    /// The store's own upkeep.
    pub store: store::StoreMetrics,
    /// Issuances by profile and outcome.
    pub issuances: IntCounterVec,
    /// Policy denials by rule.
    pub denials: IntCounterVec,
    /// Key-backend operations by op and result.
    pub hsm_operations: IntCounterVec,
    /// Key-backend operation latency (seconds), by op.
    pub hsm_seconds: HistogramVec,
    /// Jobs waiting for a signing thread.
    pub queue_depth: IntGauge,
    /// Sessions in the PKCS#11 pool, by state (idle, busy).
    pub sessions: IntGaugeVec,
    /// 1 when the key backend answers.
    pub backend_up: IntGauge,
    /// Seconds until each DS certificate expires, by key label.
    pub ds_expiry_seconds: IntGaugeVec,
    /// Seconds until the served CRL's nextUpdate (negative once past):
    /// verifiers refuse DS certificates whose CRL expired.
    pub crl_next_update_seconds: IntGauge,
    /// Seconds until each client CRL file's nextUpdate (negative once
    /// past: the API then refuses every client).
    pub client_crl_next_update_seconds: IntGaugeVec,
    /// DS keys in the spare pool (offline IACA), by state: `certified`
    /// (ready for the next scheduled rotations), `uncertified` (waiting for
    /// a ceremony), `emergency` (certified and published, 0 or 1).
    pub ds_spare_keys: IntGaugeVec,
    /// Key lifecycle actions this node carried out, by action and outcome.
    pub key_actions: IntCounterVec,
    /// Officer proposal steps, by step and outcome.
    pub officer_steps: IntCounterVec,
    /// Acts on the token refused for want of a verified order (a registry
    /// row is not one), by what was asked and why it was refused.
    pub orders_refused: IntCounterVec,
    /// The last refused order (what, why) and how many since start, for
    /// readiness to show.
    last_order_refused: std::sync::Mutex<(u64, Option<(String, String)>)>,
    /// Keys the registry calls retired or destroyed whose private half the
    /// token still holds (investigated through the audit log; the daemon
    /// never removes one on a row's word).
    pub keys_retained_in_token: IntGauge,
    /// Free first-time copies left.
    pub free_quota_remaining: IntGauge,
    /// Decision records in the registry (the audit log's entries).
    pub audit_entries: IntGauge,
    /// Open connections by listener.
    pub connections: IntGaugeVec,
    /// Connections closed at once because the listener was full.
    pub connections_refused: IntCounterVec,
    /// TLS handshakes that failed, by listener.
    pub handshake_failures: IntCounterVec,
    /// Status-list tokens signed.
    pub status_list_signatures: IntCounter,
    /// Time to sign a status list (seconds).
    pub status_list_seconds: Histogram,
    /// Age of the oldest registry read behind a status-list token this
    /// node serves: how long a change made on another node may take to
    /// show here (at most 30 s while the background keeps up).
    pub status_list_staleness_seconds: Gauge,
    /// Files the static mirror wrote (changed documents).
    pub mirror_files_written: IntCounter,
    /// Mirror updates that failed or left some document at its last copy.
    pub mirror_failures: IntCounter,
    /// When the mirror was last complete and up to date (Unix seconds).
    pub mirror_complete: IntGauge,
    /// Entries covered by the latest checkpoint this node signed or checked.
    pub audit_checkpoint_size: IntGauge,
    /// 1 while the stored log disagrees with a checkpoint it signed (a
    /// rewritten entry or tile hash): no checkpoint is signed over it.
    pub audit_log_rewritten: IntGauge,
    /// Per witness, 1 if it cosigned the latest checkpoint.
    pub audit_witness_cosigned: IntGaugeVec,
    /// 1 while the latest checkpoint has the cosignatures the quorum needs.
    pub audit_witness_quorum_met: IntGauge,
    /// Checkpoints witnesses refused or could not be sent, by reason
    /// (`inconsistent` and `other_root` are forks).
    pub audit_witness_refusals: IntCounterVec,
}

// The names, help texts and labels are constants of this file, each
// registered once: a failure is a bug caught by the first test that starts
// a daemon, not a runtime condition.
#[allow(clippy::expect_used)]
fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("metric definition");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

// The names, help texts and labels are constants of this file, each
// registered once: a failure is a bug caught by the first test that starts
// a daemon, not a runtime condition.
#[allow(clippy::expect_used)]
fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("metric definition");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

// The names, help texts and labels are constants of this file, each
// registered once: a failure is a bug caught by the first test that starts
// a daemon, not a runtime condition.
#[allow(clippy::expect_used)]
fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("metric definition");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

fn histogram(r: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let buckets = vec![
        0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    ];
    histogram_on(r, HistogramOpts::new(name, help).buckets(buckets), labels)
}

/// A histogram on [`stages::FINE_BUCKETS`]: for what takes tens of
/// microseconds to a few milliseconds and is watched for its tail.
fn fine_histogram(r: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(stages::FINE_BUCKETS.to_vec());
    histogram_on(r, opts, labels)
}

// The names, help texts and labels are constants of the metrics modules,
// each registered once: a failure is a bug caught by the first test that
// starts a daemon, not a runtime condition.
#[allow(clippy::expect_used)]
fn histogram_on(r: &Registry, opts: HistogramOpts, labels: &[&str]) -> HistogramVec {
    let h = HistogramVec::new(opts, labels).expect("metric definition");
    r.register(Box::new(h.clone())).expect("unique metric");
    h
}

/// `dojang_build_info{version}` = 1.
fn build_info(r: &Registry) {
    let build = gauge_vec(
        r,
        "dojang_build_info",
        "Build information (value 1).",
        &["version"],
    );
    build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
}

impl Metrics {
    /// Registers every metric.
    #[allow(clippy::expect_used)] // fixed definitions: a failure is a bug caught by any test
    pub fn new() -> Self {
        let r = Registry::new();
        build_info(&r);
        let (status_list_seconds, status_list_signatures, status_list_staleness_seconds) =
            Self::status_lists(&r);
        let (mirror_files_written, mirror_failures, mirror_complete) = Self::mirror(&r);
        let audit_checkpoint_size = gauge(
            &r,
            "dojang_audit_checkpoint_size",
            "Entries covered by the latest audit checkpoint this node signed.",
        );
        let audit_log_rewritten = gauge(
            &r,
            "dojang_audit_log_rewritten",
            "1 while the stored audit log disagrees with a checkpoint it signed; no checkpoint is signed over it.",
        );
        let (audit_witness_cosigned, audit_witness_quorum_met, audit_witness_refusals) =
            Self::witnesses(&r);
        let (requests, connections, connections_refused, handshake_failures) = Self::transport(&r);
        let (orders_refused, keys_retained_in_token) = Self::token_guard(&r);
        let (crl_next_update_seconds, client_crl_next_update_seconds, ds_spare_keys) =
            Self::certificates(&r);
        let (issuance_seconds, issuances, denials, hsm_operations, hsm_seconds, queue_depth) =
            Self::issuance(&r);
        let (
            sessions,
            backend_up,
            ds_expiry_seconds,
            free_quota_remaining,
            audit_entries,
            key_actions,
            officer_steps,
        ) = Self::state(&r);
        r.register(Box::new(process::ProcessCollector::new()))
            .expect("unique metric");
        Metrics {
            requests,
            request_seconds: Self::request_seconds(&r),
            connections,
            connections_refused,
            handshake_failures,
            issuance_seconds,
            issuance_stages: stages::IssuanceStages::new(&r),
            wallet: wallet::WalletMetrics::new(&r),
            store: store::StoreMetrics::new(&r),
            issuances,
            denials,
            hsm_operations,
            hsm_seconds,
            queue_depth,
            sessions,
            backend_up,
            ds_expiry_seconds,
            free_quota_remaining,
            audit_entries,
            key_actions,
            officer_steps,
            orders_refused,
            crl_next_update_seconds,
            ds_spare_keys,
            client_crl_next_update_seconds,
            last_order_refused: std::sync::Mutex::new((0, None)),
            keys_retained_in_token,
            status_list_signatures,
            status_list_seconds,
            status_list_staleness_seconds,
            mirror_files_written,
            mirror_failures,
            mirror_complete,
            audit_checkpoint_size,
            audit_log_rewritten,
            audit_witness_cosigned,
            audit_witness_quorum_met,
            audit_witness_refusals,
            registry: r,
        }
    }

    /// The audit log's witnesses.
    fn witnesses(r: &Registry) -> (IntGaugeVec, IntGauge, IntCounterVec) {
        let audit_witness_cosigned = gauge_vec(
            r,
            "dojang_audit_witness_cosigned",
            "1 if the witness cosigned the latest audit checkpoint.",
            &["witness"],
        );
        let audit_witness_quorum_met = gauge(
            r,
            "dojang_audit_witness_quorum_met",
            "1 while the latest audit checkpoint has the witness cosignatures the quorum needs.",
        );
        let audit_witness_refusals = counter(
            r,
            "dojang_audit_witness_refusals_total",
            "Attempts to have an audit checkpoint cosigned that a witness refused or that did not reach it, by reason (inconsistent and other_root are forks).",
            &["witness", "reason"],
        );
        (
            audit_witness_cosigned,
            audit_witness_quorum_met,
            audit_witness_refusals,
        )
    }

    /// The CRLs served and trusted, and the DS spare pool.
    fn certificates(r: &Registry) -> (IntGauge, IntGaugeVec, IntGaugeVec) {
        (
            gauge(
                r,
                "dojang_crl_next_update_seconds",
                "Seconds until the served IACA CRL's nextUpdate (negative once past).",
            ),
            gauge_vec(
                r,
                "dojang_client_crl_next_update_seconds",
                "Seconds until each client CRL file's nextUpdate (negative once past).",
                &["file"],
            ),
            gauge_vec(
                r,
                "dojang_ds_spare_keys",
                "DS keys in the spare pool by state (certified, uncertified, emergency).",
                &["state"],
            ),
        )
    }

    /// Status-list signing.
    #[allow(clippy::expect_used)] // fixed definitions: a failure is a bug caught by any test
    fn status_lists(r: &Registry) -> (Histogram, IntCounter, Gauge) {
        let status_list_seconds = Histogram::with_opts(HistogramOpts::new(
            "dojang_status_list_sign_seconds",
            "Time to build and sign a status-list token.",
        ))
        .expect("metric definition");
        r.register(Box::new(status_list_seconds.clone()))
            .expect("unique metric");
        let status_list_signatures = IntCounter::new(
            "dojang_status_list_signatures_total",
            "Status-list tokens signed.",
        )
        .expect("metric definition");
        r.register(Box::new(status_list_signatures.clone()))
            .expect("unique metric");
        let status_list_staleness_seconds = Gauge::new(
            "dojang_status_list_staleness_seconds",
            "Age of the oldest registry read behind a status-list token this node serves.",
        )
        .expect("metric definition");
        r.register(Box::new(status_list_staleness_seconds.clone()))
            .expect("unique metric");
        (
            status_list_seconds,
            status_list_signatures,
            status_list_staleness_seconds,
        )
    }

    /// The static mirror.
    #[allow(clippy::expect_used)] // fixed definitions: a failure is a bug caught by any test
    fn mirror(r: &Registry) -> (IntCounter, IntCounter, IntGauge) {
        let written = IntCounter::new(
            "dojang_mirror_files_written_total",
            "Files the static mirror wrote (documents that changed).",
        )
        .expect("metric definition");
        r.register(Box::new(written.clone()))
            .expect("unique metric");
        let failures = IntCounter::new(
            "dojang_mirror_failures_total",
            "Mirror updates that failed or kept some document at its last copy.",
        )
        .expect("metric definition");
        r.register(Box::new(failures.clone()))
            .expect("unique metric");
        let complete = gauge(
            r,
            "dojang_mirror_complete_timestamp_seconds",
            "When the static mirror was last complete and up to date (Unix time; 0: never).",
        );
        (written, failures, complete)
    }

    /// Request latency, on the issuance stages' buckets: a request takes a
    /// few milliseconds, and its tail is what this is for.
    fn request_seconds(r: &Registry) -> HistogramVec {
        fine_histogram(
            r,
            "dojang_http_request_duration_seconds",
            "Time from a request's headers to its response built, by listener and route.",
            &["listener", "route"],
        )
    }

    /// Requests and connections.
    #[allow(clippy::type_complexity)] // one tuple, named by the caller
    fn transport(r: &Registry) -> (IntCounterVec, IntGaugeVec, IntCounterVec, IntCounterVec) {
        (
            counter(
                r,
                "dojang_http_requests_total",
                "HTTP requests by listener, route and status class.",
                &["listener", "route", "status"],
            ),
            gauge_vec(
                r,
                "dojang_connections_open",
                "Open connections by listener.",
                &["listener"],
            ),
            counter(
                r,
                "dojang_connections_refused_total",
                "Connections closed because the listener was at its limit.",
                &["listener"],
            ),
            counter(
                r,
                "dojang_tls_handshake_failures_total",
                "TLS handshakes that failed or timed out.",
                &["listener"],
            ),
        )
    }

    /// Issuances, refusals and the device work behind them.
    #[allow(clippy::type_complexity)] // one tuple, named by the caller
    fn issuance(
        r: &Registry,
    ) -> (
        HistogramVec,
        IntCounterVec,
        IntCounterVec,
        IntCounterVec,
        HistogramVec,
        IntGauge,
    ) {
        (
            histogram(
                r,
                "dojang_issuance_duration_seconds",
                "Time from a parsed issuance request to its durable commit.",
                &["profile"],
            ),
            counter(
                r,
                "dojang_issuances_total",
                "Issuance requests by profile and outcome.",
                &["profile", "outcome"],
            ),
            counter(
                r,
                "dojang_policy_denials_total",
                "Requests refused by the policy or the registry, by rule.",
                &["rule"],
            ),
            counter(
                r,
                "dojang_hsm_operations_total",
                "Key-backend operations by operation and result.",
                &["op", "result"],
            ),
            histogram(
                r,
                "dojang_hsm_operation_duration_seconds",
                "Key-backend operation latency.",
                &["op"],
            ),
            gauge(
                r,
                "dojang_signing_queue_depth",
                "Jobs waiting for a signing thread.",
            ),
        )
    }

    /// What the node holds: sessions, keys, quota, log, officers.
    #[allow(clippy::type_complexity)] // one tuple, named by the caller
    fn state(
        r: &Registry,
    ) -> (
        IntGaugeVec,
        IntGauge,
        IntGaugeVec,
        IntGauge,
        IntGauge,
        IntCounterVec,
        IntCounterVec,
    ) {
        (
            gauge_vec(
                r,
                "dojang_hsm_sessions",
                "PKCS#11 sessions in the pool by state.",
                &["state"],
            ),
            gauge(
                r,
                "dojang_key_backend_up",
                "1 when the key backend answers its probe.",
            ),
            gauge_vec(
                r,
                "dojang_ds_certificate_expiry_seconds",
                "Seconds until each DS certificate expires.",
                &["key"],
            ),
            gauge(
                r,
                "dojang_free_quota_remaining",
                "Free first-time copies left.",
            ),
            gauge(
                r,
                "dojang_audit_log_entries",
                "Decision records in the registry.",
            ),
            counter(
                r,
                "dojang_key_lifecycle_actions_total",
                "Key lifecycle actions (generate, activate, retire, destroy, revoke) this node carried out.",
                &["action", "outcome"],
            ),
            counter(
                r,
                "dojang_officer_steps_total",
                "Officer proposal steps (propose, approve, reject, execute) by outcome.",
                &["step", "outcome"],
            ),
        )
    }

    /// What the token was kept from doing, and what it still holds.
    fn token_guard(r: &Registry) -> (IntCounterVec, IntGauge) {
        (
            counter(
                r,
                "dojang_key_orders_refused_total",
                "Acts on the token refused because no verified order backs them, by order and reason.",
                &["order", "reason"],
            ),
            gauge(
                r,
                "dojang_keys_retained_in_token",
                "Keys the registry calls retired or destroyed whose private half the token still holds.",
            ),
        )
    }

    /// Counts an act on the token refused for want of a verified order.
    pub fn order_refused(&self, order: &str, reason: &str) {
        self.orders_refused
            .with_label_values(&[order, reason])
            .inc();
        if let Ok(mut last) = self.last_order_refused.lock() {
            *last = (last.0 + 1, Some((order.to_owned(), reason.to_owned())));
        }
    }

    /// Orders refused since start, and the last one (what, why).
    pub fn orders_refused_so_far(&self) -> (u64, Option<(String, String)>) {
        self.last_order_refused
            .lock()
            .map(|l| l.clone())
            .unwrap_or_default()
    }

    /// Times a key-backend call and counts its result.
    pub fn hsm<T, E>(&self, op: &str, f: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
        let start = std::time::Instant::now();
        let result = f();
        self.hsm_seconds
            .with_label_values(&[op])
            .observe(start.elapsed().as_secs_f64());
        let outcome = if result.is_ok() { "ok" } else { "error" };
        self.hsm_operations.with_label_values(&[op, outcome]).inc();
        result
    }

    /// Counts an answered request (the status by class: `2xx`, `4xx`, …)
    /// and observes its time since `started`.
    pub fn count_request(
        &self,
        listener: &str,
        route: &str,
        status: hyper::StatusCode,
        started: std::time::Instant,
    ) {
        self.request_seconds
            .with_label_values(&[listener, route])
            .observe(started.elapsed().as_secs_f64());
        let class = match status.as_u16() / 100 {
            1 => "1xx",
            2 => "2xx",
            3 => "3xx",
            4 => "4xx",
            _ => "5xx",
        };
        self.requests
            .with_label_values(&[listener, route, class])
            .inc();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Encoding our own registered metrics into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
