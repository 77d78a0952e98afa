//! A real `dojangd serve` process on a fresh SoftHSM token: keys and PKI
//! made by `dojangctl` (the test process never opens the token), a dev TLS
//! PKI with a client certificate for every case the tests need, free
//! loopback ports, and the shipped policy (optionally edited).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use dojang::devtls::{DevCa, LeafSpec};
use time::OffsetDateTime;

use crate::https::{Client, Target};
use crate::{P11KitServer, SoftHsmToken};

/// Client identities the fixture issues certificates for.
pub const COUNTER: &str = "spiffe://mois.go.kr/office-counter";
/// Issuer only (cannot revoke).
pub const GATEWAY: &str = "spiffe://mois.go.kr/wallet-gateway";
/// Not in the policy.
pub const STRANGER: &str = "spiffe://mois.go.kr/stranger";
/// The auditor of the shipped policy.
pub const AUDITOR: &str = "spiffe://mois.go.kr/auditor";
/// Security officers the fixture enrolls and adds to the policy
/// (certificates `kim`, `lee`, `park`; tokens `officer-kim`, …).
pub const OFFICERS: [(&str, &str); 3] = [
    ("kim", "spiffe://mois.go.kr/officer/kim"),
    ("lee", "spiffe://mois.go.kr/officer/lee"),
    ("park", "spiffe://mois.go.kr/officer/park"),
];
/// The audit log's origin in the fixture's configuration.
pub const AUDIT_ORIGIN: &str = "test.dojang.kr/audit";

/// The store the daemon uses.
#[derive(Debug, Clone)]
pub enum Store {
    /// A SQLite file in the scratch dir.
    Sqlite,
    /// A PostgreSQL URL.
    Postgres(String),
    /// A PostgreSQL URL over the network, with the CA (PEM file) its
    /// server's certificate must chain to (`store.postgres_ca`).
    PostgresVerified(String, PathBuf),
}

/// How to start the daemon.
pub struct Options {
    /// Extra lines for `[server.limits]`.
    pub limits: String,
    /// Rewrites the shipped policy text.
    pub policy: fn(String) -> String,
    /// The store.
    pub store: Store,
    /// MiB of the SQLite registry's log file laid out at start
    /// (`store.sqlite_log_prewrite_mib`). The service lays out 1,280 by
    /// default; tests take 4, so that every daemon goes through the layout
    /// without writing a gigabyte each.
    pub sqlite_log_mib: u64,
    /// Reach the token through `p11-kit server` (which tests can kill).
    pub via_p11kit: bool,
    /// This node's id.
    pub node_id: String,
    /// Extra environment for the daemon (e.g. `NOTIFY_SOCKET`).
    pub env: Vec<(String, String)>,
    /// Extra lines for `[server]` (e.g. `json_logs = true`).
    pub server: String,
    /// Extra lines for `[server.api]` (e.g. `allow_tls12 = true`).
    pub api: String,
    /// Extra lines for `[server.public]` (`{scratch}` names the scratch
    /// directory).
    pub public: String,
    /// Start the process (false: only write the token, PKI and config,
    /// for a test that runs the service in-process).
    pub spawn: bool,
    /// Run `dojangctl pki init` (false: no IACA; officers have the daemon
    /// generate one).
    pub pki_init: bool,
    /// The API's TLS key in the token (label `tls-server-1`, no key file).
    pub tls_key_in_token: bool,
    /// Adopt the policy at a key ceremony before the first start (the
    /// first M officers sign it; false: no policy adopted).
    pub adopt_policy: bool,
    /// The IACA in an offline token (`pki.iaca_custody = "offline"`): a
    /// root ceremony instead of `pki init`, then, once the daemon runs, a
    /// ceremony certifying its spare DS keys (officers kim and lee).
    pub offline_iaca: bool,
    /// Extra lines for a `[server.wallet]` listener (OpenID4VCI) at
    /// `https://localhost:PORT` with the server's TLS files; `None`: no
    /// wallet listener.
    pub wallet: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            limits: String::new(),
            policy: |p| p,
            store: Store::Sqlite,
            sqlite_log_mib: 4,
            via_p11kit: false,
            node_id: "test-1".into(),
            env: Vec::new(),
            server: String::new(),
            api: String::new(),
            public: String::new(),
            spawn: true,
            pki_init: true,
            adopt_policy: true,
            tls_key_in_token: false,
            offline_iaca: false,
            wallet: None,
        }
    }
}

enum Device {
    Direct(SoftHsmToken),
    P11Kit(P11KitServer),
    /// Another daemon's token: a second node (drop it before the first).
    Shared {
        conf: PathBuf,
        scratch: PathBuf,
    },
}

impl Device {
    fn conf_path(&self) -> PathBuf {
        match self {
            Device::Direct(t) => t.conf_path(),
            Device::P11Kit(s) => s.token().conf_path(),
            Device::Shared { conf, .. } => conf.clone(),
        }
    }

    fn scratch(&self) -> &Path {
        match self {
            Device::Direct(t) => t.scratch(),
            Device::P11Kit(s) => s.token().scratch(),
            Device::Shared { scratch, .. } => scratch,
        }
    }
}

/// The running daemon.
pub struct Daemon {
    device: Device,
    child: Option<Child>,
    /// The mTLS API.
    pub api: SocketAddr,
    /// The public listener (plain HTTP).
    pub public: SocketAddr,
    /// The ops listener.
    pub ops: SocketAddr,
    /// The config file.
    pub config: PathBuf,
    /// The policy file the daemon reads.
    pub policy: PathBuf,
    /// Dev TLS files.
    pub tls: PathBuf,
    log: PathBuf,
    env: Vec<(String, String)>,
    /// The network namespace the process runs in (a site of a drill).
    netns: Option<String>,
    /// The officers' own tokens: one SoftHSM configuration of its own (the
    /// daemon never sees it), a token per officer.
    officers: std::sync::Arc<SoftHsmToken>,
    /// The offline IACA token (`Options::offline_iaca`): its own SoftHSM
    /// configuration, which the daemon's never names.
    pub(crate) offline: Option<SoftHsmToken>,
    /// The wallet listener (`Options::wallet`).
    pub wallet: Option<SocketAddr>,
}

