//! Load benchmark of the real daemon: issuance over mTLS with keep-alive,
//! durable commits, next to the raw 2-thread SoftHSM ES256 rate measured in
//! the same run on the same machine; on SQLite and on PostgreSQL, several
//! runs of each (this machine's speed drifts: the spread is a finding).
//!
//! Each run reports issuances/s and p50/p99 at saturation and at half that
//! rate (open loop), then, in a phase of its own (its requests add to the
//! load), the p99 of one closed-loop client sending beside the same half
//! load (what one counter clerk feels), where the issuances' time went
//! (the daemon's per-stage histograms over each phase), the daemon's CPU per
//! issuance beyond its HSM work and, at saturation, by thread
//! (`common::threads`: the signing pool, SQLite's writer, the I/O runtime,
//! the log, the audit thread), its peak RSS, and the audit entry's share
//! (the entry's SQL measured on SQLite beside each run; on PostgreSQL a
//! share of the daemon's and the server's CPU together).
//! Over the half-load phase a hiccup meter (`common::hiccups`) reports the
//! machine's own stalls: a VM pause shows there and in no daemon stage;
//! a disk meter (`common::disk`) the device's: a write of the disk's own
//! that took as long as the tail did.
//! After each run the registry and the audit log are checked (credentials
//! = answers 201, quota moved by the free copies, one live credential per
//! holder and per phone, the exported log verifies). The summary gives the
//! median of the runs per store against the targets of issue 20.
//! The load generator shares the two cores with the daemon.
//!
//! `make bench-load` (or `cargo build --release --bins && cargo bench -p
//! softhsm-tests --bench daemon_load`); `DOJANG_LOAD_SECONDS` (default 10),
//! `DOJANG_LOAD_CONNECTIONS` (default 32), `DOJANG_LOAD_RUNS` (default 3),
//! `DOJANG_LOAD_STORE` (`sqlite`, `postgres`, default both; PostgreSQL is
//! the local one at 127.0.0.1:5432), `DOJANG_LOAD_LOG` (a directory that
//! keeps each run's daemon log), `DOJANG_LOAD_HALF_RATE` (issuances/s
//! offered in the half-load phases instead of half the run's saturation,
//! to compare two builds at the same load), `DOJANG_LOAD_SQLITE_LOG_MIB`
//! (the SQLite log file laid out at start, default the service's 1,280;
//! 0 lets it grow as commits write it), `DOJANG_LOAD_WORKER_NICENESS`
//! (`server.limits.worker_niceness`, default the service's 0: the workers
//! at the daemon's priority).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::disk::{DiskMeter, DiskWrites};
use common::hiccups::{HiccupMeter, Hiccups};
use common::invariants::{self, Registry};
use common::load::{bodies, env, load, Run};
use common::stages::StageHistograms;
use common::threads::ThreadCpu;
use common::BenchResult;
use pkcs11_shim::pkcs11::{raw_sign_rate, RawBenchmark};
use secrecy::SecretString;
use softhsm_tests::daemon::{Daemon, Options, PgSchema, Store};

fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// One run's figures (latencies in ms).
struct Figures {
    store: &'static str,
    raw: f64,
    hsm_us: f64,
    saturation: f64,
    saturation_p99: f64,
    half_p50: f64,
    half_p99: f64,
    /// The same requests' p50 and p99 inside the daemon.
    half_inside: (f64, f64),
    half_hiccups: Hiccups,
    half_disk: DiskWrites,
    single_p50: f64,
    single_p99: f64,
    failed: usize,
    cpu_us: f64,
    rss_peak_mib: f64,
    audit_share: f64,
}

fn metrics(d: &Daemon) -> String {
    String::from_utf8_lossy(&d.ops_client().get("/metrics").body).into_owned()
}

fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// SQLite's group commits over a phase of `seconds` (metrics text before
/// and after): how many, their writes, run / COMMIT p50/p99, and the share
/// of the phase the writer was busy (near 1, an issuance usually finds a
/// commit under way and waits for it before its own); none on PostgreSQL.
fn writer_phase(before: &str, after: &str, seconds: f64) -> Option<String> {
    let family = |text| StageHistograms::parse_family(text, "dojang_sqlite_writer_seconds", "part");
    let parts = family(after).since(&family(before));
    let (batches, run_p50, run_p99) = parts.of("run")?;
    let (_, commit_p50, commit_p99) = parts.of("commit")?;
    if batches <= 0.0 {
        return None;
    }
    let delta = |name| sample(after, name) - sample(before, name);
    let busy = (delta("dojang_sqlite_writer_seconds_sum{part=\"run\"}")
        + delta("dojang_sqlite_writer_seconds_sum{part=\"commit\"}"))
        / seconds;
    Some(format!(
        "{batches:.0} group commits of {:.1} writes on average; running them p50/p99 {run_p50:.2}/{run_p99:.2} ms, COMMIT (log written and synced) p50/p99 {commit_p50:.2}/{commit_p99:.2} ms; the writer busy {:.0}% of the phase",
        delta("dojang_sqlite_batch_writes_sum") / delta("dojang_sqlite_batch_writes_count"),
        busy * 100.0
    ))
}

