//! `POST /v1/offers`: the counter's half of an OpenID4VCI issuance. The
//! request is an issuance's without the phone key; it is checked and the
//! policy decides now — on everything but the phone, which the wallet
//! proves later — so a refusal comes back at the counter. The decision is
//! an audit entry either way; the request itself is handed back to be
//! held in memory until the wallet redeems it (never the registry).

use serde_json::{Map, Value};
use time::OffsetDateTime;

use super::issuer::Issuer;
use super::request::{IssueRequest, validate_offer};
use crate::errors::{json_refusal, store_refusal};
use crate::metrics::stages::StageClock;
use crate::refusal::Refusal;
use crate::store::DecisionRecord;

/// An offer the policy allowed.
pub struct Offered {
    /// The request's members (holder data among them), without a phone key.
    pub request: Map<String, Value>,
    /// Its profile.
    pub profile: String,
    /// The policy that allowed it.
    pub policy_hash: String,
}

impl Issuer {
    /// Checks an offer's request from `client` and has the policy decide.
    pub fn offer(
        &self,
        client: &crate::node::Caller,
        body: &[u8],
        now: OffsetDateTime,
    ) -> Result<Offered, Refusal> {
        let current = self.current();
        let hits = self.rate.hit(client, now.unix_timestamp());
        if hits >= current.policy.requests_per_minute {
            return Err(self.over_rate(client, hits, &current, now));
        }
        let mut members: Map<String, Value> =
            serde_json::from_slice(body).map_err(|e| json_refusal(&e))?;
        if members.contains_key("device_key") {
            return Err(Refusal::bad_request(
                "malformed_request",
                "an offer carries no device_key: the wallet proves its own key",
            ));
        }
        let _ = members.insert("device_key".into(), Value::Null);
        let request: IssueRequest =
            serde_json::from_value(Value::Object(members.clone())).map_err(|e| json_refusal(&e))?;
        let _ = members.remove("device_key");
        let v = validate_offer(request)?;
        let profile = v.request.profile.clone();
        if !current.policy.profiles.contains_key(&profile) {
            return Err(Refusal::bad_request(
                "unknown_profile",
                "no such profile in the policy",
            ));
        }
        let mut clock = StageClock::since(std::time::Instant::now());
        let allowed = self.decide(client, &v, (&current, hits, "offer"), now, &mut clock)?;
        let record = DecisionRecord {
            profile: Some(profile.clone()),
            ..self
                .node
                .caller_decision(client, "offer", "allow", &allowed.policy_hash, now)
        };
        self.node
            .registry
            .record(record, Some(allowed.secret.pseudonym))
            .map_err(store_refusal)?;
        Ok(Offered {
            request: members,
            profile,
            policy_hash: allowed.policy_hash,
        })
    }
}
