//! The life of a signing key: **pending** (published, not yet signing) →
//! **active** (signing) → **retired** (published, no longer signing) →
//! **destroyed** (gone from the token and from publication).
//!
//! [`plan`] looks at a profile's keys, the rotation rules and the time, and
//! says what to do now. It is a function of its inputs, so every node of a
//! cluster computes the same plan; the store decides which node acts.

use time::{Duration, OffsetDateTime};

/// Where a key is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum KeyState {
    /// Generated and published; signs from `activate_at`.
    Pending,
    /// Signs.
    Active,
    /// Published until what it signed has expired; signs no more.
    Retired,
    /// Gone.
    Destroyed,
}

impl KeyState {
    /// Its name in the registry and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Pending => "pending",
            KeyState::Active => "active",
            KeyState::Retired => "retired",
            KeyState::Destroyed => "destroyed",
        }
    }

    /// The state named `text`.
    pub fn parse(text: &str) -> Option<Self> {
        [
            KeyState::Pending,
            KeyState::Active,
            KeyState::Retired,
            KeyState::Destroyed,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }
}

/// What the registry knows about one key of a profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    /// The key's label in the token.
    pub label: String,
    /// Its state.
    pub state: KeyState,
    /// When it was created.
    pub created_at: OffsetDateTime,
    /// When it starts (or started) signing.
    pub activate_at: OffsetDateTime,
    /// Its DS certificate's notAfter.
    pub cert_not_after: OffsetDateTime,
    /// Signatures made so far.
    pub signatures: u64,
    /// The latest `valid_until` of anything it signed.
    pub last_signature_valid_until: Option<OffsetDateTime>,
    /// Emergency-revoked (its certificate is on the CRL).
    pub revoked: bool,
}

/// The rotation rules of a profile (from the policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RotationRules {
    /// Rotate after this long active.
    pub every: Duration,
    /// Rotate after this many signatures.
    pub max_signatures: u64,
    /// Publish a new key this long before it signs.
    pub prepublish: Duration,
    /// Rotate when the certificate has less than this left (the longest
    /// signature validity: a signature must not outlive its certificate).
    pub min_cert_remaining: Duration,
    /// Keep a retired key published this long after its last signature expires.
    pub retention_margin: Duration,
}

/// What to do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Generate a key (and certificate) to activate at `activate_at`.
    GeneratePending {
        /// When it should start signing.
        activate_at: OffsetDateTime,
        /// Why.
        reason: &'static str,
    },
    /// Make this pending key the signer (and retire the current one).
    Activate {
        /// The key.
        label: String,
    },
    /// Stop signing with this key now (no successor due yet: emergency).
    Retire {
        /// The key.
        label: String,
        /// Why.
        reason: &'static str,
    },
    /// Destroy this retired key: nothing it signed is valid any more.
    Destroy {
        /// The key.
        label: String,
    },
}

fn rotation_due(
    key: &KeyRecord,
    rules: &RotationRules,
    now: OffsetDateTime,
) -> Option<&'static str> {
    if key.signatures >= rules.max_signatures {
        Some("usage limit reached")
    } else if key.cert_not_after - now <= rules.min_cert_remaining {
        Some("certificate ending")
    } else if now - key.activate_at >= rules.every {
        Some("scheduled rotation")
    } else {
        None
    }
}

/// What to do now for one profile's keys.
pub fn plan(keys: &[KeyRecord], rules: &RotationRules, now: OffsetDateTime) -> Vec<Action> {
    let mut actions = Vec::new();
    let active = keys
        .iter()
        .filter(|k| k.state == KeyState::Active)
        .max_by_key(|k| k.activate_at);
    let pending = keys
        .iter()
        .filter(|k| k.state == KeyState::Pending && !k.revoked)
        .min_by_key(|k| k.activate_at);

    // A revoked key stops signing at once, successor or not.
    for key in keys
        .iter()
        .filter(|k| k.revoked && matches!(k.state, KeyState::Active | KeyState::Pending))
    {
        actions.push(Action::Retire {
            label: key.label.clone(),
            reason: "emergency revocation",
        });
    }
    let active = active.filter(|k| !k.revoked);

    match (active, pending) {
        // A pending key whose time has come takes over.
        (_, Some(next)) if next.activate_at <= now => {
            actions.push(Action::Activate {
                label: next.label.clone(),
            });
        }
        // Nothing signs (the active key was revoked or retired) but a
        // successor is published: it signs now rather than at its time.
        (None, Some(next)) => actions.push(Action::Activate {
            label: next.label.clone(),
        }),
        // Nothing signs: get a key, to sign at once.
        (None, None) => actions.push(Action::GeneratePending {
            activate_at: now,
            reason: "no active key",
        }),
        // The active key is due (or will be within the prepublication
        // period) and no successor is lined up: line one up.
        (Some(current), None) => {
            let soon = now + rules.prepublish;
            if let Some(reason) = rotation_due(current, rules, soon) {
                let due_now = rotation_due(current, rules, now).is_some();
                actions.push(Action::GeneratePending {
                    activate_at: if due_now { now } else { soon },
                    reason,
                });
            }
        }
        _ => {}
    }

    for key in keys.iter().filter(|k| k.state == KeyState::Retired) {
        // Unknown expiry of what it signed: keep it (a published key too
        // many costs nothing; a missing one fails verifications).
        let Some(last) = key.last_signature_valid_until else {
            continue;
        };
        if now >= last + rules.retention_margin {
            actions.push(Action::Destroy {
                label: key.label.clone(),
            });
        }
    }
    actions
}

