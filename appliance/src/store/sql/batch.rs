//! Credential rows: the one INSERT every issued credential takes, and a
//! batch's copies (each with its own phone key, status position and audit
//! entry, in the transaction of the credential they copy).

use super::tx::{Appended, Tx, Value};
use crate::store::{BatchCopy, DecisionRecord, NewCredential, StoreError};

/// A credential row, inserted active.
const INSERT_CREDENTIAL: &str =
    "INSERT INTO credentials (id, holder, device, profile, kid, state, status_list,
                          status_index, issued_at, valid_until, document_expiry,
                          free_copy, claims_mac, batch_of, has_portrait)
 VALUES ($1, $2, $3, $4, $5, 'active', $6, $7, $8, $9, $10, $11, $12, $13, $14)";

/// `c`'s values in the order of the credential INSERT's `$1`–`$14`.
pub(crate) fn credential_row<'a>(
    c: &'a NewCredential,
    free_copy: bool,
    batch_of: Option<&'a str>,
) -> [Value<'a>; 14] {
    [
        Value::from(&c.id),
        Value::from(&c.holder.0),
        Value::from(&c.device),
        Value::from(&c.profile),
        Value::from(&c.kid),
        Value::from(c.status_list),
        Value::from(c.status_index),
        Value::from(c.issued_at),
        Value::from(c.valid_until),
        Value::from(&c.document_expiry),
        Value::from(free_copy),
        Value::from(&c.claims_mac),
        Value::from(batch_of),
        Value::from(c.has_portrait),
    ]
}

/// Inserts `c` as active (`batch_of` names the credential it copies) with
/// the audit entry of `decision` about it.
pub(super) fn insert_credential(
    tx: &mut dyn Tx,
    c: &NewCredential,
    free_copy: bool,
    batch_of: Option<&str>,
    decision: &DecisionRecord,
) -> Result<(), StoreError> {
    let row = credential_row(c, free_copy, batch_of);
    tx.insert_audited(
        INSERT_CREDENTIAL,
        &row,
        Appended {
            decision,
            credential: Some(&c.id),
            holder: Some(&c.holder),
        },
    )
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
    let decision = DecisionRecord {
        action: "issue.copy".into(),
        payload_sha256: Some(copy.payload_sha256),
        ..decision.clone()
    };
    // A copy never takes a free copy of the quota: the document did.
    insert_credential(tx, c, false, Some(of), &decision)
}
