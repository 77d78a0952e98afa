//! The bounded pool of threads that talk to the key backend and the store.
//! Device and database calls block; running them here keeps the async
//! executor free to accept, read and answer. The queue is bounded: when it
//! is full the caller is told at once (503 + Retry-After), never queued
//! without limit.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

type Job = Box<dyn FnOnce() + Send>;

/// How long stopping waits for the jobs running and queued.
const FINISH_WAIT: Duration = Duration::from_secs(10);

/// The pool.
pub struct BlockingPool {
    /// `None` tells one worker to stop.
    sender: SyncSender<Option<Job>>,
    queued: Arc<AtomicI64>,
    on_depth: Arc<dyn Fn(i64) + Send + Sync>,
    workers: Mutex<Vec<JoinHandle<()>>>,
    /// When a job last finished (ms since `epoch`): a full queue whose
    /// jobs still finish is busy, not stuck.
    completed: Arc<AtomicU64>,
    epoch: Instant,
}

/// The queue is full.
#[derive(Debug)]
pub struct PoolFull;

impl BlockingPool {
    /// `threads` workers named `{name}-{n}`, each `niceness` nicer than
    /// the thread that starts them, and room for `queue` waiting jobs;
    /// `on_depth` sees the queue depth after each change (the metric).
    /// The workers do the bulk of the CPU work (HSM calls, encoding,
    /// proofs), sixteen or more threads on a few cores; the threads every
    /// issuance waits on (the store's writer, the I/O runtime, the audit
    /// and log threads) are few and must get a core as soon as they wake:
    /// at one priority the writer lost its core to a signing thread for a
    /// scheduler tick (4 ms) mid-commit, with the batch behind it waiting
    /// (`docs/operations.md`). Each pool has a name of its own: Linux
    /// keeps 15 bytes of a thread's name, and `perf`, `top -H` and
    /// `ionice` see nothing else.
    pub fn new(
        name: &str,
        threads: usize,
        niceness: i32,
        queue: usize,
        on_depth: Arc<dyn Fn(i64) + Send + Sync>,
    ) -> std::io::Result<Self> {
        let (sender, receiver) = mpsc::sync_channel::<Option<Job>>(queue);
        let receiver = Arc::new(Mutex::new(receiver));
        let mut workers = Vec::with_capacity(threads);
        for n in 0..threads {
            let receiver = receiver.clone();
            let pool = name.to_owned();
            workers.push(
                std::thread::Builder::new()
                    .name(format!("{name}-{n}"))
                    .spawn(move || {
                        if let Err(e) = lower_own_priority(niceness)
                            && n == 0
                        {
                            tracing::warn!(%pool, error = %e, "the pool's threads run at the daemon's own priority: lowering it was refused");
                        }
                        loop {
                            // Take the next job, releasing the lock before running it.
                            let job = match receiver.lock() {
                                Ok(r) => r.recv(),
                                Err(_) => return,
                            };
                            match job {
                                // A job that panics loses its answer (its
                                // requester is told the worker is gone);
                                // the thread lives on for the next one.
                                Ok(Some(job)) => {
                                    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job))
                                        .is_err()
                                    {
                                        tracing::error!(
                                            %pool,
                                            "a job on a thread pool panicked; its thread goes on"
                                        );
                                    }
                                }
                                Ok(None) | Err(_) => return,
                            }
                        }
                    })?,
            );
        }
        Ok(BlockingPool {
            sender,
            queued: Arc::new(AtomicI64::new(0)),
            on_depth,
            workers: Mutex::new(workers),
            completed: Arc::new(AtomicU64::new(0)),
            epoch: Instant::now(),
        })
    }

    /// Stopping: the jobs queued run, then the workers end and are waited
    /// for (up to a bound), so no device or database call is still running
    /// when the process exits and the libraries' globals are torn down.
    pub fn finish(&self) {
        let workers = self
            .workers
            .lock()
            .map(|mut w| std::mem::take(&mut *w))
            .unwrap_or_default();
        for _ in &workers {
            let _ = self.sender.send(None);
        }
        let deadline = Instant::now() + FINISH_WAIT;
        while workers.iter().any(|w| !w.is_finished()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let (done, stuck): (Vec<_>, Vec<_>) = workers.into_iter().partition(|w| w.is_finished());
        for worker in done {
            let _ = worker.join();
        }
        if !stuck.is_empty() {
            tracing::warn!(
                workers = stuck.len(),
                "device or database calls still running at exit"
            );
        }
    }

    /// How long ago a job last finished (since the pool started, if none).
    pub fn since_last_completion(&self) -> Duration {
        let last = Duration::from_millis(self.completed.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(last)
    }

    /// Runs `f` on a worker; `Err(PoolFull)` at once if the queue is full.
    pub fn submit<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<oneshot::Receiver<T>, PoolFull> {
        let (tx, rx) = oneshot::channel();
        let queued = self.queued.clone();
        let on_depth = self.on_depth.clone();
        let completed = self.completed.clone();
        let epoch = self.epoch;
        let job: Job = Box::new(move || {
            on_depth(queued.fetch_sub(1, Ordering::AcqRel) - 1);
            // The requester may have gone away; its answer is then dropped.
            let _ = tx.send(f());
            completed.store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
        });
        (self.on_depth)(self.queued.fetch_add(1, Ordering::AcqRel) + 1);
        match self.sender.try_send(Some(job)) {
            Ok(()) => Ok(rx),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                (self.on_depth)(self.queued.fetch_sub(1, Ordering::AcqRel) - 1);
                Err(PoolFull)
            }
        }
    }
}

