//! `backup` and `restore`: a consistent copy of the registry (SQLite's
//! online backup API, or `pg_dump`: [`crate::pg_backup`]) with a manifest,
//! and its restore onto a fresh node whose token is a clone of the issuing
//! one. A restore is verified
//! before anything is put in place: the copy is the one the manifest
//! names, its audit log verifies from the key auditors trust, it contains
//! every checkpoint published before the loss (a backup older than one
//! would roll the log back, and is refused), and the token holds the
//! log's audit key and the pseudonym key.

use std::path::{Path, PathBuf};

use anyhow::{Context, ensure};
use dojang::config::Config;
use dojang::store::{Registry, SqliteRegistry};
use serde::{Deserialize, Serialize};

/// The manifest's format.
const FORMAT: &str = "dojang-backup/1";
/// The manifest's and the copy's names in a backup directory.
const MANIFEST: &str = "backup.json";
const SQLITE_COPY: &str = "registry.db";
const POSTGRES_COPY: &str = "registry.pgdump";

/// `backup.json`: what the copy is, for the restore to check.
#[derive(Serialize, Deserialize)]
struct Manifest {
    format: String,
    /// `sqlite` or `postgres`.
    store: String,
    /// When the copy was taken (RFC 3339).
    created: String,
    /// The copy's file and its hex SHA-256.
    file: String,
    sha256: String,
    /// Audit entries in the copy, and the latest checkpoint's size.
    audit_entries: u64,
    signed_size: u64,
}

#[derive(clap::Args)]
pub(crate) struct BackupArgs {
    /// A new directory for the copy and its manifest.
    #[arg(long)]
    out: PathBuf,
}

#[derive(clap::Args)]
pub(crate) struct RestoreArgs {
    /// The backup directory (`dojangctl backup --out`).
    backup: PathBuf,
    /// The audit public key auditors trust (PEM), from outside the backup.
    #[arg(long)]
    audit_key: PathBuf,
    /// A checkpoint published before the loss (the mirror's `checkpoint`,
    /// a witness's or an auditor's copy); repeatable. The restored log
    /// must contain each, or the restore is refused as a rollback.
    #[arg(long)]
    published: Vec<PathBuf>,
    /// Restore with no published checkpoint to hold the backup to (then
    /// nothing shows that it is not stale).
    #[arg(long)]
    no_published_checkpoint: bool,
}

/// The registry this node's configuration names.
enum Store {
    Sqlite(PathBuf),
    Postgres(Box<crate::pg_backup::Pg>),
}

fn store_of(config: &Config) -> anyhow::Result<Store> {
    let store = config
        .store
        .as_ref()
        .context("this needs a [store] table")?;
    if let Some(pg) = crate::pg_backup::Pg::of(store)? {
        return Ok(Store::Postgres(Box::new(pg)));
    }
    Ok(Store::Sqlite(
        store
            .sqlite
            .clone()
            .context("[store]: set sqlite or postgres")?,
    ))
}

/// `backup --out DIR`.
pub(crate) fn backup(config: &Config, args: &BackupArgs) -> anyhow::Result<()> {
    let store = store_of(config)?;
    ensure!(
        !args.out.exists(),
        "{} exists: a backup goes into a new directory",
        args.out.display()
    );
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let (kind, file, registry): (_, _, Box<dyn Registry>) = match &store {
        Store::Sqlite(path) => {
            let registry = SqliteRegistry::open(path)
                .with_context(|| format!("opening the registry {}", path.display()))?;
            let copy = args.out.join(SQLITE_COPY);
            registry.backup_to(&copy).context("copying the registry")?;
            drop(registry);
            let copied = SqliteRegistry::open(&copy).context("opening the copy")?;
            ("sqlite", SQLITE_COPY, Box::new(copied))
        }
        Store::Postgres(pg) => {
            // Counted before the dump: the dump holds at least this much.
            let registry = pg.registry(&pg.database()?)?;
            pg.dump(&args.out.join(POSTGRES_COPY))?;
            ("postgres", POSTGRES_COPY, Box::new(registry))
        }
    };
    let manifest = Manifest {
        format: FORMAT.into(),
        store: kind.into(),
        created: dojang::node::rfc3339(time::OffsetDateTime::now_utc()),
        file: file.into(),
        sha256: file_sha256(&args.out.join(file))?,
        audit_entries: registry.audit_size()?,
        signed_size: registry.latest_checkpoint()?.map_or(0, |(size, _)| size),
    };
    std::fs::write(
        args.out.join(MANIFEST),
        serde_json::to_vec_pretty(&manifest)?,
    )?;
    println!(
        "{}: the registry with {} audit entries, signed through {}",
        args.out.display(),
        manifest.audit_entries,
        manifest.signed_size
    );
    Ok(())
}

