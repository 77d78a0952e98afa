//! `backup` and `restore`: a consistent copy of the registry (SQLite's
//! online backup API) with a manifest, and its restore onto a fresh node
//! whose token is a clone of the issuing one. A restore is verified
//! before anything is put in place: the copy is the one the manifest
//! names, its audit log verifies from the key auditors trust, it contains
//! every checkpoint published before the loss (a backup older than one
//! would roll the log back, and is refused), and the token holds the
//! log's audit key and the pseudonym key.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail, ensure};
use dojang::config::Config;
use dojang::store::{Registry, SqliteRegistry};
use serde::{Deserialize, Serialize};

/// The manifest's format.
const FORMAT: &str = "dojang-backup/1";
/// The manifest's and the copy's names in a backup directory.
const MANIFEST: &str = "backup.json";
const SQLITE_COPY: &str = "registry.db";

/// `backup.json`: what the copy is, for the restore to check.
#[derive(Serialize, Deserialize)]
struct Manifest {
    format: String,
    /// `sqlite`.
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

fn sqlite_path(config: &Config) -> anyhow::Result<PathBuf> {
    let store = config
        .store
        .as_ref()
        .context("this needs a [store] table")?;
    match (&store.sqlite, &store.postgres) {
        (Some(path), _) => Ok(path.clone()),
        _ => bail!(
            "backup and restore cover the SQLite registry; a PostgreSQL registry is backed up \
             with PostgreSQL's own tools (docs/disaster-recovery.md)"
        ),
    }
}

/// `backup --out DIR`.
pub(crate) fn backup(config: &Config, args: &BackupArgs) -> anyhow::Result<()> {
    let path = sqlite_path(config)?;
    ensure!(
        !args.out.exists(),
        "{} exists: a backup goes into a new directory",
        args.out.display()
    );
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let registry = SqliteRegistry::open(&path)
        .with_context(|| format!("opening the registry {}", path.display()))?;
    let copy = args.out.join(SQLITE_COPY);
    registry.backup_to(&copy).context("copying the registry")?;
    drop(registry);
    let copied = SqliteRegistry::open(&copy).context("opening the copy")?;
    let manifest = Manifest {
        format: FORMAT.into(),
        store: "sqlite".into(),
        created: dojang::node::rfc3339(time::OffsetDateTime::now_utc()),
        file: SQLITE_COPY.into(),
        sha256: file_sha256(&copy)?,
        audit_entries: copied.audit_size()?,
        signed_size: copied.latest_checkpoint()?.map_or(0, |(size, _)| size),
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
    let target = sqlite_path(config)?;
    ensure!(
        !args.published.is_empty() || args.no_published_checkpoint,
        "name at least one checkpoint published before the loss (--published), or say \
         --no-published-checkpoint: without one nothing shows this backup is not stale"
    );
    ensure!(
        !target.exists(),
        "the registry {} exists: a restore goes onto a fresh node (move it away first)",
        target.display()
    );
    let manifest: Manifest = serde_json::from_slice(
        &std::fs::read(args.backup.join(MANIFEST))
            .with_context(|| format!("reading {}", args.backup.join(MANIFEST).display()))?,
    )
    .context("not a Dojang backup manifest")?;
    ensure!(
        manifest.format == FORMAT && manifest.store == "sqlite" && manifest.file == SQLITE_COPY,
        "not a {FORMAT} SQLite backup"
    );
    let copy = args.backup.join(SQLITE_COPY);
    ensure!(
        file_sha256(&copy)? == manifest.sha256,
        "{} is not the copy its manifest names (damaged or replaced)",
        copy.display()
    );
    // Verified on a scratch copy beside the target (opening migrates it);
    // the untouched backup file is what goes in place.
    let scratch = target.with_extension("restoring");
    remove_sqlite(&scratch);
    let _ = std::fs::copy(&copy, &scratch).context("copying the backup")?;
    let verified = verify_restored(config, &scratch, args);
    remove_sqlite(&scratch);
    let report = verified?;
    let partial = target.with_extension("partial");
    let _ = std::fs::copy(&copy, &partial).context("placing the registry")?;
    std::fs::rename(&partial, &target).context("placing the registry")?;
    println!(
        "{}: restored from {} (taken {}): {} audit entries, signed through {}, \
         containing the {} published checkpoint(s){}",
        target.display(),
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

/// The restored log against the trusted key and the published
/// checkpoints, and the token against the log.
fn verify_restored(
    config: &Config,
    scratch: &Path,
    args: &RestoreArgs,
) -> anyhow::Result<dojang::audit::bundle::Report> {
    let registry = SqliteRegistry::open(scratch).context("opening the backup")?;
    let bundle = crate::audit::bundle_of(config, &registry)?;
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
    let trusted = crate::audit::trusted_log(&args.audit_key, origin.clone(), origin)?;
    let held = token_keys(config)?;
    ensure!(
        std::iter::once(&bundle.public_key_pem)
            .chain(&bundle.handover_keys_pem)
            .any(|pem| pem_der(pem).ok() == Some(held.clone())),
        "the token does not hold this log's audit key: it is not a clone of the issuing token"
    );
    let bundle = dojang::audit::bundle::with_published(bundle, &published);
    dojang::audit::bundle::verify(&bundle, &trusted).map_err(|e| {
        anyhow::anyhow!(
            "REFUSED: the backup's audit log does not continue what was published: {e}. \
             Restoring it would roll the log back behind a published checkpoint \
             (or it is not this log); use a newer backup"
        )
    })
}

/// The token's audit public key (SPKI DER), once its pseudonym key is
/// found there too.
fn token_keys(config: &Config) -> anyhow::Result<Vec<u8>> {
    let server = config
        .server
        .as_ref()
        .context("this needs the [server] table")?;
    let backend = dojang::cli::open_backend(config)?;
    let _ = backend.find(&server.keys.pseudonym).with_context(|| {
        format!(
            "the token has no pseudonym key {:?}: restore the token from its backup first \
             (without it no holder is recognised again)",
            server.keys.pseudonym
        )
    })?;
    let audit = backend
        .find(&server.keys.audit)
        .with_context(|| format!("the token has no audit key {:?}", server.keys.audit))?;
    Ok(audit
        .public_key
        .context("the audit key has no public key")?
        .spki_der()
        .to_vec())
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

/// Removes a SQLite file and its WAL and shared-memory files.
fn remove_sqlite(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(name));
    }
}
