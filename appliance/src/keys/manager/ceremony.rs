//! This node's side of an offline ceremony: exporting the request (the
//! pool's uncertified keys, each proving possession in a certificate
//! request, and the revocations officers ordered) and importing the
//! response, only after `keys::ceremony` verified it; every import, taken
//! or refused, is audited.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use pkcs11_shim::KeyPurpose;
use time::{Duration, OffsetDateTime};

use super::KeyManager;
use super::state::store_problem;
use crate::keys::ceremony::{CeremonyRefusal, Expected, verify_certification, verify_record};
use crate::keys::order::digest;
use crate::keys::view::hex;
use crate::pki::exchange::{
    CeremonyRequest, CeremonyResponse, CrlOrder, KIND_CERTIFY, KIND_ROLLOVER, KIND_ROOT,
    REQUEST_CONTEXT, RequestedKey,
};
use crate::pki::{HsmKey, LeafRole};
use crate::store::{
    StoreError, ceremony_answer_document, ceremony_request_document, revoked_serials,
};

/// Why an import did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The response was refused (audited).
    #[error(transparent)]
    Refused(#[from] CeremonyRefusal),
    /// This node could not finish (the registry, the token).
    #[error("{0}")]
    Failed(String),
}

impl KeyManager {
    /// A new ceremony request, kept in the registry: every spare waiting
    /// for a certificate and every status-list key without one, planned
    /// valid from now for `pki.ds_validity_days` (cut to the IACA's end),
    /// and the serials of every DS certificate officers ordered revoked.
    /// Its JSON bytes.
    pub fn ceremony_request(&self, now: OffsetDateTime) -> Result<Vec<u8>, String> {
        if !self.pki_config.offline() {
            return Err(
                "the IACA is online (pki.iaca_custody = \"online\"): no ceremony certifies DS keys"
                    .into(),
            );
        }
        let iaca =
            self.view().iaca.clone().ok_or(
                "no IACA yet: the root ceremony comes first (dojangctl ceremony run --root)",
            )?;
        let not_before = now.replace_nanosecond(0).unwrap_or(now);
        let not_after = (not_before + Duration::days(i64::from(self.pki_config.ds_validity_days)))
            .min(iaca.1.not_after);
        let mut keys = Vec::new();
        for spare in self.pool()?.keys.iter().filter(|s| s.certificate.is_none()) {
            let key = HsmKey::find(self.node.backend, &spare.label, KeyPurpose::DocumentSigner)
                .map_err(|e| format!("{}: {e}", spare.label))?;
            let csr = crate::pki::certificate_request(&key).map_err(|e| e.to_string())?;
            keys.push(RequestedKey {
                label: spare.label.clone(),
                kid: key.public_key().kid(),
                csr: B64.encode(csr),
                not_before: not_before.unix_timestamp(),
                not_after: not_after.unix_timestamp(),
                purpose: LeafRole::DocumentSigner,
            });
        }
        keys.extend(
            self.status_key_requests((not_before.unix_timestamp(), not_after.unix_timestamp()))?,
        );
        let (revoke, older_roots) = self.revocations_by_root()?;
        let mut random = [0u8; 8];
        openssl::rand::rand_bytes(&mut random).map_err(|e| e.to_string())?;
        let request = CeremonyRequest {
            context: REQUEST_CONTEXT.into(),
            id: hex(&random),
            created: now.unix_timestamp(),
            iaca_key_id: iaca.1.ski.as_deref().map(hex).unwrap_or_default(),
            keys,
            revoke,
            older_roots,
        };
        let bytes = serde_json::to_vec_pretty(&request).map_err(|e| e.to_string())?;
        let text = String::from_utf8(bytes.clone()).map_err(|e| e.to_string())?;
        let decision = self.done(
            "ceremony.request",
            format!(
                "ceremony request {} (sha256 {}): {} DS key(s) and {} status-list key(s) to certify, {} serial(s) to revoke",
                request.id,
                digest(&bytes),
                request.keys.iter().filter(|k| k.purpose.is_document_signer()).count(),
                request.keys.iter().filter(|k| !k.purpose.is_document_signer()).count(),
                request.revoke.len()
            ),
            now,
        );
        self.node
            .registry
            .set_document(&ceremony_request_document(&request.id), &text, decision)
            .map_err(store_problem)?;
        Ok(bytes)
    }

