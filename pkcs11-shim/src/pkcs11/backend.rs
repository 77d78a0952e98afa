//! [`Pkcs11Backend`]: the loaded module, the current [`Connection`] every
//! caller shares, and its recovery. When the device or its connection is
//! lost, the connection is dropped and rebuilt (C_Finalize, C_Initialize,
//! C_Login), at most once per recovery interval; callers meanwhile get a
//! retryable [`Error`]. A refused PIN halts recovery: retrying it would lock
//! the token.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Instant;

use cryptoki::context::Pkcs11;
use cryptoki::session::Session;
use secrecy::SecretString;
use tracing::{info, warn};

use super::connection::{Connection, initialize};
use crate::config::Pkcs11Config;
use crate::error::{Error, ErrorClass, Result};

#[derive(Default)]
struct RecoveryState {
    last_attempt: Option<Instant>,
    last_error: Option<String>,
    /// Set when reconnecting would repeat a refused login: retrying a wrong
    /// PIN locks the token, so recovery stops until an operator acts.
    halted: Option<String>,
}

/// Keys in a PKCS#11 token. See the module docs for threading and recovery.
pub struct Pkcs11Backend {
    ctx: Pkcs11,
    config: Pkcs11Config,
    pin: SecretString,
    conn: RwLock<Option<Connection>>,
    recovery: Mutex<RecoveryState>,
    generation: AtomicU64,
    recoveries: AtomicU64,
    /// Serialises key generation: "is the label free?" and "create" must
    /// not interleave with another generation of the same label.
    generating: Mutex<()>,
}

impl Pkcs11Backend {
    /// Loads the module, logs in to the configured token and checks it.
    pub fn open(config: Pkcs11Config) -> Result<Self> {
        config.validate()?;
        let pin = config.pin.read()?;
        let ctx = Pkcs11::new(&config.module).map_err(|e| {
            Error::Config(format!(
                "cannot load PKCS#11 module {}: {e}",
                config.module.display()
            ))
        })?;
        initialize(&ctx)?;
        let conn = Connection::open(&ctx, &config, &pin, 0)?;
        info!(
            module = %config.module.display(),
            token = %config.selector(),
            sessions = config.sessions,
            "PKCS#11 token opened"
        );
        Ok(Pkcs11Backend {
            ctx,
            config,
            pin,
            conn: RwLock::new(Some(conn)),
            recovery: Mutex::new(RecoveryState::default()),
            generation: AtomicU64::new(0),
            recoveries: AtomicU64::new(0),
            generating: Mutex::new(()),
        })
    }

    /// Runs `op` on a pooled session; on device loss, reconnects (rate-limited)
    /// and runs it once more.
    pub(crate) fn with_session<T>(
        &self,
        op: impl Fn(&Connection, &Session) -> Result<T>,
    ) -> Result<T> {
        let mut retried = false;
        loop {
            let seen_generation = self.generation.load(Ordering::Acquire);
            // Lock order: `recovery` is taken before `conn`, never while
            // `conn` is held (recover() holds `recovery` while it waits to
            // write `conn`), so unavailable() runs after the guard is gone.
            let result = {
                let guard = self.conn.read().unwrap_or_else(PoisonError::into_inner);
                guard
                    .as_ref()
                    .map(|conn| conn.pool().checkout().and_then(|s| op(conn, &s)))
            }
            .unwrap_or_else(|| Err(self.unavailable()));
            match result {
                Err(err) if err.class() == ErrorClass::DeviceLost && !retried => {
                    if !matches!(err, Error::Unavailable { .. }) {
                        warn!(error = %err, "PKCS#11 device lost; reconnecting");
                    }
                    if self.recover(seen_generation, &err) {
                        retried = true;
                        continue;
                    }
                    return Err(match err {
                        e @ Error::Unavailable { .. } => e,
                        e => {
                            let _ = self.mark_down(seen_generation);
                            e
                        }
                    });
                }
                other => return other,
            }
        }
    }

    /// Runs `f` on the current connection, if there is one: no session is
    /// borrowed and nothing reconnects.
    pub(crate) fn with_connection<T>(&self, f: impl FnOnce(&Connection) -> T) -> Option<T> {
        self.conn
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(f)
    }

