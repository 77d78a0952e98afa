//! Which invariant a refused write broke, from the database's own report,
//! named the same way on both databases.
//!
//! PostgreSQL names the constraint; SQLite names the indexed columns (for a
//! plain or partial index). Where SQLite's columns stand for two
//! constraints with different rules, its report is ambiguous and maps to no
//! rule: the logic checks those invariants itself inside SQLite's single
//! writer before it writes, so the index only backs the check up.

/// (PostgreSQL constraint, SQLite columns, rule).
const CONSTRAINTS: &[(&str, &str, &str)] = &[
    (
        "one_live_per_holder",
        "credentials.holder",
        "holder.one_active",
    ),
    // Only two issuances for one holder racing each other can reach it:
    // the holder then has a live credential too.
    (
        "one_free_copy_per_holder",
        "credentials.holder",
        "holder.one_active",
    ),
    (
        "one_holder_per_device",
        "credentials.device",
        "device.one_person",
    ),
    (
        "idempotency_pkey",
        "idempotency.client, idempotency.key",
        "idempotency.key",
    ),
    ("signing_keys_pkey", "signing_keys.label", "keys.label"),
    ("one_pending_key", "signing_keys.chain", "keys.one_pending"),
    ("one_active_key", "signing_keys.chain", "keys.one_active"),
];

fn unique(mut rules: impl Iterator<Item = &'static str>) -> Option<&'static str> {
    let first = rules.next()?;
    rules.all(|r| r == first).then_some(first)
}

/// The rule a PostgreSQL unique constraint guards.
pub(crate) fn rule_for_constraint(name: &str) -> Option<&'static str> {
    unique(
        CONSTRAINTS
            .iter()
            .filter(|(constraint, _, _)| *constraint == name)
            .map(|(_, _, rule)| *rule),
    )
}

/// The rule behind SQLite's "UNIQUE constraint failed: <columns>", if the
/// columns name exactly one rule.
pub(crate) fn rule_for_columns(columns: &str) -> Option<&'static str> {
    unique(
        CONSTRAINTS
            .iter()
            .filter(|(_, cols, _)| *cols == columns)
            .map(|(_, _, rule)| *rule),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_databases_name_the_same_rules() {
        assert_eq!(
            rule_for_constraint("one_live_per_holder"),
            rule_for_columns("credentials.holder")
        );
        assert_eq!(
            rule_for_constraint("one_holder_per_device"),
            rule_for_columns("credentials.device")
        );
        assert_eq!(
            rule_for_constraint("idempotency_pkey"),
            rule_for_columns("idempotency.client, idempotency.key")
        );
        assert_eq!(rule_for_columns("signing_keys.label"), Some("keys.label"));
    }

    #[test]
    fn an_ambiguous_or_unknown_report_names_no_rule() {
        assert_eq!(rule_for_columns("signing_keys.chain"), None);
        assert_eq!(
            rule_for_constraint("one_pending_key"),
            Some("keys.one_pending")
        );
        assert_eq!(
            rule_for_columns("credentials.status_list, credentials.status_index"),
            None
        );
        assert_eq!(rule_for_constraint("no_such_constraint"), None);
    }
}
