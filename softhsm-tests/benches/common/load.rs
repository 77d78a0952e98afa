//! Load generation against a running daemon: distinct issuance requests
//! and keep-alive connections sending them closed or open loop.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use softhsm_tests::daemon;
use softhsm_tests::https::Target;

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

pub(crate) struct Run {
    pub(crate) issued: usize,
    pub(crate) failed: usize,
    pub(crate) elapsed: Duration,
    pub(crate) latencies: Vec<Duration>,
}

impl Run {
    pub(crate) fn rate(&self) -> f64 {
        self.issued as f64 / self.elapsed.as_secs_f64()
    }
    pub(crate) fn percentile(&mut self, p: f64) -> f64 {
        self.latencies.sort();
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let i = ((self.latencies.len() as f64 * p).ceil() as usize).clamp(1, self.latencies.len());
        self.latencies
            .get(i - 1)
            .map_or(f64::NAN, |latency| latency.as_secs_f64() * 1000.0)
    }
}

/// `connections` keep-alive connections for `duration`; with `rate`, each
/// connection sends on a fixed schedule (open loop), else back to back.
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
    let start = Instant::now();
    let results = runtime.block_on(async {
        let mut tasks = Vec::new();
        for c in 0..connections {
            let target = target.clone();
            let bodies = bodies.clone();
            let next = next.clone();
            tasks.push(tokio::spawn(async move {
                let mut conn = target.connect().await?;
                let (mut ok, mut failed, mut latencies) = (0usize, 0usize, Vec::new());
                let interval = rate.map(|r| Duration::from_secs_f64(connections as f64 / r));
                let mut due = tokio::time::Instant::now()
                    + interval.map_or(Duration::ZERO, |i| i.mul_f64(c as f64 / connections as f64));
                while start.elapsed() < duration {
                    if let Some(i) = interval {
                        tokio::time::sleep_until(due).await;
                        due += i;
                    }
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    let Some(body) = bodies.get(n) else { break };
                    // Latency from when the request was due (open loop) or sent.
                    let sent = if interval.is_some() {
                        due - interval.unwrap_or_default()
                    } else {
                        tokio::time::Instant::now()
                    };
                    match conn
                        .send(
                            "POST",
                            "/v1/credentials",
                            &[("content-type", "application/json")],
                            body.clone(),
                        )
                        .await
                    {
                        Ok(r) if r.status == 201 => {
                            ok += 1;
                            latencies.push(sent.elapsed());
                        }
                        Ok(r) => {
                            failed += 1;
                            if failed <= 3 {
                                eprintln!(
                                    "refused: {} {}",
                                    r.status,
                                    String::from_utf8_lossy(&r.body)
                                );
                            }
                        }
                        Err(e) => {
                            failed += 1;
                            eprintln!("error: {e}");
                            conn = target.connect().await?;
                        }
                    }
                }
                Ok::<_, String>((ok, failed, latencies))
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.push(t.await??);
        }
        BenchResult::Ok(all)
    })?;
    let elapsed = start.elapsed();
    let mut run = Run {
        issued: 0,
        failed: 0,
        elapsed,
        latencies: Vec::new(),
    };
    for (ok, failed, latencies) in results {
        run.issued += ok;
        run.failed += failed;
        run.latencies.extend(latencies);
    }
    Ok(run)
}
