//! `dojang.toml`: parsed strictly (unknown keys are refused with their file
//! and line) and validated before anything touches a device.

use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use pkcs11_shim::BackendConfig;

/// Where the daemon and the CLI look when no `--config` is given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/dojang/dojang.toml";

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The key backend: a PKCS#11 token or a TPM.
    pub keys: BackendConfig,
}

/// A configuration that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
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
        config.keys.validate().map_err(|e| ConfigError::Invalid {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        Ok(config)
    }

    /// Reads, parses and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
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

    #[test]
    fn a_good_file_loads() {
        let config = Config::parse(Path::new("dojang.toml"), GOOD).unwrap();
        assert!(config.keys.pkcs11.is_some());
    }

    #[test]
    fn unknown_keys_name_the_file_and_line() {
        let text = format!("{GOOD}\n[server]\nport = 1\n");
        let err = Config::parse(Path::new("dojang.toml"), &text).unwrap_err();
        let message = err.to_string();
        assert!(message.starts_with("dojang.toml:"), "{message}");
        assert!(message.contains("line 10"), "{message}");
        assert!(message.contains("server"), "{message}");
    }

    #[test]
    fn inconsistent_values_are_refused() {
        let text = GOOD.replace("token_label = \"dojang\"", "token_label = \"\"");
        let err = Config::parse(Path::new("d.toml"), &text).unwrap_err();
        assert!(matches!(err, ConfigError::Invalid { .. }), "{err}");
    }
}
