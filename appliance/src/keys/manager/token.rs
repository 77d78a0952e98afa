//! What the daemon may do to the token's keys on its own, and nothing
//! more. A registry row is not an order: the database can lie, so a row can
//! never make this node remove a key. Private halves leave the token only
//! when this node itself moves a key out of signing (retirement, an
//! officers' destroy order), and only for a key the token confirms is that
//! chain's key with that public key. The IACA and the pseudonym key are never
//! removed by the daemon at all: no chain here has their purpose.

use std::time::{Duration, Instant};

use pkcs11_shim::{KeyInfo, KeyPurpose};

use super::KeyManager;
use crate::keys::lifecycle::KeyState;
use crate::store::{AUDIT_CHAIN, DS_CHAIN, STATUS_CHAIN, StoredKey};

/// How often the token is checked for keys the registry retired.
const RETAINED_CHECK_EVERY: Duration = Duration::from_secs(10);

/// The token purpose of a chain's keys; `None` for anything else.
pub(super) fn chain_purpose(chain: &str) -> Option<KeyPurpose> {
    match chain {
        DS_CHAIN => Some(KeyPurpose::DocumentSigner),
        STATUS_CHAIN => Some(KeyPurpose::StatusList),
        AUDIT_CHAIN => Some(KeyPurpose::Audit),
        _ => None,
    }
}

/// Whether a retired key of `chain` loses its private half at retirement.
/// An audit key keeps it: the first checkpoint of its successor is
/// co-signed by it (the hand-over auditors follow); officers destroy it.
pub(super) fn retires_private_half(chain: &str) -> bool {
    chain != AUDIT_CHAIN
}

/// Whether the token may hold this key's private half, as the registry
/// describes it: signing keys, and retired audit keys (see above). Never a
/// revoked key: a revocation officers ordered removed it at once.
fn may_hold(key: &StoredKey) -> bool {
    if key.record.revoked {
        return false;
    }
    match key.record.state {
        KeyState::Pending | KeyState::Active => true,
        KeyState::Retired => !retires_private_half(&key.chain),
        KeyState::Destroyed => false,
    }
}

/// Whether a row's key was checked against the token's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TokenCheck {
    /// The token answered: the key matches, the token holds none, or it
    /// is not a key of this kind.
    Done,
    /// The token did not answer (lost, every session busy, an error that
    /// is not an answer about the key): worth another look next round.
    Unanswered,
}

impl TokenCheck {
    /// What a failed lookup of a key says about the token.
    pub(super) fn of(error: &pkcs11_shim::Error) -> Self {
        use pkcs11_shim::ErrorClass;
        match error.class() {
            ErrorClass::KeyMissing | ErrorClass::InvalidRequest => TokenCheck::Done,
            _ => TokenCheck::Unanswered,
        }
    }
}

/// Why the token's key is not the one the row describes, if it is not.
fn mismatch(key: &StoredKey, info: &KeyInfo) -> Option<&'static str> {
    let Some(expected) = chain_purpose(&key.chain) else {
        return Some("not_a_chain_key");
    };
    if info.purpose != expected {
        return Some("purpose_mismatch");
    }
    match &info.public_key {
        Some(public) if public.spki_der() == &key.public_key[..] => None,
        _ => Some("public_key_mismatch"),
    }
}

