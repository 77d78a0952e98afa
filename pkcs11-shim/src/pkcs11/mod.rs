//! The PKCS#11 backend.
//!
//! One [`Pkcs11`] context per process (C_Initialize once, with OS locking: SoftHSM
//! crashes under concurrent use without it). A [`Connection`] holds the login
//! anchor, a pool of logged-in sessions and the key-handle cache; when the
//! device or its connection is lost, the whole connection is thrown away and
//! rebuilt (C_Finalize, C_Initialize, C_Login, handles looked up again),
//! rate-limited, without restarting the process. Callers meanwhile get a
//! retryable [`Error`], never a hang.
//!
//! Threading: every method may be called from any thread. Signers share the
//! connection through a read lock; only recovery takes the write lock, after
//! in-flight calls have returned their sessions.

mod classify;
mod pool;
mod raw_bench;
mod template;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Instant;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Function, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use secrecy::SecretString;
use tracing::{info, warn};

pub use raw_bench::{RawBenchmark, raw_sign_rate};

use crate::algorithm::{Algorithm, KeyPurpose};
use crate::backend::{Health, KeyBackend, KeyInfo, check_hmac_input, check_sign_input};
use crate::config::Pkcs11Config;
use crate::error::{Error, ErrorClass, Result};
use crate::label::validate_label;
use crate::public_key::{PublicKey, unwrap_ec_point};
use classify::{ckr_name, from_cryptoki, is_pin_rejection};
use pool::SessionPool;
use template::{ID_RANDOM_LEN, check_key_flags};

/// A key found in the token, cached per connection (handles die with it).
#[derive(Debug)]
struct CachedKey {
    handle: ObjectHandle,
    info: KeyInfo,
}

/// Everything that lives between one C_Initialize and the next.
struct Connection {
    slot: Slot,
    /// Keeps the user logged in: closing the last session would log out and
    /// invalidate every private-object handle.
    _anchor: Mutex<Session>,
    pool: SessionPool,
    keys: RwLock<HashMap<String, Arc<CachedKey>>>,
    mechanisms: Vec<MechanismType>,
    generation: u64,
}

#[derive(Default)]
struct RecoveryState {
    last_attempt: Option<Instant>,
    last_error: Option<String>,
    /// Set when reconnecting would repeat a refused login: retrying a wrong
    /// PIN locks the token, so recovery stops until an operator acts.
    halted: Option<String>,
}

/// Keys in a PKCS#11 token. See the module docs for threading and recovery.
pub struct Pkcs11Backend {
    ctx: Pkcs11,
    config: Pkcs11Config,
    pin: SecretString,
    conn: RwLock<Option<Connection>>,
    recovery: Mutex<RecoveryState>,
    generation: AtomicU64,
    recoveries: AtomicU64,
    /// Serialises key generation: "is the label free?" and "create" must
    /// not interleave with another generation of the same label.
    generating: Mutex<()>,
}

fn init_args() -> CInitializeArgs {
    CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)
}

fn ck(function: Function) -> impl Fn(CkError) -> Error {
    move |e| from_cryptoki(e, function)
}

impl Pkcs11Backend {
    /// Loads the module, logs in to the configured token and checks it.
    pub fn open(config: Pkcs11Config) -> Result<Self> {
        config.validate()?;
        let pin = config.pin.read()?;
        let ctx = Pkcs11::new(&config.module).map_err(|e| {
            Error::Config(format!(
                "cannot load PKCS#11 module {}: {e}",
                config.module.display()
            ))
        })?;
        initialize(&ctx)?;
        let conn = Connection::open(&ctx, &config, &pin, 0)?;
        info!(
            module = %config.module.display(),
            token = %config.selector(),
            sessions = config.sessions,
            "PKCS#11 token opened"
        );
        Ok(Pkcs11Backend {
            ctx,
            config,
            pin,
            conn: RwLock::new(Some(conn)),
            recovery: Mutex::new(RecoveryState::default()),
            generation: AtomicU64::new(0),
            recoveries: AtomicU64::new(0),
            generating: Mutex::new(()),
        })
    }

