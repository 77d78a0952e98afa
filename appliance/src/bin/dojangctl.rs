//! `dojangctl`: the officer and operator command line.

#![forbid(unsafe_code)]

#[path = "dojangctl/officer.rs"]
mod officer;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use base64::Engine;
use clap::{Parser, Subcommand};
use dojang::cli;
use dojang::config::Config;
use dojang::credential::claims::ResidentCardClaims;
use dojang::credential::verify::Trust;
use dojang::credential::{DocumentSigner, SignatureValidity, mdoc, sample, sdjwt};
use dojang::pki::{PkiStore, ceremony, cert_der_from_pem};
use dojang_policies::calendar::seoul_date;
use dojang_policies::{IssuanceRequest, Outcome, Policy, RegistryFacts, Role};
use openssl::bn::BigNumContext;
use openssl::ec::{EcGroup, EcKey, PointConversionForm};
use openssl::nid::Nid;
use pkcs11_shim::{Algorithm, Jwk, KeyInfo, KeyPurpose, PublicKey, public_key_from_jwk};
use serde_json::json;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Dojang's officer and operator tool.
#[derive(Parser)]
#[command(name = "dojangctl", version, about)]
struct Args {
    /// Configuration file [default: $DOJANG_CONFIG or /etc/dojang/dojang.toml]
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Print JSON instead of text (for scripts).
    #[arg(long, global = true)]
    json: bool,
    /// More log output on stderr (-v info, -vv debug).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// The daemon's mTLS API for officer commands, https://HOST:PORT
    /// [default: $DOJANG_API].
    #[arg(long, global = true)]
    api: Option<String>,
    /// The officer's client certificate (PEM) [default: $DOJANG_OFFICER_CERT].
    #[arg(long = "officer-cert", global = true)]
    officer_cert: Option<PathBuf>,
    /// The officer's private key (PEM) [default: $DOJANG_OFFICER_KEY].
    #[arg(long = "officer-key", global = true)]
    officer_key: Option<PathBuf>,
    /// The CA of the daemon's certificate (PEM) [default: $DOJANG_CA].
    #[arg(long, global = true)]
    ca: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Keys: ceremonies against the configured token, or (with --api) the
    /// daemon's key chain and officer proposals to rotate or revoke.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Officer proposals waiting for approval (over --api).
    #[command(subcommand)]
    Approvals(ApprovalsCommand),
    /// Approve a proposal as a second (third…) officer (over --api).
    Approve {
        /// The proposal's id.
        id: String,
    },
    /// Reject a proposal: it is closed (over --api).
    Reject {
        /// The proposal's id.
        id: String,
    },
    /// Certificate ceremonies: IACA root, document signers, CRL.
    #[command(subcommand)]
    Pki(PkiCommand),
    /// Issue credentials by hand (samples for demos and checks).
    #[command(subcommand)]
    Credential(CredentialCommand),
    /// Audit log tools.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Check and try out issuance policy files.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Verify a credential (mdoc base64url or SD-JWT VC) offline.
    Verify(VerifyArgs),
    /// Write a development TLS PKI (CA, localhost server, clients, CRL) for
    /// the demo and local testing. Software keys on disk: not for production.
    DevTls {
        /// Directory to write into.
        #[arg(long)]
        dir: PathBuf,
        /// A client certificate: NAME=IDENTITY (URI SAN), repeatable.
        #[arg(long = "client", value_name = "NAME=IDENTITY")]
        clients: Vec<String>,
    },
}

#[derive(Subcommand)]
enum ApprovalsCommand {
    /// Proposals, newest first.
    List,
}

