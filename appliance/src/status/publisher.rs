//! [`StatusPublisher`]: where new credentials' statuses go, and the signed
//! lists verifiers fetch. Positions are drawn at random by the registry,
//! a block at a time, and handed out in the order drawn; every list is
//! signed at its full, fixed size, so a position is in range of every
//! token of its list, including the one signed a moment before the
//! credential was answered. A list is signed on demand, in both forms at
//! once (one registry read), by the status-list key in force, and cached
//! until a status changes on this node, 30 s pass
//! (another node may have changed it), or half its validity has gone.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use time::OffsetDateTime;

use super::changes::StatusChanges;
use super::cwt::sign_cwt;
use super::list::{StatusList, TokenFields, sign_token};
use crate::keys::manager::KeyManager;
use crate::node::Node;
use crate::store::{STATUS_LIST_SIZE, StatusPositions};

/// The status-list keys' JWKS, on the public listener.
pub const STATUS_KEYS_PATH: &str = "/status/jwks.json";
/// Lists beyond this are never asked of the store (a list holds 2^20
/// credentials: this is over a billion).
const MAX_STATUS_LIST: u32 = 1024;
/// Status-list positions reserved from the registry at a time (positions
/// a node reserved and never used stay valid: harmless decoys).
const STATUS_BLOCK: u64 = 64;
/// Seconds a status-list token is valid; verifiers may cache it for `TTL`.
const STATUS_TOKEN_LIFETIME: i64 = 3600;
const STATUS_TOKEN_TTL: u64 = 300;
/// A cached token is re-signed after this long even if nothing changed
/// (another node sharing the registry may have changed it).
pub const STATUS_TOKEN_REFRESH: Duration = Duration::from_secs(30);
/// A list found not to exist is asked again after this long (another node
/// may open it).
const MISSING_LIST_RECHECK: Duration = Duration::from_secs(1);

/// A status-list token's encoding: both carry the same list, each at its
/// own URI (its `sub`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenForm {
    /// `application/statuslist+jwt` at `/status/{list}` (SD-JWT VCs).
    Jwt,
    /// `application/statuslist+cwt` at `/status/{list}.cwt` (mdocs).
    Cwt,
}

impl TokenForm {
    /// Every form, each signed whenever a list is.
    pub const ALL: [TokenForm; 2] = [TokenForm::Jwt, TokenForm::Cwt];

    /// The media type.
    pub fn media_type(self) -> &'static str {
        match self {
            TokenForm::Jwt => "application/statuslist+jwt",
            TokenForm::Cwt => super::cwt::CWT_TYPE,
        }
    }
}

