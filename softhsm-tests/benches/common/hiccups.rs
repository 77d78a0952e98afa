//! A hiccup meter (after jHiccup): a thread of the load generator that
//! asks to sleep 1 ms, over and over, and keeps each overrun of 10 ms or
//! more. At half load the machine has idle cores, so a thread that wakes
//! 100 ms late was not held up by our work: the whole VM was paused (or
//! its cores were taken by the host: `steal`). A tail the daemon's stage
//! histograms do not show, in a run where this meter saw stalls as long,
//! is the machine's; one without such stalls is ours to find.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// An overrun kept as a stall.
const STALL: Duration = Duration::from_millis(10);

/// Stalls seen over one phase.
pub(crate) struct Hiccups {
    /// Overruns of [`STALL`] or more.
    pub(crate) stalls: usize,
    /// The longest, in ms (0 without any).
    pub(crate) longest_ms: f64,
    /// Their sum, in ms.
    pub(crate) total_ms: f64,
    /// CPU time the host took from this VM over the phase (`steal`, all
    /// cores), in seconds.
    pub(crate) steal_s: f64,
}

impl std::fmt::Display for Hiccups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} stalls >= {} ms of the load generator's 1 ms timer thread (longest {:.1} ms, {:.0} ms in all); steal {:.2} s",
            self.stalls,
            STALL.as_millis(),
            self.longest_ms,
            self.total_ms,
            self.steal_s
        )
    }
}

/// The running meter; [`HiccupMeter::stop`] ends it.
pub(crate) struct HiccupMeter {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Vec<Duration>>,
    steal_before: f64,
}

impl HiccupMeter {
    pub(crate) fn start() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let (tick, mut stalls) = (Duration::from_millis(1), Vec::new());
            while !stopped.load(Ordering::Relaxed) {
                let asked = Instant::now();
                std::thread::sleep(tick);
                let over = asked.elapsed().saturating_sub(tick);
                if over >= STALL {
                    stalls.push(over);
                }
            }
            stalls
        });
        Self {
            stop,
            thread,
            steal_before: steal_seconds(),
        }
    }

    pub(crate) fn stop(self) -> Hiccups {
        self.stop.store(true, Ordering::Relaxed);
        let stalls = self.thread.join().unwrap_or_default();
        let ms = |d: &Duration| d.as_secs_f64() * 1000.0;
        Hiccups {
            stalls: stalls.len(),
            longest_ms: stalls.iter().map(ms).fold(0.0, f64::max),
            // A fold from +0: an empty f64 sum is -0.
            total_ms: stalls.iter().map(ms).fold(0.0, |a, b| a + b),
            steal_s: steal_seconds() - self.steal_before,
        }
    }
}

/// CPU seconds the host has taken from this VM so far, over every core
/// (the eighth figure of `/proc/stat`'s `cpu` line).
fn steal_seconds() -> f64 {
    std::fs::read_to_string("/proc/stat")
        .unwrap_or_default()
        .lines()
        .next()
        .and_then(|cpu| cpu.split_whitespace().nth(8)?.parse::<f64>().ok())
        .map_or(0.0, |ticks| ticks / 100.0) // USER_HZ
}
