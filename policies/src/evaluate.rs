//! Pure evaluation: (client identity, request, registry facts, now) →
//! a decision with the trace of every rule it ran. No I/O, no clock.

use time::{Date, OffsetDateTime};

use crate::calendar::{age_on, seoul_date};
use crate::policy::{ChannelRule, Policy, Role};

/// What a client asks for, as far as the policy is concerned. Holder data
/// arrives already reduced to what the rules need: no name, no number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuanceRequest {
    /// Profile name (a key of `[profiles]`).
    pub profile: String,
    /// Channel name (a key of `[channels]`).
    pub channel: String,
    /// Administrative district code of the issuing office.
    pub municipality: String,
    /// The holder says this is their first ID application.
    pub first_time: bool,
    /// Birth date, from the resident number.
    pub birth_date: Date,
    /// Whether the resident number is a citizen's.
    pub citizen: bool,
    /// Issue date of the physical card presented.
    pub card_issue_date: Option<Date>,
    /// Serial of the physical card presented.
    pub card_serial: Option<String>,
}

/// What the registry knows, read before the decision (the store enforces
/// the same invariants again, atomically, when it records the result).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistryFacts {
    /// The holder's active credential, if any: is it on this same phone?
    pub holder_active_on_same_device: Option<bool>,
    /// The holder's credential is suspended.
    pub holder_suspended: bool,
    /// The phone holds an active credential of another person.
    pub device_bound_to_other_holder: bool,
    /// Free copies issued so far, across all nodes.
    pub free_copies_issued: u64,
    /// The registry holds an earlier mobile ID of this holder (any state):
    /// the holder's application is not a first one.
    pub holder_held_before: bool,
    /// Requests from this client in the current minute.
    pub client_requests_this_minute: u32,
}

/// What an allowed issuance must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Obligations {
    /// Fee to charge, KRW.
    pub fee_krw: u32,
    /// Take one of the free first-time copies (the store checks the count).
    pub use_free_copy: bool,
    /// Issue date of the document (Seoul).
    pub issue_date: Date,
    /// Last valid day of the document.
    pub expiry_date: Date,
    /// Revoke the holder's credential on their previous phone.
    pub supersede_previous: bool,
}

/// A rule that refused, with its stable id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// Stable rule id, e.g. `holder.minimum_age`.
    pub rule: &'static str,
    /// Why, in words; never personal data.
    pub reason: String,
    /// What kind of refusal (maps to an HTTP status at the boundary).
    pub kind: DenialKind,
}

/// Kinds of refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenialKind {
    /// The client may not do this (403).
    Forbidden,
    /// The request breaks the programme's rules (422).
    Policy,
    /// It conflicts with the registry (409): already issued, phone taken.
    Conflict,
    /// Too many requests (429).
    RateLimited,
}

/// One rule's result, for the trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleResult {
    /// Stable rule id.
    pub rule: &'static str,
    /// Passed?
    pub passed: bool,
    /// What it found.
    pub detail: String,
}

/// The outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Issue, with these obligations.
    Allow(Obligations),
    /// Refuse.
    Deny(Denial),
}

/// A decision with its trace and the policy that made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Allow or deny.
    pub outcome: Outcome,
    /// Every rule evaluated, in order, up to the first refusal.
    pub trace: Vec<RuleResult>,
    /// The policy's version.
    pub policy_version: String,
    /// The policy's SHA-256 (hex).
    pub policy_hash: String,
}

struct Evaluation {
    trace: Vec<RuleResult>,
}

impl Evaluation {
    fn check(
        &mut self,
        rule: &'static str,
        passed: bool,
        detail: String,
        kind: DenialKind,
    ) -> Result<(), Denial> {
        self.trace.push(RuleResult {
            rule,
            passed,
            detail: detail.clone(),
        });
        if passed {
            Ok(())
        } else {
            Err(Denial {
                rule,
                reason: detail,
                kind,
            })
        }
    }
}