    /// Runs `op` on a pooled session; on device loss, reconnects (rate-limited)
    /// and runs it once more.
    fn with_session<T>(&self, op: impl Fn(&Connection, &Session) -> Result<T>) -> Result<T> {
        let mut retried = false;
        loop {
            let seen_generation = self.generation.load(Ordering::Acquire);
            // Lock order: `recovery` is taken before `conn`, never while
            // `conn` is held (recover() holds `recovery` while it waits to
            // write `conn`), so unavailable() runs after the guard is gone.
            let result = {
                let guard = self.conn.read().unwrap_or_else(PoisonError::into_inner);
                guard
                    .as_ref()
                    .map(|conn| conn.pool.checkout().and_then(|s| op(conn, &s)))
            }
            .unwrap_or_else(|| Err(self.unavailable()));
            match result {
                Err(err) if err.class() == ErrorClass::DeviceLost && !retried => {
                    if !matches!(err, Error::Unavailable { .. }) {
                        warn!(error = %err, "PKCS#11 device lost; reconnecting");
                    }
                    if self.recover(seen_generation, &err) {
                        retried = true;
                        continue;
                    }
                    return Err(match err {
                        e @ Error::Unavailable { .. } => e,
                        e => {
                            let _ = self.mark_down(seen_generation);
                            e
                        }
                    });
                }
                other => return other,
            }
        }
    }

    fn unavailable(&self) -> Error {
        let state = self.recovery.lock().unwrap_or_else(PoisonError::into_inner);
        let reason = state
            .halted
            .clone()
            .or_else(|| state.last_error.clone())
            .unwrap_or_else(|| "reconnecting".into());
        Error::Unavailable {
            reason,
            retry_after: self.config.recovery_interval(),
        }
    }

    /// The connection for writing, waiting at most the session wait: a
    /// call hung in the device must not make every other caller hang too
    /// (std's RwLock blocks new readers once a writer waits).
    fn write_conn(&self) -> Option<std::sync::RwLockWriteGuard<'_, Option<Connection>>> {
        let deadline = Instant::now() + self.config.session_wait();
        loop {
            match self.conn.try_write() {
                Ok(guard) => return Some(guard),
                Err(std::sync::TryLockError::Poisoned(p)) => return Some(p.into_inner()),
                Err(std::sync::TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                Err(std::sync::TryLockError::WouldBlock) => {
                    warn!(
                        "a PKCS#11 call is still in progress after the session wait; not reconnecting yet"
                    );
                    return None;
                }
            }
        }
    }

    /// Drops a connection that failed, so later calls fail fast until recovery.
    fn mark_down(&self, seen_generation: u64) -> bool {
        let Some(mut guard) = self.write_conn() else {
            return false;
        };
        if self.generation.load(Ordering::Acquire) == seen_generation && guard.is_some() {
            *guard = None;
            let _ = self.ctx.clone().finalize();
            return true;
        }
        false
    }

    /// Rebuilds the connection unless another thread already did, one is in
    /// progress, or the last attempt was too recent. True if the caller
    /// should retry now.
    fn recover(&self, seen_generation: u64, cause: &Error) -> bool {
        let Ok(mut state) = self.recovery.try_lock() else {
            return false; // another thread is reconnecting
        };
        if self.generation.load(Ordering::Acquire) != seen_generation {
            return true; // someone reconnected since our call started
        }
        if state.halted.is_some() {
            return false;
        }
        if let Some(last) = state.last_attempt
            && last.elapsed() < self.config.recovery_interval()
        {
            return false;
        }
        state.last_attempt = Some(Instant::now());
        if !matches!(cause, Error::Unavailable { .. }) {
            state.last_error = Some(cause.to_string());
        }

        let Some(mut guard) = self.write_conn() else {
            return false;
        };
        // Sessions are opened without close-on-drop: C_Finalize closes them
        // all, and closing stale handles later could close a new session
        // that reused the number.
        *guard = None;
        let _ = self.ctx.clone().finalize();
        let generation = seen_generation + 1;
        let reopened = initialize(&self.ctx)
            .and_then(|()| Connection::open(&self.ctx, &self.config, &self.pin, generation));
        match reopened {
            Ok(conn) => {
                *guard = Some(conn);
                self.generation.store(generation, Ordering::Release);
                let _ = self.recoveries.fetch_add(1, Ordering::Relaxed);
                state.last_error = None;
                info!(generation, "PKCS#11 connection re-established");
                true
            }
            Err(err) => {
                if matches!(err, Error::PinRejected { .. }) {
                    state.halted = Some(format!(
                        "{err}; recovery halted to avoid locking the token (fix the PIN and restart)"
                    ));
                }
                warn!(error = %err, "PKCS#11 reconnection failed");
                state.last_error = Some(err.to_string());
                false
            }
        }
    }