    /// Stores a root's new CRL: the first root's over the one it follows
    /// (every node serves one), a successor's in its own document.
    fn store_root_crl(
        &self,
        document: &str,
        pem: &str,
        served: Option<&str>,
        id: &str,
        now: OffsetDateTime,
    ) -> Result<(), String> {
        let decision = self.done("pki.crl", format!("CRL {document} from ceremony {id}"), now);
        if document == crate::store::CRL_DOCUMENT {
            self.node
                .registry
                .set_crl(pem, served, decision)
                .map_err(store_problem)?;
            if let Err(e) = self.pki.write_crl(pem) {
                tracing::warn!(error = %e, "writing the CRL file");
            }
            Ok(())
        } else {
            self.node
                .registry
                .set_document(document, pem, decision)
                .map_err(store_problem)
        }
    }

    /// Older roots still published: key id, DER, the CRL served for it.
    fn older_roots(&self) -> Result<Vec<crate::keys::ceremony::OlderRoot>, ImportError> {
        let view = self.view();
        let mut older = Vec::new();
        for (root, status) in view.roots.iter().zip(&view.root_views) {
            if status.status != "retiring" {
                continue;
            }
            let served = self
                .node
                .registry
                .document(&self.crl_document_of(&view.roots, &root.1))
                .map_err(|e| ImportError::Failed(store_problem(e)))?;
            older.push((status.key_id.clone(), root.0.clone(), served));
        }
        Ok(older)
    }

    /// The serials officers ordered revoked, by the root that issued each:
    /// the current root's, and a CRL order for every older root still
    /// published (each signs its own CRL at the ceremony).
    fn revocations_by_root(&self) -> Result<(Vec<String>, Vec<CrlOrder>), String> {
        let view = self.view();
        let revoked = self.ordered_revocations()?;
        let mut current = Vec::new();
        let mut older: Vec<CrlOrder> = view
            .root_views
            .iter()
            .filter(|r| r.status == "retiring")
            .map(|r| CrlOrder {
                iaca_key_id: r.key_id.clone(),
                revoke: Vec::new(),
            })
            .collect();
        for key in &revoked {
            let Some(der) = key.certificate.as_deref() else {
                continue;
            };
            let serial = revoked_serials(std::slice::from_ref(key))
                .map_err(store_problem)?
                .first()
                .map(|s| hex(s).to_ascii_uppercase())
                .unwrap_or_default();
            // The serial must be the one the IACA issued: a row's
            // certificate replaced by another for the same key would keep
            // the real one off the CRL.
            let root = crate::keys::view::root_for_leaf(
                &view.roots,
                der,
                &[LeafRole::DocumentSigner, LeafRole::StatusList],
            )
                .and_then(|r| r.1.ski.as_deref().map(hex))
                .ok_or_else(|| {
                    format!(
                        "revoked key {}: its certificate in the registry is not one a trusted IACA issued (the row was changed); no request until it is restored",
                        key.record.label
                    )
                })?;
            match older.iter_mut().find(|o| o.iaca_key_id == root) {
                Some(order) => order.revoke.push(serial),
                None => current.push(serial),
            }
        }
        Ok((current, older))
    }

    /// Imports a ceremony response `body` brought by `officer`: verified
    /// first, then (certify) its certificates join the pool and its CRL is
    /// served. Audited either way; a refusal is counted.
    pub fn import_ceremony(
        &self,
        body: &[u8],
        officer: &str,
        now: OffsetDateTime,
    ) -> Result<String, ImportError> {
        let outcome = self.try_import(body, now);
        let (result, rule) = match &outcome {
            Ok(summary) => ("ok", format!("ceremony.import: {summary}")),
            Err(ImportError::Refused(why)) => {
                self.node.metrics.order_refused("ceremony", why.rule());
                ("refused", format!("{}: {why}", why.rule()))
            }
            Err(ImportError::Failed(why)) => ("error", format!("ceremony.import: {why}")),
        };
        let mut decision = self.node.decision(
            officer,
            "ceremony.import",
            result,
            &self.policy.current().hash,
            now,
        );
        decision.rule = Some(rule);
        if let Err(e) = self.node.registry.record(decision, None) {
            tracing::warn!(error = %e, "recording a ceremony import");
        }
        outcome
    }

