//! `ceremony …`: the offline IACA's ceremonies. The daemon's token never
//! holds the IACA key; officers meet at the offline token:
//!
//! 1. `ceremony request` (over --api): the daemon's request — its new DS
//!    keys' certificate requests and the revocations to list;
//! 2. `ceremony record`: the record officers sign (a root ceremony, or
//!    one answering that request), and its SHA-256;
//! 3. `ceremony sign` (each officer, with their token): a signature;
//! 4. `ceremony run` (on the offline token): checks M pinned officers
//!    signed, then creates the IACA or certifies the request and signs a
//!    CRL; writes the response;
//! 5. `ceremony import` (over --api): the daemon verifies it and keeps it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use clap::Subcommand;
use dojang::config::Config;
use dojang::keys::ceremony::verify_record;
use dojang::keys::order::digest;
use dojang::pki::exchange::{
    CeremonyRecord, CeremonyRequest, CeremonyResponse, KIND_CERTIFY, KIND_ROLLOVER, KIND_ROOT,
    RECORD_CONTEXT, crl_der_b64,
};
use dojang::pki::{PkiStore, ceremony as pki_ceremony};
use dojang_policies::Policy;
use pkcs11_shim::Algorithm;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::officer::{Connection, confirm};
use crate::officer_token::TokenPlace;
use crate::offline_roots::{certify_request, roll_over};

