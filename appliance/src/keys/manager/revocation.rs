//! Emergency revocation and what follows it: the CRL every node serves
//! (signed by the acting node, numbered after the stored one), the sweep of
//! what a revoked DS key signed while its revocation committed. A revocation
//! row alone stops a key signing (the safe direction); the IACA lists it,
//! and what it signed changes status, only under the officers' signed order
//! kept beside it.

use std::sync::atomic::Ordering;

use openssl::x509::X509Crl;
use time::OffsetDateTime;

use super::KeyManager;
use super::moves::state_of;
use super::state::store_problem;
use crate::keys::approvals::{Operation, Proposal};
use crate::node::rfc3339;
use crate::pki::ceremony;
use crate::policy::verify_past_order;
use crate::store::{
    DS_CHAIN, KeyRevocation, Registry, StoreError, StoredKey, revocation_order_document,
    revoked_serials,
};

/// The revoked keys whose revocation officers ordered: a signed
/// emergency-revocation proposal, under a policy the one in force descends
/// from (`lineage`), naming the key by the kid of its certificate. Each is
/// returned with that verified kid (the row's can be edited); the rest
/// apart, by label.
pub fn ordered_revocations(
    registry: &dyn Registry,
    lineage: &[String],
    keys: &[StoredKey],
) -> (Vec<StoredKey>, Vec<(String, String)>) {
    let mut ordered = Vec::new();
    let mut unordered = Vec::new();
    for key in keys.iter().filter(|k| k.record.revoked) {
        match revocation_order(registry, lineage, key) {
            Ok(kid) => ordered.push(StoredKey { kid, ..key.clone() }),
            Err(why) => unordered.push((key.record.label.clone(), why)),
        }
    }
    (ordered, unordered)
}

fn revocation_order(
    registry: &dyn Registry,
    lineage: &[String],
    key: &StoredKey,
) -> Result<String, String> {
    let label = &key.record.label;
    let order = registry
        .document(&revocation_order_document(label))
        .map_err(store_problem)?
        .ok_or("no officers' order")?;
    let proposal: Proposal =
        serde_json::from_str(&order).map_err(|e| format!("unreadable order: {e}"))?;
    let names_it =
        matches!(&proposal.operation, Operation::EmergencyRevoke { label: l, .. } if l == label);
    // The certificate's own key, not the row's kid: a row can be edited.
    let kid = match &key.certificate {
        Some(_) => key.certificate_kid().ok_or("unreadable certificate")?,
        None => key.kid.clone(),
    };
    if !names_it || proposal.target.as_ref().is_none_or(|t| t.kid != kid) {
        return Err("the order names another key".into());
    }
    verify_past_order(registry, lineage, &proposal).map(|()| kid)
}

/// How long after a revocation what was signed with the key is swept again
/// (requests in flight, nodes that had not taken the revocation up yet).
const REVOCATION_SWEEP: time::Duration = time::Duration::minutes(10);
/// How often a recent revocation's credentials are swept.
const SWEEP_EVERY: time::Duration = time::Duration::seconds(10);

/// Signing attempts for one CRL when others keep being stored first.
const CRL_ATTEMPTS: usize = 3;

/// What one attempt to publish a CRL did.
enum CrlOutcome {
    /// Stored, or nothing to sign yet (no IACA, nothing revoked).
    Done,
    /// Another CRL was stored after this one's predecessor was read.
    Raced,
}

