//! The operations of the API, synchronous, on the signing pool: issue a
//! credential, read its metadata, change its state. Each turns a parsed
//! request into a JSON body or a [`Refusal`]; the HTTP layer only routes.
//!
//! Issuance order: replay an idempotent request → validate the input →
//! pseudonym in the HSM → registry facts → policy → sign → one durable
//! registry transaction (row, quota, supersession, idempotency, decision) →
//! respond. Nothing is returned before the commit is durable.

use super::rfc3339;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use dojang_policies::resident_number::{Registrant, ResidentNumber};
use dojang_policies::{
    CredentialFormat, DenialKind, IssuanceRequest, Outcome, RegistryFacts, Role,
};

use pkcs11_shim::{ErrorClass, Jwk, public_key_from_jwk};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::seal::SealKey;
use super::service::Service;
use crate::credential::claims::{HolderData, ResidentCardClaims};
use crate::credential::{CredentialError, SignatureValidity, StatusReference, mdoc, sdjwt};
use crate::refusal::{Class, Refusal};
use crate::store::{
    CredentialMeta, CredentialState, DecisionRecord, IdempotencyKey, IssuanceCommit, NewCredential,
    StoreError,
};

/// `POST /v1/credentials`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IssueRequest {
    profile: String,
    holder: HolderIn,
    device_key: Jwk,
    channel: String,
    municipality: String,
    first_time: bool,
    #[serde(default)]
    card: Option<CardIn>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HolderIn {
    family_name: String,
    given_name: String,
    resident_number: String,
    address: String,
    /// JPEG, base64.
    #[serde(default)]
    portrait: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CardIn {
    /// YYYY-MM-DD.
    issue_date: String,
    serial: String,
}

/// The issuance response (also what an idempotent replay returns).
#[derive(Serialize)]
struct IssueResponse<'a> {
    id: &'a str,
    profile: &'a str,
    format: &'a str,
    credential: &'a str,
    kid: &'a str,
    key_label: &'a str,
    valid_from: String,
    valid_until: String,
    document_expiry: String,
    status: StatusOut<'a>,
    fee_krw: u32,
    free_copy: bool,
    superseded: &'a [String],
}

#[derive(Serialize)]
struct StatusOut<'a> {
    uri: &'a str,
    idx: u64,
}

/// Metadata, never personal data.
#[derive(Serialize)]
struct MetaOut<'a> {
    id: &'a str,
    profile: &'a str,
    kid: &'a str,
    state: &'a str,
    status: StatusOut<'a>,
    issued_at: String,
    valid_until: String,
    document_expiry: &'a str,
}

/// `POST /v1/credentials/{id}/refresh`: the holder data and phone key again
/// (the registry keeps neither), to re-sign the same document.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RefreshRequest {
    holder: HolderIn,
    device_key: Jwk,
}

/// `POST /v1/credentials/{id}/revoke|suspend|reinstate`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct StateChangeRequest {
    /// Why (kept out of the registry; a short code is enough).
    #[serde(default)]
    #[allow(dead_code)]
    reason: Option<String>,
}

/// A successful answer: status and JSON body.
pub(crate) use crate::refusal::{Answer, Reply};

/// A JSON error message that never echoes a value from the body (values
/// are personal data): unknown and missing fields are named, everything
/// else is located.
pub(crate) fn json_problem(e: &serde_json::Error) -> Refusal {
    let text = e.to_string();
    let detail = if text.starts_with("unknown field") || text.starts_with("missing field") {
        text.split(", expected").next().unwrap_or("").to_owned()
    } else if e.is_syntax() || e.is_eof() {
        format!(
            "the body is not valid JSON (line {}, column {})",
            e.line(),
            e.column()
        )
    } else {
        format!(
            "a value does not have the expected type (line {}, column {})",
            e.line(),
            e.column()
        )
    };
    let code = if text.starts_with("unknown field") {
        "unknown_field"
    } else {
        "malformed_request"
    };
    Refusal::bad_request(code, detail)
}

