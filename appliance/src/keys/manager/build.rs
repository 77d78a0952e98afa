//! Building the key view: the service keys and the PKI directory's DS
//! certificates taken in at the first start, then what each chain's keys
//! give the listeners (signers, JWKS, certificates, the CRL).

use std::collections::HashMap;
use std::sync::Arc;

use pkcs11_shim::{KeyPurpose, PublicKey};
use time::OffsetDateTime;

use super::KeyManager;
use super::state::store_problem;
use super::token::TokenCheck;
use crate::audit::checkpoint::NoteKey;
use crate::credential::{CredentialError, DocumentSigner};
use crate::keys::lifecycle::{KeyRecord, KeyState};
use crate::keys::view::{
    KeyView, ScheduledSigner, StatusKey, cert_public_key, fingerprint, jwk_entry,
    no_certificate_end,
};
use crate::node::LoadError;
use crate::pki::DsCertificate;
use crate::pki::profile::{self, CertFacts, LeafRole};
use crate::store::{AUDIT_CHAIN, DS_CHAIN, STATUS_CHAIN, StoreError, StoredKey};

impl KeyManager {
    /// First start: the registry has no DS key yet, so the certificates
    /// `dojangctl pki init` / `pki issue-ds` wrote are taken in; the newest
    /// valid one signs, older ones are retired. Later files are not taken
    /// in (a key enters only through the schedule or officers' approval).
    pub(crate) fn import_existing_keys(&self, now: OffsetDateTime) -> Result<(), LoadError> {
        let keys = self
            .node
            .registry
            .keys()
            .map_err(|e| LoadError(store_problem(e)))?;
        for (chain, label, purpose) in [
            (
                STATUS_CHAIN,
                &self.labels.status_list,
                KeyPurpose::StatusList,
            ),
            (AUDIT_CHAIN, &self.labels.audit, KeyPurpose::Audit),
        ] {
            if !keys.iter().any(|k| k.chain == chain) {
                self.import_service_key(chain, label, purpose, now)?;
            }
        }
        // DS certificates on disk need the IACA on disk (`pki init`).
        if !self.pki.iaca_path().exists() {
            return Ok(());
        }
        let certs = self
            .pki
            .ds_certificates()
            .map_err(|e| LoadError(format!("DS certificates: {e}")))?;
        if keys.iter().any(|k| k.chain == DS_CHAIN) {
            for cert in certs
                .iter()
                .filter(|c| !keys.iter().any(|k| k.record.label == c.label))
            {
                tracing::warn!(
                    label = %cert.label,
                    "a DS certificate in the PKI directory is not in the registry and is ignored: new keys come from rotation (dojangctl keys rotate)"
                );
            }
            return Ok(());
        }
        let signing = certs
            .iter()
            .rev()
            .find(|c| c.facts.not_before <= now && now < c.facts.not_after)
            .map(|c| c.label.clone());
        for cert in &certs {
            let state = if Some(&cert.label) == signing.as_ref() {
                KeyState::Active
            } else {
                KeyState::Retired
            };
            let public = cert_public_key(&cert.der).map_err(LoadError)?;
            let kid = public.kid();
            let key = StoredKey {
                chain: DS_CHAIN.into(),
                kid: kid.clone(),
                certificate: Some(cert.der.clone()),
                public_key: public.spki_der().to_vec(),
                record: KeyRecord {
                    label: cert.label.clone(),
                    state,
                    created_at: cert.facts.not_before,
                    activate_at: cert.facts.not_before,
                    cert_not_after: cert.facts.not_after,
                    signatures: 0,
                    // Unknown: what it signed may still be valid, so it
                    // stays published until destroyed by officers.
                    last_signature_valid_until: None,
                    revoked: false,
                },
                revocation: None,
            };
            let decision = self.key_decision("keys.import", state.as_str(), &cert.label, &kid, now);
            match self.node.registry.add_key(&key, decision) {
                // Another node imported it first.
                Ok(()) | Err(StoreError::Conflict { .. }) => {}
                Err(e) => return Err(LoadError(store_problem(e))),
            }
        }
        Ok(())
    }

