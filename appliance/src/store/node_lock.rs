//! One process per node: a lock the daemon takes before it opens the
//! registry and holds for its life.
//!
//! Without it a second `dojangd serve` of the same node (a unit started
//! twice, a copied configuration) opened the registry, wrote audit entries
//! as that node and ran its key thread beside the first before anything
//! refused it. On SQLite the node is the registry file: `flock` on
//! `<registry>.lock`, which the kernel releases however the process ends.
//! On PostgreSQL several nodes share one registry, and each holds a session
//! advisory lock keyed by the registry's schema and its `node_id`, on a
//! connection of its own (see [`PostgresNodeLock`]). Either can end without
//! the process (a lock file removed, a connection cut): the daemon looks at
//! its lock each second ([`NodeLock::check`]).

use std::io::{Read, Seek, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::Context;

pub use super::postgres::{Held, PostgresNodeLock, node_lock_key};

/// What a SQLite registry's refusal says (the holder's role follows).
const SQLITE_HOLDER: &str =
    "the SQLite registry is in use (one dojangd serve, or one dojangctl restore, at a time)";

/// The node's lock, held while this value lives.
pub enum NodeLock {
    /// The SQLite registry's lock file, where it is, and the holder's
    /// role (`dojangd serve`, `dojangctl restore`).
    File(std::fs::File, PathBuf, &'static str),
    /// The node's advisory lock on its PostgreSQL connection.
    Postgres(Box<PostgresNodeLock>),
}

impl NodeLock {
    /// The lock of the SQLite registry at `registry` for a process in
    /// `role`, or the refusal (naming the holder's pid and role).
    pub fn sqlite(registry: &Path, role: &'static str) -> anyhow::Result<Self> {
        let path = lock_path(registry);
        Ok(NodeLock::File(
            lock_file(&path, SQLITE_HOLDER, role)?,
            path,
            role,
        ))
    }

    /// Whether the lock is still held; taken again if its file was removed
    /// or its connection ended, unless another process took it meanwhile.
    pub fn check(&mut self) -> Held {
        match self {
            NodeLock::File(file, path, role) => {
                if same_file(file, path) {
                    return Held::Still;
                }
                // Removed (a "stale lock" cleaned up): a second daemon
                // would take a new file; this one takes it first, or stops.
                match take(path, role) {
                    Ok(Taken::Ours(again)) => {
                        *file = again;
                        Held::Retaken
                    }
                    Ok(Taken::Held(holder)) => Held::Lost(format!(
                        "{SQLITE_HOLDER}: {} is held by process {holder} (its lock file was replaced)",
                        path.display()
                    )),
                    Err(e) => Held::Unreachable(format!("{e:#}")),
                }
            }
            NodeLock::Postgres(lock) => lock.check(),
        }
    }
}

/// `<registry>.lock`, through symbolic links (the file SQLite writes is
/// the node), the registry's directory resolved even before a first start
/// creates the file.
fn lock_path(registry: &Path) -> PathBuf {
    let resolved = std::fs::canonicalize(registry).unwrap_or_else(|_| {
        match (registry.parent(), registry.file_name()) {
            (Some(dir), Some(name)) => {
                let dir = if dir.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    dir
                };
                std::fs::canonicalize(dir).map_or_else(|_| registry.to_owned(), |d| d.join(name))
            }
            _ => registry.to_owned(),
        }
    });
    let mut path = resolved.into_os_string();
    path.push(".lock");
    PathBuf::from(path)
}

/// Whether `path` still names the file `file` has open.
fn same_file(file: &std::fs::File, path: &Path) -> bool {
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(open), Ok(named)) => open.dev() == named.dev() && open.ino() == named.ino(),
        _ => false,
    }
}

/// Takes `path` (created if missing) with `flock` for the life of the
/// returned file and writes this process's id and `role` in it; if
/// another process holds it, the refusal starts with `refusal` and names
/// the path and the holder's id and role.
pub fn lock_file(path: &Path, refusal: &str, role: &str) -> anyhow::Result<std::fs::File> {
    match take(path, role)? {
        Taken::Ours(file) => Ok(file),
        Taken::Held(holder) => {
            anyhow::bail!("{refusal}: {} is held by process {holder}", path.display())
        }
    }
}

/// What an attempt at a lock file gave.
enum Taken {
    Ours(std::fs::File),
    /// Another process has it: its id and role, as its file says.
    Held(String),
}

/// The bytes of a lock file read for a refusal (a pid and a role).
const HOLDER_TEXT_MAX: u64 = 128;

