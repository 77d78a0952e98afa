//! [`StatusPublisher`]: where new credentials' statuses go, and the signed
//! lists verifiers fetch. Positions are reserved from the registry in
//! blocks; a list is signed on demand by the status-list key in force and
//! cached until a status changes on this node, 30 s pass (another node may
//! have changed it), or half its validity has gone.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use time::OffsetDateTime;

use super::changes::StatusChanges;
use super::list::{StatusList, sign_token};
use crate::keys::manager::KeyManager;
use crate::node::Node;
use crate::store::{STATUS_LIST_SIZE, StatusRange};

/// Lists beyond this are never asked of the store (a list holds 2^20
/// credentials: this is over a billion).
const MAX_STATUS_LIST: u32 = 1024;
/// Status-list indexes reserved from the registry at a time.
const STATUS_BLOCK: u64 = 256;
/// Seconds a status-list token is valid; verifiers may cache it for `TTL`.
const STATUS_TOKEN_LIFETIME: i64 = 3600;
const STATUS_TOKEN_TTL: u64 = 300;
/// A cached token is re-signed after this long even if nothing changed
/// (another node sharing the registry may have changed it).
const STATUS_TOKEN_REFRESH: Duration = Duration::from_secs(30);

struct CachedToken {
    /// `None`: the list has no credential (cached too, so unknown lists
    /// cost no database read each time).
    token: Option<Arc<str>>,
    generation: u64,
    signed: Instant,
    exp: i64,
}

/// Status positions and signed lists.
pub struct StatusPublisher {
    node: Node,
    keys: Arc<KeyManager>,
    changes: StatusChanges,
    public_base: String,
    statuses: Mutex<Option<(StatusRange, u64)>>,
    status_tokens: Mutex<HashMap<u32, CachedToken>>,
    /// One status list signed at a time: concurrent misses wait and share it.
    status_signing: Mutex<()>,
}

impl StatusPublisher {
    /// A publisher whose lists live under `public_base`.
    pub fn new(
        node: Node,
        keys: Arc<KeyManager>,
        changes: StatusChanges,
        public_base: String,
    ) -> Self {
        StatusPublisher {
            node,
            keys,
            changes,
            public_base,
            statuses: Mutex::new(None),
            status_tokens: Mutex::new(HashMap::new()),
            status_signing: Mutex::new(()),
        }
    }

    /// Statuses changed: lists signed before now are signed again.
    pub fn changed(&self) {
        self.changes.bump();
    }

    /// The next status-list position for a new credential.
    pub fn next_index(&self) -> Result<(u32, u64), crate::store::StoreError> {
        let mut slot = self
            .statuses
            .lock()
            .map_err(|_| crate::store::StoreError::Internal("status cursor poisoned".into()))?;
        if let Some((range, next)) = slot.as_mut()
            && *next < range.first + range.count
        {
            let index = *next;
            *next += 1;
            return Ok((range.list, index));
        }
        let range = self.node.registry.reserve_status_indexes(STATUS_BLOCK)?;
        *slot = Some((range, range.first + 1));
        Ok((range.list, range.first))
    }

    /// A status list's URI.
    pub fn status_uri(&self, list: u32) -> String {
        format!("{}/status/{list}", self.public_base)
    }

    /// The signed `statuslist+jwt` for `list`, re-signed when the registry
    /// changed since, or when it is near its expiry.
    pub fn status_token(&self, list: u32) -> Result<Option<Arc<str>>, String> {
        if list > MAX_STATUS_LIST {
            return Ok(None);
        }
        if let Some(token) = self.cached_status_token(list) {
            return Ok(token);
        }
        let _one = self
            .status_signing
            .lock()
            .map_err(|_| "status signing lock poisoned".to_owned())?;
        // Another request may have signed it while this one waited.
        if let Some(token) = self.cached_status_token(list) {
            return Ok(token);
        }
        let generation = self.changes.current();
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let entries = self
            .node
            .registry
            .status_entries(list)
            .map_err(|e| e.to_string())?;
        if entries.is_empty() {
            self.cache_status_token(list, None, generation, now);
            return Ok(None);
        }
        let start = Instant::now();
        let size = entries
            .iter()
            .map(|(i, _)| i + 1)
            .max()
            .unwrap_or(1)
            .min(STATUS_LIST_SIZE);
        let list_bits = StatusList::from_entries(size, &entries).map_err(|e| e.to_string())?;
        let view = self.keys.view();
        let key = view
            .status_key_at(OffsetDateTime::now_utc())
            .ok_or_else(|| "no status-list key can sign now".to_owned())?;
        let token = self
            .node
            .metrics
            .hsm("sign_status_list", || {
                sign_token(
                    self.node.backend,
                    key,
                    &self.status_uri(list),
                    &list_bits,
                    now,
                    now + STATUS_TOKEN_LIFETIME,
                    STATUS_TOKEN_TTL,
                )
            })
            .map_err(|e| e.to_string())?;
        self.keys.count_signature(key, now + STATUS_TOKEN_LIFETIME);
        self.node.metrics.status_list_signatures.inc();
        self.node
            .metrics
            .status_list_seconds
            .observe(start.elapsed().as_secs_f64());
        let token: Arc<str> = token.into();
        self.cache_status_token(list, Some(token.clone()), generation, now);
        Ok(Some(token))
    }

    fn cached_status_token(&self, list: u32) -> Option<Option<Arc<str>>> {
        let generation = self.changes.current();
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let tokens = self.status_tokens.lock().ok()?;
        let cached = tokens.get(&list)?;
        (cached.generation == generation
            && cached.signed.elapsed() < STATUS_TOKEN_REFRESH
            && cached.exp - now > STATUS_TOKEN_LIFETIME / 2)
            .then(|| cached.token.clone())
    }

    fn cache_status_token(&self, list: u32, token: Option<Arc<str>>, generation: u64, now: i64) {
        if let Ok(mut tokens) = self.status_tokens.lock() {
            let _ = tokens.insert(
                list,
                CachedToken {
                    token,
                    generation,
                    signed: Instant::now(),
                    exp: now + STATUS_TOKEN_LIFETIME,
                },
            );
        }
    }
}
