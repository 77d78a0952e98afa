//! Refresh from the wallet: the holder presents the credential as issued
//! and proves its phone key; no visit, no holder data from a backend. The
//! credential's own issuer signature (our DS under our IACA, revoked or
//! not: it proves the claims are ours) gives the claims, its status
//! position finds the registry row, whose phone key must be the proved
//! one; then the same re-signing as a counter's refresh (a credential
//! suspended because its DS key was revoked moves to a new position).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use ciborium::Value as Cbor;
use dojang_policies::CredentialFormat;
use serde_json::Value;
use time::{Date, OffsetDateTime};

use super::issuer::Issuer;
use super::refresh::{Resign, document_expiry};
use crate::credential::claims::ResidentCardClaims;
use crate::credential::verify::Trust;
use crate::credential::{mdoc, sdjwt};
use crate::errors::store_refusal;
use crate::refusal::{Answer, Class, Refusal};
use crate::store::{CredentialState, StoreError};

/// What a presented credential says of itself, verified.
struct Presented {
    format: CredentialFormat,
    claims: ResidentCardClaims,
    /// (list, index).
    position: (u32, u64),
    /// RFC 7638 thumbprint of the key it is bound to.
    device: String,
    /// The `kid` of the DS key that signed it.
    signer_kid: String,
}

fn unreadable(what: &str) -> Refusal {
    Refusal::bad_request(
        "invalid_credential",
        format!("the presented credential's {what} does not read"),
    )
    .with_rule("refresh.presented")
}

/// The list number of a status URI (`…/status/N` or `…/status/N.cwt`).
fn list_of(uri: &str) -> Option<u32> {
    let last = uri.rsplit('/').next()?;
    last.strip_suffix(".cwt").unwrap_or(last).parse().ok()
}

fn date(text: &str) -> Option<Date> {
    Date::parse(
        text,
        time::macros::format_description!("[year]-[month]-[day]"),
    )
    .ok()
}

/// The thumbprint of an mdoc's COSE_Key (EC2 P-256/P-384, OKP Ed25519).
fn cose_thumbprint(key: &Cbor) -> Option<String> {
    let map = key.as_map()?;
    let get = |label: i64| {
        map.iter()
            .find(|(k, _)| k.as_integer() == Some(label.into()))
            .map(|(_, v)| v)
    };
    let crv = i64::try_from(get(-1)?.as_integer()?).ok()?;
    let x = B64URL.encode(get(-2)?.as_bytes()?);
    let jwk = match crv {
        1 | 2 => pkcs11_shim::Jwk {
            kty: "EC".into(),
            crv: if crv == 1 { "P-256" } else { "P-384" }.into(),
            x,
            y: Some(B64URL.encode(get(-3)?.as_bytes()?)),
        },
        6 => pkcs11_shim::Jwk {
            kty: "OKP".into(),
            crv: "Ed25519".into(),
            x,
            y: None,
        },
        _ => return None,
    };
    Some(jwk.thumbprint())
}

fn mdoc_claims(verified: &mdoc::VerifiedMdoc) -> Option<ResidentCardClaims> {
    let els = verified.elements.get(mdoc::NAMESPACE)?;
    let text = |n: &str| els.get(n)?.as_text().map(str::to_owned);
    let flag = |n: &str| els.get(n)?.as_bool();
    let day = |n: &str| match els.get(n)? {
        Cbor::Tag(1004, inner) => date(inner.as_text()?),
        _ => None,
    };
    Some(ResidentCardClaims {
        family_name: text("family_name")?,
        given_name: text("given_name")?,
        birth_date: day("birth_date")?,
        age_over_17: flag("age_over_17")?,
        age_over_18: flag("age_over_18")?,
        resident_number_masked: text("resident_number_masked")?,
        address: text("resident_address")?,
        issue_date: day("issue_date")?,
        expiry_date: day("expiry_date")?,
        issuing_authority: text("issuing_authority")?,
        issuing_country: text("issuing_country")?,
        portrait: els.get("portrait").and_then(|p| p.as_bytes().cloned()),
    })
}

fn sdjwt_claims(claims: &serde_json::Map<String, Value>) -> Option<ResidentCardClaims> {
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_owned);
    let top = |n: &str| text(claims.get(n));
    let age = |n: &str| claims.get("age_equal_or_over")?.get(n)?.as_bool();
    let portrait = match claims.get("picture").and_then(Value::as_str) {
        Some(url) => Some(
            base64::engine::general_purpose::STANDARD
                .decode(url.strip_prefix("data:image/jpeg;base64,")?)
                .ok()?,
        ),
        None => None,
    };
    Some(ResidentCardClaims {
        family_name: top("family_name")?,
        given_name: top("given_name")?,
        birth_date: date(&top("birthdate")?)?,
        age_over_17: age("17")?,
        age_over_18: age("18")?,
        resident_number_masked: top("resident_number_masked")?,
        address: text(claims.get("address")?.get("formatted"))?,
        issue_date: date(&top("issuance_date")?)?,
        expiry_date: date(&top("expiry_date")?)?,
        issuing_authority: top("issuing_authority")?,
        issuing_country: top("issuing_country")?,
        portrait,
    })
}

/// A wallet's refresh refused by `rule`, for `why`.
fn not_refreshed(rule: &'static str, why: &str) -> Refusal {
    Refusal::new(Class::Conflict, "registry_conflict", why.to_owned()).with_rule(rule)
}

