//! The file as a whole: parsed strictly (unknown keys are refused with
//! their file and line) and validated before anything touches a device;
//! and the `[credential]` table.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use pkcs11_shim::BackendConfig;

use super::{PkiConfig, ServerConfig, StoreConfig};

/// Where the daemon and the CLI look when no `--config` is given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/dojang/dojang.toml";

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The key backend: a PKCS#11 token or a TPM.
    pub keys: BackendConfig,
    /// The certificate hierarchy (IACA, DS certificates, CRL).
    #[serde(default)]
    pub pki: Option<PkiConfig>,
    /// How credentials are issued.
    #[serde(default)]
    pub credential: Option<CredentialConfig>,
    /// The daemon's listeners and limits.
    #[serde(default)]
    pub server: Option<ServerConfig>,
    /// The registry.
    #[serde(default)]
    pub store: Option<StoreConfig>,
}

/// The `[credential]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialConfig {
    /// `iss` of SD-JWT VCs: the issuer's https URL.
    pub issuer: String,
    /// The `issuing_authority` element.
    pub issuing_authority: String,
    /// Days a signature stays valid (MSO validUntil, JWT exp), cut at the
    /// DS certificate's end; holders refresh before it.
    #[serde(default = "default_signature_days")]
    pub signature_validity_days: u32,
    /// Years the document itself is valid (the programme says three).
    #[serde(default = "default_document_years")]
    pub document_validity_years: u16,
}

fn default_signature_days() -> u32 {
    90
}
fn default_document_years() -> u16 {
    3
}

impl CredentialConfig {
    fn validate(&self) -> Result<(), String> {
        if !self.issuer.starts_with("https://") {
            return Err("credential.issuer must be an https URL".into());
        }
        if self.issuing_authority.trim().is_empty() {
            return Err("credential.issuing_authority must not be empty".into());
        }
        if !(1..=457).contains(&self.signature_validity_days) {
            return Err("credential.signature_validity_days must be 1 to 457".into());
        }
        if !(1..=10).contains(&self.document_validity_years) {
            return Err("credential.document_validity_years must be 1 to 10".into());
        }
        Ok(())
    }
}

/// A configuration that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {}: {cause}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why (in the message, not a chained source: printed once).
        cause: std::io::Error,
    },
    /// The file is not valid TOML for this schema (message names the line).
    #[error("{}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// The values are inconsistent.
    #[error("{}: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

