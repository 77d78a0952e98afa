//! `credential sample`: issues a credential (mdoc or SD-JWT VC) for the
//! built-in fictional holder, and prints it. It never uses the configured
//! token: a sample is a signature outside the registry and the audit log,
//! so it is made in a development token of its own, by a throwaway sample
//! IACA and document signer that no verifier trusts and that are destroyed
//! once the sample is signed. Owns the subcommand's arguments and output.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;
use dojang::config::Config;
use dojang::credential::claims::ResidentCardClaims;
use dojang::credential::{DocumentSigner, SignatureValidity, mdoc, sample, sdjwt};
use dojang::pki::{DsCertificate, ceremony, cert_pem};
use dojang_policies::calendar::seoul_date;
use pkcs11_shim::{Algorithm, BackendConfig, BackendKind, KeyBackend, SecretSource};
use time::OffsetDateTime;

use crate::shared::device_key;

#[derive(Subcommand)]
pub(crate) enum CredentialCommand {
    /// Issue a credential for the built-in sample holder (fictional), signed
    /// by throwaway keys in a development token (never the configured one).
    Sample {
        /// mdoc or sd-jwt.
        #[arg(long, value_parser = ["mdoc", "sd-jwt"])]
        format: String,
        /// Label of the development token the throwaway keys are made in
        /// (same PKCS#11 module as the configured token; refused if it is
        /// the configured token).
        #[arg(long, default_value = "dojang-sample")]
        token: String,
        /// File holding that token's user PIN (never the production PIN).
        #[arg(long)]
        pin_file: PathBuf,
        /// Where the throwaway sample IACA certificate is written, to verify
        /// the sample with `dojangctl verify --iaca FILE`.
        #[arg(long, default_value = "sample-iaca.pem")]
        iaca_out: PathBuf,
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
            token,
            pin_file,
            iaca_out,
            device_jwk,
        } => {
            // Bad input is refused before any token is opened.
            let device_key = device_key(device_jwk.as_deref())?;
            let backend = sample_token(config, &token, pin_file)?;
            let out = sample(config, backend.as_ref(), &format, &iaca_out, &device_key)?;
            println!("{out}");
            Ok(())
        }
    }
}

/// The development token: the configured module, another token.
fn sample_token(
    config: &Config,
    token: &str,
    pin_file: PathBuf,
) -> anyhow::Result<std::sync::Arc<dyn KeyBackend>> {
    let configured = match (&config.keys.backend, &config.keys.pkcs11) {
        (BackendKind::Pkcs11, Some(p)) => p,
        _ => anyhow::bail!(
            "credential sample needs a PKCS#11 module ([keys.pkcs11]) with a development token"
        ),
    };
    match configured.token_label.as_deref() {
        Some(label) if label == token => anyhow::bail!(
            "{token:?} is the configured token: samples are never signed with production keys (pick a development token with --token)"
        ),
        Some(_) => {}
        // By serial, the production token's label is unknown here: it
        // could be the one asked for.
        None => anyhow::bail!(
            "the configured token is selected by serial: name it by token_label so samples can be kept off it"
        ),
    }
    let mut pkcs11 = configured.clone();
    pkcs11.token_label = Some(token.to_owned());
    pkcs11.token_serial = None;
    pkcs11.sessions = 1;
    pkcs11.pin = SecretSource::File(pin_file);
    let keys = BackendConfig {
        backend: BackendKind::Pkcs11,
        pkcs11: Some(pkcs11),
        tpm: None,
    };
    pkcs11_shim::open(&keys).with_context(|| format!("opening the development token {token:?}"))
}

fn sample(
    config: &Config,
    backend: &dyn KeyBackend,
    format: &str,
    iaca_out: &Path,
    device_key: &pkcs11_shim::PublicKey,
) -> anyhow::Result<String> {
    let credential = config.credential().map_err(anyhow::Error::msg)?;
    let now = OffsetDateTime::now_utc();
    let keys = ThrowawayKeys::new(backend);
    let mut pki = config.pki().map_err(anyhow::Error::msg)?.clone();
    pki.iaca_common_name = "Dojang development sample IACA (not trusted)".into();
    pki.iaca_key = keys.iaca.clone();
    let (iaca_der, _) = ceremony::iaca_in_token(backend, &pki, Algorithm::Es256, now)?;
    std::fs::write(iaca_out, cert_pem(&iaca_der)?)
        .with_context(|| format!("writing {}", iaca_out.display()))?;
    let (der, facts, _) = ceremony::document_signer_in_token(
        backend,
        &pki,
        &iaca_der,
        &keys.ds,
        Algorithm::Es256,
        now,
    )?;
    let certificate = DsCertificate {
        label: keys.ds.clone(),
        der,
        facts,
    };
    let signer = DocumentSigner::new(backend, certificate)?;
    let claims = ResidentCardClaims::derive(
        &sample::holder(),
        seoul_date(now),
        credential.document_validity_years,
        &credential.issuing_authority,
    )?;
    let validity = SignatureValidity::starting(
        now,
        credential.signature_validity_days,
        signer.certificate_window(),
    )?;
    Ok(match format {
        "mdoc" => mdoc::to_base64url(&mdoc::issue(&signer, &claims, device_key, &validity, None)?),
        _ => sdjwt::issue(
            &signer,
            &claims,
            device_key,
            &validity,
            None,
            &credential.issuer,
        )?,
    })
}

/// Fresh labels for one sample's IACA and DS keys, destroyed when the
/// sample is done (or failed).
struct ThrowawayKeys<'a> {
    backend: &'a dyn KeyBackend,
    iaca: String,
    ds: String,
}

impl<'a> ThrowawayKeys<'a> {
    fn new(backend: &'a dyn KeyBackend) -> Self {
        let suffix = format!("{:016x}", rand_u64());
        ThrowawayKeys {
            backend,
            iaca: format!("sample-iaca-{suffix}"),
            ds: format!("sample-ds-{suffix}"),
        }
    }
}

impl Drop for ThrowawayKeys<'_> {
    // Throwaway keys in the development token, made by this command only.
    #[allow(clippy::disallowed_methods)]
    fn drop(&mut self) {
        for label in [&self.iaca, &self.ds] {
            let _ = self.backend.destroy(label);
        }
    }
}

fn rand_u64() -> u64 {
    let mut bytes = [0u8; 8];
    openssl::rand::rand_bytes(&mut bytes).map_or(0, |()| u64::from_le_bytes(bytes))
}