    /// First start: the configured status-list (audit) key becomes its
    /// chain's active key.
    fn import_service_key(
        &self,
        chain: &str,
        label: &str,
        purpose: KeyPurpose,
        now: OffsetDateTime,
    ) -> Result<(), LoadError> {
        let key = self
            .node
            .backend
            .find(label)
            .map_err(|e| LoadError(format!("{chain} key {label:?}: {e}")))?;
        if key.purpose != purpose {
            return Err(LoadError(format!(
                "key {label:?} is a {} key, not a {purpose} key",
                key.purpose
            )));
        }
        let public = key
            .public_key
            .as_ref()
            .ok_or_else(|| LoadError(format!("key {label:?} has no public key")))?;
        let kid = public.kid();
        let stored = StoredKey {
            chain: chain.into(),
            kid: kid.clone(),
            certificate: None,
            public_key: public.spki_der().to_vec(),
            record: KeyRecord {
                label: label.to_owned(),
                state: KeyState::Active,
                created_at: now,
                activate_at: now,
                cert_not_after: no_certificate_end(now),
                signatures: 0,
                last_signature_valid_until: None,
                revoked: false,
            },
            revocation: None,
        };
        let decision = self.key_decision("keys.import", "active", label, &kid, now);
        match self.node.registry.add_key(&stored, decision) {
            Ok(()) | Err(StoreError::Conflict { .. }) => Ok(()),
            Err(e) => Err(LoadError(store_problem(e))),
        }
    }

    /// Builds what the listeners need from the registry's keys.
    pub(crate) fn key_view(
        &self,
        roots: &[crate::keys::view::Root],
        stored: super::state::Stored,
    ) -> Result<KeyView, LoadError> {
        let fingerprint = stored.fingerprint();
        let super::state::Stored {
            keys,
            crl,
            pool,
            rollovers,
        } = stored;
        let mut view = self.chains_view(roots, &keys, crl)?;
        view.fingerprint = fingerprint;
        // A CRL is served only if its root signed it (a row can be edited).
        if let (Some(der), Some(first)) = (view.crl_der.as_deref(), roots.first())
            && !crl_signed_by(der, &first.0)
        {
            view.problems
                .push("the stored CRL is not signed by the IACA: not served".into());
            view.crl_der = None;
            view.crl_pem = None;
        }
        let parsed = super::Pool::parse(pool.as_deref()).unwrap_or_default();
        view.root_views = self.root_views(
            roots,
            &keys,
            &parsed,
            view.crl_der.as_deref(),
            rollovers.as_deref(),
        );
        let published: Vec<&[u8]> = roots
            .iter()
            .zip(&view.root_views)
            .filter(|(_, v)| v.status != "retired")
            .map(|(r, _)| r.0.as_slice())
            .collect();
        view.iaca_pem = (!published.is_empty()).then(|| {
            published
                .iter()
                .filter_map(|der| crate::pki::cert_pem(der).ok())
                .collect::<String>()
                .into_bytes()
        });
        view.iaca = roots.last().cloned();
        view.roots = roots.to_vec();
        if self.pki_config.offline() {
            self.pool_view(&mut view, roots, &keys, pool.as_deref());
        }
        Ok(view)
    }

