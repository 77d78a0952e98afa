//! The officer's own token (a smartcard through OpenSC; a SoftHSM token in
//! tests): its non-extractable approval key is what makes an officer's
//! approval count. Owns opening it, enrolling the key and signing. The PIN
//! is typed on the terminal, or comes from a file or a systemd credential;
//! never from the command line.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use dojang_policies::Policy;
use pkcs11_shim::{
    Algorithm, BackendConfig, BackendKind, KeyBackend, KeyPurpose, Pkcs11Config, PublicKey,
    SecretSource,
};

/// The approval key's label in the officer's token.
const APPROVAL_KEY: &str = "officer-approval";
/// OpenSC's PKCS#11 module, where Debian installs it: smartcards.
const OPENSC_MODULE: &str = "/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so";

/// Where the officer's token is (flags, else environment).
pub(crate) struct OfficerToken {
    pub(crate) label: Option<String>,
    pub(crate) module: Option<PathBuf>,
    pub(crate) pin_file: Option<PathBuf>,
}

/// Where a ceremony's token is: flags, else the environment variables
/// `<env>_TOKEN`, `<env>_MODULE`, `<env>_PIN_FILE`; the PIN from a file,
/// the systemd credential `credential`, or the terminal, never argv.
pub(crate) struct TokenPlace<'a> {
    pub(crate) label: Option<String>,
    pub(crate) module: Option<PathBuf>,
    pub(crate) pin_file: Option<PathBuf>,
    /// `DOJANG_OFFICER`, `DOJANG_IACA`.
    pub(crate) env: &'a str,
    /// `officer-pin`, `iaca-pin`.
    pub(crate) credential: &'a str,
    /// `officer`, `IACA` (in messages).
    pub(crate) what: &'a str,
    /// The flag prefix: `officer`, `iaca`.
    pub(crate) flag: &'a str,
}

impl TokenPlace<'_> {
    /// Opens the token with one session.
    pub(crate) fn open(&self) -> anyhow::Result<Arc<dyn KeyBackend>> {
        let (env, flag, what) = (self.env, self.flag, self.what);
        let label = self
            .label
            .clone()
            .or_else(|| std::env::var(format!("{env}_TOKEN")).ok())
            .with_context(|| {
                format!("the {what} token: pass --{flag}-token LABEL or set {env}_TOKEN")
            })?;
        let module = self
            .module
            .clone()
            .or_else(|| std::env::var_os(format!("{env}_MODULE")).map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(OPENSC_MODULE));
        let pin = match self
            .pin_file
            .clone()
            .or_else(|| std::env::var_os(format!("{env}_PIN_FILE")).map(PathBuf::from))
        {
            Some(file) => SecretSource::File(file),
            None if std::env::var_os("CREDENTIALS_DIRECTORY").is_some() => {
                SecretSource::SystemdCredential(self.credential.into())
            }
            None if std::io::stdin().is_terminal() => {
                SecretSource::Terminal(format!("PIN of the {what} token {label:?}: "))
            }
            None => anyhow::bail!(
                "the {what} token's PIN: type it on a terminal, or pass --{flag}-pin-file FILE, \
                 set {env}_PIN_FILE, or run with a systemd credential named {} \
                 (never on the command line)",
                self.credential
            ),
        };
        let mut pkcs11 = Pkcs11Config::new(module, label.clone(), pin);
        pkcs11.sessions = 1;
        pkcs11_shim::open(&BackendConfig {
            backend: BackendKind::Pkcs11,
            pkcs11: Some(pkcs11),
            tpm: None,
        })
        .with_context(|| format!("opening the {what} token {label:?}"))
    }
}

impl OfficerToken {
    fn open(&self) -> anyhow::Result<Arc<dyn KeyBackend>> {
        TokenPlace {
            label: self.label.clone(),
            module: self.module.clone(),
            pin_file: self.pin_file.clone(),
            env: "DOJANG_OFFICER",
            credential: "officer-pin",
            what: "officer",
            flag: "officer",
        }
        .open()
    }

    /// The approval key's public half (generated in the token if absent).
    pub(crate) fn enroll(&self) -> anyhow::Result<(PublicKey, bool)> {
        let token = self.open()?;
        if let Ok(key) = token.find(APPROVAL_KEY) {
            anyhow::ensure!(
                key.purpose == KeyPurpose::OfficerApproval,
                "the token's {APPROVAL_KEY:?} key is a {} key",
                key.purpose
            );
            return Ok((key.public_key.context("no public key")?, false));
        }
        let key = token.generate(APPROVAL_KEY, KeyPurpose::OfficerApproval, Algorithm::Es256)?;
        Ok((key.public_key.context("no public key")?, true))
    }

    /// Signs `message` in the token; the identity `policy` pins this
    /// token's key for, and the signature (base64url).
    pub(crate) fn sign(
        &self,
        policy: Option<&Policy>,
        message: &[u8],
    ) -> anyhow::Result<(Option<String>, String)> {
        let token = self.open()?;
        let key = token
            .find(APPROVAL_KEY)
            .context("the token has no approval key: dojangctl officer enroll")?;
        let spki = key.public_key.context("no public key")?.spki_der().to_vec();
        let identity = policy.and_then(|p| {
            p.officers()
                .find(|who| p.officer_key(who) == Some(spki.as_slice()))
                .map(str::to_owned)
        });
        let signature = token.sign(APPROVAL_KEY, KeyPurpose::OfficerApproval, message)?;
        Ok((identity, URL_SAFE_NO_PAD.encode(signature)))
    }
}

#[derive(clap::Subcommand)]
pub(crate) enum OfficerCommand {
    /// Generate the approval key in the officer's token (once; again it
    /// only shows it) and print the policy block pinning it.
    Enroll {
        /// The officer's identity: the URI SAN of their TLS certificate.
        #[arg(long)]
        identity: String,
    },
}

/// `officer …`.
pub(crate) fn run(
    command: OfficerCommand,
    token: &OfficerToken,
    as_json: bool,
) -> anyhow::Result<()> {
    match command {
        OfficerCommand::Enroll { identity } => {
            let (key, generated) = token.enroll()?;
            if as_json {
                println!(
                    "{}",
                    serde_json::json!({
                        "identity": identity,
                        "signing_key": STANDARD.encode(key.spki_der()),
                        "generated": generated,
                    })
                );
            } else {
                eprintln!(
                    "{} approval key {APPROVAL_KEY:?}; add this to the policy the officers adopt:",
                    if generated {
                        "generated the"
                    } else {
                        "the token already holds its"
                    }
                );
                print!("{}", enrollment_block(&identity, &key));
            }
            Ok(())
        }
    }
}

/// The policy block an enrolled officer adds.
pub(crate) fn enrollment_block(identity: &str, key: &PublicKey) -> String {
    format!(
        "[[clients]]\nidentity = \"{identity}\"\nroles = [\"officer\"]\nsigning_key = \"{}\"\n",
        STANDARD.encode(key.spki_der())
    )
}
