//! PostgreSQL instances of a test's own (Debian's binaries, run as the
//! postgres user), beside the shared server at 127.0.0.1:5432: a server
//! with TLS, a primary with a synchronous streaming standby. Each is
//! stopped (immediately) on drop.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::sites::Site;

/// Runs a PostgreSQL binary as the postgres user (it refuses root),
/// inside `netns` if given; panics with its output if it fails.
pub fn as_postgres(netns: Option<&str>, bin: &Path, args: &[&str]) {
    let mut command = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            let _ = c.args(["netns", "exec", ns, "runuser"]);
            c
        }
        None => Command::new("runuser"),
    };
    let out = command
        .args(["-u", "postgres", "--"])
        .arg(bin)
        .args(args)
        .output()
        .expect("runuser");
    assert!(
        out.status.success(),
        "{} {args:?}: {}{}",
        bin.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The newest installed PostgreSQL's `bin` directory.
pub fn postgres_bin() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("Debian's PostgreSQL (make deps)")
        .filter_map(Result::ok)
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop().expect("initdb")
}

/// Gives `path` (recursively) to the postgres user.
pub fn owned_by_postgres(path: &Path) {
    let out = Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(path)
        .output()
        .expect("chown");
    assert!(out.status.success(), "{out:?}");
}

/// A directory the postgres user owns, for a cluster and its socket.
pub fn cluster_dir(prefix: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("temp dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("permissions");
    owned_by_postgres(dir.path());
    dir
}

/// `initdb` with trust authentication for `postgres`.
pub fn initdb(bin: &Path, data: &Path) {
    as_postgres(
        None,
        &bin.join("initdb"),
        &[
            "-D",
            data.to_str().expect("path"),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
        ],
    );
}

/// The CA the site clusters' TLS certificates come from (what nodes set
/// as `store.postgres_ca`: a node reaches its registry over the network).
pub struct SiteCa {
    ca: dojang::devtls::DevCa,
    /// The CA certificate (PEM file).
    pub pem: PathBuf,
}

impl SiteCa {
    /// A CA whose certificate is written to `dir/site-ca.pem`.
    pub fn new(dir: &Path) -> Self {
        let ca = dojang::devtls::DevCa::generate("Dojang drill PostgreSQL CA").expect("CA");
        let pem = dir.join("site-ca.pem");
        std::fs::write(&pem, ca.cert_pem()).expect("CA file");
        SiteCa { ca, pem }
    }

    /// A server certificate for `site`'s address in `data` (the cluster's
    /// `server.crt` and `server.key`).
    fn install(&self, site: &Site, data: &Path) {
        let mut spec = dojang::devtls::LeafSpec::localhost_server();
        spec.ips = vec![std::net::IpAddr::V4(site.ip)];
        let leaf = self.ca.issue(&spec).expect("server certificate");
        std::fs::write(data.join("server.crt"), &leaf.cert_pem).expect("server.crt");
        std::fs::write(data.join("server.key"), &leaf.key_pem).expect("server.key");
        std::fs::set_permissions(
            data.join("server.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .expect("permissions");
    }
}

/// One cluster of a two-site pair, running inside its site's namespace.
pub struct SiteCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    netns: String,
    /// The connection string for the registry, at the site's address.
    pub url: String,
}

impl SiteCluster {
    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn start(&self, site: &Site, extra: &str) {
        let options = format!(
            "-p 5432 -k {} -c listen_addresses={} -c ssl=on -c fsync=off {extra}",
            self.dir.path().display(),
            site.ip
        );
        as_postgres(
            Some(&self.netns),
            &self.bin.join("pg_ctl"),
            &[
                "-D",
                self.data().to_str().expect("path"),
                "-o",
                &options,
                "-l",
                self.dir.path().join("log").to_str().expect("path"),
                "-w",
                "start",
            ],
        );
    }

    /// The primary at `site`: every commit waits until the standby named
    /// `standby_name` has it on disk (synchronous replication).
    pub fn primary(site: &Site, standby_name: &str, ca: &SiteCa) -> Self {
        let dir = cluster_dir("dojang-pg-primary-");
        let bin = postgres_bin();
        let data = dir.path().join("data");
        initdb(&bin, &data);
        let subnet = format!("{}/24", site.subnet());
        std::fs::write(
            data.join("pg_hba.conf"),
            format!(
                "local all all trust\nhostssl all all {subnet} trust\nhost replication all {subnet} trust\n"
            ),
        )
        .expect("pg_hba.conf");
        ca.install(site, &data);
        owned_by_postgres(&data);
        let cluster = SiteCluster {
            url: site_url(site),
            dir,
            bin,
            netns: site.netns.clone(),
        };
        cluster.start(
            site,
            &format!(
                "-c wal_level=replica -c max_wal_senders=4 -c synchronous_commit=on \
                 -c synchronous_standby_names={standby_name}"
            ),
        );
        cluster
    }

    /// A streaming standby at `site`, named `name`, of the primary at
    /// `primary_site`, from a base backup.
    pub fn standby(primary_site: &Site, site: &Site, name: &str, ca: &SiteCa) -> Self {
        let dir = cluster_dir("dojang-pg-standby-");
        let bin = postgres_bin();
        let data = dir.path().join("data");
        let source = format!("host={} port=5432 user=postgres", primary_site.ip);
        as_postgres(
            None,
            &bin.join("pg_basebackup"),
            &[
                "-d",
                &source,
                "-D",
                data.to_str().expect("path"),
                "-X",
                "stream",
                "-R",
                "--no-sync",
                // Not a spread checkpoint (minutes) on a busy primary.
                "--checkpoint=fast",
            ],
        );
        let mut auto = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.auto.conf"))
            .expect("postgresql.auto.conf");
        std::io::Write::write_all(
            &mut auto,
            format!("primary_conninfo = '{source} application_name={name}'\n").as_bytes(),
        )
        .expect("primary_conninfo");
        ca.install(site, &data);
        owned_by_postgres(&data);
        let cluster = SiteCluster {
            url: site_url(site),
            dir,
            bin,
            netns: site.netns.clone(),
        };
        cluster.start(site, "");
        cluster
    }

    /// An admin connection (TLS, unverified: the test's own check reads).
    pub fn client(&self) -> postgres::Client {
        let mut builder =
            openssl::ssl::SslConnector::builder(openssl::ssl::SslMethod::tls()).expect("TLS");
        builder.set_verify(openssl::ssl::SslVerifyMode::NONE);
        let mut tls = postgres_openssl::MakeTlsConnector::new(builder.build());
        tls.set_callback(|config, _| {
            config.set_verify_hostname(false);
            Ok(())
        });
        self.url
            .parse::<postgres::Config>()
            .and_then(|c| c.connect(tls))
            .expect("PostgreSQL at the site")
    }

    /// Waits until the standby `name` streams synchronously.
    pub fn wait_synchronous(&self, name: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let sync = self
                .client()
                .query_opt(
                    "SELECT 1 FROM pg_stat_replication WHERE application_name = $1 AND sync_state = 'sync'",
                    &[&name],
                )
                .expect("pg_stat_replication");
            if sync.is_some() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the standby never became synchronous"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the cluster cleanly (a primary first sends its standbys every
    /// change: the planned half of a switchover).
    pub fn stop(&self) {
        as_postgres(
            Some(&self.netns),
            &self.bin.join("pg_ctl"),
            &[
                "-D",
                self.data().to_str().expect("path"),
                "-m",
                "fast",
                "-w",
                "stop",
            ],
        );
    }

    /// Makes every commit wait for the standby `name` (on a promoted
    /// standby that now has a standby of its own).
    pub fn require_synchronous(&self, name: &str) {
        let mut client = self.client();
        // Two statements: ALTER SYSTEM may not run in a transaction block.
        client
            .batch_execute(&format!(
                "ALTER SYSTEM SET synchronous_standby_names = '{name}'"
            ))
            .expect("synchronous_standby_names");
        client
            .batch_execute("SELECT pg_reload_conf()")
            .expect("pg_reload_conf");
    }

    /// Promotes a standby to primary and waits until it takes writes.
    pub fn promote(&self) {
        as_postgres(
            Some(&self.netns),
            &self.bin.join("pg_ctl"),
            &["-D", self.data().to_str().expect("path"), "-w", "promote"],
        );
    }
}

impl Drop for SiteCluster {
    fn drop(&mut self) {
        stop_immediately(&self.bin, &self.data());
    }
}

/// Stops the cluster at `data` without a shutdown checkpoint (best effort:
/// it may be gone already).
pub fn stop_immediately(bin: &Path, data: &Path) {
    let _ = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(bin.join("pg_ctl"))
        .arg("-D")
        .arg(data)
        .args(["-m", "immediate", "stop"])
        .output();
}

fn site_url(site: &Site) -> String {
    format!(
        "host={} port=5432 user=postgres dbname=postgres sslmode=require connect_timeout=3",
        site.ip
    )
}
