//! Credential rows: the one INSERT every issued credential takes, and a
//! batch's copies (each with its own phone key, status position and audit
//! entry, in the transaction of the credential they copy).

use super::tx::{Tx, args};
use crate::store::{BatchCopy, DecisionRecord, NewCredential, StoreError};

/// Inserts `c` as active; `batch_of` names the credential it copies.
pub(super) fn insert_credential(
    tx: &mut dyn Tx,
    c: &NewCredential,
    free_copy: bool,
    batch_of: Option<&str>,
) -> Result<(), StoreError> {
    let _ = tx.execute(
        "INSERT INTO credentials (id, holder, device, profile, kid, state, status_list,
                                  status_index, issued_at, valid_until, document_expiry,
                                  free_copy, claims_mac, batch_of, has_portrait)
         VALUES ($1, $2, $3, $4, $5, 'active', $6, $7, $8, $9, $10, $11, $12, $13, $14)",
        args![
            &c.id,
            &c.holder.0,
            &c.device,
            &c.profile,
            &c.kid,
            c.status_list,
            c.status_index,
            c.issued_at,
            c.valid_until,
            &c.document_expiry,
            free_copy,
            &c.claims_mac,
            batch_of,
            c.has_portrait,
        ],
    )?;
    Ok(())
}

/// A copy of the batch whose first credential is `of`, with its own
/// audit entry (`issue.copy`).
pub(super) fn insert_copy(
    tx: &mut dyn Tx,
    of: &str,
    copy: &BatchCopy,
    decision: &DecisionRecord,
) -> Result<(), StoreError> {
    let c = &copy.credential;
    // A copy never takes a free copy of the quota: the document did.
    insert_credential(tx, c, false, Some(of))?;
    let decision = DecisionRecord {
        action: "issue.copy".into(),
        payload_sha256: Some(copy.payload_sha256),
        ..decision.clone()
    };
    tx.append_audit(&decision, Some(&c.id), Some(&c.holder))
}