pub(crate) fn store_problem(e: StoreError) -> Refusal {
    match e {
        StoreError::Conflict { rule } => Refusal::new(
            Class::Conflict,
            "registry_conflict",
            match rule {
                "device.one_person" => "this phone already holds another person's mobile ID",
                crate::store::REFRESH_SAME_OWNER => {
                    "the holder or the phone is not the credential's own"
                }
                _ => "the holder already has a live mobile ID",
            },
        )
        .with_rule(rule),
        StoreError::IdempotencyMismatch => Refusal::new(
            Class::Unprocessable,
            "idempotency_key_reused",
            "this Idempotency-Key was used with a different request body",
        )
        .with_rule("idempotency.same_body"),
        StoreError::NotFound => {
            Refusal::new(Class::NotFound, "not_found", "no credential with this id")
        }
        StoreError::InvalidTransition { from, to } => Refusal::new(
            Class::Conflict,
            "invalid_transition",
            format!("a {from} credential cannot become {to}"),
        )
        .with_rule("credential.state_machine"),
        StoreError::Unavailable(_) | StoreError::IdempotencyReplay(_) => {
            tracing::warn!(error = %e, "registry unavailable");
            Refusal::unavailable("store_unavailable", "the registry is unavailable; retry")
        }
        StoreError::Internal(_) => {
            tracing::error!(error = %e, "registry error");
            Refusal::new(Class::Internal, "internal", "internal error")
        }
    }
}

fn key_problem(e: &pkcs11_shim::Error) -> Refusal {
    tracing::warn!(error = %e, "key backend call failed");
    match e.class() {
        ErrorClass::Retryable | ErrorClass::DeviceLost => {
            Refusal::unavailable("hsm_unavailable", "the key backend is unavailable; retry")
        }
        _ => Refusal::unavailable(
            "hsm_error",
            "the key backend refused the operation; an operator has been alerted",
        ),
    }
}

fn credential_problem(e: CredentialError) -> Refusal {
    match e {
        CredentialError::Invalid(detail) => Refusal::bad_request("invalid_holder_data", detail),
        CredentialError::Key(k) => key_problem(&k),
        CredentialError::Encoding(_) => {
            tracing::error!(error = %e, "encoding a credential");
            Refusal::new(Class::Internal, "internal", "internal error")
        }
    }
}

fn forbidden(client: &str, role: Role) -> Refusal {
    Refusal::new(
        Class::Forbidden,
        "forbidden",
        format!(
            "client {client:?} does not have the {} role",
            format!("{role:?}").to_lowercase()
        ),
    )
    .with_rule("client.role")
}

/// What a validated request carries into the policy and the builders.
struct Validated {
    request: IssueRequest,
    number: ResidentNumber,
    holder: HolderData,
    device: pkcs11_shim::PublicKey,
    card_issue_date: Option<time::Date>,
}

/// The holder data and phone key of a request, checked.
fn holder_and_device(
    holder: &HolderIn,
    device_key: &Jwk,
) -> Result<(ResidentNumber, HolderData, pkcs11_shim::PublicKey), Refusal> {
    let number = ResidentNumber::parse(&holder.resident_number).map_err(|e| {
        Refusal::bad_request("invalid_resident_number", e.to_string())
            .with_rule("holder.resident_number_format")
    })?;
    let device = public_key_from_jwk(device_key)
        .map_err(|e| Refusal::bad_request("invalid_device_key", e.to_string()))?;
    let portrait =
        match &holder.portrait {
            Some(b64) => Some(B64.decode(b64).map_err(|_| {
                Refusal::bad_request("invalid_holder_data", "portrait is not base64")
            })?),
            None => None,
        };
    let data = HolderData {
        family_name: holder.family_name.clone(),
        given_name: holder.given_name.clone(),
        resident_number: number.clone(),
        address: holder.address.clone(),
        portrait,
    };
    Ok((number, data, device))
}

