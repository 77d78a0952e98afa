//! `credential sample`: issues a credential (mdoc or SD-JWT VC) for the
//! built-in fictional holder with a document signer in the token, and
//! prints it. Owns the subcommand's arguments and its output.

use std::path::PathBuf;

use clap::Subcommand;
use dojang::cli;
use dojang::config::Config;
use dojang::credential::claims::ResidentCardClaims;
use dojang::credential::{DocumentSigner, SignatureValidity, mdoc, sample, sdjwt};
use dojang::pki::PkiStore;
use dojang_policies::calendar::seoul_date;
use time::OffsetDateTime;

use crate::shared::device_key;

#[derive(Subcommand)]
pub(crate) enum CredentialCommand {
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

/// `credential …`, with the loaded configuration.
pub(crate) fn run(command: CredentialCommand, config: &Config) -> anyhow::Result<()> {
    match command {
        CredentialCommand::Sample {
            format,
            ds,
            device_jwk,
        } => sample(config, &format, ds.as_deref(), device_jwk.as_deref()),
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
