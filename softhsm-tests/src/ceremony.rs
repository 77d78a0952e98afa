//! The offline IACA's ceremonies as a test holds them, through
//! `dojangctl ceremony`: officers' tokens sign each record, the IACA token
//! (a SoftHSM configuration the daemon never names) acts, and officer kim
//! carries requests and responses over the daemon's mTLS API.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::daemon::Daemon;

/// Numbers the files of a test's ceremonies.
static CEREMONY: AtomicU32 = AtomicU32::new(0);

fn succeeded(what: &str, out: &Output) -> String {
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Daemon {
    fn ceremony_file(&self, name: &str) -> PathBuf {
        let n = CEREMONY.fetch_add(1, Ordering::Relaxed);
        self.scratch().join(format!("ceremony-{n}-{name}"))
    }

    fn ceremony_ctl(&self) -> Command {
        let mut command = self.command("dojangctl");
        let _ = command.arg("--config").arg(&self.config);
        command
    }

    /// `ceremony record` (`--root`, or `--request FILE`); the record file.
    pub fn ceremony_record(&self, args: &[&str]) -> PathBuf {
        let out_file = self.ceremony_file("record.json");
        let out = self
            .ceremony_ctl()
            .args(["ceremony", "record", "--policy"])
            .arg(&self.policy)
            .arg("--out")
            .arg(&out_file)
            .args(args)
            .output()
            .expect("dojangctl");
        let _ = succeeded("ceremony record", &out);
        out_file
    }

    /// Officer `who` signs `record` with their token; the signature file.
    pub fn ceremony_sign(&self, who: &str, record: &Path) -> PathBuf {
        let parsed: dojang::pki::exchange::CeremonyRecord =
            serde_json::from_slice(&std::fs::read(record).expect("record")).expect("record");
        let digest = dojang::keys::order::digest(&parsed.bytes());
        let out_file = self.ceremony_file(&format!("{who}.sig"));
        let out = self
            .officer_command(who)
            .args(["ceremony", "sign"])
            .arg(record)
            .arg("--policy")
            .arg(&self.policy)
            .arg("--out")
            .arg(&out_file)
            .args(["--expect", &digest])
            .output()
            .expect("dojangctl");
        let _ = succeeded("ceremony sign", &out);
        out_file
    }

    /// `ceremony run` on the offline IACA token, as it ended; the response
    /// is written to `out`.
    pub fn ceremony_run(
        &self,
        record: &Path,
        signatures: &[PathBuf],
        request: Option<&Path>,
        out: &Path,
    ) -> Output {
        let token = self.offline.as_ref().expect("an offline IACA");
        let mut command = self.ceremony_ctl();
        let _ = command
            .env("SOFTHSM2_CONF", token.conf_path())
            .args(["ceremony", "run"])
            .arg(record)
            .args(signatures)
            .arg("--policy")
            .arg(&self.policy)
            .args(["--iaca-token", token.label(), "--iaca-module"])
            .arg(crate::softhsm_module())
            .arg("--iaca-pin-file")
            .arg(token.pin_file())
            .arg("--out")
            .arg(out);
        if let Some(request) = request {
            let _ = command.arg("--request").arg(request);
        }
        command.output().expect("dojangctl")
    }

    /// The root ceremony (kim and lee sign): the IACA key in the offline
    /// token, `pki/iaca.pem` and the first CRL; the response file.
    pub fn root_ceremony(&self) -> PathBuf {
        let record = self.ceremony_record(&["--root"]);
        let signatures = [
            self.ceremony_sign("kim", &record),
            self.ceremony_sign("lee", &record),
        ];
        let out = self.ceremony_file("root-response.json");
        let _ = succeeded(
            "ceremony run --root",
            &self.ceremony_run(&record, &signatures, None, &out),
        );
        out
    }

    /// Officer kim asks the daemon for a ceremony request; its file.
    pub fn ceremony_request(&self) -> PathBuf {
        let out = self.ceremony_file("request.json");
        let path = out.display().to_string();
        let _ = self
            .officer_ctl("kim", &["ceremony", "request", "--out", &path])
            .unwrap_or_else(|e| panic!("ceremony request: {e}"));
        out
    }

    /// A certify ceremony over `request` (kim and lee sign); the response.
    pub fn certify(&self, request: &Path) -> PathBuf {
        let path = request.display().to_string();
        let record = self.ceremony_record(&["--request", &path]);
        let signatures = [
            self.ceremony_sign("kim", &record),
            self.ceremony_sign("lee", &record),
        ];
        let out = self.ceremony_file("response.json");
        let _ = succeeded(
            "ceremony run",
            &self.ceremony_run(&record, &signatures, Some(request), &out),
        );
        out
    }

    /// Officer kim brings `response` to the daemon: its summary, or
    /// dojangctl's error (the problem's code and rule).
    pub fn import_ceremony(&self, response: &Path) -> Result<String, String> {
        let path = response.display().to_string();
        self.officer_ctl("kim", &["ceremony", "import", &path])
    }

    /// The value of gauge `dojang_ds_spare_keys{state}`.
    pub fn spare_keys(&self, state: &str) -> i64 {
        let text = String::from_utf8(self.ops_client().get("/metrics").body).expect("metrics");
        let prefix = format!("dojang_ds_spare_keys{{state=\"{state}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(-1)
    }

    /// Waits until the pool holds `n` keys waiting for a ceremony.
    pub fn wait_for_uncertified(&self, n: i64) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.spare_keys("uncertified") < n {
            assert!(Instant::now() < deadline, "no {n} spares:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The first DS ceremony: once the daemon generated its spares (the
    /// root's record imported first), they are certified and it is ready.
    pub fn first_ds_ceremony(&mut self) {
        let root = self
            .scratch()
            .read_dir()
            .expect("scratch")
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.display().to_string().ends_with("root-response.json"))
            .expect("the root ceremony's response");
        let _ = self
            .import_ceremony(&root)
            .unwrap_or_else(|e| panic!("importing the root record: {e}"));
        self.wait_for_uncertified(3);
        let response = self.certify(&self.ceremony_request());
        let _ = self
            .import_ceremony(&response)
            .unwrap_or_else(|e| panic!("importing the DS ceremony: {e}"));
        self.wait_ready(Duration::from_secs(20));
    }
}
