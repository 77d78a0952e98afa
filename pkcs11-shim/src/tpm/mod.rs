//! The TPM 2.0 backend (tss-esapi 7.x over libtss2).
//!
//! Keys are ordinary (non-persistent) objects created under a primary storage
//! key in the owner hierarchy. The primary is derived from the owner seed by a
//! fixed template, so it comes back identical after a TPM restart, and the
//! key blobs in `key_dir` load under it again: keys survive restarts of the
//! daemon and of the TPM. Every key is `fixedTPM | fixedParent |
//! sensitiveDataOrigin`: born in this TPM and never duplicable out of it.
//!
//! Threading: a TPM context has one owner. Calls are serialised on a mutex;
//! at most one signing key is kept loaded beside the primary (swtpm has three
//! transient slots and no resource manager over TCP).

mod blob;

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use secrecy::{ExposeSecret, SecretString};
use tracing::{info, warn};
use tss_esapi::Context;
use tss_esapi::attributes::ObjectAttributesBuilder;
use tss_esapi::constants::CapabilityType;
use tss_esapi::constants::tss::{TPM2_RH_NULL, TPM2_ST_HASHCHECK, TPM2_TRANSIENT_FIRST};
use tss_esapi::handles::{KeyHandle, ObjectHandle, TpmHandle};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::resource_handles::Hierarchy;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{
    Auth, CapabilityData, Digest, EccPoint, EccScheme, HashScheme, KeyedHashScheme, MaxBuffer,
    Private, Public, PublicBuilder, PublicEccParametersBuilder, PublicKeyedHashParameters,
    Signature, SignatureScheme, SymmetricDefinitionObject,
};
use tss_esapi::tcti_ldr::TctiNameConf;
use tss_esapi::traits::{Marshall, UnMarshall};
use tss_esapi::tss2_esys::TPMT_TK_HASHCHECK;

use crate::algorithm::{Algorithm, KeyPurpose};
use crate::backend::{Health, KeyBackend, KeyInfo, check_hmac_input, check_sign_input};
use crate::config::TpmConfig;
use crate::error::{Error, ErrorClass, Result};
use crate::label::validate_label;
use crate::public_key::PublicKey;
use blob::KeyBlob;

/// Algorithms a TPM 2.0 offers Dojang (TPMs have no EdDSA).
const TPM_ALGORITHMS: [Algorithm; 3] = [Algorithm::Es256, Algorithm::Es384, Algorithm::HmacSha256];

struct Connected {
    ctx: Context,
    primary: KeyHandle,
    /// The one signing/HMAC key kept loaded, by label.
    loaded: Option<(String, KeyHandle)>,
}

#[derive(Default)]
struct Recovery {
    last_attempt: Option<Instant>,
    last_error: Option<String>,
}

/// Keys in a TPM 2.0. See the module docs.
pub struct TpmBackend {
    config: TpmConfig,
    owner_auth: Option<SecretString>,
    state: Mutex<Option<Connected>>,
    recovery: Mutex<Recovery>,
    recoveries: AtomicU64,
}

fn tpm_err(operation: &'static str) -> impl Fn(tss_esapi::Error) -> Error {
    move |e| Error::Tpm {
        operation,
        detail: e.to_string(),
        class: classify(e),
    }
}

/// Errors naming handles the TPM no longer has (it was reset or restarted)
/// mean our objects are gone: reconnect. Other TPM errors are settled by a
/// probe in `with_tpm` (a TPM that answers was not lost); they are marked
/// `Retryable` until then.
fn classify(e: tss_esapi::Error) -> ErrorClass {
    use tss_esapi::constants::response_code::Tss2ResponseCodeKind as K;
    match e {
        tss_esapi::Error::WrapperError(_) => ErrorClass::Fatal,
        tss_esapi::Error::Tss2Error(rc) => match rc.kind() {
            Some(
                K::Initialize
                | K::ReferenceH0
                | K::ReferenceH1
                | K::ReferenceH2
                | K::ReferenceH3
                | K::ReferenceH4
                | K::ReferenceH5
                | K::ReferenceH6
                | K::ReferenceS0
                | K::ReferenceS1
                | K::ReferenceS2
                | K::ReferenceS3
                | K::ReferenceS4
                | K::ReferenceS5
                | K::ReferenceS6,
            ) => ErrorClass::DeviceLost,
            _ => ErrorClass::Retryable,
        },
    }
}

fn wrap(operation: &'static str) -> impl Fn(tss_esapi::Error) -> Error {
    move |e| Error::Tpm {
        operation,
        detail: e.to_string(),
        class: ErrorClass::Fatal,
    }
}

