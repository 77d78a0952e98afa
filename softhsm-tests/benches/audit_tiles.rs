//! The tiled audit log at national size (issue 15), on the embedded store
//! (SQLite) with an Ed25519 audit key in SoftHSM, in one run: a log grown
//! to 10^3, 10^6 and 10^8 synthetic entries; at each size the append rate
//! (bulk rows, then the checkpoint that takes them into the tree and
//! stores their tile hashes), the cost of a steady checkpoint (1,000 new
//! entries, root, HSM signature), inclusion and consistency proof times
//! (median and p99 of 200 each, through the registry: first with the page
//! cache as the load left it, then at other indices with the tile tables
//! read once, as on a server that keeps its tiles in memory), a node's start
//! (a fresh registry: a frontier from O(log n) tiles, checked against the
//! signed root, and the upper tree from the level-1 hashes, checked against
//! the frontier)
//! and disk use per million entries. Proof times at the largest size are
//! printed as a ratio to the smallest (target: flat within 2x), start-up
//! against 5 s. The ratio is then measured again side by side: a second
//! log of 2,001 entries and the largest one take turns, five rounds of 200
//! proofs each with their tiles resident, so the machine's drift over the
//! run (minutes on a shared VM) falls on both figures alike.
//!
//! `make bench-audit`; `DOJANG_BENCH_AUDIT_ENTRIES` sets the largest size
//! (default 100,000,000: about 20 GB of disk under `DOJANG_BENCH_DIR`, or
//! the temporary directory, and some minutes).

mod common;

use std::time::Instant;

use common::BenchResult;
use dojang::audit::checkpoint::NoteKey;
use dojang::audit::log::{AuditLog, Signers};
use dojang::audit::merkle::leaf_hash;
use dojang::store::SqliteRegistry;
use pkcs11_shim::pkcs11::Pkcs11Backend;
use pkcs11_shim::{Algorithm, KeyBackend, KeyPurpose};
use softhsm_tests::synthetic::audit_entry;

const ORIGIN: &str = "dojang.example.kr/audit";

/// Appends synthetic entries `from..to` straight into the log's table, in
/// large transactions (a bulk loader: what the daemon writes one by one).
fn load(db: &mut rusqlite::Connection, from: u64, to: u64) -> BenchResult {
    let mut seq = from;
    while seq < to {
        let tx = db.transaction()?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO audit_log (seq, node, node_seq, entry, leaf) VALUES (?1, 'bench', ?1, ?2, ?3)",
            )?;
            for s in seq..(seq + 200_000).min(to) {
                let e = audit_entry("bench", s);
                let _ = insert.execute(rusqlite::params![s as i64, &e, &leaf_hash(&e)[..]])?;
            }
        }
        tx.commit()?;
        seq = (seq + 200_000).min(to);
    }
    // Measure on a settled disk, not under the loader's writeback.
    db.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")?;
    let _ = std::process::Command::new("sync").status()?;
    Ok(())
}

