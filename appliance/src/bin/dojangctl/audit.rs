//! `audit …`: exports the registry's audit log as a self-contained bundle
//! (`export`) and verifies such a bundle offline against a key and origin
//! the auditor trusts (`verify`); one entry's proofs are in
//! [`super::audit_proof`]. Owns the subcommands' arguments and their
//! output.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use dojang::cli;
use dojang::config::Config;
use serde_json::json;

#[derive(Subcommand)]
pub(crate) enum AuditCommand {
    /// Verify an exported audit bundle offline: every entry, every checkpoint
    /// signature, and the consistency between successive checkpoints.
    Verify(AuditVerifyArgs),
    /// Export the registry's audit log (entries, checkpoints, audit public
    /// key) as a self-contained bundle, and the key alone for auditors.
    Export {
        /// Where to write the bundle (JSON).
        #[arg(long)]
        out: PathBuf,
        /// Also write the audit public key (PEM) here.
        #[arg(long)]
        key_out: Option<PathBuf>,
    },
    /// Write one entry's offline proof (c2sp.org/tlog-proof: the entry,
    /// its inclusion proof and the latest signed checkpoint).
    Prove {
        /// The entry's index in the log.
        #[arg(long)]
        index: u64,
        /// Where to write the proof (`.tlog-proof`).
        #[arg(long)]
        out: PathBuf,
    },
    /// Check an entry's offline proof against a key and origin you trust.
    CheckProof(super::audit_proof::CheckProofArgs),
}

// The subcommand's help text is its variant's doc comment in `AuditCommand`.
#[derive(clap::Args)]
pub(crate) struct AuditVerifyArgs {
    /// The bundle (JSON).
    bundle: PathBuf,
    #[command(flatten)]
    trusted: super::audit_proof::TrustedLogArgs,
    /// Fail unless the log is signed through at least this many entries
    /// (e.g. the size of a checkpoint you saw before).
    #[arg(long, default_value_t = 0)]
    min_size: u64,
    /// Accept entries newer than the latest checkpoint (not covered by any signature).
    #[arg(long)]
    allow_unsigned_tail: bool,
    /// Also check every entry's seal with the HSM's seal keys (on the
    /// appliance: reads the configuration and opens the token). Catches an
    /// entry edited or renumbered before a checkpoint covered it.
    #[arg(long)]
    seals: bool,
}

/// `audit …`: `export` loads the configuration (only then).
pub(crate) fn run(
    command: AuditCommand,
    load: impl FnOnce() -> anyhow::Result<Config>,
    as_json: bool,
) -> anyhow::Result<()> {
    match command {
        AuditCommand::Verify(a) => verify(a, load, as_json),
        AuditCommand::Export { out, key_out } => export(&load()?, &out, key_out.as_deref()),
        AuditCommand::Prove { index, out } => super::audit_proof::prove(&load()?, index, &out),
        AuditCommand::CheckProof(a) => super::audit_proof::check(a, as_json),
    }
}

