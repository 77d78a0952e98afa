//! `dojangctl` commands that go to a running daemon over mTLS with the
//! officer's client certificate: key listing, proposals, approvals.

use std::path::PathBuf;

use anyhow::Context;
use dojang::officer_client::OfficerClient;
use serde_json::{Value, json};

/// How to reach the daemon as an officer (flags, else environment).
pub(crate) struct Connection {
    pub(crate) api: Option<String>,
    pub(crate) cert: Option<PathBuf>,
    pub(crate) key: Option<PathBuf>,
    pub(crate) ca: Option<PathBuf>,
}

impl Connection {
    /// Whether an API URL was given (`keys list` then asks the daemon).
    pub(crate) fn remote(&self) -> bool {
        self.api.is_some() || std::env::var_os("DOJANG_API").is_some()
    }

    pub(crate) fn client(&self) -> anyhow::Result<OfficerClient> {
        let pick = |flag: &Option<PathBuf>, env: &str, what: &str| {
            flag.clone()
                .or_else(|| std::env::var_os(env).map(PathBuf::from))
                .with_context(|| {
                    format!(
                        "{what}: pass --{} or set {env}",
                        what.split(' ').next().unwrap_or(what)
                    )
                })
        };
        let api = self
            .api
            .clone()
            .or_else(|| std::env::var("DOJANG_API").ok())
            .context("api: pass --api https://HOST:PORT or set DOJANG_API")?;
        OfficerClient::new(
            &api,
            &pick(
                &self.cert,
                "DOJANG_OFFICER_CERT",
                "officer-cert (the officer's certificate)",
            )?,
            &pick(
                &self.key,
                "DOJANG_OFFICER_KEY",
                "officer-key (the officer's private key)",
            )?,
            &pick(&self.ca, "DOJANG_CA", "ca (the daemon's CA)")?,
        )
    }
}

fn text<'a>(v: &'a Value, name: &str) -> &'a str {
    v.get(name).and_then(Value::as_str).unwrap_or("-")
}

fn summary(operation: &Value) -> String {
    let label = text(operation, "label");
    match text(operation, "kind") {
        "create_key" => format!("rotate {}", text(operation, "chain")),
        "emergency_revoke" => format!("revoke {label}"),
        "activate_key" => format!("activate {label}"),
        "retire_key" => format!("retire {label}"),
        "destroy_key" => format!("destroy {label}"),
        "change_policy" => format!("adopt policy {}", text(operation, "sha256")),
        "generate_iaca" => "generate the IACA".to_owned(),
        other => other.to_owned(),
    }
}

fn print_proposal(p: &Value) {
    let approvals = p["approvals"].as_array().map_or(0, Vec::len);
    println!(
        "proposal {}: {} — {} ({} of {} approvals), expires {}",
        text(p, "id"),
        summary(&p["operation"]),
        text(p, "status"),
        approvals,
        p["required"].as_u64().unwrap_or(0),
        text(p, "expires_at"),
    );
    if let Some(result) = p["result"].as_str() {
        println!("  result: {result}");
    }
}

fn show(json_out: bool, value: &Value, text_out: impl FnOnce(&Value)) -> anyhow::Result<()> {
    if json_out {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        text_out(value);
    }
    Ok(())
}

/// `keys list` against the daemon: the registry's key records.
pub(crate) fn list_keys(conn: &Connection, json_out: bool) -> anyhow::Result<()> {
    let keys = conn.client()?.call("GET", "/v1/keys", None)?;
    show(json_out, &keys, |keys| {
        println!(
            "{:<26} {:<11} {:<9} {:<20} {:>10}  KID",
            "LABEL", "CHAIN", "STATE", "SIGNS FROM", "SIGNATURES"
        );
        for k in keys["keys"].as_array().into_iter().flatten() {
            println!(
                "{:<26} {:<11} {:<9} {:<20} {:>10}  {}{}",
                text(k, "label"),
                text(k, "chain"),
                text(k, "state"),
                text(k, "activate_at"),
                k["signatures"].as_u64().unwrap_or(0),
                text(k, "kid"),
                if k["revoked"].is_object() {
                    "  REVOKED"
                } else {
                    ""
                }
            );
        }
    })
}