/// Makes the calling thread `by` nicer than it is (at most 19). Linux
/// gives each thread its own nice value: `setpriority` with a thread's id
/// changes that thread only. Raising one's own nice needs no privilege.
fn lower_own_priority(by: i32) -> rustix::io::Result<()> {
    if by == 0 {
        return Ok(());
    }
    let me = rustix::thread::gettid();
    let now = rustix::process::getpriority_process(Some(me))?;
    rustix::process::setpriority_process(Some(me), (now + by).min(19))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_jobs_and_refuses_beyond_the_queue() {
        let pool = BlockingPool::new("test-pool", 1, 0, 1, Arc::new(|_| {})).unwrap();
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

    #[tokio::test]
    async fn a_job_that_panics_loses_its_answer_not_its_thread() {
        let pool = BlockingPool::new("test-pool", 1, 0, 4, Arc::new(|_| {})).unwrap();
        let panicked = pool
            .submit(|| -> u32 { panic!("a bug in one job") })
            .unwrap();
        assert!(
            panicked.await.is_err(),
            "its requester hears the worker is gone"
        );
        // The one thread still serves.
        assert_eq!(pool.submit(|| 7).unwrap().await.unwrap(), 7);
        assert!(pool.since_last_completion() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn a_pools_threads_carry_its_name_and_their_number() {
        let pool = BlockingPool::new("dojang-proof", 2, 0, 4, Arc::new(|_| {})).unwrap();
        let (release, wait) = std::sync::mpsc::channel::<()>();
        // The first job holds one thread, so the second runs on the other.
        let held = pool
            .submit(move || {
                let name = std::thread::current().name().map(str::to_owned);
                let _ = wait.recv();
                name
            })
            .unwrap();
        let other = pool
            .submit(|| std::thread::current().name().map(str::to_owned))
            .unwrap()
            .await
            .unwrap();
        release.send(()).unwrap();
        let mut names = vec![held.await.unwrap().unwrap(), other.unwrap()];
        names.sort();
        assert_eq!(names, ["dojang-proof-0", "dojang-proof-1"]);
        pool.finish();
    }

    #[tokio::test]
    async fn workers_run_nicer_than_the_thread_that_started_them() {
        let nice = || rustix::process::getpriority_process(Some(rustix::thread::gettid()));
        let before = nice().unwrap();
        let pool = BlockingPool::new("test-pool", 1, 10, 1, Arc::new(|_| {})).unwrap();
        let worker = pool.submit(move || nice().unwrap()).unwrap().await.unwrap();
        assert_eq!(worker, (before + 10).min(19));
        assert_eq!(nice().unwrap(), before, "only the workers are changed");
        pool.finish();
        let level = BlockingPool::new("test-pool", 1, 0, 1, Arc::new(|_| {})).unwrap();
        let worker = level
            .submit(move || nice().unwrap())
            .unwrap()
            .await
            .unwrap();
        assert_eq!(worker, before, "0 leaves them at the starter's priority");
        level.finish();
    }
}
