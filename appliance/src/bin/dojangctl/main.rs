//! `dojangctl`: the officer and operator command line.
//!
//! This file holds only the top-level parser, the dispatch to one module
//! per command group (under `dojangctl/`) and the exit-code handling.

#![forbid(unsafe_code)]

mod approvals;
mod audit;
mod audit_proof;
mod backup;
mod ceremony;
mod credential;
mod dev_tls;
mod keys;
mod offer;
mod officer;
mod officer_token;
mod offline_roots;
mod pg_backup;
mod pki;
mod policy;
mod policy_ceremony;
mod shared;
mod verify;
mod witness;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use dojang::cli;

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
    /// (`--client-cert` for a counter's certificate.)
    #[arg(long = "officer-cert", alias = "client-cert", global = true)]
    officer_cert: Option<PathBuf>,
    /// The officer's private key (PEM) [default: $DOJANG_OFFICER_KEY].
    #[arg(long = "officer-key", alias = "client-key", global = true)]
    officer_key: Option<PathBuf>,
    /// The CA of the daemon's certificate (PEM) [default: $DOJANG_CA].
    #[arg(long, global = true)]
    ca: Option<PathBuf>,
    /// Label of the officer's own token, whose approval key signs
    /// proposals [default: $DOJANG_OFFICER_TOKEN].
    #[arg(long = "officer-token", global = true)]
    officer_token: Option<String>,
    /// PKCS#11 module of the officer's token [default:
    /// $DOJANG_OFFICER_MODULE, else OpenSC's].
    #[arg(long = "officer-module", global = true)]
    officer_module: Option<PathBuf>,
    /// File holding the officer token's PIN [default:
    /// $DOJANG_OFFICER_PIN_FILE, else the systemd credential officer-pin].
    #[arg(long = "officer-pin-file", global = true)]
    officer_pin_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Keys: ceremonies against the configured token, or (with --api) the
    /// daemon's key chain and officer proposals to rotate or revoke.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Officer proposals waiting for approval (over --api).
    #[command(subcommand)]
    Approvals(approvals::ApprovalsCommand),
    /// Approve a proposal as a second (third…) officer (over --api).
    Approve(approvals::ProposalArgs),
    /// Reject a proposal: it is closed (over --api).
    Reject(approvals::ProposalArgs),
    /// The officer's own token: enroll its approval key.
    #[command(subcommand)]
    Officer(officer_token::OfficerCommand),
    /// Certificate ceremonies with the IACA key online (pki.iaca_custody =
    /// "online"): IACA root, document signers, CRL.
    #[command(subcommand)]
    Pki(pki::PkiCommand),
    /// The offline IACA's ceremonies: the root, DS certificates for the
    /// daemon's spare pool, CRLs (officers present, their tokens sign).
    #[command(subcommand)]
    Ceremony(ceremony::CeremonyCommand),
    /// Make an OpenID4VCI offer for a holder's wallet (over --api with the
    /// counter's --client-cert): shows its QR code and transaction code.
    Offer(offer::OfferArgs),
    /// Issue credentials by hand (samples for demos and checks).
    #[command(subcommand)]
    Credential(credential::CredentialCommand),
    /// Audit log tools.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Copy the registry (SQLite's online backup, or pg_dump) into a new
    /// directory with a manifest, for `restore`.
    Backup(backup::BackupArgs),
    /// Restore a backup onto a fresh node whose token is a clone of the
    /// issuing one; refused unless its audit log verifies and contains
    /// every checkpoint published before the loss.
    Restore(backup::RestoreArgs),
    /// Check and try out issuance policy files.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// Verify a credential (mdoc base64url or SD-JWT VC) offline.
    Verify(verify::VerifyArgs),
    /// Write a development TLS PKI (CA, localhost server, clients, CRL) for
    /// the demo and local testing. Software keys on disk: not for production.
    DevTls(dev_tls::DevTlsArgs),
    /// A witness of the audit log (c2sp.org/tlog-witness) for an auditor
    /// to run: its key, and its server.
    #[command(subcommand)]
    Witness(witness::WitnessCommand),
}

fn run(args: Args) -> anyhow::Result<()> {
    let config_path = cli::config_path(args.config.clone());
    let load = || cli::load_config(&config_path);
    let conn = officer::Connection {
        api: args.api.clone(),
        cert: args.officer_cert.clone(),
        key: args.officer_key.clone(),
        ca: args.ca.clone(),
        token: officer_token::OfficerToken {
            label: args.officer_token.clone(),
            module: args.officer_module.clone(),
            pin_file: args.officer_pin_file.clone(),
        },
    };
    match args.command {
        Command::Keys(command) => keys::run(command, &conn, load, args.json),
        Command::Approvals(command) => approvals::run(command, &conn, args.json),
        Command::Approve(proposal) => approvals::approve(&conn, &proposal, args.json),
        Command::Reject(proposal) => approvals::reject(&conn, &proposal, args.json),
        Command::Officer(command) => officer_token::run(command, &conn.token, args.json),
        Command::Pki(command) => pki::run(command, &conn, load, args.json),
        Command::Ceremony(command) => ceremony::run(command, &conn, load),
        Command::Credential(command) => credential::run(command, &load()?),
        Command::Offer(offer) => offer::run(&offer, &conn, args.json),
        Command::Audit(command) => audit::run(command, load, args.json),
        Command::Backup(b) => backup::backup(&load()?, &b),
        Command::Restore(r) => backup::restore(&load()?, &r),
        Command::Policy(command) => policy::run(command, &conn, load, args.json),
        Command::Verify(v) => verify::run(v),
        Command::DevTls(dev_tls) => dev_tls::run(dev_tls, load),
        Command::Witness(command) => witness::run(command),
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
