//! `offer`: the counter's side of issuance to a wallet. Sends an offer
//! request (an issuance request without `device_key`) to the daemon's
//! `POST /v1/offers` with the counter's client certificate, and shows the
//! offer's QR code in the terminal with the transaction code the holder
//! types. Owns the subcommand's arguments and output.

use std::path::PathBuf;

use anyhow::Context;
use base64::Engine;
use clap::Args;
use serde_json::Value;

use crate::officer::Connection;

#[derive(Args)]
pub(crate) struct OfferArgs {
    /// The offer request (JSON: profile, holder, channel, municipality,
    /// first_time, card), as `POST /v1/offers` takes it.
    #[arg(long)]
    request: PathBuf,
    /// Also write the QR code as a PNG here.
    #[arg(long)]
    png: Option<PathBuf>,
    /// Also write the QR code as an SVG here.
    #[arg(long)]
    svg: Option<PathBuf>,
}

/// `offer --request FILE` over `--api` with the client certificate.
pub(crate) fn run(args: &OfferArgs, conn: &Connection, json_out: bool) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.request)
        .with_context(|| format!("reading {}", args.request.display()))?;
    let request: Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not JSON", args.request.display()))?;
    let offer = conn.client()?.call("POST", "/v1/offers", Some(request))?;
    let field = |name: &str| offer.get(name).and_then(Value::as_str).unwrap_or("");
    if let Some(path) = &args.png {
        let png = base64::engine::general_purpose::STANDARD
            .decode(
                offer
                    .pointer("/qr/png")
                    .and_then(Value::as_str)
                    .unwrap_or(""),
            )
            .context("the answer's PNG is not base64")?;
        std::fs::write(path, png).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.svg {
        let svg = offer
            .pointer("/qr/svg")
            .and_then(Value::as_str)
            .unwrap_or("");
        std::fs::write(path, svg).with_context(|| format!("writing {}", path.display()))?;
    }
    if json_out {
        println!("{offer}");
        return Ok(());
    }
    let qr = dojang::wallet::qr::encode(field("offer_uri"))
        .context("the offer's URI does not fit a QR code")?;
    print!("{}", dojang::wallet::qr::terminal(&qr));
    println!("Scan with the wallet app; the holder types the transaction code.");
    println!("transaction code  {}", field("tx_code"));
    println!("profile           {}", field("profile"));
    println!("expires           {}", field("expires_at"));
    println!("offer             {}", field("offer_uri"));
    Ok(())
}
