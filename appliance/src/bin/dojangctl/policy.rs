//! `policy …`: checks a policy file (`check`), evaluates one issuance
//! request against it and prints the rule trace (`explain`), restores the
//! adopted policy's text from the registry (`adopted`), and proposes
//! adopting a file (`propose`, sent through [`crate::officer`]). Owns the
//! subcommands' arguments and their output.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use dojang::config::Config;
use dojang_policies::calendar::seoul_date;
use dojang_policies::{IssuanceRequest, Outcome, Policy, RegistryFacts, Role};
use serde_json::json;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::officer::{self, Connection};
use crate::policy_ceremony;

#[derive(Subcommand)]
pub(crate) enum PolicyCommand {
    /// Validate a policy file (strict: unknown keys are refused with their line).
    Check {
        /// The policy file.
        file: PathBuf,
    },
    /// Propose adopting a policy file (over --api), signed with the
    /// officer's token: once enough officers approve, every node loads it
    /// when its file has this SHA-256.
    Propose {
        /// The policy file (checked first; its full text is proposed).
        file: PathBuf,
    },
    /// Key ceremony: sign the first policy with the officer's token (each
    /// officer it names, until enough have).
    SignFirst {
        /// The policy file.
        file: PathBuf,
        /// Where the signature is written.
        #[arg(long)]
        out: PathBuf,
        /// Sign only if the file's SHA-256 is this one (for scripts).
        #[arg(long)]
        expect: Option<String>,
    },
    /// Key ceremony: record the first policy as adopted in the configured
    /// registry, with the officers' signatures (checked: M of its officers).
    AdoptFirst {
        /// The policy file.
        file: PathBuf,
        /// The officers' signature files (from sign-first).
        #[arg(required = true)]
        signatures: Vec<PathBuf>,
    },
    /// Print (or write with --out) the adopted policy's text, from the
    /// registry in the configuration: to restore a node's policy file.
    Adopted {
        /// Write it to this file instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Evaluate one issuance request against a policy and print the rule trace.
    Explain(ExplainArgs),
}

// The subcommand's help text is its variant's doc comment in `PolicyCommand`.
#[derive(clap::Args)]
pub(crate) struct ExplainArgs {
    /// The policy file.
    file: PathBuf,
    /// Client identity [default: the policy's first issuer].
    #[arg(long)]
    client: Option<String>,
    /// Profile [default: the client's first].
    #[arg(long)]
    profile: Option<String>,
    /// Holder's birth date (YYYY-MM-DD).
    #[arg(long, default_value = "2000-05-15")]
    birth_date: String,
    /// Channel [default: the policy's first].
    #[arg(long)]
    channel: Option<String>,
    /// Administrative district code of the office.
    #[arg(long, default_value = "1111000000")]
    municipality: String,
    /// The holder's first ID application.
    #[arg(long)]
    first_time: bool,
    /// The number is a foreign registration number.
    #[arg(long)]
    foreigner: bool,
    /// The holder presents no physical card.
    #[arg(long)]
    no_card: bool,
    /// The holder already has an ID: active on this "same" phone or an
    /// "other" one, or "suspended".
    #[arg(long, value_parser = ["same", "other", "suspended"])]
    active: Option<String>,
    /// The phone already holds another person's ID.
    #[arg(long)]
    device_taken: bool,
    /// Free copies already issued.
    #[arg(long, default_value_t = 0)]
    free_issued: u64,
    /// Evaluate as of this instant (RFC 3339) [default: now].
    #[arg(long)]
    at: Option<String>,
}

/// `policy …`: `propose` goes to the daemon, `adopted` loads the
/// configuration (only then), `check` and `explain` read only the file.
pub(crate) fn run(
    command: PolicyCommand,
    conn: &Connection,
    load: impl FnOnce() -> anyhow::Result<Config>,
    as_json: bool,
) -> anyhow::Result<()> {
    match command {
        PolicyCommand::Propose { file } => {
            let policy = load_policy(&file)?;
            let text = std::fs::read_to_string(&file)?;
            officer::propose_policy(conn, &policy.hash, &text, as_json)
        }
        PolicyCommand::SignFirst { file, out, expect } => {
            policy_ceremony::sign_first(&conn.token, &file, &out, expect.as_deref())
        }
        PolicyCommand::AdoptFirst { file, signatures } => {
            policy_ceremony::adopt_first(&load()?, &file, &signatures)
        }
        PolicyCommand::Adopted { out } => adopted(&load()?, out, as_json),
        PolicyCommand::Check { file } => check(&file, as_json),
        PolicyCommand::Explain(args) => explain(args, as_json),
    }
}

fn load_policy(file: &std::path::Path) -> anyhow::Result<Policy> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    Ok(Policy::parse(&file.display().to_string(), &text)?)
}

