//! One TPM connection: the ESAPI context, the primary key derived from the
//! owner seed, and the one signing or HMAC key kept loaded beside it (swtpm
//! has three transient slots and no resource manager over TCP). Connecting
//! clears transient objects a killed predecessor left behind.

use std::str::FromStr;

use secrecy::{ExposeSecret, SecretString};
use tracing::warn;
use tss_esapi::Context;
use tss_esapi::constants::CapabilityType;
use tss_esapi::constants::tss::TPM2_TRANSIENT_FIRST;
use tss_esapi::handles::{KeyHandle, ObjectHandle, TpmHandle};
use tss_esapi::interface_types::resource_handles::Hierarchy;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{Auth, CapabilityData, Private, Public};
use tss_esapi::tcti_ldr::TctiNameConf;
use tss_esapi::traits::UnMarshall;

use super::blob::KeyBlob;
use super::classify::{tpm_err, wrap};
use super::template::{check_public, primary_template};
use crate::config::TpmConfig;
use crate::error::{Error, Result};

/// A live TPM context with its primary key.
pub(crate) struct Connected {
    /// The ESAPI context (one owner: callers hold the backend's mutex).
    pub(crate) ctx: Context,
    /// The primary storage key every Dojang key is created and loaded under.
    pub(crate) primary: KeyHandle,
    /// The one signing/HMAC key kept loaded, by label.
    loaded: Option<(String, KeyHandle)>,
}

/// Connects to the TPM of `config` and derives the primary key.
pub(crate) fn connect(config: &TpmConfig, owner_auth: Option<&SecretString>) -> Result<Connected> {
    let tcti = TctiNameConf::from_str(&config.tcti)
        .map_err(|e| Error::Config(format!("keys.tcti {:?}: {e}", config.tcti)))?;
    let mut ctx = Context::new(tcti).map_err(tpm_err("connect"))?;
    // Without a resource manager, objects a killed predecessor left loaded
    // stay in the TPM's few transient slots; clear them first.
    if !(config.tcti.contains("tpmrm") || config.tcti.starts_with("tabrmd")) {
        flush_stale_transients(&mut ctx)?;
    }
    if let Some(auth) = owner_auth {
        let auth = Auth::try_from(auth.expose_secret().as_bytes().to_vec())
            .map_err(|_| Error::Config("TPM owner auth is too long".into()))?;
        ctx.tr_set_auth(Hierarchy::Owner.into(), auth)
            .map_err(tpm_err("set owner auth"))?;
    }
    ctx.set_sessions((Some(AuthSession::Password), None, None));
    let primary = ctx
        .create_primary(
            Hierarchy::Owner,
            primary_template()?,
            None,
            None,
            None,
            None,
        )
        .map_err(tpm_err("create primary"))?
        .key_handle;
    Ok(Connected {
        ctx,
        primary,
        loaded: None,
    })
}

fn flush_stale_transients(ctx: &mut Context) -> Result<()> {
    let (data, _) = ctx
        .execute_without_session(|ctx| {
            ctx.get_capability(CapabilityType::Handles, TPM2_TRANSIENT_FIRST, 16)
        })
        .map_err(tpm_err("list transient objects"))?;
    if let CapabilityData::Handles(handles) = data {
        for handle in handles.iter() {
            let object = ctx
                .tr_from_tpm_public(
                    TpmHandle::try_from(u32::from(*handle)).map_err(wrap("handle"))?,
                )
                .map_err(tpm_err("flush stale object"))?;
            ctx.flush_context(object)
                .map_err(tpm_err("flush stale object"))?;
            warn!("flushed a transient TPM object left by an earlier process");
        }
    }
    Ok(())
}

/// A command every TPM answers without authorization.
pub(crate) fn probe(tpm: &mut Connected) -> Result<()> {
    let _ = tpm
        .ctx
        .execute_without_session(|ctx| {
            ctx.get_capability(CapabilityType::Handles, TPM2_TRANSIENT_FIRST, 1)
        })
        .map_err(tpm_err("probe"))?;
    Ok(())
}

impl Connected {
    /// The handle of the key `label`: the loaded one if it is that key, else
    /// `blob` loaded in place of the previous one (its public area checked
    /// again).
    pub(crate) fn load(&mut self, label: &str, blob: &KeyBlob) -> Result<KeyHandle> {
        if let Some((loaded_label, handle)) = &self.loaded
            && loaded_label == label
        {
            return Ok(*handle);
        }
        if let Some((_, old)) = self.loaded.take() {
            self.ctx
                .flush_context(ObjectHandle::from(old))
                .map_err(tpm_err("flush"))?;
        }
        let public = Public::unmarshall(&blob.public).map_err(wrap("reading key blob"))?;
        check_public(label, &public)?;
        let private = Private::try_from(blob.private.clone()).map_err(wrap("reading key blob"))?;
        let handle = self
            .ctx
            .load(self.primary, private, public)
            .map_err(tpm_err("load"))?;
        self.loaded = Some((label.to_owned(), handle));
        Ok(handle)
    }

    /// Flushes the key `label` if it is the one loaded.
    pub(crate) fn unload(&mut self, label: &str) {
        if let Some((loaded, handle)) = self.loaded.take() {
            if loaded == label {
                let _ = self.ctx.flush_context(ObjectHandle::from(handle));
            } else {
                self.loaded = Some((loaded, handle));
            }
        }
    }
}
