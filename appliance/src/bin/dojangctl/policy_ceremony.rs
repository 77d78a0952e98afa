//! Adopting the first policy at the key ceremony: no node trusts the
//! policy file it happens to find. Each officer the policy names signs its
//! full text with their token (`policy sign-first`), and one of them
//! records the signatures in the registry (`policy adopt-first`), which
//! checks M distinct pinned officers signed it. Every node then checks the
//! same signatures before running the policy.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use dojang::config::Config;
use dojang::keys::order::{Adoption, FirstPolicy, verify_first};
use dojang::store::{
    DecisionRecord, POLICY_DOCUMENT, policy_adoption_document, policy_text_document,
};
use dojang_policies::Policy;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::officer::confirm;
use crate::officer_token::OfficerToken;

/// One officer's signature over the first policy (the file `sign-first`
/// writes).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FirstSignature {
    policy_sha256: String,
    identity: String,
    signature: String,
}

fn read_policy(file: &Path) -> anyhow::Result<(Policy, String)> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let policy = Policy::parse(&file.display().to_string(), &text)?;
    Ok((policy, text))
}

/// `policy sign-first FILE --out SIG`: shows what is adopted, asks for
/// confirmation (`expect`: the policy's SHA-256), signs with the token.
pub(crate) fn sign_first(
    token: &OfficerToken,
    file: &Path,
    out: &Path,
    expect: Option<&str>,
) -> anyhow::Result<()> {
    let (policy, text) = read_policy(file)?;
    anyhow::ensure!(
        policy.officers().count() >= policy.officers.approvals_required,
        "{} names {} officers but needs {} signatures: enroll the officers first (dojangctl officer enroll)",
        file.display(),
        policy.officers().count(),
        policy.officers.approvals_required
    );
    println!(
        "first policy {} version {}\n  sha256:   {}\n  officers: {}\n  needs {} of their signatures",
        policy.name,
        policy.version,
        policy.hash,
        policy.officers().collect::<Vec<_>>().join(", "),
        policy.officers.approvals_required
    );
    confirm(&policy.hash, expect)?;
    let statement = FirstPolicy::new(&text);
    let (identity, signature) = token.sign(Some(&policy), &statement.bytes())?;
    let identity = identity.context(
        "this token's approval key is not pinned for any officer of this policy: nothing written",
    )?;
    let record = FirstSignature {
        policy_sha256: policy.hash,
        identity: identity.clone(),
        signature,
    };
    std::fs::write(out, serde_json::to_string_pretty(&record)?)
        .with_context(|| format!("writing {}", out.display()))?;
    println!("signed as {identity}: wrote {}", out.display());
    Ok(())
}

/// A registry that already has a policy changes it only by proposal;
/// except one adopted unsigned by an older build (its first start took the
/// file it found), which the ceremony replaces: that policy's hash.
fn unsigned_adoption(registry: &dyn dojang::store::Registry) -> anyhow::Result<Option<String>> {
    match registry.document(POLICY_DOCUMENT)? {
        None => Ok(None),
        Some(adopted)
            if registry
                .document(&policy_adoption_document(&adopted))?
                .is_none() =>
        {
            Ok(Some(adopted))
        }
        Some(adopted) => anyhow::bail!(
            "the registry already has an adopted policy ({adopted}): later policies are proposed (dojangctl policy propose)"
        ),
    }
}

/// The officers' sign-first files for `policy`, by identity.
fn read_signatures(policy: &Policy, files: &[PathBuf]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut signatures = BTreeMap::new();
    for path in files {
        let body =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let sig: FirstSignature = serde_json::from_str(&body)
            .with_context(|| format!("{} is not a sign-first signature", path.display()))?;
        anyhow::ensure!(
            sig.policy_sha256 == policy.hash,
            "{} signs policy {}, not this one ({})",
            path.display(),
            sig.policy_sha256,
            policy.hash
        );
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

/// `policy adopt-first FILE SIG...`: checks the signatures and records the
/// adoption in the configured registry (once: a registry that has a policy
/// changes it only by proposal).
pub(crate) fn adopt_first(
    config: &Config,
    file: &Path,
    signature_files: &[PathBuf],
) -> anyhow::Result<()> {
    let (policy, text) = read_policy(file)?;
    let signatures = read_signatures(&policy, signature_files)?;
    verify_first(&policy, &text, &signatures).map_err(|e| anyhow::anyhow!("not adopted: {e}"))?;
    anyhow::ensure!(
        config.store.is_some(),
        "no [store] in the configuration: the adoption is kept in the registry"
    );
    if let Some(server) = &config.server {
        anyhow::ensure!(
            server.policy_anchor.eq_ignore_ascii_case(&policy.hash),
            "the configuration pins first policy {} (server.policy_anchor), not this one ({})",
            server.policy_anchor,
            policy.hash
        );
    }
    // The adoption's audit entries are sealed like the daemon's.
    let registry = dojang::cli::open_sealed_registry(config, dojang::cli::open_backend(config)?)?;
    let unsigned = unsigned_adoption(registry.as_ref())?;
    let now = OffsetDateTime::now_utc();
    let decision = |action: &str, rule: String| DecisionRecord {
        node: "dojangctl".into(),
        at: now.unix_timestamp(),
        actor: "dojangctl policy adopt-first".into(),
        action: action.into(),
        outcome: "ok".into(),
        rule: Some(rule),
        policy_hash: policy.hash.clone(),
        ..Default::default()
    };
    let signers = signatures.keys().cloned().collect::<Vec<_>>().join(", ");
    let record = serde_json::to_string(&Adoption::First { signatures })?;
    let _ = registry.set_document_if_absent(
        &policy_text_document(&policy.hash),
        &text,
        decision("policy.keep", format!("policy {}: text kept", policy.hash)),
    )?;
    let _ = registry.set_document_if_absent(
        &policy_adoption_document(&policy.hash),
        &record,
        decision(
            "policy.adoption",
            format!("first policy {} signed by {signers}", policy.hash),
        ),
    )?;
    let adopt = decision(
        "policy.adopt",
        match &unsigned {
            None => format!("first policy {}: key ceremony", policy.hash),
            Some(old) => format!(
                "first policy {}: key ceremony, replacing {old}, adopted unsigned by an older build",
                policy.hash
            ),
        },
    );
    if unsigned.is_some() {
        registry.set_document(POLICY_DOCUMENT, &policy.hash, adopt)?;
    } else {
        let stored = registry.set_document_if_absent(POLICY_DOCUMENT, &policy.hash, adopt)?;
        anyhow::ensure!(stored, "another policy was adopted at the same time");
    }
    println!(
        "adopted {} version {} (sha256 {}), signed by {signers}; every node's [server] policy_anchor is this SHA-256",
        policy.name, policy.version, policy.hash
    );
    Ok(())
}
