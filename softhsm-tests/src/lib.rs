//! Fixtures for tests against the real thing: a fresh SoftHSM token per test,
//! SoftHSM served through `p11-kit server` (a PKCS#11 "network" we can cut),
//! and an `swtpm` on loopback. Each fixture owns its temp dir and child
//! processes and cleans them up on drop.
//!
//! PKCS#11 reads its configuration (`SOFTHSM2_CONF`, `P11_KIT_SERVER_ADDRESS`)
//! from the process environment at `C_Initialize`, and Dojang keeps one
//! context per process, so each test that opens a token must run in its own
//! process: run these suites with `cargo nextest` (as `make test` does).

#![forbid(unsafe_code)]
// Test code: these fixtures fail the test that called them, with a message,
// when the environment cannot be set up (a package missing, a daemon that
// will not start), as their `assert!`s do. Returning errors instead would
// only move each panic into an `.unwrap()` at every call site in tests/.
#![allow(clippy::expect_used, clippy::panic)]

pub mod abuse;
pub mod ceremony;
pub mod daemon;
pub mod https;
pub mod pg;
pub mod ports;
pub mod sites;
pub mod synthetic;
pub mod web;

use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// The user PIN of every test token.
pub const USER_PIN: &str = "246813";
/// The security-officer PIN of every test token.
pub const SO_PIN: &str = "97531086";

/// Where Debian puts the SoftHSM module.
pub const SOFTHSM_MODULES: &[&str] = &[
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
];

/// Where Debian puts p11-kit's client module.
pub const P11KIT_CLIENT_MODULES: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so",
    "/usr/lib/aarch64-linux-gnu/pkcs11/p11-kit-client.so",
];

fn first_existing(candidates: &[&str], what: &str) -> PathBuf {
    candidates
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{what} not found in {candidates:?}: run `make deps`"))
}

/// The SoftHSM PKCS#11 module.
pub fn softhsm_module() -> PathBuf {
    first_existing(SOFTHSM_MODULES, "SoftHSM module")
}

/// p11-kit's client module (talks to a `p11-kit server` socket).
pub fn p11kit_client_module() -> PathBuf {
    first_existing(P11KIT_CLIENT_MODULES, "p11-kit client module")
}

static ENV_OWNER: Mutex<Option<String>> = Mutex::new(None);

/// Sets a process-wide variable once per process; a second, different value
/// means two tests share a process, which PKCS#11 cannot support.
fn set_process_env(key: &str, value: &str) {
    let mut owner = ENV_OWNER.lock().unwrap_or_else(|e| e.into_inner());
    let entry = format!("{key}={value}");
    match owner.as_deref() {
        Some(previous) if previous.starts_with(&format!("{key}=")) && previous != entry => panic!(
            "a second PKCS#11 environment in one process ({previous} then {entry}): \
             run these tests with `cargo nextest run`, one test per process"
        ),
        _ => {}
    }
    std::env::set_var(key, value);
    *owner = Some(entry);
}

/// A fresh, initialised SoftHSM token in its own directory.
pub struct SoftHsmToken {
    dir: TempDir,
    label: String,
}

