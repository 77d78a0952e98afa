//! The `[server]` table of `dojang.toml`: listeners, TLS files, limits,
//! the audit log's checkpoints and the labels of the keys the service
//! uses. Every limit has a default an operator can leave alone.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

/// The `[server]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// This node's name in decision records and logs.
    #[serde(default = "default_node_id")]
    pub node_id: String,
    /// The issuance policy file (reloaded on SIGHUP).
    pub policy: PathBuf,
    /// SHA-256 of the first policy, adopted at the key ceremony (`dojangctl
    /// policy adopt-first` prints it): the anchor every adopted policy must
    /// descend from, kept outside the registry so a database writer cannot
    /// start a history of their own.
    pub policy_anchor: String,
    /// The mTLS issuance API.
    pub api: ApiListener,
    /// What verifiers fetch (certificates, JWKS, status lists).
    pub public: PublicListener,
    /// `/metrics`, `/healthz`, `/readyz`.
    #[serde(default)]
    pub ops: OpsListener,
    /// Resource limits.
    #[serde(default)]
    pub limits: Limits,
    /// Labels of the keys the service uses besides DS keys.
    #[serde(default)]
    pub keys: ServiceKeys,
    /// Log lines as JSON (for journald) instead of text.
    #[serde(default)]
    pub json_logs: bool,
    /// The audit log's checkpoints.
    #[serde(default)]
    pub audit: AuditSettings,
    /// The OpenID4VCI listener for holders' wallets (none: offers are
    /// refused).
    #[serde(default)]
    pub wallet: Option<super::wallet::WalletListener>,
}

/// The `[server.audit]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSettings {
    /// The log's origin line in checkpoints (also the audit key's note
    /// name), e.g. `id.example.kr/dojang-audit`; the same on every node.
    #[serde(default = "default_origin")]
    pub origin: String,
    /// Sign a checkpoint at least this often while entries arrive.
    #[serde(default = "default_checkpoint_interval")]
    pub checkpoint_interval_ms: u64,
    /// … or as soon as this many entries are not yet covered.
    #[serde(default = "default_checkpoint_entries")]
    pub checkpoint_entries: u64,
    /// Witnesses each new checkpoint is sent to (c2sp.org/tlog-witness);
    /// their cosignatures are published with it.
    #[serde(default)]
    pub witnesses: Vec<WitnessSettings>,
    /// Cosignatures the latest checkpoint needs for the node to be ready
    /// [default: every witness].
    #[serde(default)]
    pub witness_quorum: Option<usize>,
    /// Whether a node is not ready while the latest checkpoint lacks the
    /// quorum (default: ready, with a warning; a witness down must not
    /// stop issuance unless the operator decides it should).
    #[serde(default)]
    pub require_witness_quorum: bool,
}

/// One witness of the audit log.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessSettings {
    /// Its submission prefix (`http://…` or `https://…`); requests go to
    /// `<url>/add-checkpoint`.
    pub url: String,
    /// Its vkey (`name+keyid+base64`, an Ed25519 cosigner key).
    pub key: String,
    /// The CA that certifies an `https` witness (PEM).
    #[serde(default)]
    pub ca: Option<PathBuf>,
}

impl AuditSettings {
    /// The cosignatures a checkpoint needs.
    pub fn quorum(&self) -> usize {
        self.witness_quorum.unwrap_or(self.witnesses.len())
    }
}

impl Default for AuditSettings {
    fn default() -> Self {
        AuditSettings {
            origin: default_origin(),
            checkpoint_interval_ms: default_checkpoint_interval(),
            checkpoint_entries: default_checkpoint_entries(),
            witnesses: Vec::new(),
            witness_quorum: None,
            require_witness_quorum: false,
        }
    }
}

fn default_origin() -> String {
    "dojang/audit".into()
}
fn default_checkpoint_interval() -> u64 {
    10_000
}
fn default_checkpoint_entries() -> u64 {
    1_000
}

