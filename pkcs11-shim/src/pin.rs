//! Where a secret (the user PIN, the TPM owner auth) comes from, and reading it.
//!
//! A secret is never a plain config value: it is read from a file or from a
//! systemd credential (`LoadCredential=`), held as [`SecretString`] (zeroized
//! on drop, redacted in `Debug`) and exposed only at the call that needs it.

use std::io::Read;
use std::path::PathBuf;

use secrecy::SecretString;
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// Largest secret file accepted; a PIN is short, a huge file is a mistake.
const MAX_SECRET_FILE: u64 = 4096;

/// Where to read a secret from.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum SecretSource {
    /// A file holding the secret (a trailing newline is ignored).
    File(PathBuf),
    /// A systemd credential name, read from `$CREDENTIALS_DIRECTORY/<name>`.
    SystemdCredential(String),
    /// Asked on the controlling terminal (`/dev/tty`, not echoed) with this
    /// prompt: a person at the keyboard, such as an officer with their
    /// token. Never from a configuration file.
    #[serde(skip)]
    Terminal(String),
}

impl SecretSource {
    /// Where the secret lives, for error messages (never the secret itself).
    pub fn describe(&self) -> String {
        match self {
            SecretSource::File(path) => format!("file {}", path.display()),
            SecretSource::SystemdCredential(name) => format!("systemd credential {name:?}"),
            SecretSource::Terminal(_) => "the terminal".to_owned(),
        }
    }

    fn path(&self) -> Result<PathBuf> {
        match self {
            SecretSource::File(path) => Ok(path.clone()),
            SecretSource::SystemdCredential(name) => {
                if name.is_empty() || name.contains('/') || name == "." || name == ".." {
                    return Err(Error::Config(format!(
                        "systemd credential name {name:?} must be a plain file name"
                    )));
                }
                let dir = std::env::var_os("CREDENTIALS_DIRECTORY").ok_or_else(|| {
                    Error::Config(format!(
                        "systemd credential {name:?} configured but CREDENTIALS_DIRECTORY is not set \
                         (run under systemd with LoadCredential=, or use a pin file)"
                    ))
                })?;
                Ok(PathBuf::from(dir).join(name))
            }
            SecretSource::Terminal(_) => Ok(PathBuf::from("/dev/tty")),
        }
    }

    /// Reads the secret. The buffer it passes through is zeroized.
    pub fn read(&self) -> Result<SecretString> {
        if let SecretSource::Terminal(prompt) = self {
            return read_terminal(prompt);
        }
        let path = self.path()?;
        let context = || format!("reading the secret from {}", self.describe());
        let file = std::fs::File::open(&path).map_err(|e| Error::io(context(), e))?;
        // Sized for the largest accepted file up front: a reallocation would
        // leave a copy of the secret behind, unzeroized.
        let mut raw = Zeroizing::new(Vec::with_capacity(MAX_SECRET_FILE as usize + 1));
        let _ = file
            .take(MAX_SECRET_FILE + 1)
            .read_to_end(&mut raw)
            .map_err(|e| Error::io(context(), e))?;
        if raw.len() as u64 > MAX_SECRET_FILE {
            return Err(Error::Config(format!(
                "{} is larger than {MAX_SECRET_FILE} bytes; is it the right file?",
                self.describe()
            )));
        }
        let text = std::str::from_utf8(&raw)
            .map_err(|_| Error::Config(format!("{} is not UTF-8", self.describe())))?;
        let secret = text.trim_end_matches(['\n', '\r']);
        if secret.is_empty() {
            return Err(Error::Config(format!("{} is empty", self.describe())));
        }
        Ok(SecretString::from(secret.to_owned()))
    }
}

/// Asks on `/dev/tty` with echo off (`stty -echo`, restored after the
/// line is read or the read fails; an interrupt while typing leaves it off:
/// `stty echo` or `reset` restores the terminal); the line typed, without
/// its newline.
fn read_terminal(prompt: &str) -> Result<SecretString> {
    use std::io::{BufRead, Write};
    let context = || "asking on the terminal".to_owned();
    let tty = || {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/tty")
            .map_err(|e| Error::io(context(), e))
    };
    let stty = |mode: &str| {
        let status = std::process::Command::new("/bin/stty")
            .arg(mode)
            .stdin(tty()?)
            .status()
            .map_err(|e| Error::io(context(), e))?;
        if status.success() {
            Ok(())
        } else {
            Err(Error::Config(format!(
                "stty {mode} failed on the terminal: the PIN is not asked"
            )))
        }
    };
    // Echo off before the prompt: what is typed once it shows is not echoed
    // (and without it, nothing is asked).
    stty("-echo")?;
    let mut out = tty()?;
    let shown = write!(out, "{prompt}").and_then(|()| out.flush());
    if let Err(e) = shown {
        let _ = stty("echo");
        return Err(Error::io(context(), e));
    }
    // Bounded, into a buffer that never grows: no unzeroized copy is left.
    let mut line = Zeroizing::new(String::with_capacity(MAX_SECRET_FILE as usize + 1));
    let read = std::io::BufReader::new(tty()?.take(MAX_SECRET_FILE)).read_line(&mut line);
    let _ = stty("echo");
    let _ = writeln!(out);
    let _ = read.map_err(|e| Error::io(context(), e))?;
    let secret = line.trim_end_matches(['\n', '\r']);
    if secret.is_empty() {
        return Err(Error::Config("nothing was typed".into()));
    }
    Ok(SecretString::from(secret.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    fn temp_file(content: &[u8]) -> (PathBuf, impl Drop) {
        struct Cleanup(PathBuf);
        impl Drop for Cleanup {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
        let path = std::env::temp_dir().join(format!(
            "dojang-pin-test-{}-{:x}",
            std::process::id(),
            openssl::sha::sha256(content)[0] as u64 * 7919 + content.len() as u64
        ));
        std::fs::write(&path, content).unwrap();
        (path.clone(), Cleanup(path))
    }

    #[test]
    fn reads_a_pin_file_without_its_newline() {
        let (path, _cleanup) = temp_file(b"123456\n");
        let pin = SecretSource::File(path).read().unwrap();
        assert_eq!(pin.expose_secret(), "123456");
    }

    #[test]
    fn refuses_empty_and_missing_files_without_leaking() {
        let (path, _cleanup) = temp_file(b"\n");
        let err = SecretSource::File(path).read().unwrap_err();
        assert!(err.to_string().contains("is empty"), "{err}");
        let err = SecretSource::File("/nonexistent/pin".into())
            .read()
            .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/pin"), "{err}");
    }

    #[test]
    fn debug_of_a_secret_is_redacted() {
        let (path, _cleanup) = temp_file(b"s3cr3t-pin");
        let pin = SecretSource::File(path).read().unwrap();
        assert!(!format!("{pin:?}").contains("s3cr3t"));
    }

    #[test]
    fn credential_names_cannot_escape_the_directory() {
        let err = SecretSource::SystemdCredential("../etc/shadow".into())
            .read()
            .unwrap_err();
        assert!(err.to_string().contains("plain file name"), "{err}");
    }
}