impl SoftHsmToken {
    /// Creates and initialises a token labelled `label`. Does not touch the
    /// process environment (see [`SoftHsmToken::activate`]).
    pub fn create(label: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("dojang-softhsm-")
            .tempdir()
            .expect("temp dir");
        std::fs::create_dir(dir.path().join("tokens")).expect("token dir");
        std::fs::write(
            dir.path().join("softhsm2.conf"),
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
                dir.path().join("tokens").display()
            ),
        )
        .expect("softhsm2.conf");
        std::fs::write(dir.path().join("pin"), format!("{USER_PIN}\n")).expect("pin file");
        let token = SoftHsmToken {
            dir,
            label: label.to_owned(),
        };
        token.init_token(label);
        token
    }

    /// Initialises another token, labelled `label`, beside this one (same
    /// SoftHSM configuration and PINs): a development token, an officer's.
    pub fn init_token(&self, label: &str) {
        let out = Command::new("softhsm2-util")
            .args(["--init-token", "--free", "--label", label])
            .args(["--pin", USER_PIN, "--so-pin", SO_PIN])
            .env("SOFTHSM2_CONF", self.conf_path())
            .output()
            .expect("softhsm2-util (run `make deps`)");
        assert!(
            out.status.success(),
            "softhsm2-util --init-token failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Creates a token and points this process's `SOFTHSM2_CONF` at it.
    pub fn new(label: &str) -> Self {
        let token = Self::create(label);
        token.activate();
        token
    }

    /// Points this process's `SOFTHSM2_CONF` at this token.
    pub fn activate(&self) {
        set_process_env("SOFTHSM2_CONF", &self.conf_path().to_string_lossy());
    }

    /// The token's label.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The SoftHSM configuration file.
    pub fn conf_path(&self) -> PathBuf {
        self.dir.path().join("softhsm2.conf")
    }

    /// Where SoftHSM keeps the token's objects.
    pub fn token_dir(&self) -> PathBuf {
        self.dir.path().join("tokens")
    }

    /// A file holding the user PIN.
    pub fn pin_file(&self) -> PathBuf {
        self.dir.path().join("pin")
    }

    /// A scratch directory that lives as long as the token.
    pub fn scratch(&self) -> &Path {
        self.dir.path()
    }

    /// Runs OpenSC's `pkcs11-tool` against this token, logged in.
    pub fn pkcs11_tool(&self, args: &[&str]) -> std::process::Output {
        Command::new("pkcs11-tool")
            .arg("--module")
            .arg(softhsm_module())
            .args(["--token-label", &self.label, "--login", "--pin", USER_PIN])
            .args(args)
            .env("SOFTHSM2_CONF", self.conf_path())
            .output()
            .expect("pkcs11-tool (run `make deps`)")
    }
}

/// A child process killed on drop.
struct Guarded(Child);

impl Drop for Guarded {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// SoftHSM behind `p11-kit server` on a Unix socket: the test's stand-in for
/// a network HSM whose connection can be cut and restored.
pub struct P11KitServer {
    token: SoftHsmToken,
    socket: PathBuf,
    child: Option<Guarded>,
}

impl P11KitServer {
    /// Starts a server for `token` and points this process's
    /// `P11_KIT_SERVER_ADDRESS` at it.
    pub fn start(token: SoftHsmToken) -> Self {
        let socket = token.scratch().join("p11kit.sock");
        set_process_env(
            "P11_KIT_SERVER_ADDRESS",
            &format!("unix:path={}", socket.display()),
        );
        let mut server = P11KitServer {
            token,
            socket,
            child: None,
        };
        server.restart();
        server
    }

    /// The token behind the server.
    pub fn token(&self) -> &SoftHsmToken {
        &self.token
    }

    /// Freezes the server and its per-connection processes (SIGSTOP to the
    /// group): every call through it hangs, as on a hung network HSM.
    pub fn freeze(&self) {
        self.signal_group("-STOP");
    }

    /// Lets a frozen server run again (SIGCONT).
    pub fn thaw(&self) {
        self.signal_group("-CONT");
    }

    fn signal_group(&self, signal: &str) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .args([signal, "--", &format!("-{}", child.0.id())])
                .status();
        }
    }

    /// Kills the server and the per-connection processes it forked (SIGKILL
    /// to its process group): every client connection drops.
    pub fn kill(&mut self) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.0.id())])
                .status();
        }
        self.child = None;
        let _ = std::fs::remove_file(&self.socket);
    }

    /// (Re)starts the server on the same socket.
    pub fn restart(&mut self) {
        self.kill();
        let child = Command::new("p11-kit")
            .args(["server", "-f", "-n"])
            .arg(&self.socket)
            .arg("--provider")
            .arg(softhsm_module())
            .arg(format!("pkcs11:token={}", self.token.label()))
            .env("SOFTHSM2_CONF", self.token.conf_path())
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("p11-kit server (run `make deps`)");
        self.child = Some(Guarded(child));
        // The socket file appears at bind, before listen: a client that
        // connects in between finds no token.
        wait_until(
            Duration::from_secs(10),
            "the p11-kit server is not listening",
            || std::os::unix::net::UnixStream::connect(&self.socket).is_ok(),
        );
    }
}