/// Whether `from → to` is a step of the lifecycle.
pub fn allowed(from: KeyState, to: KeyState) -> bool {
    use KeyState::*;
    matches!(
        (from, to),
        (Pending, Active)
            | (Pending, Retired)
            | (Active, Retired)
            | (Retired, Destroyed)
            | (Pending, Destroyed)
    )
}

impl KeyRecord {
    /// Whether verifiers must find this key: pending (before it signs),
    /// active, or retired (until what it signed expires); never a destroyed
    /// or revoked one (a revoked DS certificate is on the CRL instead).
    pub fn is_published(&self) -> bool {
        self.state != KeyState::Destroyed && !self.revoked
    }
}

/// The keys verifiers must be able to find ([`KeyRecord::is_published`]).
pub fn published(keys: &[KeyRecord]) -> Vec<&KeyRecord> {
    keys.iter().filter(|k| k.is_published()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2027-01-10 00:00 UTC);

    fn rules() -> RotationRules {
        RotationRules {
            every: Duration::days(90),
            max_signatures: 1_000_000,
            prepublish: Duration::days(7),
            min_cert_remaining: Duration::days(90),
            retention_margin: Duration::days(30),
        }
    }

    fn key(label: &str, state: KeyState, activate_at: OffsetDateTime) -> KeyRecord {
        KeyRecord {
            label: label.into(),
            state,
            created_at: activate_at - Duration::days(7),
            activate_at,
            cert_not_after: activate_at + Duration::days(365),
            signatures: 0,
            last_signature_valid_until: None,
            revoked: false,
        }
    }

    #[test]
    fn nothing_to_do_while_the_active_key_is_young() {
        let keys = [key("ds-1", KeyState::Active, NOW - Duration::days(10))];
        assert!(plan(&keys, &rules(), NOW).is_empty());
    }

    #[test]
    fn a_successor_is_prepublished_before_the_schedule_point() {
        // Active for 85 days: due in 5, within the 7-day prepublication.
        let keys = [key("ds-1", KeyState::Active, NOW - Duration::days(85))];
        assert_eq!(
            plan(&keys, &rules(), NOW),
            vec![Action::GeneratePending {
                activate_at: NOW + Duration::days(7),
                reason: "scheduled rotation"
            }]
        );
        // Once generated, nothing more until its activation time…
        let mut keys = vec![
            keys[0].clone(),
            key("ds-2", KeyState::Pending, NOW + Duration::days(7)),
        ];
        assert!(plan(&keys, &rules(), NOW).is_empty());
        // …then it takes over.
        assert_eq!(
            plan(&keys, &rules(), NOW + Duration::days(7)),
            vec![Action::Activate {
                label: "ds-2".into()
            }]
        );
        keys[1].state = KeyState::Active;
        keys[0].state = KeyState::Retired;
        assert!(plan(&keys, &rules(), NOW + Duration::days(8)).is_empty());
    }

    #[test]
    fn usage_limits_and_ending_certificates_rotate_at_once() {
        let mut k = key("ds-1", KeyState::Active, NOW - Duration::days(1));
        k.signatures = 1_000_000;
        assert_eq!(
            plan(&[k.clone()], &rules(), NOW),
            vec![Action::GeneratePending {
                activate_at: NOW,
                reason: "usage limit reached"
            }]
        );
        k.signatures = 0;
        k.cert_not_after = NOW + Duration::days(60);
        assert_eq!(
            plan(&[k], &rules(), NOW),
            vec![Action::GeneratePending {
                activate_at: NOW,
                reason: "certificate ending"
            }]
        );
    }

    #[test]
    fn emergency_revocation_stops_signing_even_without_a_successor() {
        let mut k = key("ds-1", KeyState::Active, NOW - Duration::days(1));
        k.revoked = true;
        let actions = plan(&[k], &rules(), NOW);
        assert_eq!(
            actions,
            vec![
                Action::Retire {
                    label: "ds-1".into(),
                    reason: "emergency revocation"
                },
                Action::GeneratePending {
                    activate_at: NOW,
                    reason: "no active key"
                },
            ]
        );
    }

    #[test]
    fn a_published_successor_takes_over_at_once_when_nothing_signs() {
        let mut k = key("ds-1", KeyState::Active, NOW - Duration::days(80));
        k.revoked = true;
        let next = key("ds-2", KeyState::Pending, NOW + Duration::days(5));
        assert_eq!(
            plan(&[k, next], &rules(), NOW),
            vec![
                Action::Retire {
                    label: "ds-1".into(),
                    reason: "emergency revocation"
                },
                Action::Activate {
                    label: "ds-2".into()
                },
            ]
        );
    }

    #[test]
    fn retired_keys_are_destroyed_only_after_what_they_signed_expired() {
        let mut k = key("ds-0", KeyState::Retired, NOW - Duration::days(400));
        k.last_signature_valid_until = Some(NOW - Duration::days(29));
        let active = key("ds-1", KeyState::Active, NOW - Duration::days(1));
        assert!(plan(&[k.clone(), active.clone()], &rules(), NOW).is_empty());
        k.last_signature_valid_until = Some(NOW - Duration::days(30));
        assert_eq!(
            plan(&[k.clone(), active.clone()], &rules(), NOW),
            vec![Action::Destroy {
                label: "ds-0".into()
            }]
        );
        k.state = KeyState::Destroyed;
        assert_eq!(published(&[k, active]).len(), 1);
    }

    #[test]
    fn the_lifecycle_only_moves_forward() {
        use KeyState::*;
        assert!(
            allowed(Pending, Active) && allowed(Active, Retired) && allowed(Retired, Destroyed)
        );
        assert!(
            !allowed(Retired, Active) && !allowed(Destroyed, Pending) && !allowed(Active, Pending)
        );
        assert!(
            !allowed(Active, Destroyed),
            "a signing key is retired before it is destroyed"
        );
    }
}