    fn lookup(&self, conn: &Connection, session: &Session, label: &str) -> Result<Arc<CachedKey>> {
        if let Some(key) = conn
            .keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(label)
        {
            return Ok(Arc::clone(key));
        }
        let key = Arc::new(conn.load_key(session, label)?);
        let _ = conn
            .keys
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(label.to_owned(), Arc::clone(&key));
        Ok(key)
    }
}

fn initialize(ctx: &Pkcs11) -> Result<()> {
    match ctx.initialize(init_args()) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => Ok(()),
        Err(e) => Err(from_cryptoki(e, Function::Initialize)),
    }
}

impl Connection {
    fn open(
        ctx: &Pkcs11,
        config: &Pkcs11Config,
        pin: &SecretString,
        generation: u64,
    ) -> Result<Self> {
        let slot = find_slot(ctx, config)?;
        let anchor = ctx
            .open_rw_session_no_drop(slot)
            .map_err(ck(Function::OpenSession))?;
        match anchor.login(UserType::User, Some(pin)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(CkError::Pkcs11(rv, _)) if is_pin_rejection(rv) => {
                return Err(Error::PinRejected { rv: ckr_name(rv) });
            }
            Err(e) => return Err(from_cryptoki(e, Function::Login)),
        }
        let sessions = (0..config.sessions)
            .map(|_| ctx.open_rw_session_no_drop(slot))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(ck(Function::OpenSession))?;
        let mechanisms = ctx
            .get_mechanism_list(slot)
            .map_err(ck(Function::GetMechanismList))?;
        Ok(Connection {
            slot,
            _anchor: Mutex::new(anchor),
            pool: SessionPool::new(sessions, config.session_wait()),
            keys: RwLock::new(HashMap::new()),
            mechanisms,
            generation,
        })
    }

    fn supports(&self, algorithm: Algorithm) -> bool {
        template::required_mechanisms(algorithm)
            .iter()
            .all(|m| self.mechanisms.contains(m))
    }

    /// Handles of objects with `label` (both halves of a pair share it).
    fn objects_labelled(&self, session: &Session, label: &str) -> Result<Vec<ObjectHandle>> {
        session
            .find_objects(&[
                Attribute::Token(true),
                Attribute::Label(label.as_bytes().to_vec()),
            ])
            .map_err(ck(Function::FindObjects))
    }

    fn class_of(&self, session: &Session, handle: ObjectHandle) -> Result<Option<ObjectClass>> {
        let attrs = session
            .get_attributes(handle, &[AttributeType::Class])
            .map_err(ck(Function::GetAttributeValue))?;
        Ok(attrs.into_iter().find_map(|a| match a {
            Attribute::Class(c) => Some(c),
            _ => None,
        }))
    }