/// The adopted policy's text, checked against the adopted hash.
fn adopted(config: &Config, out: Option<PathBuf>, as_json: bool) -> anyhow::Result<()> {
    if config.store.is_none() {
        anyhow::bail!(
            "no [store] in the configuration: the adopted policy is kept in the registry"
        );
    }
    let anchor = config
        .server
        .as_ref()
        .map(|s| s.policy_anchor.clone())
        .context(
            "no [server] in the configuration: its policy_anchor checks who adopted the policy",
        )?;
    let registry = dojang::cli::open_registry(config)?;
    // Restored only if officers adopted it (down to the ceremony's first
    // policy): a row naming a policy is not enough to write a node's file.
    let (policy, text, _) = dojang::policy::adopted_policy(registry.as_ref(), &anchor)
        .map_err(|e| anyhow::anyhow!("{e}: not restored"))?;
    let hash = policy.hash.clone();
    match &out {
        Some(path) => {
            std::fs::write(path, &text).with_context(|| format!("writing {}", path.display()))?
        }
        None if !as_json => print!("{text}"),
        None => {}
    }
    if as_json {
        println!(
            "{}",
            json!({"sha256": hash, "name": policy.name, "version": policy.version,
                   "written": out.as_ref().map(|p| p.display().to_string()),
                   "text": out.is_none().then_some(&text)})
        );
    } else if let Some(path) = &out {
        println!(
            "wrote {}: {} version {}, sha256 {hash}",
            path.display(),
            policy.name,
            policy.version
        );
    }
    Ok(())
}

/// `policy check FILE`.
fn check(file: &std::path::Path, as_json: bool) -> anyhow::Result<()> {
    let p = load_policy(file)?;
    let pilot = if p.pilot.enabled {
        format!(
            "on, {} to {}, {} municipalities",
            p.pilot.first_day,
            p.pilot.last_day,
            p.pilot.municipalities.len()
        )
    } else {
        "off".into()
    };
    if as_json {
        println!(
            "{}",
            json!({"valid": true, "name": p.name, "version": p.version, "sha256": p.hash,
                   "pilot_enabled": p.pilot.enabled, "clients": p.clients.len()})
        );
    } else {
        println!("{}: valid", file.display());
        println!("  {} version {}  sha256 {}", p.name, p.version, p.hash);
        println!(
            "  minimum age {}, document {} years, free copies {}, pilot {pilot}, {} clients",
            p.minimum_age,
            p.validity_years,
            p.free_quota,
            p.clients.len()
        );
        if p.pilot.enabled && p.pilot.municipalities.len() != 9 {
            println!(
                "  note: the programme names nine pilot municipalities; this file lists {}",
                p.pilot.municipalities.len()
            );
        }
    }
    Ok(())
}

