//! [`StatusPublisher`]: where new credentials' statuses go, and the signed
//! lists verifiers fetch. Positions are drawn at random by the registry,
//! a block at a time, and handed out in the order drawn; every list is
//! signed at its full, fixed size, so a position is in range of every
//! token of its list, including the one signed a moment before the
//! credential was answered. A list is signed in both forms at once (one
//! registry read), by the status-list key in force (with its certificate
//! from the IACA), when first asked for, then again in the background
//! (a bounded number of lists a second) when a status changes on this
//! node or before 30 s pass (another node may have changed it): a change
//! on any node is in every node's served list within 30 s, and a request
//! finding a token older than that (the background fell behind) signs it
//! itself.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use time::OffsetDateTime;

use super::changes::StatusChanges;
use super::cwt::sign_cwt;
use super::list::{StatusList, TokenFields, sign_token};
use super::positions::PositionCursor;
use crate::keys::manager::KeyManager;
use crate::node::Node;
use crate::store::STATUS_LIST_SIZE;

/// The status-list keys' JWKS, on the public listener.
pub const STATUS_KEYS_PATH: &str = "/status/jwks.json";
/// Lists beyond this are never asked of the store (a list holds 2^20
/// credentials: this is over a billion).
const MAX_STATUS_LIST: u32 = 1024;
/// Seconds verifiers may cache a status-list token (its `ttl`); it is
/// valid (`exp`) for the configured lifetime, which covers an outage
/// during which verifiers fetch the last tokens from a static mirror.
const STATUS_TOKEN_TTL: u64 = 300;
/// A cached token is re-signed after this long even if nothing changed
/// (another node sharing the registry may have changed it).
pub const STATUS_TOKEN_REFRESH: Duration = Duration::from_secs(30);
/// The background re-signs a served list this long before the age at
/// which a request would have to.
const BACKGROUND_LEAD: Duration = Duration::from_secs(5);
/// Lists re-signed in the background per round (a round a second): every
/// served list stays fresh up to 8 × 25 = 200 lists (200 million IDs).
pub const BACKGROUND_LISTS_PER_ROUND: usize = 8;
/// The background keeps a list fresh while it was fetched this recently
/// (twice what verifiers may cache it for).
const SERVED_RECENTLY: Duration = Duration::from_secs(2 * STATUS_TOKEN_TTL);
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

/// A list's token in one form.
type SignedForm = (TokenForm, Arc<[u8]>);

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
    /// Seconds a token is valid (`exp - iat`).
    lifetime: i64,
    /// Reserved positions not handed out yet.
    positions: PositionCursor,
    status_tokens: Mutex<HashMap<(u32, TokenForm), CachedToken>>,
    /// One status list signed at a time: concurrent misses wait and share it.
    status_signing: Mutex<()>,
    /// When each list was last asked for: the background keeps fresh only
    /// what verifiers still fetch.
    requested: Mutex<HashMap<u32, Instant>>,
}

impl StatusPublisher {
    /// A publisher whose lists live under `public_base` and whose tokens
    /// are valid for `lifetime_s` seconds.
    pub fn new(
        node: Node,
        keys: Arc<KeyManager>,
        changes: StatusChanges,
        public_base: String,
        lifetime_s: u64,
    ) -> Self {
        let positions = PositionCursor::new(node.registry.clone());
        StatusPublisher {
            node,
            keys,
            changes,
            public_base,
            lifetime: i64::try_from(lifetime_s).unwrap_or(i64::MAX / 2),
            positions,
            status_tokens: Mutex::new(HashMap::new()),
            status_signing: Mutex::new(()),
            requested: Mutex::new(HashMap::new()),
        }
    }

    /// Statuses changed: lists signed before now are signed again.
    pub fn changed(&self) {
        self.changes.bump();
    }

    /// The next status-list position for a new credential.
    pub fn next_index(&self) -> Result<(u32, u64), crate::store::StoreError> {
        self.positions.next()
    }

    /// Where the status-list keys are published (a JWKS of those keys
    /// only, apart from the credential issuer's).
    pub fn keys_uri(&self) -> String {
        format!("{}{STATUS_KEYS_PATH}", self.public_base)
    }

    /// The URI of a status list's token in `form`.
    pub fn uri_of(&self, list: u32, form: TokenForm) -> String {
        format!("{}{}", self.public_base, Self::path_of(list, form))
    }

    /// The path of a status list's token in `form` on the public listener.
    pub fn path_of(list: u32, form: TokenForm) -> String {
        match form {
            TokenForm::Jwt => format!("/status/{list}"),
            TokenForm::Cwt => format!("/status/{list}.cwt"),
        }
    }