    /// Finds the private or secret key `label`, checks it, and reads its
    /// public half: the one public object with the same label and id, born
    /// in the token, and proven to match by signing a random challenge.
    fn load_key(&self, session: &Session, label: &str) -> Result<CachedKey> {
        let refuse = |attribute: &'static str, actual: &str, required: &str| Error::KeyPolicy {
            label: label.to_owned(),
            attribute,
            actual: actual.to_owned(),
            required: required.to_owned(),
        };
        let mut key_handle = None;
        let mut public_handles = Vec::new();
        for handle in self.objects_labelled(session, label)? {
            let class = self.class_of(session, handle)?;
            if class == Some(ObjectClass::PRIVATE_KEY) || class == Some(ObjectClass::SECRET_KEY) {
                if key_handle.replace((handle, class)).is_some() {
                    return Err(refuse("CKA_LABEL", "shared by several keys", "unique"));
                }
            } else if class == Some(ObjectClass::PUBLIC_KEY) {
                public_handles.push(handle);
            }
        }
        let (handle, class) = key_handle.ok_or_else(|| Error::KeyNotFound {
            label: label.to_owned(),
        })?;
        let class_flags: &[(AttributeType, &'static str, bool)] =
            if class == Some(ObjectClass::SECRET_KEY) {
                &template::SECRET_KEY_FLAGS
            } else {
                &template::PRIVATE_KEY_FLAGS
            };

        let mut wanted: Vec<AttributeType> = template::REQUIRED_FLAGS
            .iter()
            .chain(class_flags)
            .map(|f| f.0)
            .collect();
        wanted.extend([
            AttributeType::KeyType,
            AttributeType::Id,
            AttributeType::EcParams,
        ]);
        let attrs = session
            .get_attributes(handle, &wanted)
            .map_err(ck(Function::GetAttributeValue))?;
        let mut key_type = None;
        let mut id = Vec::new();
        let mut ec_params = None;
        for attr in &attrs {
            match attr {
                Attribute::KeyType(t) => key_type = Some(*t),
                Attribute::Id(v) => id.clone_from(v),
                Attribute::EcParams(v) => ec_params = Some(v.clone()),
                _ => {}
            }
        }
        let purpose = template::purpose_of_id(&id)
            .ok_or_else(|| refuse("CKA_ID", "not a Dojang key id", "a key generated by Dojang"))?;
        check_key_flags(label, &attrs, &template::REQUIRED_FLAGS)?;
        check_key_flags(label, &attrs, class_flags)?;
        let key_type =
            key_type.ok_or_else(|| refuse("CKA_KEY_TYPE", "unreadable", "a key type"))?;
        let algorithm = template::algorithm_of(label, key_type, ec_params.as_deref())?;

        let public_key = if algorithm.is_signature() {
            let [public] = public_handles.as_slice() else {
                return Err(refuse(
                    "CKO_PUBLIC_KEY",
                    &format!("{} public objects with this label", public_handles.len()),
                    "exactly one",
                ));
            };
            let public_attrs = session
                .get_attributes(*public, &[AttributeType::Id, AttributeType::Local])
                .map_err(ck(Function::GetAttributeValue))?;
            let same_id = public_attrs
                .iter()
                .any(|a| matches!(a, Attribute::Id(v) if *v == id));
            let local = public_attrs
                .iter()
                .any(|a| matches!(a, Attribute::Local(true)));
            if !same_id || !local {
                return Err(refuse(
                    "CKO_PUBLIC_KEY",
                    "a public object not generated with this key",
                    "the public half generated with it (same CKA_ID, CKA_LOCAL)",
                ));
            }
            Some(self.read_public(session, *public, algorithm)?)
        } else {
            None
        };
        let key = CachedKey {
            handle,
            info: KeyInfo {
                label: label.to_owned(),
                purpose,
                algorithm,
                public_key,
            },
        };
        // Proof of possession: a public object can be replaced without the
        // PIN, and a certificate for someone else's key would let them sign.
        if let Some(public) = &key.info.public_key {
            let mut challenge = [0u8; 32];
            session
                .generate_random_slice(&mut challenge)
                .map_err(ck(Function::GenerateRandom))?;
            let signature = sign_with(session, &key, &challenge)?;
            if !public.verify(&challenge, &signature).unwrap_or(false) {
                return Err(refuse(
                    "CKO_PUBLIC_KEY",
                    "does not verify the private key's signature",
                    "the private key's own public half",
                ));
            }
        }
        Ok(key)
    }

    fn read_public(
        &self,
        session: &Session,
        handle: ObjectHandle,
        algorithm: Algorithm,
    ) -> Result<PublicKey> {
        let attrs = session
            .get_attributes(handle, &[AttributeType::EcPoint])
            .map_err(ck(Function::GetAttributeValue))?;
        let value = attrs
            .into_iter()
            .find_map(|a| match a {
                Attribute::EcPoint(v) => Some(v),
                _ => None,
            })
            .ok_or_else(|| Error::Encoding("public key without CKA_EC_POINT".into()))?;
        let point = unwrap_ec_point(&value, template::point_len(algorithm))?;
        match algorithm {
            Algorithm::EdDsa => PublicKey::from_ed25519(point),
            _ => PublicKey::from_ec_point(algorithm, point),
        }
    }

    fn generate(
        &self,
        session: &Session,
        label: &str,
        purpose: KeyPurpose,
        algorithm: Algorithm,
    ) -> Result<()> {
        let mut random = [0u8; ID_RANDOM_LEN];
        session
            .generate_random_slice(&mut random)
            .map_err(ck(Function::GenerateRandom))?;
        let id = template::key_id(purpose, &random);
        let mechanism = template::generation_mechanism(algorithm);
        if algorithm.is_signature() {
            let (public, private) = template::key_pair_templates(algorithm, label, &id);
            let _ = session
                .generate_key_pair(&mechanism, &public, &private)
                .map_err(ck(Function::GenerateKeyPair))?;
        } else {
            let _ = session
                .generate_key(&mechanism, &template::secret_key_template(label, &id))
                .map_err(ck(Function::GenerateKey))?;
        }
        Ok(())
    }

    fn destroy_labelled(&self, session: &Session, label: &str) -> Result<()> {
        for handle in self.objects_labelled(session, label)? {
            session
                .destroy_object(handle)
                .map_err(ck(Function::DestroyObject))?;
        }
        let _ = self
            .keys
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(label);
        Ok(())
    }
}

fn find_slot(ctx: &Pkcs11, config: &Pkcs11Config) -> Result<Slot> {
    let mut seen = Vec::new();
    for slot in ctx
        .get_slots_with_token()
        .map_err(ck(Function::GetSlotList))?
    {
        let info = ctx
            .get_token_info(slot)
            .map_err(ck(Function::GetTokenInfo))?;
        let label = info.label().trim_end();
        let serial = info.serial_number().trim_end();
        let matches = match (&config.token_label, &config.token_serial) {
            (Some(want), _) => label == want,
            (None, Some(want)) => serial == want,
            (None, None) => false,
        };
        if matches {
            return Ok(slot);
        }
        seen.push(format!("{label:?}"));
    }
    Err(Error::TokenNotFound {
        selector: config.selector(),
        seen: if seen.is_empty() {
            "none".into()
        } else {
            seen.join(", ")
        },
    })
}

fn sign_with(session: &Session, key: &CachedKey, message: &[u8]) -> Result<Vec<u8>> {
    let algorithm = key.info.algorithm;
    let signature = match algorithm {
        Algorithm::Es256 => session.sign(
            &Mechanism::Ecdsa,
            key.handle,
            &crate::digest::sha256(message),
        ),
        Algorithm::Es384 => session.sign(
            &Mechanism::Ecdsa,
            key.handle,
            &crate::digest::sha384(message),
        ),
        Algorithm::EdDsa => session.sign(
            &Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure)),
            key.handle,
            message,
        ),
        Algorithm::HmacSha256 => {
            return Err(Error::WrongKeyType {
                label: key.info.label.clone(),
                actual: "HMAC".into(),
                expected: "signing".into(),
            });
        }
    }
    .map_err(ck(Function::Sign))?;
    if signature.len() != algorithm.signature_len() {
        return Err(Error::Encoding(format!(
            "token returned a {}-byte {algorithm} signature, expected {}",
            signature.len(),
            algorithm.signature_len()
        )));
    }
    Ok(signature)
}