/// The mTLS API listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiListener {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// The server's certificate chain (PEM).
    pub certificate: PathBuf,
    /// The server's TLS private key (PEM, readable by dojangd only); or:
    #[serde(default)]
    pub private_key: Option<PathBuf>,
    /// The label of the server's TLS key in the token (purpose
    /// `tls-server`, ES256): handshakes are signed there, and no key file
    /// exists to copy. Exactly one of `private_key` and this.
    #[serde(default)]
    pub private_key_label: Option<String>,
    /// CA certificates client certificates must chain to (PEM).
    pub client_ca: PathBuf,
    /// CRLs of the client CAs (PEM or DER), checked for every client.
    #[serde(default)]
    pub client_crls: Vec<PathBuf>,
    /// A CA of its own for security officers (PEM). When set, the officer
    /// role is taken only from certificates it issued, and every other role
    /// only from `client_ca`'s: a services CA cannot make an officer, nor the
    /// officers' CA an issuer. Its CRLs go in `client_crls` too.
    #[serde(default)]
    pub officer_ca: Option<PathBuf>,
    /// Also accept TLS 1.2 (TLS 1.3 only by default).
    #[serde(default)]
    pub allow_tls12: bool,
}

/// The public listener: plain HTTP behind a proxy unless TLS files are set.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicListener {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// The URL verifiers reach this listener at (status-list URIs start with it).
    pub base_url: String,
    /// Server certificate chain (PEM), for TLS on this listener.
    #[serde(default)]
    pub certificate: Option<PathBuf>,
    /// Its private key (PEM).
    #[serde(default)]
    pub private_key: Option<PathBuf>,
    /// A directory every document of this listener is also written to
    /// (atomically, as it changes) for any web server or CDN to serve
    /// while this node is down: `docs/disaster-recovery.md`.
    #[serde(default)]
    pub mirror_dir: Option<PathBuf>,
    /// Seconds a signed status list stays valid (`exp`): the outage a
    /// mirror's copy covers, and how long an old list could be replayed
    /// to a verifier (600 s to 7 days).
    #[serde(default = "default_status_token_lifetime")]
    pub status_token_lifetime_s: u64,
}

fn default_status_token_lifetime() -> u64 {
    86_400
}

/// The ops listener (loopback by default).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpsListener {
    /// Address to listen on.
    #[serde(default = "default_ops_listen")]
    pub listen: SocketAddr,
}

impl Default for OpsListener {
    fn default() -> Self {
        OpsListener {
            listen: default_ops_listen(),
        }
    }
}

/// Limits that keep one client or a slow device from exhausting the daemon.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Largest request body; larger ones get 413 before being read.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Time allowed to send a request's headers.
    #[serde(default = "default_header_timeout")]
    pub header_read_timeout_ms: u64,
    /// Time allowed to send a request's body once its headers are in.
    #[serde(default = "default_body_timeout")]
    pub body_read_timeout_ms: u64,
    /// Time allowed for a TLS handshake.
    #[serde(default = "default_handshake_timeout")]
    pub tls_handshake_timeout_ms: u64,
    /// TLS handshakes in progress per listener; beyond it new connections
    /// are closed at once. Apart from `max_connections`, which counts
    /// connections past their handshake: stalled handshakes cannot take
    /// the places of working clients.
    #[serde(default = "default_max_handshakes")]
    pub max_handshakes: usize,
    /// A connection with no traffic for this long is closed.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_ms: u64,
    /// Open connections per listener; beyond it new ones are closed at once.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Requests being worked on or queued for the key backend; beyond it 503.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Of `max_in_flight`, slots only officers' and revokers' routes may
    /// take (when issuance has the rest); default a sixteenth.
    #[serde(default)]
    pub reserved_in_flight: Option<usize>,
    /// Requests in flight one client identity may have, beyond it 429;
    /// default a quarter of `max_in_flight`.
    #[serde(default)]
    pub max_in_flight_per_client: Option<usize>,
    /// Threads that talk to the key backend and the store.
    #[serde(default = "default_signing_threads")]
    pub signing_threads: usize,
    /// How much nicer than the daemon the pools' worker threads run (0 to
    /// 19; the default 0 leaves them at its priority), so that the store's
    /// writer and the I/O threads, which every issuance waits on, get a
    /// core first. Not measured to help yet (`docs/operations.md`).
    #[serde(default = "default_worker_niceness")]
    pub worker_niceness: i32,
    /// Seconds a SIGTERM waits for requests in flight.
    #[serde(default = "default_drain")]
    pub drain_timeout_ms: u64,
    /// How long an idempotency key's sealed answer is kept for a retry
    /// (seconds); older ones are deleted by the acting node.
    #[serde(default = "default_idempotency_ttl")]
    pub idempotency_ttl_s: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: default_max_body(),
            header_read_timeout_ms: default_header_timeout(),
            body_read_timeout_ms: default_body_timeout(),
            tls_handshake_timeout_ms: default_handshake_timeout(),
            max_handshakes: default_max_handshakes(),
            idle_timeout_ms: default_idle_timeout(),
            max_connections: default_max_connections(),
            max_in_flight: default_max_in_flight(),
            reserved_in_flight: None,
            max_in_flight_per_client: None,
            signing_threads: default_signing_threads(),
            worker_niceness: default_worker_niceness(),
            drain_timeout_ms: default_drain(),
            idempotency_ttl_s: default_idempotency_ttl(),
        }
    }
}

