//! The bounded pool of threads that talk to the key backend and the store.
//! Device and database calls block; running them here keeps the async
//! executor free to accept, read and answer. The queue is bounded: when it
//! is full the caller is told at once (503 + Retry-After), never queued
//! without limit.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

type Job = Box<dyn FnOnce() + Send>;

/// The pool.
pub struct BlockingPool {
    sender: SyncSender<Job>,
    queued: Arc<AtomicI64>,
    on_depth: Arc<dyn Fn(i64) + Send + Sync>,
}

/// The queue is full.
#[derive(Debug)]
pub struct PoolFull;

impl BlockingPool {
    /// `threads` workers and room for `queue` waiting jobs; `on_depth` sees
    /// the queue depth after each change (the metric).
    pub fn new(
        threads: usize,
        queue: usize,
        on_depth: Arc<dyn Fn(i64) + Send + Sync>,
    ) -> std::io::Result<Self> {
        let (sender, receiver) = mpsc::sync_channel::<Job>(queue);
        let receiver = Arc::new(Mutex::new(receiver));
        for n in 0..threads {
            let receiver = receiver.clone();
            let _ = std::thread::Builder::new()
                .name(format!("dojang-sign-{n}"))
                .spawn(move || {
                    loop {
                        // Take the next job, releasing the lock before running it.
                        let job = match receiver.lock() {
                            Ok(r) => r.recv(),
                            Err(_) => return,
                        };
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                })?;
        }
        Ok(BlockingPool {
            sender,
            queued: Arc::new(AtomicI64::new(0)),
            on_depth,
        })
    }

    /// Runs `f` on a worker; `Err(PoolFull)` at once if the queue is full.
    pub fn submit<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<oneshot::Receiver<T>, PoolFull> {
        let (tx, rx) = oneshot::channel();
        let queued = self.queued.clone();
        let on_depth = self.on_depth.clone();
        let job: Job = Box::new(move || {
            on_depth(queued.fetch_sub(1, Ordering::AcqRel) - 1);
            // The requester may have gone away; its answer is then dropped.
            let _ = tx.send(f());
        });
        (self.on_depth)(self.queued.fetch_add(1, Ordering::AcqRel) + 1);
        match self.sender.try_send(job) {
            Ok(()) => Ok(rx),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                (self.on_depth)(self.queued.fetch_sub(1, Ordering::AcqRel) - 1);
                Err(PoolFull)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_jobs_and_refuses_beyond_the_queue() {
        let pool = BlockingPool::new(1, 1, Arc::new(|_| {})).unwrap();
        assert_eq!(pool.submit(|| 41 + 1).unwrap().await.unwrap(), 42);
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let busy = pool.submit(move || wait.recv().is_ok()).unwrap();
        // Give the worker time to take the blocking job off the queue.
        std::thread::sleep(std::time::Duration::from_millis(50));
        let queued = pool.submit(|| 1).unwrap();
        assert!(pool.submit(|| 2).is_err(), "a third job must be refused");
        release.send(()).unwrap();
        assert!(busy.await.unwrap());
        assert_eq!(queued.await.unwrap(), 1);
    }
}
