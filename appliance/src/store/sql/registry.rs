//! The credential half of the registry, written once: issuance, state
//! changes, refresh, the facts the policy reads, status entries, and the
//! audit log's reads and checkpoints.

use super::audit_tiles;
use super::status::list_id;
use super::tx::{AtOnce, Driver, KeptResponse, Row, SqlRegistry, Tx, args};
use crate::store::{
    Committed, CredentialMeta, CredentialState, DecisionRecord, HolderFacts, IdempotencyKey,
    IssuanceCommit, Pseudonym, REINSTATE_KEY_REVOKED, Refresh, Registry, Respond, StatusPositions,
    StoreError, check_block, check_transition,
};

fn meta(tx: &mut dyn Tx, id: &str) -> Result<CredentialMeta, StoreError> {
    let row = tx
        .query_opt(
            "SELECT id, profile, kid, state, status_list, status_index, issued_at, valid_until,
                    document_expiry, holder, device, claims_mac, suspended_for_key, has_portrait
             FROM credentials WHERE id = $1",
            args![id],
        )?
        .ok_or(StoreError::NotFound)?;
    Ok(CredentialMeta {
        id: row.text(0)?,
        profile: row.text(1)?,
        kid: row.text(2)?,
        state: CredentialState::parse(&row.text(3)?)?,
        status_list: list_id(row.count(4)?)?,
        status_index: row.count(5)?,
        issued_at: row.int(6)?,
        valid_until: row.int(7)?,
        document_expiry: row.text(8)?,
        holder: Pseudonym(row.hash(9)?),
        device: row.text(10)?,
        claims_mac: row.opt_blob(11)?.and_then(|m| <[u8; 32]>::try_from(m).ok()),
        suspended_for_key: row.flag(12)?,
        has_portrait: row.opt_flag(13)?,
    })
}

/// The stored response for `key`, if the same request was committed;
/// another body under the same key is refused.
fn lookup_idempotency(
    tx: &mut dyn Tx,
    client: &str,
    key: &IdempotencyKey,
) -> Result<Option<Vec<u8>>, StoreError> {
    match tx.query_opt(
        "SELECT request_hash, response FROM idempotency WHERE client = $1 AND key = $2",
        args![client, &key.key],
    )? {
        None => Ok(None),
        Some(row) if row.blob(0)? == key.request_hash => Ok(Some(row.blob(1)?)),
        Some(_) => Err(StoreError::IdempotencyMismatch),
    }
}

/// The response for `committed`, built once: a retried transaction with
/// the same outcome reuses it, one whose outcome changed (the last free
/// copy went to someone else) is refused rather than answered wrongly.
fn respond_once(
    respond: &mut Option<Respond>,
    built: &mut Option<(Committed, Vec<u8>)>,
    committed: &Committed,
) -> Result<Vec<u8>, StoreError> {
    let response = match (built.as_ref(), respond.take()) {
        (Some((done, bytes)), _) if done == committed => bytes.clone(),
        (_, Some(respond)) => respond(committed),
        _ => {
            return Err(StoreError::Unavailable(
                "the outcome changed while retrying; retry the request".into(),
            ));
        }
    };
    *built = Some((committed.clone(), response.clone()));
    Ok(response)
}

/// Everything an issuance commits, in the caller's transaction.
fn commit_in(
    tx: &mut dyn Tx,
    client: &str,
    commit: &IssuanceCommit,
    respond: &mut Option<Respond>,
    built: &mut Option<(Committed, Vec<u8>)>,
) -> Result<(Committed, Vec<u8>), StoreError> {
    let c = &commit.credential;
    if let Some(key) = &commit.idempotency
        && let Some(stored) = lookup_idempotency(tx, client, key)?
    {
        return Err(StoreError::IdempotencyReplay(stored));
    }
    let superseded = if commit.supersede {
        tx.query(
            "UPDATE credentials SET state = 'superseded'
             WHERE holder = $1 AND device <> $2 AND state = 'active' RETURNING id",
            args![&c.holder.0, &c.device],
        )?
        .iter()
        .map(|row| row.text(0))
        .collect::<Result<Vec<_>, _>>()?
    } else {
        Vec::new()
    };
    let free_copy = commit.want_free_copy && tx.take_free_copy(&c.holder.0)?;
    super::batch::insert_credential(tx, c, free_copy, None, &commit.decision)?;
    for copy in &commit.copies {
        super::batch::insert_copy(tx, &c.id, copy, &commit.decision)?;
    }
    let committed = Committed {
        free_copy,
        superseded,
    };
    let response = respond_once(respond, built, &committed)?;
    if let Some(key) = &commit.idempotency {
        let _ = tx.execute(
            "INSERT INTO idempotency (client, key, request_hash, response, credential_id, created_at)
             VALUES ($1, $2, $3, $4, $5, $6)",
            args![client, &key.key, &key.request_hash, &response, &c.id, c.issued_at],
        )?;
    }
    Ok((committed, response))
}

