//! `POST /v1/credentials`, on the signing pool. Order: replay an idempotent
//! request → validate the input → pseudonym in the HSM → registry facts →
//! policy → sign → one durable registry transaction (row, quota,
//! supersession, idempotency, decision) → respond. Nothing is returned
//! before the commit is durable.

use std::sync::Arc;

use dojang_policies::resident_number::Registrant;
use dojang_policies::{
    CredentialFormat, DenialKind, IssuanceRequest, Obligations, Outcome, RegistryFacts,
};
use serde_json::Value;
use time::OffsetDateTime;

use super::holder::{HolderSecret, claims_mac, pseudonym};
use super::issuer::{Current, Issuer};
use super::request::{IssueRequest, Validated, validate};
use super::response::{IssueResponse, StatusOut, hex};
use super::seal::SealKey;
use super::signed::Signed;
use crate::credential::claims::ResidentCardClaims;
use crate::credential::{DocumentSigner, SignatureValidity};
use crate::errors::{credential_refusal, json_refusal, key_refusal, store_refusal};
use crate::metrics::stages::{Stage, StageClock};
use crate::node::rfc3339;
use crate::refusal::{Answer, Class, Refusal, Reply};
use crate::store::{DecisionRecord, IdempotencyKey, IssuanceCommit, NewCredential, StoreError};

/// What an `Idempotency-Key` gives before anything else is done.
enum Prior {
    /// No key.
    None,
    /// A key never committed: the response will be sealed for it.
    Fresh(IdempotencyKey, SealKey),
    /// The first answer to this very request.
    Replay(Answer),
}

/// What the policy allowed, with what it was decided on.
pub(super) struct Allowed {
    obligations: Obligations,
    pub(super) policy_hash: String,
    pub(super) secret: HolderSecret,
}

/// Builds the response from the commit's outcome (the fee depends on
/// whether a free copy was left).
type Respond = Arc<dyn Fn(bool, &[String]) -> Vec<u8> + Send + Sync>;

fn replay(seal: &SealKey, sealed: &[u8]) -> Answer {
    match seal.open(sealed) {
        Some(body) => Ok((Reply::Created, body)),
        // Same key and body hash but it does not open: it was sealed for a
        // different request (the body hash matched by the registry's check).
        None => Err(store_refusal(StoreError::IdempotencyMismatch)),
    }
}

impl Issuer {
    /// `POST /v1/credentials` from `client` (whose role the router checked),
    /// queued for a signing thread at `queued`.
    pub fn issue(
        &self,
        request_id: &str,
        client: &crate::node::Caller,
        (body, idempotency_key): (&[u8], Option<&str>),
        queued: std::time::Instant,
        now: OffsetDateTime,
    ) -> Answer {
        self.issue_inner(
            request_id,
            client,
            (body, idempotency_key, &[]),
            queued,
            now,
        )
    }

    /// An issuance, with copies of the credential on the phone keys
    /// `copies` (JWKs) for a batch.
    pub(super) fn issue_inner(
        &self,
        request_id: &str,
        client: &crate::node::Caller,
        (body, idempotency_key, copies): (&[u8], Option<&str>, &[Value]),
        queued: std::time::Instant,
        now: OffsetDateTime,
    ) -> Answer {
        let mut clock = StageClock::since(queued);
        clock.lap(Stage::Queue);
        let current = self.current();
        let policy = current.policy.clone();
        let request: IssueRequest = serde_json::from_slice(body).map_err(|e| json_refusal(&e))?;
        clock.lap(Stage::Validate);
        let profile = request.profile.clone();
        let outcome = self.issue_parsed(
            client,
            (body, request, idempotency_key, copies),
            now,
            &current,
            &mut clock,
        );
        if outcome.is_ok() {
            self.node.metrics.issuance_stages.record(&clock, request_id);
        }
        let label = match &outcome {
            Ok(_) => "issued",
            Err(p) if p.class.is_server_error() => "error",
            Err(_) => "refused",
        };
        // Bounded: unknown profiles are counted together.
        let profile_label = if policy.profiles.contains_key(&profile) {
            profile.as_str()
        } else {
            "unknown"
        };
        let metrics = &self.node.metrics;
        metrics
            .issuances
            .with_label_values(&[profile_label, label])
            .inc();
        if let Err(p) = &outcome
            && let Some(rule) = &p.rule
        {
            metrics.denials.with_label_values(&[rule]).inc();
        }
        tracing::info!(
            request_id,
            client = %client,
            profile = profile_label,
            decision = label,
            rule = outcome.as_ref().err().and_then(|p| p.rule.as_deref()).unwrap_or(""),
            policy = %policy.version,
            "issuance"
        );
        outcome
    }

