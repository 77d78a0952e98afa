//! `dev-tls`: writes a development TLS PKI (CA, localhost server, clients,
//! CRL) for the demo and local testing. Owns its arguments, the NAME=IDENTITY
//! parsing and its one line of output.

use std::path::PathBuf;

use anyhow::Context;

// The subcommand's help text is its variant's doc comment in `Command`.
#[derive(clap::Args)]
pub(crate) struct DevTlsArgs {
    /// Directory to write into.
    #[arg(long)]
    dir: PathBuf,
    /// A client certificate: NAME=IDENTITY (URI SAN), repeatable.
    #[arg(long = "client", value_name = "NAME=IDENTITY")]
    clients: Vec<String>,
    /// Certify this `tls-server` key of the configured token as the server
    /// key (no server.key file is written): `server.api.private_key_label`.
    #[arg(long)]
    server_key_label: Option<String>,
}

/// `dev-tls --dir DIR [--client NAME=IDENTITY]… [--server-key-label L]`;
/// `load` is called only for a server key in the token.
pub(crate) fn run(
    args: DevTlsArgs,
    load: impl FnOnce() -> anyhow::Result<dojang::config::Config>,
) -> anyhow::Result<()> {
    let DevTlsArgs {
        dir,
        clients,
        server_key_label,
    } = args;
    let server_point = match &server_key_label {
        Some(label) => {
            let backend = dojang::cli::open_backend(&load()?)?;
            let key = backend.find(label)?;
            anyhow::ensure!(
                key.purpose == pkcs11_shim::KeyPurpose::TlsServer
                    && key.algorithm == pkcs11_shim::Algorithm::Es256,
                "token key {label:?} is a {} {} key: generate one with --purpose tls-server",
                key.purpose,
                key.algorithm
            );
            Some(key.public_key.context("no public key")?.raw().to_vec())
        }
        None => None,
    };
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
    dojang::devtls::write_dev_pki(&dir, &pairs, server_point.as_deref())?;
    println!("dev TLS PKI written to {}", dir.display());
    Ok(())
}
