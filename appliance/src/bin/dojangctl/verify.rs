//! `verify FILE`: verifies a credential (mdoc as base64url or hex CBOR, or
//! an SD-JWT VC) offline against a trust anchor given on the command line,
//! and prints a JSON report of what it found. Owns the arguments, the
//! input decoding and the report's shape.

use std::path::PathBuf;

use anyhow::Context;
use base64::Engine;
use dojang::credential::verify::Trust;
use dojang::credential::{mdoc, sdjwt};
use dojang::pki::cert_der_from_pem;
use serde_json::json;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::shared::device_key;

// The subcommand's help text is its variant's doc comment in `Command`.
#[derive(clap::Args)]
pub(crate) struct VerifyArgs {
    /// File holding the credential ("-" for standard input).
    file: PathBuf,
    /// Trust this IACA root certificate (PEM).
    #[arg(long, group = "trust")]
    iaca: Option<PathBuf>,
    /// Trust exactly this document-signer certificate (PEM).
    #[arg(long, group = "trust")]
    ds_cert: Option<PathBuf>,
    /// Trust this issuer public key (JWK file; SD-JWT VC only).
    #[arg(long, group = "trust")]
    issuer_jwk: Option<PathBuf>,
    /// Verify as of this instant (RFC 3339) instead of now.
    #[arg(long)]
    at: Option<String>,
    /// Require this docType (mdoc) or vct (SD-JWT VC) instead of the card's.
    #[arg(long)]
    expect_type: Option<String>,
    /// Accept any docType / vct.
    #[arg(long, conflicts_with = "expect_type")]
    any_type: bool,
}

fn read_input(path: &std::path::Path) -> anyhow::Result<String> {
    if path.as_os_str() == "-" {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)?;
        Ok(text)
    } else {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
    }
}

/// `verify FILE --iaca|--ds-cert|--issuer-jwk …`.
pub(crate) fn run(args: VerifyArgs) -> anyhow::Result<()> {
    let trust = trust(&args)?;
    let now = match &args.at {
        Some(at) => OffsetDateTime::parse(at, &Rfc3339)
            .with_context(|| format!("--at {at:?} is not RFC 3339"))?,
        None => OffsetDateTime::now_utc(),
    };
    let text = read_input(&args.file)?;
    let text = text.trim();
    let report = if text.contains('~') {
        verify_sd_jwt(&args, text, &trust, now)?
    } else {
        verify_mdoc(&args, text, &trust, now)?
    };
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

/// The trust anchor the flags name (exactly one, by the clap group).
fn trust(args: &VerifyArgs) -> anyhow::Result<Trust> {
    let read_cert = |p: &PathBuf| -> anyhow::Result<Vec<u8>> {
        let pem = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
        Ok(cert_der_from_pem(&pem)?)
    };
    Ok(match (&args.iaca, &args.ds_cert, &args.issuer_jwk) {
        (Some(p), _, _) => Trust::Iaca(read_cert(p)?),
        (_, Some(p), _) => Trust::DocumentSigner(read_cert(p)?),
        (_, _, Some(p)) => Trust::IssuerKey(device_key(Some(p))?),
        _ => anyhow::bail!("say what to trust: --iaca, --ds-cert or --issuer-jwk"),
    })
}

/// The report on an SD-JWT VC (`text` holds a `~`).
fn verify_sd_jwt(
    args: &VerifyArgs,
    text: &str,
    trust: &Trust,
    now: OffsetDateTime,
) -> anyhow::Result<serde_json::Value> {
    let expected = if args.any_type {
        None
    } else {
        Some(args.expect_type.as_deref().unwrap_or(sdjwt::VCT))
    };
    let verified = sdjwt::verify(text, trust, now, expected)?;
    Ok(json!({
        "format": "dc+sd-jwt",
        "valid": true,
        "alg": verified.header.get("alg"),
        "disclosed": verified.disclosed,
        "claims": sdjwt::claim_map(&verified),
    }))
}

/// The report on an mdoc, hex or base64url CBOR.
fn verify_mdoc(
    args: &VerifyArgs,
    text: &str,
    trust: &Trust,
    now: OffsetDateTime,
) -> anyhow::Result<serde_json::Value> {
    // Hex first: every hex digit is also a base64url character.
    let bytes = hex_decode(text)
        .or_else(|| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(text.trim_end_matches('='))
                .ok()
        })
        .context("an mdoc is base64url (or hex) CBOR")?;
    let expected = if args.any_type {
        None
    } else {
        Some(args.expect_type.as_deref().unwrap_or(mdoc::DOC_TYPE))
    };
    let verified = mdoc::verify(&bytes, trust, now, expected)?;
    let elements: serde_json::Map<String, serde_json::Value> = verified
        .elements
        .iter()
        .map(|(ns, items)| {
            let items: serde_json::Map<String, serde_json::Value> = items
                .iter()
                .map(|(k, v)| (k.clone(), cbor_to_json(v)))
                .collect();
            (ns.clone(), serde_json::Value::Object(items))
        })
        .collect();
    Ok(json!({
        "format": "mso_mdoc",
        "valid": true,
        "docType": verified.doc_type,
        "validFrom": verified.valid_from.format(&Rfc3339)?,
        "validUntil": verified.valid_until.format(&Rfc3339)?,
        "elements": elements,
    }))
}

fn hex_decode(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

/// A printable view of a CBOR element (byte strings as base64url).
fn cbor_to_json(value: &ciborium::Value) -> serde_json::Value {
    use ciborium::Value as C;
    match value {
        C::Text(t) => json!(t),
        C::Bool(b) => json!(b),
        C::Integer(i) => json!(i128::from(*i).to_string()),
        C::Bytes(b) => json!(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)),
        C::Tag(_, inner) => cbor_to_json(inner),
        C::Array(items) => serde_json::Value::Array(items.iter().map(cbor_to_json).collect()),
        C::Map(entries) => serde_json::Value::Object(
            entries
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_text()
                            .map(str::to_owned)
                            .unwrap_or_else(|| format!("{k:?}")),
                        cbor_to_json(v),
                    )
                })
                .collect(),
        ),
        other => json!(format!("{other:?}")),
    }
}