fn validate(request: IssueRequest) -> Result<Validated, Refusal> {
    let (number, holder, device) = holder_and_device(&request.holder, &request.device_key)?;
    let card_issue_date = match &request.card {
        Some(card) => Some(
            time::Date::parse(
                &card.issue_date,
                time::macros::format_description!("[year]-[month]-[day]"),
            )
            .map_err(|_| {
                Refusal::bad_request("invalid_card", "card.issue_date must be YYYY-MM-DD")
            })?,
        ),
        None => None,
    };
    if request.card.as_ref().is_some_and(|c| c.serial.len() > 64) {
        return Err(Refusal::bad_request(
            "invalid_card",
            "card.serial is at most 64 characters",
        ));
    }
    if request.municipality.len() > 16 || request.profile.len() > 64 || request.channel.len() > 64 {
        return Err(Refusal::bad_request(
            "malformed_request",
            "profile, channel or municipality too long",
        ));
    }
    Ok(Validated {
        request,
        number,
        holder,
        device,
        card_issue_date,
    })
}

impl Service {
    /// `POST /v1/credentials`.
    pub(crate) fn issue(
        &self,
        request_id: &str,
        client: &str,
        body: &[u8],
        idempotency_key: Option<&str>,
        now: OffsetDateTime,
    ) -> Answer {
        let current = self.current();
        let policy = current.policy.clone();
        if !policy.has_role(client, Role::Issuer) {
            let refused = Err(forbidden(client, Role::Issuer));
            return self.audited(client, "issue", refused, &policy.hash, None, now);
        }
        let request: IssueRequest = serde_json::from_slice(body).map_err(|e| json_problem(&e))?;
        let profile = request.profile.clone();
        let outcome = self.issue_validated(client, body, request, idempotency_key, now, &current);
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
        self.metrics
            .issuances
            .with_label_values(&[profile_label, label])
            .inc();
        if let Err(p) = &outcome
            && let Some(rule) = &p.rule
        {
            self.metrics.denials.with_label_values(&[rule]).inc();
        }
        tracing::info!(
            request_id,
            client,
            profile = profile_label,
            decision = label,
            rule = outcome.as_ref().err().and_then(|p| p.rule.as_deref()).unwrap_or(""),
            policy = %policy.version,
            "issuance"
        );
        outcome
    }