/// The primary key's template: the TCG "SRK" shape on P-256, fixed so the
/// same primary is derived every time from the owner seed.
fn primary_template() -> Result<Public> {
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_no_da(true)
        .with_restricted(true)
        .with_decrypt(true)
        .build()
        .map_err(wrap("primary template"))?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_ecc_parameters(
            PublicEccParametersBuilder::new_restricted_decryption_key(
                SymmetricDefinitionObject::AES_128_CFB,
                EccCurve::NistP256,
            )
            .build()
            .map_err(wrap("primary template"))?,
        )
        .with_ecc_unique_identifier(EccPoint::default())
        .build()
        .map_err(wrap("primary template"))
}

fn key_attributes() -> Result<tss_esapi::attributes::ObjectAttributes> {
    ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_sign_encrypt(true)
        .with_decrypt(false)
        .with_restricted(false)
        .build()
        .map_err(wrap("key template"))
}

fn key_template(algorithm: Algorithm) -> Result<Public> {
    let builder = PublicBuilder::new()
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(key_attributes()?);
    let (hash, curve) = match algorithm {
        Algorithm::Es256 => (HashingAlgorithm::Sha256, EccCurve::NistP256),
        Algorithm::Es384 => (HashingAlgorithm::Sha384, EccCurve::NistP384),
        Algorithm::HmacSha256 => {
            return builder
                .with_public_algorithm(PublicAlgorithm::KeyedHash)
                .with_keyed_hash_parameters(PublicKeyedHashParameters::new(
                    KeyedHashScheme::HMAC_SHA_256,
                ))
                .with_keyed_hash_unique_identifier(Digest::default())
                .build()
                .map_err(wrap("key template"));
        }
        other => {
            return Err(Error::Unsupported {
                algorithm: other.to_string(),
                backend: "the TPM backend (TPM 2.0 has no EdDSA)".into(),
            });
        }
    };
    builder
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_ecc_parameters(
            PublicEccParametersBuilder::new_unrestricted_signing_key(
                EccScheme::EcDsa(HashScheme::new(hash)),
                curve,
            )
            .build()
            .map_err(wrap("key template"))?,
        )
        .with_ecc_unique_identifier(EccPoint::default())
        .build()
        .map_err(wrap("key template"))
}

/// Refuses a blob whose public area says the key could leave the TPM, was
/// imported, or can decrypt.
fn check_public(label: &str, public: &Public) -> Result<()> {
    let attrs = public.object_attributes();
    let checks = [
        ("fixedTPM", attrs.fixed_tpm(), true),
        ("fixedParent", attrs.fixed_parent(), true),
        ("sensitiveDataOrigin", attrs.sensitive_data_origin(), true),
        ("sign", attrs.sign_encrypt(), true),
        ("decrypt", attrs.decrypt(), false),
    ];
    for (name, actual, required) in checks {
        if actual != required {
            return Err(Error::KeyPolicy {
                label: label.to_owned(),
                attribute: name,
                actual: actual.to_string(),
                required: required.to_string(),
            });
        }
    }
    Ok(())
}

fn public_key_of(algorithm: Algorithm, public: &Public) -> Result<Option<PublicKey>> {
    let coord_len = match algorithm {
        Algorithm::Es256 => 32,
        Algorithm::Es384 => 48,
        _ => return Ok(None),
    };
    let Public::Ecc { unique, .. } = public else {
        return Err(Error::Encoding("TPM key is not an ECC key".into()));
    };
    let mut point = vec![0x04];
    for coord in [unique.x().value(), unique.y().value()] {
        if coord.len() > coord_len {
            return Err(Error::Encoding("TPM ECC coordinate too long".into()));
        }
        point.extend(std::iter::repeat_n(0, coord_len - coord.len()));
        point.extend_from_slice(coord);
    }
    PublicKey::from_ec_point(algorithm, &point).map(Some)
}

fn key_info(label: &str, blob: &KeyBlob) -> Result<KeyInfo> {
    let public = Public::unmarshall(&blob.public).map_err(wrap("reading key blob"))?;
    check_public(label, &public)?;
    Ok(KeyInfo {
        label: label.to_owned(),
        purpose: blob.purpose,
        algorithm: blob.algorithm,
        public_key: public_key_of(blob.algorithm, &public)?,
    })
}

impl TpmBackend {
    /// Connects to the TPM, derives the primary key and checks the key directory.
    pub fn open(config: TpmConfig) -> Result<Self> {
        config.validate()?;
        blob::ensure_dir(&config.key_dir)?;
        blob::check_dir_mode(&config.key_dir)?;
        let owner_auth = config.owner_auth.as_ref().map(|s| s.read()).transpose()?;
        let connected = connect(&config, owner_auth.as_ref())?;
        info!(tcti = %config.tcti, key_dir = %config.key_dir.display(), "TPM opened");
        Ok(TpmBackend {
            config,
            owner_auth,
            state: Mutex::new(Some(connected)),
            recovery: Mutex::new(Recovery::default()),
            recoveries: AtomicU64::new(0),
        })
    }