/// A software TPM (`swtpm`) on loopback TCP, with its state in a temp dir.
pub struct Swtpm {
    state: TempDir,
    port: u16,
    child: Option<Guarded>,
}

/// Waits until `ready` holds, looking at once, then every 20 ms and less
/// often up to every 200 ms; after `limit` the test fails saying `what`
/// (what did not happen).
pub fn wait_until(limit: Duration, what: &str, ready: impl FnMut() -> bool) {
    wait_until_explained(limit, ready, || what.to_owned());
}

/// [`wait_until`], the failure's text made only when it fails (a
/// daemon's log, say).
pub fn wait_until_explained(
    limit: Duration,
    mut ready: impl FnMut() -> bool,
    failure: impl FnOnce() -> String,
) {
    let deadline = Instant::now() + limit;
    let mut pause = Duration::from_millis(20);
    while !ready() {
        assert!(
            Instant::now() < deadline,
            "{} (waited {limit:?})",
            failure()
        );
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

impl Swtpm {
    /// Starts a fresh TPM.
    pub fn start() -> Self {
        let state = tempfile::Builder::new()
            .prefix("dojang-swtpm-")
            .tempdir()
            .expect("temp dir");
        let mut tpm = Swtpm {
            state,
            port: ports::reserve(2),
            child: None,
        };
        tpm.restart();
        tpm
    }

    /// The TCTI string for `tss-esapi`.
    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    /// A directory beside the TPM state for key blobs and the like.
    pub fn scratch(&self) -> PathBuf {
        self.state.path().join("scratch")
    }

    /// Kills the TPM (as a power loss would).
    pub fn kill(&mut self) {
        self.child = None;
    }

    /// (Re)starts the TPM on the same state and ports; it powers up and runs
    /// TPM2_Startup(CLEAR) itself, so transient objects are gone.
    pub fn restart(&mut self) {
        self.kill();
        let state_dir = self.state.path().join("state");
        std::fs::create_dir_all(&state_dir).expect("swtpm state dir");
        let child = Command::new("swtpm")
            .args(["socket", "--tpm2"])
            .arg("--tpmstate")
            .arg(format!("dir={}", state_dir.display()))
            .arg("--server")
            .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", self.port))
            .arg("--ctrl")
            .arg(format!(
                "type=tcp,port={},bindaddr=127.0.0.1",
                self.port + 1
            ))
            .args(["--flags", "not-need-init,startup-clear"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("swtpm (run `make deps`)");
        self.child = Some(Guarded(child));
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        wait_until(Duration::from_secs(10), "swtpm is not listening", || {
            TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok()
        });
    }
}

/// A workspace binary (`dojangctl`, `dojangd`) from the same target
/// directory as the running test. `make test` builds them first.
pub fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let path = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join(name))
        .expect("target directory");
    assert!(
        path.exists(),
        "{} not built: run `cargo build --workspace --bins` first (make test does)",
        path.display()
    );
    path
}

/// The `[pki]` line of the suites written before the IACA went offline:
/// they certify DS keys with the IACA key in the daemon's token (`pki init`,
/// online rotation). The offline suite replaces it ([`OFFLINE_IACA`]).
pub const ONLINE_IACA: &str = "iaca_custody = \"online\"";
/// The `[pki]` line of the offline IACA (the default).
pub const OFFLINE_IACA: &str = "iaca_custody = \"offline\"";

/// The independent ISO 18013-5 Annex B validator (isomdl's
/// `ValidationRuleset::Mdl`, `softhsm-tests/annexb`), which `make build`
/// builds into `target/annexb`.
pub fn annexb_validator() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test> -> target/annexb/debug/annexb-validate
    let path = exe
        .ancestors()
        .nth(3)
        .map(|target| target.join("annexb/debug/annexb-validate"))
        .expect("target directory");
    assert!(
        path.exists(),
        "{} not built: run `make build` (make test does)",
        path.display()
    );
    path
}

/// Writes a `dojang.toml` for `token` into its scratch dir and returns its
/// path: the key backend, a `[pki]` under `scratch/pki` and a `[credential]`.
pub fn write_config(token: &SoftHsmToken) -> PathBuf {
    let path = token.scratch().join("dojang.toml");
    let pki = format!(
        "\n[pki]\ndir = \"{}\"\norganization = \"Ministry of the Interior and Safety\"\n\
         iaca_common_name = \"Dojang Test IACA\"\nissuer_alt_name = \"https://id.example.kr\"\n\
         crl_url = \"https://id.example.kr/iaca.crl\"\n{ONLINE_IACA}\n\n[credential]\nissuer = \"https://id.example.kr\"\n\
         issuing_authority = \"서울특별시 종로구청장\"\n",
        token.scratch().join("pki").display()
    );
    std::fs::write(
        &path,
        format!(
            "[keys]\nbackend = \"pkcs11\"\n\n[keys.pkcs11]\nmodule = \"{}\"\ntoken_label = \"{}\"\npin = {{ file = \"{}\" }}\n",
            softhsm_module().display(),
            token.label(),
            token.pin_file().display()
        ) + &pki,
    )
    .expect("write dojang.toml");
    path
}

/// Runs `dojangctl --config <token's dojang.toml> ARGS` with the token's
/// SoftHSM configuration in its environment.
pub fn dojangctl(token: &SoftHsmToken, args: &[&str]) -> std::process::Output {
    Command::new(workspace_binary("dojangctl"))
        .arg("--config")
        .arg(write_config(token))
        .args(args)
        .env("SOFTHSM2_CONF", token.conf_path())
        .output()
        .expect("run dojangctl")
}

/// A software P-256 key: an insider's own, or an officer's stand-in where a
/// test signs in-process.
pub fn p256_key() -> openssl::pkey::PKey<openssl::pkey::Private> {
    let group =
        openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1).expect("P-256");
    openssl::pkey::PKey::from_ec_key(openssl::ec::EcKey::generate(&group).expect("key"))
        .expect("key")
}

