//! A fixed pool of logged-in sessions. `cryptoki::Session` is `Send` but not
//! `Sync`: each signer borrows one for the length of a call and gives it back.
//! A borrower waits a bounded time, then gets [`Error::Busy`], never a hang.

use std::ops::Deref;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use cryptoki::session::Session;

use crate::backend::SessionCounts;
use crate::error::{Error, Result};

pub(crate) struct SessionPool {
    idle: Mutex<Vec<Session>>,
    returned: Condvar,
    size: usize,
    wait: Duration,
}

impl SessionPool {
    pub(crate) fn new(sessions: Vec<Session>, wait: Duration) -> Self {
        SessionPool {
            size: sessions.len(),
            idle: Mutex::new(sessions),
            returned: Condvar::new(),
            wait,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Session>> {
        // A panic while holding the lock cannot leave the Vec half-updated.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Borrows a session, waiting at most the configured time.
    pub(crate) fn checkout(&self) -> Result<PooledSession<'_>> {
        let deadline = Instant::now() + self.wait;
        let mut idle = self.lock();
        loop {
            if let Some(session) = idle.pop() {
                return Ok(PooledSession {
                    pool: self,
                    session: Some(session),
                });
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::Busy {
                    pool_size: self.size,
                    waited: self.wait,
                });
            }
            idle = self
                .returned
                .wait_timeout(idle, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    pub(crate) fn counts(&self) -> SessionCounts {
        SessionCounts {
            total: self.size,
            idle: self.lock().len(),
        }
    }
}

/// A borrowed session; returns to the pool on drop.
pub(crate) struct PooledSession<'a> {
    pool: &'a SessionPool,
    session: Option<Session>,
}

impl Deref for PooledSession<'_> {
    type Target = Session;

    // Invariant: `session` is Some from construction until drop takes it,
    // and nothing can deref a PooledSession while it is being dropped.
    #[allow(clippy::expect_used)]
    fn deref(&self) -> &Session {
        self.session.as_ref().expect("session present until drop")
    }
}

impl Drop for PooledSession<'_> {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            self.pool.lock().push(session);
            self.pool.returned.notify_one();
        }
    }
}
