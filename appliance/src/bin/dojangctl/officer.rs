//! `dojangctl` commands that go to a running daemon over mTLS with the
//! officer's client certificate: key listing, proposals, approvals. A
//! proposal or an approval is signed with the officer's token over the
//! canonical proposal, whose fields are shown first, as parsed from the
//! very bytes signed.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use dojang::keys::approvals::Operation;
use dojang::keys::order::{CanonicalProposal, digest};
use dojang::officer_client::OfficerClient;
use serde_json::{Value, json};

use crate::officer_token::OfficerToken;

/// How to reach the daemon as an officer (flags, else environment).
pub(crate) struct Connection {
    pub(crate) api: Option<String>,
    pub(crate) cert: Option<PathBuf>,
    pub(crate) key: Option<PathBuf>,
    pub(crate) ca: Option<PathBuf>,
    /// The officer's token, which signs.
    pub(crate) token: OfficerToken,
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

/// `keys rotate|revoke|activate|retire|destroy`: opens a proposal and
/// signs it as its proposer.
pub(crate) fn propose(
    conn: &Connection,
    action: &str,
    key: Option<&str>,
    body: Option<Value>,
    json_out: bool,
) -> anyhow::Result<()> {
    let client = conn.client()?;
    let label = key.map(|key| resolve(&client, key)).transpose()?;
    let path = match &label {
        Some(label) => format!("/v1/keys/{label}/{action}"),
        None => format!("/v1/keys/{action}"),
    };
    let text = |name: &str| {
        body.as_ref()
            .and_then(|b| b.get(name))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .trim()
            .to_owned()
    };
    let label = label.unwrap_or_default();
    let expected = match action {
        "rotate" => Operation::CreateKey {
            chain: text("chain"),
        },
        "revoke" => Operation::EmergencyRevoke {
            label,
            reason: text("reason"),
        },
        "activate" => Operation::ActivateKey { label },
        "retire" => Operation::RetireKey { label },
        _ => Operation::DestroyKey { label },
    };
    // Named by kid: the key the daemon found must be that key, by the kid
    // of the token's key (a registry row's kid can be edited).
    let named_kid = key.filter(|k| *k != expected_label(&expected));
    propose_signed(
        conn, &client, &path, body, &expected, None, named_kid, json_out,
    )
}

fn expected_label(operation: &Operation) -> &str {
    match operation {
        Operation::ActivateKey { label }
        | Operation::RetireKey { label }
        | Operation::DestroyKey { label }
        | Operation::EmergencyRevoke { label, .. } => label,
        _ => "",
    }
}

/// `policy propose FILE`: opens a proposal to adopt the policy of `sha256`,
/// carrying its full text, and signs it.
pub(crate) fn propose_policy(
    conn: &Connection,
    sha256: &str,
    text: &str,
    json_out: bool,
) -> anyhow::Result<()> {
    let expected = Operation::ChangePolicy {
        sha256: sha256.to_owned(),
    };
    propose_signed(
        conn,
        &conn.client()?,
        "/v1/policy/change",
        Some(json!({ "sha256": sha256, "text": text })),
        &expected,
        Some(text),
        None,
        json_out,
    )
}

/// `pki propose-iaca`: opens a proposal to generate the IACA, and signs it.
pub(crate) fn propose_iaca(conn: &Connection, json_out: bool) -> anyhow::Result<()> {
    let client = conn.client()?;
    let expected = Operation::GenerateIaca;
    propose_signed(
        conn,
        &client,
        "/v1/pki/iaca",
        None,
        &expected,
        None,
        None,
        json_out,
    )
}

/// Opens the proposal, checks the daemon opened what was asked (the
/// canonical bytes, not the rest of its answer), shows it and signs it.
#[allow(clippy::too_many_arguments)] // each is a check on what is signed
fn propose_signed(
    conn: &Connection,
    client: &OfficerClient,
    path: &str,
    body: Option<Value>,
    expected: &Operation,
    policy_text: Option<&str>,
    named_kid: Option<&str>,
    json_out: bool,
) -> anyhow::Result<()> {
    let opened = client.call("POST", path, body)?;
    let (canonical, bytes) = canonical_of(&opened)?;
    anyhow::ensure!(
        canonical.operation == *expected && canonical.policy_text.as_deref() == policy_text,
        "the daemon opened proposal {} for something else than was asked: not signed",
        canonical.id
    );
    if let Some(kid) = named_kid {
        anyhow::ensure!(
            canonical.target.as_ref().is_some_and(|t| t.kid == kid),
            "proposal {} names key {} with kid {}, not the key {kid} you named (the registry's rows disagree with the token): not signed",
            canonical.id,
            expected_label(expected),
            canonical.target.as_ref().map_or("-", |t| t.kid.as_str())
        );
    }
    let shown = show_canonical(&canonical, &bytes, json_out)?;
    let proposal = approve_with(conn, client, &canonical.id, &bytes, &shown)?;
    show(json_out, &proposal, |p| {
        print_proposal(p);
        println!(
            "  another officer checks it and approves with: dojangctl approve {} (it shows digest {shown})",
            text(p, "id")
        );
    })
}

/// The canonical proposal in a daemon's answer, parsed from its bytes.
fn canonical_of(proposal: &Value) -> anyhow::Result<(CanonicalProposal, Vec<u8>)> {
    let bytes = URL_SAFE_NO_PAD
        .decode(text(proposal, "canonical"))
        .context("the daemon's answer has no canonical proposal")?;
    let canonical = CanonicalProposal::parse(&bytes).map_err(anyhow::Error::msg)?;
    Ok((canonical, bytes))
}

/// A character that could make a terminal show something else than the
/// bytes: controls (escape sequences) and bidirectional overrides.
fn deceptive(c: char) -> bool {
    (c.is_control() && c != '\n')
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Refuses a proposal whose fields would not show as they are signed:
/// every string in it, the operation's and the target's included.
fn displayable(c: &CanonicalProposal) -> anyhow::Result<()> {
    fn strings<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
        match v {
            Value::String(s) => out.push(s),
            Value::Array(items) => items.iter().for_each(|i| strings(i, out)),
            Value::Object(map) => map.iter().for_each(|(k, i)| {
                out.push(k);
                strings(i, out);
            }),
            _ => {}
        }
    }
    let value = serde_json::to_value(c)?;
    let mut all = Vec::new();
    strings(&value, &mut all);
    anyhow::ensure!(
        !all.iter().any(|s| s.chars().any(deceptive)),
        "proposal {}: it holds control or bidirectional characters that a terminal would not show as signed: not shown, not signed",
        c.id
    );
    Ok(())
}

/// Prints every field officers sign (on stderr under --json); the digest.
fn show_canonical(c: &CanonicalProposal, bytes: &[u8], json_out: bool) -> anyhow::Result<String> {
    displayable(c)?;
    let digest = digest(bytes);
    let operation = serde_json::to_value(&c.operation).unwrap_or_default();
    let mut lines = vec![
        format!("proposal {}", c.id),
        format!("  operation:  {}", summary(&operation)),
    ];
    if let Operation::EmergencyRevoke { reason, .. } = &c.operation {
        lines.push(format!("  reason:     {reason}"));
    }
    if let Some(t) = &c.target {
        lines.push(format!(
            "  target:     {} (chain {}, kid {})",
            t.label, t.chain, t.kid
        ));
    }
    lines.extend([
        format!("  proposer:   {}", c.proposer),
        format!("  policy:     {}", c.policy_hash),
        format!("  created:    {}", c.created_at),
        format!("  expires:    {}", c.expires_at),
        format!("  signatures: {} needed", c.required),
    ]);
    if let Some(text) = &c.policy_text {
        lines.push("  policy text:".to_owned());
        lines.extend(text.lines().map(|l| format!("    | {l}")));
    }
    lines.push(format!("  digest:     {digest}"));
    let out = lines.join("\n");
    if json_out {
        eprintln!("{out}");
    } else {
        println!("{out}");
    }
    Ok(digest)
}

/// Signs the canonical `bytes` with the officer's token and sends the
/// approval with the digest shown.
fn approve_with(
    conn: &Connection,
    client: &OfficerClient,
    id: &str,
    bytes: &[u8],
    shown: &str,
) -> anyhow::Result<Value> {
    let (_, signature) = conn.token.sign(None, bytes)?;
    client.call(
        "POST",
        &format!("/v1/approvals/{id}/approve"),
        Some(json!({ "digest": shown, "signature": signature })),
    )
}

/// An explicit yes to what was shown: the digest given with `--expect`,
/// or typed on the terminal.
pub(crate) fn confirm(shown: &str, expect: Option<&str>) -> anyhow::Result<()> {
    if let Some(expect) = expect {
        anyhow::ensure!(
            expect.trim().eq_ignore_ascii_case(shown),
            "the proposal's digest is {shown}, not {expect}: it is not what you were asked to approve; nothing signed"
        );
        return Ok(());
    }
    anyhow::ensure!(
        std::io::stdin().is_terminal(),
        "not on a terminal: pass --expect DIGEST (the digest shown above) to approve"
    );
    eprint!("approve exactly this? type the digest's first 8 characters: ");
    let mut typed = String::new();
    let _ = std::io::stdin().read_line(&mut typed)?;
    let typed = typed.trim();
    anyhow::ensure!(
        typed.len() >= 8 && shown.starts_with(&typed.to_ascii_lowercase()),
        "not confirmed: nothing signed"
    );
    Ok(())
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

/// `approve ID` / `reject ID`. An approval reads the proposal, shows every
/// field of the canonical bytes, asks for confirmation (`expect`: the
/// digest, for scripts), signs them with the officer's token and sends the
/// signature with the digest shown.
pub(crate) fn decide(
    conn: &Connection,
    id: &str,
    approve: bool,
    expect: Option<&str>,
    json_out: bool,
) -> anyhow::Result<()> {
    let well_formed = id.len() <= 64
        && id
            .strip_prefix("p-")
            .is_some_and(|hex| hex.bytes().all(|b| b.is_ascii_hexdigit()));
    anyhow::ensure!(well_formed, "{id:?} is not a proposal id (p-…)");
    let client = conn.client()?;
    let proposal = if approve {
        let list = client.call("GET", "/v1/approvals", None)?;
        let listed = list
            .get("proposals")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|p| text(p, "id") == id)
            .with_context(|| format!("no proposal {id} (dojangctl approvals list)"))?;
        let (canonical, bytes) = canonical_of(listed)?;
        anyhow::ensure!(
            canonical.id == id,
            "the daemon showed proposal {} for {id}: not signed",
            canonical.id
        );
        let shown = show_canonical(&canonical, &bytes, json_out)?;
        confirm(&shown, expect)?;
        approve_with(conn, &client, id, &bytes, &shown)?
    } else {
        client.call("POST", &format!("/v1/approvals/{id}/reject"), None)?
    };
    show(json_out, &proposal, print_proposal)
}

/// The body of a revocation.
pub(crate) fn revoke_body(reason: &str) -> Value {
    json!({ "reason": reason })
}