impl Issuer {
    /// The presented credential is the row's document as it was signed:
    /// by the row's DS key, with the row's expiry (the database does not
    /// get to extend it), the portrait the row says it has (a holder may
    /// withhold a disclosure), and due: active ones only in the second half
    /// of their signature validity (refreshes are not free signatures).
    fn same_document(
        &self,
        p: &Presented,
        meta: &crate::store::CredentialMeta,
        key_suspended: bool,
        (expiry, now): (Date, OffsetDateTime),
    ) -> Result<(), Refusal> {
        if p.signer_kid != meta.kid || p.claims.expiry_date != expiry {
            return Err(not_refreshed(
                "refresh.same_document",
                "the presented credential is not the registry's document",
            ));
        }
        if meta.has_portrait != Some(p.claims.portrait.is_some()) {
            return Err(not_refreshed(
                "refresh.complete",
                "present the credential with every disclosure (the portrait too), or refresh at the counter",
            ));
        }
        let half = i64::from(self.credential.signature_validity_days) * 86_400 / 2;
        if !key_suspended && meta.valid_until - now.unix_timestamp() > half {
            return Err(not_refreshed(
                "refresh.too_early",
                "the signature is valid for more than half its time: refresh later",
            ));
        }
        Ok(())
    }

    /// The presented credential, verified against our IACA now.
    fn verify_presented(
        &self,
        presented: &str,
        current: &super::issuer::Current,
        now: OffsetDateTime,
    ) -> Result<Presented, Refusal> {
        let iaca = current
            .keys
            .iaca
            .as_ref()
            .ok_or_else(|| Refusal::unavailable("no_signing_key", "no IACA is loaded"))?;
        let trust = Trust::Iaca(iaca.0.clone());
        let refused = |_| {
            Refusal::bad_request(
                "invalid_credential",
                "the presented credential does not verify as one this issuer signed",
            )
            .with_rule("refresh.presented")
        };
        if presented.contains('~') {
            let verified =
                sdjwt::verify(presented, &trust, now, Some(sdjwt::VCT)).map_err(refused)?;
            let claims = sdjwt_claims(&verified.claims).ok_or_else(|| unreadable("claims"))?;
            let status = verified
                .claims
                .get("status")
                .and_then(|s| s.get("status_list"));
            let list = status
                .and_then(|s| s.get("uri"))
                .and_then(Value::as_str)
                .and_then(list_of);
            let idx = status.and_then(|s| s.get("idx")).and_then(Value::as_u64);
            let jwk: pkcs11_shim::Jwk = verified
                .claims
                .get("cnf")
                .and_then(|c| c.get("jwk"))
                .and_then(|j| serde_json::from_value(j.clone()).ok())
                .ok_or_else(|| unreadable("cnf"))?;
            let signer_kid = verified.header.get("kid").and_then(Value::as_str);
            return Ok(Presented {
                signer_kid: signer_kid.ok_or_else(|| unreadable("kid"))?.to_owned(),
                format: CredentialFormat::SdJwtVc,
                claims,
                position: list.zip(idx).ok_or_else(|| unreadable("status"))?,
                device: jwk.thumbprint(),
            });
        }
        let cbor = B64URL
            .decode(presented.trim())
            .map_err(|_| unreadable("encoding"))?;
        let verified = mdoc::verify(&cbor, &trust, now, Some(mdoc::DOC_TYPE)).map_err(refused)?;
        let status = verified
            .status
            .as_ref()
            .ok_or_else(|| unreadable("status"))?;
        Ok(Presented {
            signer_kid: verified.signer_kid.clone(),
            format: CredentialFormat::Mdoc,
            claims: mdoc_claims(&verified).ok_or_else(|| unreadable("elements"))?,
            position: (
                list_of(&status.uri).ok_or_else(|| unreadable("status"))?,
                status.idx,
            ),
            device: cose_thumbprint(&verified.device_key).ok_or_else(|| unreadable("deviceKey"))?,
        })
    }

    /// Re-signs a presented credential for the wallet holding `key` (whose
    /// proof the wallet listener checked); audited as `wallet.refresh`.
    pub fn refresh_presented(
        &self,
        presented: &str,
        key: &pkcs11_shim::PublicKey,
        now: OffsetDateTime,
    ) -> Answer {
        let current = self.current();
        let p = self.verify_presented(presented, &current, now)?;
        let meta = self
            .node
            .registry
            .credential_at(p.position.0, p.position.1)
            .map_err(store_refusal)?;
        let thumbprint = key.jwk().thumbprint();
        if p.device != thumbprint || meta.device != thumbprint {
            return Err(store_refusal(StoreError::Conflict {
                rule: crate::store::REFRESH_SAME_OWNER,
            }));
        }
        let key_suspended = meta.state == CredentialState::Suspended
            && meta.suspended_for_key
            && current.keys.revoked_kids.contains(&meta.kid);
        if meta.state != CredentialState::Active && !key_suspended {
            return Err(store_refusal(StoreError::InvalidTransition {
                from: meta.state.as_str(),
                to: "refreshed",
            }));
        }
        let profile_format = current.policy.profiles.get(&meta.profile).map(|r| r.format);
        if profile_format != Some(p.format) {
            return Err(Refusal::new(
                Class::Unprocessable,
                "policy_denied",
                "the credential's profile is no longer in the policy",
            )
            .with_rule("client.profile"));
        }
        let expiry = document_expiry(&meta, now)?;
        self.same_document(&p, &meta, key_suspended, (expiry, now))?;
        let claims = p.claims;
        let signer = current.signer(now).map_err(|_| {
            Refusal::unavailable("no_signing_key", "no document-signer key is ready")
        })?;
        let resign = Resign {
            meta: &meta,
            format: p.format,
            device_key: key,
            key_suspended,
            claims: &claims,
            expiry,
            signer,
        };
        let decision = self.node.decision(
            "wallet",
            "wallet.refresh",
            "allow",
            &current.policy.hash,
            now,
        );
        self.resign(decision, &resign, now)
    }
}
