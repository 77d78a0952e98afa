//! `POST /v1/credentials/{id}/refresh`: re-signs an active credential with
//! the current DS key and a new signature validity; the document (its
//! claims, issue and expiry dates, status entry) stays the same. A
//! credential suspended because its DS key was revoked is refreshed too:
//! signed again at a new status position, its old one revoked for good. The
//! request carries the holder data and phone key again (the registry keeps
//! neither), and they must match the stored pseudonym, phone thumbprint and
//! claims MAC. Refusals are audit entries.

use dojang_policies::CredentialFormat;
use time::OffsetDateTime;

use super::holder::{HolderSecret, claims_mac, pseudonym};
use super::issuer::{Current, Issuer};
use super::request::{RefreshRequest, check_id, holder_and_device};
use super::response::{IssueResponse, StatusOut};
use crate::credential::SignatureValidity;
use crate::credential::claims::{HolderData, ResidentCardClaims};
use crate::errors::{credential_refusal, json_refusal, key_refusal, store_refusal};
use crate::node::rfc3339;
use crate::refusal::{Answer, Class, Refusal, Reply};
use crate::store::{
    CredentialMeta, CredentialState, DecisionRecord, Pseudonym, Refresh, StoreError,
};

/// A refresh request, checked against the registry and the policy.
struct Checked {
    meta: CredentialMeta,
    format: CredentialFormat,
    number: dojang_policies::resident_number::ResidentNumber,
    holder_data: HolderData,
    device_key: pkcs11_shim::PublicKey,
    /// Suspended because its DS key was revoked, by the registry's mark
    /// and by the keys' own view (officers' orders), not the mark alone:
    /// refreshed to a new status position.
    key_suspended: bool,
}

/// What a refresh signs again, checked.
pub(super) struct Resign<'a> {
    pub(super) meta: &'a CredentialMeta,
    pub(super) format: CredentialFormat,
    pub(super) device_key: &'a pkcs11_shim::PublicKey,
    /// Suspended because its DS key was revoked: to a new status position.
    pub(super) key_suspended: bool,
    pub(super) claims: &'a ResidentCardClaims,
    pub(super) expiry: time::Date,
    pub(super) signer: &'a crate::credential::DocumentSigner<'static>,
}

impl Issuer {
    /// `POST /v1/credentials/{id}/refresh`: re-signs an active credential
    /// with the current DS key and a new signature validity; the document
    /// (its claims, issue and expiry dates, status entry) stays the same.
    /// Refusals are audit entries.
    pub fn refresh(
        &self,
        client: &crate::node::Caller,
        id: &str,
        body: &[u8],
        now: OffsetDateTime,
    ) -> Answer {
        let policy_hash = self.policy.current().hash.clone();
        let mut holder = None;
        let answer = self.refresh_checked(client, id, body, now, &mut holder);
        self.node
            .audited(client, "refresh", answer, &policy_hash, holder, now)
    }

    fn refresh_checked(
        &self,
        client: &crate::node::Caller,
        id: &str,
        body: &[u8],
        now: OffsetDateTime,
        seen_holder: &mut Option<Pseudonym>,
    ) -> Answer {
        let current = self.current();
        let checked = self.check_request(client, id, body, &current, now)?;
        let secret = self.same_owner(&checked, seen_holder)?;
        let expiry = document_expiry(&checked.meta, now)?;
        let signer = current.signer(now).map_err(|_| {
            Refusal::unavailable("no_signing_key", "no document-signer key is ready")
        })?;
        let claims = self.same_claims(&checked, &secret, expiry, &current)?;
        let signed = Resign {
            meta: &checked.meta,
            format: checked.format,
            device_key: &checked.device_key,
            key_suspended: checked.key_suspended,
            claims: &claims,
            expiry,
            signer,
        };
        let decision =
            self.node
                .caller_decision(client, "refresh", "allow", &current.policy.hash, now);
        self.resign(decision, &signed, now)
    }

