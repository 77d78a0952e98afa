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
}

/// `dev-tls --dir DIR [--client NAME=IDENTITY]…`.
pub(crate) fn run(args: DevTlsArgs) -> anyhow::Result<()> {
    let DevTlsArgs { dir, clients } = args;
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
