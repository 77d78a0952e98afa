//! Dojang's issuance policy: pure evaluation of (client identity, request,
//! registry facts, now) into a decision with a rule trace. Nothing here does
//! I/O or reads a clock: the caller passes "now" in.
//!
//! - [`calendar`]: ages and periods as Korean law counts them, in Seoul.
//! - [`resident_number`]: resident registration numbers.
//! - [`Policy`]: the policy file, parsed strictly; [`Policy::evaluate_issuance`].
//!
//! The shipped policy is `policies/kr-mobile-resident-card.toml`
//! ([`SHIPPED_POLICY`]).

#![forbid(unsafe_code)]

pub mod calendar;
mod clients;
mod duration;
mod evaluate;
mod officers;
mod policy;
pub mod resident_number;

pub use duration::parse_duration;
pub use evaluate::{
    Decision, Denial, DenialKind, IssuanceRequest, Obligations, Outcome, RegistryFacts, RuleResult,
};
pub use officers::OfficerRules;
pub use policy::{
    ChannelRule, ClientRule, CredentialFormat, DsRevocation, KeyRules, Pilot, Policy, PolicyError,
    ProfileRule, Role,
};

/// The shipped policy file's text.
pub const SHIPPED_POLICY: &str = include_str!("../kr-mobile-resident-card.toml");
