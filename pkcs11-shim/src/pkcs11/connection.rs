//! One PKCS#11 connection: everything that lives between one C_Initialize
//! and the next. It finds the token, logs in through an anchor session that
//! keeps the login alive, opens the session pool, reads the mechanism list,
//! and caches key handles (which die with the connection).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Function, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::MechanismType;
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use secrecy::SecretString;

use super::classify::{ck, ckr_name, from_cryptoki, is_pin_rejection};
use super::keys::{CachedKey, load_key, objects_labelled};
use super::pool::SessionPool;
use super::template;
use crate::algorithm::Algorithm;
use crate::config::Pkcs11Config;
use crate::error::{Error, Result};

/// Everything that lives between one C_Initialize and the next.
pub(crate) struct Connection {
    slot: Slot,
    /// Keeps the user logged in: closing the last session would log out and
    /// invalidate every private-object handle.
    _anchor: Mutex<Session>,
    pool: SessionPool,
    keys: RwLock<HashMap<String, Arc<CachedKey>>>,
    mechanisms: Vec<MechanismType>,
    generation: u64,
}

/// C_Initialize arguments: OS locking, without which SoftHSM crashes under
/// concurrent use.
pub(crate) fn init_args() -> CInitializeArgs {
    CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)
}

/// C_Initialize, accepting a context that is already initialised.
pub(crate) fn initialize(ctx: &Pkcs11) -> Result<()> {
    match ctx.initialize(init_args()) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => Ok(()),
        Err(e) => Err(from_cryptoki(e, Function::Initialize)),
    }
}

impl Connection {
    /// Finds the configured token, logs in and opens the session pool.
    pub(crate) fn open(
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

    /// The token's slot.
    pub(crate) fn slot(&self) -> Slot {
        self.slot
    }

    /// Which connection this is since the backend opened (0 first).
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// The session pool signers borrow from.
    pub(crate) fn pool(&self) -> &SessionPool {
        &self.pool
    }

    /// Whether the token has every mechanism `algorithm` needs.
    pub(crate) fn supports(&self, algorithm: Algorithm) -> bool {
        template::required_mechanisms(algorithm)
            .iter()
            .all(|m| self.mechanisms.contains(m))
    }

    /// The checked key `label`, from the cache or loaded (and cached).
    pub(crate) fn key(&self, session: &Session, label: &str) -> Result<Arc<CachedKey>> {
        if let Some(key) = self
            .keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(label)
        {
            return Ok(Arc::clone(key));
        }
        let key = Arc::new(load_key(session, label)?);
        let _ = self
            .keys
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(label.to_owned(), Arc::clone(&key));
        Ok(key)
    }

    /// Drops `label` from the handle cache: the next use looks it up again.
    pub(crate) fn forget(&self, label: &str) {
        let _ = self
            .keys
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(label);
    }

    /// Destroys every object labelled `label` and forgets its handle.
    pub(crate) fn destroy_labelled(&self, session: &Session, label: &str) -> Result<()> {
        for handle in objects_labelled(session, label)? {
            session
                .destroy_object(handle)
                .map_err(ck(Function::DestroyObject))?;
        }
        self.forget(label);
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