#[derive(Subcommand)]
enum AuditCommand {
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
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Validate a policy file (strict: unknown keys are refused with their line).
    Check {
        /// The policy file.
        file: PathBuf,
    },
    /// Propose adopting a policy file (over --api): once another officer
    /// approves, every node loads it when its file has this SHA-256.
    Propose {
        /// The policy file (checked first; its SHA-256 is what is proposed).
        file: PathBuf,
    },
    /// Print (or write with --out) the adopted policy's text, from the
    /// registry in the configuration: to restore a node's policy file.
    Adopted {
        /// Write it to this file instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Evaluate one issuance request against a policy and print the rule trace.
    Explain {
        /// The policy file.
        file: PathBuf,
        /// Client identity [default: the policy's first issuer].
        #[arg(long)]
        client: Option<String>,
        /// Profile [default: the client's first].
        #[arg(long)]
        profile: Option<String>,
        /// Holder's birth date (YYYY-MM-DD).
        #[arg(long, default_value = "2000-05-15")]
        birth_date: String,
        /// Channel [default: the policy's first].
        #[arg(long)]
        channel: Option<String>,
        /// Administrative district code of the office.
        #[arg(long, default_value = "1111000000")]
        municipality: String,
        /// The holder's first ID application.
        #[arg(long)]
        first_time: bool,
        /// The number is a foreign registration number.
        #[arg(long)]
        foreigner: bool,
        /// The holder presents no physical card.
        #[arg(long)]
        no_card: bool,
        /// The holder already has an ID: active on this "same" phone or an
        /// "other" one, or "suspended".
        #[arg(long, value_parser = ["same", "other", "suspended"])]
        active: Option<String>,
        /// The phone already holds another person's ID.
        #[arg(long)]
        device_taken: bool,
        /// Free copies already issued.
        #[arg(long, default_value_t = 0)]
        free_issued: u64,
        /// Evaluate as of this instant (RFC 3339) [default: now].
        #[arg(long)]
        at: Option<String>,
    },
}

#[derive(Subcommand)]
enum PkiCommand {
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

#[derive(Subcommand)]
enum CredentialCommand {
    /// Issue a credential for the built-in sample holder (fictional).
    Sample {
        /// mdoc or sd-jwt.
        #[arg(long, value_parser = ["mdoc", "sd-jwt"])]
        format: String,
        /// Document-signer key label [default: the newest valid DS certificate].
        #[arg(long)]
        ds: Option<String>,
        /// The holder's device key as a JWK file [default: a fresh P-256 key].
        #[arg(long)]
        device_jwk: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Generate a key inside the token (it never leaves it).
    Generate {
        /// Unique label, e.g. ds-2026-01.
        #[arg(long)]
        label: String,
        /// iaca, document-signer, status-list, audit or pseudonym.
        #[arg(long)]
        purpose: String,
        /// ES256, ES384, EdDSA (signing) or HS256 (pseudonym).
        #[arg(long = "alg", default_value = "ES256")]
        algorithm: String,
    },
    /// List Dojang's keys in the token, or with --api the daemon's key
    /// records (state, activation, signatures).
    List,
    /// Propose a new key for a chain (over --api): once approved it is
    /// published at once and signs after the policy's prepublication.
    Rotate {
        /// The key chain.
        #[arg(default_value = "ds")]
        chain: String,
    },
    /// Propose an emergency revocation (over --api): once approved the key
    /// stops signing, goes on the CRL, and its credentials change status.
    Revoke {
        /// The key's label or kid (a kid may start with '-').
        #[arg(allow_hyphen_values = true)]
        key: String,
        /// Why (recorded in the audit log; no personal data).
        #[arg(long)]
        reason: String,
    },
    /// Propose that a pending key signs now (over --api).
    Activate {
        /// The key's label or kid (a kid may start with '-').
        #[arg(allow_hyphen_values = true)]
        key: String,
    },
    /// Propose retiring the active key (over --api).
    Retire {
        /// The key's label or kid (a kid may start with '-').
        #[arg(allow_hyphen_values = true)]
        key: String,
    },
    /// Propose destroying a retired key (over --api).
    Destroy {
        /// The key's label or kid (a kid may start with '-').
        #[arg(allow_hyphen_values = true)]
        key: String,
    },
    /// Show a key's public half as PEM and JWK.
    Show {
        /// The key's label.
        label: String,
    },
}

fn key_json(key: &KeyInfo) -> anyhow::Result<serde_json::Value> {
    let mut value = json!({
        "label": key.label,
        "purpose": key.purpose.name(),
        "alg": key.algorithm.jose_name(),
    });
    if let Some(public) = &key.public_key {
        let mut jwk = serde_json::to_value(public.jwk())?;
        jwk["kid"] = json!(public.kid());
        jwk["alg"] = json!(key.algorithm.jose_name());
        jwk["use"] = json!("sig");
        value["kid"] = json!(public.kid());
        value["jwk"] = jwk;
        value["pem"] = json!(public.to_pem()?);
    }
    Ok(value)
}

fn print_key_line(key: &KeyInfo) {
    println!(
        "{:<24} {:<16} {:<6} {}",
        key.label,
        key.purpose.name(),
        key.algorithm.jose_name(),
        key.kid().unwrap_or_else(|| "-".into())
    );
}

fn run(args: Args) -> anyhow::Result<()> {
    let config_path = cli::config_path(args.config.clone());
    let load = || cli::load_config(&config_path);
    let conn = officer::Connection {
        api: args.api.clone(),
        cert: args.officer_cert.clone(),
        key: args.officer_key.clone(),
        ca: args.ca.clone(),
    };
    match args.command {
        Command::Approvals(ApprovalsCommand::List) => officer::list_proposals(&conn, args.json),
        Command::Pki(PkiCommand::ProposeIaca) => officer::propose_iaca(&conn, args.json),
        Command::Policy(PolicyCommand::Propose { file }) => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let policy = Policy::parse(&file.display().to_string(), &text)?;
            officer::propose_policy(&conn, &policy.hash, args.json)
        }
        Command::Approve { id } => officer::decide(&conn, &id, true, args.json),
        Command::Reject { id } => officer::decide(&conn, &id, false, args.json),
        Command::Keys(KeysCommand::List) if conn.remote() => officer::list_keys(&conn, args.json),
        Command::Keys(KeysCommand::Rotate { chain }) => officer::propose(
            &conn,
            "rotate",
            None,
            Some(json!({ "chain": chain })),
            args.json,
        ),
        Command::Keys(KeysCommand::Revoke { key, reason }) => officer::propose(
            &conn,
            "revoke",
            Some(&key),
            Some(officer::revoke_body(&reason)),
            args.json,
        ),
        Command::Keys(KeysCommand::Activate { key }) => {
            officer::propose(&conn, "activate", Some(&key), None, args.json)
        }
        Command::Keys(KeysCommand::Retire { key }) => {
            officer::propose(&conn, "retire", Some(&key), None, args.json)
        }
        Command::Keys(KeysCommand::Destroy { key }) => {
            officer::propose(&conn, "destroy", Some(&key), None, args.json)
        }
        Command::Pki(command) => pki(&load()?, command),
        Command::Policy(PolicyCommand::Adopted { out }) => policy_adopted(&load()?, out, args.json),
        Command::Policy(command) => policy(command, args.json),
        Command::Audit(AuditCommand::Verify(a)) => audit_verify(a, args.json),
        Command::Audit(AuditCommand::Export { out, key_out }) => {
            audit_export(&load()?, &out, key_out.as_deref())
        }
        Command::Credential(CredentialCommand::Sample {
            format,
            ds,
            device_jwk,
        }) => sample(&load()?, &format, ds.as_deref(), device_jwk.as_deref()),
        Command::Verify(v) => verify(v),
        Command::DevTls { dir, clients } => {
            let pairs = clients
                .iter()
                .map(|c| {
                    c.split_once('=')
                        .filter(|(n, i)| {
                            !n.is_empty()
                                && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                                && !i.is_empty()
                        })
                        .with_context(|| format!("--client {c:?}: expected NAME=IDENTITY"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            dojang::devtls::write_dev_pki(&dir, &pairs)?;
            println!("dev TLS PKI written to {}", dir.display());
            Ok(())
        }
        Command::Keys(command) => {
            let config = load()?;
            // Parse the operator's words before touching the token.
            let parsed = match &command {
                KeysCommand::Generate {
                    purpose, algorithm, ..
                } => Some((
                    KeyPurpose::from_name(purpose)?,
                    Algorithm::from_jose_name(algorithm)?,
                )),
                _ => None,
            };
            let backend = cli::open_backend(&config)?;
            match command {
                KeysCommand::Generate { label, .. } => {
                    let (purpose, algorithm) = parsed.context("parsed above")?;
                    let key = backend.generate(&label, purpose, algorithm)?;
                    if args.json {
                        println!("{}", serde_json::to_string_pretty(&key_json(&key)?)?);
                    } else {
                        println!(
                            "generated {} key {:?} ({}) in the {} backend",
                            purpose,
                            key.label,
                            algorithm,
                            backend.kind()
                        );
                        if let Some(kid) = key.kid() {
                            println!("kid {kid}");
                        }
                    }
                }
                KeysCommand::List => {
                    let keys = backend.list()?;
                    if args.json {
                        let list = keys
                            .iter()
                            .map(key_json)
                            .collect::<anyhow::Result<Vec<_>>>()?;
                        println!("{}", serde_json::to_string_pretty(&list)?);
                    } else if keys.is_empty() {
                        println!("no Dojang keys in the {} backend", backend.kind());
                    } else {
                        println!("{:<24} {:<16} {:<6} KID", "LABEL", "PURPOSE", "ALG");
                        keys.iter().for_each(print_key_line);
                    }
                }
                KeysCommand::Show { label } => {
                    let key = backend.find(&label)?;
                    let value = key_json(&key)?;
                    if args.json {
                        println!("{}", serde_json::to_string_pretty(&value)?);
                    } else {
                        print_key_line(&key);
                        match key.public_key {
                            Some(public) => {
                                print!("{}", public.to_pem()?);
                                println!("{}", serde_json::to_string(&value["jwk"])?);
                            }
                            None => println!("(secret key: no public half)"),
                        }
                    }
                }
                KeysCommand::Rotate { .. }
                | KeysCommand::Revoke { .. }
                | KeysCommand::Activate { .. }
                | KeysCommand::Retire { .. }
                | KeysCommand::Destroy { .. } => {
                    anyhow::bail!("officer commands go to the daemon (handled above)")
                }
            }
            Ok(())
        }
    }
}

/// Signs the CRL that follows the registry's (listing every key revoked
/// through the daemon) and stores it there, then writes the file copy.
fn crl_into_registry(
    backend: &dyn pkcs11_shim::KeyBackend,
    pki_config: &dojang::pki::PkiConfig,
    registry: &dyn dojang::store::Registry,
    now: OffsetDateTime,
) -> anyhow::Result<std::path::PathBuf> {
    let previous = registry.crl()?;
    let revoked = dojang::store::revoked_serials(&registry.keys()?)?;
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

fn pki(config: &Config, command: PkiCommand) -> anyhow::Result<()> {
    let pki_config = config.pki().map_err(anyhow::Error::msg)?;
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
        PkiCommand::Crl => {
            let backend = cli::open_backend(config)?;
            // Keys revoked through the daemon stay on every later CRL.
            let registry = match &config.store {
                Some(_) => Some(dojang::server::open_registry(config)?),
                None => None,
            };
            let path = match &registry {
                None => ceremony::refresh_crl(backend.as_ref(), pki_config, &[], now)?,
                Some(r) => crl_into_registry(backend.as_ref(), pki_config, r.as_ref(), now)?,
            };
            ceremony::CeremonyReport {
                written: vec![path],
                generated: Vec::new(),
            }
        }
    };
    for label in &report.generated {
        println!("generated key {label:?} in the token");
    }
    for path in &report.written {
        println!("wrote {}", path.display());
    }
    Ok(())
}

#[derive(clap::Args)]
struct AuditVerifyArgs {
    /// The bundle (JSON).
    bundle: PathBuf,
    /// The audit public key you trust (PEM), from outside the bundle.
    #[arg(long)]
    key: PathBuf,
    /// The log's origin you trust.
    #[arg(long)]
    origin: String,
    /// The key's name in signed notes [default: the bundle's; the key
    /// itself is pinned by --key].
    #[arg(long)]
    key_name: Option<String>,
    /// Fail unless the log is signed through at least this many entries
    /// (e.g. the size of a checkpoint you saw before).
    #[arg(long, default_value_t = 0)]
    min_size: u64,
    /// Accept entries newer than the latest checkpoint (not covered by any signature).
    #[arg(long)]
    allow_unsigned_tail: bool,
}

fn audit_export(
    config: &Config,
    out: &std::path::Path,
    key_out: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    use base64::Engine;
    let server = config
        .server
        .as_ref()
        .context("this needs the [server] table (audit origin and key)")?;
    let registry = dojang::server::open_registry(config)?;
    // The audit keys in the order they signed: the first is the anchor
    // auditors pin, the others are trusted through hand-over checkpoints.
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
        let key = backend.find(&server.keys.audit)?;
        let public = key.public_key.context("the audit key has no public key")?;
        keys.push(public.to_pem()?);
    }
    let anchor = keys.remove(0);
    let origin = server.audit.origin.clone();
    while registry.sequence_audit()? > 0 {}
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
    let bundle = dojang::audit::bundle::Bundle {
        format: dojang::audit::bundle::FORMAT.into(),
        origin: origin.clone(),
        key_name: origin,
        public_key_pem: anchor.clone(),
        handover_keys_pem: keys,
        entries,
        checkpoints: registry
            .checkpoints()?
            .into_iter()
            .map(|(_, n)| n)
            .collect(),
    };
    std::fs::write(out, serde_json::to_vec_pretty(&bundle)?)
        .with_context(|| format!("writing {}", out.display()))?;
    if let Some(path) = key_out {
        std::fs::write(path, &anchor).with_context(|| format!("writing {}", path.display()))?;
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

fn audit_verify(a: AuditVerifyArgs, as_json: bool) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&a.bundle)
        .with_context(|| format!("reading {}", a.bundle.display()))?;
    let bundle: dojang::audit::bundle::Bundle = serde_json::from_str(&text)
        .with_context(|| format!("{} is not an audit bundle", a.bundle.display()))?;
    let pem = std::fs::read(&a.key).with_context(|| format!("reading {}", a.key.display()))?;
    let der = openssl::pkey::PKey::public_key_from_pem(&pem)
        .and_then(|k| k.public_key_to_der())
        .with_context(|| format!("{} is not a public key", a.key.display()))?;
    let trusted = dojang::audit::bundle::TrustedLog {
        key: PublicKey::from_spki_der(&der)?,
        key_name: a.key_name.unwrap_or_else(|| bundle.key_name.clone()),
        origin: a.origin,
    };
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
    if as_json {
        println!(
            "{}",
            json!({"valid": true, "origin": trusted.origin, "key_name": trusted.key_name,
                   "entries": report.entries, "checkpoints": report.checkpoints,
                   "signed_size": report.signed_size, "unsigned_tail": report.unsigned_tail})
        );
    } else {
        println!(
            "{}: valid — log {:?}, {} entries, {} checkpoints by {:?}, signed through {}{}",
            a.bundle.display(),
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
    }
    Ok(())
}

fn load_policy(file: &std::path::Path) -> anyhow::Result<Policy> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    Ok(Policy::parse(&file.display().to_string(), &text)?)
}

/// The adopted policy's text, checked against the adopted hash.
fn policy_adopted(config: &Config, out: Option<PathBuf>, as_json: bool) -> anyhow::Result<()> {
    if config.store.is_none() {
        anyhow::bail!(
            "no [store] in the configuration: the adopted policy is kept in the registry"
        );
    }
    let registry = dojang::server::open_registry(config)?;
    let hash = registry.document(dojang::store::POLICY_DOCUMENT)?.context(
        "the registry has no adopted policy yet (a first start adopts the file it finds)",
    )?;
    let text = registry
        .document(&dojang::store::policy_text_document(&hash))?
        .with_context(|| {
            format!(
                "the registry does not hold the text of adopted policy {hash}: no node has loaded it yet; \
                 the officers who proposed it have the file"
            )
        })?;
    let policy = Policy::parse("the registry's copy", &text)?;
    anyhow::ensure!(
        policy.hash == hash,
        "the registry's text of policy {hash} hashes to {}: not restored",
        policy.hash
    );
    match &out {
        Some(path) => {
            std::fs::write(path, &text).with_context(|| format!("writing {}", path.display()))?
        }
        None if !as_json => print!("{text}"),
        None => {}
    }
    if as_json {
        println!(
            "{}",
            json!({"sha256": hash, "name": policy.name, "version": policy.version,
                   "written": out.as_ref().map(|p| p.display().to_string()),
                   "text": out.is_none().then_some(&text)})
        );
    } else if let Some(path) = &out {
        println!(
            "wrote {}: {} version {}, sha256 {hash}",
            path.display(),
            policy.name,
            policy.version
        );
    }
    Ok(())
}

fn policy(command: PolicyCommand, as_json: bool) -> anyhow::Result<()> {
    match command {
        PolicyCommand::Check { file } => {
            let p = load_policy(&file)?;
            let pilot = if p.pilot.enabled {
                format!(
                    "on, {} to {}, {} municipalities",
                    p.pilot.first_day,
                    p.pilot.last_day,
                    p.pilot.municipalities.len()
                )
            } else {
                "off".into()
            };
            if as_json {
                println!(
                    "{}",
                    json!({"valid": true, "name": p.name, "version": p.version, "sha256": p.hash,
                           "pilot_enabled": p.pilot.enabled, "clients": p.clients.len()})
                );
            } else {
                println!("{}: valid", file.display());
                println!("  {} version {}  sha256 {}", p.name, p.version, p.hash);
                println!(
                    "  minimum age {}, document {} years, free copies {}, pilot {pilot}, {} clients",
                    p.minimum_age,
                    p.validity_years,
                    p.free_quota,
                    p.clients.len()
                );
                if p.pilot.enabled && p.pilot.municipalities.len() != 9 {
                    println!(
                        "  note: the programme names nine pilot municipalities; this file lists {}",
                        p.pilot.municipalities.len()
                    );
                }
            }
            Ok(())
        }
        PolicyCommand::Propose { .. } | PolicyCommand::Adopted { .. } => {
            anyhow::bail!("handled in run: they need the daemon or the configuration")
        }
        PolicyCommand::Explain {
            file,
            client,
            profile,
            birth_date,
            channel,
            municipality,
            first_time,
            foreigner,
            no_card,
            active,
            device_taken,
            free_issued,
            at,
        } => {
            let p = load_policy(&file)?;
            let client = client
                .or_else(|| {
                    p.clients
                        .iter()
                        .find(|c| c.roles.contains(&Role::Issuer))
                        .map(|c| c.identity.clone())
                })
                .context("the policy has no issuer client; pass --client")?;
            let profile = profile
                .or_else(|| p.client(&client).and_then(|c| c.profiles.first().cloned()))
                .or_else(|| p.profiles.keys().next().cloned())
                .context("no profile; pass --profile")?;
            let channel = channel
                .or_else(|| p.channels.keys().next().cloned())
                .context("no channel; pass --channel")?;
            let birth = time::Date::parse(
                &birth_date,
                time::macros::format_description!("[year]-[month]-[day]"),
            )
            .with_context(|| format!("--birth-date {birth_date:?} is not YYYY-MM-DD"))?;
            let now = match &at {
                Some(at) => OffsetDateTime::parse(at, &Rfc3339)
                    .with_context(|| format!("--at {at:?} is not RFC 3339"))?,
                None => OffsetDateTime::now_utc(),
            };
            let request = IssuanceRequest {
                profile,
                channel,
                municipality,
                first_time,
                birth_date: birth,
                citizen: !foreigner,
                card_issue_date: (!no_card)
                    .then(|| seoul_date(now).min(birth.max(time::macros::date!(2020 - 01 - 01)))),
                card_serial: (!no_card).then(|| "SAMPLE-0001".to_owned()),
            };
            let facts = RegistryFacts {
                holder_active_on_same_device: match active.as_deref() {
                    Some("same") => Some(true),
                    Some("other") => Some(false),
                    _ => None,
                },
                holder_suspended: active.as_deref() == Some("suspended"),
                device_bound_to_other_holder: device_taken,
                free_copies_issued: free_issued,
                client_requests_this_minute: 0,
            };
            let decision = p.evaluate_issuance(&client, &request, &facts, now);
            print_decision(&decision, as_json);
            if matches!(decision.outcome, Outcome::Deny(_)) {
                std::process::exit(3);
            }
            Ok(())
        }
    }
}

fn print_decision(decision: &dojang_policies::Decision, as_json: bool) {
    let trace: Vec<_> = decision
        .trace
        .iter()
        .map(|r| json!({"rule": r.rule, "passed": r.passed, "detail": r.detail}))
        .collect();
    let outcome = match &decision.outcome {
        Outcome::Allow(o) => {
            json!({"allow": true, "fee_krw": o.fee_krw, "use_free_copy": o.use_free_copy,
            "issue_date": o.issue_date.to_string(), "expiry_date": o.expiry_date.to_string(),
            "supersede_previous": o.supersede_previous})
        }
        Outcome::Deny(d) => {
            json!({"allow": false, "rule": d.rule, "reason": d.reason, "kind": format!("{:?}", d.kind)})
        }
    };
    if as_json {
        println!(
            "{}",
            json!({"outcome": outcome, "trace": trace, "policy_version": decision.policy_version,
                   "policy_sha256": decision.policy_hash})
        );
        return;
    }
    for r in &decision.trace {
        println!(
            "{} {:<22} {}",
            if r.passed { "pass" } else { "DENY" },
            r.rule,
            r.detail
        );
    }
    match &decision.outcome {
        Outcome::Allow(o) => println!(
            "=> allow: fee {} KRW{}, document {} to {}{}",
            o.fee_krw,
            if o.use_free_copy {
                " (free first-time copy)"
            } else {
                ""
            },
            o.issue_date,
            o.expiry_date,
            if o.supersede_previous {
                ", supersedes the ID on the previous phone"
            } else {
                ""
            }
        ),
        Outcome::Deny(d) => println!("=> deny by {}: {}", d.rule, d.reason),
    }
    println!(
        "   policy {} sha256 {}",
        decision.policy_version, decision.policy_hash
    );
}

fn device_key(path: Option<&std::path::Path>) -> anyhow::Result<PublicKey> {
    match path {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let jwk: Jwk = serde_json::from_str(&text)
                .with_context(|| format!("{} is not a JWK", path.display()))?;
            Ok(public_key_from_jwk(&jwk)?)
        }
        None => {
            // Stands in for the phone's key: only its public half is used.
            let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
            let key = EcKey::generate(&group)?;
            let mut ctx = BigNumContext::new()?;
            let point =
                key.public_key()
                    .to_bytes(&group, PointConversionForm::UNCOMPRESSED, &mut ctx)?;
            Ok(PublicKey::from_ec_point(Algorithm::Es256, &point)?)
        }
    }
}

fn sample(
    config: &Config,
    format: &str,
    ds: Option<&str>,
    device_jwk: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let pki_config = config.pki().map_err(anyhow::Error::msg)?;
    let credential = config.credential().map_err(anyhow::Error::msg)?;
    let device_key = device_key(device_jwk)?;
    let now = OffsetDateTime::now_utc();
    let backend = cli::open_backend(config)?;
    let certificate = PkiStore::new(&pki_config.dir).ds_for_signing(ds, now)?;
    let signer = DocumentSigner::new(backend.as_ref(), certificate)?;
    let claims = ResidentCardClaims::derive(
        &sample::holder(),
        seoul_date(now),
        credential.document_validity_years,
        &credential.issuing_authority,
    )?;
    let validity =
        SignatureValidity::starting(now, credential.signature_validity_days, signer.not_after())?;
    let out = match format {
        "mdoc" => mdoc::to_base64url(&mdoc::issue(
            &signer,
            &claims,
            &device_key,
            &validity,
            None,
        )?),
        _ => sdjwt::issue(
            &signer,
            &claims,
            &device_key,
            &validity,
            None,
            &credential.issuer,
        )?,
    };
    println!("{out}");
    Ok(())
}

#[derive(clap::Args)]
struct VerifyArgs {
    /// File holding the credential ("-" for standard input).
    file: PathBuf,
    /// Trust this IACA root certificate (PEM).
    #[arg(long, group = "trust")]
    iaca: Option<PathBuf>,
    /// Trust exactly this document-signer certificate (PEM).
    #[arg(long, group = "trust")]
    ds_cert: Option<PathBuf>,
    /// Trust this issuer public key (JWK file; SD-JWT VC only).
    #[arg(long, group = "trust")]
    issuer_jwk: Option<PathBuf>,
    /// Verify as of this instant (RFC 3339) instead of now.
    #[arg(long)]
    at: Option<String>,
    /// Require this docType (mdoc) or vct (SD-JWT VC) instead of the card's.
    #[arg(long)]
    expect_type: Option<String>,
    /// Accept any docType / vct.
    #[arg(long, conflicts_with = "expect_type")]
    any_type: bool,
}

fn read_input(path: &std::path::Path) -> anyhow::Result<String> {
    if path.as_os_str() == "-" {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)?;
        Ok(text)
    } else {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
    }
}

fn verify(args: VerifyArgs) -> anyhow::Result<()> {
    let read_cert = |p: &PathBuf| -> anyhow::Result<Vec<u8>> {
        let pem = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
        Ok(cert_der_from_pem(&pem)?)
    };
    let trust = match (&args.iaca, &args.ds_cert, &args.issuer_jwk) {
        (Some(p), _, _) => Trust::Iaca(read_cert(p)?),
        (_, Some(p), _) => Trust::DocumentSigner(read_cert(p)?),
        (_, _, Some(p)) => Trust::IssuerKey(device_key(Some(p))?),
        _ => anyhow::bail!("say what to trust: --iaca, --ds-cert or --issuer-jwk"),
    };
    let now = match &args.at {
        Some(at) => OffsetDateTime::parse(at, &Rfc3339)
            .with_context(|| format!("--at {at:?} is not RFC 3339"))?,
        None => OffsetDateTime::now_utc(),
    };
    let text = read_input(&args.file)?;
    let text = text.trim();
    let report = if text.contains('~') {
        let expected = if args.any_type {
            None
        } else {
            Some(args.expect_type.as_deref().unwrap_or(sdjwt::VCT))
        };
        let verified = sdjwt::verify(text, &trust, now, expected)?;
        json!({
            "format": "dc+sd-jwt",
            "valid": true,
            "alg": verified.header.get("alg"),
            "disclosed": verified.disclosed,
            "claims": sdjwt::claim_map(&verified),
        })
    } else {
        // Hex first: every hex digit is also a base64url character.
        let bytes = hex_decode(text)
            .or_else(|| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(text.trim_end_matches('='))
                    .ok()
            })
            .context("an mdoc is base64url (or hex) CBOR")?;
        let expected = if args.any_type {
            None
        } else {
            Some(args.expect_type.as_deref().unwrap_or(mdoc::DOC_TYPE))
        };
        let verified = mdoc::verify(&bytes, &trust, now, expected)?;
        let elements: serde_json::Map<String, serde_json::Value> = verified
            .elements
            .iter()
            .map(|(ns, items)| {
                let items: serde_json::Map<String, serde_json::Value> = items
                    .iter()
                    .map(|(k, v)| (k.clone(), cbor_to_json(v)))
                    .collect();
                (ns.clone(), serde_json::Value::Object(items))
            })
            .collect();
        json!({
            "format": "mso_mdoc",
            "valid": true,
            "docType": verified.doc_type,
            "validFrom": verified.valid_from.format(&Rfc3339)?,
            "validUntil": verified.valid_until.format(&Rfc3339)?,
            "elements": elements,
        })
    };
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

fn hex_decode(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

/// A printable view of a CBOR element (byte strings as base64url).
fn cbor_to_json(value: &ciborium::Value) -> serde_json::Value {
    use ciborium::Value as C;
    match value {
        C::Text(t) => json!(t),
        C::Bool(b) => json!(b),
        C::Integer(i) => json!(i128::from(*i).to_string()),
        C::Bytes(b) => json!(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)),
        C::Tag(_, inner) => cbor_to_json(inner),
        C::Array(items) => serde_json::Value::Array(items.iter().map(cbor_to_json).collect()),
        C::Map(entries) => serde_json::Value::Object(
            entries
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_text()
                            .map(str::to_owned)
                            .unwrap_or_else(|| format!("{k:?}")),
                        cbor_to_json(v),
                    )
                })
                .collect(),
        ),
        other => json!(format!("{other:?}")),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    cli::init_logging(args.verbose);
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("dojangctl: {err:#}");
            ExitCode::FAILURE
        }
    }
}