/// The issuance requests' p50 and p99 (ms) inside the daemon over a phase,
/// from its request histogram (headers read to response built). The
/// client's figure adds the wait for a free connection (an open-loop
/// generator queues what a held daemon cannot take, so a stall shows
/// mostly there), TLS both ways, the loopback and the generator itself.
fn inside_daemon(before: &str, after: &str) -> (f64, f64) {
    let family =
        |text| StageHistograms::parse_family(text, "dojang_http_request_duration_seconds", "route");
    family(after)
        .since(&family(before))
        .of("/v1/credentials")
        .map_or((f64::NAN, f64::NAN), |(_, p50, p99)| (p50, p99))
}

fn print_stages(phase: &str, stages: &StageHistograms) {
    let parts: Vec<String> = stages
        .quantiles()
        .iter()
        .map(|(stage, _, p50, p99)| format!("{stage} {p50:.2}/{p99:.2}"))
        .collect();
    println!("    stages at {phase}, p50/p99 ms: {}", parts.join(", "));
}

fn print_phase(name: &str, run: &mut Run) -> (f64, f64) {
    let (p50, p99) = (run.percentile(0.50), run.percentile(0.99));
    println!(
        "    {name}: {:.0} issuances/s, p50 {p50:.2} ms, p99 {p99:.2} ms, {} failed",
        run.rate(),
        run.failed
    );
    if !run.lateness.is_empty() {
        println!(
            "      the load generator sent them p50 {:.2} ms, p99 {:.2} ms after their due time (counted in the latency)",
            run.lateness(0.50),
            run.lateness(0.99)
        );
    }
    (p50, p99)
}

/// The raw 2-thread rate and the HSM-work-only rate, medians of three
/// interleaved 2 s measurements.
fn baselines(config: &pkcs11_shim::Pkcs11Config, token_label: &str) -> BenchResult<(f64, f64)> {
    let (mut raws, mut ceilings) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        raws.push(raw_sign_rate(
            &RawBenchmark {
                module: config.module.clone(),
                token_label: token_label.to_owned(),
                pin: SecretString::from(softhsm_tests::USER_PIN),
                key_label: "bench-ds".into(),
                threads: 2,
                duration: Duration::from_secs(2),
            },
            &[0x5a; 256],
        )?);
        ceilings.push(common::hsm_work_per_issuance_rate(
            config,
            "bench-ds",
            "bench-pseudonym",
            Duration::from_secs(2),
        )?);
    }
    Ok((common::median(raws), common::median(ceilings)))
}

