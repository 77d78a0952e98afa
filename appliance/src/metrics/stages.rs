//! Where an issuance's time goes: a histogram per stage, and a log line
//! for each slow issuance naming how long each of its stages took, so a
//! tail can be traced to its cause. Neither carries holder data: stage
//! names are constants, the line names only the request id.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use prometheus::{HistogramVec, IntCounter, Registry};

/// The stages of an issuance, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Waiting for a signing thread.
    Queue,
    /// Rate limit and idempotency lookup.
    Prior,
    /// Parsing and checking the holder's data.
    Validate,
    /// The pseudonym HMAC in the key backend.
    Pseudonym,
    /// The registry's facts about the holder and the phone.
    Facts,
    /// The policy's decision.
    Policy,
    /// A position in a status list (now and then a block reserved).
    StatusIndex,
    /// Building and signing the credential.
    Sign,
    /// The registry's durable commit (queue, transaction, fsync).
    Commit,
}

const STAGES: [Stage; 9] = [
    Stage::Queue,
    Stage::Prior,
    Stage::Validate,
    Stage::Pseudonym,
    Stage::Facts,
    Stage::Policy,
    Stage::StatusIndex,
    Stage::Sign,
    Stage::Commit,
];

impl Stage {
    /// The metric label.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Queue => "queue",
            Stage::Prior => "prior",
            Stage::Validate => "validate",
            Stage::Pseudonym => "pseudonym",
            Stage::Facts => "facts",
            Stage::Policy => "policy",
            Stage::StatusIndex => "status_index",
            Stage::Sign => "sign",
            Stage::Commit => "commit",
        }
    }

    fn position(self) -> usize {
        STAGES.iter().position(|s| *s == self).unwrap_or(0)
    }
}

/// An issuance slower than this is logged with its stages.
pub const SLOW_ISSUANCE: Duration = Duration::from_millis(25);
/// Slow issuances logged per second at most (a stalled store would
/// otherwise write a line per request); the rest are only counted.
const SLOW_LINES_PER_SECOND: u64 = 20;

/// One issuance's stopwatch: each `lap` charges the time since the last to
/// a stage.
pub struct StageClock {
    started: Instant,
    last: Instant,
    spent: [Duration; STAGES.len()],
}

impl StageClock {
    /// A clock started when the request was queued.
    pub fn since(queued: Instant) -> Self {
        StageClock {
            started: queued,
            last: queued,
            spent: [Duration::ZERO; STAGES.len()],
        }
    }

    /// Charges the time since the last lap to `stage`.
    pub fn lap(&mut self, stage: Stage) {
        let now = Instant::now();
        if let Some(spent) = self.spent.get_mut(stage.position()) {
            *spent += now.saturating_duration_since(self.last);
        }
        self.last = now;
    }

    /// From the queue to the last lap.
    pub fn total(&self) -> Duration {
        self.last.saturating_duration_since(self.started)
    }

    fn stages(&self) -> impl Iterator<Item = (Stage, Duration)> + '_ {
        STAGES.iter().copied().zip(self.spent.iter().copied())
    }
}

/// The stage histograms and the slow-issuance trace.
pub struct IssuanceStages {
    seconds: HistogramVec,
    /// Issuances slower than `SLOW_ISSUANCE`.
    pub slow: IntCounter,
    /// The second (since `epoch`) and the lines logged in it.
    logged: AtomicU64,
    epoch: Instant,
}

/// Finer than the other histograms' buckets (seconds): a stage of a 3 ms
/// issuance takes tens of microseconds to a few milliseconds.
pub(super) const FINE_BUCKETS: [f64; 21] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.000_75, 0.001, 0.001_5, 0.002, 0.003, 0.005, 0.007_5,
    0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0,
];