    fn issue_validated(
        &self,
        client: &str,
        body: &[u8],
        request: IssueRequest,
        idempotency_key: Option<&str>,
        now: OffsetDateTime,
        current: &super::service::Current,
    ) -> Answer {
        let started = std::time::Instant::now();
        let policy = &current.policy;
        // A replay returns the first answer even if the policy would now refuse.
        let idempotency = match idempotency_key {
            Some(key) => {
                let request_hash = pkcs11_shim::digest::sha256(body);
                let seal = self
                    .metrics
                    .hsm("hmac", || {
                        SealKey::derive(
                            self.backend,
                            &self.keys.pseudonym,
                            client,
                            key,
                            &request_hash,
                        )
                    })
                    .map_err(|e| key_problem(&e))?;
                let key = IdempotencyKey {
                    key: key.to_owned(),
                    request_hash,
                };
                match self.registry.idempotent_response(client, &key) {
                    Ok(Some(sealed)) => return replay(&seal, &sealed),
                    Ok(None) => {}
                    Err(e) => return Err(store_problem(e)),
                }
                Some((key, seal))
            }
            None => None,
        };
        let v = validate(request)?;
        let secret = self
            .metrics
            .hsm("hmac", || {
                crate::store::pseudonym(self.backend, &self.keys.pseudonym, &v.number)
            })
            .map_err(|e| key_problem(&e))?;
        let holder = secret.pseudonym;
        let device = v.device.jwk().thumbprint();
        let facts = self
            .registry
            .facts(&holder, &device)
            .map_err(store_problem)?;
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
            client_requests_this_minute: self.rate.hit(client, now.unix_timestamp()),
        };
        let decision = policy.evaluate_issuance(client, &policy_request, &registry_facts, now);
        let obligations = match decision.outcome {
            Outcome::Allow(o) => o,
            Outcome::Deny(denial) => {
                let (status, code) = match denial.kind {
                    DenialKind::Forbidden => (Class::Forbidden, "forbidden"),
                    DenialKind::Policy => (Class::Unprocessable, "policy_denied"),
                    DenialKind::Conflict => (Class::Conflict, "policy_conflict"),
                    DenialKind::RateLimited => (Class::TooManyRequests, "rate_limited"),
                };
                // A refusal is a decision too: recorded, or not given at all.
                let record = DecisionRecord {
                    rule: Some(denial.rule.to_owned()),
                    // Client text reaches the log only if the policy knows it.
                    profile: policy
                        .profiles
                        .contains_key(&v.request.profile)
                        .then(|| v.request.profile.clone()),
                    ..self.decision(client, "issue", "deny", &decision.policy_hash, now)
                };
                self.registry
                    .record(record, Some(holder))
                    .map_err(store_problem)?;
                let mut p = Refusal::new(status, code, denial.reason).with_rule(denial.rule);
                if denial.kind == DenialKind::RateLimited {
                    p = p.retry_after(60 - (now.unix_timestamp().rem_euclid(60)) as u32);
                }
                return Err(p);
            }
        };
        let signer = current.signer(now).map_err(|_| {
            Refusal::unavailable("no_signing_key", "no document-signer key is ready")
        })?;
        let format = policy
            .profiles
            .get(&v.request.profile)
            .map(|p| p.format)
            .ok_or_else(|| Refusal::bad_request("unknown_profile", "unknown profile"))?;
        let claims = ResidentCardClaims::derive(
            &v.holder,
            obligations.issue_date,
            policy.validity_years,
            &self.credential.issuing_authority,
        )
        .map_err(credential_problem)?;
        let claims_mac = claims_mac(&secret, &claims)?;
        let validity = SignatureValidity::starting(
            now,
            self.credential.signature_validity_days,
            signer.not_after(),
        )
        .map_err(|_| Refusal::unavailable("no_signing_key", "the DS certificate has expired"))?;
        let (list, index) = self.next_status_index().map_err(store_problem)?;
        let status = StatusReference {
            idx: index,
            uri: self.status_uri(list),
        };
        let (format_name, credential) =
            self.sign_credential(signer, format, &claims, &v.device, &validity, &status)?;
        let payload_sha256 = pkcs11_shim::digest::sha256(credential.as_bytes());
        let id = hex(&crate::credential::random::<16>().map_err(credential_problem)?);
        let channel_fee = policy
            .channels
            .get(&v.request.channel)
            .map_or(0, |c| c.fee_krw);
        let document_expiry = obligations.expiry_date.to_string();
        let respond = {
            let id = id.clone();
            let profile = v.request.profile.clone();
            let kid = signer.kid().to_owned();
            let key_label = signer.label().to_owned();
            let uri = status.uri.clone();
            let document_expiry = document_expiry.clone();
            move |free_copy: bool, superseded: &[String]| -> Vec<u8> {
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
                };
                serde_json::to_vec(&response).unwrap_or_default()
            }
        };
        let respond = std::sync::Arc::new(respond);
        let (idempotency, seal) = match idempotency {
            Some((key, seal)) => (Some(key), Some(seal)),
            None => (None, None),
        };
        let sealed_respond: crate::store::Respond = {
            let respond = respond.clone();
            Box::new(move |committed| match &seal {
                // A response that cannot be sealed must not be stored empty
                // (a replay would look like key reuse): failing here fails
                // the request's transaction, and nothing is committed.
                #[allow(clippy::expect_used)]
                Some(seal) => seal
                    .seal(&respond(committed.free_copy, &committed.superseded))
                    .expect("AES-GCM sealing of a response"),
                None => Vec::new(),
            })
        };
        let commit = IssuanceCommit {
            credential: NewCredential {
                id: id.clone(),
                holder,
                device,
                profile: v.request.profile.clone(),
                kid: signer.kid().to_owned(),
                status_list: list,
                status_index: index,
                issued_at: validity.signed.unix_timestamp(),
                valid_until: validity.valid_until.unix_timestamp(),
                document_expiry,
                claims_mac,
            },
            supersede: obligations.supersede_previous,
            want_free_copy: obligations.use_free_copy,
            idempotency,
            decision: DecisionRecord {
                profile: Some(v.request.profile.clone()),
                key_id: Some(signer.kid().to_owned()),
                payload_sha256: Some(payload_sha256),
                ..self.decision(client, "issue", "allow", &decision.policy_hash, now)
            },
        };
        match self
            .registry
            .commit_issuance(client, commit, sealed_respond)
        {
            Ok((committed, _)) => {
                if !committed.superseded.is_empty() {
                    self.status_changed();
                }
                self.metrics
                    .issuance_seconds
                    .with_label_values(&[&v.request.profile])
                    .observe(started.elapsed().as_secs_f64());
                Ok((
                    Reply::Created,
                    respond(committed.free_copy, &committed.superseded),
                ))
            }
            Err(StoreError::IdempotencyReplay(sealed)) => match idempotency_key {
                Some(key) => {
                    let seal = SealKey::derive(
                        self.backend,
                        &self.keys.pseudonym,
                        client,
                        key,
                        &pkcs11_shim::digest::sha256(body),
                    )
                    .map_err(|e| key_problem(&e))?;
                    replay(&seal, &sealed)
                }
                None => Err(store_problem(StoreError::IdempotencyReplay(sealed))),
            },
            // Allowed by the policy, refused by the database (a racing request
            // won): a refusal like any other.
            Err(e @ StoreError::Conflict { .. }) => self.audited(
                client,
                "issue",
                Err(store_problem(e)),
                &decision.policy_hash,
                Some(holder),
                now,
            ),
            Err(e) => Err(store_problem(e)),
        }
    }

    /// `POST /v1/credentials/{id}/refresh`: re-signs an active credential
    /// with the current DS key and a new signature validity; the document
    /// (its claims, issue and expiry dates, status entry) stays the same.
    /// Refusals are audit entries.
    pub(crate) fn refresh(
        &self,
        client: &str,
        id: &str,
        body: &[u8],
        now: OffsetDateTime,
    ) -> Answer {
        let policy_hash = self.current().policy.hash.clone();
        let mut holder = None;
        let answer = self.refresh_checked(client, id, body, now, &mut holder);
        self.audited(client, "refresh", answer, &policy_hash, holder, now)
    }

    fn refresh_checked(
        &self,
        client: &str,
        id: &str,
        body: &[u8],
        now: OffsetDateTime,
        seen_holder: &mut Option<crate::store::Pseudonym>,
    ) -> Answer {
        let current = self.current();
        let policy = current.policy.clone();
        if !policy.has_role(client, Role::Issuer) {
            return Err(forbidden(client, Role::Issuer));
        }
        let request: RefreshRequest = serde_json::from_slice(body).map_err(|e| json_problem(&e))?;
        check_id(id)?;
        let (number, holder_data, device_key) =
            holder_and_device(&request.holder, &request.device_key)?;
        let meta = self.registry.credential(id).map_err(store_problem)?;
        if !policy
            .client(client)
            .is_some_and(|c| c.profiles.contains(&meta.profile))
        {
            return Err(forbidden(client, Role::Issuer).with_rule("client.profile"));
        }
        if self.rate.hit(client, now.unix_timestamp()) >= policy.requests_per_minute {
            return Err(Refusal::new(
                Class::TooManyRequests,
                "rate_limited",
                format!("limit {} requests a minute", policy.requests_per_minute),
            )
            .with_rule("client.rate_limit")
            .retry_after(60 - (now.unix_timestamp().rem_euclid(60)) as u32));
        }
        let format = policy
            .profiles
            .get(&meta.profile)
            .map(|p| p.format)
            .ok_or_else(|| {
                Refusal::new(
                    Class::Unprocessable,
                    "policy_denied",
                    "the credential's profile is no longer in the policy",
                )
                .with_rule("client.profile")
            })?;
        let secret = self
            .metrics
            .hsm("hmac", || {
                crate::store::pseudonym(self.backend, &self.keys.pseudonym, &number)
            })
            .map_err(|e| key_problem(&e))?;
        let holder = secret.pseudonym;
        *seen_holder = Some(holder);
        let device = device_key.jwk().thumbprint();
        // Everything is checked before anything is signed.
        if meta.holder != holder || meta.device != device {
            return Err(store_problem(StoreError::Conflict {
                rule: crate::store::REFRESH_SAME_OWNER,
            }));
        }
        if meta.state != CredentialState::Active {
            return Err(store_problem(StoreError::InvalidTransition {
                from: meta.state.as_str(),
                to: "refreshed",
            }));
        }
        let expiry = time::Date::parse(
            &meta.document_expiry,
            time::macros::format_description!("[year]-[month]-[day]"),
        )
        .map_err(|_| store_problem(StoreError::Internal("document_expiry unreadable".into())))?;
        if expiry < dojang_policies::calendar::seoul_date(now) {
            return Err(Refusal::new(
                Class::Unprocessable,
                "policy_denied",
                format!("the document expired on {expiry}: issue a new one"),
            )
            .with_rule("document.validity"));
        }
        let signer = current.signer(now).map_err(|_| {
            Refusal::unavailable("no_signing_key", "no document-signer key is ready")
        })?;
        let issued = OffsetDateTime::from_unix_timestamp(meta.issued_at)
            .map_err(|_| store_problem(StoreError::Internal("issued_at out of range".into())))?;
        let mut claims = ResidentCardClaims::derive(
            &holder_data,
            dojang_policies::calendar::seoul_date(issued),
            policy.validity_years,
            &self.credential.issuing_authority,
        )
        .map_err(credential_problem)?;
        claims.expiry_date = expiry;
        // The same document: the claims must be those it was issued with.
        if meta.claims_mac != Some(claims_mac(&secret, &claims)?) {
            return Err(Refusal::new(
                Class::Conflict,
                "registry_conflict",
                "the holder data differ from the document's: issue a new credential instead",
            )
            .with_rule("refresh.same_claims"));
        }
        let mut validity = SignatureValidity::starting(
            now,
            self.credential.signature_validity_days,
            signer.not_after(),
        )
        .map_err(|_| Refusal::unavailable("no_signing_key", "the DS certificate has expired"))?;
        // Never valid past the document's last day (its end in Seoul).
        let document_end =
            time::PrimitiveDateTime::new(expiry.next_day().unwrap_or(expiry), time::Time::MIDNIGHT)
                .assume_offset(time::macros::offset!(+9));
        validity.valid_until = validity.valid_until.min(document_end);
        let status = StatusReference {
            idx: meta.status_index,
            uri: self.status_uri(meta.status_list),
        };
        let (format_name, credential) =
            self.sign_credential(signer, format, &claims, &device_key, &validity, &status)?;
        let decision = DecisionRecord {
            profile: Some(meta.profile.clone()),
            key_id: Some(signer.kid().to_owned()),
            payload_sha256: Some(pkcs11_shim::digest::sha256(credential.as_bytes())),
            ..self.decision(client, "refresh", "allow", &policy.hash, now)
        };
        let meta = self
            .registry
            .refresh(
                id,
                &holder,
                &device,
                signer.kid(),
                validity.valid_until.unix_timestamp(),
                decision,
            )
            .map_err(store_problem)?;
        let response = IssueResponse {
            id: &meta.id,
            profile: &meta.profile,
            format: format_name,
            credential: &credential,
            kid: signer.kid(),
            key_label: signer.label(),
            valid_from: rfc3339(validity.valid_from),
            valid_until: rfc3339(validity.valid_until),
            document_expiry: meta.document_expiry.clone(),
            status: StatusOut {
                uri: &status.uri,
                idx: status.idx,
            },
            fee_krw: 0,
            free_copy: false,
            superseded: &[],
        };
        Ok((Reply::Ok, serde_json::to_vec(&response).unwrap_or_default()))
    }

    /// Builds and signs a credential of `format`; its format name and text.
    fn sign_credential(
        &self,
        signer: &crate::credential::DocumentSigner<'static>,
        format: CredentialFormat,
        claims: &ResidentCardClaims,
        device: &pkcs11_shim::PublicKey,
        validity: &SignatureValidity,
        status: &StatusReference,
    ) -> Result<(&'static str, String), Refusal> {
        let signed = match format {
            CredentialFormat::Mdoc => self
                .metrics
                .hsm("sign", || {
                    mdoc::issue(signer, claims, device, validity, Some(status))
                })
                .map(|cbor| ("mso_mdoc", mdoc::to_base64url(&cbor))),
            CredentialFormat::SdJwtVc => self
                .metrics
                .hsm("sign", || {
                    sdjwt::issue(
                        signer,
                        claims,
                        device,
                        validity,
                        Some(status),
                        &self.credential.issuer,
                    )
                })
                .map(|jwt| ("dc+sd-jwt", jwt)),
        };
        if signed.is_ok() {
            // Usage limits count signatures, committed or not.
            self.count_signature(signer.label(), validity.valid_until.unix_timestamp());
        }
        signed.map_err(credential_problem)
    }

    /// Records a refusal (authorization, policy, registry rule) as an audit
    /// entry; a refusal that cannot be recorded is not given (503).
    pub(crate) fn audited(
        &self,
        client: &str,
        action: &str,
        answer: Answer,
        policy_hash: &str,
        holder: Option<crate::store::Pseudonym>,
        now: OffsetDateTime,
    ) -> Answer {
        match answer {
            Err(p) if p.rule.is_some() && p.class.is_client_error() => {
                let record = DecisionRecord {
                    rule: p.rule.clone(),
                    ..self.decision(client, action, "deny", policy_hash, now)
                };
                match self.registry.record(record, holder) {
                    Ok(()) => Err(p),
                    Err(e) => Err(store_problem(e)),
                }
            }
            other => other,
        }
    }

    /// A decision of this node.
    pub(crate) fn decision(
        &self,
        actor: &str,
        action: &str,
        outcome: &str,
        policy_hash: &str,
        now: OffsetDateTime,
    ) -> DecisionRecord {
        DecisionRecord {
            node: self.node_id.clone(),
            at: now.unix_timestamp(),
            actor: actor.to_owned(),
            action: action.to_owned(),
            outcome: outcome.to_owned(),
            policy_hash: policy_hash.to_owned(),
            ..DecisionRecord::default()
        }
    }

    /// `GET /v1/credentials/{id}`.
    pub(crate) fn metadata(&self, client: &str, id: &str) -> Answer {
        let policy = self.current().policy.clone();
        if ![Role::Issuer, Role::Revoker, Role::Auditor]
            .iter()
            .any(|r| policy.has_role(client, *r))
        {
            return Err(forbidden(client, Role::Issuer));
        }
        check_id(id)?;
        let meta = self.registry.credential(id).map_err(store_problem)?;
        Ok((Reply::Ok, self.meta_json(&meta)))
    }

    /// `POST /v1/credentials/{id}/{revoke,suspend,reinstate}`.
    pub(crate) fn change_state(
        &self,
        client: &str,
        id: &str,
        action: &'static str,
        body: &[u8],
        now: OffsetDateTime,
    ) -> Answer {
        let policy_hash = self.current().policy.hash.clone();
        let answer = self.change_state_checked(client, id, action, body, now);
        self.audited(client, action, answer, &policy_hash, None, now)
    }

    fn change_state_checked(
        &self,
        client: &str,
        id: &str,
        action: &'static str,
        body: &[u8],
        now: OffsetDateTime,
    ) -> Answer {
        let policy = self.current().policy.clone();
        if !policy.has_role(client, Role::Revoker) {
            return Err(forbidden(client, Role::Revoker));
        }
        if !body.is_empty() {
            let _: StateChangeRequest =
                serde_json::from_slice(body).map_err(|e| json_problem(&e))?;
        }
        check_id(id)?;
        let to = match action {
            "revoke" => CredentialState::Revoked,
            "suspend" => CredentialState::Suspended,
            _ => CredentialState::Active,
        };
        let decision = self.decision(client, action, "allow", &policy.hash, now);
        let meta = self
            .registry
            .set_state(id, to, decision)
            .map_err(store_problem)?;
        self.status_changed();
        Ok((Reply::Ok, self.meta_json(&meta)))
    }

    fn meta_json(&self, meta: &CredentialMeta) -> Vec<u8> {
        let uri = self.status_uri(meta.status_list);
        let out = MetaOut {
            id: &meta.id,
            profile: &meta.profile,
            kid: &meta.kid,
            state: meta.state.as_str(),
            status: StatusOut {
                uri: &uri,
                idx: meta.status_index,
            },
            issued_at: OffsetDateTime::from_unix_timestamp(meta.issued_at)
                .map(rfc3339)
                .unwrap_or_default(),
            valid_until: OffsetDateTime::from_unix_timestamp(meta.valid_until)
                .map(rfc3339)
                .unwrap_or_default(),
            document_expiry: &meta.document_expiry,
        };
        serde_json::to_vec(&out).unwrap_or_default()
    }
}