/// One run against a fresh daemon; `bench` is this process's token (one
/// PKCS#11 environment per process) for the raw baselines.
fn one_run(
    postgres: bool,
    bench: &(softhsm_tests::SoftHsmToken, pkcs11_shim::Pkcs11Config),
) -> BenchResult<Figures> {
    let seconds = env("DOJANG_LOAD_SECONDS", 10);
    let connections = env("DOJANG_LOAD_CONNECTIONS", 32) as usize;
    let duration = Duration::from_secs(seconds);
    let (raw, hsm_ceiling) = baselines(&bench.1, bench.0.label())?;
    let audit_us = audit_entry_us()?;
    let schema = if postgres {
        Some(PgSchema::create().ok_or("no PostgreSQL at 127.0.0.1:5432")?)
    } else {
        None
    };
    let store = match &schema {
        Some(s) => Store::Postgres(s.url.clone()),
        None => Store::Sqlite,
    };
    let mut d = Daemon::start(Options {
        store,
        sqlite_log_mib: env("DOJANG_LOAD_SQLITE_LOG_MIB", 1280),
        // The clerk's connection beside the load's, from the same client.
        limits: format!(
            "max_in_flight = {}\nmax_in_flight_per_client = {}\nsigning_threads = {}\n\
             worker_niceness = {}",
            connections * 4,
            connections + 8,
            env("DOJANG_LOAD_SIGNING_THREADS", 16),
            env("DOJANG_LOAD_WORKER_NICENESS", 0)
        ),
        policy: |p| {
            p.replace(
                "requests_per_minute = 6000",
                "requests_per_minute = 10000000",
            )
        },
        ..Options::default()
    });
    let target = d.api_target("counter", false);
    let pid = d.pid();
    let quota_before = sample(&metrics(&d), "dojang_free_quota_remaining");
    // Enough distinct requests for the saturated run at the token's ceiling.
    let count = (hsm_ceiling * seconds as f64 * 1.1) as usize + 1000;
    let saturated_bodies = Arc::new(bodies(count, 0)?);
    let mut issued = load(
        &target,
        Arc::new(bodies(200, 900_000)?),
        8,
        Duration::from_secs(1),
        None,
    )?
    .issued;

    let before_text = metrics(&d);
    let before = StageHistograms::parse(&before_text);
    let (postgres_cpu, machine_cpu) = (
        common::cpu_seconds_named("postgres"),
        common::machine_busy_seconds(),
    );
    let (daemon_cpu, own_cpu) = (
        common::cpu_seconds(&pid.to_string()),
        common::cpu_seconds("self"),
    );
    let threads_before = ThreadCpu::of(pid);
    let mut saturated = load(&target, saturated_bodies, connections, duration, None)?;
    let by_thread = ThreadCpu::of(pid).per_issuance_since(&threads_before, saturated.issued as u64);
    let daemon_cpu = common::cpu_seconds(&pid.to_string()) - daemon_cpu;
    let own_cpu = common::cpu_seconds("self") - own_cpu;
    let postgres_cpu = common::cpu_seconds_named("postgres") - postgres_cpu;
    let machine_cpu = common::machine_busy_seconds() - machine_cpu;
    let after_text = metrics(&d);
    let saturated_stages = StageHistograms::parse(&after_text).since(&before);
    let saturated_writer = writer_phase(&before_text, &after_text, saturated.elapsed.as_secs_f64());

    // A fixed rate compares two builds at the same load; by default the
    // run's own half.
    let half_rate = match env("DOJANG_LOAD_HALF_RATE", 0) {
        0 => saturated.rate() / 2.0,
        fixed => fixed as f64,
    };
    let half_count = (half_rate * seconds as f64 * 1.1) as usize + 100;
    let half_bodies = Arc::new(bodies(half_count, count as u32 + 1000)?);
    let log_mark = d.log().len();
    let before_text = metrics(&d);
    let before = StageHistograms::parse(&before_text);
    let meter = HiccupMeter::start();
    let disk_meter = DiskMeter::start(d.scratch());
    let mut half = load(&target, half_bodies, connections, duration, Some(half_rate))?;
    let half_disk = disk_meter.stop();
    let half_hiccups = meter.stop();
    let after_text = metrics(&d);
    let half_stages = StageHistograms::parse(&after_text).since(&before);
    let half_writer = writer_phase(&before_text, &after_text, half.elapsed.as_secs_f64());
    let half_inside = inside_daemon(&before_text, &after_text);
    // Then the clerk beside the same half load (other holders), a phase of
    // its own: a closed-loop client adds its own rate, so the half load's
    // figures above are taken without it.
    let beside_bodies = Arc::new(bodies(half_count, (count + half_count) as u32 + 2000)?);
    let single_bodies = Arc::new(bodies(20_000.min(seconds as usize * 1000), 1_500_000)?);
    let single_target = target.clone();
    let single = std::thread::spawn(move || load(&single_target, single_bodies, 1, duration, None));
    let beside = load(
        &target,
        beside_bodies,
        connections,
        duration,
        Some(half_rate),
    )?;
    let mut single = common::joined(single.join(), "single client")?;
    let rss_peak = rss_kib(pid, "VmHWM:");
    issued += saturated.issued + half.issued + beside.issued + single.issued;
    let quota_used = quota_before - sample(&metrics(&d), "dojang_free_quota_remaining");

    let slow = common::stages::slow_trace_summary(d.log().get(log_mark..).unwrap_or(""));
    d.signal("TERM");
    let _ = d.wait_exit(Duration::from_secs(30));
    let registry = match &schema {
        Some(s) => Registry::Postgres(&s.url),
        None => Registry::Sqlite(&d.scratch().join("registry.db")),
    };
    let entries = invariants::check(&d, &registry, issued, quota_used)?;
    if let Ok(dir) = std::env::var("DOJANG_LOAD_LOG") {
        let name = format!(
            "dojangd-{}-{}.log",
            if postgres { "postgres" } else { "sqlite" },
            pid
        );
        std::fs::write(std::path::Path::new(&dir).join(name), d.log())?;
    }
    drop(d);
    drop(schema);

    let per_issuance_us = daemon_cpu * 1e6 / saturated.issued.max(1) as f64;
    // The entry's cost is measured on SQLite, its SQL run in process; on
    // PostgreSQL that SQL runs in the server, so the share there is of the
    // CPU of both (with the daemon's alone a run read 6.8% where the
    // SQLite run beside it, same entry cost, read 4.8%).
    let share_of_us = if postgres {
        (daemon_cpu + postgres_cpu) * 1e6 / saturated.issued.max(1) as f64
    } else {
        per_issuance_us
    };
    let audit_share = audit_us / share_of_us * 100.0;
    let hsm_us = 2e6 / hsm_ceiling;
    let store_name = if postgres { "PostgreSQL" } else { "SQLite" };
    println!("  {store_name} run: raw SoftHSM ES256 2 threads {raw:.0} sig/s, HSM work of one issuance alone {hsm_ceiling:.0}/s ({hsm_us:.0} µs of CPU on two cores)");
    let (_, saturation_p99) = print_phase("saturation", &mut saturated);
    print_stages("saturation", &saturated_stages);
    if let Some(line) = saturated_writer {
        println!("    SQLite's writer at saturation: {line}");
    }
    println!(
        "    CPU at saturation: dojangd {:.2} cores, {per_issuance_us:.0} µs per issuance ({:.0} µs beyond its HSM work); load generator {:.2} cores; PostgreSQL {:.2} cores; the machine busy {:.2} of its cores",
        daemon_cpu / saturated.elapsed.as_secs_f64(),
        per_issuance_us - hsm_us,
        own_cpu / saturated.elapsed.as_secs_f64(),
        postgres_cpu / saturated.elapsed.as_secs_f64(),
        machine_cpu / saturated.elapsed.as_secs_f64(),
    );
    println!("    dojangd's CPU per issuance at saturation by thread, µs: {by_thread}");
    let (half_p50, half_p99) =
        print_phase(&format!("half load ({half_rate:.0}/s offered)"), &mut half);
    println!(
        "      inside the daemon (headers read to response built): p50 {:.2} ms, p99 {:.2} ms; the rest is waiting for one of the connections (the generator queues what a held daemon cannot take), TLS both ways, the loopback and the generator itself, on the same cores",
        half_inside.0, half_inside.1
    );
    print_stages("half load", &half_stages);
    if let Some(line) = half_writer {
        println!("    SQLite's writer at half load: {line}");
    }
    println!("    at half load: {slow}");
    println!("    the machine at half load: {half_hiccups}");
    println!("    the disk at half load: {half_disk}");
    let (single_p50, single_p99) =
        print_phase("one closed-loop client beside the half load", &mut single);
    println!(
        "    daemon peak RSS {:.1} MiB; audit entry {audit_us:.1} µs = {audit_share:.1}% of the CPU per issuance{}; after the run: {issued} credentials, {quota_used:.0} free copies, no holder or phone with two live, {entries} audit entries verified ({} beyond the credentials: the node's own decisions and any voids)",
        rss_peak as f64 / 1024.0,
        if postgres { " [entry cost measured on SQLite; of dojangd's and PostgreSQL's CPU]" } else { "" },
        entries.saturating_sub(issued as u64)
    );
    Ok(Figures {
        store: store_name,
        raw,
        hsm_us,
        saturation: saturated.rate(),
        saturation_p99,
        half_p50,
        half_p99,
        half_inside,
        half_hiccups,
        half_disk,
        single_p50,
        single_p99,
        failed: saturated.failed + half.failed + beside.failed + single.failed,
        cpu_us: per_issuance_us,
        rss_peak_mib: rss_peak as f64 / 1024.0,
        audit_share,
    })
}

