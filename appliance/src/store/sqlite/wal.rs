//! The WAL's upkeep: checkpoints on a thread of their own, and a bound on
//! the log while issuance never pauses.
//!
//! A passive checkpoint copies the log into the database file but leaves
//! the log as it is. SQLite starts a log over only when a writer begins
//! after a checkpoint that caught up with every frame, and a writer
//! committing every millisecond never lets a once-a-second checkpoint
//! catch up: the log grew by ~65 MB a second at saturation
//! (`make bench-load`, 1 KiB pages, ~16 frames an issuance) and started
//! over only when the load paused. Under load that never pauses it would
//! fill the disk.
//!
//! So a round that finds the log past `RESTART_AFTER_FRAMES` (~1 GiB) also
//! runs a RESTART checkpoint, once passive ones have caught up with the
//! writer: it takes the write lock, copies the frames written since, syncs
//! the database file and waits for readers to leave
//! the log, so that the writer's next transaction starts it over. The
//! writer waits meanwhile: restarting every ~64 MiB put half-load p99 at
//! 26–134 ms against 8 ms without (issue 20's notes), so this is a bound
//! on the disk, reached after ~15 s of saturation or ~30 s of half load,
//! not a routine step.
//!
//! A passive checkpoint syncs the database file only when it copied the
//! whole log, which under load it never does (some reader is always on a
//! snapshot inside it): the pages it copied stay dirty in the kernel's
//! cache until written back. The RESTART's own sync then wrote them all
//! while the writer waited (26 ms of a 36 ms wait, `strace`). So before
//! the RESTART the round syncs the database file itself, the writer going
//! on meanwhile, then again once passive checkpoints have caught up: the
//! RESTART then took 16 and 8 ms (two seen). (Syncing it every round
//! instead, a second's pages at a time, put the writer's syncs behind that
//! I/O each second: half-load commit p99 6.6 and 9.0 ms against 2.7 and
//! 4.1, runs alternating.)

use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use rusqlite::Connection;

use super::tx::{map_err, unavailable};
use super::{StoreError, open_connection};

/// Log frames (of 1 KiB pages: ~1 GiB) past which a round starts the log
/// over.
const RESTART_AFTER_FRAMES: i64 = 1 << 20;
/// What the writer cuts the log file back to when it starts over: above
/// where a round starts it over (1 Mi frames of 1,048 bytes), so that
/// under sustained load the file is written over in place, not grown and
/// cut each time.
const KEEP_BYTES: i64 = (crate::config::SQLITE_LOG_FILE_MIB as i64) << 20;
const _: () = assert!(KEEP_BYTES > RESTART_AFTER_FRAMES * 1048);
/// How long a RESTART may wait for the writer and the readers; past it,
/// the round gives up and the next one tries again.
const RESTART_WAIT: Duration = Duration::from_millis(100);
/// How long the writer waits for a RESTART holding the write lock.
const WRITER_WAIT: Duration = Duration::from_secs(5);
/// How often a waiting connection looks again. SQLite's own busy timeout
/// sleeps 1, 2, 5, 10 … ms between looks: a writer held for 3 ms would
/// wait 8.
const RETRY_EVERY: Duration = Duration::from_micros(100);

fn retry_within(attempt: i32, limit: Duration) -> bool {
    if RETRY_EVERY * (attempt.max(0) as u32) >= limit {
        return false;
    }
    std::thread::sleep(RETRY_EVERY);
    true
}

fn writer_retry(attempt: i32) -> bool {
    retry_within(attempt, WRITER_WAIT)
}

fn restart_retry(attempt: i32) -> bool {
    retry_within(attempt, RESTART_WAIT)
}

/// Sets up the writer's connection: it never checkpoints (the
/// checkpointer does), cuts the log back when it starts it over, and waits
/// for a RESTART in fine steps.
pub(super) fn prepare_writer(conn: &Connection) -> Result<(), StoreError> {
    conn.execute_batch(&format!(
        "PRAGMA wal_autocheckpoint = 0; PRAGMA journal_size_limit = {KEEP_BYTES};"
    ))
    .map_err(map_err)?;
    conn.busy_handler(Some(writer_retry)).map_err(map_err)
}

/// Passive checkpoints a round runs at most between syncing the database
/// file and the RESTART, each copying what was written during the step
/// before, until one copied at most `CAUGHT_UP_FRAMES`: the RESTART holds
/// the writer while it copies and syncs what they left.
const CATCH_UP_PASSES: usize = 3;
const CAUGHT_UP_FRAMES: i64 = 512;

/// A passive checkpoint: the frames in the log.
fn passive(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| row.get(1))
}

/// One round: a passive checkpoint, then, when the log has grown past
/// `restart_after` frames, passive ones until they catch up, and a RESTART
/// so that the writer starts the log over. How long the RESTART took, if
/// it completed.
fn round(conn: &Connection, db: &File, restart_after: i64) -> rusqlite::Result<Option<Duration>> {
    let mut frames = passive(conn)?;
    if frames < restart_after {
        return Ok(None);
    }
    // Best effort: the RESTART syncs the file anyway, so a failure here
    // costs a longer wait, not a write.
    let _ = db.sync_data();
    for _ in 0..CATCH_UP_PASSES {
        let before = frames;
        frames = passive(conn)?;
        // Fewer frames than before: the writer started the log over.
        if frames - before <= CAUGHT_UP_FRAMES {
            break;
        }
    }
    let _ = db.sync_data();
    let started = std::time::Instant::now();
    // The first column is 1 when the RESTART gave up waiting.
    let gave_up: i64 = conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |row| row.get(0))?;
    Ok((gave_up == 0).then(|| started.elapsed()))
}

