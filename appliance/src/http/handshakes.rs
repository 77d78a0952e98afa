//! Places for TLS handshakes in progress, apart from the connection limit
//! (which counts connections past their handshake). When every place is
//! taken, the oldest handshake is dropped for the newcomer: a working
//! client's handshake takes milliseconds, a stalled one sits at the front,
//! so a thousand silent sockets cannot keep an officer from connecting.
//! (A flood of new connections faster than handshakes complete is beyond
//! this: that is the network's rate limiting.)

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

/// How long a newcomer waits for the place an evicted handshake frees.
const EVICTION_WAIT: Duration = Duration::from_millis(200);

/// The handshake places of one listener.
pub(super) struct Handshakes {
    places: Arc<Semaphore>,
    /// Handshakes in progress, oldest first, with the means to end each.
    queue: Mutex<VecDeque<(u64, oneshot::Sender<()>)>>,
    next: AtomicU64,
}

/// A handshake's place; the place is freed (and the handshake forgotten)
/// when dropped.
pub(super) struct Place {
    id: u64,
    owner: Arc<Handshakes>,
    _permit: OwnedSemaphorePermit,
    /// Fires when a newcomer takes this handshake's place.
    pub(super) evicted: oneshot::Receiver<()>,
}

impl Drop for Place {
    fn drop(&mut self) {
        if let Ok(mut queue) = self.owner.queue.lock() {
            queue.retain(|(id, _)| *id != self.id);
        }
    }
}

impl Handshakes {
    pub(super) fn new(places: usize) -> Arc<Self> {
        Arc::new(Handshakes {
            places: Arc::new(Semaphore::new(places)),
            queue: Mutex::new(VecDeque::new()),
            next: AtomicU64::new(0),
        })
    }

    /// A place for a new handshake: a free one, or the oldest handshake's
    /// (`evicted` tells whether one was ended for it). `None` if even that
    /// did not free one in time.
    pub(super) async fn enter(self: &Arc<Self>) -> (Option<Place>, bool) {
        let mut evicted = false;
        let permit = match self.places.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => {
                evicted = self.evict_oldest();
                tokio::time::timeout(EVICTION_WAIT, self.places.clone().acquire_owned())
                    .await
                    .ok()
                    .and_then(Result::ok)
            }
        };
        let Some(permit) = permit else {
            return (None, evicted);
        };
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tell, told) = oneshot::channel();
        if let Ok(mut queue) = self.queue.lock() {
            queue.push_back((id, tell));
        }
        let place = Place {
            id,
            owner: self.clone(),
            _permit: permit,
            evicted: told,
        };
        (Some(place), evicted)
    }

    /// Ends the oldest handshake in progress; whether there was one.
    fn evict_oldest(&self) -> bool {
        let Ok(mut queue) = self.queue.lock() else {
            return false;
        };
        match queue.pop_front() {
            Some((_, tell)) => tell.send(()).is_ok(),
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn a_full_listener_ends_its_oldest_handshake_for_a_newcomer() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let places = Handshakes::new(2);
            let (oldest, e) = places.enter().await;
            assert!(!e);
            let (second, _) = places.enter().await;
            let mut oldest = oldest.expect("a free place");
            // The oldest's task ends its handshake when told, freeing its place.
            let stalled = tokio::spawn(async move {
                let told = (&mut oldest.evicted).await;
                drop(oldest);
                told.is_ok()
            });
            let (newcomer, evicted) = places.enter().await;
            assert!(evicted, "the oldest was ended");
            assert!(newcomer.is_some(), "and its place given to the newcomer");
            assert!(stalled.await.unwrap());
            // A finished handshake is forgotten: the next eviction ends the
            // second, not a ghost.
            drop(newcomer);
            let (third, evicted) = places.enter().await;
            assert!(!evicted && third.is_some());
            let second = second.unwrap();
            assert_eq!(
                places.queue.lock().unwrap().front().map(|e| e.0),
                Some(second.id)
            );
        });
    }
}
