//! What auditors ask of the log (`/v1/audit/…`; the router admits only
//! the `auditor` role): the latest signed
//! checkpoint, entries by range, inclusion and consistency proofs. With
//! these and the audit public key an auditor checks the log without
//! trusting the appliance.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::json;

use super::log::{AuditError, AuditLog, MAX_PAGE};
use super::tile_path::{TILE_WIDTH, TilePath, entry_bundle};
use super::tiles::{LogHashes, TreeReader};
use super::trail::AuditTrail;
use crate::refusal::{Answer, Class, Refusal, Reply};

fn problem(e: AuditError) -> Refusal {
    match e {
        AuditError::Range(detail) => Refusal::bad_request("audit_range", detail),
        AuditError::Store(_)
        | AuditError::Signing(_)
        | AuditError::Rewritten(_)
        | AuditError::Tampered(_) => {
            tracing::warn!(error = %e, "audit query failed");
            Refusal::unavailable(
                "store_unavailable",
                "the audit log cannot be read now; retry",
            )
        }
    }
}

/// `name=value` pairs of a query string, numbers only.
fn number(query: &str, name: &str) -> Result<u64, Refusal> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == name)
        .ok_or_else(|| {
            Refusal::bad_request("audit_range", format!("query parameter {name} is required"))
        })?
        .1
        .parse()
        .map_err(|_| {
            Refusal::bad_request(
                "audit_range",
                format!("{name} must be a non-negative integer"),
            )
        })
}

/// How long caches keep a tile or an entry bundle: a path names fixed
/// content (a partial tile's path carries its width), so a year.
pub const TILE_MAX_AGE: u32 = 365 * 24 * 3600;
/// How long caches keep the checkpoint.
pub const CHECKPOINT_MAX_AGE: u32 = 5;

impl AuditTrail {
    /// A file of the tiled log by its path under the log's prefix:
    /// `checkpoint` or a tile (see [`AuditTrail::log_tile`]).
    pub fn log_file(&self, path: &str, entries: bool) -> Answer {
        if path == "checkpoint" {
            self.log_checkpoint()
        } else {
            self.log_tile(path, entries)
        }
    }

    /// `checkpoint` of the tiled log (c2sp.org/tlog-tiles): the latest
    /// signed note as it is.
    pub fn log_checkpoint(&self) -> Answer {
        match AuditLog::latest(self.node.registry.as_ref()).map_err(problem)? {
            Some((_, note)) => Ok((
                Reply::Log {
                    media_type: "text/plain; charset=utf-8",
                    max_age: CHECKPOINT_MAX_AGE,
                },
                note.into_bytes(),
            )),
            None => Err(Refusal::new(
                Class::NotFound,
                "not_found",
                "no checkpoint has been signed yet",
            )),
        }
    }

    /// `tile/…` of the tiled log, within the latest checkpoint: hash tiles
    /// for anyone, entry bundles (which hold holder pseudonyms) only where
    /// `entries` (the auditor role).
    pub fn log_tile(&self, path: &str, entries: bool) -> Answer {
        let not_found = |detail: &str| Refusal::new(Class::NotFound, "not_found", detail);
        let tile = TilePath::parse(path).ok_or_else(|| not_found("no such tile"))?;
        let registry = self.node.registry.as_ref();
        let size = AuditLog::latest(registry)
            .map_err(problem)?
            .map_or(0, |(size, _)| size);
        if !tile.within(size) {
            return Err(not_found("the tile is beyond the latest checkpoint"));
        }
        let body = match tile {
            TilePath::Hashes(id) => TreeReader::new(&LogHashes(registry))
                .tile(id)
                .map_err(|e| problem(e.into()))?,
            TilePath::Entries { .. } if !entries => {
                return Err(not_found(
                    "entry bundles are served to auditors only (they hold pseudonyms)",
                ));
            }
            TilePath::Entries { index, width } => {
                let bundle = registry
                    .audit_entries(index * TILE_WIDTH, width)
                    .map_err(|e| problem(e.into()))?;
                if bundle.len() as u64 != width {
                    return Err(problem(AuditError::Store(
                        crate::store::StoreError::Internal("the audit log has a gap".into()),
                    )));
                }
                entry_bundle(&bundle).ok_or_else(Refusal::internal)?
            }
        };
        Ok((
            Reply::Log {
                media_type: "application/octet-stream",
                max_age: TILE_MAX_AGE,
            },
            body,
        ))
    }

