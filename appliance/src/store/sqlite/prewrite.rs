//! The log file laid out in full before SQLite opens it.
//!
//! A commit syncs the log (`fdatasync`). While the log grows, each sync
//! also commits the filesystem's journal (the file's new size and blocks);
//! once the log is written over in place, it syncs the data alone. On the
//! development VM (ext4), 16 KiB written and synced: p50 0.28–0.37 ms and
//! p99 0.8–1.8 ms appending, 0.20 and 0.41–0.51 ms over blocks written
//! before (blocks only allocated, `fallocate`, are nearly as slow as
//! appending: the sync then records them written). SQLite writes the log
//! over in place after its first RESTART (`wal.rs`), ~1 GiB into a start:
//! without this, a daemon's first minute of load runs on the slow path.
//!
//! So at start the service's registry, once its first connection has
//! closed (SQLite then copies the log into the database, a killed run's
//! included, and removes it), writes the log file out in zeros to the
//! size the writer keeps it at. SQLite reads a log whose header is not its
//! own as empty, and writes its header and frames over the zeros. A log
//! file still there is never touched: another process has the database
//! open, or the close could not copy the log in, and it holds
//! transactions that are in no other file.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read};
use std::path::{Path, PathBuf};

/// What `prewrite` found and did.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Prewrite {
    /// The log file was laid out, this many bytes.
    Written(u64),
    /// A log file was there already and was left as it is.
    Kept,
    /// Asked for none.
    Off,
}

fn suffixed(db: &Path, suffix: &str) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// The log file SQLite keeps beside `db`.
pub(super) fn log_file(db: &Path) -> PathBuf {
    suffixed(db, "-wal")
}

/// Lays out `db`'s log file, `bytes` of zeros, unless one is there. The
/// zeros go to a file of this process's own first, which then takes the
/// log's name only if nothing took it meanwhile (a hard link never
/// replaces): no process writes to a file another may have linked.
pub(super) fn prewrite(db: &Path, bytes: u64) -> io::Result<Prewrite> {
    if bytes == 0 {
        return Ok(Prewrite::Off);
    }
    // SQLite keeps the log beside the file a symbolic link points to.
    let db = &fs::canonicalize(db)?;
    remove_abandoned(db);
    let log = log_file(db);
    if fs::symlink_metadata(&log).is_ok() {
        return Ok(Prewrite::Kept);
    }
    let staged = staging_file(db, std::process::id());
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&staged)?;
    let laid_out = as_sqlite_would_create(&file, db)
        .and_then(|()| fill_with_zeros(file, bytes))
        .and_then(|()| fs::hard_link(&staged, &log));
    let _ = fs::remove_file(&staged);
    match laid_out {
        Ok(()) => Ok(Prewrite::Written(bytes)),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(Prewrite::Kept),
        Err(e) => Err(e),
    }
}

fn staging_file(db: &Path, pid: u32) -> PathBuf {
    suffixed(db, &format!("-wal-prewrite-{pid}"))
}

/// Removes the staging files of starts that stopped midway: their process
/// is gone, or was this one's pid (reused after a reboot; this process has
/// made none yet). A name only, which a linked log keeps under its own.
fn remove_abandoned(db: &Path) {
    let (Some(dir), Some(name)) = (db.parent(), db.file_name()) else {
        return;
    };
    let prefix = format!("{}-wal-prewrite-", name.to_string_lossy());
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(pid) = file_name
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() || !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// The mode and owner SQLite gives a log it creates: the database's mode,
/// and its owner only when the process is root (`robustFchown` in
/// SQLite's `os_unix.c`). A daemon that is not root keeps its own: asking
/// for the database's group, which it need not be in, failed with `EPERM`
/// and the log was not laid out at all.
fn as_sqlite_would_create(file: &File, db: &Path) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let database = fs::metadata(db)?;
    file.set_permissions(database.permissions())?;
    let ours = file.metadata()?;
    if let Some((uid, gid)) = owner_to_give(
        rustix::process::geteuid().is_root(),
        (ours.uid(), ours.gid()),
        (database.uid(), database.gid()),
    ) {
        std::os::unix::fs::fchown(file, Some(uid), Some(gid))?;
    }
    Ok(())
}

/// The owner a new log must be given, from whether the process is root,
/// the owner it was created with, and the database's.
fn owner_to_give(root: bool, created: (u32, u32), database: (u32, u32)) -> Option<(u32, u32)> {
    (root && created != database).then_some(database)
}

/// The size of each write laying out the log: one page of memory. The
/// kernel caches a file in folios sized by the writes that created them
/// (ext4 on Linux 6.16 and later), and each of SQLite's small writes into
/// a folio walks every block of it: laid out 1 MiB at a time, the log's
/// writes cost the writer 6.9% of the daemon's CPU at saturation, laid
/// out a page at a time, 0.3% (`perf record` beside `make bench-load`).
const WRITE_BYTES: usize = 4096;