    /// Runs `op` with the TPM; on loss, reconnects (rate-limited) and runs it once more.
    fn with_tpm<T>(&self, op: impl Fn(&mut Connected) -> Result<T>) -> Result<T> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let mut retried = false;
        loop {
            let connected = match &mut *state {
                Some(connected) => connected,
                slot @ None => slot.insert(self.reconnect()?),
            };
            match op(connected) {
                // A TPM that still answers was not lost: the command itself
                // failed (a corrupt or foreign blob, a bad parameter). Keep
                // the connection, which serves every other key.
                Err(Error::Tpm {
                    operation,
                    detail,
                    class: ErrorClass::Retryable,
                }) if probe(connected).is_ok() => {
                    return Err(Error::Tpm {
                        operation,
                        detail,
                        class: ErrorClass::Fatal,
                    });
                }
                Err(err) if err.is_retryable() && !retried => {
                    warn!(error = %err, "TPM lost; reconnecting");
                    *state = None; // drops the context: its objects are flushed or gone
                    retried = true;
                    self.recovery
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .last_error = Some(err.to_string());
                }
                other => return other,
            }
        }
    }

    fn reconnect(&self) -> Result<Connected> {
        let mut recovery = self.recovery.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(last) = recovery.last_attempt
            && last.elapsed() < self.config.recovery_interval()
        {
            return Err(Error::Unavailable {
                reason: recovery
                    .last_error
                    .clone()
                    .unwrap_or_else(|| "reconnecting".into()),
                retry_after: self.config.recovery_interval(),
            });
        }
        recovery.last_attempt = Some(Instant::now());
        match connect(&self.config, self.owner_auth.as_ref()) {
            Ok(connected) => {
                let _ = self.recoveries.fetch_add(1, Ordering::Relaxed);
                recovery.last_error = None;
                info!("TPM connection re-established");
                Ok(connected)
            }
            Err(err) => {
                warn!(error = %err, "TPM reconnection failed");
                recovery.last_error = Some(err.to_string());
                Err(Error::Unavailable {
                    reason: err.to_string(),
                    retry_after: self.config.recovery_interval(),
                })
            }
        }
    }

    fn loaded_key(&self, tpm: &mut Connected, label: &str, blob: &KeyBlob) -> Result<KeyHandle> {
        if let Some((loaded_label, handle)) = &tpm.loaded
            && loaded_label == label
        {
            return Ok(*handle);
        }
        if let Some((_, old)) = tpm.loaded.take() {
            tpm.ctx
                .flush_context(ObjectHandle::from(old))
                .map_err(tpm_err("flush"))?;
        }
        let public = Public::unmarshall(&blob.public).map_err(wrap("reading key blob"))?;
        check_public(label, &public)?;
        let private = Private::try_from(blob.private.clone()).map_err(wrap("reading key blob"))?;
        let handle = tpm
            .ctx
            .load(tpm.primary, private, public)
            .map_err(tpm_err("load"))?;
        tpm.loaded = Some((label.to_owned(), handle));
        Ok(handle)
    }

    fn blob(&self, label: &str) -> Result<KeyBlob> {
        validate_label(label)?;
        KeyBlob::read(&self.config.key_dir, label)
    }
}

