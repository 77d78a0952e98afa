//! Where a daemon's CPU goes, by thread, without a profiler: each thread's
//! user and system time from `/proc/PID/task/TID/stat`, read before and
//! after a phase and summed by name (`dojang-sign-3` counts as
//! `dojang-sign`). The SQLite writer, the I/O runtime, the signing pool,
//! the log and the audit thread each get their share of an issuance.

use std::collections::BTreeMap;

use super::cpu_seconds;

/// CPU seconds so far of a process's threads, by name (the `-N` of a
/// pool's thread dropped), with how many threads share the name.
pub(crate) struct ThreadCpu(BTreeMap<String, (f64, usize)>);

impl ThreadCpu {
    /// The threads of `pid` now; a thread that has just exited is missed.
    pub(crate) fn of(pid: u32) -> Self {
        let mut by_name: BTreeMap<String, (f64, usize)> = BTreeMap::new();
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task"));
        for task in tasks.into_iter().flatten().flatten() {
            let Ok(comm) = std::fs::read_to_string(task.path().join("comm")) else {
                continue;
            };
            let tid = task.file_name().to_string_lossy().into_owned();
            let slot = by_name
                .entry(pool_name(comm.trim()).to_owned())
                .or_default();
            slot.0 += cpu_seconds(&format!("{pid}/task/{tid}"));
            slot.1 += 1;
        }
        ThreadCpu(by_name)
    }

    /// µs per issuance of each name between `before` and `self`, the
    /// largest first, as one line (`dojang-sign` x16 229, ...); names under
    /// 1 µs are summed as "the rest".
    pub(crate) fn per_issuance_since(&self, before: &ThreadCpu, issued: u64) -> String {
        let per = |seconds: f64| seconds * 1e6 / issued.max(1) as f64;
        let mut shares: Vec<(&str, usize, f64)> = self
            .0
            .iter()
            .map(|(name, (now, threads))| {
                let was = before.0.get(name).map_or(0.0, |(s, _)| *s);
                (name.as_str(), *threads, per(now - was))
            })
            .collect();
        shares.sort_by(|a, b| b.2.total_cmp(&a.2));
        let rest: f64 = shares.iter().filter(|s| s.2 < 1.0).map(|s| s.2).sum();
        let mut parts: Vec<String> = shares
            .iter()
            .filter(|s| s.2 >= 1.0)
            .map(|(name, threads, us)| match threads {
                1 => format!("{name} {us:.0}"),
                n => format!("{name} x{n} {us:.0}"),
            })
            .collect();
        parts.push(format!("the rest {rest:.0}"));
        parts.join(", ")
    }
}

/// A pool's thread name without its number: `dojang-sign-12` is
/// `dojang-sign`; a name without a numbered suffix is itself.
fn pool_name(comm: &str) -> &str {
    match comm.rsplit_once('-') {
        Some((stem, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => stem,
        _ => comm,
    }
}