    /// `GET /v1/audit/checkpoint`: the latest signed note.
    pub fn checkpoint_answer(&self) -> Answer {
        match AuditLog::latest(self.node.registry.as_ref()).map_err(problem)? {
            Some((size, note)) => {
                // The audit keys, oldest first: auditors pin the first and
                // follow hand-overs (checkpoints co-signed by old and new).
                let keys: Vec<_> = self
                    .node
                    .registry
                    .keys()
                    .map_err(|e| problem(e.into()))?
                    .into_iter()
                    .filter(|k| k.chain == crate::store::AUDIT_CHAIN)
                    .filter_map(|k| {
                        let pem = openssl::pkey::PKey::public_key_from_der(&k.public_key)
                            .and_then(|p| p.public_key_to_pem())
                            .ok()?;
                        Some(json!({
                            "label": k.record.label,
                            "state": k.record.state.as_str(),
                            "revoked": k.record.revoked,
                            "public_key_pem": String::from_utf8_lossy(&pem),
                        }))
                    })
                    .collect();
                Ok((
                    Reply::Ok,
                    json!({"size": size, "note": note, "keys": keys})
                        .to_string()
                        .into_bytes(),
                ))
            }
            None => Err(Refusal::new(
                Class::NotFound,
                "not_found",
                "no checkpoint has been signed yet",
            )),
        }
    }

    /// `GET /v1/audit/entries?start=S&count=C`.
    pub fn entries(&self, query: &str) -> Answer {
        let start = number(query, "start")?;
        if start > i64::MAX as u64 {
            return Err(Refusal::bad_request(
                "audit_range",
                "start is beyond any log",
            ));
        }
        let count = number(query, "count")?.min(MAX_PAGE);
        let entries = self
            .node
            .registry
            .audit_entries(start, count)
            .map_err(|e| problem(e.into()))?;
        let size = self
            .node
            .registry
            .audit_size()
            .map_err(|e| problem(e.into()))?;
        let recorded = self
            .node
            .registry
            .decision_count()
            .map_err(|e| problem(e.into()))?;
        let body = json!({
            "start": start,
            "size": size,
            // Recorded but not yet placed in the log (a sequencer does, within a second).
            "pending": recorded.saturating_sub(size),
            "entries": entries.iter().map(|e| B64.encode(e)).collect::<Vec<_>>(),
        });
        Ok((Reply::Ok, body.to_string().into_bytes()))
    }

    /// `GET /v1/audit/proof/inclusion?index=I&size=N`.
    pub fn inclusion(&self, query: &str) -> Answer {
        let (index, size) = (number(query, "index")?, number(query, "size")?);
        let (leaf, proof) =
            AuditLog::inclusion(self.node.registry.as_ref(), index, size).map_err(problem)?;
        let body = json!({
            "index": index,
            "size": size,
            "leaf_hash": B64.encode(leaf),
            "proof": proof.iter().map(|h| B64.encode(h)).collect::<Vec<_>>(),
        });
        Ok((Reply::Ok, body.to_string().into_bytes()))
    }

    /// `GET /v1/audit/proof/consistency?from=M&to=N`.
    pub fn consistency(&self, query: &str) -> Answer {
        let (from, to) = (number(query, "from")?, number(query, "to")?);
        let proof =
            AuditLog::consistency(self.node.registry.as_ref(), from, to).map_err(problem)?;
        let body = json!({
            "from": from,
            "to": to,
            "proof": proof.iter().map(|h| B64.encode(h)).collect::<Vec<_>>(),
        });
        Ok((Reply::Ok, body.to_string().into_bytes()))
    }
}