impl KeyManager {
    /// Before a key is made because the registry says nothing signs for
    /// `chain`. A key leaves the token when this node retires or revokes it
    /// on officers' order, or when a successor takes over; so a token that
    /// still holds a key of the chain's purpose (other than a retired audit
    /// key, kept to co-sign) means the rows were written, deleted or
    /// renamed by someone else, or a node stopped half-way. No key is made
    /// on their word (officers decide); refused, counted. A scheduled
    /// rotation (a key still signs) is not a gap.
    pub(super) fn refuse_unexplained_gap(
        &self,
        keys: &[StoredKey],
        chain: &str,
    ) -> Result<(), String> {
        let of_chain = || keys.iter().filter(|k| k.chain == chain);
        if of_chain().any(|k| {
            !k.record.revoked && matches!(k.record.state, KeyState::Pending | KeyState::Active)
        }) {
            return Ok(());
        }
        let Some(purpose) = chain_purpose(chain) else {
            return Ok(());
        };
        let kept_to_cosign: Vec<&str> = of_chain()
            .filter(|k| may_hold(k))
            .map(|k| k.record.label.as_str())
            .collect();
        let held: Vec<String> = self
            .node
            .backend
            .list()
            .map_err(|e| format!("listing the token: {e}"))?
            .into_iter()
            .filter(|k| k.purpose == purpose && !kept_to_cosign.contains(&k.label.as_str()))
            .map(|k| k.label)
            .collect();
        if held.is_empty() {
            return Ok(());
        }
        self.node
            .metrics
            .order_refused("generate", "token_holds_chain_key");
        Err(format!(
            "the registry says no {chain} key signs, yet the token still holds {held:?}: no key is made on the registry's word (officers decide)"
        ))
    }

    /// A pending key takes over only if the token's key under its label is
    /// the chain key the row describes; a forged row is refused, counted and
    /// audited.
    pub(super) fn refuse_forged_activation(
        &self,
        key: &StoredKey,
        info: &KeyInfo,
        now: time::OffsetDateTime,
    ) -> Result<(), String> {
        let Some(reason) = mismatch(key, info) else {
            return Ok(());
        };
        let label = &key.record.label;
        self.node.metrics.order_refused("activate", reason);
        let mut decision = self.key_decision("keys.activate", "refused", label, &key.kid, now);
        decision.rule = Some(format!(
            "keys.verified_order: key {label}: the token's key under this label is not the {} key the registry describes ({reason})",
            key.chain
        ));
        if let Err(e) = self.node.registry.record(decision, None) {
            tracing::warn!(error = %e, "recording a refused activation");
        }
        Err(format!(
            "{label}: the token's key is not the {} key the registry describes ({reason}); not activated",
            key.chain
        ))
    }

    /// A status-list or audit row whose label names a token key of another
    /// purpose or another public key does not sign: a forged row must not
    /// make the IACA, the pseudonym key or another chain's key sign this
    /// chain's objects. (DS signers check the same against their
    /// certificate.) A token that does not answer now is not a forgery:
    /// signing reports it, and the view is built again once it answers.
    pub(super) fn refuse_forged_signer(&self, key: &StoredKey) -> Result<TokenCheck, String> {
        let label = &key.record.label;
        let info = match self.node.backend.find(label) {
            Ok(info) => info,
            Err(e) => return Ok(TokenCheck::of(&e)),
        };
        match mismatch(key, &info) {
            None => Ok(TokenCheck::Done),
            Some(reason) => {
                self.node.metrics.order_refused("sign", reason);
                tracing::error!(%label, chain = %key.chain, reason, "a registry row names a token key it does not describe: it does not sign");
                Err(format!(
                    "{} key {label}: the token's key under this label is not the one the registry describes ({reason}); it does not sign",
                    key.chain
                ))
            }
        }
    }

    /// Removes the private half of `key`, which this node has just moved
    /// out of signing. A key the token does not hold is already gone; one
    /// that is not the chain key the row describes (another purpose, another
    /// public key: a forged row) is refused, logged and counted, and stays.
    // The key lifecycle is where keys leave the token, after the registry records it.
    #[allow(clippy::disallowed_methods)]
    pub(super) fn destroy_private_half(&self, key: &StoredKey, order: &str) -> Result<(), String> {
        let label = &key.record.label;
        let info = match self.node.backend.find(label) {
            Ok(info) => info,
            Err(pkcs11_shim::Error::KeyNotFound { .. }) => return Ok(()),
            Err(e) => return Err(format!("{label}: the token did not answer: {e}")),
        };
        if let Some(reason) = mismatch(key, &info) {
            self.node.metrics.order_refused(order, reason);
            tracing::error!(%label, chain = %key.chain, reason, "refused to remove a key the registry row does not describe");
            return Err(format!(
                "{label}: the token's key is not the {} key the registry describes ({reason}); left in the token",
                key.chain
            ));
        }
        self.wait_for_signers(label);
        self.node.backend.destroy(label).or_else(|e| match e {
            pkcs11_shim::Error::KeyNotFound { .. } => Ok(()),
            e => Err(format!("{label}: the token refused to destroy it: {e}")),
        })?;
        tracing::info!(%label, order, "private half removed from the token");
        Ok(())
    }