    /// The published emergency spare (verifiers cache the JWKS: they know
    /// it before it signs), the pool's state, and the revocations the
    /// served CRL does not list yet.
    fn pool_view(
        &self,
        view: &mut KeyView,
        roots: &[crate::keys::view::Root],
        keys: &[StoredKey],
        pool: Option<&str>,
    ) {
        let pool = match super::Pool::parse(pool) {
            Ok(pool) => pool,
            Err(e) => {
                view.problems.push(e);
                return;
            }
        };
        view.spares = pool.status();
        for (state, n) in [
            ("certified", view.spares.certified),
            ("uncertified", view.spares.uncertified),
            ("emergency", usize::from(view.spares.emergency.is_some())),
        ] {
            self.node
                .metrics
                .ds_spare_keys
                .with_label_values(&[state])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        if let Some(spare) = pool.keys.iter().find(|s| s.emergency) {
            match self.check_spare(spare, roots, keys) {
                Ok(checked) => {
                    let iaca_der = &checked.root;
                    let mut jwks: serde_json::Value =
                        serde_json::from_slice(&view.jwks).unwrap_or_default();
                    if let Some(list) = jwks.get_mut("keys").and_then(|k| k.as_array_mut()) {
                        list.push(jwk_entry(
                            &checked.public,
                            Some([&checked.der[..], iaca_der]),
                        ));
                    }
                    view.jwks = serde_json::to_vec(&jwks).unwrap_or_default();
                    if let Ok(pem) = crate::pki::cert_pem(&checked.der) {
                        let _ = view.ds_pem.insert(spare.label.clone(), pem.into_bytes());
                    }
                }
                Err((e, check)) => {
                    view.problems.push(format!("emergency spare: {e}"));
                    view.token_unanswered |= check == TokenCheck::Unanswered;
                }
            }
        }
        let listed = view
            .crl_der
            .as_deref()
            .and_then(|der| openssl::x509::X509Crl::from_der(der).ok())
            .map(|crl| {
                crl.get_revoked()
                    .map(|r| {
                        r.iter()
                            .filter_map(|e| e.serial_number().to_bn().ok().map(|bn| bn.to_vec()))
                            .collect::<Vec<_>>()
                    })
                    .unwrap_or_default()
            })
            .unwrap_or_default();
        view.unlisted_revocations = keys
            .iter()
            .filter(|k| k.chain == DS_CHAIN && k.record.revoked)
            .filter(|k| {
                let verified = k
                    .certificate
                    .as_deref()
                    .is_some_and(|der| crate::keys::view::root_for(roots, der).is_some());
                !verified
                    || crate::store::revoked_serials(std::slice::from_ref(*k))
                        .is_ok_and(|s| s.iter().any(|serial| !listed.contains(serial)))
            })
            .map(|k| k.record.label.clone())
            .collect();
    }

    fn chains_view(
        &self,
        roots: &[crate::keys::view::Root],
        keys: &[StoredKey],
        crl: Option<String>,
    ) -> Result<KeyView, LoadError> {
        let iaca = roots.last().map(|r| r.as_ref());
        let mut signers = Vec::new();
        let mut problems = Vec::new();
        let mut jwks = Vec::new();
        let mut ds_pem = HashMap::new();
        let mut revoked = Vec::new();
        let mut revoked_kids = Vec::new();
        let mut token_unanswered = false;
        let Some(_) = iaca else {
            problems.push(
                "no IACA yet: an officer proposes its generation (dojangctl pki propose-iaca) and another approves"
                    .to_owned(),
            );
            return self.service_key_view(roots, keys, crl, problems);
        };
        for key in keys.iter().filter(|k| k.chain == DS_CHAIN) {
            let r = &key.record;
            if r.state == KeyState::Destroyed {
                continue;
            }
            let Some(der) = &key.certificate else {
                problems.push(format!("DS key {} has no certificate", r.label));
                continue;
            };
            // A revoked key leaves the JWKS (verifiers that trust keys, not
            // chains, must stop accepting it); its certificate stays
            // fetchable, and is on the CRL.
            if r.revoked {
                revoked.push(r.label.clone());
                revoked_kids.push(key.kid.clone());
            }
            let Some((iaca_der, iaca)) = self.issuer_of(roots, &r.label, der, &mut problems) else {
                continue;
            };
            if r.is_published() {
                match cert_public_key(der) {
                    Ok(public) => jwks.push(jwk_entry(&public, Some([&der[..], iaca_der]))),
                    Err(e) => {
                        // One bad record must not keep every other change
                        // (a revocation above all) from taking effect.
                        problems.push(format!("DS certificate {}: {e}", r.label));
                        continue;
                    }
                }
            }
            let _ = ds_pem.insert(
                r.label.clone(),
                crate::pki::cert_pem(der)
                    .map_err(|e| LoadError(e.to_string()))?
                    .into_bytes(),
            );
            if r.revoked || !matches!(r.state, KeyState::Pending | KeyState::Active) {
                continue;
            }
            match self.signer_of(r, der, iaca) {
                Ok(signer) => signers.push(signer),
                Err((problem, check)) => {
                    problems.push(problem);
                    token_unanswered |= check == TokenCheck::Unanswered;
                }
            }
        }
        signers.sort_by_key(|s| s.from);
        let mut view = self.service_key_view(roots, keys, crl, problems)?;
        view.token_unanswered |= token_unanswered;
        view.signers = signers;
        view.ds_pem = ds_pem;
        view.revoked = revoked;
        view.revoked_kids = revoked_kids;
        view.jwks = serde_json::to_vec(&serde_json::json!({ "keys": jwks }))
            .map_err(|e| LoadError(e.to_string()))?;
        Ok(view)
    }

    /// The trusted root that issued a DS row's certificate; none (a
    /// problem, counted) for one no trusted root issued: published or
    /// signing only with such a certificate, never on a row's word.
    fn issuer_of<'r>(
        &self,
        roots: &'r [crate::keys::view::Root],
        label: &str,
        der: &[u8],
        problems: &mut Vec<String>,
    ) -> Option<&'r (Vec<u8>, CertFacts)> {
        let root = crate::keys::view::root_for(roots, der);
        if root.is_none() {
            self.node
                .metrics
                .order_refused("publish", "unverified_certificate");
            problems.push(format!(
                "DS key {label}: its certificate is not issued by a trusted IACA; neither published nor signing"
            ));
        }
        root
    }

    /// The signer of a pending or active DS key, or why it cannot sign.
    fn signer_of(
        &self,
        r: &KeyRecord,
        der: &[u8],
        iaca: &CertFacts,
    ) -> Result<ScheduledSigner, (String, TokenCheck)> {
        let facts = profile::check_ds(der, Some(iaca))
            .map_err(|e| (format!("DS certificate {}: {e}", r.label), TokenCheck::Done))?;
        let cert = DsCertificate {
            label: r.label.clone(),
            der: der.to_vec(),
            facts,
        };
        let signer = DocumentSigner::new(self.node.backend, cert).map_err(|e| {
            let check = match &e {
                CredentialError::Key(key) => TokenCheck::of(key),
                _ => TokenCheck::Done,
            };
            (format!("DS key {}: {e}", r.label), check)
        })?;
        Ok(ScheduledSigner {
            from: r.activate_at,
            signer: Arc::new(signer),
        })
    }

    /// The status-list and audit keys' part of a view (and the CRL), with
    /// no DS key yet: an empty issuer JWKS, the status-list keys' own.
    fn service_key_view(
        &self,
        roots: &[crate::keys::view::Root],
        keys: &[StoredKey],
        crl: Option<String>,
        mut problems: Vec<String>,
    ) -> Result<KeyView, LoadError> {
        let mut status_jwks = Vec::new();
        let mut status_keys = Vec::new();
        let mut audit_keys = Vec::new();
        let mut audit_cosigners = Vec::new();
        let mut token_unanswered = false;
        for key in keys.iter().filter(|k| k.chain != DS_CHAIN) {
            let r = &key.record;
            if !r.is_published() {
                continue;
            }
            let public = match PublicKey::from_spki_der(&key.public_key) {
                Ok(public) => public,
                Err(e) => {
                    problems.push(format!("{} key {}: {e}", key.chain, r.label));
                    continue;
                }
            };
            let signs = matches!(r.state, KeyState::Pending | KeyState::Active);
            if signs {
                match self.refuse_forged_signer(key) {
                    Ok(check) => token_unanswered |= check == TokenCheck::Unanswered,
                    Err(problem) => {
                        problems.push(problem);
                        continue;
                    }
                }
            }
            if key.chain == STATUS_CHAIN {
                status_jwks.push(jwk_entry(&public, None));
                if signs {
                    status_keys.push(StatusKey {
                        from: r.activate_at,
                        label: r.label.clone(),
                        certificate: status_certificate(roots, key, &mut problems),
                    });
                }
            } else if key.chain == AUDIT_CHAIN {
                match NoteKey::new(&self.audit_origin, public) {
                    Ok(note_key) => {
                        if signs {
                            audit_keys.push((r.activate_at, r.label.clone(), note_key.clone()));
                        }
                        audit_cosigners.push((r.label.clone(), note_key));
                    }
                    Err(e) => problems.push(format!("audit key {}: {e}", r.label)),
                }
            }
        }
        audit_keys.sort_by_key(|(from, label, _)| (*from, label.clone()));
        status_keys.sort_by(|a, b| (a.from, &a.label).cmp(&(b.from, &b.label)));
        let fingerprint = fingerprint(keys, crl.as_deref(), None);
        let (crl_pem, crl_der) = self.served_crl(crl);
        Ok(KeyView {
            status_keys,
            audit_keys,
            audit_cosigners,
            problems,
            token_unanswered,
            jwks: serde_json::to_vec(&serde_json::json!({ "keys": [] }))
                .map_err(|e| LoadError(e.to_string()))?,
            status_jwks: serde_json::to_vec(&serde_json::json!({ "keys": status_jwks }))
                .map_err(|e| LoadError(e.to_string()))?,
            crl_pem,
            crl_der,
            fingerprint,
            // No DS key, no root yet: the chains' part fills them in.
            ..KeyView::empty()
        })
    }
}