impl KeyManager {
    /// Emergency revocation (`order`: the officers' signed proposal, kept
    /// for every node to check): the key stops signing (here at once, on other
    /// nodes at their next round), its certificate goes on a new CRL, and
    /// what it signed changes status as the policy says. Returns the
    /// number of credentials changed.
    pub fn revoke_key(
        &self,
        order: &Proposal,
        label: &str,
        reason: &str,
        now: OffsetDateTime,
    ) -> Result<u64, String> {
        let moving = self.moving_keys();
        let record = serde_json::to_string(order).map_err(|e| e.to_string())?;
        let mut decision = self.node.decision(
            "dojangd",
            "keys.revoke_order",
            "ok",
            &self.policy.current().hash,
            now,
        );
        decision.rule = Some(format!(
            "key {label}: revocation ordered by proposal {}",
            order.id
        ));
        self.node
            .registry
            .set_document(&revocation_order_document(label), &record, decision)
            .map_err(store_problem)?;
        let keys = self.node.registry.keys().map_err(store_problem)?;
        let key = state_of(&keys, label)?;
        let is_ds = key.chain == DS_CHAIN;
        let credentials = if is_ds {
            self.ds_revocation_target()
        } else {
            None
        };
        let revocation = KeyRevocation {
            label: label.to_owned(),
            reason: reason.to_owned(),
            at: now,
            credentials,
        };
        let mut decision = self.key_decision("keys.revoke", "revoked", label, &key.kid, now);
        decision.rule = Some(format!("key {label}: emergency revocation"));
        let changed = self
            .node
            .registry
            .revoke_key(&revocation, decision)
            .map_err(store_problem)?;
        self.statuses.bump();
        if is_ds && self.pki_config.offline() {
            // The spare (published ahead) takes over in the same view swap
            // that stops the revoked key: no request finds no signer.
            if let Err(e) = self.act_on_plan(now) {
                tracing::warn!(error = %e, "switching to the emergency spare; the next round retries");
            }
        }
        // Signing stops here before the CRL is even signed.
        self.refresh_keys(true).map_err(|e| e.0)?;
        // Officers ordered it: a compromised key's private half goes too
        // (its certificate stays, on the CRL).
        if let Err(e) = self.destroy_private_half(key, "revoke") {
            tracing::warn!(error = %e, "a revoked key's private half is still in the token");
        }
        drop(moving);
        // The successor comes at the next round, not after a rest.
        self.wake();
        // The acting node signs CRLs (one at a time, numbers that grow); on
        // another node the leader's next round does, as it checks the CRL
        // lists every revoked key.
        if is_ds && self.leader.load(Ordering::Relaxed) {
            self.publish_crl(now)?;
            self.refresh_keys(true).map_err(|e| e.0)?;
        }
        tracing::warn!(%label, changed, "key revoked");
        Ok(changed)
    }

    /// Signs a CRL listing every revoked key and stores it for all nodes.
    fn publish_crl(&self, now: OffsetDateTime) -> Result<(), String> {
        if self.pki_config.offline() {
            // The root is offline: the next ceremony's CRL lists it (the
            // request carries every ordered revocation); readiness warns.
            tracing::warn!(
                "a DS key was revoked while the IACA is offline: hold an emergency ceremony for its CRL (docs/operations.md)"
            );
            return Ok(());
        }
        // Another CRL stored meanwhile (the lifecycle thread and a
        // revocation on this node, or a node that still thinks it leads):
        // read both again and sign what is now true.
        for _ in 0..CRL_ATTEMPTS {
            match self.try_publish_crl(now)? {
                CrlOutcome::Done => return Ok(()),
                CrlOutcome::Raced => {
                    tracing::info!("another CRL was stored meanwhile; signing again");
                }
            }
        }
        Err(format!(
            "the CRL was replaced {CRL_ATTEMPTS} times while this node signed one; the next round tries again"
        ))
    }

    fn try_publish_crl(&self, now: OffsetDateTime) -> Result<CrlOutcome, String> {
        // The CRL it replaces is read before the keys: one signed from an
        // older key list can then never replace one that lists more.
        let previous = self.node.registry.crl().map_err(store_problem)?;
        let keys = self.ordered_revocations()?;
        let serials = revoked_serials(&keys).map_err(store_problem)?;
        let this_update =
            ceremony::next_crl_update(previous.as_deref(), now).map_err(|e| e.to_string())?;
        let Some(iaca) = self.view().iaca.clone() else {
            return if serials.is_empty() {
                Ok(CrlOutcome::Done) // no IACA yet, nothing to list
            } else {
                Err("revoked DS keys but no IACA loaded to sign their CRL".into())
            };
        };
        let pem = self
            .node
            .metrics
            .hsm("sign_crl", || {
                ceremony::crl_now(
                    self.node.backend,
                    &self.pki_config,
                    &iaca.0,
                    &serials,
                    this_update,
                )
            })
            .map_err(|e| format!("signing the CRL: {e}"))?;
        let decision = crate::store::DecisionRecord {
            rule: Some(format!(
                "CRL listing {} revoked DS certificate(s), thisUpdate {}",
                serials.len(),
                rfc3339(this_update)
            )),
            ..self
                .node
                .decision("dojangd", "pki.crl", "ok", &self.policy.current().hash, now)
        };
        // Stored only over the CRL its number follows.
        match self
            .node
            .registry
            .set_crl(&pem, previous.as_deref(), decision)
        {
            Ok(()) => {}
            Err(StoreError::Conflict { .. }) => return Ok(CrlOutcome::Raced),
            Err(e) => return Err(store_problem(e)),
        }
        // The file is a copy for `dojangctl` and people; the registry's is served.
        if let Err(e) = self.pki.write_crl(&pem) {
            tracing::warn!(error = %e, "writing the CRL file");
        }
        Ok(CrlOutcome::Done)
    }

