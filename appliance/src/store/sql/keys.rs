//! The key half of the registry, written once: key records and their
//! moves, emergency revocation and its sweeps, usage counts, the lease,
//! officer proposals, and the documents every node shares (policy hash,
//! IACA, CRL).

use time::OffsetDateTime;

use super::tx::{Driver, Row, SqlRegistry, Tx, args};
use crate::keys::approvals::Proposal;
use crate::keys::lifecycle::{KeyRecord, KeyState};
use crate::store::keyring::{
    self, CRL_CONCURRENT, CRL_DOCUMENT, KeyRegistry, KeyRevocation, MovedAudit, StoredKey,
    StoredProposal,
};
use crate::store::{CredentialState, DecisionRecord, StoreError};

const KEY_COLUMNS: &str = "label, chain, kid, state, created_at, activate_at, certificate,
    cert_not_after, signatures, last_valid_until, revoked_reason, revoked_at, public_key";

fn key_from(row: &Row) -> Result<StoredKey, StoreError> {
    let revoked_at = row.opt_int(11)?;
    Ok(StoredKey {
        chain: row.text(1)?,
        kid: row.text(2)?,
        certificate: row.opt_blob(6)?,
        public_key: row.blob(12)?,
        record: KeyRecord {
            label: row.text(0)?,
            state: keyring::state_from(&row.text(3)?)?,
            created_at: keyring::time_from(row.int(4)?)?,
            activate_at: keyring::time_from(row.int(5)?)?,
            cert_not_after: keyring::time_from(row.int(7)?)?,
            signatures: row.count(8)?,
            last_signature_valid_until: row.opt_int(9)?.map(keyring::time_from).transpose()?,
            revoked: revoked_at.is_some(),
        },
        revocation: match (row.opt_text(10)?, revoked_at) {
            (Some(reason), Some(at)) => Some((reason, keyring::time_from(at)?)),
            _ => None,
        },
    })
}

/// A key's state and kid, locked for the rest of the transaction.
fn key_state(tx: &mut dyn Tx, label: &str) -> Result<Option<(KeyState, String)>, StoreError> {
    tx.query_opt(
        "SELECT state, kid FROM signing_keys WHERE label = $1 FOR UPDATE",
        args![label],
    )?
    .map(|row| Ok((keyring::state_from(&row.text(0)?)?, row.text(1)?)))
    .transpose()
}

/// Moves what `kid` signed from the source states of `to` to `to`, each
/// with an audit entry naming it (`decision`, as that credential's
/// suspension or revocation); how many moved. A suspension is marked as
/// the key's (`suspended_for_key`): refreshed, never reinstated.
fn mark_credentials(
    tx: &mut dyn Tx,
    kid: &str,
    to: CredentialState,
    decision: &DecisionRecord,
) -> Result<u64, StoreError> {
    let for_key = to == CredentialState::Suspended;
    let mut moved = Vec::new();
    for from in keyring::revocation_sources(to) {
        moved.extend(tx.query(
            "UPDATE credentials SET state = $1, suspended_for_key = $2
             WHERE kid = $3 AND state = $4 RETURNING id",
            args![to.as_str(), for_key, kid, *from],
        )?);
    }
    let entry = DecisionRecord {
        action: match to {
            CredentialState::Suspended => "suspend",
            _ => "revoke",
        }
        .to_owned(),
        rule: Some("keys.revoke: its DS key was revoked".to_owned()),
        key_id: Some(kid.to_owned()),
        ..decision.clone()
    };
    for row in &moved {
        tx.append_audit(&entry, Some(&row.text(0)?), None)?;
    }
    Ok(moved.len() as u64)
}

/// Refuses a key its chain has no room for: one pending, one active.
fn check_room(tx: &mut dyn Tx, key: &StoredKey) -> Result<(), StoreError> {
    let state = key.record.state;
    let rule = match state {
        KeyState::Pending => "keys.one_pending",
        KeyState::Active => "keys.one_active",
        _ => return Ok(()),
    };
    let taken = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM signing_keys WHERE chain = $1 AND state = $2)",
            args![&key.chain, state.as_str()],
        )?
        .flag(0)?;
    if taken {
        return Err(StoreError::Conflict { rule });
    }
    Ok(())
}