impl KeyManager {
    /// The CRL served (PEM, DER): the registry's, else the PKI directory's.
    fn served_crl(&self, crl: Option<String>) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
        let pem = crl
            .map(String::into_bytes)
            .or_else(|| std::fs::read(self.pki.crl_path()).ok());
        let der = pem
            .as_deref()
            .and_then(|pem| openssl::x509::X509Crl::from_pem(pem).ok())
            .and_then(|crl| crl.to_der().ok());
        (pem, der)
    }
}

/// A status-list row's certificate, if a trusted root issued it for the
/// row's key in the status-list profile; otherwise a problem (the row was
/// changed), and the key's tokens carry no chain.
fn status_certificate(
    roots: &[crate::keys::view::Root],
    key: &StoredKey,
    problems: &mut Vec<String>,
) -> Option<Arc<[u8]>> {
    let der = key.certificate.as_deref()?;
    let checked = crate::keys::view::root_for_leaf(roots, der, &[LeafRole::StatusList])
        .ok_or_else(|| "not issued by a trusted IACA".to_owned())
        .and_then(|root| {
            profile::check_leaf(der, Some(&root.1), LeafRole::StatusList).map_err(|e| e.to_string())
        })
        .and_then(|facts| {
            let now = OffsetDateTime::now_utc();
            (facts.not_before <= now && now < facts.not_after)
                .then_some(())
                .ok_or_else(|| "not valid now".to_owned())
        })
        .and_then(|()| cert_public_key(der))
        .and_then(|certified| {
            (certified.spki_der() == key.public_key.as_slice())
                .then_some(())
                .ok_or_else(|| "it certifies another key".to_owned())
        });
    match checked {
        Ok(()) => Some(der.into()),
        Err(why) => {
            problems.push(format!(
                "status-list key {}: its certificate in the registry is refused ({why}); its tokens carry no chain to the IACA",
                key.record.label
            ));
            None
        }
    }
}

/// Whether the CRL `der` is signed by the key of the root `root_der`.
pub(super) fn crl_signed_by(der: &[u8], root_der: &[u8]) -> bool {
    let crl = openssl::x509::X509Crl::from_der(der);
    let key = openssl::x509::X509::from_der(root_der).and_then(|r| r.public_key());
    match (crl, key) {
        (Ok(crl), Ok(key)) => crl.verify(&key).unwrap_or(false),
        _ => false,
    }
}