/// Labels of the service's own keys in the token.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceKeys {
    /// The HMAC key holder pseudonyms are computed with.
    #[serde(default = "default_pseudonym_key")]
    pub pseudonym: String,
    /// The pseudonym key's check value recorded at its ceremony (`dojangctl
    /// keys check-value`, 16 hex digits): pinned here, outside the
    /// registry, a node refuses any other key even if a database writer
    /// removed or rewrote the registry's record.
    #[serde(default)]
    pub pseudonym_check: Option<String>,
    /// The HMAC key stored idempotent responses are sealed under (purpose
    /// `response-seal`; never the pseudonym key).
    #[serde(default = "default_response_seal_key")]
    pub response_seal: String,
    /// The key status lists are signed with.
    #[serde(default = "default_status_key")]
    pub status_list: String,
    /// The key audit checkpoints are signed with.
    #[serde(default = "default_audit_key")]
    pub audit: String,
    /// How often the key lifecycle runs (rotation schedule, usage counts,
    /// taking up other nodes' changes), in milliseconds.
    #[serde(default = "default_lifecycle_interval")]
    pub lifecycle_interval_ms: u64,
}

fn default_lifecycle_interval() -> u64 {
    1000
}

impl Default for ServiceKeys {
    fn default() -> Self {
        ServiceKeys {
            pseudonym: default_pseudonym_key(),
            pseudonym_check: None,
            response_seal: default_response_seal_key(),
            status_list: default_status_key(),
            audit: default_audit_key(),
            lifecycle_interval_ms: default_lifecycle_interval(),
        }
    }
}

fn default_node_id() -> String {
    "node-1".into()
}
fn default_ops_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9464))
}
fn default_max_body() -> usize {
    // A 256 KiB portrait in base64 plus the rest of the request.
    400 * 1024
}
fn default_header_timeout() -> u64 {
    5_000
}
fn default_body_timeout() -> u64 {
    10_000
}
fn default_handshake_timeout() -> u64 {
    5_000
}
fn default_idle_timeout() -> u64 {
    60_000
}
fn default_max_connections() -> usize {
    1024
}
fn default_max_handshakes() -> usize {
    128
}
fn default_max_in_flight() -> usize {
    256
}
fn default_signing_threads() -> usize {
    16
}
fn default_worker_niceness() -> i32 {
    0
}
fn default_drain() -> u64 {
    10_000
}
fn default_idempotency_ttl() -> u64 {
    86_400
}
fn default_pseudonym_key() -> String {
    "pseudonym".into()
}
fn default_response_seal_key() -> String {
    "response-seal".into()
}
fn default_status_key() -> String {
    "status-list-1".into()
}
fn default_audit_key() -> String {
    "audit-1".into()
}

impl ServerConfig {
    /// Checks values a parser cannot.
    pub fn validate(&self) -> Result<(), String> {
        if self.node_id.is_empty()
            || self.node_id.len() > 64
            || !self
                .node_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        {
            return Err("server.node_id must be 1 to 64 of [A-Za-z0-9._-]".into());
        }
        if !(self.public.base_url.starts_with("https://")
            || self.public.base_url.starts_with("http://"))
            || self.public.base_url.ends_with('/')
        {
            return Err(
                "server.public.base_url must be an http(s) URL without a trailing slash".into(),
            );
        }
        if self.policy_anchor.len() != 64
            || !self.policy_anchor.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(
                "server.policy_anchor must be the first policy's SHA-256 in 64 hex digits (dojangctl policy adopt-first prints it)"
                    .into(),
            );
        }
        if self.api.private_key.is_some() == self.api.private_key_label.is_some() {
            return Err(
                "server.api: set exactly one of private_key (a file) and private_key_label (a key in the token)"
                    .into(),
            );
        }
        if self.public.certificate.is_some() != self.public.private_key.is_some() {
            return Err(
                "server.public: set both certificate and private_key, or neither (plain HTTP)"
                    .into(),
            );
        }
        if !(600..=604_800).contains(&self.public.status_token_lifetime_s) {
            return Err(
                "server.public.status_token_lifetime_s must be 600 (10 minutes) to 604800 (7 days)"
                    .into(),
            );
        }
        if let Some(check) = &self.keys.pseudonym_check
            && (check.len() != 16
                || !check
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        {
            return Err(
                "server.keys.pseudonym_check must be the 16 lowercase hex digits `dojangctl keys check-value` prints"
                    .into(),
            );
        }
        self.audit.validate()?;
        if let Some(wallet) = &self.wallet {
            wallet.validate()?;
        }
        self.limits.validate()
    }
}

