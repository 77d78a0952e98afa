//! `store.postgres_ca` (issue 18): the registry on a PostgreSQL server
//! whose certificate a private CA issued is opened, verified, only with
//! that CA configured; another CA, or none (the system's), is refused.
//! The server is a PostgreSQL instance of the test's own (Debian's
//! binaries, run as the postgres user), with TLS on.
#![allow(clippy::unwrap_used)]
#![allow(clippy::indexing_slicing, clippy::panic, clippy::expect_used)] // test code: a failed expect, panic or index is a failed test

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use dojang::devtls::{DevCa, LeafSpec};
use softhsm_tests::pg::{
    as_postgres, cluster_dir, initdb, owned_by_postgres, postgres_bin, stop_immediately,
};

/// A PostgreSQL instance with TLS, stopped on drop.
struct TlsPostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
}

impl TlsPostgres {
    fn start(ca: &DevCa) -> Self {
        let dir = cluster_dir("dojang-pg-tls-");
        let bin = postgres_bin();
        let data = dir.path().join("data");
        initdb(&bin, &data);
        let leaf = ca.issue(&LeafSpec::localhost_server()).unwrap();
        std::fs::write(data.join("server.crt"), &leaf.cert_pem).unwrap();
        std::fs::write(data.join("server.key"), &leaf.key_pem).unwrap();
        std::fs::set_permissions(
            data.join("server.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        owned_by_postgres(&data);
        let port = softhsm_tests::ports::reserve(1);
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c ssl=on -c fsync=off",
            dir.path().display()
        );
        as_postgres(
            None,
            &bin.join("pg_ctl"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-o",
                &options,
                "-l",
                dir.path().join("log").to_str().unwrap(),
                "-w",
                "start",
            ],
        );
        TlsPostgres { dir, bin, port }
    }
}

impl Drop for TlsPostgres {
    fn drop(&mut self) {
        stop_immediately(&self.bin, &self.dir.path().join("data"));
    }
}

/// Opens the registry as the daemon and dojangctl do, from a configuration.
fn open(port: u16, ca: Option<&Path>, scratch: &Path) -> Result<(), String> {
    let ca_line = ca
        .map(|p| format!("postgres_ca = \"{}\"\n", p.display()))
        .unwrap_or_default();
    let text = format!(
        "[keys]\nbackend = \"pkcs11\"\n\n[keys.pkcs11]\nmodule = \"/usr/lib/softhsm/libsofthsm2.so\"\n\
         token_label = \"unused\"\npin = {{ file = \"/nonexistent\" }}\n\n[store]\n\
         postgres = \"host=localhost port={port} user=postgres dbname=postgres sslmode=require connect_timeout=5\"\n\
         pool_size = 1\n{ca_line}"
    );
    let path = scratch.join("dojang.toml");
    std::fs::write(&path, &text).unwrap();
    let config = dojang::config::Config::parse(&path, &text).map_err(|e| e.to_string())?;
    dojang::cli::open_registry(&config)
        .map(|_| ())
        .map_err(|e| format!("{e:#}"))
}

#[test]
fn the_configured_ca_verifies_the_postgres_server_and_no_other_does() {
    let ca = DevCa::generate("Registry TLS CA").unwrap();
    let server = TlsPostgres::start(&ca);
    let scratch = tempfile::tempdir().unwrap();
    let ca_file = scratch.path().join("ca.pem");
    std::fs::write(&ca_file, ca.cert_pem()).unwrap();
    let other = DevCa::generate("Somebody Else's CA").unwrap();
    let other_file = scratch.path().join("other.pem");
    std::fs::write(&other_file, other.cert_pem()).unwrap();

    open(server.port, Some(&ca_file), scratch.path())
        .unwrap_or_else(|e| panic!("with store.postgres_ca: {e}"));
    for (what, ca) in [
        ("another CA", Some(other_file.as_path())),
        ("the system's CAs", None),
    ] {
        let err = open(server.port, ca, scratch.path()).expect_err(what);
        assert!(
            err.to_lowercase().contains("certificate verify failed")
                || err.to_lowercase().contains("tls"),
            "{what}: {err}"
        );
    }
}