fn add_key_in(
    tx: &mut dyn Tx,
    key: &StoredKey,
    decision: &DecisionRecord,
) -> Result<(), StoreError> {
    let r = &key.record;
    // Checked first so both databases refuse by the same rule; the unique
    // indexes still stop two nodes adding at once.
    if key_state(tx, &r.label)?.is_some() {
        return Err(StoreError::Conflict { rule: "keys.label" });
    }
    check_room(tx, key)?;
    let _ = tx.execute(
        &format!(
            "INSERT INTO signing_keys ({KEY_COLUMNS})
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, NULL, NULL, $11)"
        ),
        args![
            &r.label,
            &key.chain,
            &key.kid,
            r.state.as_str(),
            r.created_at.unix_timestamp(),
            r.activate_at.unix_timestamp(),
            key.certificate.as_ref(),
            r.cert_not_after.unix_timestamp(),
            r.signatures,
            r.last_signature_valid_until.map(|t| t.unix_timestamp()),
            &key.public_key,
        ],
    )?;
    tx.append_audit(decision, None, None)
}

fn revoke_in(
    tx: &mut dyn Tx,
    revocation: &KeyRevocation,
    decision: &DecisionRecord,
) -> Result<u64, StoreError> {
    let Some((state, kid)) = key_state(tx, &revocation.label)? else {
        return Err(StoreError::NotFound);
    };
    if state == KeyState::Destroyed {
        return Err(StoreError::Conflict { rule: "keys.state" });
    }
    let retire = matches!(state, KeyState::Pending | KeyState::Active);
    let _ = tx.execute(
        "UPDATE signing_keys SET revoked_reason = $1, revoked_at = $2,
            state = CASE WHEN $3 THEN 'retired' ELSE state END
         WHERE label = $4 AND revoked_at IS NULL",
        args![
            &revocation.reason,
            revocation.at.unix_timestamp(),
            retire,
            &revocation.label
        ],
    )?;
    tx.append_audit(decision, None, None)?;
    match revocation.credentials {
        Some(to) => mark_credentials(tx, &kid, to, decision),
        None => Ok(0),
    }
}

/// Stores (or replaces) a shared document with its audit entry.
fn put_document(
    tx: &mut dyn Tx,
    name: &str,
    body: &str,
    decision: &DecisionRecord,
) -> Result<(), StoreError> {
    let _ = tx.execute(
        "INSERT INTO pki_documents (name, body) VALUES ($1, $2)
         ON CONFLICT (name) DO UPDATE SET body = excluded.body",
        args![name, body],
    )?;
    tx.append_audit(decision, None, None)
}

fn set_crl_in(
    tx: &mut dyn Tx,
    pem: &str,
    replaces: Option<&str>,
    decision: &DecisionRecord,
) -> Result<(), StoreError> {
    let stored = tx
        .query_opt(
            "SELECT body FROM pki_documents WHERE name = $1 FOR UPDATE",
            args![CRL_DOCUMENT],
        )?
        .map(|r| r.text(0))
        .transpose()?;
    if stored.as_deref() != replaces {
        return Err(StoreError::Conflict {
            rule: CRL_CONCURRENT,
        });
    }
    // Two first CRLs at once: the primary key lets one in, and the other's
    // write changes nothing, which is refused below.
    let written = tx.execute(
        "INSERT INTO pki_documents (name, body) VALUES ($1, $2)
         ON CONFLICT (name) DO UPDATE SET body = excluded.body
         WHERE CAST($3 AS TEXT) IS NOT NULL",
        args![CRL_DOCUMENT, pem, replaces],
    )?;
    if written != 1 {
        return Err(StoreError::Conflict {
            rule: CRL_CONCURRENT,
        });
    }
    tx.append_audit(decision, None, None)
}

fn proposal_from(row: &Row) -> Result<StoredProposal, StoreError> {
    keyring::proposal_from(&row.text(0)?, row.int(1)?)
}