impl Policy {
    /// Decides an issuance request from `client` at `now`.
    pub fn evaluate_issuance(
        &self,
        client: &str,
        request: &IssuanceRequest,
        facts: &RegistryFacts,
        now: OffsetDateTime,
    ) -> Decision {
        let mut eval = Evaluation { trace: Vec::new() };
        let outcome = match self.run(&mut eval, client, request, facts, now) {
            Ok(obligations) => Outcome::Allow(obligations),
            Err(denial) => Outcome::Deny(denial),
        };
        Decision {
            outcome,
            trace: eval.trace,
            policy_version: self.version.clone(),
            policy_hash: self.hash.clone(),
        }
    }

    /// Runs every rule group in order; the first refusal ends the run.
    fn run(
        &self,
        eval: &mut Evaluation,
        client: &str,
        request: &IssuanceRequest,
        facts: &RegistryFacts,
        now: OffsetDateTime,
    ) -> Result<Obligations, Denial> {
        let today = seoul_date(now);
        self.check_client(eval, client, request, facts)?;
        let channel = self.check_channel(eval, request)?;
        self.check_holder(eval, request, today)?;
        self.check_pilot(eval, request, today)?;
        check_registry(eval, request, facts)?;
        self.obligations(eval, request, facts, channel, today)
    }

    /// `client.*`: the client's role, the profile it asks for, its rate.
    fn check_client(
        &self,
        eval: &mut Evaluation,
        client: &str,
        request: &IssuanceRequest,
        facts: &RegistryFacts,
    ) -> Result<(), Denial> {
        let rule = self.client(client);
        eval.check(
            "client.role",
            rule.is_some_and(|c| c.roles.contains(&Role::Issuer)),
            match rule {
                Some(c) if c.roles.contains(&Role::Issuer) => {
                    format!("client {client:?} has the issuer role")
                }
                Some(_) => format!("client {client:?} lacks the issuer role"),
                None => format!("client {client:?} is not in the policy"),
            },
            DenialKind::Forbidden,
        )?;
        eval.check(
            "client.profile",
            rule.is_some_and(|c| c.profiles.contains(&request.profile))
                && self.profiles.contains_key(&request.profile),
            format!("client {client:?} asking for profile {:?}", request.profile),
            DenialKind::Forbidden,
        )?;
        // The office counter issues for its own district: the pilot (and
        // the record) must not take the client's word for another.
        eval.check(
            "client.municipality",
            rule.is_some_and(|c| {
                c.municipalities.is_empty() || c.municipalities.contains(&request.municipality)
            }),
            format!(
                "client {client:?} issuing for municipality {:?}",
                request.municipality
            ),
            DenialKind::Forbidden,
        )?;
        eval.check(
            "client.rate_limit",
            facts.client_requests_this_minute < self.requests_per_minute,
            format!(
                "{} requests this minute, limit {}",
                facts.client_requests_this_minute, self.requests_per_minute
            ),
            DenialKind::RateLimited,
        )
    }