/// Runs a round once a second on a thread of its own (done by the writer,
/// checkpoints would stall every commit behind them), until the sender it
/// returns drops.
pub(super) fn spawn_checkpointer(
    path: &Path,
    restarts: Arc<AtomicU64>,
) -> Result<mpsc::Sender<()>, StoreError> {
    let checkpointer = open_connection(path)?;
    checkpointer
        .busy_handler(Some(restart_retry))
        .map_err(map_err)?;
    let db = File::open(path).map_err(unavailable)?;
    let (alive, stop) = mpsc::channel::<()>();
    let _ = std::thread::Builder::new()
        .name("dojang-sq-wal".into())
        .spawn(move || {
            while let Err(mpsc::RecvTimeoutError::Timeout) =
                stop.recv_timeout(Duration::from_secs(1))
            {
                // Best effort: a failed or busy round is retried a second later.
                if let Ok(Some(took)) = round(&checkpointer, &db, RESTART_AFTER_FRAMES) {
                    let _ = restarts.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(
                        restart_ms = took.as_secs_f64() * 1000.0,
                        "the registry's log started over (the writer waited for the RESTART)"
                    );
                }
            }
        })
        .map_err(|e| StoreError::Internal(e.to_string()))?;
    Ok(alive)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::store::sqlite::tests::Scratch;

    fn scratch(name: &str) -> (Scratch, Connection, Connection) {
        let scratch = Scratch::new(&format!("wal-{name}"));
        let path = scratch.0.clone();
        let writer = open_connection(&path).unwrap();
        prepare_writer(&writer).unwrap();
        writer
            .execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, body BLOB NOT NULL)")
            .unwrap();
        let checkpointer = open_connection(&path).unwrap();
        checkpointer.busy_handler(Some(restart_retry)).unwrap();
        (scratch, writer, checkpointer)
    }

    fn db(scratch: &Scratch) -> File {
        File::open(&scratch.0).unwrap()
    }

    /// Writes `n` rows of three pages, a transaction each.
    fn write(writer: &Connection, n: usize) {
        for _ in 0..n {
            writer
                .execute_batch("INSERT INTO t (body) VALUES (zeroblob(3000))")
                .unwrap();
        }
    }

    fn frames(conn: &Connection) -> i64 {
        conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| row.get(1))
            .unwrap()
    }

    /// A reader with a snapshot inside the log, and 50 rows written past it:
    /// a passive checkpoint cannot catch up while the reader stays.
    fn reader_behind(path: &Path, writer: &Connection) -> Connection {
        let reader = open_connection(path).unwrap();
        reader.execute_batch("BEGIN").unwrap();
        let _: i64 = reader
            .query_row("SELECT COUNT(*) FROM t", [], |row| row.get(0))
            .unwrap();
        write(writer, 50);
        reader
    }

    #[test]
    fn a_round_past_the_limit_waits_for_the_reader_and_the_writer_starts_the_log_over() {
        let (scratch, writer, checkpointer) = scratch("restart");
        write(&writer, 200);
        let reader = reader_behind(&scratch.0, &writer);
        let leaves = std::thread::spawn(move || {
            std::thread::sleep(RESTART_WAIT / 4);
            reader.execute_batch("COMMIT").unwrap();
        });
        assert!(
            round(&checkpointer, &db(&scratch), 1).unwrap().is_some(),
            "the RESTART completed"
        );
        leaves.join().unwrap();
        write(&writer, 1);
        let after = frames(&checkpointer);
        assert!(
            after < 10,
            "the next write started the log over: {after} frames"
        );
    }

    #[test]
    fn a_round_past_the_limit_completes_its_restart_beside_a_busy_writer() {
        let (scratch, writer, checkpointer) = scratch("busy");
        write(&writer, 200);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let busy = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    write(&writer, 1);
                }
                writer
            })
        };
        let took = round(&checkpointer, &db(&scratch), 1).unwrap();
        stop.store(true, Ordering::Relaxed);
        let _ = busy.join().unwrap();
        assert!(took.is_some(), "the RESTART completed beside the writer");
    }

    #[test]
    fn a_round_under_the_limit_leaves_a_log_it_could_not_catch_up_with() {
        let (scratch, writer, checkpointer) = scratch("passive");
        write(&writer, 200);
        let reader = reader_behind(&scratch.0, &writer);
        let grown = frames(&checkpointer);
        assert!(
            round(&checkpointer, &db(&scratch), i64::MAX)
                .unwrap()
                .is_none()
        );
        reader.execute_batch("COMMIT").unwrap();
        write(&writer, 1);
        assert!(frames(&checkpointer) > grown, "the log went on growing");
    }

    #[test]
    fn a_reader_that_stays_makes_the_restart_give_up_and_free_the_writer() {
        let (scratch, writer, checkpointer) = scratch("reader");
        write(&writer, 200);
        let reader = reader_behind(&scratch.0, &writer);
        let started = std::time::Instant::now();
        assert!(
            round(&checkpointer, &db(&scratch), 1).unwrap().is_none(),
            "the reader held the log"
        );
        assert!(started.elapsed() < RESTART_WAIT * 5);
        // The writer goes on at once after the round gave up.
        write(&writer, 1);
        reader.execute_batch("COMMIT").unwrap();
    }

    #[test]
    fn the_writer_keeps_the_log_file_above_where_a_round_starts_it_over() {
        let (_scratch, writer, _) = scratch("limit");
        let limit: i64 = writer
            .query_row("PRAGMA journal_size_limit", [], |row| row.get(0))
            .unwrap();
        assert_eq!(limit, KEEP_BYTES);
    }
}