struct CachedToken {
    /// `None`: the list was never opened (cached briefly, so unknown lists
    /// cost no database read each time).
    token: Option<Arc<[u8]>>,
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
    /// Reserved positions not handed out yet, the next one last.
    statuses: Mutex<Option<StatusPositions>>,
    status_tokens: Mutex<HashMap<(u32, TokenForm), CachedToken>>,
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
        if let Some(reserved) = slot.as_mut()
            && let Some(index) = reserved.indexes.pop()
        {
            return Ok((reserved.list, index));
        }
        let mut reserved = self.node.registry.reserve_status_indexes(STATUS_BLOCK)?;
        reserved.indexes.reverse();
        let index = reserved.indexes.pop().ok_or_else(|| {
            crate::store::StoreError::Internal("the registry reserved no status position".into())
        })?;
        let list = reserved.list;
        *slot = Some(reserved);
        Ok((list, index))
    }

    /// Where the status-list keys are published (a JWKS of those keys
    /// only, apart from the credential issuer's).
    pub fn keys_uri(&self) -> String {
        format!("{}{STATUS_KEYS_PATH}", self.public_base)
    }

    /// A status list's URI (its JWT form's).
    pub fn status_uri(&self, list: u32) -> String {
        self.uri_of(list, TokenForm::Jwt)
    }

    /// The URI of a status list's token in `form`.
    pub fn uri_of(&self, list: u32, form: TokenForm) -> String {
        match form {
            TokenForm::Jwt => format!("{}/status/{list}", self.public_base),
            TokenForm::Cwt => format!("{}/status/{list}.cwt", self.public_base),
        }
    }

    /// The signed token of `list` in `form`, re-signed when the registry
    /// changed since, or when it is near its expiry.
    pub fn status_token(&self, list: u32, form: TokenForm) -> Result<Option<Arc<[u8]>>, String> {
        if list > MAX_STATUS_LIST {
            return Ok(None);
        }
        let list = (list, form);
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
        let registry = &self.node.registry;
        if !registry
            .status_list_exists(list.0)
            .map_err(|e| e.to_string())?
        {
            for form in TokenForm::ALL {
                self.cache_status_token((list.0, form), None, generation, now);
            }
            return Ok(None);
        }
        let entries = registry.status_entries(list.0).map_err(|e| e.to_string())?;
        let start = Instant::now();
        let list_bits =
            StatusList::from_entries(STATUS_LIST_SIZE, &entries).map_err(|e| e.to_string())?;
        // One read and one list for both forms: each is signed and cached
        // now, so a fetch of the other form costs no second read.
        let mut wanted = None;
        for signed_form in TokenForm::ALL {
            let token = self.sign_form(list.0, signed_form, &list_bits, now)?;
            if signed_form == form {
                wanted = Some(token.clone());
            }
            self.cache_status_token((list.0, signed_form), Some(token), generation, now);
        }
        self.node
            .metrics
            .status_list_seconds
            .observe(start.elapsed().as_secs_f64());
        Ok(wanted)
    }

    /// Signs `list_bits` as list `list`'s token in `form` with the
    /// status-list key in force.
    fn sign_form(
        &self,
        list: u32,
        form: TokenForm,
        list_bits: &StatusList,
        now: i64,
    ) -> Result<Arc<[u8]>, String> {
        let view = self.keys.view();
        let signer = view
            .status_key_at(OffsetDateTime::now_utc())
            .ok_or_else(|| "no status-list key can sign now".to_owned())?;
        let key = signer.label.as_str();
        let fields = TokenFields {
            uri: &self.uri_of(list, form),
            keys_uri: &self.keys_uri(),
            iat: now,
            exp: now + STATUS_TOKEN_LIFETIME,
            ttl: STATUS_TOKEN_TTL,
            certificate: signer.certificate.as_deref(),
        };
        let token =
            self.node
                .metrics
                .hsm("sign_status_list", || match form {
                    TokenForm::Jwt => sign_token(self.node.backend, key, list_bits, &fields)
                        .map(String::into_bytes),
                    TokenForm::Cwt => sign_cwt(self.node.backend, key, list_bits, &fields),
                })
                .map_err(|e| e.to_string())?;
        self.keys.count_signature(key, now + STATUS_TOKEN_LIFETIME);
        self.node.metrics.status_list_signatures.inc();
        Ok(token.into())
    }

    fn cached_status_token(&self, list: (u32, TokenForm)) -> Option<Option<Arc<[u8]>>> {
        let generation = self.changes.current();
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let tokens = self.status_tokens.lock().ok()?;
        let cached = tokens.get(&list)?;
        let fresh_for = match cached.token {
            Some(_) => STATUS_TOKEN_REFRESH,
            None => MISSING_LIST_RECHECK,
        };
        (cached.generation == generation
            && cached.signed.elapsed() < fresh_for
            && cached.exp - now > STATUS_TOKEN_LIFETIME / 2)
            .then(|| cached.token.clone())
    }

    fn cache_status_token(
        &self,
        list: (u32, TokenForm),
        token: Option<Arc<[u8]>>,
        generation: u64,
        now: i64,
    ) {
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