    fn issue_parsed(
        &self,
        client: &crate::node::Caller,
        (body, request, idempotency_key, copies): (&[u8], IssueRequest, Option<&str>, &[Value]),
        now: OffsetDateTime,
        current: &Current,
        clock: &mut StageClock,
    ) -> Answer {
        let started = std::time::Instant::now();
        // The rate limit before any other work: a client over it costs no
        // HSM HMAC, no database read, and one audit entry a minute.
        let hits = self.rate.hit(client, now.unix_timestamp());
        if hits >= current.policy.requests_per_minute {
            return Err(self.over_rate(client, hits, current, now));
        }
        // A replay returns the first answer even if the policy would now refuse.
        let idempotency = match self.prior(client, body, idempotency_key)? {
            Prior::Replay(answer) => return answer,
            Prior::Fresh(key, seal) => Some((key, seal)),
            Prior::None => None,
        };
        clock.lap(Stage::Prior);
        let v = validate(request)?;
        let keys = super::batch::phone_keys(&v, copies)?;
        clock.lap(Stage::Validate);
        let allowed = self.decide(client, &v, (current, hits, "issue"), now, clock)?;
        let (signer, signed) = self.sign_all(&v, &allowed, &keys, current, now, clock)?;
        let (head, copies) = signed.split_first().ok_or_else(Refusal::internal)?;
        let respond = self.respond_with(&v, &allowed, (head, copies), signer, current);
        let holder = allowed.secret.pseudonym;
        let commit = self.commit_of(
            client,
            &v,
            &allowed,
            (head, copies),
            signer,
            idempotency.as_ref(),
            now,
        );
        let seal = idempotency.map(|(_, seal)| seal);
        let committed =
            self.node
                .registry
                .commit_issuance(client, commit, sealed(respond.clone(), seal));
        clock.lap(Stage::Commit);
        match committed {
            Ok((committed, _)) => {
                if !committed.superseded.is_empty() {
                    self.status.changed();
                }
                self.observe(&v, started);
                Ok((
                    Reply::Created,
                    respond(committed.free_copy, &committed.superseded),
                ))
            }
            Err(StoreError::IdempotencyReplay(stored)) => match idempotency_key {
                Some(key) => replay(&self.seal_key(client, key, body)?, &stored),
                None => Err(store_refusal(StoreError::IdempotencyReplay(stored))),
            },
            // Allowed by the policy, refused by the database (a racing request
            // won): a refusal like any other.
            Err(e @ StoreError::Conflict { .. }) => self.node.audited(
                client,
                "issue",
                Err(store_refusal(e)),
                &allowed.policy_hash,
                Some(holder),
                now,
            ),
            Err(e) => Err(store_refusal(e)),
        }
    }