impl Config {
    /// Parses and validates `text` as if read from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        };
        config.keys.validate().map_err(|e| invalid(e.to_string()))?;
        if let Some(pki) = &config.pki {
            pki.validate().map_err(invalid)?;
        }
        if let Some(credential) = &config.credential {
            credential.validate().map_err(invalid)?;
        }
        if let (Some(pki), Some(credential)) = (&config.pki, &config.credential)
            && credential.signature_validity_days >= pki.ds_validity_days
        {
            // A DS key is due for rotation once its certificate has less left
            // than one signature's validity: every new key would be due at
            // once, a key-generation storm that fills the token.
            return Err(invalid(format!(
                "credential.signature_validity_days ({}) must be shorter than pki.ds_validity_days ({}): \
                 a DS certificate must outlast the signatures it makes, or every new key is due at once",
                credential.signature_validity_days, pki.ds_validity_days
            )));
        }
        if let Some(server) = &config.server {
            server.validate().map_err(invalid)?;
        }
        if let Some(store) = &config.store {
            store.validate().map_err(invalid)?;
        }
        Ok(config)
    }

    /// The `[pki]` table, or an error saying to add it.
    pub fn pki(&self) -> Result<&PkiConfig, String> {
        self.pki
            .as_ref()
            .ok_or_else(|| "this needs a [pki] table in the configuration".into())
    }

    /// The `[credential]` table, or an error saying to add it.
    pub fn credential(&self) -> Result<&CredentialConfig, String> {
        self.credential
            .as_ref()
            .ok_or_else(|| "this needs a [credential] table in the configuration".into())
    }

    /// Reads, parses and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read {
            path: path.to_owned(),
            cause,
        })?;
        Self::parse(path, &text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[keys]
backend = "pkcs11"

[keys.pkcs11]
module = "/usr/lib/softhsm/libsofthsm2.so"
token_label = "dojang"
pin = { file = "/etc/dojang/pin" }
"#;

    /// `GOOD` with a `[server]` whose listeners are set, `tail` after
    /// its `[server.public]` lines.
    fn with_server(tail: &str) -> String {
        format!(
            "{GOOD}\n[server]\npolicy = \"/p.toml\"\npolicy_anchor = \"{anchor}\"\n\n\
                 [server.api]\nlisten = \"127.0.0.1:1\"\ncertificate = \"/c\"\n\
                 private_key = \"/k\"\nclient_ca = \"/ca\"\n\n[server.public]\n\
                 listen = \"127.0.0.1:2\"\nbase_url = \"https://id.example.kr\"\n{tail}\n",
            anchor = "a".repeat(64)
        )
    }

    #[test]
    fn a_good_file_loads() {
        let config = Config::parse(Path::new("dojang.toml"), GOOD).unwrap();
        assert!(config.keys.pkcs11.is_some());
    }

    #[test]
    fn unknown_keys_name_the_file_and_line() {
        let text = format!("{GOOD}\n[daemon]\nport = 1\n");
        let err = Config::parse(Path::new("dojang.toml"), &text).unwrap_err();
        let message = err.to_string();
        assert!(message.starts_with("dojang.toml:"), "{message}");
        assert!(message.contains("line 10"), "{message}");
        assert!(message.contains("daemon"), "{message}");
    }

    #[test]
    fn signatures_outliving_the_ds_certificate_are_refused() {
        let tables = |signature: u32, ds: u32| {
            format!(
                "{GOOD}\n[pki]\ndir = \"/var/lib/dojang/pki\"\norganization = \"O\"\n\
                 iaca_common_name = \"I\"\nissuer_alt_name = \"https://id.example.kr\"\n\
                 crl_url = \"https://id.example.kr/iaca.crl\"\nds_validity_days = {ds}\n\n\
                 [credential]\nissuer = \"https://id.example.kr\"\nissuing_authority = \"A\"\n\
                 signature_validity_days = {signature}\n"
            )
        };
        assert!(Config::parse(Path::new("d.toml"), &tables(90, 365)).is_ok());
        for (signature, ds) in [(365, 365), (400, 365)] {
            let err = Config::parse(Path::new("d.toml"), &tables(signature, ds)).unwrap_err();
            assert!(err.to_string().contains("must be shorter"), "{err}");
        }
    }

    #[test]
    fn worker_niceness_defaults_to_0_and_stays_within_0_to_19() {
        let server = |limits: &str| with_server(&format!("\n[server.limits]\n{limits}"));
        let parsed = Config::parse(Path::new("d.toml"), &server("")).unwrap();
        assert_eq!(parsed.server.unwrap().limits.worker_niceness, 0);
        for good in [10, 19] {
            let text = server(&format!("worker_niceness = {good}"));
            assert!(Config::parse(Path::new("d.toml"), &text).is_ok());
        }
        for bad in [-1, 20] {
            let text = server(&format!("worker_niceness = {bad}"));
            let err = Config::parse(Path::new("d.toml"), &text).unwrap_err();
            assert!(
                err.to_string().contains("worker_niceness (0 to 19)"),
                "{err}"
            );
        }
    }

    #[test]
    fn a_status_token_lifetime_outside_its_bounds_is_refused() {
        let parsed = Config::parse(Path::new("d.toml"), &with_server("")).unwrap();
        let public = &parsed.server.unwrap().public;
        assert_eq!(public.status_token_lifetime_s, 86_400);
        assert!(public.mirror_dir.is_none());
        assert!(
            Config::parse(Path::new("d.toml"), &with_server("mirror_dir = \"/srv/m\"")).is_ok()
        );
        for bad in [0, 599, 604_801] {
            let text = with_server(&format!("status_token_lifetime_s = {bad}"));
            let err = Config::parse(Path::new("d.toml"), &text).unwrap_err();
            assert!(err.to_string().contains("status_token_lifetime_s"), "{err}");
        }
    }

    #[test]
    fn witnesses_need_an_http_url_a_ca_for_https_and_a_reachable_quorum() {
        let server = |audit: &str| with_server(&format!("\n[server.audit]\n{audit}"));
        let w = |url: &str, ca: &str| format!("{{ url = \"{url}\", key = \"w+00+AA==\"{ca} }}");
        let good = format!(
            "witnesses = [{}, {}]\nwitness_quorum = 1",
            w("http://127.0.0.1:7000", ""),
            w("https://w.example.org/w", ", ca = \"/w-ca.pem\"")
        );
        let parsed = Config::parse(Path::new("d.toml"), &server(&good)).unwrap();
        assert_eq!(parsed.server.unwrap().audit.quorum(), 1);
        let all = format!("witnesses = [{}]", w("http://w", ""));
        let parsed = Config::parse(Path::new("d.toml"), &server(&all)).unwrap();
        assert_eq!(
            parsed.server.unwrap().audit.quorum(),
            1,
            "every witness by default"
        );
        for bad in [
            format!("witnesses = [{}]", w("ftp://w", "")),
            format!("witnesses = [{}]", w("https://w", "")),
            format!("witnesses = [{}]\nwitness_quorum = 2", w("http://w", "")),
            format!("witnesses = [{}]\nwitness_quorum = 0", w("http://w", "")),
            "witness_quorum = 1".to_owned(),
        ] {
            let err = Config::parse(Path::new("d.toml"), &server(&bad)).unwrap_err();
            assert!(err.to_string().contains("witness"), "{bad}: {err}");
        }
    }

    #[test]
    fn inconsistent_values_are_refused() {
        let text = GOOD.replace("token_label = \"dojang\"", "token_label = \"\"");
        let err = Config::parse(Path::new("d.toml"), &text).unwrap_err();
        assert!(matches!(err, ConfigError::Invalid { .. }), "{err}");
    }
}