impl KeyBackend for Pkcs11Backend {
    fn kind(&self) -> &'static str {
        "pkcs11"
    }

    fn algorithms(&self) -> Vec<Algorithm> {
        let guard = self.conn.read().unwrap_or_else(PoisonError::into_inner);
        match guard.as_ref() {
            Some(conn) => Algorithm::ALL
                .into_iter()
                .filter(|a| conn.supports(*a))
                .collect(),
            None => Vec::new(),
        }
    }

    fn generate(&self, label: &str, purpose: KeyPurpose, algorithm: Algorithm) -> Result<KeyInfo> {
        validate_label(label)?;
        purpose.check_algorithm(algorithm)?;
        let _one_at_a_time = self
            .generating
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let generated = self.with_session(|conn, session| {
            if !conn.supports(algorithm) {
                return Err(Error::Unsupported {
                    algorithm: algorithm.to_string(),
                    backend: "this PKCS#11 token".into(),
                });
            }
            if !conn.objects_labelled(session, label)?.is_empty() {
                return Err(Error::KeyExists {
                    label: label.to_owned(),
                });
            }
            conn.generate(session, label, purpose, algorithm)?;
            // Read back and check as any later use would; a key that fails
            // the checks is destroyed, never left behind half-trusted.
            match conn.load_key(session, label) {
                Ok(key) => Ok(key.info),
                Err(err) => {
                    let _ = conn.destroy_labelled(session, label);
                    Err(err)
                }
            }
        })?;
        info!(label, %purpose, %algorithm, "key generated in the token");
        Ok(generated)
    }

    fn find(&self, label: &str) -> Result<KeyInfo> {
        validate_label(label)?;
        self.with_session(|conn, session| Ok(self.lookup(conn, session, label)?.info.clone()))
    }

    fn list(&self) -> Result<Vec<KeyInfo>> {
        self.with_session(|conn, session| {
            let handles = session
                .find_objects(&[Attribute::Token(true)])
                .map_err(ck(Function::FindObjects))?;
            let mut keys = Vec::new();
            for handle in handles {
                let attrs = session
                    .get_attributes(
                        handle,
                        &[
                            AttributeType::Class,
                            AttributeType::Label,
                            AttributeType::Id,
                        ],
                    )
                    .map_err(ck(Function::GetAttributeValue))?;
                let mut is_key = false;
                let mut label = None;
                let mut ours = false;
                for attr in attrs {
                    match attr {
                        Attribute::Class(c) => {
                            is_key = c == ObjectClass::PRIVATE_KEY || c == ObjectClass::SECRET_KEY;
                        }
                        Attribute::Label(l) => label = String::from_utf8(l).ok(),
                        Attribute::Id(id) => ours = template::purpose_of_id(&id).is_some(),
                        _ => {}
                    }
                }
                if let (true, true, Some(label)) = (is_key, ours, label) {
                    // One refused key must not hide the others from an officer.
                    match self.lookup(conn, session, &label) {
                        Ok(key) => keys.push(key.info.clone()),
                        Err(err @ Error::KeyPolicy { .. }) => {
                            warn!(label, error = %err, "key refused and left out of the list");
                        }
                        Err(err) => return Err(err),
                    }
                }
            }
            keys.sort_by(|a, b| a.label.cmp(&b.label));
            Ok(keys)
        })
    }

    fn sign(&self, label: &str, message: &[u8]) -> Result<Vec<u8>> {
        check_sign_input(message)?;
        self.with_session(|conn, session| {
            let key = self.lookup(conn, session, label)?;
            sign_with(session, &key, message).inspect_err(|err| {
                if err.class() == ErrorClass::KeyMissing {
                    // The handle died (key destroyed elsewhere): look it up again next time.
                    let _ = conn
                        .keys
                        .write()
                        .unwrap_or_else(PoisonError::into_inner)
                        .remove(label);
                }
            })
        })
    }

    fn hmac_sha256(&self, label: &str, data: &[u8]) -> Result<[u8; 32]> {
        check_hmac_input(data)?;
        self.with_session(|conn, session| {
            let key = self.lookup(conn, session, label)?;
            if key.info.algorithm != Algorithm::HmacSha256 {
                return Err(Error::WrongKeyType {
                    label: label.to_owned(),
                    actual: key.info.algorithm.to_string(),
                    expected: "HMAC".into(),
                });
            }
            let mac = session
                .sign(&Mechanism::Sha256Hmac, key.handle, data)
                .map_err(ck(Function::Sign))?;
            mac.as_slice()
                .try_into()
                .map_err(|_| Error::Encoding(format!("token returned a {}-byte HMAC", mac.len())))
        })
    }

    fn destroy(&self, label: &str) -> Result<()> {
        validate_label(label)?;
        self.with_session(|conn, session| {
            // Only Dojang's own keys: find through the checked lookup first.
            let _ = self.lookup(conn, session, label)?;
            conn.destroy_labelled(session, label)
        })?;
        info!(label, "key destroyed in the token");
        Ok(())
    }

    fn health(&self) -> Health {
        let probe = self.with_session(|conn, session| {
            let _ = session
                .get_session_info()
                .map_err(ck(Function::GetSessionInfo))?;
            Ok((conn.slot.id(), conn.generation))
        });
        let sessions = self
            .conn
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|c| c.pool.counts());
        let (up, detail) = match probe {
            Ok((slot, generation)) => (
                true,
                format!("token on slot {slot}, connection {generation}"),
            ),
            Err(err) => (false, err.to_string()),
        };
        Health {
            up,
            backend: "pkcs11",
            detail,
            recoveries: self.recoveries.load(Ordering::Relaxed),
            sessions,
        }
    }
}

impl Drop for Pkcs11Backend {
    fn drop(&mut self) {
        let conn = self.conn.get_mut().unwrap_or_else(PoisonError::into_inner);
        *conn = None;
        let _ = self.ctx.clone().finalize();
    }
}

impl std::fmt::Debug for Pkcs11Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Backend")
            .field("module", &self.config.module)
            .field("token", &self.config.selector())
            .finish_non_exhaustive()
    }
}