#[derive(Subcommand)]
pub(crate) enum CeremonyCommand {
    /// Ask the daemon (over --api) for a ceremony request: the DS keys
    /// waiting in its spare pool, its status-list keys without a
    /// certificate, and the revocations the CRL must list.
    Request {
        /// Where to write the request (carry it to the offline IACA).
        #[arg(long)]
        out: PathBuf,
    },
    /// Draw up the record officers sign: `--root` creates the IACA,
    /// `--request FILE` answers a daemon's request.
    Record {
        /// The adopted policy (its officers sign).
        #[arg(long)]
        policy: PathBuf,
        /// A root ceremony: the IACA key and certificate from [pki].
        #[arg(long, conflicts_with_all = ["request", "rollover"])]
        root: bool,
        /// An IACA rollover: a successor root named --common-name, linked
        /// both ways with the current one.
        #[arg(long, conflicts_with = "request", requires = "common_name")]
        rollover: bool,
        /// The successor root's common name (a rollover).
        #[arg(long)]
        common_name: Option<String>,
        /// The daemon's request this ceremony answers.
        #[arg(long, required_unless_present_any = ["root", "rollover"])]
        request: Option<PathBuf>,
        /// Where to write the record.
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign a record with the officer's token (--officer-token).
    Sign {
        /// The record.
        record: PathBuf,
        /// The adopted policy.
        #[arg(long)]
        policy: PathBuf,
        /// Where to write the signature.
        #[arg(long)]
        out: PathBuf,
        /// The record's SHA-256 as read out at the ceremony (no prompt).
        #[arg(long)]
        expect: Option<String>,
    },
    /// On the offline IACA token: check the officers' signatures, then
    /// create the IACA (root) or certify the request and sign a CRL.
    Run {
        /// The record.
        record: PathBuf,
        /// The officers' signatures (`ceremony sign`).
        #[arg(required = true)]
        signatures: Vec<PathBuf>,
        /// The adopted policy.
        #[arg(long)]
        policy: PathBuf,
        /// The daemon's request (a certify ceremony).
        #[arg(long)]
        request: Option<PathBuf>,
        /// Where to write the response (carry it back to the daemon).
        #[arg(long)]
        out: PathBuf,
        /// Label of the offline IACA token [default: $DOJANG_IACA_TOKEN].
        #[arg(long = "iaca-token")]
        iaca_token: Option<String>,
        /// Its PKCS#11 module [default: $DOJANG_IACA_MODULE, else OpenSC's].
        #[arg(long = "iaca-module")]
        iaca_module: Option<PathBuf>,
        /// File holding its PIN [default: $DOJANG_IACA_PIN_FILE, the
        /// systemd credential iaca-pin, or the terminal].
        #[arg(long = "iaca-pin-file")]
        iaca_pin_file: Option<PathBuf>,
    },
    /// Bring a ceremony's response back to the daemon (over --api).
    Import {
        /// The response.
        response: PathBuf,
    },
}

/// One officer's signature over a record (the file `ceremony sign` writes).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordSignature {
    record_sha256: String,
    identity: String,
    signature: String,
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

fn read_policy(path: &Path) -> anyhow::Result<Policy> {
    let text = String::from_utf8(read(path)?)?;
    Ok(Policy::parse(&path.display().to_string(), &text)?)
}

fn write(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

fn read_record(path: &Path) -> anyhow::Result<CeremonyRecord> {
    serde_json::from_slice(&read(path)?)
        .with_context(|| format!("{} is not a ceremony record", path.display()))
}

/// `ceremony request`: the daemon's request, written to `out`.
fn request(conn: &Connection, out: &Path) -> anyhow::Result<()> {
    let bytes = conn
        .client()?
        .call_bytes("POST", "/v1/ceremony/requests", None)?;
    let request: CeremonyRequest = serde_json::from_slice(&bytes)?;
    write(out, &bytes)?;
    let ds = request
        .keys
        .iter()
        .filter(|k| k.purpose.is_document_signer())
        .count();
    println!(
        "request {} (sha256 {}): {ds} DS key(s) and {} status-list key(s) to certify, {} serial(s) to revoke; wrote {}",
        request.id,
        digest(&bytes),
        request.keys.len() - ds,
        request.revoke.len(),
        out.display()
    );
    Ok(())
}

/// `ceremony …`.
pub(crate) fn run(
    command: CeremonyCommand,
    conn: &Connection,
    load: impl FnOnce() -> anyhow::Result<Config>,
) -> anyhow::Result<()> {
    match command {
        CeremonyCommand::Request { out } => request(conn, &out),
        CeremonyCommand::Record {
            policy,
            root,
            rollover,
            common_name,
            request,
            out,
        } => {
            let kind = match (root, rollover.then_some(common_name).flatten()) {
                (true, _) => Kind::Root,
                (false, Some(name)) => Kind::Rollover(name),
                (false, None) => {
                    Kind::Certify(request.context("--root, --rollover or --request FILE")?)
                }
            };
            record(&load()?, &policy, kind, &out)
        }
        CeremonyCommand::Sign {
            record,
            policy,
            out,
            expect,
        } => sign(conn, &record, &policy, &out, expect.as_deref()),
        CeremonyCommand::Run {
            record,
            signatures,
            policy,
            request,
            out,
            iaca_token,
            iaca_module,
            iaca_pin_file,
        } => {
            let token = TokenPlace {
                label: iaca_token,
                module: iaca_module,
                pin_file: iaca_pin_file,
                env: "DOJANG_IACA",
                credential: "iaca-pin",
                what: "IACA",
                flag: "iaca",
            };
            let files = Files {
                record: &record,
                signatures: &signatures,
                policy: &policy,
                request: request.as_deref(),
                out: &out,
            };
            perform(&load()?, &token, &files)
        }
        CeremonyCommand::Import { response } => import(conn, &response),
    }
}

/// `ceremony import`: the response to the daemon, which verifies it.
fn import(conn: &Connection, response: &Path) -> anyhow::Result<()> {
    let body: serde_json::Value = serde_json::from_slice(&read(response)?)
        .with_context(|| format!("{} is not JSON", response.display()))?;
    let answer = conn
        .client()?
        .call("POST", "/v1/ceremony/responses", Some(body))?;
    println!(
        "{}",
        answer
            .get("imported")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("imported")
    );
    Ok(())
}

/// What a record is for.
enum Kind {
    Root,
    Rollover(String),
    Certify(PathBuf),
}

fn record(config: &Config, policy: &Path, kind: Kind, out: &Path) -> anyhow::Result<()> {
    let policy = read_policy(policy)?;
    let pki = config.pki().map_err(anyhow::Error::msg)?;
    let iaca_subject = format!(
        "C={}, O={}, CN={}",
        pki.country, pki.organization, pki.iaca_common_name
    );
    let (kind, request_id, request_sha256, successor) = match kind {
        Kind::Root => (KIND_ROOT, None, None, None),
        Kind::Rollover(name) => (KIND_ROLLOVER, None, None, Some(name)),
        Kind::Certify(path) => {
            let bytes = read(&path)?;
            let parsed: CeremonyRequest = serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is not a ceremony request", path.display()))?;
            (KIND_CERTIFY, Some(parsed.id), Some(digest(&bytes)), None)
        }
    };
    let record = CeremonyRecord {
        context: RECORD_CONTEXT.into(),
        kind: kind.into(),
        request_id,
        request_sha256,
        policy_sha256: policy.hash.clone(),
        iaca_subject,
        created: OffsetDateTime::now_utc().unix_timestamp(),
        successor,
    };
    write(out, &serde_json::to_vec_pretty(&record)?)?;
    println!(
        "{kind} ceremony record for {} under policy {}\n  sha256: {}\n  needs {} officers' signatures (dojangctl ceremony sign); wrote {}",
        record.iaca_subject,
        policy.hash,
        digest(&record.bytes()),
        policy.officers.approvals_required,
        out.display()
    );
    Ok(())
}

fn sign(
    conn: &Connection,
    record: &Path,
    policy: &Path,
    out: &Path,
    expect: Option<&str>,
) -> anyhow::Result<()> {
    let record = read_record(record)?;
    let policy = read_policy(policy)?;
    let sha = digest(&record.bytes());
    println!(
        "{} ceremony for {}{}\n  sha256: {sha}",
        record.kind,
        record.iaca_subject,
        record
            .request_sha256
            .as_deref()
            .map(|r| format!(", answering request {r}"))
            .unwrap_or_default()
    );
    confirm(&sha, expect)?;
    let (identity, signature) = conn.token.sign(Some(&policy), &record.bytes())?;
    let identity = identity.context(
        "this token's approval key is not pinned for any officer of this policy: nothing written",
    )?;
    let file = RecordSignature {
        record_sha256: sha,
        identity: identity.clone(),
        signature,
    };
    write(out, &serde_json::to_vec_pretty(&file)?)?;
    println!("signed as {identity}: wrote {}", out.display());
    Ok(())
}

/// The files `ceremony run` reads and writes.
struct Files<'a> {
    record: &'a Path,
    signatures: &'a [PathBuf],
    policy: &'a Path,
    request: Option<&'a Path>,
    out: &'a Path,
}

/// The officers' signature files, by identity (one each).
fn read_signatures(files: &[PathBuf]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut signatures = BTreeMap::new();
    for path in files {
        let sig: RecordSignature = serde_json::from_slice(&read(path)?)
            .with_context(|| format!("{} is not a ceremony signature", path.display()))?;
        anyhow::ensure!(
            signatures
                .insert(sig.identity.clone(), sig.signature)
                .is_none(),
            "two signatures from {}",
            sig.identity
        );
    }
    Ok(signatures)
}

fn perform(config: &Config, token: &TokenPlace<'_>, files: &Files<'_>) -> anyhow::Result<()> {
    let record = read_record(files.record)?;
    let policy = read_policy(files.policy)?;
    let signatures = read_signatures(files.signatures)?;
    let officers = verify_record(&record, &signatures, &policy)
        .map_err(|e| anyhow::anyhow!("the ceremony does not go ahead: {e}"))?;
    let pki = config.pki().map_err(anyhow::Error::msg)?;
    let store = PkiStore::new(&pki.dir);
    let backend = token.open()?;
    let now = OffsetDateTime::now_utc();
    let mut older_crls = Vec::new();
    let (iaca_der, certificates, crl) = match record.kind.as_str() {
        KIND_ROOT => {
            anyhow::ensure!(
                !store.iaca_path().exists(),
                "{} exists: the IACA is created once (a new root is a rollover)",
                store.iaca_path().display()
            );
            let (der, _) =
                pki_ceremony::iaca_in_token(backend.as_ref(), pki, Algorithm::Es256, now)?;
            let crl = pki_ceremony::crl_now(backend.as_ref(), pki, &der, &[], now)?;
            println!("wrote {}", store.write_iaca(&der)?.display());
            (der, Vec::new(), crl)
        }
        KIND_CERTIFY => {
            let path = files
                .request
                .context("a certify ceremony needs the daemon's --request")?;
            let bytes = read(path)?;
            let request: CeremonyRequest = serde_json::from_slice(&bytes)?;
            anyhow::ensure!(
                record.request_sha256.as_deref() == Some(digest(&bytes).as_str())
                    && record.request_id.as_deref() == Some(request.id.as_str()),
                "the officers signed a record for other request bytes than {}",
                path.display()
            );
            let done = certify_request(pki, backend.as_ref(), &request, now)?;
            older_crls = done.older_crls;
            (done.root, done.certificates, done.crl)
        }
        KIND_ROLLOVER => {
            return rollover(
                pki,
                backend.as_ref(),
                record,
                signatures,
                &officers,
                files.out,
            );
        }
        other => anyhow::bail!("a {other:?} ceremony is not one this tool runs"),
    };
    if iaca_der == store.iaca()?.0 {
        println!("wrote {}", store.write_crl(&crl)?.display());
    }
    let response = CeremonyResponse {
        record,
        signatures,
        iaca: B64.encode(&iaca_der),
        certificates,
        crl: crl_der_b64(&crl)?,
        older_crls,
        rollover: None,
    };
    write(files.out, &serde_json::to_vec_pretty(&response)?)?;
    println!(
        "{} ceremony done with {}: {} DS certificate(s) and a CRL; wrote {} (dojangctl ceremony import)",
        response.record.kind,
        officers.join(", "),
        response.certificates.len(),
        files.out.display()
    );
    Ok(())
}

/// The rollover ceremony's work and its response.
fn rollover(
    pki: &dojang::config::PkiConfig,
    backend: &dyn pkcs11_shim::KeyBackend,
    record: CeremonyRecord,
    signatures: BTreeMap<String, String>,
    officers: &[String],
    out: &Path,
) -> anyhow::Result<()> {
    let name = record
        .successor
        .clone()
        .context("a rollover record names its successor's common name")?;
    let (current, crl, certificates, path) =
        roll_over(pki, backend, &name, OffsetDateTime::now_utc())?;
    println!("wrote {}", path.display());
    // The successor's first CRL is the response's; the current root's
    // file stays as it is.
    let response = CeremonyResponse {
        record,
        signatures,
        iaca: B64.encode(&current),
        certificates: Vec::new(),
        crl: crl_der_b64(&crl)?,
        older_crls: Vec::new(),
        rollover: Some(certificates),
    };
    write(out, &serde_json::to_vec_pretty(&response)?)?;
    println!(
        "rollover ceremony done with {}: successor root {name}, linked both ways; wrote {} (dojangctl ceremony import)",
        officers.join(", "),
        out.display()
    );
    Ok(())
}