    /// The body, the credential, the client's profile and rate limit.
    fn check_request(
        &self,
        client: &crate::node::Caller,
        id: &str,
        body: &[u8],
        current: &Current,
        now: OffsetDateTime,
    ) -> Result<Checked, Refusal> {
        let policy = &current.policy;
        let request: RefreshRequest = serde_json::from_slice(body).map_err(|e| json_refusal(&e))?;
        check_id(id)?;
        let (number, holder_data, device_key) =
            holder_and_device(&request.holder, &request.device_key)?;
        let meta = self.node.registry.credential(id).map_err(store_refusal)?;
        if !policy
            .client(client)
            .is_some_and(|c| c.profiles.contains(&meta.profile))
        {
            return Err(Refusal::new(
                Class::Forbidden,
                "forbidden",
                format!("client {client:?} does not have the issuer role"),
            )
            .with_rule("client.profile"));
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
        let key_suspended = meta.state == CredentialState::Suspended
            && meta.suspended_for_key
            && current.keys.revoked_kids.contains(&meta.kid);
        Ok(Checked {
            meta,
            format,
            number,
            holder_data,
            device_key,
            key_suspended,
        })
    }

    /// The holder and phone must be the credential's own, and it active.
    fn same_owner(
        &self,
        checked: &Checked,
        seen_holder: &mut Option<Pseudonym>,
    ) -> Result<HolderSecret, Refusal> {
        let (meta, number, device_key) = (&checked.meta, &checked.number, &checked.device_key);
        let secret = self
            .node
            .metrics
            .hsm("hmac", || {
                pseudonym(self.node.backend, &self.pseudonym_key, number)
            })
            .map_err(|e| key_refusal(&e))?;
        let holder = secret.pseudonym;
        *seen_holder = Some(holder);
        let device = device_key.jwk().thumbprint();
        // Everything is checked before anything is signed.
        if meta.holder != holder || meta.device != device {
            return Err(store_refusal(StoreError::Conflict {
                rule: crate::store::REFRESH_SAME_OWNER,
            }));
        }
        if meta.state != CredentialState::Active && !checked.key_suspended {
            return Err(store_refusal(StoreError::InvalidTransition {
                from: meta.state.as_str(),
                to: "refreshed",
            }));
        }
        Ok(secret)
    }

    /// The document's claims again, which must be those it was issued with.
    fn same_claims(
        &self,
        checked: &Checked,
        secret: &HolderSecret,
        expiry: time::Date,
        current: &Current,
    ) -> Result<ResidentCardClaims, Refusal> {
        let (meta, holder_data, policy) = (&checked.meta, &checked.holder_data, &current.policy);
        let issued = OffsetDateTime::from_unix_timestamp(meta.issued_at)
            .map_err(|_| store_refusal(StoreError::Internal("issued_at out of range".into())))?;
        let mut claims = ResidentCardClaims::derive(
            holder_data,
            dojang_policies::calendar::seoul_date(issued),
            policy.validity_years,
            &self.credential.issuing_authority,
        )
        .map_err(credential_refusal)?;
        claims.expiry_date = expiry;
        // The same document: the claims must be those it was issued with.
        if meta.claims_mac != Some(claims_mac(secret, &claims)?) {
            return Err(Refusal::new(
                Class::Conflict,
                "registry_conflict",
                "the holder data differ from the document's: issue a new credential instead",
            )
            .with_rule("refresh.same_claims"));
        }
        Ok(claims)
    }

    /// Where the credential's status is kept once refreshed: where it was,
    /// or, for what a revoked key signed, at a new position (the old one
    /// is revoked for good).
    fn position_for(&self, r: &Resign<'_>) -> Result<(u32, u64), Refusal> {
        if r.key_suspended {
            self.status.next_index().map_err(store_refusal)
        } else {
            Ok((r.meta.status_list, r.meta.status_index))
        }
    }

    /// Signs the same document again and records it with `decision`.
    pub(super) fn resign(
        &self,
        decision: DecisionRecord,
        r: &Resign<'_>,
        now: OffsetDateTime,
    ) -> Answer {
        let (meta, format, device_key) = (r.meta, r.format, r.device_key);
        let (holder, device) = (meta.holder, device_key.jwk().thumbprint());
        let (claims, expiry, signer) = (r.claims, r.expiry, r.signer);
        let mut validity = SignatureValidity::starting(
            now,
            self.credential.signature_validity_days,
            signer.certificate_window(),
        )
        .map_err(|_| Refusal::unavailable("no_signing_key", "the DS certificate has expired"))?;
        // Never valid past the document's last day (its end in Seoul).
        let document_end =
            time::PrimitiveDateTime::new(expiry.next_day().unwrap_or(expiry), time::Time::MIDNIGHT)
                .assume_offset(time::macros::offset!(+9));
        validity.valid_until = validity.valid_until.min(document_end);
        let (list, index) = self.position_for(r)?;
        let status = self.status_reference(format, list, index);
        let (format_name, credential) =
            self.sign_credential(signer, format, claims, device_key, &validity, &status)?;
        let decision = DecisionRecord {
            profile: Some(meta.profile.clone()),
            key_id: Some(signer.kid().to_owned()),
            payload_sha256: Some(pkcs11_shim::digest::sha256(credential.as_bytes())),
            ..decision
        };
        let meta = self
            .node
            .registry
            .refresh(
                Refresh {
                    id: meta.id.clone(),
                    holder,
                    device,
                    kid: signer.kid().to_owned(),
                    valid_until: validity.valid_until.unix_timestamp(),
                    new_position: r.key_suspended.then_some((list, index)),
                },
                decision,
            )
            .map_err(store_refusal)?;
        if r.key_suspended {
            self.status.changed();
        }
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
            copies: &[],
        };
        Ok((Reply::Ok, serde_json::to_vec(&response).unwrap_or_default()))
    }
}

/// The document's last day; a document past it is not refreshed.
pub(super) fn document_expiry(
    meta: &CredentialMeta,
    now: OffsetDateTime,
) -> Result<time::Date, Refusal> {
    let expiry = time::Date::parse(
        &meta.document_expiry,
        time::macros::format_description!("[year]-[month]-[day]"),
    )
    .map_err(|_| store_refusal(StoreError::Internal("document_expiry unreadable".into())))?;
    if expiry < dojang_policies::calendar::seoul_date(now) {
        return Err(Refusal::new(
            Class::Unprocessable,
            "policy_denied",
            format!("the document expired on {expiry}: issue a new one"),
        )
        .with_rule("document.validity"));
    }
    Ok(expiry)
}
