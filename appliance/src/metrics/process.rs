//! The standard `process_*` metrics (CPU time, resident memory, open and
//! maximum file descriptors, threads, start time), read from `/proc/self`
//! at each scrape. Read here rather than through prometheus's `process`
//! feature, whose procfs pulls a second rustix into the tree.

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Gauge, IntGauge, Opts};

/// Linux's USER_HZ: the unit of the times in `/proc/self/stat` (fixed by
/// the kernel ABI on every architecture Dojang runs on).
const TICKS_PER_SECOND: f64 = 100.0;

/// The process collector.
pub(super) struct ProcessCollector {
    cpu: Gauge,
    resident: IntGauge,
    open_fds: IntGauge,
    max_fds: IntGauge,
    threads: IntGauge,
    start_time: Gauge,
    descs: Vec<Desc>,
}

/// What `/proc/self` says now; `None` where a file could not be read.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Reading {
    pub(super) cpu_seconds: Option<f64>,
    pub(super) resident_bytes: Option<i64>,
    pub(super) open_fds: Option<i64>,
    pub(super) max_fds: Option<i64>,
    pub(super) threads: Option<i64>,
    pub(super) start_time_seconds: Option<f64>,
}

fn field<T: std::str::FromStr>(text: &str, key: &str, nth: usize) -> Option<T> {
    text.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l[key.len()..].split_whitespace().nth(nth))
        .and_then(|v| v.parse().ok())
}

/// Reads `/proc/self`.
pub(super) fn read() -> Reading {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which may hold spaces: state is 3rd.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let number = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<f64>().ok());
    let boot: Option<f64> = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|t| field(&t, "btime", 0));
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    Reading {
        cpu_seconds: number(14)
            .zip(number(15))
            .map(|(user, system)| (user + system) / TICKS_PER_SECOND),
        resident_bytes: field::<i64>(&status, "VmRSS:", 0).map(|kib| kib * 1024),
        open_fds: std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|d| i64::try_from(d.count()).unwrap_or(i64::MAX)),
        max_fds: field(&limits, "Max open files", 0),
        threads: field(&status, "Threads:", 0),
        start_time_seconds: number(22)
            .zip(boot)
            .map(|(ticks, boot)| boot + ticks / TICKS_PER_SECOND),
    }
}

impl ProcessCollector {
    /// The collector (its metrics are read at each scrape).
    #[allow(clippy::expect_used)] // fixed definitions: a failure is a bug caught by any test
    pub(super) fn new() -> Self {
        let opts = |name: &str, help: &str| Opts::new(name, help);
        let cpu = Gauge::with_opts(opts(
            "process_cpu_seconds_total",
            "Total user and system CPU time spent in seconds.",
        ))
        .expect("metric definition");
        let resident = IntGauge::with_opts(opts(
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
        ))
        .expect("metric definition");
        let open_fds =
            IntGauge::with_opts(opts("process_open_fds", "Number of open file descriptors."))
                .expect("metric definition");
        let max_fds = IntGauge::with_opts(opts(
            "process_max_fds",
            "Maximum number of open file descriptors.",
        ))
        .expect("metric definition");
        let threads = IntGauge::with_opts(opts("process_threads", "Number of OS threads."))
            .expect("metric definition");
        let start_time = Gauge::with_opts(opts(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
        ))
        .expect("metric definition");
        let descs = [
            cpu.desc(),
            resident.desc(),
            open_fds.desc(),
            max_fds.desc(),
            threads.desc(),
            start_time.desc(),
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
        ProcessCollector {
            cpu,
            resident,
            open_fds,
            max_fds,
            threads,
            start_time,
            descs,
        }
    }
}

impl Collector for ProcessCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let now = read();
        let mut out = Vec::new();
        if let Some(v) = now.cpu_seconds {
            self.cpu.set(v);
            out.extend(self.cpu.collect());
        }
        for (gauge, value) in [
            (&self.resident, now.resident_bytes),
            (&self.open_fds, now.open_fds),
            (&self.max_fds, now.max_fds),
            (&self.threads, now.threads),
        ] {
            if let Some(v) = value {
                gauge.set(v);
                out.extend(gauge.collect());
            }
        }
        if let Some(v) = now.start_time_seconds {
            self.start_time.set(v);
            out.extend(self.start_time.collect());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_reads_as_itself() {
        let r = read();
        assert!(r.resident_bytes.is_some_and(|b| b > 1 << 20), "{r:?}");
        assert!(r.threads.is_some_and(|t| t >= 1), "{r:?}");
        assert!(r.open_fds.is_some_and(|n| n >= 3), "{r:?}");
        assert!(r.max_fds.is_some_and(|n| n >= 64), "{r:?}");
        assert!(r.cpu_seconds.is_some_and(|s| s >= 0.0), "{r:?}");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        assert!(
            r.start_time_seconds
                .is_some_and(|t| t <= now + 1.0 && t > now - 86_400.0 * 365.0),
            "{r:?}"
        );
    }
}