/// Three loopback addresses: api, public, ops.
fn listener_addresses() -> (SocketAddr, SocketAddr, SocketAddr) {
    let first = crate::ports::reserve(3);
    let at = |port| SocketAddr::from(([127, 0, 0, 1], port));
    (at(first), at(first + 1), at(first + 2))
}

/// The officers' tokens, each holding an approval key made by
/// `dojangctl officer enroll`.
fn enroll_officers() -> SoftHsmToken {
    let tokens = SoftHsmToken::create("officer-kim");
    for (name, _) in &OFFICERS[1..] {
        tokens.init_token(&format!("officer-{name}"));
    }
    tokens
}

/// `dojangctl` with officer `name`'s token.
fn officer_command(tokens: &SoftHsmToken, name: &str) -> Command {
    let mut command = Command::new(crate::workspace_binary("dojangctl"));
    let _ = command
        .arg("--officer-token")
        .arg(format!("officer-{name}"))
        .arg("--officer-module")
        .arg(crate::softhsm_module())
        .arg("--officer-pin-file")
        .arg(tokens.pin_file())
        .env("SOFTHSM2_CONF", tokens.conf_path());
    command
}

/// The policy blocks pinning each officer's approval key, as `officer
/// enroll` prints them.
fn officer_blocks(tokens: &SoftHsmToken) -> String {
    OFFICERS
        .iter()
        .map(|(name, identity)| {
            let out = officer_command(tokens, name)
                .args(["officer", "enroll", "--identity", identity])
                .output()
                .expect("dojangctl");
            assert!(
                out.status.success(),
                "officer enroll: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            format!("\n{}", String::from_utf8_lossy(&out.stdout))
        })
        .collect()
}

/// A `tls-server` key made in the daemon's token by `dojangctl`; its
/// uncompressed public point.
fn token_tls_key(token: &SoftHsmToken, config: &Path) -> Vec<u8> {
    run_ctl(
        token,
        config,
        &[
            "keys",
            "generate",
            "--label",
            "tls-server-1",
            "--purpose",
            "tls-server",
        ],
    );
    let out = Command::new(crate::workspace_binary("dojangctl"))
        .arg("--config")
        .arg(config)
        .args(["--json", "keys", "show", "tls-server-1"])
        .env("SOFTHSM2_CONF", token.conf_path())
        .output()
        .expect("dojangctl");
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).expect("keys show");
    let pem = shown
        .get("pem")
        .and_then(serde_json::Value::as_str)
        .expect("pem");
    let key = openssl::pkey::PKey::public_key_from_pem(pem.as_bytes()).expect("PEM");
    let ec = key.ec_key().expect("EC");
    let mut ctx = openssl::bn::BigNumContext::new().expect("ctx");
    ec.public_key()
        .to_bytes(
            ec.group(),
            openssl::ec::PointConversionForm::UNCOMPRESSED,
            &mut ctx,
        )
        .expect("point")
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

fn run_ctl(token: &SoftHsmToken, config: &Path, args: &[&str]) {
    let out = Command::new(crate::workspace_binary("dojangctl"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env("SOFTHSM2_CONF", token.conf_path())
        .output()
        .expect("dojangctl");
    assert!(
        out.status.success(),
        "dojangctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Writes the dev TLS PKI: CA, server, and clients `counter`, `gateway`,
/// `stranger`, `expired`, `notyet`, `revoked` (on the CRL), `nosan`, and
/// `foreign` (from another CA).
fn write_tls(dir: &Path, server_point: Option<&[u8]>) {
    std::fs::create_dir_all(dir).expect("tls dir");
    let ca = DevCa::generate("Test TLS CA").expect("CA");
    write(&dir.join("ca.pem"), ca.cert_pem());
    let save = |name: &str, leaf: dojang::devtls::Leaf| {
        write(&dir.join(format!("{name}.pem")), &leaf.cert_pem);
        write(&dir.join(format!("{name}.key")), &leaf.key_pem);
        leaf
    };
    match server_point {
        // The server key is in the token: a certificate, no key file.
        Some(point) => {
            let (cert, _) = ca
                .issue_for_point(&LeafSpec::localhost_server(), point)
                .expect("server");
            write(&dir.join("server.pem"), &cert);
        }
        None => {
            let _ = save(
                "server",
                ca.issue(&LeafSpec::localhost_server()).expect("server"),
            );
        }
    }
    let counter = save("counter", ca.issue(&LeafSpec::client(COUNTER)).expect("c"));
    let _ = save("gateway", ca.issue(&LeafSpec::client(GATEWAY)).expect("c"));
    let _ = save(
        "stranger",
        ca.issue(&LeafSpec::client(STRANGER)).expect("c"),
    );
    let _ = save("auditor", ca.issue(&LeafSpec::client(AUDITOR)).expect("c"));
    for (name, identity) in OFFICERS {
        let _ = save(name, ca.issue(&LeafSpec::client(identity)).expect("c"));
    }
    let now = OffsetDateTime::now_utc();
    let mut expired = LeafSpec::client(COUNTER);
    expired.not_before = now - time::Duration::days(30);
    expired.not_after = now - time::Duration::days(1);
    let _ = save("expired", ca.issue(&expired).expect("c"));
    let mut notyet = LeafSpec::client(COUNTER);
    notyet.not_before = now + time::Duration::days(1);
    notyet.not_after = now + time::Duration::days(30);
    let _ = save("notyet", ca.issue(&notyet).expect("c"));
    let revoked = save("revoked", ca.issue(&LeafSpec::client(COUNTER)).expect("c"));
    let mut nosan = LeafSpec::client(COUNTER);
    nosan.uri = None;
    let _ = save("nosan", ca.issue(&nosan).expect("c"));
    // Certificates naming more than one identity, or a wildcard.
    let mut two_uris = LeafSpec::client(COUNTER);
    two_uris.extra_uris = vec!["spiffe://mois.go.kr/officer/kim".into()];
    let _ = save("two-uris", ca.issue(&two_uris).expect("c"));
    let mut uri_dns = LeafSpec::client(COUNTER);
    uri_dns.dns = vec!["counter.mois.go.kr".into()];
    let _ = save("uri-and-dns", ca.issue(&uri_dns).expect("c"));
    let mut wildcard = LeafSpec::client(COUNTER);
    wildcard.uri = None;
    wildcard.dns = vec!["*.mois.go.kr".into()];
    let _ = save("wildcard", ca.issue(&wildcard).expect("c"));
    // The officers' own CA (`server.api.officer_ca`, when a test sets it):
    // officer kim's certificate from it, and a counter's it should not make.
    let officer_ca = DevCa::generate("Test Officer CA").expect("CA");
    write(&dir.join("officer-ca.pem"), officer_ca.cert_pem());
    write(
        &dir.join("officer-ca-crl.pem"),
        &officer_ca.crl(&[], 30).expect("CRL"),
    );
    let _ = save(
        "kim-officer-ca",
        officer_ca
            .issue(&LeafSpec::client(OFFICERS[0].1))
            .expect("c"),
    );
    let _ = save(
        "counter-officer-ca",
        officer_ca.issue(&LeafSpec::client(COUNTER)).expect("c"),
    );
    let other = DevCa::generate("Somebody Else's CA").expect("CA");
    let _ = save(
        "foreign",
        other.issue(&LeafSpec::client(COUNTER)).expect("c"),
    );
    write(
        &dir.join("crl.pem"),
        &ca.crl(&[&revoked.serial], 30).expect("CRL"),
    );
    // A later CRL that also revokes `counter`, for reload tests.
    write(
        &dir.join("crl-counter-revoked.pem"),
        &ca.crl(&[&revoked.serial, &counter.serial], 30)
            .expect("CRL"),
    );
}

impl Daemon {
    /// Sets up a token, keys, PKI, TLS and config, and starts the daemon.
    pub fn start(options: Options) -> Self {
        let token = SoftHsmToken::create("dojangd");
        let scratch = token.scratch().to_owned();
        let base = crate::write_config(&token);
        if options.pki_init && !options.offline_iaca {
            run_ctl(&token, &base, &["pki", "init"]);
        }
        for (label, purpose, alg) in [
            ("status-list-1", "status-list", "ES256"),
            ("pseudonym", "pseudonym", "HS256"),
            ("response-seal", "response-seal", "HS256"),
            // Ed25519 checkpoints (what tlog clients and witnesses expect);
            // p11-kit's RPC here does not carry CKM_EDDSA, so a token
            // reached through it keeps the ECDSA option (as a TPM does).
            (
                "audit-1",
                "audit",
                if options.via_p11kit { "ES256" } else { "EdDSA" },
            ),
        ] {
            run_ctl(
                &token,
                &base,
                &[
                    "keys",
                    "generate",
                    "--label",
                    label,
                    "--purpose",
                    purpose,
                    "--alg",
                    alg,
                ],
            );
        }
        let tls = scratch.join("tls");
        let server_point = options
            .tls_key_in_token
            .then(|| token_tls_key(&token, &base));
        write_tls(&tls, server_point.as_deref());
        let officers = std::sync::Arc::new(enroll_officers());
        let policy = scratch.join("policy.toml");
        let policy_text = (options.policy)(dojang_policies::SHIPPED_POLICY.to_owned())
            + &officer_blocks(&officers);
        write(&policy, &policy_text);
        let (api, public, ops) = listener_addresses();
        let store = match &options.store {
            Store::Sqlite => format!(
                "sqlite = \"{}\"\nsqlite_log_prewrite_mib = {}",
                scratch.join("registry.db").display(),
                options.sqlite_log_mib
            ),
            Store::Postgres(url) => format!("postgres = \"{url}\"\npool_size = 8"),
            Store::PostgresVerified(url, ca) => format!(
                "postgres = \"{url}\"\npool_size = 8\npostgres_ca = \"{}\"",
                ca.display()
            ),
        };
        let device = if options.via_p11kit {
            Device::P11Kit(P11KitServer::start(token))
        } else {
            Device::Direct(token)
        };
        let mut text = std::fs::read_to_string(&base).expect("base config");
        if options.via_p11kit {
            text = text.replace(
                &crate::softhsm_module().display().to_string(),
                &crate::p11kit_client_module().display().to_string(),
            );
            text = text.replace(
                "[keys.pkcs11]\n",
                "[keys.pkcs11]\nrecovery_interval_ms = 200\n",
            );
        }
        text.push_str(&format!(
            "\n[server]\nnode_id = \"{node}\"\npolicy = \"{policy}\"\npolicy_anchor = \"{anchor}\"\n{server_extra}\n\n[server.api]\nlisten = \"{api}\"\n{api_extra}\n\
             certificate = \"{tls}/server.pem\"\n{server_key}\n\
             client_ca = \"{tls}/ca.pem\"\nclient_crls = [\"{tls}/crl.pem\", \"{tls}/officer-ca-crl.pem\"]\n\n\
             [server.public]\nlisten = \"{public}\"\nbase_url = \"http://{public}\"\n{public_extra}\n\n\
             [server.ops]\nlisten = \"{ops}\"\n\n[server.audit]\norigin = \"{AUDIT_ORIGIN}\"\n\
             checkpoint_interval_ms = 300\n\n[server.limits]\n{limits}\n\n[store]\n{store}\n",
            node = options.node_id,
            policy = policy.display(),
            // The first policy, pinned outside the registry (the ceremony
            // below adopts it).
            anchor = dojang_policies::Policy::parse("policy", &policy_text)
                .expect("policy")
                .hash,
            tls = tls.display(),
            limits = options.limits,
            server_extra = options.server,
            public_extra = options.public.replace("{scratch}", &scratch.display().to_string()),
            // `{tls}` in a test's extra API settings names the TLS directory.
            api_extra = options.api.replace("{tls}", &tls.display().to_string()),
            server_key = if options.tls_key_in_token {
                "private_key_label = \"tls-server-1\"".to_owned()
            } else {
                format!("private_key = \"{}/server.key\"", tls.display())
            },
        ));
        if options.offline_iaca {
            text = text.replace(crate::ONLINE_IACA, crate::OFFLINE_IACA);
        }
        let wallet = options.wallet.as_ref().map(|extra| {
            let port = crate::ports::reserve(1);
            text.push_str(&format!(
                "\n[server.wallet]\nlisten = \"127.0.0.1:{port}\"\nbase_url = \"https://localhost:{port}\"\n\
                 certificate = \"{tls}/server.pem\"\nprivate_key = \"{tls}/server.key\"\n{extra}\n",
                tls = tls.display(),
            ));
            SocketAddr::from(([127, 0, 0, 1], port))
        });
        let config = scratch.join("dojangd.toml");
        write(&config, &text);
        let mut daemon = Daemon {
            device,
            child: None,
            api,
            public,
            ops,
            config,
            policy,
            tls,
            log: scratch.join("dojangd.log"),
            env: options.env,
            netns: None,
            officers,
            offline: options
                .offline_iaca
                .then(|| SoftHsmToken::create("dojang-iaca")),
            wallet,
        };
        if options.adopt_policy {
            // As many officers as the policy needs sign it.
            let needed = dojang_policies::Policy::parse("policy", &policy_text)
                .expect("policy")
                .officers
                .approvals_required;
            let signers: Vec<&str> = OFFICERS.iter().take(needed).map(|(n, _)| *n).collect();
            daemon.adopt_first_policy(&signers);
        }
        if options.offline_iaca {
            let _ = daemon.root_ceremony();
        }
        if options.spawn {
            daemon.spawn();
            if options.offline_iaca && options.adopt_policy {
                daemon.first_ds_ceremony();
            }
        }
        daemon
    }

    /// Starts (again) the daemon process and waits until it is ready.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let mut command = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                let _ = c
                    .args(["netns", "exec", ns])
                    .arg(crate::workspace_binary("dojangd"));
                c
            }
            None => Command::new(crate::workspace_binary("dojangd")),
        };
        let _ = command
            .arg("serve")
            .arg("--config")
            .arg(&self.config)
            .env("SOFTHSM2_CONF", self.device.conf_path())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log);
        self.child = Some(command.spawn().expect("spawn dojangd"));
        // Without an IACA the daemon runs but cannot be ready; with an
        // offline one, not before a ceremony certified a DS key.
        let path = if self.scratch().join("pki/iaca.pem").exists() && self.offline.is_none() {
            "/readyz"
        } else {
            "/healthz"
        };
        self.wait_for(path, Duration::from_secs(30));
    }

    /// Waits for `/readyz` to say 200.
    pub fn wait_ready(&mut self, timeout: Duration) {
        self.wait_for("/readyz", timeout);
    }

    fn wait_for(&mut self, path: &str, timeout: Duration) {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("dojangd exited ({status}) before ready:\n{}", self.log());
                }
            }
            let mut ops = self.ops_client();
            // The last answer names the check that failed.
            let last = match ops.try_send("GET", path, &[], Vec::new()) {
                Ok(r) if r.status == 200 => return,
                Ok(r) => format!("{} {}", r.status, r.text()),
                Err(e) => e,
            };
            assert!(
                std::time::Instant::now() < deadline,
                "dojangd: no 200 from {path} in {timeout:?} (last: {last}):\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The daemon's log so far. Its lines are written by a thread of
    /// their own a moment after they are logged (a line logged before a
    /// response may land after it): the file is read once it stopped
    /// growing for 25 ms (or after 2 s of growth, a daemon busy logging).
    pub fn log(&self) -> String {
        let size = || std::fs::metadata(&self.log).map_or(0, |m| m.len());
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        let mut seen = size();
        loop {
            std::thread::sleep(Duration::from_millis(25));
            let now = size();
            if now == seen || std::time::Instant::now() > deadline {
                break;
            }
            seen = now;
        }
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (up to 10 s) until `text` is in the daemon's log `count`
    /// times; the test fails with the log otherwise.
    pub fn wait_for_log(&self, text: &str, count: usize) {
        self.wait_until(
            Duration::from_secs(10),
            &format!("no {text:?} ({count} times) in the log"),
            || self.log().matches(text).count() >= count,
        );
    }

    /// [`crate::wait_until`], the daemon's log in the failure.
    pub fn wait_until(&self, limit: Duration, what: &str, ready: impl FnMut() -> bool) {
        crate::wait_until_explained(limit, ready, || format!("{what}:\n{}", self.log()));
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends a signal (`HUP`, `TERM`, `KILL`).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits for the process to exit; its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + timeout;
        let child = self.child.as_mut().expect("running");
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                self.child = None;
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "dojangd still running after {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A client of the API with the certificate `name` (see the TLS files).
    pub fn client(&self, name: &str) -> Client {
        Client::new(self.api_target(name, false))
    }

    /// The API as a target for `name`'s certificate (`None` name: no certificate).
    pub fn api_target(&self, name: &str, h2: bool) -> Target {
        let cert = self.tls.join(format!("{name}.pem"));
        let key = self.tls.join(format!("{name}.key"));
        let client = (!name.is_empty()).then_some((cert.as_path(), key.as_path()));
        Target::tls(self.api, &self.tls.join("ca.pem"), client, h2)
    }

    /// The officers' tokens (their SoftHSM configuration and PIN file).
    pub fn officer_tokens(&self) -> &SoftHsmToken {
        &self.officers
    }

    /// `dojangctl` with officer `name`'s token (not the daemon's).
    pub fn officer_command(&self, name: &str) -> Command {
        let mut command = officer_command(&self.officers, name);
        let _ = command.envs(self.env.iter().map(|(k, v)| (k, v)));
        command
    }

    /// Officer `name` signs the policy file as the first policy with their
    /// token (`dojangctl policy sign-first`); the signature file.
    pub fn sign_first_policy(&self, name: &str) -> PathBuf {
        let text = std::fs::read_to_string(&self.policy).expect("policy");
        let hash = dojang_policies::Policy::parse("policy", &text)
            .expect("policy")
            .hash;
        let out_file = self.scratch().join(format!("first-policy-{name}.json"));
        let out = self
            .officer_command(name)
            .args(["policy", "sign-first"])
            .arg(&self.policy)
            .arg("--out")
            .arg(&out_file)
            .args(["--expect", &hash])
            .output()
            .expect("dojangctl");
        assert!(
            out.status.success(),
            "policy sign-first: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out_file
    }

    /// The key ceremony adopting the policy file: `signers` each sign it
    /// with their token, then it is recorded in the registry.
    pub fn adopt_first_policy(&self, signers: &[&str]) {
        let signatures: Vec<PathBuf> = signers
            .iter()
            .map(|name| self.sign_first_policy(name))
            .collect();
        let out = self.record_first_policy(&signatures);
        assert!(
            out.status.success(),
            "policy adopt-first: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `dojangctl policy adopt-first` of the policy file with `signatures`
    /// (sign-first files), as it ended (which a test may expect to fail).
    pub fn record_first_policy(&self, signatures: &[PathBuf]) -> std::process::Output {
        self.command("dojangctl")
            .arg("--config")
            .arg(&self.config)
            .args(["policy", "adopt-first"])
            .arg(&self.policy)
            .args(signatures)
            .output()
            .expect("dojangctl")
    }

    /// `dojangctl` as officer `name` against this daemon's API (over mTLS),
    /// signing with the officer's token; `Err(stderr)` if it failed.
    pub fn officer_ctl(&self, name: &str, args: &[&str]) -> Result<String, String> {
        let out = self
            .officer_command(name)
            .arg("--api")
            .arg(format!("https://localhost:{}", self.api.port()))
            .arg("--officer-cert")
            .arg(self.tls.join(format!("{name}.pem")))
            .arg("--officer-key")
            .arg(self.tls.join(format!("{name}.key")))
            .arg("--ca")
            .arg(self.tls.join("ca.pem"))
            .args(args)
            .output()
            .expect("dojangctl");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// The id of the newest open proposal, as officer `name` lists them
    /// with `dojangctl --json approvals list`.
    pub fn open_proposal_id(&self, name: &str) -> String {
        let listed: serde_json::Value = serde_json::from_str(
            &self
                .officer_ctl(name, &["--json", "approvals", "list"])
                .expect("approvals list"),
        )
        .expect("JSON");
        listed
            .pointer("/proposals/0/id")
            .and_then(serde_json::Value::as_str)
            .expect("an open proposal")
            .to_owned()
    }

    /// Officer `proposer` proposes `POST path` (with `body`) and signs it,
    /// officer `approver` approves (both through `dojangctl approve
    /// --expect DIGEST`, with their tokens); the approved proposal.
    pub fn dual_control(
        &self,
        proposer: &str,
        approver: &str,
        path: &str,
        body: &serde_json::Value,
    ) -> serde_json::Value {
        let proposed = self.client(proposer).post_json(path, body, &[]);
        assert_eq!(proposed.status, 202, "{path}: {}", proposed.json());
        let proposal = proposed.json();
        let text = |name: &str| {
            proposal
                .get(name)
                .and_then(serde_json::Value::as_str)
                .expect(name)
                .to_owned()
        };
        let (id, digest) = (text("id"), text("digest"));
        let _ = self
            .officer_ctl(proposer, &["approve", &id, "--expect", &digest])
            .unwrap_or_else(|e| panic!("{proposer} signs {id}: {e}"));
        let approved = self
            .officer_ctl(approver, &["--json", "approve", &id, "--expect", &digest])
            .unwrap_or_else(|e| panic!("{approver} approves {id}: {e}"));
        serde_json::from_str(&approved).expect("JSON")
    }

    /// Officer `who` signs proposal `id` with their token (`dojangctl
    /// approve --expect` the digest the daemon lists); the proposal, or
    /// dojangctl's error.
    pub fn approve(&self, who: &str, id: &str) -> Result<serde_json::Value, String> {
        let listed = self.client(who).get("/v1/approvals").json();
        let digest = listed
            .get("proposals")
            .and_then(serde_json::Value::as_array)
            .into_iter()
            .flatten()
            .find(|p| p.get("id").is_some_and(|v| v == id))
            .and_then(|p| p.get("digest").and_then(serde_json::Value::as_str))
            .map(str::to_owned)
            .unwrap_or_else(|| panic!("no proposal {id}: {listed}"));
        self.officer_ctl(who, &["--json", "approve", id, "--expect", &digest])
            .map(|out| serde_json::from_str(&out).expect("JSON"))
    }

    /// The daemon's key records of `chain` (`GET /v1/keys` as an officer).
    pub fn chain_keys(&self, chain: &str) -> Vec<serde_json::Value> {
        let reply = self.client("kim").get("/v1/keys");
        assert_eq!(reply.status, 200, "{}", reply.json());
        reply
            .json()
            .get("keys")
            .and_then(serde_json::Value::as_array)
            .expect("keys")
            .iter()
            .filter(|k| k["chain"] == chain)
            .cloned()
            .collect()
    }

    /// The audit log's entries as text (as the auditor API serves them),
    /// once every recorded decision is placed in the log (up to 10 s).
    pub fn audit_entries(&self) -> Vec<String> {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let page = self
                .client("auditor")
                .get("/v1/audit/entries?start=0&count=1000")
                .json();
            if page.get("pending").is_some_and(|p| p == 0) || std::time::Instant::now() > deadline {
                return page
                    .get("entries")
                    .and_then(serde_json::Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(serde_json::Value::as_str)
                    .filter_map(|e| {
                        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, e).ok()
                    })
                    .map(|raw| String::from_utf8_lossy(&raw).into_owned())
                    .collect();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts `dojangd serve` a second time with this daemon's very
    /// configuration, which must refuse within 30 s; what it said.
    pub fn second_start_refused(&self) -> String {
        crate::refused_within(
            self.command("dojangd")
                .args(["serve", "--config"])
                .arg(&self.config),
            Duration::from_secs(30),
        )
    }

    /// How many of the log's entries (see [`Daemon::audit_entries`])
    /// contain `text`.
    pub fn audit_count(&self, text: &str) -> usize {
        self.audit_entries()
            .iter()
            .filter(|e| e.contains(text))
            .count()
    }

    /// The DS keys (`ds-1` first).
    pub fn keys(&self) -> Vec<serde_json::Value> {
        self.chain_keys("ds")
    }

    /// Rotates the DS key now through two officers (a new key, then its
    /// activation); the new key's label.
    pub fn rotate_now(&self) -> String {
        let _ = self.dual_control(
            "kim",
            "lee",
            "/v1/keys/rotate",
            &serde_json::json!({"chain": "ds"}),
        );
        let label = self
            .keys()
            .iter()
            .find(|k| k["state"] == "pending")
            .and_then(|k| k["label"].as_str())
            .expect("a pending key after rotation")
            .to_owned();
        let _ = self.dual_control(
            "park",
            "kim",
            &format!("/v1/keys/{label}/activate"),
            &serde_json::json!({}),
        );
        label
    }

    /// Verifies an mdoc credential (base64url IssuerSigned, as the API
    /// returns it) against this daemon's IACA, now.
    pub fn verify_mdoc(&self, credential: &str) -> dojang::credential::mdoc::VerifiedMdoc {
        let cbor = base64::Engine::decode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            credential,
        )
        .expect("base64url credential");
        dojang::credential::mdoc::verify(
            &cbor,
            &dojang::credential::verify::Trust::Iaca(self.iaca_der()),
            OffsetDateTime::now_utc(),
            Some(dojang::credential::mdoc::DOC_TYPE),
        )
        .expect("the mdoc verifies against the IACA")
    }

    /// Issues a credential of `profile` for holder `n` on a new phone, as
    /// the counter client; the reply.
    pub fn issue(&self, profile: &str, n: u32) -> crate::https::Reply {
        let (jwk, _) = phone();
        self.client("counter").post_json(
            "/v1/credentials",
            &request(profile, &number(n), &jwk),
            &[],
        )
    }

    /// [`Daemon::issue`], which must answer 201; the answer.
    pub fn issued(&self, profile: &str, n: u32) -> serde_json::Value {
        let reply = self.issue(profile, n);
        assert_eq!(
            reply.status,
            201,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        reply.json()
    }

    /// A client of the public listener.
    pub fn public_client(&self) -> Client {
        Client::new(Target::plain(self.public))
    }

    /// A client of the wallet listener (TLS, no client certificate).
    pub fn wallet_client(&self) -> Client {
        let addr = self.wallet.expect("started with a wallet listener");
        Client::new(Target::tls(addr, &self.tls.join("ca.pem"), None, false))
    }

    /// A client of the ops listener.
    pub fn ops_client(&self) -> Client {
        Client::new(Target::plain(self.ops))
    }

    /// The `p11-kit server` in front of the token, if the daemon uses one.
    pub fn p11kit(&mut self) -> &mut P11KitServer {
        match &mut self.device {
            Device::P11Kit(s) => s,
            _ => panic!("started without via_p11kit"),
        }
    }

    /// The token's objects as OpenSC's `pkcs11-tool --list-objects` lists
    /// them (labels, ids, key types, public values, attributes).
    pub fn token_objects(&self) -> String {
        let token = match &self.device {
            Device::Direct(token) => token,
            Device::P11Kit(server) => server.token(),
            Device::Shared { .. } => panic!("list the first node's token"),
        };
        let out = token.pkcs11_tool(&["--list-objects"]);
        assert!(out.status.success(), "pkcs11-tool: {out:?}");
        String::from_utf8(out.stdout).expect("listing")
    }

    /// Replaces the secret key `label` in the daemon's token with a new
    /// one of the same label and purpose (a wrong "clone").
    pub fn replace_secret_key(&self, label: &str, purpose: &str) {
        let token = match &self.device {
            Device::Direct(token) => token,
            _ => panic!("replace keys in the first node's own token"),
        };
        let out = token.pkcs11_tool(&["--delete-object", "--type", "secrkey", "--label", label]);
        assert!(out.status.success(), "pkcs11-tool: {out:?}");
        let _ = self.ctl(&[
            "keys",
            "generate",
            "--label",
            label,
            "--purpose",
            purpose,
            "--alg",
            "HS256",
        ]);
    }

    /// The IACA certificate (DER).
    pub fn iaca_der(&self) -> Vec<u8> {
        let pem = std::fs::read(self.device.scratch().join("pki/iaca.pem")).expect("iaca");
        openssl::x509::X509::from_pem(&pem)
            .and_then(|c| c.to_der())
            .expect("IACA PEM")
    }

    /// `binary` (`dojangd`, `dojangctl`) set up for the daemon's token, to
    /// run with arguments of the caller's (and fail, if it must).
    pub fn command(&self, binary: &str) -> Command {
        let mut command = Command::new(crate::workspace_binary(binary));
        let _ = command
            .env("SOFTHSM2_CONF", self.device.conf_path())
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        command
    }

    /// Runs `dojangctl` against the daemon's token (while it runs), and
    /// asserts that it succeeded; its standard output.
    pub fn ctl(&self, args: &[&str]) -> String {
        let out = self.try_ctl(args);
        assert!(
            out.status.success(),
            "dojangctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `dojangctl audit export` into the scratch directory as `name.json`
    /// and the audit key as `name.pem`; (bundle, key).
    pub fn export_audit(&self, name: &str) -> (PathBuf, PathBuf) {
        let bundle = self.scratch().join(format!("{name}.json"));
        let key = self.scratch().join(format!("{name}.pem"));
        let _ = self.ctl(&[
            "audit",
            "export",
            "--out",
            &bundle.display().to_string(),
            "--key-out",
            &key.display().to_string(),
        ]);
        (bundle, key)
    }

    /// Runs `dojangctl` against the daemon's token, which may refuse.
    pub fn try_ctl(&self, args: &[&str]) -> std::process::Output {
        self.command("dojangctl")
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .output()
            .expect("dojangctl")
    }

    /// A second node on the same token, PKI, TLS files, policy and store,
    /// with its own ports and `node_id`. Drop it before `self`.
    pub fn second_node(&self, node_id: &str) -> Daemon {
        self.sibling(
            Some(node_id),
            listener_addresses(),
            None,
            &self.device.conf_path(),
            None,
        )
    }

    /// A node of this cluster at another site of a drill: its listeners
    /// on the site's address inside its namespace, its registry at
    /// `store_url` (in place of this node's), its token the SoftHSM
    /// configuration `token_conf` (this one's, or a clone's). Drop it
    /// before `self`.
    pub fn node_at(
        &self,
        node_id: &str,
        site: &crate::sites::Site,
        store_url: &str,
        token_conf: &Path,
    ) -> Daemon {
        let first = crate::ports::reserve(3);
        let at = |port| SocketAddr::from((site.ip, port));
        let addresses = (at(first), at(first + 1), at(first + 2));
        self.sibling(
            Some(node_id),
            addresses,
            Some(store_url),
            token_conf,
            Some(site),
        )
    }

    /// A second process of this very node (same `node_id`, store, token
    /// and files) on listeners of its own: what a unit started twice or a
    /// copied configuration runs. Started; drop it before `self`.
    pub fn twin(&self) -> Daemon {
        self.sibling(
            None,
            listener_addresses(),
            None,
            &self.device.conf_path(),
            None,
        )
    }

    /// Another process from this one's configuration: its own listeners
    /// and log, its own node id (`None`: this one's), and perhaps
    /// registry, token and site; started.
    fn sibling(
        &self,
        rename: Option<&str>,
        (api, public, ops): (SocketAddr, SocketAddr, SocketAddr),
        store_url: Option<&str>,
        token_conf: &Path,
        site: Option<&crate::sites::Site>,
    ) -> Daemon {
        let mut text = std::fs::read_to_string(&self.config)
            .expect("config")
            .replace(&self.api.to_string(), &api.to_string())
            .replace(&self.public.to_string(), &public.to_string())
            .replace(&self.ops.to_string(), &ops.to_string());
        if let Some(node_id) = rename {
            text = text.replace("node_id = \"", &format!("node_id = \"{node_id}-"));
        }
        let name = rename.unwrap_or("twin");
        // The first node's wallet listener stays its own.
        if let Some(at) = text.find("\n[server.wallet]") {
            let end = text[at + 1..]
                .find("\n[")
                .map_or(text.len(), |e| at + 1 + e);
            text.replace_range(at..end, "");
        }
        if let Some(url) = store_url {
            let store = text
                .lines()
                .find(|l| l.starts_with("postgres = "))
                .expect("a node of a PostgreSQL cluster")
                .to_owned();
            text = text.replace(&store, &format!("postgres = \"{url}\""));
        }
        let config = self.scratch().join(format!("{name}.toml"));
        write(&config, &text);
        let mut daemon = Daemon {
            device: Device::Shared {
                conf: token_conf.to_owned(),
                scratch: self.scratch().to_owned(),
            },
            child: None,
            api,
            public,
            ops,
            config,
            policy: self.policy.clone(),
            tls: self.tls.clone(),
            log: self.scratch().join(format!("{name}.log")),
            env: self.env.clone(),
            netns: site.map(|s| s.netns.clone()),
            officers: self.officers.clone(),
            offline: None,
            // Another node's copy of the config names the first's wallet
            // port: a second node is started without a wallet listener.
            wallet: None,
        };
        daemon.spawn();
        daemon
    }

    /// The SoftHSM configuration of the daemon's token.
    pub fn token_conf(&self) -> PathBuf {
        self.device.conf_path()
    }

    /// Points this process's `SOFTHSM2_CONF` at the daemon's token (for a
    /// service run in-process; see [`Options::spawn`]).
    pub fn activate_token(&self) {
        match &self.device {
            Device::Direct(token) => token.activate(),
            _ => panic!("in-process use needs the token directly"),
        }
    }

    /// The status of entry `idx` in the list at `uri`, from the signed
    /// token verified with the status-list key the JWKS publishes.
    pub fn status_bit(&self, uri: &str, idx: u64) -> u8 {
        let path = uri
            .strip_prefix(&format!("http://{}", self.public))
            .expect("status URI on the public listener");
        let verified = self.status_token_at(path);
        assert_eq!(verified.uri, uri);
        verified.list.get(idx).expect("index in the list")
    }

    /// The status list this node serves at `path` (`/status/N`, or
    /// `/status/N.cwt` for the CBOR form), verified with a status-list key
    /// its status JWKS publishes, never one of the issuer's JWKS.
    pub fn status_token_at(&self, path: &str) -> dojang::status::StatusListToken {
        let d = self;
        let token = d.public_client().get(path);
        assert_eq!(token.status, 200, "{path}");
        let issuer_keys = d.public_client().get("/.well-known/jwks.json").json();
        let issuer_kids: Vec<&serde_json::Value> = issuer_keys
            .get("keys")
            .and_then(serde_json::Value::as_array)
            .expect("issuer JWKS")
            .iter()
            .filter_map(|k| k.get("kid"))
            .collect();
        let status_keys = d.public_client().get("/status/jwks.json").json();
        let keys: Vec<(serde_json::Value, pkcs11_shim::PublicKey)> = status_keys
            .get("keys")
            .and_then(serde_json::Value::as_array)
            .expect("status JWKS")
            .iter()
            .map(|k| {
                let jwk: pkcs11_shim::Jwk = serde_json::from_value(k.clone()).expect("status key");
                let public = pkcs11_shim::public_key_from_jwk(&jwk).expect("status key");
                (k.get("kid").cloned().unwrap_or_default(), public)
            })
            .collect();
        assert!(
            !keys.iter().any(|(kid, _)| issuer_kids.contains(&kid)),
            "a status-list key in the issuer's JWKS"
        );
        if path.ends_with(".cwt") {
            assert_eq!(
                token.header("content-type"),
                Some("application/statuslist+cwt")
            );
            return keys
                .iter()
                .find_map(|(_, key)| dojang::status::verify_cwt(&token.body, key).ok())
                .expect("a CWT status token a published status key verifies");
        }
        assert_eq!(
            token.header("content-type"),
            Some("application/statuslist+jwt")
        );
        let token_text = String::from_utf8(token.body).expect("status token");
        let header: serde_json::Value = serde_json::from_slice(
            &base64::Engine::decode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                token_text.split('.').next().expect("status token"),
            )
            .expect("status token"),
        )
        .expect("status token");
        let jku = header
            .get("jku")
            .and_then(serde_json::Value::as_str)
            .expect("jku");
        assert!(jku.ends_with("/status/jwks.json"), "{jku}");
        let (_, key) = keys
            .iter()
            .find(|(kid, _)| Some(kid) == header.get("kid"))
            .expect("the status-list key in the status JWKS");
        dojang::status::verify_token(&token_text, key).expect("status token")
    }

    /// The scratch directory.
    pub fn scratch(&self) -> &Path {
        self.device.scratch()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A fresh P-256 key standing in for a phone: (JWK, private key).
pub fn phone() -> (
    serde_json::Value,
    openssl::pkey::PKey<openssl::pkey::Private>,
) {
    use base64::Engine;
    use openssl::ec::{EcGroup, EcKey, PointConversionForm};
    let group = EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1).expect("P-256");
    let key = EcKey::generate(&group).expect("key");
    let mut ctx = openssl::bn::BigNumContext::new().expect("ctx");
    let point = key
        .public_key()
        .to_bytes(&group, PointConversionForm::UNCOMPRESSED, &mut ctx)
        .expect("point");
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    // 04 || X || Y, 32 bytes each.
    let (x, y) = point
        .split_first()
        .filter(|(tag, xy)| **tag == 0x04 && xy.len() == 64)
        .map(|(_, xy)| xy.split_at(32))
        .expect("an uncompressed P-256 point");
    let jwk = serde_json::json!({
        "kty": "EC", "crv": "P-256", "x": b64(x), "y": b64(y),
    });
    (jwk, openssl::pkey::PKey::from_ec_key(key).expect("pkey"))
}

/// A valid issuance request for `profile`, holder number `number`
/// (`YYMMDD-GNNNNNN`), phone `jwk`.
pub fn request(profile: &str, number: &str, jwk: &serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "profile": profile,
        "holder": {
            "family_name": "홍",
            "given_name": "길동",
            "resident_number": number,
            "address": "서울특별시 종로구 세종대로 209",
        },
        "device_key": jwk,
        "channel": "ic_card",
        "municipality": "1111000000",
        "first_time": true,
        "card": {"issue_date": "2021-03-02", "serial": "SN-00000001"},
    })
}

/// A resident number of a citizen born 2000-05-15 with serial `n`.
pub fn number(n: u32) -> String {
    format!("000515-3{:06}", n % 1_000_000)
}

/// The PostgreSQL the tests use.
pub const PG_ADMIN: &str = "host=127.0.0.1 port=5432 user=postgres dbname=test connect_timeout=3";

/// A fresh PostgreSQL schema, dropped at the end.
pub struct PgSchema {
    /// Its name.
    pub name: String,
    /// A connection string whose search path is the schema.
    pub url: String,
}

impl PgSchema {
    /// A fresh schema; `None` with a loud message when PostgreSQL is not
    /// reachable outside CI (in CI it must be: the test fails).
    pub fn create() -> Option<Self> {
        let mut client = match PG_ADMIN
            .parse::<postgres::Config>()
            .and_then(|c| c.connect(postgres::NoTls))
        {
            Ok(c) => c,
            Err(e) if std::env::var_os("CI").is_none() => {
                eprintln!(
                    "SKIPPED: PostgreSQL not reachable at 127.0.0.1:5432 ({e}); CI runs this test"
                );
                return None;
            }
            Err(e) => panic!("PostgreSQL must be reachable in CI: {e}"),
        };
        let mut random = [0u8; 6];
        openssl::rand::rand_bytes(&mut random).expect("random");
        let name = format!(
            "dj_{}",
            random
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
        client
            .batch_execute(&format!("CREATE SCHEMA {name}"))
            .expect("create schema");
        let url = format!("{PG_ADMIN} options='-c search_path={name}'");
        Some(PgSchema { name, url })
    }

    /// An admin connection.
    pub fn admin() -> postgres::Client {
        PG_ADMIN
            .parse::<postgres::Config>()
            .and_then(|c| c.connect(postgres::NoTls))
            .expect("PostgreSQL")
    }

    /// An insider's transaction on `client` holding every free-copy quota
    /// shard of this schema (as statements in flight would), until it ends.
    pub fn hold_quota_shards<'c>(
        &self,
        client: &'c mut postgres::Client,
    ) -> postgres::Transaction<'c> {
        let mut shards = client.transaction().expect("BEGIN");
        let locked = shards
            .query(
                &format!("SELECT shard FROM {}.quota_shards FOR UPDATE", self.name),
                &[],
            )
            .expect("locking the quota shards");
        assert_eq!(locked.len(), 64, "every shard (migration 17: 64)");
        shards
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        if let Ok(mut c) = PG_ADMIN
            .parse::<postgres::Config>()
            .and_then(|c| c.connect(postgres::NoTls))
        {
            let _ = c.batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name));
        }
    }
}