/// The MAC of what makes a document the same document (the holder's names,
/// birth date, address and portrait), under the holder's secret: the
/// registry keeps it so a refresh can prove it re-signs the same claims.
fn claims_mac(
    secret: &crate::store::HolderSecret,
    claims: &ResidentCardClaims,
) -> Result<[u8; 32], Refusal> {
    let mut input = b"dojang-claims-v1\0".to_vec();
    let portrait = claims
        .portrait
        .as_deref()
        .map(pkcs11_shim::digest::sha256)
        .unwrap_or_default();
    let birth = claims.birth_date.to_string();
    for field in [
        claims.family_name.as_bytes(),
        claims.given_name.as_bytes(),
        birth.as_bytes(),
        claims.address.as_bytes(),
        &portrait,
    ] {
        input.extend_from_slice(&(field.len() as u32).to_be_bytes());
        input.extend_from_slice(field);
    }
    secret.claims_mac(&input).map_err(|e| {
        tracing::error!(error = %e, "computing a claims MAC");
        Refusal::new(Class::Internal, "internal", "internal error")
    })
}

fn replay(seal: &SealKey, sealed: &[u8]) -> Answer {
    match seal.open(sealed) {
        Some(body) => Ok((Reply::Created, body)),
        // Same key and body hash but it does not open: it was sealed for a
        // different request (the body hash matched by the registry's check).
        None => Err(store_problem(StoreError::IdempotencyMismatch)),
    }
}

fn check_id(id: &str) -> Result<(), Refusal> {
    if id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(Refusal::new(
            Class::NotFound,
            "not_found",
            "no credential with this id",
        ))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
