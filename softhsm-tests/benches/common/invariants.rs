//! After a load run, with the daemon stopped: the registry holds exactly
//! what was answered 201, the free quota moved by exactly the free copies
//! taken, no holder and no phone has two live credentials, and the exported
//! audit log verifies against the audit key.

use softhsm_tests::daemon::{Daemon, AUDIT_ORIGIN};

use super::BenchResult;

/// Where the registry lives.
pub(crate) enum Registry<'a> {
    Sqlite(&'a std::path::Path),
    Postgres(&'a str),
}

/// Counts that must hold after the run.
const QUERIES: [(&str, &str); 4] = [
    ("credentials", "SELECT COUNT(*) FROM credentials"),
    (
        "free copies",
        "SELECT COUNT(*) FROM credentials WHERE free_copy",
    ),
    (
        "holders with two live credentials",
        "SELECT COUNT(*) FROM (SELECT holder FROM credentials WHERE state IN ('active', 'suspended') AND batch_of IS NULL GROUP BY holder HAVING COUNT(*) > 1) AS t",
    ),
    (
        "phones with two live credentials",
        "SELECT COUNT(*) FROM (SELECT device FROM credentials WHERE state IN ('active', 'suspended') GROUP BY device HAVING COUNT(*) > 1) AS t",
    ),
];

fn counts(registry: &Registry<'_>) -> BenchResult<Vec<i64>> {
    match registry {
        Registry::Sqlite(path) => {
            let db = rusqlite::Connection::open(path)?;
            QUERIES
                .iter()
                .map(|(_, sql)| Ok(db.query_row(sql, [], |r| r.get(0))?))
                .collect()
        }
        Registry::Postgres(url) => {
            let mut db = postgres::Client::connect(url, postgres::NoTls)?;
            QUERIES
                .iter()
                .map(|(_, sql)| Ok(db.query_one(*sql, &[])?.get(0)))
                .collect()
        }
    }
}

/// Checks the stopped daemon's registry and audit log; `issued` credentials
/// were answered 201 and the free quota fell by `quota_used`. The audit
/// log's entry count, or what broke.
pub(crate) fn check(
    d: &Daemon,
    registry: &Registry<'_>,
    issued: usize,
    quota_used: f64,
) -> BenchResult<u64> {
    let found = counts(registry)?;
    let expected = [issued as i64, quota_used as i64, 0, 0];
    for (((what, _), found), expected) in QUERIES.iter().zip(&found).zip(expected) {
        if *found != expected {
            return Err(format!("invariant broken: {what}: {found}, expected {expected}").into());
        }
    }
    let (bundle, key) = d.export_audit("load-audit");
    let out = d
        .command("dojangctl")
        .args(["--json", "audit", "verify"])
        .arg(&bundle)
        .arg("--key")
        .arg(&key)
        .args(["--origin", AUDIT_ORIGIN])
        .output()?;
    if !out.status.success() {
        return Err(format!(
            "invariant broken: the audit log does not verify: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let entries = report
        .get("entries")
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0);
    if entries < issued as u64 {
        return Err(
            format!("invariant broken: {entries} audit entries for {issued} issuances").into(),
        );
    }
    Ok(entries)
}