    /// Holds off every other key generation while the guard lives.
    pub(crate) fn generation_lock(&self) -> MutexGuard<'_, ()> {
        self.generating
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Successful reconnections since open.
    pub(crate) fn recoveries(&self) -> u64 {
        self.recoveries.load(Ordering::Relaxed)
    }

    fn unavailable(&self) -> Error {
        let state = self.recovery.lock().unwrap_or_else(PoisonError::into_inner);
        let reason = state
            .halted
            .clone()
            .or_else(|| state.last_error.clone())
            .unwrap_or_else(|| "reconnecting".into());
        Error::Unavailable {
            reason,
            retry_after: self.config.recovery_interval(),
        }
    }

    /// The connection for writing, waiting at most the session wait: a
    /// call hung in the device must not make every other caller hang too
    /// (std's RwLock blocks new readers once a writer waits).
    fn write_conn(&self) -> Option<std::sync::RwLockWriteGuard<'_, Option<Connection>>> {
        let deadline = Instant::now() + self.config.session_wait();
        loop {
            match self.conn.try_write() {
                Ok(guard) => return Some(guard),
                Err(std::sync::TryLockError::Poisoned(p)) => return Some(p.into_inner()),
                Err(std::sync::TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                Err(std::sync::TryLockError::WouldBlock) => {
                    warn!(
                        "a PKCS#11 call is still in progress after the session wait; not reconnecting yet"
                    );
                    return None;
                }
            }
        }
    }

    /// Drops a connection that failed, so later calls fail fast until recovery.
    fn mark_down(&self, seen_generation: u64) -> bool {
        let Some(mut guard) = self.write_conn() else {
            return false;
        };
        if self.generation.load(Ordering::Acquire) == seen_generation && guard.is_some() {
            *guard = None;
            let _ = self.ctx.clone().finalize();
            return true;
        }
        false
    }

    /// Rebuilds the connection unless another thread already did, one is in
    /// progress, or the last attempt was too recent. True if the caller
    /// should retry now.
    fn recover(&self, seen_generation: u64, cause: &Error) -> bool {
        let Ok(mut state) = self.recovery.try_lock() else {
            return false; // another thread is reconnecting
        };
        if self.generation.load(Ordering::Acquire) != seen_generation {
            return true; // someone reconnected since our call started
        }
        if state.halted.is_some() {
            return false;
        }
        if let Some(last) = state.last_attempt
            && last.elapsed() < self.config.recovery_interval()
        {
            return false;
        }
        state.last_attempt = Some(Instant::now());
        if !matches!(cause, Error::Unavailable { .. }) {
            state.last_error = Some(cause.to_string());
        }

        let Some(mut guard) = self.write_conn() else {
            return false;
        };
        // Sessions are opened without close-on-drop: C_Finalize closes them
        // all, and closing stale handles later could close a new session
        // that reused the number.
        *guard = None;
        let _ = self.ctx.clone().finalize();
        let generation = seen_generation + 1;
        let reopened = initialize(&self.ctx)
            .and_then(|()| Connection::open(&self.ctx, &self.config, &self.pin, generation));
        match reopened {
            Ok(conn) => {
                *guard = Some(conn);
                self.generation.store(generation, Ordering::Release);
                let _ = self.recoveries.fetch_add(1, Ordering::Relaxed);
                state.last_error = None;
                info!(generation, "PKCS#11 connection re-established");
                true
            }
            Err(err) => {
                if matches!(err, Error::PinRejected { .. }) {
                    state.halted = Some(format!(
                        "{err}; recovery halted to avoid locking the token (fix the PIN and restart)"
                    ));
                }
                warn!(error = %err, "PKCS#11 reconnection failed");
                state.last_error = Some(err.to_string());
                false
            }
        }
    }
}

impl Drop for Pkcs11Backend {
    fn drop(&mut self) {
        let conn = self.conn.get_mut().unwrap_or_else(PoisonError::into_inner);
        *conn = None;
        let _ = self.ctx.clone().finalize();
    }
}

impl std::fmt::Debug for Pkcs11Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Backend")
            .field("module", &self.config.module)
            .field("token", &self.config.selector())
            .finish_non_exhaustive()
    }
}