/// xorshift64: reproducible indices without another dependency.
fn next(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

/// Median and p99 in microseconds of `f` over 200 runs (indices from `seed`).
fn timed(mut seed: u64, mut f: impl FnMut(u64) -> BenchResult) -> BenchResult<(f64, f64)> {
    let mut times = Vec::with_capacity(200);
    for _ in 0..200 {
        let r = next(&mut seed);
        let start = Instant::now();
        f(r)?;
        times.push(start.elapsed().as_secs_f64() * 1e6);
    }
    times.sort_by(f64::total_cmp);
    let at = |i: usize| times.get(i).copied().unwrap_or(f64::NAN);
    Ok((at(100), at(197)))
}

/// Reads every stored tile hash and whole tile once (what proofs read
/// besides the partial tiles at the log's end).
fn read_tile_tables(db: &rusqlite::Connection) -> BenchResult {
    for sql in [
        "SELECT hashes FROM audit_full_tiles",
        "SELECT hash FROM audit_tiles",
    ] {
        let mut statement = db.prepare(sql)?;
        let mut rows = statement.query([])?;
        while let Some(row) = rows.next()? {
            let _ = row.get_ref(0)?;
        }
    }
    Ok(())
}

/// (median, p99) of inclusion, then of consistency proofs, in µs.
type ProofTimes = ((f64, f64), (f64, f64));

/// Proof times in `registry`'s log of `size` entries, at indices from `seed`.
fn proof_times(registry: &SqliteRegistry, size: u64, seed: u64) -> BenchResult<ProofTimes> {
    let inclusion = timed(seed, |r| {
        let _ = AuditLog::inclusion(registry, r % size, size)?;
        Ok(())
    })?;
    let consistency = timed(seed ^ 0x5555, |r| {
        let _ = AuditLog::consistency(registry, 1 + r % (size - 1), size)?;
        Ok(())
    })?;
    Ok((inclusion, consistency))
}

/// A log of `size` entries in its own file under `dir`, checkpointed and
/// with its tile tables read once.
fn small_log(
    dir: &std::path::Path,
    size: u64,
    (backend, signers): (&Pkcs11Backend, &Signers<'_>),
) -> BenchResult<SqliteRegistry> {
    let path = dir.join("small.db");
    let registry = SqliteRegistry::open(&path)?;
    let mut db = rusqlite::Connection::open(&path)?;
    load(&mut db, 0, size)?;
    let _ = AuditLog::new(ORIGIN)?.checkpoint(backend, &registry, signers, None)?;
    read_tile_tables(&db)?;
    Ok(registry)
}

/// Rounds of the side-by-side measurement.
const ROUNDS: u64 = 5;

/// (inclusion, consistency) p50 of each log: the median over `ROUNDS` in
/// which the two logs take turns.
fn side_by_side(
    small: (&SqliteRegistry, u64),
    large: (&SqliteRegistry, u64),
) -> BenchResult<[(f64, f64); 2]> {
    let (mut of_small, mut of_large) = ((Vec::new(), Vec::new()), (Vec::new(), Vec::new()));
    for round in 0..ROUNDS {
        for ((registry, size), p50s) in [(small, &mut of_small), (large, &mut of_large)] {
            let ((inclusion, _), (consistency, _)) =
                proof_times(registry, size, 0x6a09_e667_f3bc_c908 ^ round)?;
            p50s.0.push(inclusion);
            p50s.1.push(consistency);
        }
    }
    Ok([of_small, of_large].map(|(i, c)| (common::median(i), common::median(c))))
}

struct Stage {
    size: u64,
    append_per_s: f64,
    checkpoint_ms: f64,
    inclusion: (f64, f64),
    consistency: (f64, f64),
    resident: ((f64, f64), (f64, f64)),
    start_ms: f64,
    mb_per_million: f64,
}

fn file_bytes(path: &std::path::Path) -> u64 {
    ["", "-wal"]
        .iter()
        .filter_map(|s| std::fs::metadata(format!("{}{s}", path.display())).ok())
        .map(|m| m.len())
        .sum()
}

fn main() -> BenchResult {
    let largest: u64 = std::env::var("DOJANG_BENCH_AUDIT_ENTRIES")
        .ok()
        .map(|v| v.parse())
        .transpose()?
        .unwrap_or(100_000_000);
    let (_token, config) = common::token_with_ds_key("ds")?;
    let backend = Pkcs11Backend::open(config)?;
    let audit = backend.generate("audit", KeyPurpose::Audit, Algorithm::EdDsa)?;
    let note_key = NoteKey::new(ORIGIN, audit.public_key.ok_or("no public half")?)?;
    let signers = Signers {
        current: ("audit", &note_key),
        outgoing: None,
        known: &[],
    };
    let dir = match std::env::var_os("DOJANG_BENCH_DIR") {
        Some(d) => tempfile::tempdir_in(d)?,
        None => tempfile::tempdir()?,
    };
    let path = dir.path().join("audit.db");
    let mut registry = SqliteRegistry::open(&path)?;
    let mut db = rusqlite::Connection::open(&path)?;
    db.pragma_update(None, "synchronous", "OFF")?;
    let mut log = AuditLog::new(ORIGIN)?;
    let mut stages: Vec<Stage> = Vec::new();
    let mut size = 0u64;
    for target in [1_000u64, 1_000_000, largest] {
        if target <= size {
            continue;
        }
        let started = Instant::now();
        load(&mut db, size, target)?;
        let _ = log.checkpoint(&backend, &registry, &signers, None)?;
        let append_per_s = (target - size) as f64 / started.elapsed().as_secs_f64();
        size = target;
        // A steady checkpoint: 1,000 new entries.
        load(&mut db, size, size + 1000)?;
        size += 1000;
        let started = Instant::now();
        let _ = log.checkpoint(&backend, &registry, &signers, None)?;
        let checkpoint_ms = started.elapsed().as_secs_f64() * 1e3;
        // As the load left the page cache, then (other indices) with the
        // tile tables read once: a server whose tiles stay in memory.
        let (inclusion, consistency) = proof_times(&registry, size, 0x9e37_79b9_7f4a_7c15)?;
        read_tile_tables(&db)?;
        let resident = proof_times(&registry, size, 0x2545_f491_4f6c_dd1d)?;
        // A node's start: a fresh registry (nothing in memory) and log, one
        // more entry, a checkpoint (which also fills the upper tree from
        // the store and checks it against the signed root).
        load(&mut db, size, size + 1)?;
        size += 1;
        let started = Instant::now();
        registry = SqliteRegistry::open(&path)?;
        log = AuditLog::new(ORIGIN)?;
        let _ = log.checkpoint(&backend, &registry, &signers, None)?;
        let start_ms = started.elapsed().as_secs_f64() * 1e3;
        let mb_per_million = file_bytes(&path) as f64 / 1e6 / (size as f64 / 1e6);
        eprintln!("{size} entries done");
        stages.push(Stage {
            size,
            append_per_s,
            checkpoint_ms,
            inclusion,
            consistency,
            resident,
            start_ms,
            mb_per_million,
        });
    }
    report(&stages);
    // The base again, beside the largest log (both resident).
    let small_size = stages.first().map_or(2_001, |s| s.size);
    let small = small_log(dir.path(), small_size, (&backend, &signers))?;
    read_tile_tables(&db)?;
    let [(si, sc), (li, lc)] = side_by_side((&small, small_size), (&registry, size))?;
    println!(
        "side by side, tiles resident ({ROUNDS} alternating rounds of 200, median of the rounds' p50s): {small_size} entries inclusion {si:.0} µs, consistency {sc:.0} µs; {size} entries {li:.0} µs, {lc:.0} µs: inclusion x{:.2}, consistency x{:.2} (target: within 2x)",
        li / si,
        lc / sc
    );
    Ok(())
}

fn report(stages: &[Stage]) {
    println!("audit log (SQLite, Ed25519 audit key in SoftHSM), one run:");
    println!(
        "{:>12} {:>12} {:>14} {:>20} {:>20} {:>10} {:>10}",
        "entries",
        "append/s",
        "checkpoint ms",
        "inclusion p50/p99 µs",
        "consist. p50/p99 µs",
        "start ms",
        "MB/10^6"
    );
    for s in stages {
        println!(
            "{:>12} {:>12.0} {:>14.2} {:>9.0} / {:>8.0} {:>9.0} / {:>8.0} {:>10.1} {:>10.1}",
            s.size,
            s.append_per_s,
            s.checkpoint_ms,
            s.inclusion.0,
            s.inclusion.1,
            s.consistency.0,
            s.consistency.1,
            s.start_ms,
            s.mb_per_million
        );
        let ((i50, i99), (c50, c99)) = s.resident;
        println!(
            "{:>12} {:>27} {i50:>9.0} / {i99:>8.0} {c50:>9.0} / {c99:>8.0}",
            "", "tiles resident:"
        );
    }
    if let (Some(first), Some(last)) = (stages.first(), stages.last()) {
        println!(
            "proofs at {} vs {} entries: inclusion p50 x{:.2}, consistency p50 x{:.2} (target: within 2x)",
            last.size,
            first.size,
            last.inclusion.0 / first.inclusion.0,
            last.consistency.0 / first.consistency.0
        );
        println!(
            "with the tile tables resident: inclusion p50 x{:.2}, consistency p50 x{:.2}",
            last.resident.0 .0 / first.resident.0 .0,
            last.resident.1 .0 / first.resident.1 .0
        );
        println!(
            "start-up at {} entries: {:.1} ms (target: at most 5 s)",
            last.size, last.start_ms
        );
    }
}