/// What the audit entry's SQL adds to an issuance's transaction (on
/// SQLite), measured beside each run: the machine's speed drifts between
/// runs, and the share divides by the run's CPU. (PostgreSQL's write probe
/// queues and deletes an entry itself, so it is no baseline there.)
fn audit_entry_us() -> BenchResult<f64> {
    let (append_us, empty_us) = common::audit_sql_cpu_us()?;
    Ok((append_us - empty_us).max(0.0))
}

/// The median of one figure over a store's runs.
fn median_of(runs: &[&Figures], f: impl Fn(&Figures) -> f64) -> f64 {
    common::median(runs.iter().map(|r| f(r)).collect())
}

/// The half-load figures of the runs in which the disk meter saw no slow
/// write: what the code gives when the device does not stall.
fn quiet_disk_runs(runs: &[&Figures]) {
    let quiet: Vec<&Figures> = runs
        .iter()
        .copied()
        .filter(|f| f.half_disk.failed.is_none() && f.half_disk.slow == 0)
        .collect();
    if quiet.is_empty() {
        println!("    no run with every disk write under 10 ms at half load");
        return;
    }
    let (p50, p99) = (
        median_of(&quiet, |f| f.half_p50),
        median_of(&quiet, |f| f.half_p99),
    );
    println!(
        "    the {} of {} runs with every disk write under 10 ms at half load: p50 {p50:.2} ms, p99 {p99:.2} ms = {:.1} x p50, worst p99 {:.2} ms",
        quiet.len(),
        runs.len(),
        p99 / p50,
        quiet.iter().map(|f| f.half_p99).fold(0.0, f64::max),
    );
}

