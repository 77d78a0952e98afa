//! A disk meter, the hiccup meter's counterpart for the device: a thread
//! of the load generator that asks of the disk the daemon commits to what
//! a commit asks of it (4 KiB written over blocks written before, then
//! `fdatasync`) every 10 ms, and keeps each that took 10 ms or more.
//!
//! On the development VM a half-load tail whose slow issuances all waited
//! in `commit` had, at the block layer (`perf record -e
//! block:block_rq_issue,block:block_rq_complete`), the writer's own 20–72
//! KiB log writes taking 12–54 ms with no other write of the machine in
//! flight, against p50 0.06 / p99 0.20 ms over the run: the device, not
//! our work. A durable commit waits for its write, so every issuance
//! behind it does too. This meter shows such a stretch in the run's own
//! figures; its 100 syncs a second add a tenth to the ~1,000 the writer
//! makes at half load.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A synced write kept as slow.
const SLOW: Duration = Duration::from_millis(10);
const EVERY: Duration = Duration::from_millis(10);
const BLOCK: usize = 4096;
/// The file written over, block after block.
const BLOCKS: u64 = 64;

/// What the meter saw over one phase.
pub(crate) struct DiskWrites {
    /// Synced writes made.
    pub(crate) writes: usize,
    /// Of them, [`SLOW`] or longer.
    pub(crate) slow: usize,
    /// The longest, in ms.
    pub(crate) longest_ms: f64,
    /// Why the meter could not run, if it could not.
    pub(crate) failed: Option<String>,
}

impl std::fmt::Display for DiskWrites {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(why) = &self.failed {
            return write!(f, "no disk meter ({why})");
        }
        write!(
            f,
            "{} of {} synced 4 KiB writes >= {} ms (longest {:.1} ms)",
            self.slow,
            self.writes,
            SLOW.as_millis(),
            self.longest_ms
        )
    }
}

/// The running meter; [`DiskMeter::stop`] ends it.
pub(crate) struct DiskMeter {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Result<Vec<Duration>, String>>,
    file: PathBuf,
}

impl DiskMeter {
    /// Starts writing to a file of its own in `dir`, which should be on
    /// the daemon's filesystem.
    pub(crate) fn start(dir: &Path) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let file = dir.join("disk-meter");
        let path = file.clone();
        let thread = std::thread::spawn(move || {
            let file = laid_out(&path).map_err(|e| e.to_string())?;
            let mut block = [0u8; BLOCK];
            let mut latencies = Vec::new();
            let mut next = 0u64;
            while !stopped.load(Ordering::Relaxed) {
                block[..8].copy_from_slice(&next.to_le_bytes());
                let began = Instant::now();
                file.write_all_at(&block, (next % BLOCKS) * BLOCK as u64)
                    .and_then(|()| file.sync_data())
                    .map_err(|e| e.to_string())?;
                latencies.push(began.elapsed());
                next += 1;
                std::thread::sleep(EVERY);
            }
            Ok(latencies)
        });
        Self { stop, thread, file }
    }

    pub(crate) fn stop(self) -> DiskWrites {
        self.stop.store(true, Ordering::Relaxed);
        let outcome = self
            .thread
            .join()
            .unwrap_or_else(|_| Err("its thread panicked".into()));
        let _ = std::fs::remove_file(&self.file);
        let latencies = match outcome {
            Ok(latencies) => latencies,
            Err(why) => {
                return DiskWrites {
                    writes: 0,
                    slow: 0,
                    longest_ms: 0.0,
                    failed: Some(why),
                }
            }
        };
        let ms = |d: &Duration| d.as_secs_f64() * 1000.0;
        DiskWrites {
            writes: latencies.len(),
            slow: latencies.iter().filter(|d| **d >= SLOW).count(),
            longest_ms: latencies.iter().map(ms).fold(0.0, f64::max),
            failed: None,
        }
    }
}

/// The meter's file written out and synced, so its writes go over blocks
/// already written, as the daemon's laid-out log's do.
fn laid_out(path: &Path) -> std::io::Result<File> {
    let file = File::create(path)?;
    file.write_all_at(&vec![0u8; BLOCK * BLOCKS as usize], 0)?;
    file.sync_all()?;
    Ok(file)
}
