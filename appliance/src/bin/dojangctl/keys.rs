//! `keys …`: key ceremonies against the configured token (`generate`,
//! `list`, `show`), or with --api the daemon's key records (`list`) and the
//! officer proposals on a key chain (`rotate`, `revoke`, `activate`,
//! `retire`, `destroy`, sent through [`crate::officer`]). Owns the
//! subcommands' arguments and the output of the token commands.

use anyhow::Context;
use clap::Subcommand;
use dojang::cli;
use dojang::config::Config;
use pkcs11_shim::{Algorithm, KeyBackend, KeyInfo, KeyPurpose};
use serde_json::json;

use crate::officer::{self, Connection};

#[derive(Subcommand)]
pub(crate) enum KeysCommand {
    /// Generate a key inside the token (it never leaves it).
    Generate {
        /// Unique label, e.g. ds-2026-01.
        #[arg(long)]
        label: String,
        /// iaca, document-signer, status-list, audit or pseudonym.
        #[arg(long)]
        purpose: String,
        /// ES256, ES384, EdDSA (signing) or HS256 (pseudonym, response
        /// seal). Default: EdDSA for an audit key (c2sp.org/tlog-tiles
        /// clients and witnesses expect Ed25519 checkpoints; ES256 stays
        /// for tokens without it, such as TPMs), HS256 for the secret keys,
        /// ES256 otherwise.
        #[arg(long = "alg")]
        algorithm: Option<String>,
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
    /// The pseudonym key's check value: record it at the key's ceremony,
    /// compare it on every backup or clone (the same value: the same key).
    CheckValue {
        /// The pseudonym key's label [default: the configured one].
        #[arg(long)]
        label: Option<String>,
    },
}

/// `keys …`: proposals and `list --api` go to the daemon; the rest loads
/// the configuration (only then) and opens its token.
pub(crate) fn run(
    command: KeysCommand,
    conn: &Connection,
    load: impl FnOnce() -> anyhow::Result<Config>,
    as_json: bool,
) -> anyhow::Result<()> {
    match command {
        KeysCommand::List if conn.remote() => officer::list_keys(conn, as_json),
        KeysCommand::Rotate { chain } => officer::propose(
            conn,
            "rotate",
            None,
            Some(json!({ "chain": chain })),
            as_json,
        ),
        KeysCommand::Revoke { key, reason } => officer::propose(
            conn,
            "revoke",
            Some(&key),
            Some(officer::revoke_body(&reason)),
            as_json,
        ),
        KeysCommand::Activate { key } => {
            officer::propose(conn, "activate", Some(&key), None, as_json)
        }
        KeysCommand::Retire { key } => officer::propose(conn, "retire", Some(&key), None, as_json),
        KeysCommand::Destroy { key } => {
            officer::propose(conn, "destroy", Some(&key), None, as_json)
        }
        command => in_token(&load()?, command, as_json),
    }
}

/// `keys generate|list|show|check-value` against the configured token.
fn in_token(config: &Config, command: KeysCommand, as_json: bool) -> anyhow::Result<()> {
    // Parse the operator's words before touching the token.
    let parsed = match &command {
        KeysCommand::Generate {
            purpose, algorithm, ..
        } => {
            let purpose = KeyPurpose::from_name(purpose)?;
            let algorithm = match algorithm {
                Some(name) => Algorithm::from_jose_name(name)?,
                None => default_algorithm(purpose),
            };
            Some((purpose, algorithm))
        }
        _ => None,
    };
    let backend = cli::open_backend(config)?;
    match command {
        KeysCommand::Generate { label, .. } => {
            let (purpose, algorithm) = parsed.context("parsed above")?;
            generate(backend.as_ref(), &label, purpose, algorithm, as_json)
        }
        KeysCommand::List => list(backend.as_ref(), as_json),
        KeysCommand::Show { label } => show(backend.as_ref(), &label, as_json),
        KeysCommand::CheckValue { label } => {
            let label = match label {
                Some(label) => label,
                None => config
                    .server
                    .as_ref()
                    .map(|s| s.keys.pseudonym.clone())
                    .context("name the key (--label) or configure [server.keys]")?,
            };
            let value = dojang::issuance::pseudonym_key_check(backend.as_ref(), &label)?;
            if as_json {
                println!("{}", json!({ "label": label, "check_value": value }));
            } else {
                println!("{label}: check value {value}");
            }
            Ok(())
        }
        KeysCommand::Rotate { .. }
        | KeysCommand::Revoke { .. }
        | KeysCommand::Activate { .. }
        | KeysCommand::Retire { .. }
        | KeysCommand::Destroy { .. } => {
            anyhow::bail!("officer commands go to the daemon (handled above)")
        }
    }
}

/// The algorithm a key of `purpose` is made with when none is named.
fn default_algorithm(purpose: KeyPurpose) -> Algorithm {
    match purpose {
        KeyPurpose::Audit => Algorithm::EdDsa,
        KeyPurpose::Pseudonym | KeyPurpose::ResponseSeal => Algorithm::HmacSha256,
        _ => Algorithm::Es256,
    }
}

/// `keys generate`.
fn generate(
    backend: &dyn KeyBackend,
    label: &str,
    purpose: KeyPurpose,
    algorithm: Algorithm,
    as_json: bool,
) -> anyhow::Result<()> {
    let key = backend.generate(label, purpose, algorithm)?;
    if as_json {
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
    Ok(())
}

/// `keys list` (without --api).
fn list(backend: &dyn KeyBackend, as_json: bool) -> anyhow::Result<()> {
    let keys = backend.list()?;
    if as_json {
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
    Ok(())
}

/// `keys show LABEL`.
fn show(backend: &dyn KeyBackend, label: &str, as_json: bool) -> anyhow::Result<()> {
    let key = backend.find(label)?;
    let value = key_json(&key)?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        print_key_line(&key);
        match key.public_key {
            Some(public) => {
                print!("{}", public.to_pem()?);
                println!("{}", serde_json::to_string(&value.get("jwk"))?);
            }
            None => println!("(secret key: no public half)"),
        }
    }
    Ok(())
}

fn key_json(key: &KeyInfo) -> anyhow::Result<serde_json::Value> {
    let mut value = serde_json::Map::from_iter([
        ("label".to_owned(), json!(key.label)),
        ("purpose".to_owned(), json!(key.purpose.name())),
        ("alg".to_owned(), json!(key.algorithm.jose_name())),
    ]);
    if let Some(public) = &key.public_key {
        let serde_json::Value::Object(mut jwk) = serde_json::to_value(public.jwk())? else {
            anyhow::bail!("{}: the public key's JWK is not a JSON object", key.label);
        };
        jwk.extend([
            ("kid".to_owned(), json!(public.kid())),
            ("alg".to_owned(), json!(key.algorithm.jose_name())),
            ("use".to_owned(), json!("sig")),
        ]);
        value.extend([
            ("kid".to_owned(), json!(public.kid())),
            ("jwk".to_owned(), serde_json::Value::Object(jwk)),
            ("pem".to_owned(), json!(public.to_pem()?)),
        ]);
    }
    Ok(serde_json::Value::Object(value))
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