impl<D: Driver> KeyRegistry for SqlRegistry<D> {
    fn keys(&self) -> Result<Vec<StoredKey>, StoreError> {
        self.driver.read(|tx| {
            tx.query(
                &format!("SELECT {KEY_COLUMNS} FROM signing_keys ORDER BY created_at, label"),
                &[],
            )?
            .iter()
            .map(key_from)
            .collect()
        })
    }

    fn add_key(&self, key: &StoredKey, decision: DecisionRecord) -> Result<(), StoreError> {
        let key = key.clone();
        self.driver.write(move |tx| add_key_in(tx, &key, &decision))
    }

    fn move_keys(
        &self,
        moves: &[(String, KeyState, KeyState)],
        at: OffsetDateTime,
        decisions: Vec<DecisionRecord>,
    ) -> Result<(), StoreError> {
        let at = at.unix_timestamp();
        let moves = moves.to_vec();
        self.driver.write(move |tx| {
            for (label, from, to) in &moves {
                let changed = tx.execute(
                    "UPDATE signing_keys SET state = $1,
                        activate_at = CASE WHEN $1 = 'active' AND $4 < activate_at
                                           THEN $4 ELSE activate_at END
                     WHERE label = $2 AND state = $3",
                    args![to.as_str(), label, from.as_str(), at],
                )?;
                if changed != 1 {
                    return Err(StoreError::Conflict { rule: "keys.state" });
                }
            }
            for decision in &decisions {
                tx.append_audit(decision, None, None)?;
            }
            Ok(())
        })
    }

    fn revoke_key(
        &self,
        revocation: &KeyRevocation,
        decision: DecisionRecord,
    ) -> Result<u64, StoreError> {
        let revocation = revocation.clone();
        self.driver
            .write(move |tx| revoke_in(tx, &revocation, &decision))
    }

    fn add_key_usage(
        &self,
        label: &str,
        signatures: u64,
        last_valid_until: i64,
    ) -> Result<(), StoreError> {
        let label = label.to_owned();
        self.driver.write(move |tx| {
            let _ = tx.execute(
                "UPDATE signing_keys SET signatures = signatures + $1,
                    last_valid_until = CASE WHEN last_valid_until IS NULL OR last_valid_until < $2
                                            THEN $2 ELSE last_valid_until END
                 WHERE label = $3",
                args![signatures, last_valid_until, &label],
            )?;
            Ok(())
        })
    }

    fn lease(&self, name: &str, holder: &str, ttl_ms: i64) -> Result<bool, StoreError> {
        let (name, holder) = (name.to_owned(), holder.to_owned());
        self.driver.write(move |tx| {
            let now = tx.clock_ms();
            let changed = tx.execute(
                &format!(
                    "INSERT INTO leases (name, holder, until_ms) VALUES ($1, $2, {now} + $3)
                     ON CONFLICT (name) DO UPDATE
                     SET holder = excluded.holder, until_ms = excluded.until_ms
                     WHERE leases.holder = excluded.holder OR leases.until_ms < {now}"
                ),
                args![&name, &holder, ttl_ms],
            )?;
            Ok(changed == 1)
        })
    }

    fn certify_key(
        &self,
        label: &str,
        (replaces, certificate): (Option<&[u8]>, &[u8]),
        not_after: OffsetDateTime,
        decision: DecisionRecord,
    ) -> Result<bool, StoreError> {
        let (label, certificate) = (label.to_owned(), certificate.to_vec());
        let replaces = replaces.map(<[u8]>::to_vec);
        self.driver.write(move |tx| {
            // Compare and set: two nodes (or a late import) never replace
            // a certificate the other stored meanwhile.
            let (der, end) = (certificate.as_slice(), not_after.unix_timestamp());
            let stored = match &replaces {
                None => tx.execute(
                    "UPDATE signing_keys SET certificate = $2, cert_not_after = $3
                     WHERE label = $1 AND chain = $4 AND certificate IS NULL",
                    args![&label, der, end, keyring::STATUS_CHAIN],
                )?,
                Some(old) => tx.execute(
                    "UPDATE signing_keys SET certificate = $2, cert_not_after = $3
                     WHERE label = $1 AND chain = $4 AND certificate = $5",
                    args![&label, der, end, keyring::STATUS_CHAIN, old.as_slice()],
                )?,
            };
            if stored == 0 {
                return Ok(false);
            }
            tx.append_audit(&decision, None, None)?;
            Ok(true)
        })
    }