fn summary(all: &[Figures]) {
    println!("summary (median of the runs; targets of issue 20 in brackets):");
    let mut saturation = Vec::new();
    for store in ["SQLite", "PostgreSQL"] {
        let runs: Vec<&Figures> = all.iter().filter(|f| f.store == store).collect();
        if runs.is_empty() {
            continue;
        }
        let (p50, p99) = (
            median_of(&runs, |f| f.half_p50),
            median_of(&runs, |f| f.half_p99),
        );
        let worst = runs
            .iter()
            .max_by(|a, b| a.half_p99.total_cmp(&b.half_p99))
            .map_or((f64::NAN, f64::NAN, f64::NAN), |f| {
                (
                    f.half_p99,
                    f.half_hiccups.longest_ms,
                    f.half_disk.longest_ms,
                )
            });
        let sat = median_of(&runs, |f| f.saturation);
        saturation.push(sat);
        println!(
            "  {store}, {} runs: saturation {sat:.0}/s (p99 {:.1} ms), raw {:.0} sig/s; half load p50 {p50:.2} ms, p99 {p99:.2} ms = {:.1} x p50 [<= 3 x, <= 10 ms], worst run p99 {:.2} ms [<= 25 ms] (in that run the machine's longest stall {:.1} ms, the disk's longest write {:.1} ms); one clerk p50 {:.2} / p99 {:.2} ms",
            runs.len(),
            median_of(&runs, |f| f.saturation_p99),
            median_of(&runs, |f| f.raw),
            p99 / p50,
            worst.0,
            worst.1,
            worst.2,
            median_of(&runs, |f| f.single_p50),
            median_of(&runs, |f| f.single_p99),
        );
        let (inside_p50, inside_p99) = (
            median_of(&runs, |f| f.half_inside.0),
            median_of(&runs, |f| f.half_inside.1),
        );
        println!(
            "    half load inside the daemon (headers read to response built): p50 {inside_p50:.2} ms, p99 {inside_p99:.2} ms = {:.1} x p50",
            inside_p99 / inside_p50
        );
        quiet_disk_runs(&runs);
        println!(
            "    CPU per issuance {:.0} µs, {:.0} beyond the HSM work; peak RSS {:.1} MiB [<= 64]; audit share {:.1}% [<= 5%]; {} failed requests [0]",
            median_of(&runs, |f| f.cpu_us),
            median_of(&runs, |f| f.cpu_us - f.hsm_us),
            runs.iter().map(|f| f.rss_peak_mib).fold(0.0, f64::max),
            median_of(&runs, |f| f.audit_share),
            runs.iter().map(|f| f.failed).sum::<usize>(),
        );
    }
    if let [sqlite, postgres] = saturation[..] {
        println!(
            "  PostgreSQL saturation / SQLite saturation: {:.2} [>= 0.6]",
            postgres / sqlite
        );
    }
}

fn main() -> BenchResult {
    let runs = env("DOJANG_LOAD_RUNS", 3);
    let stores: &[bool] = match std::env::var("DOJANG_LOAD_STORE").as_deref() {
        Ok("sqlite") => &[false],
        Ok("postgres") => &[true],
        _ => &[false, true],
    };
    println!(
        "daemon load benchmark: POST /v1/credentials over mTLS (HTTP/1.1 keep-alive), {} connections, {} s per phase, mdoc and SD-JWT alternating; SQLite synchronous=FULL, PostgreSQL local with synchronous_commit on",
        env("DOJANG_LOAD_CONNECTIONS", 32),
        env("DOJANG_LOAD_SECONDS", 10)
    );
    let bench = common::token_with_ds_key("bench-ds")?;
    // The stores take turns, so a slow spell of the machine falls on both
    // and the PostgreSQL / SQLite ratio compares neighbouring runs.
    let mut all = Vec::new();
    for _ in 0..runs {
        for &postgres in stores {
            all.push(one_run(postgres, &bench)?);
        }
    }
    summary(&all);
    Ok(())
}
