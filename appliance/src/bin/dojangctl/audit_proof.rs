//! `audit prove` and `audit check-proof`: one entry's offline proof
//! (c2sp.org/tlog-proof) from the registry, and its check against a key and
//! origin the reader trusts; what a reader of the log trusts
//! ([`trusted_log`], shared with `audit verify` and `restore`).

use std::path::{Path, PathBuf};

use anyhow::Context;
use dojang::audit::checkpoint::NoteKey;
use dojang::audit::log::AuditLog;
use dojang::audit::proof::EntryProof;
use dojang::config::Config;
use pkcs11_shim::PublicKey;
use serde_json::json;

// The subcommand's help text is its variant's doc comment in `AuditCommand`.
#[derive(clap::Args)]
pub(crate) struct CheckProofArgs {
    /// The proof (`.tlog-proof`).
    proof: PathBuf,
    #[command(flatten)]
    trusted: TrustedLogArgs,
}

/// The log an auditor trusts, named from outside what is checked.
#[derive(clap::Args)]
pub(crate) struct TrustedLogArgs {
    /// The audit public key you trust (PEM), from outside what is checked.
    #[arg(long)]
    key: PathBuf,
    /// The log's origin you trust.
    #[arg(long)]
    origin: String,
    /// The key's name in signed notes [default: a bundle's own name, or
    /// the origin; the key itself is pinned by --key].
    #[arg(long)]
    key_name: Option<String>,
}

impl TrustedLogArgs {
    /// The trusted log: `--key` named `--key-name` (else `default_name`
    /// of the origin), for `--origin`.
    pub(crate) fn load(
        self,
        default_name: impl FnOnce(&str) -> String,
    ) -> anyhow::Result<dojang::audit::bundle::TrustedLog> {
        let name = self.key_name.unwrap_or_else(|| default_name(&self.origin));
        trusted_log(&self.key, name, self.origin)
    }
}

/// What an auditor trusts: the key in `key_pem` (a file from outside the
/// log), with its note name, for the log `origin`.
pub(crate) fn trusted_log(
    key_pem: &std::path::Path,
    key_name: String,
    origin: String,
) -> anyhow::Result<dojang::audit::bundle::TrustedLog> {
    let pem = std::fs::read(key_pem).with_context(|| format!("reading {}", key_pem.display()))?;
    let der = openssl::pkey::PKey::public_key_from_pem(&pem)
        .and_then(|k| k.public_key_to_der())
        .with_context(|| format!("{} is not a public key", key_pem.display()))?;
    Ok(dojang::audit::bundle::TrustedLog {
        key: PublicKey::from_spki_der(&der)?,
        key_name,
        origin,
    })
}

/// `audit prove --index N --out FILE`: entry N's proof in the tree of the
/// latest checkpoint.
pub(crate) fn prove(config: &Config, index: u64, out: &Path) -> anyhow::Result<()> {
    let registry = dojang::cli::open_registry(config)?;
    let (size, checkpoint) = registry
        .latest_checkpoint()?
        .context("no checkpoint has been signed yet")?;
    anyhow::ensure!(
        index < size,
        "entry {index} is not covered by the latest checkpoint ({size} entries); retry after the next one"
    );
    let (_, proof) = AuditLog::inclusion(registry.as_ref(), index, size)?;
    let entry = registry
        .audit_entries(index, 1)?
        .pop()
        .context("the entry is missing from the log")?;
    let text = EntryProof {
        entry,
        index,
        proof,
        checkpoint,
    }
    .encode();
    std::fs::write(out, text).with_context(|| format!("writing {}", out.display()))?;
    println!(
        "{}: entry {index} in the signed tree of {size} entries",
        out.display()
    );
    Ok(())
}

/// `audit check-proof FILE --key PEM --origin ORIGIN`.
pub(crate) fn check(a: CheckProofArgs, as_json: bool) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&a.proof)
        .with_context(|| format!("reading {}", a.proof.display()))?;
    let proof = EntryProof::parse(&text)?;
    let trusted = a.trusted.load(str::to_owned)?;
    let key = NoteKey::new(&trusted.key_name, trusted.key.clone())?;
    let (entry, checkpoint) = proof.verify(&key, &trusted.origin)?;
    if as_json {
        println!(
            "{}",
            json!({"valid": true, "index": proof.index, "size": checkpoint.size,
                   "time": entry.time, "node": entry.node, "action": entry.action,
                   "outcome": entry.outcome, "credential_id": entry.credential_id})
        );
    } else {
        println!(
            "{}: valid — entry {} ({} {} at {}) is in log {:?} signed through {}",
            a.proof.display(),
            proof.index,
            entry.action,
            entry.outcome,
            entry.time,
            trusted.origin,
            checkpoint.size
        );
    }
    Ok(())
}