    /// One credential per phone key (a batch has several), with the DS key
    /// in force.
    fn sign_all<'c>(
        &self,
        v: &Validated,
        allowed: &Allowed,
        keys: &[pkcs11_shim::PublicKey],
        current: &'c Current,
        now: OffsetDateTime,
        clock: &mut StageClock,
    ) -> Result<(&'c DocumentSigner<'static>, Vec<Signed>), Refusal> {
        let signer = current.signer(now).map_err(|_| {
            Refusal::unavailable("no_signing_key", "no document-signer key is ready")
        })?;
        let signed = keys
            .iter()
            .map(|device| self.sign(v, allowed, device, (signer, current), now, clock))
            .collect::<Result<Vec<_>, _>>()?;
        clock.lap(Stage::Sign);
        Ok((signer.as_ref(), signed))
    }

    fn observe(&self, v: &Validated, started: std::time::Instant) {
        self.node
            .metrics
            .issuance_seconds
            .with_label_values(&[&v.request.profile])
            .observe(started.elapsed().as_secs_f64());
    }

    /// The key that seals the stored response of this very request.
    fn seal_key(&self, client: &str, key: &str, body: &[u8]) -> Result<SealKey, Refusal> {
        let request_hash = pkcs11_shim::digest::sha256(body);
        self.node
            .metrics
            .hsm("hmac", || {
                SealKey::derive(
                    self.node.backend,
                    &self.response_seal_key,
                    client,
                    key,
                    &request_hash,
                )
            })
            .map_err(|e| key_refusal(&e))
    }

    fn prior(&self, client: &str, body: &[u8], key: Option<&str>) -> Result<Prior, Refusal> {
        let Some(key) = key else {
            return Ok(Prior::None);
        };
        let seal = self.seal_key(client, key, body)?;
        let key = IdempotencyKey {
            key: key.to_owned(),
            request_hash: pkcs11_shim::digest::sha256(body),
        };
        match self.node.registry.idempotent_response(client, &key) {
            Ok(Some(sealed)) => Ok(Prior::Replay(replay(&seal, &sealed))),
            Ok(None) => Ok(Prior::Fresh(key, seal)),
            Err(e) => Err(store_refusal(e)),
        }
    }

    /// The pseudonym, the registry's facts and the policy's decision; a
    /// refusal is a decision too: recorded (as `action`), or not given at
    /// all. Without a phone key (an offer) no phone is bound yet.
    pub(super) fn decide(
        &self,
        client: &crate::node::Caller,
        v: &Validated,
        (current, hits, action): (&Current, u32, &'static str),
        now: OffsetDateTime,
        clock: &mut StageClock,
    ) -> Result<Allowed, Refusal> {
        let policy = &current.policy;
        let secret = self
            .node
            .metrics
            .hsm("hmac", || {
                pseudonym(self.node.backend, &self.pseudonym_key, &v.number)
            })
            .map_err(|e| key_refusal(&e))?;
        clock.lap(Stage::Pseudonym);
        let holder = secret.pseudonym;
        let device = v.device_thumbprint();
        let facts = self
            .node
            .registry
            .facts(&holder, &device)
            .map_err(store_refusal)?;
        clock.lap(Stage::Facts);
        let policy_request = IssuanceRequest {
            profile: v.request.profile.clone(),
            channel: v.request.channel.clone(),
            municipality: v.request.municipality.clone(),
            first_time: v.request.first_time,
            birth_date: v.number.birth_date(),
            citizen: v.number.registrant() == Registrant::Citizen,
            card_issue_date: v.card_issue_date,
            card_serial: v.request.card.as_ref().map(|c| c.serial.clone()),
        };
        let registry_facts = RegistryFacts {
            holder_active_on_same_device: facts.holder_live_on_same_device,
            holder_suspended: facts.holder_suspended,
            device_bound_to_other_holder: facts.device_bound_to_other_holder,
            free_copies_issued: facts.free_copies_issued,
            holder_held_before: facts.held_before,
            client_requests_this_minute: hits,
        };
        let decision = policy.evaluate_issuance(client, &policy_request, &registry_facts, now);
        clock.lap(Stage::Policy);
        let denial = match decision.outcome {
            Outcome::Allow(obligations) => {
                return Ok(Allowed {
                    obligations,
                    policy_hash: decision.policy_hash,
                    secret,
                });
            }
            Outcome::Deny(denial) => denial,
        };
        let (class, code) = denial_class(denial.kind);
        let record = DecisionRecord {
            rule: Some(denial.rule.to_owned()),
            // Client text reaches the log only if the policy knows it.
            profile: policy
                .profiles
                .contains_key(&v.request.profile)
                .then(|| v.request.profile.clone()),
            ..self
                .node
                .caller_decision(client, action, "deny", &decision.policy_hash, now)
        };
        self.node
            .registry
            .record(record, Some(holder))
            .map_err(store_refusal)?;
        let mut p = Refusal::new(class, code, denial.reason).with_rule(denial.rule);
        if denial.kind == DenialKind::RateLimited {
            p = p.retry_after(60 - (now.unix_timestamp().rem_euclid(60)) as u32);
        }
        Err(p)
    }

    /// A request over the client's rate: 429, and an audit entry only for
    /// the first one refused in the minute (a flood is one entry, not a
    /// write per request).
    pub(super) fn over_rate(
        &self,
        client: &crate::node::Caller,
        hits: u32,
        current: &Current,
        now: OffsetDateTime,
    ) -> Refusal {
        let limit = current.policy.requests_per_minute;
        if hits == limit {
            let record = DecisionRecord {
                rule: Some(format!(
                    "client.rate_limit: over {limit} requests this minute; the rest of the minute's refusals are not recorded one by one"
                )),
                ..self
                    .node
                    .caller_decision(client, "issue", "deny", &current.policy.hash, now)
            };
            if let Err(e) = self.node.registry.record(record, None) {
                tracing::warn!(error = %e, "recording a rate-limit refusal");
            }
        }
        Refusal::new(
            Class::TooManyRequests,
            "rate_limited",
            format!("{hits} requests this minute, limit {limit}"),
        )
        .with_rule("client.rate_limit")
        .retry_after(60 - (now.unix_timestamp().rem_euclid(60)) as u32)
    }

    /// The document's claims, its signature validity and status position,
    /// signed.
    fn sign(
        &self,
        v: &Validated,
        allowed: &Allowed,
        device: &pkcs11_shim::PublicKey,
        (signer, current): (&DocumentSigner<'static>, &Current),
        now: OffsetDateTime,
        clock: &mut StageClock,
    ) -> Result<Signed, Refusal> {
        let policy = &current.policy;
        let format: CredentialFormat = policy
            .profiles
            .get(&v.request.profile)
            .map(|p| p.format)
            .ok_or_else(|| Refusal::bad_request("unknown_profile", "unknown profile"))?;
        let claims = ResidentCardClaims::derive(
            &v.holder,
            allowed.obligations.issue_date,
            policy.validity_years,
            &self.credential.issuing_authority,
        )
        .map_err(credential_refusal)?;
        let claims_mac = claims_mac(&allowed.secret, &claims)?;
        let validity = SignatureValidity::starting(
            now,
            self.credential.signature_validity_days,
            signer.certificate_window(),
        )
        .map_err(|_| Refusal::unavailable("no_signing_key", "the DS certificate has expired"))?;
        clock.lap(Stage::Sign);
        let (list, index) = self.status.next_index().map_err(store_refusal)?;
        clock.lap(Stage::StatusIndex);
        let status = self.status_reference(format, list, index);
        let (format_name, credential) =
            self.sign_credential(signer, format, &claims, device, &validity, &status)?;
        let id = hex(&crate::credential::random::<16>().map_err(credential_refusal)?);
        Ok(Signed {
            id,
            device: device.jwk().thumbprint(),
            credential,
            format_name,
            validity,
            status,
            list,
            claims_mac,
            has_portrait: claims.portrait.is_some(),
        })
    }

    /// The response, given whether a free copy was taken and what was
    /// superseded.
    fn respond_with(
        &self,
        v: &Validated,
        allowed: &Allowed,
        (signed, copies): (&Signed, &[Signed]),
        signer: &DocumentSigner<'static>,
        current: &Current,
    ) -> Respond {
        let copies = super::batch::copies_out(copies);
        let channel_fee = current
            .policy
            .channels
            .get(&v.request.channel)
            .map_or(0, |c| c.fee_krw);
        let id = signed.id.clone();
        let profile = v.request.profile.clone();
        let format_name = signed.format_name;
        let credential = signed.credential.clone();
        let kid = signer.kid().to_owned();
        let key_label = signer.label().to_owned();
        let uri = signed.status.uri.clone();
        let index = signed.status.idx;
        let validity = signed.validity;
        let document_expiry = allowed.obligations.expiry_date.to_string();
        Arc::new(move |free_copy: bool, superseded: &[String]| -> Vec<u8> {
            let response = IssueResponse {
                id: &id,
                profile: &profile,
                format: format_name,
                credential: &credential,
                kid: &kid,
                key_label: &key_label,
                valid_from: rfc3339(validity.valid_from),
                valid_until: rfc3339(validity.valid_until),
                document_expiry: document_expiry.clone(),
                status: StatusOut {
                    uri: &uri,
                    idx: index,
                },
                fee_krw: if free_copy { 0 } else { channel_fee },
                free_copy,
                superseded,
                copies: &copies,
            };
            serde_json::to_vec(&response).unwrap_or_default()
        })
    }

    /// Everything the registry commits for this issuance.
    #[allow(clippy::too_many_arguments)] // the parts of one commit, named
    fn commit_of(
        &self,
        client: &crate::node::Caller,
        v: &Validated,
        allowed: &Allowed,
        (signed, copies): (&Signed, &[Signed]),
        signer: &DocumentSigner<'static>,
        idempotency: Option<&(IdempotencyKey, SealKey)>,
        now: OffsetDateTime,
    ) -> IssuanceCommit {
        let row = |signed: &Signed| NewCredential {
            id: signed.id.clone(),
            holder: allowed.secret.pseudonym,
            device: signed.device.clone(),
            profile: v.request.profile.clone(),
            kid: signer.kid().to_owned(),
            status_list: signed.list,
            status_index: signed.status.idx,
            // The real time, for operators; the credential says only the day.
            issued_at: now.unix_timestamp(),
            valid_until: signed.validity.valid_until.unix_timestamp(),
            document_expiry: allowed.obligations.expiry_date.to_string(),
            claims_mac: signed.claims_mac,
            has_portrait: signed.has_portrait,
        };
        IssuanceCommit {
            credential: row(signed),
            supersede: allowed.obligations.supersede_previous,
            want_free_copy: allowed.obligations.use_free_copy,
            idempotency: idempotency.map(|(key, _)| key.clone()),
            decision: DecisionRecord {
                profile: Some(v.request.profile.clone()),
                key_id: Some(signer.kid().to_owned()),
                payload_sha256: Some(pkcs11_shim::digest::sha256(signed.credential.as_bytes())),
                ..self
                    .node
                    .caller_decision(client, "issue", "allow", &allowed.policy_hash, now)
            },
            copies: super::batch::batch_copies(copies, row),
        }
    }
}

/// The HTTP class and problem code of a policy denial.
fn denial_class(kind: DenialKind) -> (Class, &'static str) {
    match kind {
        DenialKind::Forbidden => (Class::Forbidden, "forbidden"),
        DenialKind::Policy => (Class::Unprocessable, "policy_denied"),
        DenialKind::Conflict => (Class::Conflict, "policy_conflict"),
        DenialKind::RateLimited => (Class::TooManyRequests, "rate_limited"),
    }
}

/// The response the registry stores under the idempotency key, sealed.
fn sealed(respond: Respond, seal: Option<SealKey>) -> crate::store::Respond {
    Box::new(move |committed| match &seal {
        // A response that cannot be sealed must not be stored empty (a
        // replay would look like key reuse): failing here fails the
        // request's transaction, and nothing is committed.
        #[allow(clippy::expect_used)]
        Some(seal) => seal
            .seal(&respond(committed.free_copy, &committed.superseded))
            .expect("AES-GCM sealing of a response"),
        None => Vec::new(),
    })
}
