//! Load generation against a running daemon: distinct issuance requests
//! and keep-alive connections sending them closed or open loop.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use softhsm_tests::daemon;
use softhsm_tests::https::{Connection, Target};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use super::BenchResult;

pub(crate) fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Distinct holders on distinct phones: one live ID per person and per phone.
pub(crate) fn bodies(count: usize, offset: u32) -> BenchResult<Vec<Vec<u8>>> {
    (0..count)
        .map(|i| {
            let (jwk, _) = daemon::phone();
            let profile = if i % 2 == 0 { "mdoc" } else { "sd-jwt" };
            let request = daemon::request(profile, &daemon::number(offset + i as u32), &jwk);
            Ok(serde_json::to_vec(&request)?)
        })
        .collect()
}

#[derive(Default)]
pub(crate) struct Run {
    pub(crate) issued: usize,
    pub(crate) failed: usize,
    pub(crate) elapsed: Duration,
    pub(crate) latencies: Vec<Duration>,
    /// Open loop: how long after its due time each request went out.
    pub(crate) lateness: Vec<Duration>,
}

impl Run {
    pub(crate) fn rate(&self) -> f64 {
        self.issued as f64 / self.elapsed.as_secs_f64()
    }
    /// The latencies' `p` quantile, in ms.
    pub(crate) fn percentile(&mut self, p: f64) -> f64 {
        quantile_ms(&mut self.latencies, p)
    }
    /// Open loop: the `p` quantile of how late requests went out, in ms.
    pub(crate) fn lateness(&mut self, p: f64) -> f64 {
        quantile_ms(&mut self.lateness, p)
    }
}

fn quantile_ms(values: &mut [Duration], p: f64) -> f64 {
    values.sort();
    let i = ((values.len() as f64 * p).ceil() as usize).clamp(1, values.len().max(1));
    values
        .get(i - 1)
        .map_or(f64::NAN, |value| value.as_secs_f64() * 1000.0)
}

/// `connections` keep-alive connections for `duration`; with `rate`, the
/// requests are due on a fixed schedule (open loop) and each latency runs
/// from its due time, else back to back. The clock starts once every
/// connection is up, so no request is due before it can be sent.
pub(crate) fn load(
    target: &Target,
    bodies: Arc<Vec<Vec<u8>>>,
    connections: usize,
    duration: Duration,
    rate: Option<f64>,
) -> BenchResult<Run> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let next = Arc::new(AtomicUsize::new(0));
    let (start, results, pacer) = runtime.block_on(async {
        let mut up = Vec::new();
        for _ in 0..connections {
            up.push(target.connect().await?);
        }
        let start = Instant::now();
        let (schedules, pacer) = match rate {
            Some(rate) => {
                let (senders, receivers): (Vec<_>, Vec<_>) = (0..connections)
                    .map(|_| tokio::sync::mpsc::unbounded_channel())
                    .unzip();
                let pacer = std::thread::Builder::new()
                    .name("bench-pacer".into())
                    .spawn(move || pace(senders, rate, start, duration))?;
                (receivers, Some(pacer))
            }
            None => (Vec::new(), None),
        };
        // Closed loop: no schedules, so every connection gets `None`.
        let mut schedules = schedules.into_iter();
        let tasks: Vec<_> = up
            .into_iter()
            .map(|conn| {
                let sender = Sender {
                    target: target.clone(),
                    bodies: bodies.clone(),
                    next: next.clone(),
                    until: start + duration,
                };
                tokio::spawn(sender.run(conn, schedules.next()))
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.push(t.await??);
        }
        BenchResult::Ok((start, all, pacer))
    })?;
    if let Some(pacer) = pacer {
        super::joined(pacer.join().map(Ok), "pacer")?;
    }
    let mut run = Run {
        elapsed: start.elapsed(),
        ..Run::default()
    };
    for sent in results {
        run.issued += sent.ok;
        run.failed += sent.failed;
        run.latencies.extend(sent.latencies);
        run.lateness.extend(sent.lateness);
    }
    Ok(run)
}

/// The open loop's clock, on a thread of its own: tokio's timers round a
/// deadline up to the next millisecond, which sent requests ~1 ms after
/// their due time (p99 2.3 ms at ~950/s), a delay of the load generator
/// that counted as the daemon's. A thread's sleep wakes within tens of
/// µs; it hands request k's due time to connection k mod n, until the
/// phase ends. A connection that gave up stops taking them; the others go
/// on.
fn pace(connections: Vec<UnboundedSender<Instant>>, rate: f64, start: Instant, duration: Duration) {
    let spacing = Duration::from_secs_f64(1.0 / rate);
    for (k, connection) in (0u32..).zip(connections.iter().cycle()) {
        let due = start + spacing * k;
        if due >= start + duration {
            break;
        }
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        let _ = connection.send(due);
    }
}

/// What one connection sent.
#[derive(Default)]
struct Sent {
    ok: usize,
    failed: usize,
    latencies: Vec<Duration>,
    lateness: Vec<Duration>,
}

/// One keep-alive connection: sends the next body when its schedule says
/// (open loop) or as soon as the last answer came (closed loop).
struct Sender {
    target: Target,
    bodies: Arc<Vec<Vec<u8>>>,
    next: Arc<AtomicUsize>,
    until: Instant,
}

impl Sender {
    async fn run(
        self,
        mut conn: Connection,
        mut schedule: Option<UnboundedReceiver<Instant>>,
    ) -> Result<Sent, String> {
        let mut sent = Sent::default();
        loop {
            // Latency from when the request was due (open loop) or sent.
            let from = match schedule.as_mut() {
                Some(schedule) => match schedule.recv().await {
                    Some(due) => {
                        sent.lateness.push(due.elapsed());
                        due
                    }
                    None => break,
                },
                None => Instant::now(),
            };
            if Instant::now() >= self.until {
                break;
            }
            let n = self.next.fetch_add(1, Ordering::Relaxed);
            let Some(body) = self.bodies.get(n) else {
                break;
            };
            let answer = conn
                .send(
                    "POST",
                    "/v1/credentials",
                    &[("content-type", "application/json")],
                    body.clone(),
                )
                .await;
            match answer {
                Ok(r) if r.status == 201 => {
                    sent.ok += 1;
                    sent.latencies.push(from.elapsed());
                }
                Ok(r) => {
                    sent.failed += 1;
                    if sent.failed <= 3 {
                        eprintln!("refused: {} {}", r.status, String::from_utf8_lossy(&r.body));
                    }
                }
                Err(e) => {
                    sent.failed += 1;
                    eprintln!("error: {e}");
                    conn = self.target.connect().await?;
                }
            }
        }
        Ok(sent)
    }
}