/// `restore BACKUP --audit-key PEM --published CHECKPOINT…`.
pub(crate) fn restore(config: &Config, args: &RestoreArgs) -> anyhow::Result<()> {
    let store = store_of(config)?;
    ensure!(
        !args.published.is_empty() || args.no_published_checkpoint,
        "name at least one checkpoint published before the loss (--published), or say \
         --no-published-checkpoint: without one nothing shows this backup is not stale"
    );
    let manifest: Manifest = serde_json::from_slice(
        &std::fs::read(args.backup.join(MANIFEST))
            .with_context(|| format!("reading {}", args.backup.join(MANIFEST).display()))?,
    )
    .context("not a Dojang backup manifest")?;
    let expected = match &store {
        Store::Sqlite(_) => ("sqlite", SQLITE_COPY),
        Store::Postgres(_) => ("postgres", POSTGRES_COPY),
    };
    ensure!(
        manifest.format == FORMAT && (manifest.store.as_str(), manifest.file.as_str()) == expected,
        "not a {FORMAT} backup of a {} registry (this node's store)",
        expected.0
    );
    // Read once, into a file of this restore's own: the digest, the checks
    // and what goes in place are all that one copy, whatever happens to
    // the backup's storage meanwhile.
    let source = args.backup.join(&manifest.file);
    let copy = match &store {
        Store::Sqlite(target) => target.with_extension("partial"),
        Store::Postgres(_) => tempfile_dir()?.join(POSTGRES_COPY),
    };
    private_copy(&source, &copy)?;
    let digest = file_sha256(&copy);
    if digest.as_ref().ok() != Some(&manifest.sha256) {
        let _ = std::fs::remove_file(&copy);
        anyhow::bail!(
            "{} is not the copy its manifest names (damaged or replaced)",
            source.display()
        );
    }
    let restored = match &store {
        Store::Sqlite(target) => {
            restore_sqlite(config, args, &copy, target).map(|r| (r, target.display().to_string()))
        }
        Store::Postgres(pg) => restore_postgres(config, args, &copy, pg)
            .and_then(|r| Ok((r, format!("database {}", pg.database()?)))),
    };
    let _ = std::fs::remove_file(&copy);
    if let (Store::Postgres(_), Some(dir)) = (&store, copy.parent()) {
        let _ = std::fs::remove_dir(dir);
    }
    let (report, target) = restored?;
    println!(
        "{target}: restored from {} (taken {}): {} audit entries, signed through {}, \
         containing the {} published checkpoint(s){}",
        args.backup.display(),
        manifest.created,
        report.entries,
        report.signed_size,
        args.published.len(),
        if report.unsigned_tail > 0 {
            format!("; {} newer entries not yet signed", report.unsigned_tail)
        } else {
            String::new()
        }
    );
    Ok(())
}