/// `audit export --out FILE [--key-out PEM]`.
fn export(
    config: &Config,
    out: &std::path::Path,
    key_out: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let registry = dojang::cli::open_registry(config)?;
    let bundle = bundle_of(config, registry.as_ref())?;
    std::fs::write(out, serde_json::to_vec_pretty(&bundle)?)
        .with_context(|| format!("writing {}", out.display()))?;
    if let Some(path) = key_out {
        std::fs::write(path, &bundle.public_key_pem)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    println!(
        "{}: {} entries, {} checkpoints of log {:?}",
        out.display(),
        bundle.entries.len(),
        bundle.checkpoints.len(),
        bundle.origin
    );
    Ok(())
}

/// The registry's audit log as a bundle (entries sequenced first).
pub(crate) fn bundle_of(
    config: &Config,
    registry: &dyn dojang::store::Registry,
) -> anyhow::Result<dojang::audit::bundle::Bundle> {
    let server = config
        .server
        .as_ref()
        .context("this needs the [server] table (audit origin and key)")?;
    let mut keys = audit_keys_pem(config, &server.keys.audit, registry)?;
    let anchor = keys.remove(0);
    let origin = server.audit.origin.clone();
    while registry.sequence_audit()? > 0 {}
    Ok(dojang::audit::bundle::Bundle {
        format: dojang::audit::bundle::FORMAT.into(),
        origin: origin.clone(),
        key_name: origin,
        public_key_pem: anchor,
        handover_keys_pem: keys,
        entries: entries_base64(registry)?,
        checkpoints: registry
            .checkpoints()?
            .into_iter()
            .map(|(_, n)| n)
            .collect(),
    })
}

/// The audit keys (PEM) in the order they signed: the first is the anchor
/// auditors pin, the others are trusted through hand-over checkpoints.
/// Never empty: before the daemon's first start, the configured key
/// (`audit_label`) from the token.
fn audit_keys_pem(
    config: &Config,
    audit_label: &str,
    registry: &dyn dojang::store::Registry,
) -> anyhow::Result<Vec<String>> {
    let pem_of = |spki: &[u8]| -> anyhow::Result<String> {
        Ok(String::from_utf8(
            openssl::pkey::PKey::public_key_from_der(spki)?.public_key_to_pem()?,
        )?)
    };
    let mut keys = registry
        .keys()?
        .into_iter()
        .filter(|k| k.chain == dojang::store::AUDIT_CHAIN)
        .map(|k| pem_of(&k.public_key))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if keys.is_empty() {
        // The daemon has not started yet: the configured key.
        let backend = cli::open_backend(config)?;
        let key = backend.find(audit_label)?;
        let public = key.public_key.context("the audit key has no public key")?;
        keys.push(public.to_pem()?);
    }
    Ok(keys)
}

/// Every entry of the audit log, base64, read a page at a time.
fn entries_base64(registry: &dyn dojang::store::Registry) -> anyhow::Result<Vec<String>> {
    use base64::Engine;
    let size = registry.audit_size()?;
    let mut entries = Vec::with_capacity(size as usize);
    while (entries.len() as u64) < size {
        let page = registry.audit_entries(entries.len() as u64, 1000)?;
        anyhow::ensure!(!page.is_empty(), "the audit log ends before its size");
        entries.extend(
            page.iter()
                .map(|e| base64::engine::general_purpose::STANDARD.encode(e)),
        );
    }
    Ok(entries)
}

/// `audit verify BUNDLE --key PEM --origin ORIGIN …`.
fn verify(
    a: AuditVerifyArgs,
    load: impl FnOnce() -> anyhow::Result<Config>,
    as_json: bool,
) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&a.bundle)
        .with_context(|| format!("reading {}", a.bundle.display()))?;
    let bundle: dojang::audit::bundle::Bundle = serde_json::from_str(&text)
        .with_context(|| format!("{} is not an audit bundle", a.bundle.display()))?;
    let trusted = a.trusted.load(|_| bundle.key_name.clone())?;
    let report = dojang::audit::bundle::verify(&bundle, &trusted)?;
    anyhow::ensure!(
        report.signed_size >= a.min_size,
        "the log is signed through {} entries, fewer than the {} required: checkpoints were dropped",
        report.signed_size,
        a.min_size
    );
    anyhow::ensure!(
        report.unsigned_tail == 0 || a.allow_unsigned_tail,
        "{} entries after the latest checkpoint are not covered by any signature \
         (--allow-unsigned-tail to accept the signed part)",
        report.unsigned_tail
    );
    let sealed = if a.seals {
        let config = load()?;
        let sealer = cli::audit_sealer(&config, cli::open_backend(&config)?);
        Some(dojang::audit::bundle::check_seals(&bundle, &sealer)?)
    } else {
        None
    };
    print_verified(&a.bundle, &trusted, &report, sealed, as_json);
    Ok(())
}

/// The output of a successful `audit verify`.
fn print_verified(
    bundle: &std::path::Path,
    trusted: &dojang::audit::bundle::TrustedLog,
    report: &dojang::audit::bundle::Report,
    sealed: Option<u64>,
    as_json: bool,
) {
    if as_json {
        println!(
            "{}",
            json!({"valid": true, "origin": trusted.origin, "key_name": trusted.key_name,
                   "entries": report.entries, "checkpoints": report.checkpoints,
                   "signed_size": report.signed_size, "unsigned_tail": report.unsigned_tail,
                   "seals_verified": sealed})
        );
    } else {
        println!(
            "{}: valid — log {:?}, {} entries, {} checkpoints by {:?}, signed through {}{}",
            bundle.display(),
            trusted.origin,
            report.entries,
            report.checkpoints,
            trusted.key_name,
            report.signed_size,
            if report.unsigned_tail > 0 {
                format!(
                    " ({} newer entries NOT covered by a signature)",
                    report.unsigned_tail
                )
            } else {
                String::new()
            }
        );
        if let Some(sealed) = sealed {
            println!("{sealed} sealed entries: every seal verifies");
        }
    }
}