/// An ES256 signature of `message` by `key` as an officer's token makes
/// one for the daemon: base64url of raw `r || s`.
pub fn es256_signature(
    key: &openssl::pkey::PKey<openssl::pkey::Private>,
    message: &[u8],
) -> String {
    let mut signer =
        openssl::sign::Signer::new(openssl::hash::MessageDigest::sha256(), key).expect("signer");
    let der = signer.sign_oneshot_to_vec(message).expect("signature");
    let raw = pkcs11_shim::ecdsa_der_to_raw(&der, 32).expect("raw signature");
    base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, raw)
}

/// The serial numbers a CRL lists (empty if it lists none).
pub fn crl_serials(crl: &openssl::x509::X509CrlRef) -> Vec<Vec<u8>> {
    crl.get_revoked()
        .map(|revoked| {
            revoked
                .iter()
                .map(|r| r.serial_number().to_bn().expect("serial").to_vec())
                .collect()
        })
        .unwrap_or_default()
}

/// Runs `command`, a program that must refuse to start: it has to exit,
/// unsuccessfully, within `timeout` (one still running then is killed and
/// the test fails). What it said on its standard error.
pub fn refused_within(command: &mut std::process::Command, timeout: Duration) -> String {
    // A file, not a pipe: a child that says more than a pipe holds must
    // not block and pass for one that started.
    let mut stderr = tempfile::tempfile().expect("a temporary file");
    let mut child = command
        .stdout(std::process::Stdio::null())
        .stderr(stderr.try_clone().expect("the temporary file"))
        .spawn()
        .expect("spawning");
    let deadline = std::time::Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{command:?} started: it should have refused");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut said = String::new();
    let _ = std::io::Seek::rewind(&mut stderr);
    let _ = std::io::Read::read_to_string(&mut stderr, &mut said);
    assert!(!status.success(), "{said}");
    said
}