impl IssuanceStages {
    /// Registers `dojang_issuance_stage_seconds` and
    /// `dojang_issuance_slow_total`.
    #[allow(clippy::expect_used)] // fixed definitions: a failure is a bug caught by any test
    pub fn new(r: &Registry) -> Self {
        let seconds = super::fine_histogram(
            r,
            "dojang_issuance_stage_seconds",
            "Time each stage of an issued credential took, from the queue for a signing thread to the durable commit.",
            &["stage"],
        );
        let slow = IntCounter::new(
            "dojang_issuance_slow_total",
            "Issuances that took longer than 25 ms from the queue to the commit.",
        )
        .expect("metric definition");
        r.register(Box::new(slow.clone())).expect("unique metric");
        IssuanceStages {
            seconds,
            slow,
            logged: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// Records an issued credential's stages; logs them if it was slow.
    pub fn record(&self, clock: &StageClock, request_id: &str) {
        for (stage, spent) in clock.stages() {
            self.seconds
                .with_label_values(&[stage.name()])
                .observe(spent.as_secs_f64());
        }
        let total = clock.total();
        if total < SLOW_ISSUANCE {
            return;
        }
        self.slow.inc();
        if !self.may_log() {
            return;
        }
        let ms = |stage: Stage| {
            clock
                .spent
                .get(stage.position())
                .map_or(0.0, |d| d.as_secs_f64() * 1e3)
        };
        tracing::warn!(
            request_id,
            total_ms = total.as_secs_f64() * 1e3,
            queue_ms = ms(Stage::Queue),
            prior_ms = ms(Stage::Prior),
            validate_ms = ms(Stage::Validate),
            pseudonym_ms = ms(Stage::Pseudonym),
            facts_ms = ms(Stage::Facts),
            policy_ms = ms(Stage::Policy),
            status_index_ms = ms(Stage::StatusIndex),
            sign_ms = ms(Stage::Sign),
            commit_ms = ms(Stage::Commit),
            "slow issuance"
        );
    }

    /// Whether this second's budget of slow lines has room (packed as
    /// second << 16 | count).
    fn may_log(&self) -> bool {
        let second = self.epoch.elapsed().as_secs();
        let mut current = self.logged.load(Ordering::Relaxed);
        loop {
            let next = if current >> 16 == second {
                if current & 0xffff >= SLOW_LINES_PER_SECOND {
                    return false;
                }
                current + 1
            } else {
                (second << 16) | 1
            };
            match self.logged.compare_exchange_weak(
                current,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(seen) => current = seen,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn laps_are_charged_to_their_stage_and_the_total_spans_them() {
        let queued = Instant::now();
        let mut clock = StageClock::since(queued);
        std::thread::sleep(Duration::from_millis(3));
        clock.lap(Stage::Queue);
        clock.lap(Stage::Prior);
        std::thread::sleep(Duration::from_millis(2));
        clock.lap(Stage::Commit);
        let spent: Vec<_> = clock.stages().collect();
        assert!(spent[0].1 >= Duration::from_millis(3), "{spent:?}");
        assert!(spent[1].1 < Duration::from_millis(2), "{spent:?}");
        assert!(spent[8].1 >= Duration::from_millis(2), "{spent:?}");
        let sum: Duration = spent.iter().map(|(_, d)| *d).sum();
        assert_eq!(sum, clock.total());
    }

    #[test]
    fn slow_lines_are_limited_per_second_but_every_slow_issuance_is_counted() {
        let stages = IssuanceStages::new(&Registry::new());
        let allowed = (0..100).filter(|_| stages.may_log()).count() as u64;
        // The test may straddle a second boundary: at most two seconds' budget.
        assert!(
            (SLOW_LINES_PER_SECOND..=2 * SLOW_LINES_PER_SECOND).contains(&allowed),
            "{allowed}"
        );
        let mut slow = StageClock::since(Instant::now() - SLOW_ISSUANCE * 2);
        slow.lap(Stage::Commit);
        stages.record(&slow, "r1");
        let fast = {
            let mut c = StageClock::since(Instant::now());
            c.lap(Stage::Commit);
            c
        };
        stages.record(&fast, "r2");
        assert_eq!(stages.slow.get(), 1);
    }
}