    fn try_import(&self, body: &[u8], now: OffsetDateTime) -> Result<String, ImportError> {
        let response: CeremonyResponse =
            serde_json::from_slice(body).map_err(|e| CeremonyRefusal::Malformed(e.to_string()))?;
        let policy = self.policy.current();
        let view = self.view();
        let iaca = view
            .iaca
            .clone()
            .ok_or_else(|| ImportError::Failed("no IACA loaded".into()))?;
        if response.record.kind == KIND_ROLLOVER {
            return self.import_rollover(&response, &policy, now);
        }
        if response.record.kind == KIND_ROOT {
            let officers = verify_record(&response.record, &response.signatures, &policy)
                .map_err(CeremonyRefusal::Officers)?;
            let root = crate::pki::exchange::b64("iaca", &response.iaca)
                .map_err(|e| CeremonyRefusal::Malformed(e.to_string()))?;
            if !self.view().roots.iter().any(|r| r.0 == root) {
                return Err(CeremonyRefusal::Chain(
                    "the root ceremony's IACA is not the one this daemon loaded".into(),
                )
                .into());
            }
            return Ok(format!(
                "root ceremony record (sha256 {}) signed by {}",
                digest(&response.record.bytes()),
                officers.join(", ")
            ));
        }
        if response.record.kind != KIND_CERTIFY {
            return Err(
                CeremonyRefusal::Malformed(format!("kind {:?}", response.record.kind)).into(),
            );
        }
        let id = response
            .record
            .request_id
            .clone()
            .ok_or_else(|| CeremonyRefusal::Request("the record names no request".into()))?;
        let failed = |e: StoreError| ImportError::Failed(store_problem(e));
        let request = self
            .node
            .registry
            .document(&ceremony_request_document(&id))
            .map_err(failed)?
            .ok_or_else(|| CeremonyRefusal::Request(format!("this daemon made no request {id}")))?;
        if self
            .node
            .registry
            .document(&ceremony_answer_document(&id))
            .map_err(failed)?
            .is_some()
        {
            return Err(CeremonyRefusal::Replayed(id).into());
        }
        let crl_document = self.crl_document_of(&view.roots, &iaca.1);
        let served = self.node.registry.document(&crl_document).map_err(failed)?;
        let verified = verify_certification(
            &response,
            &Expected {
                request: request.as_bytes(),
                policy: &policy,
                iaca: (&iaca.0, &iaca.1),
                served_crl: served.as_deref(),
                older: self.older_roots()?,
                now,
            },
        )?;
        self.apply_certification(
            &id,
            &response,
            verified,
            (&view.roots, &iaca, served.as_deref()),
            now,
        )
    }