/// `copy` (this restore's own file beside the target) is verified through
/// a scratch copy (opening migrates it), then linked in as the registry,
/// under the registry's node lock (no daemon starts on it meanwhile): a
/// link never replaces a registry that appeared meanwhile.
fn restore_sqlite(
    config: &Config,
    args: &RestoreArgs,
    copy: &Path,
    target: &Path,
) -> anyhow::Result<dojang::audit::bundle::Report> {
    // Held until the registry is in place: a daemon started meanwhile (a
    // unit restarting on its own) would make an empty registry there.
    let _lock = dojang::store::node_lock::NodeLock::sqlite(target, "dojangctl restore")?;
    for leftover in [
        target.to_owned(),
        sqlite_side(target, "-wal"),
        sqlite_side(target, "-shm"),
    ] {
        ensure!(
            !leftover.exists(),
            "{} exists: a restore goes onto a fresh node (move the registry and its -wal/-shm away first)",
            leftover.display()
        );
    }
    let scratch = target.with_extension("restoring");
    remove_sqlite(&scratch);
    let verified = std::fs::copy(copy, &scratch)
        .context("copying the backup")
        .and_then(|_| SqliteRegistry::open(&scratch).context("opening the backup"))
        .and_then(|registry| {
            check_sqlite_schema(&registry)?;
            verify_restored(config, &registry, args)
        });
    remove_sqlite(&scratch);
    let report = verified?;
    std::fs::hard_link(copy, target)
        .with_context(|| format!("placing the registry at {}", target.display()))?;
    Ok(report)
}

/// Restored into a scratch database on the server, verified there, then
/// renamed to the registry's database (or dropped).
fn restore_postgres(
    config: &Config,
    args: &RestoreArgs,
    copy: &Path,
    pg: &crate::pg_backup::Pg,
) -> anyhow::Result<dojang::audit::bundle::Report> {
    let target = pg.database()?;
    ensure!(
        !pg.exists(&target)?,
        "the database {target} exists: a restore goes onto a fresh server (drop or rename it first)"
    );
    let scratch = pg.restore_scratch(copy)?;
    let verified = pg
        .registry(&scratch)
        .and_then(|registry| verify_restored(config, &registry, args));
    match verified {
        Ok(report) => {
            pg.place(&scratch)?;
            Ok(report)
        }
        Err(e) => {
            pg.discard(&scratch);
            Err(e)
        }
    }
}

/// The restored log against the trusted key and the published
/// checkpoints, and the token against the log.
fn verify_restored(
    config: &Config,
    registry: &dyn Registry,
    args: &RestoreArgs,
) -> anyhow::Result<dojang::audit::bundle::Report> {
    let bundle = crate::audit::bundle_of(config, registry)?;
    let published = args
        .published
        .iter()
        .map(|p| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display())))
        .collect::<anyhow::Result<Vec<_>>>()?;
    // The origin from this node's configuration, never the backup's.
    let origin = config
        .server
        .as_ref()
        .context("this needs the [server] table")?
        .audit
        .origin
        .clone();
    let trusted = crate::audit_proof::trusted_log(&args.audit_key, origin.clone(), origin)?;
    let bundle = dojang::audit::bundle::with_published(bundle, &published);
    let report = dojang::audit::bundle::verify(&bundle, &trusted).map_err(|e| {
        anyhow::anyhow!(
            "REFUSED: the backup's audit log does not continue what was published: {e}. \
             Restoring it would roll the log back behind a published checkpoint \
             (or it is not this log); use a newer backup"
        )
    })?;
    check_token(config, registry, &report)?;
    Ok(report)
}

/// The token is a clone of the issuing one: it holds the pseudonym key the
/// registry's holders were recognised with (its check value, against the
/// configuration's pin and the registry's record) and the audit key the
/// verified log trusts at its end.
fn check_token(
    config: &Config,
    registry: &dyn Registry,
    report: &dojang::audit::bundle::Report,
) -> anyhow::Result<()> {
    let server = config
        .server
        .as_ref()
        .context("this needs the [server] table")?;
    let backend = dojang::cli::open_backend(config)?;
    let label = &server.keys.pseudonym;
    let _ = backend.find(label).with_context(|| {
        format!(
            "the token has no pseudonym key {label:?}: restore the token from its backup first \
             (without it no holder is recognised again)"
        )
    })?;
    let held = dojang::issuance::pseudonym_key_check(backend.as_ref(), label)?;
    let recorded = registry.document(dojang::store::PSEUDONYM_CHECK_DOCUMENT)?;
    ensure!(
        server.keys.pseudonym_check.is_some() || recorded.is_some(),
        "nothing says which pseudonym key this backup's holders were recognised with: set \
         server.keys.pseudonym_check from the key's ceremony record (dojangctl keys check-value \
         there) and restore again"
    );
    for (expected, whose) in [
        (
            server.keys.pseudonym_check.clone(),
            "the configuration's pin",
        ),
        (recorded, "this backup's record"),
    ] {
        if let Some(expected) = expected {
            ensure!(
                expected == held,
                "the token's pseudonym key (check value {held}) is not the key this backup's \
                 holders were recognised with ({expected}, {whose}): restore the key from its backup"
            );
        }
    }
    let latest = pem_der(&report.latest_key_pem)?;
    let holds_latest = backend.list()?.iter().any(|k| {
        k.purpose == pkcs11_shim::KeyPurpose::Audit
            && k.public_key.as_ref().map(|p| p.spki_der()) == Some(latest.as_slice())
    });
    ensure!(
        holds_latest,
        "the token does not hold the audit key this log trusts at its end: it is not a clone of \
         the issuing token"
    );
    Ok(())
}