impl AuditSettings {
    /// The origin names the log (no spaces or '+'); checkpoint bounds.
    fn validate(&self) -> Result<(), String> {
        let a = self;
        if a.origin.is_empty()
            || a.origin.len() > 128
            || a.origin
                .contains(|c: char| c.is_whitespace() || c == '+' || c.is_control())
        {
            return Err(
                "server.audit.origin must be 1 to 128 characters without spaces or '+'".into(),
            );
        }
        if !(100..=3_600_000).contains(&a.checkpoint_interval_ms) || a.checkpoint_entries == 0 {
            return Err(
                "server.audit: checkpoint_interval_ms 100 to 3600000, checkpoint_entries > 0"
                    .into(),
            );
        }
        for w in &a.witnesses {
            let https = w.url.starts_with("https://");
            if !(https || w.url.starts_with("http://")) || (https && w.ca.is_none()) {
                return Err(format!(
                    "server.audit.witnesses: {:?} must be an http:// or https:// URL (https with `ca`)",
                    w.url
                ));
            }
        }
        if a.witness_quorum
            .is_some_and(|q| q == 0 || q > a.witnesses.len())
        {
            return Err(
                "server.audit.witness_quorum must be between 1 and the number of witnesses".into(),
            );
        }
        Ok(())
    }
}

impl Limits {
    /// Slots kept for officers' and revokers' routes.
    pub fn reserved_in_flight(&self) -> usize {
        self.reserved_in_flight.unwrap_or(self.max_in_flight / 16)
    }

    /// Requests one client may have in flight.
    pub fn in_flight_per_client(&self) -> usize {
        self.max_in_flight_per_client
            .unwrap_or((self.max_in_flight / 4).max(1))
    }

    /// Every limit within its range.
    fn validate(&self) -> Result<(), String> {
        let l = self;
        let checks: [(&str, bool); 14] = [
            (
                "max_handshakes (1 to 100000)",
                (1..=100_000).contains(&l.max_handshakes),
            ),
            (
                "reserved_in_flight (below max_in_flight)",
                l.reserved_in_flight() < l.max_in_flight,
            ),
            (
                "max_in_flight_per_client (1 to max_in_flight)",
                (1..=l.max_in_flight).contains(&l.in_flight_per_client()),
            ),
            (
                "body_read_timeout_ms (100 to 300000)",
                (100..=300_000).contains(&l.body_read_timeout_ms),
            ),
            (
                "max_body_bytes (1 KiB to 16 MiB)",
                (1024..=16 << 20).contains(&l.max_body_bytes),
            ),
            (
                "header_read_timeout_ms (100 to 120000)",
                (100..=120_000).contains(&l.header_read_timeout_ms),
            ),
            (
                "tls_handshake_timeout_ms (100 to 120000)",
                (100..=120_000).contains(&l.tls_handshake_timeout_ms),
            ),
            (
                "idle_timeout_ms (100 to 3600000)",
                (100..=3_600_000).contains(&l.idle_timeout_ms),
            ),
            (
                "max_connections (1 to 100000)",
                (1..=100_000).contains(&l.max_connections),
            ),
            (
                "max_in_flight (1 to 100000)",
                (1..=100_000).contains(&l.max_in_flight),
            ),
            (
                "signing_threads (1 to 256)",
                (1..=256).contains(&l.signing_threads),
            ),
            (
                "worker_niceness (0 to 19)",
                (0..=19).contains(&l.worker_niceness),
            ),
            (
                "drain_timeout_ms (0 to 600000)",
                l.drain_timeout_ms <= 600_000,
            ),
            (
                "idempotency_ttl_s (1 to 2592000, 30 days)",
                (1..=2_592_000).contains(&l.idempotency_ttl_s),
            ),
        ];
        if let Some((name, _)) = checks.iter().find(|(_, ok)| !ok) {
            return Err(format!("server.limits.{name}"));
        }
        Ok(())
    }
}