    /// Re-signs the CRL when it does not list exactly the revoked keys (a
    /// revocation whose CRL failed, or raced another node's), or when it is
    /// past half its validity (verifiers refuse a DS certificate whose CRL
    /// expired).
    pub(super) fn keep_crl_whole(&self, now: OffsetDateTime) -> Result<(), String> {
        if self.pki_config.offline() {
            return Ok(()); // ceremonies sign CRLs; readiness watches this one
        }
        let keys = self.ordered_revocations()?;
        let mut wanted = revoked_serials(&keys).map_err(store_problem)?;
        wanted.sort();
        let stored = self.node.registry.crl().map_err(store_problem)?;
        let whole_and_fresh = stored
            .as_deref()
            .and_then(|pem| X509Crl::from_pem(pem.as_bytes()).ok())
            .is_some_and(|crl| {
                let mut listed: Vec<Vec<u8>> = crl
                    .get_revoked()
                    .map(|r| {
                        r.iter()
                            .filter_map(|e| e.serial_number().to_bn().ok().map(|bn| bn.to_vec()))
                            .collect()
                    })
                    .unwrap_or_default();
                listed.sort();
                let half = i64::from(self.pki_config.crl_validity_days) * 86_400 / 2;
                let fresh = crl.next_update().is_some_and(|next| {
                    openssl::asn1::Asn1Time::from_unix(now.unix_timestamp() + half)
                        .is_ok_and(|threshold| *next >= threshold)
                });
                listed == wanted && fresh
            });
        if whole_and_fresh {
            return Ok(());
        }
        self.publish_crl(now)
    }

    /// What a revoked DS key signed while its revocation committed (a
    /// request in flight, a node that had not taken it up yet) is moved like
    /// the rest, for a while after the revocation.
    pub(super) fn sweep_revoked(&self, now: OffsetDateTime) -> Result<(), String> {
        let Some(to) = self.ds_revocation_target() else {
            return Ok(());
        };
        // Every 10 s: each sweep scans the credentials of the key.
        if let Ok(mut last) = self.last_sweep.lock() {
            if last.is_some_and(|at| now - at < SWEEP_EVERY) {
                return Ok(());
            }
            *last = Some(now);
        }
        let keys = self.ordered_revocations()?;
        for key in keys.iter().filter(|k| k.chain == DS_CHAIN) {
            let Some((_, at)) = &key.revocation else {
                continue;
            };
            if now - *at > REVOCATION_SWEEP {
                continue;
            }
            let decision =
                self.key_decision("keys.revoke", to.as_str(), &key.record.label, &key.kid, now);
            let label = key.record.label.clone();
            let changed = self
                .node
                .registry
                .mark_signed_by(
                    &key.kid,
                    to,
                    Box::new(move |moved| crate::store::DecisionRecord {
                        rule: Some(format!(
                            "key {label}: {moved} more credentials signed during the revocation"
                        )),
                        ..decision.clone()
                    }),
                )
                .map_err(store_problem)?;
            if changed > 0 {
                self.statuses.bump();
            }
        }
        Ok(())
    }

    /// The revoked keys officers ordered revoked; a revocation row without
    /// a good order is refused, counted and audited (once per key).
    pub(super) fn ordered_revocations(&self) -> Result<Vec<StoredKey>, String> {
        let keys = self.node.registry.keys().map_err(store_problem)?;
        let lineage = self.policy.lineage();
        let (ordered, unordered) =
            ordered_revocations(self.node.registry.as_ref(), &lineage, &keys);
        for (label, why) in unordered {
            let first = self
                .refused_revocations
                .lock()
                .is_ok_and(|mut seen| seen.insert(label.clone()));
            if first {
                tracing::warn!(%label, reason = %why, "a revocation row without the officers' order: not put on the CRL, its credentials untouched");
                self.node
                    .metrics
                    .order_refused("revoke", "unverified_revocation");
                self.node.record_refusal(
                    "keys.revoke",
                    // Not `why`: it can quote what an insider wrote.
                    &format!(
                        "keys.verified_order: key {label}: revocation row without a verified order"
                    ),
                    &self.policy.current().hash,
                );
            }
        }
        Ok(ordered)
    }

    /// What the policy does to the credentials of a revoked DS key.
    fn ds_revocation_target(&self) -> Option<crate::store::CredentialState> {
        match self.policy.current().keys.on_ds_revocation {
            dojang_policies::DsRevocation::Revoke => Some(crate::store::CredentialState::Revoked),
            dojang_policies::DsRevocation::Suspend => {
                Some(crate::store::CredentialState::Suspended)
            }
            dojang_policies::DsRevocation::Keep => None,
        }
    }
}
