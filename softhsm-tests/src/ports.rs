//! Loopback ports for servers the tests start as other processes.
//!
//! Asking the kernel for port 0 and handing the number on is racy: the port
//! comes from the ephemeral range, so between our probe and the server's
//! own bind any outgoing connection of a parallel test (a client, a
//! PostgreSQL pool) may take it. Ports here come from below that range, and
//! a counter kept under a file lock spreads them across test processes, so
//! two parallel tests never probe the same number at the same moment.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::TcpListener;

/// Below Linux's default ephemeral range (32768–60999), above the
/// well-known and most registered service ports.
const FIRST: u16 = 20_000;
const END: u16 = 32_000;

/// `count` consecutive loopback ports free right now; returns the first.
pub fn reserve(count: u16) -> u16 {
    let mut counter = counter_file();
    counter.lock().expect("lock the port counter");
    let mut text = String::new();
    let _ = counter
        .read_to_string(&mut text)
        .expect("read the port counter");
    let mut next = text.trim().parse::<u32>().unwrap_or(0);
    for _ in 0..(END - FIRST) {
        // Whatever the file held, the port tried is in FIRST..END.
        if next < u32::from(FIRST) || next.saturating_add(u32::from(count)) > u32::from(END) {
            next = u32::from(FIRST);
        }
        let first = next as u16;
        next += u32::from(count);
        if (first..first + count).all(|p| TcpListener::bind(("127.0.0.1", p)).is_ok()) {
            counter.set_len(0).expect("truncate the port counter");
            let _ = counter.seek(SeekFrom::Start(0)).expect("seek");
            write!(counter, "{next}").expect("write the port counter");
            return first;
        }
    }
    panic!("no {count} consecutive free loopback ports in {FIRST}..{END}")
}

fn counter_file() -> File {
    // One counter per user: another user's file would not be writable.
    let uid = std::fs::metadata("/proc/self").map_or(0, |m| {
        use std::os::unix::fs::MetadataExt;
        m.uid()
    });
    let path = std::env::temp_dir().join(format!("dojang-test-ports-{uid}"));
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_ports_are_free_distinct_and_outside_the_ephemeral_range() {
        let a = reserve(3);
        let b = reserve(2);
        assert!((FIRST..END).contains(&a) && (FIRST..END).contains(&b));
        assert!(a + 3 <= b || b + 2 <= a, "overlap: {a} and {b}");
        let _held = TcpListener::bind(("127.0.0.1", b)).expect("free");
    }
}