/// The label of a key named by label or kid.
fn resolve(client: &OfficerClient, key: &str) -> anyhow::Result<String> {
    let keys = client.call("GET", "/v1/keys", None)?;
    keys.get("keys")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|k| text(k, "label") == key || text(k, "kid") == key)
        .map(|k| text(k, "label").to_owned())
        .with_context(|| format!("no key with label or kid {key:?} (dojangctl keys list --api …)"))
}

/// `keys rotate|revoke|activate|retire|destroy`: opens a proposal.
pub(crate) fn propose(
    conn: &Connection,
    action: &str,
    key: Option<&str>,
    body: Option<Value>,
    json_out: bool,
) -> anyhow::Result<()> {
    let client = conn.client()?;
    let path = match key {
        Some(key) => format!("/v1/keys/{}/{action}", resolve(&client, key)?),
        None => format!("/v1/keys/{action}"),
    };
    let proposal = client.call("POST", &path, body)?;
    show_opened(json_out, &proposal)
}

/// `policy propose FILE`: opens a proposal to adopt the policy of `sha256`.
pub(crate) fn propose_policy(
    conn: &Connection,
    sha256: &str,
    json_out: bool,
) -> anyhow::Result<()> {
    propose_at(
        conn,
        "/v1/policy/change",
        Some(json!({ "sha256": sha256 })),
        json_out,
    )
}

/// `pki propose-iaca`: opens a proposal to generate the IACA.
pub(crate) fn propose_iaca(conn: &Connection, json_out: bool) -> anyhow::Result<()> {
    propose_at(conn, "/v1/pki/iaca", None, json_out)
}

fn propose_at(
    conn: &Connection,
    path: &str,
    body: Option<Value>,
    json_out: bool,
) -> anyhow::Result<()> {
    let proposal = conn.client()?.call("POST", path, body)?;
    show_opened(json_out, &proposal)
}

/// A proposal just opened, and what the next officer does.
fn show_opened(json_out: bool, proposal: &Value) -> anyhow::Result<()> {
    show(json_out, proposal, |p| {
        print_proposal(p);
        println!(
            "  another officer checks it and approves with: dojangctl approve {}",
            text(p, "id")
        );
    })
}

/// `approvals list`.
pub(crate) fn list_proposals(conn: &Connection, json_out: bool) -> anyhow::Result<()> {
    let list = conn.client()?.call("GET", "/v1/approvals", None)?;
    show(json_out, &list, |list| {
        let proposals = list["proposals"].as_array().cloned().unwrap_or_default();
        if proposals.is_empty() {
            println!("no proposals");
        }
        proposals.iter().for_each(print_proposal);
    })
}

/// `approve ID` / `reject ID`. An approval first reads the proposal,
/// shows it, and sends back the operation read: the daemon refuses it if
/// the proposal says something else.
pub(crate) fn decide(
    conn: &Connection,
    id: &str,
    approve: bool,
    json_out: bool,
) -> anyhow::Result<()> {
    let well_formed = id.len() <= 64
        && id
            .strip_prefix("p-")
            .is_some_and(|hex| hex.bytes().all(|b| b.is_ascii_hexdigit()));
    anyhow::ensure!(well_formed, "{id:?} is not a proposal id (p-…)");
    let client = conn.client()?;
    let step = if approve { "approve" } else { "reject" };
    let body = if approve {
        let list = client.call("GET", "/v1/approvals", None)?;
        let proposal = list
            .get("proposals")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|p| text(p, "id") == id)
            .with_context(|| format!("no proposal {id} (dojangctl approvals list)"))?;
        if !json_out {
            println!(
                "approving {}: {}, proposed by {}",
                id,
                summary(&proposal["operation"]),
                text(proposal, "proposer")
            );
        }
        Some(json!({ "operation": proposal["operation"] }))
    } else {
        None
    };
    let proposal = client.call("POST", &format!("/v1/approvals/{id}/{step}"), body)?;
    show(json_out, &proposal, print_proposal)
}

/// The body of a revocation.
pub(crate) fn revoke_body(reason: &str) -> Value {
    json!({ "reason": reason })
}
