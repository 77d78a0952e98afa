//! Backend configuration (the `[keys]` table of `dojang.toml`), validated
//! before anything touches a device. [`crate::open()`] builds the backend from it.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::pin::SecretSource;

/// Which backend holds the keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// A PKCS#11 token (SoftHSM, a network HSM, a smart card).
    Pkcs11,
    /// A TPM 2.0 (device or swtpm).
    Tpm,
}

/// The `[keys]` table: which backend, and that backend's own table
/// (`[keys.pkcs11]` or `[keys.tpm]`). Plain structs rather than a tagged
/// enum so a mistake is reported at its own line.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// The backend in use.
    pub backend: BackendKind,
    /// Settings when `backend = "pkcs11"`.
    #[serde(default)]
    pub pkcs11: Option<Pkcs11Config>,
    /// Settings when `backend = "tpm"`.
    #[serde(default)]
    pub tpm: Option<TpmConfig>,
}

/// A PKCS#11 token, selected by label or serial (never by slot number: slot
/// ids change when tokens are initialised).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pkcs11Config {
    /// Path of the PKCS#11 module, e.g. `/usr/lib/softhsm/libsofthsm2.so`.
    pub module: PathBuf,
    /// Token label (exactly one of `token_label` and `token_serial`).
    #[serde(default)]
    pub token_label: Option<String>,
    /// Token serial number.
    #[serde(default)]
    pub token_serial: Option<String>,
    /// Where the user PIN comes from.
    pub pin: SecretSource,
    /// Logged-in sessions kept open for signing (one per concurrent signer).
    #[serde(default = "default_sessions")]
    pub sessions: usize,
    /// How long a signer waits for a free session before a `Busy` error.
    #[serde(default = "default_session_wait_ms")]
    pub session_wait_ms: u64,
    /// Minimum time between two reconnection attempts after a device loss.
    #[serde(default = "default_recovery_interval_ms")]
    pub recovery_interval_ms: u64,
}

fn default_sessions() -> usize {
    4
}
fn default_session_wait_ms() -> u64 {
    2_000
}
fn default_recovery_interval_ms() -> u64 {
    1_000
}

/// Upper bound on the session pool: tokens limit sessions, and more sessions
/// than signing threads buys nothing.
pub const MAX_SESSIONS: usize = 256;

impl Pkcs11Config {
    /// A config for `module` and token `label`, PIN from `pin`, defaults elsewhere.
    pub fn new(module: impl Into<PathBuf>, label: impl Into<String>, pin: SecretSource) -> Self {
        Pkcs11Config {
            module: module.into(),
            token_label: Some(label.into()),
            token_serial: None,
            pin,
            sessions: default_sessions(),
            session_wait_ms: default_session_wait_ms(),
            recovery_interval_ms: default_recovery_interval_ms(),
        }
    }

    /// Checks the configuration without touching the token.
    pub fn validate(&self) -> Result<()> {
        match (&self.token_label, &self.token_serial) {
            (Some(_), Some(_)) | (None, None) => {
                return Err(Error::Config(
                    "set exactly one of keys.token_label and keys.token_serial".into(),
                ));
            }
            (Some(l), None) if l.is_empty() || l.len() > 32 => {
                return Err(Error::Config(
                    "keys.token_label must be 1 to 32 characters (PKCS#11 limit)".into(),
                ));
            }
            _ => {}
        }
        if !(1..=MAX_SESSIONS).contains(&self.sessions) {
            return Err(Error::Config(format!(
                "keys.sessions must be between 1 and {MAX_SESSIONS}, got {}",
                self.sessions
            )));
        }
        if !self.module.is_absolute() {
            return Err(Error::Config(format!(
                "keys.module must be an absolute path, got {}",
                self.module.display()
            )));
        }
        if self.session_wait_ms == 0 || self.recovery_interval_ms == 0 {
            return Err(Error::Config(
                "keys.session_wait_ms and keys.recovery_interval_ms must be positive".into(),
            ));
        }
        Ok(())
    }

    pub(crate) fn selector(&self) -> String {
        match (&self.token_label, &self.token_serial) {
            (Some(label), _) => format!("label {label:?}"),
            (None, Some(serial)) => format!("serial {serial:?}"),
            (None, None) => "nothing".into(),
        }
    }

    pub(crate) fn session_wait(&self) -> Duration {
        Duration::from_millis(self.session_wait_ms)
    }

    pub(crate) fn recovery_interval(&self) -> Duration {
        Duration::from_millis(self.recovery_interval_ms)
    }
}

/// A TPM 2.0. Keys are created under a primary key derived from the owner
/// hierarchy's seed, so the same primary comes back after a TPM restart; the
/// TPM-wrapped key blobs (useless outside this TPM) live in `key_dir`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TpmConfig {
    /// TCTI, e.g. `device:/dev/tpmrm0` or `swtpm:host=127.0.0.1,port=2321`.
    pub tcti: String,
    /// Directory of key blobs (created if missing, mode 0700).
    pub key_dir: PathBuf,
    /// Owner hierarchy authorization, if the owner has one set.
    #[serde(default)]
    pub owner_auth: Option<SecretSource>,
    /// Minimum time between two reconnection attempts after a TPM loss.
    #[serde(default = "default_recovery_interval_ms")]
    pub recovery_interval_ms: u64,
}