    /// `channel.known`: the channel the card was checked through; its rule
    /// sets the fee.
    fn check_channel(
        &self,
        eval: &mut Evaluation,
        request: &IssuanceRequest,
    ) -> Result<Option<&ChannelRule>, Denial> {
        let channel = self.channels.get(&request.channel);
        eval.check(
            "channel.known",
            channel.is_some(),
            format!(
                "channel {:?} (known: {})",
                request.channel,
                self.channels.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
            DenialKind::Policy,
        )?;
        Ok(channel)
    }

    /// `holder.*` from the request: nationality, age, the physical card.
    fn check_holder(
        &self,
        eval: &mut Evaluation,
        request: &IssuanceRequest,
        today: Date,
    ) -> Result<(), Denial> {
        eval.check(
            "holder.citizen",
            request.citizen || !self.citizens_only,
            if request.citizen {
                "resident number of a Korean national".into()
            } else {
                "the card is for Korean nationals; the number is a foreign registration number"
                    .into()
            },
            DenialKind::Policy,
        )?;
        let age = age_on(request.birth_date, today);
        eval.check(
            "holder.minimum_age",
            age >= self.minimum_age,
            // The age itself is derived from the resident number: not said.
            format!(
                "the holder is {} {} on {today} (Asia/Seoul)",
                if age >= self.minimum_age {
                    "at least"
                } else {
                    "under"
                },
                self.minimum_age
            ),
            DenialKind::Policy,
        )?;
        let card_ok = match (&request.card_issue_date, &request.card_serial) {
            (Some(issued), Some(serial)) => {
                *issued <= today && *issued >= request.birth_date && !serial.trim().is_empty()
            }
            _ => false,
        };
        eval.check(
            "holder.physical_card",
            card_ok,
            if card_ok {
                "physical card presented".into()
            } else {
                "the holder's physical card (issue date not in the future, serial) is required"
                    .into()
            },
            DenialKind::Policy,
        )
    }

    /// `pilot.*`, when the pilot limits issuance: its window and municipalities.
    fn check_pilot(
        &self,
        eval: &mut Evaluation,
        request: &IssuanceRequest,
        today: Date,
    ) -> Result<(), Denial> {
        if !self.pilot.enabled {
            return Ok(());
        }
        eval.check(
            "pilot.window",
            self.pilot.first_day <= today && today <= self.pilot.last_day,
            format!(
                "{today} against the pilot {} to {}",
                self.pilot.first_day, self.pilot.last_day
            ),
            DenialKind::Policy,
        )?;
        eval.check(
            "pilot.municipality",
            self.pilot.municipalities.contains(&request.municipality),
            format!(
                "municipality {:?} against the pilot's list",
                request.municipality
            ),
            DenialKind::Policy,
        )
    }

    /// `fee.free_issuance` (traced, never refuses) and `document.validity`:
    /// what an allowed issuance must do.
    fn obligations(
        &self,
        eval: &mut Evaluation,
        request: &IssuanceRequest,
        facts: &RegistryFacts,
        channel: Option<&ChannelRule>,
        today: Date,
    ) -> Result<Obligations, Denial> {
        let supersede_previous = facts.holder_active_on_same_device == Some(false);
        let free_left = self.free_quota.saturating_sub(facts.free_copies_issued);
        let use_free_copy = request.first_time && free_left > 0;
        let fee_krw = if use_free_copy {
            0
        } else {
            channel.map_or(0, |c| c.fee_krw)
        };
        eval.trace.push(RuleResult {
            rule: "fee.free_issuance",
            passed: true,
            detail: format!(
                "first time: {}, free copies left: {free_left}, fee {fee_krw} KRW",
                request.first_time
            ),
        });
        let expiry_date = self.document_expiry(today).ok_or_else(|| Denial {
            rule: "document.validity",
            reason: "expiry date out of range".into(),
            kind: DenialKind::Policy,
        })?;
        Ok(Obligations {
            fee_krw,
            use_free_copy,
            issue_date: today,
            expiry_date,
            supersede_previous,
        })
    }
}

/// `device.*` and `holder.*` against the registry: the phone, a suspension,
/// an active credential.
fn check_registry(
    eval: &mut Evaluation,
    request: &IssuanceRequest,
    facts: &RegistryFacts,
) -> Result<(), Denial> {
    eval.check(
        "device.one_person",
        !facts.device_bound_to_other_holder,
        if facts.device_bound_to_other_holder {
            "this phone already holds another person's mobile ID".into()
        } else {
            "the phone holds no other person's mobile ID".into()
        },
        DenialKind::Conflict,
    )?;
    eval.check(
        "holder.suspended",
        !facts.holder_suspended,
        if facts.holder_suspended {
            "the holder's mobile ID is suspended: reinstate or revoke it first".into()
        } else {
            "the holder's ID is not suspended".into()
        },
        DenialKind::Conflict,
    )?;
    eval.check(
        "holder.one_active",
        facts.holder_active_on_same_device != Some(true),
        match facts.holder_active_on_same_device {
            Some(true) => "the holder already has an active mobile ID on this phone".into(),
            Some(false) => {
                "the holder's active ID is on another phone: it will be superseded".into()
            }
            None => "the holder has no active mobile ID".into(),
        },
        DenialKind::Conflict,
    )?;
    // A first-time claim the registry contradicts is refused, not believed:
    // a careless client would otherwise spend the free quota.
    eval.check(
        "holder.first_time",
        !(request.first_time && facts.holder_held_before),
        if facts.holder_held_before {
            format!(
                "first_time is {} and the registry holds an earlier mobile ID of this holder",
                request.first_time
            )
        } else {
            "the registry holds no earlier mobile ID of this holder".into()
        },
        DenialKind::Policy,
    )
}
