//! [`TpmBackend`]: the TPM connection behind a mutex, its key directory, and
//! recovery. A TPM that was lost (reset, restarted, unreachable) is
//! reconnected at most once per recovery interval and the failed command
//! run once more; a command that fails on a TPM that still answers keeps
//! the connection.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use secrecy::SecretString;
use tracing::{info, warn};

use super::blob::{self, KeyBlob};
use super::connection::{Connected, connect, probe};
use crate::config::TpmConfig;
use crate::error::{Error, ErrorClass, Result};
use crate::label::validate_label;

#[derive(Default)]
struct Recovery {
    last_attempt: Option<Instant>,
    last_error: Option<String>,
}

/// Keys in a TPM 2.0. See the module docs.
pub struct TpmBackend {
    config: TpmConfig,
    owner_auth: Option<SecretString>,
    state: Mutex<Option<Connected>>,
    recovery: Mutex<Recovery>,
    recoveries: AtomicU64,
}

impl TpmBackend {
    /// Connects to the TPM, derives the primary key and checks the key directory.
    pub fn open(config: TpmConfig) -> Result<Self> {
        config.validate()?;
        blob::ensure_dir(&config.key_dir)?;
        blob::check_dir_mode(&config.key_dir)?;
        let owner_auth = config.owner_auth.as_ref().map(|s| s.read()).transpose()?;
        let connected = connect(&config, owner_auth.as_ref())?;
        info!(tcti = %config.tcti, key_dir = %config.key_dir.display(), "TPM opened");
        Ok(TpmBackend {
            config,
            owner_auth,
            state: Mutex::new(Some(connected)),
            recovery: Mutex::new(Recovery::default()),
            recoveries: AtomicU64::new(0),
        })
    }

    /// Runs `op` with the TPM; on loss, reconnects (rate-limited) and runs it once more.
    pub(crate) fn with_tpm<T>(&self, op: impl Fn(&mut Connected) -> Result<T>) -> Result<T> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let mut retried = false;
        loop {
            let connected = match &mut *state {
                Some(connected) => connected,
                slot @ None => slot.insert(self.reconnect()?),
            };
            match op(connected) {
                // A TPM that still answers was not lost: the command itself
                // failed (a corrupt or foreign blob, a bad parameter). Keep
                // the connection, which serves every other key.
                Err(Error::Tpm {
                    operation,
                    detail,
                    class: ErrorClass::Retryable,
                }) if probe(connected).is_ok() => {
                    return Err(Error::Tpm {
                        operation,
                        detail,
                        class: ErrorClass::Fatal,
                    });
                }
                Err(err) if err.is_retryable() && !retried => {
                    warn!(error = %err, "TPM lost; reconnecting");
                    *state = None; // drops the context: its objects are flushed or gone
                    retried = true;
                    self.recovery
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .last_error = Some(err.to_string());
                }
                other => return other,
            }
        }
    }

    fn reconnect(&self) -> Result<Connected> {
        let mut recovery = self.recovery.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(last) = recovery.last_attempt
            && last.elapsed() < self.config.recovery_interval()
        {
            return Err(Error::Unavailable {
                reason: recovery
                    .last_error
                    .clone()
                    .unwrap_or_else(|| "reconnecting".into()),
                retry_after: self.config.recovery_interval(),
            });
        }
        recovery.last_attempt = Some(Instant::now());
        match connect(&self.config, self.owner_auth.as_ref()) {
            Ok(connected) => {
                let _ = self.recoveries.fetch_add(1, Ordering::Relaxed);
                recovery.last_error = None;
                info!("TPM connection re-established");
                Ok(connected)
            }
            Err(err) => {
                warn!(error = %err, "TPM reconnection failed");
                recovery.last_error = Some(err.to_string());
                Err(Error::Unavailable {
                    reason: err.to_string(),
                    retry_after: self.config.recovery_interval(),
                })
            }
        }
    }

    /// The blob of the key `label`.
    pub(crate) fn blob(&self, label: &str) -> Result<KeyBlob> {
        validate_label(label)?;
        KeyBlob::read(&self.config.key_dir, label)
    }

    /// The directory of key blobs.
    pub(crate) fn key_dir(&self) -> &Path {
        &self.config.key_dir
    }

    /// The configured TCTI.
    pub(crate) fn tcti(&self) -> &str {
        &self.config.tcti
    }

    /// Successful reconnections since open.
    pub(crate) fn recoveries(&self) -> u64 {
        self.recoveries.load(Ordering::Relaxed)
    }

    /// Flushes the key `label` if it is loaded, without reconnecting.
    pub(crate) fn unload(&self, label: &str) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(tpm) = state.as_mut() {
            tpm.unload(label);
        }
    }
}

impl std::fmt::Debug for TpmBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TpmBackend")
            .field("tcti", &self.config.tcti)
            .field("key_dir", &self.config.key_dir)
            .finish_non_exhaustive()
    }
}