fn take(path: &Path, role: &str) -> anyhow::Result<Taken> {
    // A file removed between its opening and its lock is no lock: again.
    for _ in 0..3 {
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .with_context(|| format!("{}", path.display()))?;
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => {
                let mut text = String::new();
                let _ = (&file).take(HOLDER_TEXT_MAX).read_to_string(&mut text);
                // Whoever can write the file writes the refusal's words: no
                // line breaks or terminal escapes reach the log from it.
                let text: String = text
                    .trim()
                    .chars()
                    .map(|c| if c.is_control() { '?' } else { c })
                    .collect();
                return Ok(Taken::Held(match text.split_once(' ') {
                    Some((pid, role)) => format!("{pid} ({role})"),
                    None if text.is_empty() => "unknown".into(),
                    None => text,
                }));
            }
            Err(e) => {
                return Err(anyhow::Error::new(std::io::Error::from(e)))
                    .with_context(|| format!("locking {}", path.display()));
            }
        }
        if !same_file(&file, path) {
            continue;
        }
        // Only for the refusal's message: the lock is the flock, not the text.
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| writeln!(file, "{} {role}", std::process::id()))
            .with_context(|| format!("writing {}", path.display()))?;
        return Ok(Taken::Ours(file));
    }
    anyhow::bail!("{} kept being replaced while it was locked", path.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVE: &str = "dojangd serve";

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("dojang-lock-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A second lock's refusal of `registry`, which must be the registry's.
    fn refusal(registry: &Path) -> String {
        let refused = NodeLock::sqlite(registry, SERVE).err().unwrap().to_string();
        assert!(refused.starts_with(SQLITE_HOLDER), "{refused}");
        refused
    }

    #[test]
    fn a_second_lock_of_one_registry_is_refused_with_the_holders_id() {
        let dir = scratch("second");
        let registry = dir.join("registry.db");
        let first = NodeLock::sqlite(&registry, SERVE).unwrap();
        let refused = refusal(&registry);
        assert!(
            refused.contains(&format!(
                "held by process {} (dojangd serve)",
                std::process::id()
            )),
            "{refused}"
        );
        drop(first);
        // Released with its file; a stale id in the file is no lock.
        let _again = NodeLock::sqlite(&registry, SERVE).unwrap();
    }

    #[test]
    fn a_refusal_quotes_at_most_a_line_of_whatever_the_lock_file_says() {
        let dir = scratch("text");
        let registry = dir.join("registry.db");
        let _held = NodeLock::sqlite(&registry, SERVE).unwrap();
        // Someone with the host's files writes into the held lock file.
        std::fs::write(dir.join("registry.db.lock"), "7 ".repeat(50_000)).unwrap();
        let refused = refusal(&registry);
        assert!(
            refused.len() < SQLITE_HOLDER.len() + 400,
            "{} bytes",
            refused.len()
        );
    }

    #[test]
    fn a_refusal_quotes_no_line_break_or_escape_from_the_lock_file() {
        let dir = scratch("controls");
        let registry = dir.join("registry.db");
        let _held = NodeLock::sqlite(&registry, SERVE).unwrap();
        std::fs::write(
            dir.join("registry.db.lock"),
            "7 \u{1b}[2Jserve\nERROR forged line\r\n",
        )
        .unwrap();
        let refused = refusal(&registry);
        assert!(!refused.contains(['\u{1b}', '\n', '\r']), "{refused:?}");
        assert!(
            refused.contains("7 (?[2Jserve?ERROR forged line)"),
            "{refused:?}"
        );
    }

    #[test]
    fn a_symbolic_link_to_the_registry_is_the_same_node() {
        let dir = scratch("link");
        let registry = dir.join("registry.db");
        std::fs::write(&registry, b"").unwrap();
        let link = dir.join("other-name.db");
        std::os::unix::fs::symlink(&registry, &link).unwrap();
        let _first = NodeLock::sqlite(&registry, SERVE).unwrap();
        assert!(NodeLock::sqlite(&link, SERVE).is_err());
    }

    #[test]
    fn a_removed_lock_file_is_taken_again_and_a_replaced_one_is_lost() {
        let dir = scratch("removed");
        let registry = dir.join("registry.db");
        let mut held = NodeLock::sqlite(&registry, SERVE).unwrap();
        assert!(matches!(held.check(), Held::Still));
        let lock = dir.join("registry.db.lock");
        std::fs::remove_file(&lock).unwrap();
        assert!(matches!(held.check(), Held::Retaken));
        assert!(
            NodeLock::sqlite(&registry, SERVE).is_err(),
            "the new file is held"
        );
        // Removed, and a second daemon took a new file before this one looked.
        std::fs::remove_file(&lock).unwrap();
        let _second = NodeLock::sqlite(&registry, SERVE).unwrap();
        let lost = held.check();
        assert!(
            matches!(&lost, Held::Lost(why) if why.starts_with(SQLITE_HOLDER)),
            "{lost:?}"
        );
    }

    #[test]
    fn a_first_start_locks_the_same_file_as_later_ones_through_a_link() {
        let dir = scratch("first");
        let real = dir.join("real");
        std::fs::create_dir_all(&real).unwrap();
        std::os::unix::fs::symlink(&real, dir.join("via")).unwrap();
        // No registry yet: the directory is resolved all the same.
        let _first = NodeLock::sqlite(&dir.join("via/registry.db"), SERVE).unwrap();
        assert!(NodeLock::sqlite(&real.join("registry.db"), SERVE).is_err());
    }

    #[test]
    fn another_registry_beside_it_is_another_node() {
        let dir = scratch("beside");
        let _a = NodeLock::sqlite(&dir.join("a.db"), SERVE).unwrap();
        let _b = NodeLock::sqlite(&dir.join("b.db"), SERVE).unwrap();
    }
}
