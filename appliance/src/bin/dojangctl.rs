//! `dojangctl`: the officer and operator command line.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use dojang::cli;
use pkcs11_shim::{Algorithm, KeyInfo, KeyPurpose};
use serde_json::json;

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
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Key ceremony commands against the configured token.
    #[command(subcommand)]
    Keys(KeysCommand),
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
    /// List Dojang's keys in the token.
    List,
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
    let config_path = cli::config_path(args.config);
    let config = cli::load_config(&config_path)?;
    match args.command {
        Command::Keys(command) => {
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
            }
        }
    }
    Ok(())
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
