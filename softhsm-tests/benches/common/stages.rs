//! The daemon's per-stage issuance histograms, read from `/metrics` before
//! and after a phase: what the phase's issuances spent in each stage; and
//! the same for another labelled histogram (SQLite's writer, by part).

use std::collections::BTreeMap;

/// Cumulative bucket counts per stage: upper bound (s) → count.
#[derive(Clone, Default)]
pub(crate) struct StageHistograms(BTreeMap<String, Vec<(f64, f64)>>);

fn label<'a>(labels: &'a str, name: &str) -> Option<&'a str> {
    let start = labels.find(&format!("{name}=\""))? + name.len() + 2;
    let rest = labels.get(start..)?;
    rest.get(..rest.find('"')?)
}

impl StageHistograms {
    /// The issuance stages, from a Prometheus text exposition.
    pub(crate) fn parse(text: &str) -> Self {
        Self::parse_family(text, "dojang_issuance_stage_seconds", "stage")
    }

    /// The histogram `family`, one per value of its label `by`.
    pub(crate) fn parse_family(text: &str, family: &str, by: &str) -> Self {
        let prefix = format!("{family}_bucket{{");
        let mut stages: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix(prefix.as_str()) else {
                continue;
            };
            let Some((labels, value)) = rest.rsplit_once("} ") else {
                continue;
            };
            let (Some(stage), Some(le), Ok(count)) =
                (label(labels, by), label(labels, "le"), value.parse())
            else {
                continue;
            };
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap_or(f64::NAN)
            };
            stages
                .entry(stage.to_owned())
                .or_default()
                .push((bound, count));
        }
        for buckets in stages.values_mut() {
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        }
        StageHistograms(stages)
    }

    /// What was added between `before` and `self`.
    pub(crate) fn since(&self, before: &StageHistograms) -> StageHistograms {
        let mut delta = self.0.clone();
        for (stage, buckets) in &mut delta {
            if let Some(earlier) = before.0.get(stage) {
                for ((_, count), (_, old)) in buckets.iter_mut().zip(earlier) {
                    *count -= old;
                }
            }
        }
        StageHistograms(delta)
    }

    /// One series' (count, p50 ms, p99 ms).
    pub(crate) fn of(&self, name: &str) -> Option<(f64, f64, f64)> {
        let buckets = self.0.get(name)?;
        Some((
            buckets.last()?.1,
            quantile(buckets, 0.50) * 1e3,
            quantile(buckets, 0.99) * 1e3,
        ))
    }

    /// Per stage, in pipeline order: (name, count, p50 ms, p99 ms), the
    /// quantiles interpolated linearly inside their bucket.
    pub(crate) fn quantiles(&self) -> Vec<(String, f64, f64, f64)> {
        const ORDER: [&str; 9] = [
            "queue",
            "prior",
            "validate",
            "pseudonym",
            "facts",
            "policy",
            "status_index",
            "sign",
            "commit",
        ];
        ORDER
            .iter()
            .filter_map(|stage| {
                let (count, p50, p99) = self.of(stage)?;
                Some(((*stage).to_owned(), count, p50, p99))
            })
            .collect()
    }
}

/// The `p` quantile of cumulative buckets (seconds); in the +Inf bucket,
/// the largest finite bound.
fn quantile(buckets: &[(f64, f64)], p: f64) -> f64 {
    let Some(&(_, total)) = buckets.last() else {
        return f64::NAN;
    };
    if total <= 0.0 {
        return f64::NAN;
    }
    let rank = total * p;
    let (mut lower, mut below) = (0.0, 0.0);
    for &(bound, count) in buckets {
        if count >= rank {
            if bound.is_infinite() {
                return lower;
            }
            let within = count - below;
            let share = if within > 0.0 {
                (rank - below) / within
            } else {
                1.0
            };
            return lower + (bound - lower) * share;
        }
        (lower, below) = (bound, count);
    }
    lower
}
/// The daemon's slow-issuance lines (`slow issuance … queue_ms=… commit_ms=…`)
/// summarised: how many, and how many of them each stage dominated.
pub(crate) fn slow_trace_summary(log: &str) -> String {
    let mut dominant: BTreeMap<String, usize> = BTreeMap::new();
    let mut lines = 0;
    for line in log.lines().filter(|l| l.contains("slow issuance")) {
        lines += 1;
        let worst = line
            .split_whitespace()
            .filter_map(|field| {
                let (key, value) = field.split_once('=')?;
                let stage = key.strip_suffix("_ms")?;
                (stage != "total").then_some((stage, value.parse::<f64>().ok()?))
            })
            .max_by(|a, b| a.1.total_cmp(&b.1));
        if let Some((stage, _)) = worst {
            *dominant.entry(stage.to_owned()).or_default() += 1;
        }
    }
    let parts: Vec<String> = dominant
        .iter()
        .map(|(stage, n)| format!("{stage} {n}"))
        .collect();
    format!("{lines} slow issuances traced (over 25 ms; at most 20 lines a second), the stage that took longest in each: {}", if parts.is_empty() { "-".to_owned() } else { parts.join(", ") })
}
