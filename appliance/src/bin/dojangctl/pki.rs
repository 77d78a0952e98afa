//! `pki …`: certificate ceremonies against the configured token (the IACA
//! root, document signers, the CRL, kept in the registry when there is
//! one), or with `propose-iaca` an officer proposal that the daemon makes
//! the IACA (sent through [`crate::officer`]). Owns the subcommands'
//! arguments and the ceremonies' output.

use anyhow::Context;
use clap::Subcommand;
use dojang::cli;
use dojang::config::Config;
use dojang::pki::ceremony;
use pkcs11_shim::Algorithm;
use time::OffsetDateTime;

use crate::officer::{self, Connection};

#[derive(Subcommand)]
pub(crate) enum PkiCommand {
    /// Create the IACA key and root certificate, a first document signer
    /// and an empty CRL (once per appliance).
    Init {
        /// Label of the first document-signer key.
        #[arg(long, default_value = "ds-1")]
        ds_label: String,
        /// Algorithm of new keys.
        #[arg(long = "alg", default_value = "ES256")]
        algorithm: String,
    },
    /// Create a document-signer key and its certificate signed by the IACA.
    IssueDs {
        /// Label of the new document-signer key.
        #[arg(long)]
        label: String,
        /// Algorithm of the key, if it is generated.
        #[arg(long = "alg", default_value = "ES256")]
        algorithm: String,
    },
    /// Sign a fresh CRL with the IACA key.
    Crl,
    /// Propose that the running daemon generates the IACA (over --api): once
    /// another officer approves, the IACA key and root certificate are made
    /// in the token and a first DS key signs. Instead of `pki init`.
    ProposeIaca,
}

/// `pki …`: `propose-iaca` goes to the daemon; the ceremonies load the
/// configuration (only then).
pub(crate) fn run(
    command: PkiCommand,
    conn: &Connection,
    load: impl FnOnce() -> anyhow::Result<Config>,
    as_json: bool,
) -> anyhow::Result<()> {
    match command {
        PkiCommand::ProposeIaca => officer::propose_iaca(conn, as_json),
        command => pki(&load()?, command),
    }
}

/// Signs the CRL that follows the registry's (listing every key revoked
/// through the daemon) and stores it there, then writes the file copy.
fn crl_into_registry(
    backend: &dyn pkcs11_shim::KeyBackend,
    pki_config: &dojang::pki::PkiConfig,
    registry: &dyn dojang::store::Registry,
    anchor: &str,
    now: OffsetDateTime,
) -> anyhow::Result<std::path::PathBuf> {
    let previous = registry.crl()?;
    let revoked = dojang::store::revoked_serials(&ordered_revocations(registry, anchor)?)?;
    let this_update = ceremony::next_crl_update(previous.as_deref(), now)?;
    let store = dojang::pki::PkiStore::new(&pki_config.dir);
    let (iaca_der, _) = store.iaca()?;
    let pem = ceremony::crl_now(backend, pki_config, &iaca_der, &revoked, this_update)?;
    let decision = dojang::store::DecisionRecord {
        node: "dojangctl".into(),
        at: now.unix_timestamp(),
        actor: "dojangctl pki crl".into(),
        action: "pki.crl".into(),
        outcome: "ok".into(),
        rule: Some(format!(
            "CRL listing {} revoked DS certificate(s), signed offline",
            revoked.len()
        )),
        policy_hash: registry
            .document(dojang::store::POLICY_DOCUMENT)?
            .unwrap_or_default(),
        ..Default::default()
    };
    match registry.set_crl(&pem, previous.as_deref(), decision) {
        Err(dojang::store::StoreError::Conflict { .. }) => {
            anyhow::bail!("another CRL was published while this one was signed; run again")
        }
        other => other?,
    }
    Ok(store.write_crl(&pem)?)
}

/// The revoked keys officers ordered revoked, under the adopted policy's
/// lineage (checked from the registry down to `anchor`); a row without an
/// order is named and left off.
fn ordered_revocations(
    registry: &dyn dojang::store::Registry,
    anchor: &str,
) -> anyhow::Result<Vec<dojang::store::StoredKey>> {
    let (_, _, lineage) =
        dojang::policy::adopted_policy(registry, anchor).map_err(anyhow::Error::msg)?;
    let (ordered, unordered) =
        dojang::keys::manager::ordered_revocations(registry, &lineage, &registry.keys()?);
    for (label, why) in unordered {
        eprintln!(
            "key {label}: revoked in the registry without the officers' order ({why}): left off the CRL"
        );
    }
    Ok(ordered)
}

/// `pki init|issue-ds|crl` with the loaded configuration.
fn pki(config: &Config, command: PkiCommand) -> anyhow::Result<()> {
    let pki_config = config.pki().map_err(anyhow::Error::msg)?;
    anyhow::ensure!(
        !pki_config.offline(),
        "the IACA is offline (pki.iaca_custody = \"offline\"): `pki init`, `pki issue-ds` and `pki crl` need its key in this token, \
         which holds none; the root, DS certificates and CRLs come from ceremonies on the offline token (dojangctl ceremony --help)"
    );
    let now = OffsetDateTime::now_utc();
    let report = match command {
        PkiCommand::Init {
            ds_label,
            algorithm,
        } => {
            let algorithm = Algorithm::from_jose_name(&algorithm)?;
            let backend = cli::open_backend(config)?;
            ceremony::init(backend.as_ref(), pki_config, &ds_label, algorithm, now)?
        }
        PkiCommand::IssueDs { label, algorithm } => {
            let algorithm = Algorithm::from_jose_name(&algorithm)?;
            let backend = cli::open_backend(config)?;
            ceremony::issue_document_signer(backend.as_ref(), pki_config, &label, algorithm, now)?
        }
        PkiCommand::ProposeIaca => {
            anyhow::bail!("officer commands go to the daemon (handled above)")
        }
        PkiCommand::Crl => crl(config, pki_config, now)?,
    };
    for label in &report.generated {
        println!("generated key {label:?} in the token");
    }
    for path in &report.written {
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// `pki crl`: into the registry when the configuration has one.
fn crl(
    config: &Config,
    pki_config: &dojang::pki::PkiConfig,
    now: OffsetDateTime,
) -> anyhow::Result<ceremony::CeremonyReport> {
    let backend = cli::open_backend(config)?;
    // Keys revoked through the daemon stay on every later CRL.
    let registry = match &config.store {
        Some(_) => Some(dojang::cli::open_sealed_registry(
            config,
            std::sync::Arc::clone(&backend),
        )?),
        None => None,
    };
    let path = match &registry {
        None => ceremony::refresh_crl(backend.as_ref(), pki_config, &[], now)?,
        Some(r) => {
            let anchor = config
                .server
                .as_ref()
                .map(|s| s.policy_anchor.as_str())
                .context("a CRL from the registry needs [server] policy_anchor: revocations are checked against the officers' policies")?;
            crl_into_registry(backend.as_ref(), pki_config, r.as_ref(), anchor, now)?
        }
    };
    Ok(ceremony::CeremonyReport {
        written: vec![path],
        generated: Vec::new(),
    })
}