    /// The signed token of `list` in `form`, re-signed when the registry
    /// changed since, or when it is near its expiry.
    pub fn status_token(&self, list: u32, form: TokenForm) -> Result<Option<Arc<[u8]>>, String> {
        if list > MAX_STATUS_LIST {
            return Ok(None);
        }
        if let Ok(mut requested) = self.requested.lock() {
            let _ = requested.insert(list, Instant::now());
        }
        if let Some(token) = self.cached_status_token((list, form)) {
            return Ok(token);
        }
        let _one = self
            .status_signing
            .lock()
            .map_err(|_| "status signing lock poisoned".to_owned())?;
        // Another request may have signed it while this one waited.
        if let Some(token) = self.cached_status_token((list, form)) {
            return Ok(token);
        }
        Ok(self
            .sign_list(list)?
            .and_then(|tokens| tokens.into_iter().find(|(f, _)| *f == form))
            .map(|(_, token)| token))
    }

    /// Re-signs, off the request path, the lists this node serves whose
    /// tokens went stale (a status changed here, or they near the age at
    /// which a change on another node must show), oldest first and at most
    /// `budget` lists (a bounded rate of HSM signatures); how many. The
    /// staleness metric gets the age of the oldest read still served.
    pub fn refresh_stale(&self, budget: usize) -> usize {
        let recent: Vec<u32> = match self.requested.lock() {
            Ok(mut requested) => {
                requested.retain(|_, at| at.elapsed() < SERVED_RECENTLY);
                requested.keys().copied().collect()
            }
            Err(_) => return 0,
        };
        let mut served: Vec<(Duration, u32, bool)> = match self.status_tokens.lock() {
            Ok(tokens) => tokens
                .iter()
                .filter(|((list, form), cached)| {
                    *form == TokenForm::Jwt && cached.token.is_some() && recent.contains(list)
                })
                .map(|((list, _), cached)| (cached.signed.elapsed(), *list, self.due(cached)))
                .collect(),
            Err(_) => return 0,
        };
        let oldest = served.iter().map(|(age, _, _)| *age).max();
        self.node
            .metrics
            .status_list_staleness_seconds
            .set(oldest.map_or(0.0, |age| age.as_secs_f64()));
        served.retain(|(_, _, stale)| *stale);
        served.sort_by_key(|(age, _, _)| std::cmp::Reverse(*age));
        let mut signed = 0;
        for (_, list, _) in served.into_iter().take(budget) {
            let Ok(_one) = self.status_signing.lock() else {
                return signed;
            };
            // A request may have signed it while this waited.
            let still_due = self.status_tokens.lock().is_ok_and(|tokens| {
                tokens
                    .get(&(list, TokenForm::Jwt))
                    .is_none_or(|cached| self.due(cached))
            });
            if !still_due {
                continue;
            }
            match self.sign_list(list) {
                Ok(_) => signed += 1,
                Err(e) => {
                    tracing::warn!(list, error = %e, "re-signing a status list; retried next round")
                }
            }
        }
        signed
    }

    /// Whether the background should re-sign `cached` now: a status
    /// changed on this node since, it nears the re-read bound, or half its
    /// validity has gone.
    fn due(&self, cached: &CachedToken) -> bool {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        cached.generation != self.changes.current()
            || cached.signed.elapsed() + BACKGROUND_LEAD >= STATUS_TOKEN_REFRESH
            || cached.exp - now <= self.lifetime / 2
    }

    /// Reads `list` once and signs it in every form, caching each (the
    /// caller holds `status_signing`); `None` for a list never opened.
    fn sign_list(&self, list: u32) -> Result<Option<Vec<SignedForm>>, String> {
        let generation = self.changes.current();
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let registry = &self.node.registry;
        if !registry
            .status_list_exists(list)
            .map_err(|e| e.to_string())?
        {
            for form in TokenForm::ALL {
                self.cache_status_token((list, form), None, generation, now);
            }
            return Ok(None);
        }
        let entries = registry.status_entries(list).map_err(|e| e.to_string())?;
        let start = Instant::now();
        let list_bits =
            StatusList::from_entries(STATUS_LIST_SIZE, &entries).map_err(|e| e.to_string())?;
        let mut tokens = Vec::new();
        for form in TokenForm::ALL {
            let token = self.sign_form(list, form, &list_bits, now)?;
            self.cache_status_token((list, form), Some(token.clone()), generation, now);
            tokens.push((form, token));
        }
        self.node
            .metrics
            .status_list_seconds
            .observe(start.elapsed().as_secs_f64());
        Ok(Some(tokens))
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
            exp: now + self.lifetime,
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
        self.keys.count_signature(key, now + self.lifetime);
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
            && cached.exp - now > self.lifetime / 2)
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
                    exp: now + self.lifetime,
                },
            );
        }
    }
}