fn connect(config: &TpmConfig, owner_auth: Option<&SecretString>) -> Result<Connected> {
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
fn probe(tpm: &mut Connected) -> Result<()> {
    let _ = tpm
        .ctx
        .execute_without_session(|ctx| {
            ctx.get_capability(CapabilityType::Handles, TPM2_TRANSIENT_FIRST, 1)
        })
        .map_err(tpm_err("probe"))?;
    Ok(())
}

fn null_ticket() -> Result<tss_esapi::structures::HashcheckTicket> {
    TPMT_TK_HASHCHECK {
        tag: TPM2_ST_HASHCHECK,
        hierarchy: TPM2_RH_NULL,
        digest: Default::default(),
    }
    .try_into()
    .map_err(wrap("hashcheck ticket"))
}

fn raw_signature(algorithm: Algorithm, signature: Signature) -> Result<Vec<u8>> {
    let half = algorithm.signature_len() / 2;
    let Signature::EcDsa(sig) = signature else {
        return Err(Error::Encoding("TPM returned a non-ECDSA signature".into()));
    };
    let mut raw = Vec::with_capacity(half * 2);
    for part in [sig.signature_r().value(), sig.signature_s().value()] {
        if part.len() > half {
            return Err(Error::Encoding("TPM signature component too long".into()));
        }
        raw.extend(std::iter::repeat_n(0, half - part.len()));
        raw.extend_from_slice(part);
    }
    Ok(raw)
}

impl KeyBackend for TpmBackend {
    fn kind(&self) -> &'static str {
        "tpm"
    }

    fn algorithms(&self) -> Vec<Algorithm> {
        TPM_ALGORITHMS.to_vec()
    }

    fn generate(&self, label: &str, purpose: KeyPurpose, algorithm: Algorithm) -> Result<KeyInfo> {
        validate_label(label)?;
        purpose.check_algorithm(algorithm)?;
        let template = key_template(algorithm)?;
        if blob::path_of(&self.config.key_dir, label).exists() {
            return Err(Error::KeyExists {
                label: label.to_owned(),
            });
        }
        let created = self.with_tpm(|tpm| {
            tpm.ctx
                .create(tpm.primary, template.clone(), None, None, None, None)
                .map_err(tpm_err("create"))
        })?;
        let blob = KeyBlob {
            purpose,
            algorithm,
            public: created
                .out_public
                .marshall()
                .map_err(wrap("marshal public"))?,
            private: created.out_private.value().to_vec(),
        };
        let info = key_info(label, &blob)?;
        blob.create(&self.config.key_dir, label)?;
        info!(label, %purpose, %algorithm, "key generated in the TPM");
        Ok(info)
    }

    fn find(&self, label: &str) -> Result<KeyInfo> {
        key_info(label, &self.blob(label)?)
    }

    fn list(&self) -> Result<Vec<KeyInfo>> {
        blob::labels(&self.config.key_dir)?
            .iter()
            .map(|label| self.find(label))
            .collect()
    }

    fn sign(&self, label: &str, message: &[u8]) -> Result<Vec<u8>> {
        check_sign_input(message)?;
        let blob = self.blob(label)?;
        let digest = match blob.algorithm {
            Algorithm::Es256 => crate::digest::sha256(message).to_vec(),
            Algorithm::Es384 => crate::digest::sha384(message).to_vec(),
            other => {
                return Err(Error::WrongKeyType {
                    label: label.to_owned(),
                    actual: other.to_string(),
                    expected: "signing".into(),
                });
            }
        };
        let digest = Digest::try_from(digest).map_err(wrap("digest"))?;
        let signature = self.with_tpm(|tpm| {
            let key = self.loaded_key(tpm, label, &blob)?;
            tpm.ctx
                .sign(key, digest.clone(), SignatureScheme::Null, null_ticket()?)
                .map_err(tpm_err("sign"))
        })?;
        raw_signature(blob.algorithm, signature)
    }

    fn hmac_sha256(&self, label: &str, data: &[u8]) -> Result<[u8; 32]> {
        check_hmac_input(data)?;
        let blob = self.blob(label)?;
        if blob.algorithm != Algorithm::HmacSha256 {
            return Err(Error::WrongKeyType {
                label: label.to_owned(),
                actual: blob.algorithm.to_string(),
                expected: "HMAC".into(),
            });
        }
        let buffer = MaxBuffer::try_from(data.to_vec()).map_err(wrap("hmac input"))?;
        let mac = self.with_tpm(|tpm| {
            let key = self.loaded_key(tpm, label, &blob)?;
            tpm.ctx
                .hmac(key.into(), buffer.clone(), HashingAlgorithm::Sha256)
                .map_err(tpm_err("hmac"))
        })?;
        mac.value()
            .try_into()
            .map_err(|_| Error::Encoding(format!("TPM returned a {}-byte HMAC", mac.value().len())))
    }

    fn destroy(&self, label: &str) -> Result<()> {
        let _ = self.blob(label)?;
        {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(tpm) = state.as_mut()
                && let Some((loaded, handle)) = tpm.loaded.take()
            {
                if loaded == label {
                    let _ = tpm.ctx.flush_context(ObjectHandle::from(handle));
                } else {
                    tpm.loaded = Some((loaded, handle));
                }
            }
        }
        // The wrapped private area is useless without the file: deleting it
        // destroys the key (the TPM keeps no copy of non-persistent objects).
        blob::remove(&self.config.key_dir, label)?;
        info!(label, "TPM key destroyed");
        Ok(())
    }

    fn health(&self) -> Health {
        let probed = self.with_tpm(probe);
        let (up, detail) = match probed {
            Ok(()) => (true, format!("TPM at {}", self.config.tcti)),
            Err(err) => (false, err.to_string()),
        };
        Health {
            up,
            backend: "tpm",
            detail,
            recoveries: self.recoveries.load(Ordering::Relaxed),
            sessions: None,
        }
    }
}

impl std::fmt::Debug for TpmBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TpmBackend")
            .field("tcti", &self.config.tcti)
            .field("key_dir", &self.config.key_dir)
            .finish_non_exhaustive()
    }
}
