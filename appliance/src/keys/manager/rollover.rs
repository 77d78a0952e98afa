//! Importing an IACA rollover: the successor root, trusted only through
//! the link the current root signed (and the link back), is kept in the
//! registry with its first CRL; DS certificates are made under it from the
//! next ceremony on. Spares the old root certified leave the pool (they
//! would keep the old root in use); the old root stays published while a
//! DS key it certified does.

use dojang_policies::Policy;
use time::OffsetDateTime;

use super::KeyManager;
use super::ceremony::ImportError;
use super::roots::verify_rollover;
use super::state::store_problem;
use crate::keys::ceremony::{CeremonyRefusal, check_crl, verify_record};
use crate::keys::order::digest;
use crate::pki::exchange::{CeremonyResponse, RolloverCertificates, b64};
use crate::pki::profile::CertFacts;
use crate::pki::rollover::short_key_id;
use crate::store::{ROLLOVER_DOCUMENT, ceremony_answer_document, root_crl_document};

/// A successor root, verified.
struct Successor<'a> {
    certificates: &'a RolloverCertificates,
    facts: &'a CertFacts,
    crl: &'a str,
    record: &'a str,
    officers: &'a [String],
}

impl KeyManager {
    /// Imports a rollover ceremony's response (verified first).
    pub(super) fn import_rollover(
        &self,
        response: &CeremonyResponse,
        policy: &Policy,
        now: OffsetDateTime,
    ) -> Result<String, ImportError> {
        let officers = verify_record(&response.record, &response.signatures, policy)
            .map_err(CeremonyRefusal::Officers)?;
        let record = digest(&response.record.bytes());
        let answer = ceremony_answer_document(&format!("rollover-{record}"));
        let failed = |e: crate::store::StoreError| ImportError::Failed(store_problem(e));
        if self
            .node
            .registry
            .document(&answer)
            .map_err(failed)?
            .is_some()
        {
            return Err(CeremonyRefusal::Replayed(format!("rollover {record}")).into());
        }
        let current = self
            .view()
            .iaca
            .clone()
            .ok_or_else(|| ImportError::Failed("no IACA loaded".into()))?;
        let from =
            b64("iaca", &response.iaca).map_err(|e| CeremonyRefusal::Malformed(e.to_string()))?;
        if from != current.0 {
            return Err(CeremonyRefusal::Chain(
                "the rollover does not start from the current root".into(),
            )
            .into());
        }
        let certificates = response.rollover.as_ref().ok_or_else(|| {
            CeremonyRefusal::Malformed("a rollover without its certificates".into())
        })?;
        let (root, facts) =
            verify_rollover(&current.0, certificates).map_err(CeremonyRefusal::Chain)?;
        let root_x509 = openssl::x509::X509::from_der(&root)
            .map_err(|e| CeremonyRefusal::Chain(e.to_string()))?;
        // The successor the officers signed for, by name.
        let named = root_x509
            .subject_name()
            .entries_by_nid(openssl::nid::Nid::COMMONNAME)
            .next()
            .and_then(|e| e.data().to_string().ok());
        if named.is_none() || named != response.record.successor {
            return Err(CeremonyRefusal::Chain(
                "the successor root is not the one the officers' record names".into(),
            )
            .into());
        }
        let crl = check_crl(&response.crl, &[], &root_x509, None, now)?;
        let successor = Successor {
            certificates,
            facts: &facts,
            crl: &crl,
            record: &record,
            officers: &officers,
        };
        self.keep_successor(&answer, &successor, now)
    }

    /// Keeps a verified successor (once, on every node): its CRL, the
    /// rollover, and a pool without the old root's spares.
    fn keep_successor(
        &self,
        answer: &str,
        successor: &Successor<'_>,
        now: OffsetDateTime,
    ) -> Result<String, ImportError> {
        let Successor {
            certificates,
            facts,
            crl,
            record,
            officers,
        } = successor;
        let failed = |e: crate::store::StoreError| ImportError::Failed(store_problem(e));
        let decision = self.done(
            "ceremony.answer",
            format!(
                "IACA rollover record {record}, signed by {}",
                officers.join(", ")
            ),
            now,
        );
        // A rollover is taken once, on every node.
        if !self
            .node
            .registry
            .set_document_if_absent(answer, record, decision)
            .map_err(failed)?
        {
            return Err(CeremonyRefusal::Replayed(format!("rollover {record}")).into());
        }
        let short = short_key_id(facts.ski.as_deref().unwrap_or_default());
        let decision = self.done(
            "pki.crl",
            format!("first CRL of the successor root {short}"),
            now,
        );
        self.node
            .registry
            .set_document(&root_crl_document(&short), crl, decision)
            .map_err(failed)?;
        let stored = self
            .node
            .registry
            .document(ROLLOVER_DOCUMENT)
            .map_err(failed)?;
        let mut rollovers = self.rollovers(stored.as_deref());
        rollovers.push((*certificates).clone());
        let decision = self.done("pki.rollover", format!(
            "IACA rollover: successor root {short} (valid until {}), linked both ways to the current root; record {record} signed by {}",
            crate::node::rfc3339(facts.not_after),
            officers.join(", ")
        ), now);
        let text =
            serde_json::to_string(&rollovers).map_err(|e| ImportError::Failed(e.to_string()))?;
        self.node
            .registry
            .set_document(ROLLOVER_DOCUMENT, &text, decision)
            .map_err(failed)?;
        let dropped = self.drop_old_spares(now).map_err(ImportError::Failed)?;
        self.refresh_keys(true)
            .map_err(|e| ImportError::Failed(e.0))?;
        Ok(format!(
            "IACA rollover to root {short}; {} spare(s) the old root certified left the pool (a DS ceremony certifies new ones under the successor)",
            dropped.len()
        ))
    }

    /// Certified spares leave the pool at a rollover: the next rotations
    /// take keys the successor certifies. Their keys stay in the token
    /// (never used; the pool is a row, and a row never removes a key).
    fn drop_old_spares(&self, now: OffsetDateTime) -> Result<Vec<String>, String> {
        let mut pool = self.pool()?;
        let dropped: Vec<String> = pool
            .keys
            .iter()
            .filter(|s| s.certificate.is_some())
            .map(|s| s.label.clone())
            .collect();
        if dropped.is_empty() {
            return Ok(dropped);
        }
        pool.keys.retain(|s| s.certificate.is_none());
        self.store_pool(
            &pool,
            "keys.pool",
            format!(
                "DS spare pool: [{}] certified by the old root left the pool at the IACA rollover (left in the token, never used)",
                dropped.join(", ")
            ),
            now,
        )?;
        Ok(dropped)
    }
}