fn fill_with_zeros(file: File, bytes: u64) -> io::Result<()> {
    let mut out = BufWriter::with_capacity(WRITE_BYTES, file);
    let _ = io::copy(&mut io::repeat(0).take(bytes), &mut out)?;
    out.into_inner()
        .map_err(io::IntoInnerError::into_error)?
        .sync_data()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::store::sqlite::open_connection;
    use crate::store::sqlite::tests::Scratch;
    use crate::store::sqlite::wal::prepare_writer;

    const MIB: u64 = 1 << 20;
    /// `nobody`: a user the tests give files to, or become, as root.
    const NOBODY: u32 = 65_534;

    fn root() -> bool {
        rustix::process::geteuid().is_root()
    }

    fn rows(conn: &rusqlite::Connection) -> i64 {
        conn.query_row("SELECT COUNT(*) FROM t", [], |row| row.get(0))
            .unwrap()
    }

    /// A database in WAL mode with one table and no log file.
    fn closed_database(name: &str) -> Scratch {
        let scratch = Scratch::new(&format!("prewrite-{name}"));
        let conn = open_connection(&scratch.0).unwrap();
        conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, body BLOB NOT NULL)")
            .unwrap();
        drop(conn);
        assert!(
            !log_file(&scratch.0).exists(),
            "the last close removed the log"
        );
        scratch
    }

    #[test]
    fn sqlite_writes_over_the_zeros_without_growing_the_file_and_keeps_what_it_wrote() {
        let scratch = closed_database("over");
        assert_eq!(
            prewrite(&scratch.0, 4 * MIB).unwrap(),
            Prewrite::Written(4 * MIB)
        );
        let log = log_file(&scratch.0);
        assert_eq!(fs::metadata(&log).unwrap().len(), 4 * MIB);
        let writer = open_connection(&scratch.0).unwrap();
        prepare_writer(&writer).unwrap();
        assert_eq!(rows(&writer), 0, "the zeros read as an empty log");
        for _ in 0..100 {
            writer
                .execute_batch("INSERT INTO t (body) VALUES (zeroblob(3000))")
                .unwrap();
        }
        assert_eq!(
            fs::metadata(&log).unwrap().len(),
            4 * MIB,
            "written over in place"
        );
        // Read back from the log by a connection of its own, then from the
        // database once the last close copied it in.
        assert_eq!(rows(&open_connection(&scratch.0).unwrap()), 100);
        drop(writer);
        assert_eq!(rows(&open_connection(&scratch.0).unwrap()), 100);
    }

    #[test]
    fn a_log_left_by_a_stopped_process_is_kept_with_its_transactions() {
        let scratch = closed_database("kept");
        let writer = open_connection(&scratch.0).unwrap();
        prepare_writer(&writer).unwrap();
        writer
            .execute_batch("INSERT INTO t (body) VALUES (zeroblob(3000))")
            .unwrap();
        // The files as a process killed now leaves them: the committed row
        // is in the log only.
        let copy = Scratch::new("prewrite-kept-copy");
        let _ = fs::copy(&scratch.0, &copy.0).unwrap();
        let _ = fs::copy(log_file(&scratch.0), log_file(&copy.0)).unwrap();
        drop(writer);
        let left = fs::read(log_file(&copy.0)).unwrap();
        assert_eq!(prewrite(&copy.0, 4 * MIB).unwrap(), Prewrite::Kept);
        assert_eq!(fs::read(log_file(&copy.0)).unwrap(), left, "untouched");
        assert_eq!(rows(&open_connection(&copy.0).unwrap()), 1);
    }

    #[test]
    fn a_log_of_another_open_connection_is_kept() {
        let scratch = closed_database("open");
        let other = open_connection(&scratch.0).unwrap();
        other
            .execute_batch("INSERT INTO t (body) VALUES (zeroblob(10))")
            .unwrap();
        assert_eq!(prewrite(&scratch.0, 4 * MIB).unwrap(), Prewrite::Kept);
        assert_eq!(rows(&open_connection(&scratch.0).unwrap()), 1);
        drop(other);
    }

    #[test]
    fn a_staging_file_of_a_start_that_stopped_midway_is_removed_and_another_starts_is_not() {
        let scratch = closed_database("stale");
        // No process has pid 0x7fff_fff0 (the kernel's maximum is lower).
        let abandoned = staging_file(&scratch.0, 0x7fff_fff0);
        // A killed start's, under the pid this process has now.
        let reused = staging_file(&scratch.0, std::process::id());
        let running = staging_file(&scratch.0, 1);
        for file in [&abandoned, &reused, &running] {
            fs::write(file, b"half").unwrap();
        }
        assert_eq!(prewrite(&scratch.0, MIB).unwrap(), Prewrite::Written(MIB));
        assert!(!abandoned.exists());
        assert!(running.exists(), "pid 1 runs: its file is its own");
        assert!(!reused.exists());
        assert_eq!(fs::metadata(log_file(&scratch.0)).unwrap().len(), MIB);
        fs::remove_file(running).unwrap();
    }

    #[test]
    fn the_log_takes_the_databases_mode() {
        use std::os::unix::fs::PermissionsExt;
        let scratch = closed_database("mode");
        fs::set_permissions(&scratch.0, fs::Permissions::from_mode(0o640)).unwrap();
        assert_eq!(prewrite(&scratch.0, MIB).unwrap(), Prewrite::Written(MIB));
        let mode = fs::metadata(log_file(&scratch.0))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o640, "a mode no usual umask gives");
    }

    #[test]
    fn only_root_gives_the_log_the_databases_owner_as_sqlite_does() {
        assert_eq!(owner_to_give(true, (0, 0), (70, 80)), Some((70, 80)));
        assert_eq!(owner_to_give(true, (0, 0), (0, 0)), None);
        assert_eq!(
            owner_to_give(false, (70, 70), (70, 80)),
            None,
            "not root: kept"
        );
        assert_eq!(owner_to_give(false, (70, 70), (90, 90)), None);
    }

    /// The daemon as a user that is not root, on a database whose group it
    /// is not in: asking for that group was `EPERM` and no layout.
    #[test]
    fn a_daemon_that_is_not_root_lays_out_the_log_of_a_database_in_another_group() {
        use rustix::process::{Gid, Uid};
        use std::os::unix::fs::MetadataExt;
        if !root() {
            eprintln!("needs root to become another user (CI runs as root)");
            return;
        }
        let scratch = closed_database("not-root");
        std::os::unix::fs::chown(&scratch.0, Some(NOBODY), Some(0)).unwrap();
        let db = scratch.0.clone();
        // Credentials are per thread on Linux (the kernel's, not libc's,
        // set*id): only this thread stops being root.
        let laid_out = std::thread::spawn(move || {
            rustix::thread::set_thread_groups(&[]).unwrap();
            let (gid, uid) = (Gid::from_raw(NOBODY), Uid::from_raw(NOBODY));
            rustix::thread::set_thread_res_gid(gid, gid, gid).unwrap();
            rustix::thread::set_thread_res_uid(uid, uid, uid).unwrap();
            prewrite(&db, MIB).map_err(|e| e.to_string())
        })
        .join()
        .unwrap();
        assert_eq!(laid_out, Ok(Prewrite::Written(MIB)));
        let log = fs::metadata(log_file(&scratch.0)).unwrap();
        assert_eq!((log.uid(), log.gid()), (NOBODY, NOBODY), "its own");
        assert_eq!(log.len(), MIB);
    }

    #[test]
    fn the_log_of_a_database_owned_by_another_user_is_laid_out() {
        use std::os::unix::fs::MetadataExt;
        let scratch = closed_database("owner");
        let me = fs::metadata(&scratch.0).unwrap();
        // As root (CI), the database is given to `nobody` and the log
        // follows it; otherwise this process cannot give it away, and the
        // log is laid out as its own.
        let expected = if root() {
            std::os::unix::fs::chown(&scratch.0, Some(NOBODY), Some(NOBODY)).unwrap();
            (NOBODY, NOBODY)
        } else {
            (me.uid(), me.gid())
        };
        assert_eq!(prewrite(&scratch.0, MIB).unwrap(), Prewrite::Written(MIB));
        let log = fs::metadata(log_file(&scratch.0)).unwrap();
        assert_eq!((log.uid(), log.gid()), expected);
        assert_eq!(log.len(), MIB);
    }

    #[test]
    fn through_a_symbolic_link_the_log_is_laid_out_where_sqlite_keeps_it() {
        let scratch = closed_database("target");
        let link = Scratch::new("prewrite-link");
        std::os::unix::fs::symlink(&scratch.0, &link.0).unwrap();
        assert_eq!(prewrite(&link.0, MIB).unwrap(), Prewrite::Written(MIB));
        assert!(!log_file(&link.0).exists());
        let writer = open_connection(&link.0).unwrap();
        writer
            .execute_batch("INSERT INTO t (body) VALUES (zeroblob(3000))")
            .unwrap();
        assert!(!log_file(&link.0).exists(), "SQLite wrote the target's log");
        assert_eq!(fs::metadata(log_file(&scratch.0)).unwrap().len(), MIB);
    }

    #[test]
    fn none_asked_for_lays_out_nothing() {
        let scratch = closed_database("off");
        assert_eq!(prewrite(&scratch.0, 0).unwrap(), Prewrite::Off);
        assert!(!log_file(&scratch.0).exists());
    }
}