    /// Checks the token against the registry's retired and destroyed
    /// keys. A key whose private half the token still holds is counted (a
    /// metric, a warning: officers destroy it); a row whose label names a
    /// token key of another chain or another public key is a forged row,
    /// counted as a refused order. Either finding is audited when it
    /// changes. Nothing is ever removed here: a row is not an order.
    pub fn check_token_against_registry(&self, now: time::OffsetDateTime) {
        if let Ok(mut last) = self.last_token_check.lock() {
            if last.is_some_and(|at| at.elapsed() < RETAINED_CHECK_EVERY) {
                return;
            }
            *last = Some(Instant::now());
        }
        let Ok(keys) = self.node.registry.keys() else {
            return;
        };
        let mut found = TokenReport::default();
        for key in keys.iter().filter(|k| !may_hold(k)) {
            let Ok(info) = self.node.backend.find(&key.record.label) else {
                continue;
            };
            let label = key.record.label.clone();
            match mismatch(key, &info) {
                None => found.retained.push(label),
                Some(reason) => found.forged.push((label, reason)),
            }
        }
        self.node
            .metrics
            .keys_retained_in_token
            .set(i64::try_from(found.retained.len()).unwrap_or(i64::MAX));
        let Ok(mut report) = self.token_report.lock() else {
            return;
        };
        if *report == found {
            return;
        }
        for (label, reason) in found.forged.iter().filter(|f| !report.forged.contains(f)) {
            self.node.metrics.order_refused("reconcile", reason);
            tracing::error!(%label, reason, "a registry row names a token key it does not describe: left alone");
        }
        if !found.retained.is_empty() {
            tracing::warn!(keys = ?found.retained, "the token still holds keys the registry retired or destroyed; check the audit log for who changed them (docs/operations.md)");
        }
        self.record_token_report(&found, now);
        *report = found;
    }

    fn record_token_report(&self, found: &TokenReport, now: time::OffsetDateTime) {
        let forged: Vec<String> = found
            .forged
            .iter()
            .map(|(label, reason)| format!("{label} ({reason})"))
            .collect();
        let mut decision = self.node.decision(
            "dojangd",
            "keys.reconcile",
            if found.forged.is_empty() {
                "ok"
            } else {
                "refused"
            },
            &self.policy.current().hash,
            now,
        );
        decision.rule = Some(format!(
            "keys.verified_order: nothing removed on a row's word; retired or destroyed but still in the token: [{}]; rows not describing the token's key: [{}]",
            found.retained.join(", "),
            forged.join(", ")
        ));
        if let Err(e) = self.node.registry.record(decision, None) {
            tracing::warn!(error = %e, "recording the token check");
        }
    }
}

/// What the last check of the token against the registry found.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct TokenReport {
    /// Retired or destroyed keys whose private half the token still holds.
    retained: Vec<String>,
    /// Rows naming a token key they do not describe, and why.
    forged: Vec<(String, &'static str)>,
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use pkcs11_shim::Error;

    use super::TokenCheck;

    #[test]
    fn only_an_answer_about_the_key_ends_the_look() {
        let answered = [
            Error::KeyNotFound {
                label: "ds-1".into(),
            },
            Error::InvalidInput("label".into()),
        ];
        for e in &answered {
            assert_eq!(TokenCheck::of(e), TokenCheck::Done, "{e}");
        }
        // Lost, busy, or a failure that says nothing about the key: the
        // view looks again next round.
        let unanswered = [
            Error::Unavailable {
                reason: "no token".into(),
                retry_after: Duration::from_millis(200),
            },
            Error::Busy {
                pool_size: 4,
                waited: Duration::from_secs(1),
            },
            Error::TokenNotFound {
                selector: "label \"dojangd\"".into(),
                seen: "none".into(),
            },
        ];
        for e in &unanswered {
            assert_eq!(TokenCheck::of(e), TokenCheck::Unanswered, "{e}");
        }
    }
}