impl TpmConfig {
    /// Checks the configuration without touching the TPM.
    pub fn validate(&self) -> Result<()> {
        if !(self.tcti.starts_with("device:")
            || self.tcti.starts_with("swtpm:")
            || self.tcti.starts_with("mssim:")
            || self.tcti.starts_with("tabrmd"))
        {
            return Err(Error::Config(format!(
                "keys.tcti {:?} is not a known TCTI (device:, swtpm:, mssim:, tabrmd)",
                self.tcti
            )));
        }
        if !self.key_dir.is_absolute() {
            return Err(Error::Config(format!(
                "keys.key_dir must be an absolute path, got {}",
                self.key_dir.display()
            )));
        }
        if self.recovery_interval_ms == 0 {
            return Err(Error::Config(
                "keys.recovery_interval_ms must be positive".into(),
            ));
        }
        Ok(())
    }

    pub(crate) fn recovery_interval(&self) -> Duration {
        Duration::from_millis(self.recovery_interval_ms)
    }
}

impl BackendConfig {
    /// A PKCS#11 configuration.
    pub fn pkcs11(config: Pkcs11Config) -> Self {
        BackendConfig {
            backend: BackendKind::Pkcs11,
            pkcs11: Some(config),
            tpm: None,
        }
    }

    /// A TPM configuration.
    pub fn tpm(config: TpmConfig) -> Self {
        BackendConfig {
            backend: BackendKind::Tpm,
            pkcs11: None,
            tpm: Some(config),
        }
    }

    /// Checks the configuration without touching a device.
    pub fn validate(&self) -> Result<()> {
        match (self.backend, &self.pkcs11, &self.tpm) {
            (BackendKind::Pkcs11, Some(c), None) => c.validate(),
            (BackendKind::Tpm, None, Some(c)) => c.validate(),
            (BackendKind::Pkcs11, None, _) => Err(Error::Config(
                "keys.backend is \"pkcs11\" but there is no [keys.pkcs11] table".into(),
            )),
            (BackendKind::Tpm, _, None) => Err(Error::Config(
                "keys.backend is \"tpm\" but there is no [keys.tpm] table".into(),
            )),
            (_, Some(_), Some(_)) => Err(Error::Config(
                "set only the table of the backend in use ([keys.pkcs11] or [keys.tpm])".into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> std::result::Result<BackendConfig, toml::de::Error> {
        toml::from_str(text)
    }

    #[test]
    fn pkcs11_config_parses_with_defaults() {
        let c = parse(
            r#"
            backend = "pkcs11"
            [pkcs11]
            module = "/usr/lib/softhsm/libsofthsm2.so"
            token_label = "dojang"
            pin = { file = "/etc/dojang/pin" }
            "#,
        )
        .unwrap();
        c.validate().unwrap();
        let c = c.pkcs11.unwrap();
        assert_eq!(c.sessions, 4);
        assert_eq!(c.pin, SecretSource::File("/etc/dojang/pin".into()));
    }

    #[test]
    fn unknown_keys_are_refused_at_their_line() {
        let err = parse(
            "backend = \"pkcs11\"\n[pkcs11]\nmodule = \"/m.so\"\ntoken_label = \"dojang\"\npin = { file = \"/p\" }\nslot = 0\n",
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("slot") && text.contains("line 6"), "{text}");
    }

    #[test]
    fn a_plain_pin_value_is_not_accepted() {
        assert!(
            parse(
                r#"
                backend = "pkcs11"
                [pkcs11]
                module = "/m.so"
                token_label = "dojang"
                pin = "1234"
                "#,
            )
            .is_err()
        );
    }

    #[test]
    fn the_selected_backend_needs_its_table_and_only_it() {
        let c = parse("backend = \"tpm\"\n[pkcs11]\nmodule = \"/m.so\"\ntoken_label = \"d\"\npin = { file = \"/p\" }\n").unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("[keys.tpm]"));
    }

    #[test]
    fn token_selection_needs_exactly_one_selector() {
        let mut c = Pkcs11Config::new("/m.so", "dojang", SecretSource::File("/p".into()));
        c.token_serial = Some("1234".into());
        assert!(c.validate().is_err());
        c.token_label = None;
        assert!(c.validate().is_ok());
        c.token_serial = None;
        assert!(c.validate().is_err());
    }

    #[test]
    fn tpm_config_validates_tcti() {
        let c = parse(
            r#"
            backend = "tpm"
            [tpm]
            tcti = "swtpm:host=127.0.0.1,port=2321"
            key_dir = "/var/lib/dojang/tpm-keys"
            "#,
        )
        .unwrap();
        c.validate().unwrap();
        let mut t = c.tpm.unwrap();
        t.tcti = "bogus".into();
        assert!(t.validate().is_err());
    }
}
