//! The systemd unit: hardened to an exposure of at most 1.5 by systemd's
//! own analyzer, and the daemon speaks the `Type=notify` protocol it
//! promises (READY, RELOADING, STOPPING) on a real notification socket.
#![allow(clippy::unwrap_used)]
#![allow(clippy::indexing_slicing, clippy::panic, clippy::expect_used)] // test code: a failed expect, panic or index is a failed test

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use softhsm_tests::daemon::{Daemon, Options};

fn unit() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd/dojangd.service")
}

#[test]
fn unit_exposure_is_at_most_1_5() {
    // --threshold is the exposure times ten; above it the command fails.
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--threshold=15", "--no-pager"])
        .arg(unit())
        .output()
        .expect("systemd-analyze (make deps installs systemd)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "exposure above 1.5:\n{text}");
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap();
    let score: f64 = line
        .split(": ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap();
    assert!(score <= 1.5, "{line}");
}

#[test]
fn unit_is_notify_with_validation_and_credentials() {
    let text = std::fs::read_to_string(unit()).unwrap();
    for line in [
        "Type=notify",
        "ExecStartPre=/usr/bin/dojangd validate",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "LoadCredential=hsm-pin:",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=\n",
        "User=dojang",
        "WatchdogSec=",
        "LimitCORE=0",
        "SystemCallFilter=setpriority\n",
    ] {
        assert!(text.contains(line), "unit lacks {line:?}");
    }
    let dropin = std::fs::read_to_string(unit().with_file_name("dojangd-tpm.conf")).unwrap();
    assert!(dropin.contains("DeviceAllow=/dev/tpmrm0 rw"));
}

fn next(socket: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = socket.recv(&mut buf).expect("a notification");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn daemon_notifies_ready_reloading_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut d = Daemon::start(Options {
        env: vec![
            ("NOTIFY_SOCKET".into(), path.display().to_string()),
            ("WATCHDOG_USEC".into(), "400000".into()),
        ],
        ..Options::default()
    });
    assert!(next(&socket).contains("READY=1"));
    // The watchdog is fed at half its period.
    assert!(next(&socket).contains("WATCHDOG=1"));
    d.signal("HUP");
    let mut seen = Vec::new();
    while !seen.iter().any(|m: &String| m.contains("READY=1")) {
        seen.push(next(&socket));
    }
    assert!(seen.iter().any(|m| m.contains("RELOADING=1")), "{seen:?}");
    d.signal("TERM");
    let mut stopping = false;
    for _ in 0..20 {
        if next(&socket).contains("STOPPING=1") {
            stopping = true;
            break;
        }
    }
    assert!(stopping);
    assert!(d.wait_exit(Duration::from_secs(15)).success());
}

#[test]
fn the_watchdog_starves_while_the_device_hangs_and_is_fed_again_after() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut d = Daemon::start(Options {
        via_p11kit: true,
        env: vec![
            ("NOTIFY_SOCKET".into(), path.display().to_string()),
            ("WATCHDOG_USEC".into(), "400000".into()),
        ],
        ..Options::default()
    });
    while !next(&socket).contains("WATCHDOG=1") {}
    // Every call into the device now hangs (a hung network HSM): the
    // probe through the signing pool never returns, nor is the watchdog fed.
    d.p11kit().freeze();
    socket
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 4096];
    // What was sent before the freeze took hold.
    let settle = std::time::Instant::now() + Duration::from_millis(600);
    while std::time::Instant::now() < settle {
        let _ = socket.recv(&mut buf);
    }
    let starved_until = std::time::Instant::now() + Duration::from_secs(2);
    while std::time::Instant::now() < starved_until {
        if let Ok(n) = socket.recv(&mut buf) {
            let message = String::from_utf8_lossy(&buf[..n]).into_owned();
            assert!(
                !message.contains("WATCHDOG=1"),
                "fed while the device hangs: {message}"
            );
        }
    }
    assert!(d.log().contains("the watchdog is not fed"), "{}", d.log());
    d.p11kit().thaw();
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    while !next(&socket).contains("WATCHDOG=1") {}
}