fn pem_der(pem: &str) -> anyhow::Result<Vec<u8>> {
    Ok(openssl::pkey::PKey::public_key_from_pem(pem.as_bytes())?.public_key_to_der()?)
}

fn file_sha256(path: &Path) -> anyhow::Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(dojang::keys::view::hex(&pkcs11_shim::digest::sha256(
        &bytes,
    )))
}

/// A SQLite file's side file (`-wal`, `-shm`).
fn sqlite_side(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Removes a SQLite file and its WAL and shared-memory files.
fn remove_sqlite(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(sqlite_side(path, suffix));
    }
}

/// Copies `source` to `copy`, a file that must not exist yet (no
/// symlink or earlier file is followed or reused), readable by this user
/// only.
fn private_copy(source: &Path, copy: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut from =
        std::fs::File::open(source).with_context(|| format!("reading {}", source.display()))?;
    ensure!(
        from.metadata()?.is_file(),
        "{} is not a regular file",
        source.display()
    );
    let mut to = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(copy)
        .with_context(|| format!("{} (left by an earlier restore? remove it)", copy.display()))?;
    let copied = std::io::copy(&mut from, &mut to)
        .map(|_| ())
        .and_then(|()| to.sync_all());
    if copied.is_err() {
        let _ = std::fs::remove_file(copy);
    }
    copied.context("copying the backup")
}

/// The restored registry has exactly the objects the migrations make: a
/// crafted file's extra trigger or view would otherwise go live with it.
fn check_sqlite_schema(restored: &SqliteRegistry) -> anyhow::Result<()> {
    let reference_dir = tempfile_dir()?;
    let reference = match SqliteRegistry::open(&reference_dir.join("reference.db")) {
        Ok(reference) => reference,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&reference_dir);
            return Err(anyhow::Error::new(e).context("making a reference registry"));
        }
    };
    let schema = |path: &Path| -> anyhow::Result<Vec<(String, String, String)>> {
        let conn = rusqlite::Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )?;
        let mut statement = conn.prepare(
            "SELECT type, name, COALESCE(sql, '') FROM sqlite_master ORDER BY type, name",
        )?;
        let rows = statement
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    };
    // A crafted file may keep an index's definition but not its entries.
    let check: String = rusqlite::Connection::open_with_flags(
        restored.path(),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )?
    .query_row("PRAGMA integrity_check", [], |row| row.get(0))?;
    ensure!(
        check == "ok",
        "REFUSED: the backup fails SQLite's integrity check: {check}"
    );
    let expected = schema(reference.path());
    let found = schema(restored.path());
    drop(reference);
    let _ = std::fs::remove_dir_all(&reference_dir);
    let (expected, found) = (expected?, found?);
    let extra: Vec<&str> = found
        .iter()
        .filter(|o| !expected.contains(o))
        .map(|(_, name, _)| name.as_str())
        .collect();
    ensure!(
        extra.is_empty() && found.len() == expected.len(),
        "REFUSED: the backup's schema is not the one the migrations make (unexpected or changed: {extra:?})"
    );
    Ok(())
}

/// A new private directory under the system's temporary directory.
fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let mut random = [0u8; 8];
    openssl::rand::rand_bytes(&mut random)?;
    let dir = std::env::temp_dir().join(format!(
        "dojang-restore-{}",
        dojang::keys::view::hex(&random)
    ));
    std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
        .create(&dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}
