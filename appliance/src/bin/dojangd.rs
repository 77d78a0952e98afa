//! `dojangd`: the signing daemon. `dojangd serve` runs the mTLS issuance
//! service; `dojangd validate` checks a configuration without starting.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use dojang::cli;

/// Dojang's signing daemon.
#[derive(Parser)]
#[command(name = "dojangd", version, about)]
struct Args {
    /// More log output on stderr (-v info, -vv debug).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service until SIGTERM (SIGHUP reloads TLS files, CRLs and the policy).
    Serve {
        /// Configuration file [default: $DOJANG_CONFIG or /etc/dojang/dojang.toml]
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Check a configuration file without starting; with --probe, also open
    /// the key backend and probe the device.
    Validate {
        /// Configuration file [default: $DOJANG_CONFIG or /etc/dojang/dojang.toml]
        #[arg(long)]
        config: Option<PathBuf>,
        /// Also log in to the token / connect to the TPM and probe it.
        #[arg(long)]
        probe: bool,
    },
}

fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        Command::Serve { config } => {
            let path = cli::config_path(config);
            let config = cli::load_config(&path)?;
            let json = config.server.as_ref().is_some_and(|s| s.json_logs);
            // Dropped when the service ends: the lines still queued are written.
            let _log = cli::init_daemon_logging(args.verbose, json);
            dojang::daemon::run(config)
        }
        Command::Validate { config, probe } => {
            let path = cli::config_path(config);
            let config = cli::load_config(&path)?;
            // The token is opened to probe it, or to check a TLS key it holds.
            let in_token = config
                .server
                .as_ref()
                .is_some_and(|s| s.api.private_key_label.is_some());
            let backend: Option<&'static dyn pkcs11_shim::KeyBackend> = if probe || in_token {
                let backend: &'static std::sync::Arc<dyn pkcs11_shim::KeyBackend> =
                    Box::leak(Box::new(cli::open_backend(&config)?));
                Some(backend.as_ref())
            } else {
                None
            };
            if let Some(server) = &config.server {
                // What `serve` would refuse: TLS files and keys, CRLs, the policy.
                let _ = dojang::http::tls::api_config(&server.api, backend)?;
                let _ = dojang::http::tls::public_config(&server.public)?;
                let text = std::fs::read_to_string(&server.policy)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", server.policy.display()))?;
                let _ =
                    dojang_policies::Policy::parse(&server.policy.display().to_string(), &text)?;
                anyhow::ensure!(config.store.is_some(), "[server] needs a [store] table");
                let _ = config.credential().map_err(anyhow::Error::msg)?;
                let _ = config.pki().map_err(anyhow::Error::msg)?;
            }
            if let (true, Some(backend)) = (probe, backend) {
                let health = backend.health();
                anyhow::ensure!(health.up, "key backend is down: {}", health.detail);
                println!(
                    "{}: valid; {} backend up ({})",
                    path.display(),
                    health.backend,
                    health.detail
                );
            } else {
                println!("{}: valid", path.display());
            }
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if !matches!(args.command, Command::Serve { .. }) {
        cli::init_logging(args.verbose);
    }
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("dojangd: {err:#}");
            ExitCode::FAILURE
        }
    }
}