fn checkpoint_from(row: &Row) -> Result<(u64, String), StoreError> {
    Ok((row.count(0)?, row.text(1)?))
}

impl<D: Driver> Registry for SqlRegistry<D> {
    fn kind(&self) -> &'static str {
        D::KIND
    }

    fn upkeep(&self) -> crate::store::Upkeep {
        self.driver.upkeep()
    }

    fn observe_writer(&self, metrics: crate::metrics::store::WriterMetrics) {
        self.driver.observe_writer(metrics);
    }

    fn set_free_quota(&self, quota: u64) -> Result<(), StoreError> {
        self.driver.write(move |tx| tx.set_free_quota(quota))
    }

    fn free_quota(&self) -> Result<(u64, u64), StoreError> {
        self.driver.read(|tx| tx.free_copies())
    }

    fn facts(&self, holder: &Pseudonym, device: &str) -> Result<HolderFacts, StoreError> {
        self.driver.read(|tx| {
            // One statement (one round trip, one snapshot): who holds this
            // phone, every credential of the holder (a few in a lifetime;
            // whether one is live and whether one ever existed must come
            // from the same snapshot, or a commit between two reads would
            // make a duplicate look like a false first-time claim), and
            // the free copies used.
            let sql = format!(
                "SELECT 1, CAST(NULL AS TEXT), CAST(NULL AS TEXT), holder, CAST(NULL AS BIGINT)
                 FROM credentials WHERE device = $2 AND state IN ('active', 'suspended')
                 UNION ALL SELECT 0, device, state, NULL, NULL FROM credentials WHERE holder = $1
                 UNION ALL SELECT 2, NULL, NULL, NULL, {}",
                tx.free_copies_used_sql()
            );
            let rows = tx.query(&sql, args![&holder.0, device])?;
            // A document may be several live rows (a batch): suspended if
            // any is, on this phone if any is.
            let mut held_before = false;
            let (mut live, mut on_this_device, mut suspended) = (false, false, false);
            let (mut device_bound_to_other_holder, mut used) = (false, None);
            for r in &rows {
                match r.count(0)? {
                    0 => {
                        held_before = true;
                        let (row_device, state) = (r.text(1)?, r.text(2)?);
                        if state == "active" || state == "suspended" {
                            live = true;
                            on_this_device |= row_device == device;
                            suspended |= state == "suspended";
                        }
                    }
                    1 => device_bound_to_other_holder |= r.blob(3)? != holder.0,
                    _ => used = Some(r.count(4)?),
                }
            }
            Ok(HolderFacts {
                held_before,
                holder_live_on_same_device: live.then_some(on_this_device),
                holder_suspended: suspended,
                device_bound_to_other_holder,
                free_copies_issued: used
                    .ok_or_else(|| StoreError::Internal("the free-copy quota has no row".into()))?,
            })
        })
    }

    fn reserve_status_indexes(&self, count: u64) -> Result<StatusPositions, StoreError> {
        check_block(count)?;
        self.driver
            .write(move |tx| super::status::reserve(tx, count))
    }

    fn status_list_exists(&self, list: u32) -> Result<bool, StoreError> {
        self.driver.read(move |tx| super::status::exists(tx, list))
    }

    fn idempotent_response(
        &self,
        client: &str,
        key: &IdempotencyKey,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        self.driver.read(|tx| lookup_idempotency(tx, client, key))
    }

    fn commit_issuance(
        &self,
        client: &str,
        commit: IssuanceCommit,
        respond: Respond,
    ) -> Result<(Committed, Vec<u8>), StoreError> {
        // Alone and active (no phone to supersede, no batch): one statement.
        let plain = !commit.supersede && commit.copies.is_empty();
        let at_once = (D::ISSUES_AT_ONCE && plain).then(|| {
            // Built before anything is written (a builder that fails
            // leaves nothing), for the outcome the statement may write.
            let predicted = Committed {
                free_copy: commit.want_free_copy,
                superseded: Vec::new(),
            };
            let response = respond(&predicted);
            let issued = AtOnce {
                credential: commit.credential.clone(),
                want_free_copy: commit.want_free_copy,
                decision: commit.decision.clone(),
            };
            let key = commit
                .idempotency
                .clone()
                .map(|key| (client.to_owned(), key, response.clone()));
            (predicted, response, issued, key)
        });
        let owner = client.to_owned();
        let replay_key = commit.idempotency.clone();
        // A transaction after a statement that wrote nothing reuses the
        // response built for the same outcome.
        let mut built = at_once
            .as_ref()
            .map(|(predicted, response, ..)| (predicted.clone(), response.clone()));
        let mut respond = Some(respond);
        let in_transaction =
            move |tx: &mut dyn Tx| commit_in(tx, &owner, &commit, &mut respond, &mut built);
        let result = match at_once {
            // The transaction runs only if the statement wrote nothing.
            Some((predicted, response, issued, key)) => {
                let written = match key {
                    // Without a key to keep, the driver may write it with others.
                    None if D::GROUPS_AT_ONCE => {
                        self.driver.write_grouped_or(issued, in_transaction)
                    }
                    key => {
                        let statement = move |tx: &mut dyn Tx| {
                            let kept = key.as_ref().map(|(client, key, response)| KeptResponse {
                                client,
                                key,
                                response,
                            });
                            let AtOnce {
                                credential,
                                want_free_copy,
                                decision,
                            } = &issued;
                            tx.issue_at_once((credential, *want_free_copy), decision, kept)
                        };
                        self.driver.write_at_once_or(statement, in_transaction)
                    }
                };
                written.transpose().unwrap_or(Ok((predicted, response)))
            }
            None => self.driver.write(in_transaction),
        };
        match (result, replay_key) {
            // A twin with the same key committed first; its credential may
            // have tripped a uniqueness index before the key did.
            (Err(conflict @ StoreError::Conflict { .. }), Some(key)) => {
                match self.idempotent_response(client, &key)? {
                    Some(stored) => Err(StoreError::IdempotencyReplay(stored)),
                    None => Err(conflict),
                }
            }
            (result, _) => result,
        }
    }

    fn credential(&self, id: &str) -> Result<CredentialMeta, StoreError> {
        self.driver.read(|tx| meta(tx, id))
    }

    fn credential_at(&self, list: u32, index: u64) -> Result<CredentialMeta, StoreError> {
        self.driver.read(|tx| {
            let id = tx
                .query_opt(
                    "SELECT id FROM credentials WHERE status_list = $1 AND status_index = $2",
                    args![list, index],
                )?
                .ok_or(StoreError::NotFound)?
                .text(0)?;
            meta(tx, &id)
        })
    }

    fn set_state(
        &self,
        id: &str,
        to: CredentialState,
        decision: DecisionRecord,
    ) -> Result<CredentialMeta, StoreError> {
        let id = id.to_owned();
        self.driver.write(move |tx| {
            // A batch is one document: every member, locked, changes with
            // the one named, each with its audit entry.
            let root = tx
                .query_opt(
                    "SELECT COALESCE(batch_of, id) FROM credentials WHERE id = $1",
                    args![&id],
                )?
                .ok_or(StoreError::NotFound)?
                .text(0)?;
            let members = tx.query(
                "SELECT id, state, suspended_for_key FROM credentials
                 WHERE id = $1 OR batch_of = $1 ORDER BY id FOR UPDATE",
                args![&root],
            )?;
            let (mut from, mut changing) = (None, Vec::new());
            for member in &members {
                let (member_id, state) =
                    (member.text(0)?, CredentialState::parse(&member.text(1)?)?);
                // What a revoked key signed is refreshed, never reinstated.
                if to == CredentialState::Active
                    && state == CredentialState::Suspended
                    && member.flag(2)?
                {
                    return Err(StoreError::Conflict {
                        rule: REINSTATE_KEY_REVOKED,
                    });
                }
                if member_id == id {
                    from = Some(state);
                }
                if check_transition(state, to).is_ok() {
                    changing.push(member_id);
                }
            }
            check_transition(from.ok_or(StoreError::NotFound)?, to)?;
            for member_id in &changing {
                let _ = tx.execute(
                    "UPDATE credentials SET state = $1 WHERE id = $2",
                    args![to.as_str(), member_id],
                )?;
                tx.append_audit(&decision, Some(member_id), None)?;
            }
            meta(tx, &id)
        })
    }

    fn refresh(
        &self,
        refresh: Refresh,
        decision: DecisionRecord,
    ) -> Result<CredentialMeta, StoreError> {
        self.driver.write(move |tx| {
            super::status::refresh(tx, &refresh, &decision)?;
            meta(tx, &refresh.id)
        })
    }

    fn status_entries(&self, list: u32) -> Result<Vec<(u64, CredentialState)>, StoreError> {
        self.driver.read(|tx| {
            // Positions refreshed credentials left are revoked for good.
            tx.query(
                "SELECT status_index, state FROM credentials WHERE status_list = $1
                 UNION ALL SELECT idx, 'revoked' FROM revoked_positions WHERE list = $1",
                args![list],
            )?
            .iter()
            .map(|r| Ok((r.count(0)?, CredentialState::parse(&r.text(1)?)?)))
            .collect()
        })
    }

    fn decision_count(&self) -> Result<u64, StoreError> {
        self.driver.decision_count()
    }

    fn audit_size(&self) -> Result<u64, StoreError> {
        self.driver.audit_size()
    }

    fn sequence_audit(&self) -> Result<u64, StoreError> {
        self.driver.sequence_audit()
    }

    fn record(
        &self,
        decision: DecisionRecord,
        holder: Option<Pseudonym>,
    ) -> Result<(), StoreError> {
        self.driver
            .write(move |tx| tx.append_audit(&decision, None, holder.as_ref()))
    }

    fn audit_entries(&self, start: u64, count: u64) -> Result<Vec<Vec<u8>>, StoreError> {
        let end = start.saturating_add(count);
        self.driver.read(|tx| {
            tx.query(
                "SELECT entry FROM audit_log WHERE seq >= $1 AND seq < $2 ORDER BY seq",
                args![start, end],
            )?
            .iter()
            .map(|r| r.blob(0))
            .collect()
        })
    }

    fn audit_leaves(&self, start: u64, end: u64) -> Result<Vec<[u8; 32]>, StoreError> {
        self.driver.read(|tx| {
            tx.query(
                "SELECT leaf FROM audit_log WHERE seq >= $1 AND seq < $2 ORDER BY seq",
                args![start, end],
            )?
            .iter()
            .map(|r| r.hash(0))
            .collect()
        })
    }

    fn audit_tile_hashes(
        &self,
        level: u8,
        start: u64,
        end: u64,
    ) -> Result<Vec<[u8; 32]>, StoreError> {
        self.driver.read(|tx| {
            tx.query(
                "SELECT hash FROM audit_tiles WHERE level = $1 AND idx >= $2 AND idx < $3 ORDER BY idx",
                args![u32::from(level), start, end],
            )?
            .iter()
            .map(|r| r.hash(0))
            .collect()
        })
    }

    fn audit_hash_ranges(
        &self,
        ranges: &[(u8, u64, u64)],
    ) -> Result<Vec<Vec<[u8; 32]>>, StoreError> {
        let mut out: Vec<Option<Vec<[u8; 32]>>> =
            ranges.iter().map(|r| self.upper_hashes.get(*r)).collect();
        let wanted: Vec<(u8, u64, u64)> = ranges
            .iter()
            .zip(&out)
            .filter(|(_, kept)| kept.is_none())
            .map(|(r, _)| *r)
            .collect();
        if wanted.is_empty() {
            return Ok(out.into_iter().map(Option::unwrap_or_default).collect());
        }
        let read = self.driver.read(|tx| {
            let mut read = Vec::with_capacity(wanted.len());
            for chunk in wanted.chunks(audit_tiles::HASH_RANGE_SLOTS) {
                read.extend(audit_tiles::read_hash_ranges(tx, chunk)?);
            }
            Ok(read)
        })?;
        let mut read = wanted.iter().zip(read);
        for slot in out.iter_mut().filter(|slot| slot.is_none()) {
            if let Some((range, hashes)) = read.next() {
                self.upper_hashes.keep(*range, &hashes);
                *slot = Some(hashes);
            }
        }
        Ok(out.into_iter().map(Option::unwrap_or_default).collect())
    }

    fn add_audit_tile_hashes(
        &self,
        level: u8,
        start: u64,
        hashes: &[[u8; 32]],
    ) -> Result<(), StoreError> {
        let hashes = hashes.to_vec();
        self.driver
            .write(move |tx| audit_tiles::add_tile_hashes(tx, level, start, &hashes))
    }

    fn audit_known_root(&self, lo: u64, hi: u64) -> Option<[u8; 32]> {
        let upper = self
            .upper_tree
            .read()
            .ok()
            .and_then(|tree| tree.root(lo, hi));
        upper.or_else(|| self.edge_roots.get(lo, hi))
    }

    fn audit_upper_tree(&self) -> &std::sync::RwLock<crate::audit::upper_tree::UpperTree> {
        &self.upper_tree
    }

    fn keep_audit_edge_root(&self, lo: u64, hi: u64, root: [u8; 32]) {
        self.edge_roots.keep(lo, hi, root);
    }

    fn add_audit_full_tiles(
        &self,
        level: u8,
        first: u64,
        tiles: &[Vec<[u8; 32]>],
    ) -> Result<(), StoreError> {
        let tiles = tiles.to_vec();
        self.driver
            .write(move |tx| audit_tiles::add_full_tiles(tx, level, first, &tiles))
    }

    fn add_checkpoint(&self, size: u64, note: &str) -> Result<(), StoreError> {
        let note = note.to_owned();
        self.driver.write(move |tx| {
            let _ = tx.execute(
                "INSERT INTO checkpoints (size, note) VALUES ($1, $2) ON CONFLICT (size) DO NOTHING",
                args![size, &note],
            )?;
            Ok(())
        })
    }

    fn cosign_checkpoint(
        &self,
        size: u64,
        signed: &str,
        cosigned: &str,
    ) -> Result<bool, StoreError> {
        let (signed, cosigned) = (signed.to_owned(), cosigned.to_owned());
        self.driver.write(move |tx| {
            Ok(tx.execute(
                "UPDATE checkpoints SET note = $1 WHERE size = $2 AND note = $3",
                args![&cosigned, size, &signed],
            )? == 1)
        })
    }

    fn checkpoints(&self) -> Result<Vec<(u64, String)>, StoreError> {
        self.driver.read(|tx| {
            tx.query("SELECT size, note FROM checkpoints ORDER BY size", &[])?
                .iter()
                .map(checkpoint_from)
                .collect()
        })
    }

    fn latest_checkpoint(&self) -> Result<Option<(u64, String)>, StoreError> {
        self.driver.read(|tx| {
            tx.query_opt(
                "SELECT size, note FROM checkpoints ORDER BY size DESC LIMIT 1",
                &[],
            )?
            .as_ref()
            .map(checkpoint_from)
            .transpose()
        })
    }

    fn probe_write(&self) -> Result<(), StoreError> {
        self.driver.write(|tx| tx.probe_write())
    }

    fn ping(&self) -> Result<(), StoreError> {
        self.driver
            .read(|tx| tx.query_one("SELECT 1", &[]).map(|_| ()))
    }

    fn purge_idempotency(&self, before: i64, limit: u64) -> Result<u64, StoreError> {
        self.driver.write(move |tx| {
            // In batches by key: a national backlog is never one long lock.
            tx.execute(
                "DELETE FROM idempotency WHERE (client, key) IN
                   (SELECT client, key FROM idempotency WHERE created_at < $1 LIMIT $2)",
                args![before, limit],
            )
        })
    }
}