/// `policy explain FILE …`: prints the decision and its trace; a denial
/// exits with status 3.
fn explain(args: ExplainArgs, as_json: bool) -> anyhow::Result<()> {
    let p = load_policy(&args.file)?;
    let client = args
        .client
        .or_else(|| {
            p.clients
                .iter()
                .find(|c| c.roles.contains(&Role::Issuer))
                .map(|c| c.identity.clone())
        })
        .context("the policy has no issuer client; pass --client")?;
    let profile = args
        .profile
        .or_else(|| p.client(&client).and_then(|c| c.profiles.first().cloned()))
        .or_else(|| p.profiles.keys().next().cloned())
        .context("no profile; pass --profile")?;
    let channel = args
        .channel
        .or_else(|| p.channels.keys().next().cloned())
        .context("no channel; pass --channel")?;
    let birth = time::Date::parse(
        &args.birth_date,
        time::macros::format_description!("[year]-[month]-[day]"),
    )
    .with_context(|| format!("--birth-date {:?} is not YYYY-MM-DD", args.birth_date))?;
    let now = match &args.at {
        Some(at) => OffsetDateTime::parse(at, &Rfc3339)
            .with_context(|| format!("--at {at:?} is not RFC 3339"))?,
        None => OffsetDateTime::now_utc(),
    };
    let request = IssuanceRequest {
        profile,
        channel,
        municipality: args.municipality,
        first_time: args.first_time,
        birth_date: birth,
        citizen: !args.foreigner,
        card_issue_date: (!args.no_card)
            .then(|| seoul_date(now).min(birth.max(time::macros::date!(2020 - 01 - 01)))),
        card_serial: (!args.no_card).then(|| "SAMPLE-0001".to_owned()),
    };
    let facts = registry_facts(args.active.as_deref(), args.device_taken, args.free_issued);
    let decision = p.evaluate_issuance(&client, &request, &facts, now);
    print_decision(&decision, as_json);
    if matches!(decision.outcome, Outcome::Deny(_)) {
        std::process::exit(3);
    }
    Ok(())
}

/// What the registry would say about the holder and the phone, from
/// `--active`, `--device-taken` and `--free-issued`.
fn registry_facts(active: Option<&str>, device_taken: bool, free_issued: u64) -> RegistryFacts {
    RegistryFacts {
        holder_active_on_same_device: match active {
            Some("same") => Some(true),
            Some("other") => Some(false),
            _ => None,
        },
        holder_suspended: active == Some("suspended"),
        device_bound_to_other_holder: device_taken,
        free_copies_issued: free_issued,
        client_requests_this_minute: 0,
        holder_held_before: active.is_some(),
    }
}

fn print_decision(decision: &dojang_policies::Decision, as_json: bool) {
    let trace: Vec<_> = decision
        .trace
        .iter()
        .map(|r| json!({"rule": r.rule, "passed": r.passed, "detail": r.detail}))
        .collect();
    let outcome = match &decision.outcome {
        Outcome::Allow(o) => {
            json!({"allow": true, "fee_krw": o.fee_krw, "use_free_copy": o.use_free_copy,
            "issue_date": o.issue_date.to_string(), "expiry_date": o.expiry_date.to_string(),
            "supersede_previous": o.supersede_previous})
        }
        Outcome::Deny(d) => {
            json!({"allow": false, "rule": d.rule, "reason": d.reason, "kind": format!("{:?}", d.kind)})
        }
    };
    if as_json {
        println!(
            "{}",
            json!({"outcome": outcome, "trace": trace, "policy_version": decision.policy_version,
                   "policy_sha256": decision.policy_hash})
        );
        return;
    }
    for r in &decision.trace {
        println!(
            "{} {:<22} {}",
            if r.passed { "pass" } else { "DENY" },
            r.rule,
            r.detail
        );
    }
    match &decision.outcome {
        Outcome::Allow(o) => println!(
            "=> allow: fee {} KRW{}, document {} to {}{}",
            o.fee_krw,
            if o.use_free_copy {
                " (free first-time copy)"
            } else {
                ""
            },
            o.issue_date,
            o.expiry_date,
            if o.supersede_previous {
                ", supersedes the ID on the previous phone"
            } else {
                ""
            }
        ),
        Outcome::Deny(d) => println!("=> deny by {}: {}", d.rule, d.reason),
    }
    println!(
        "   policy {} sha256 {}",
        decision.policy_version, decision.policy_hash
    );
}