    fn mark_signed_by(
        &self,
        kid: &str,
        to: CredentialState,
        audit: MovedAudit,
    ) -> Result<u64, StoreError> {
        let kid = kid.to_owned();
        self.driver.write(move |tx| {
            let moved = mark_credentials(tx, &kid, to, &audit(0))?;
            if moved > 0 {
                tx.append_audit(&audit(moved), None, None)?;
            }
            Ok(moved)
        })
    }

    fn add_proposal(
        &self,
        proposal: &Proposal,
        decision: DecisionRecord,
    ) -> Result<(), StoreError> {
        let body = keyring::proposal_json(proposal)?;
        let (id, created) = (proposal.id.clone(), proposal.created_at.unix_timestamp());
        self.driver.write(move |tx| {
            let _ = tx.execute(
                "INSERT INTO proposals (id, created_at, body, version) VALUES ($1, $2, $3, 1)",
                args![&id, created, &body],
            )?;
            tx.append_audit(&decision, None, None)
        })
    }

    fn update_proposal(
        &self,
        proposal: &Proposal,
        version: i64,
        decision: DecisionRecord,
    ) -> Result<(), StoreError> {
        let body = keyring::proposal_json(proposal)?;
        let id = proposal.id.clone();
        self.driver.write(move |tx| {
            let changed = tx.execute(
                "UPDATE proposals SET body = $1, version = version + 1
                 WHERE id = $2 AND version = $3",
                args![&body, &id, version],
            )?;
            if changed != 1 {
                return Err(StoreError::Conflict {
                    rule: "approvals.concurrent",
                });
            }
            tx.append_audit(&decision, None, None)
        })
    }

    fn proposal(&self, id: &str) -> Result<StoredProposal, StoreError> {
        self.driver.read(|tx| {
            tx.query_opt(
                "SELECT body, version FROM proposals WHERE id = $1",
                args![id],
            )?
            .ok_or(StoreError::NotFound)
            .and_then(|row| proposal_from(&row))
        })
    }

    fn proposals(&self, limit: u32) -> Result<Vec<StoredProposal>, StoreError> {
        self.driver.read(|tx| {
            tx.query(
                "SELECT body, version FROM proposals ORDER BY created_at DESC, id LIMIT $1",
                args![limit],
            )?
            .iter()
            .map(proposal_from)
            .collect()
        })
    }

    fn set_document(
        &self,
        name: &str,
        body: &str,
        decision: DecisionRecord,
    ) -> Result<(), StoreError> {
        let (name, body) = (name.to_owned(), body.to_owned());
        self.driver
            .write(move |tx| put_document(tx, &name, &body, &decision))
    }

    fn set_crl(
        &self,
        pem: &str,
        replaces: Option<&str>,
        decision: DecisionRecord,
    ) -> Result<(), StoreError> {
        let (pem, replaces) = (pem.to_owned(), replaces.map(str::to_owned));
        self.driver
            .write(move |tx| set_crl_in(tx, &pem, replaces.as_deref(), &decision))
    }

    fn set_document_if_absent(
        &self,
        name: &str,
        body: &str,
        decision: DecisionRecord,
    ) -> Result<bool, StoreError> {
        let (name, body) = (name.to_owned(), body.to_owned());
        self.driver.write(move |tx| {
            let stored = tx.execute(
                "INSERT INTO pki_documents (name, body) VALUES ($1, $2)
                 ON CONFLICT (name) DO NOTHING",
                args![&name, &body],
            )? == 1;
            if stored {
                tx.append_audit(&decision, None, None)?;
            }
            Ok(stored)
        })
    }

    fn document(&self, name: &str) -> Result<Option<String>, StoreError> {
        self.driver.read(|tx| {
            tx.query_opt(
                "SELECT body FROM pki_documents WHERE name = $1",
                args![name],
            )?
            .map(|r| r.text(0))
            .transpose()
        })
    }
}