    fn apply_certification(
        &self,
        id: &str,
        response: &CeremonyResponse,
        verified: crate::keys::ceremony::VerifiedCertification,
        (roots, current, served): (
            &[crate::keys::view::Root],
            &crate::keys::view::Root,
            Option<&str>,
        ),
        now: OffsetDateTime,
    ) -> Result<String, ImportError> {
        let failed = |e: String| ImportError::Failed(e);
        let record_digest = digest(&response.record.bytes());
        let decision = self.done(
            "ceremony.answer",
            format!(
                "ceremony request {id} answered by record {record_digest}, signed by {}",
                verified.officers.join(", ")
            ),
            now,
        );
        // The first import of an answer wins, on every node.
        let first = self
            .node
            .registry
            .set_document_if_absent(&ceremony_answer_document(id), &record_digest, decision)
            .map_err(|e| failed(store_problem(e)))?;
        if !first {
            return Err(CeremonyRefusal::Replayed(id.to_owned()).into());
        }
        let taken = self.certify_spares(&verified, now).map_err(failed)?;
        // Best effort: the answer is consumed, so the CRL below must be
        // stored whatever happens here (the next request asks again).
        let status_taken = self
            .take_status_certificates(&verified, now)
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "taking the status-list certificates; the next ceremony asks again");
                Vec::new()
            });
        // The root the response was verified against, whatever landed since.
        let document = self.crl_document_of(roots, &current.1);
        self.store_root_crl(&document, &verified.crl_pem, served, id, now)
            .map_err(failed)?;
        for (key_id, pem) in &verified.older_crls {
            let Some(root) = roots
                .iter()
                .find(|r| r.1.ski.as_deref().map(hex).as_deref() == Some(key_id.as_str()))
            else {
                continue;
            };
            let document = self.crl_document_of(roots, &root.1);
            let previous = self
                .node
                .registry
                .document(&document)
                .map_err(|e| failed(store_problem(e)))?;
            self.store_root_crl(&document, pem, previous.as_deref(), id, now)
                .map_err(failed)?;
        }
        self.wake();
        if self.view().signer_at(now).is_none() {
            // Nothing signs (a first ceremony, a drained pool): a spare
            // signs at once rather than at the next round.
            let _moving = self.moving_keys();
            if let Err(e) = self.act_on_plan(now) {
                tracing::warn!(error = %e, "taking a spare after the import; the next round retries");
            }
        }
        self.refresh_keys(true).map_err(|e| failed(e.0))?;
        Ok(format!(
            "request {id}: {} DS certificate(s) into the spare pool, {} status-list certificate(s) on their keys, CRL replaced; record {record_digest} signed by {}",
            taken.len(),
            status_taken.len(),
            verified.officers.join(", ")
        ))
    }

    /// Whether `der` certifies the key this token holds under `label`, as
    /// its row recorded it (`kid`); a refusal is counted and logged.
    pub(super) fn certifies_token_key(
        &self,
        label: &str,
        kid: &str,
        der: &[u8],
    ) -> Result<bool, String> {
        let certified = crate::keys::view::cert_public_key(der)?;
        let in_token = self
            .node
            .backend
            .find(label)
            .ok()
            .and_then(|k| k.public_key)
            .is_some_and(|k| k.spki_der() == certified.spki_der());
        if !in_token || kid != certified.kid() {
            self.node.metrics.order_refused("ceremony", "foreign_key");
            tracing::error!(%label, "a certificate for a key this token does not hold under the label: not taken");
        }
        Ok(in_token && kid == certified.kid())
    }

    /// The verified certificates into the pool (spares still waiting for
    /// one), an emergency spare published if none was; their labels.
    fn certify_spares(
        &self,
        verified: &crate::keys::ceremony::VerifiedCertification,
        now: OffsetDateTime,
    ) -> Result<Vec<String>, String> {
        let mut pool = self.pool()?;
        let mut taken = Vec::new();
        for cert in verified
            .certificates
            .iter()
            .filter(|c| c.purpose == LeafRole::DocumentSigner)
        {
            let Some(spare) = pool
                .keys
                .iter_mut()
                .find(|s| s.label == cert.label && s.certificate.is_none())
            else {
                tracing::warn!(label = %cert.label, "a certified key is no longer waiting in the pool");
                continue;
            };
            // The stored request and the pool are rows.
            if !self.certifies_token_key(&cert.label, &spare.kid, &cert.der)? {
                continue;
            }
            spare.certificate = Some(B64.encode(&cert.der));
            taken.push(cert.label.clone());
        }
        let promoted = pool.promote_emergency();
        self.store_pool(
            &pool,
            "keys.pool",
            format!(
                "DS spare pool: certified [{}]{}",
                taken.join(", "),
                if promoted {
                    ", emergency spare published"
                } else {
                    ""
                }
            ),
            now,
        )?;
        Ok(taken)
    }
}
