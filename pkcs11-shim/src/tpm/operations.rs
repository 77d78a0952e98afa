//! The [`KeyBackend`] operations of [`TpmBackend`]: keys are created under
//! the primary and kept as blob files; signing and HMAC load the key's blob
//! through `with_tpm` (which recovers from a TPM loss); destroying a key
//! deletes its blob.

use tracing::info;
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::structures::{MaxBuffer, SignatureScheme};
use tss_esapi::traits::Marshall;

use super::backend::TpmBackend;
use super::blob::{self, KeyBlob};
use super::classify::{tpm_err, wrap};
use super::connection::probe;
use super::keys::key_info;
use super::sign::{digest_of, null_ticket, raw_signature};
use super::template::{TPM_ALGORITHMS, key_template};
use crate::algorithm::{Algorithm, KeyPurpose};
use crate::backend::{Health, KeyBackend, KeyInfo, check_hmac_input, check_sign_input};
use crate::error::{Error, Result};
use crate::label::validate_label;

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
        if blob::path_of(self.key_dir(), label).exists() {
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
        blob.create(self.key_dir(), label)?;
        info!(label, %purpose, %algorithm, "key generated in the TPM");
        Ok(info)
    }

    fn find(&self, label: &str) -> Result<KeyInfo> {
        key_info(label, &self.blob(label)?)
    }

    fn list(&self) -> Result<Vec<KeyInfo>> {
        blob::labels(self.key_dir())?
            .iter()
            .map(|label| self.find(label))
            .collect()
    }

    fn sign(&self, label: &str, purpose: KeyPurpose, message: &[u8]) -> Result<Vec<u8>> {
        check_sign_input(message)?;
        let blob = self.blob(label)?;
        if blob.purpose != purpose {
            return Err(Error::WrongPurpose {
                label: label.to_owned(),
                actual: blob.purpose.name(),
                expected: purpose.name(),
            });
        }
        let digest = digest_of(label, blob.algorithm, message)?;
        let signature = self.with_tpm(|tpm| {
            let key = tpm.load(label, &blob)?;
            tpm.ctx
                .sign(key, digest.clone(), SignatureScheme::Null, null_ticket()?)
                .map_err(tpm_err("sign"))
        })?;
        raw_signature(blob.algorithm, signature)
    }

    fn hmac_sha256(&self, label: &str, purpose: KeyPurpose, data: &[u8]) -> Result<[u8; 32]> {
        check_hmac_input(data)?;
        let blob = self.blob(label)?;
        if blob.purpose != purpose {
            return Err(Error::WrongPurpose {
                label: label.to_owned(),
                actual: blob.purpose.name(),
                expected: purpose.name(),
            });
        }
        if blob.algorithm != Algorithm::HmacSha256 {
            return Err(Error::WrongKeyType {
                label: label.to_owned(),
                actual: blob.algorithm.to_string(),
                expected: "HMAC".into(),
            });
        }
        let buffer = MaxBuffer::try_from(data.to_vec()).map_err(wrap("hmac input"))?;
        let mac = self.with_tpm(|tpm| {
            let key = tpm.load(label, &blob)?;
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
        self.unload(label);
        // The wrapped private area is useless without the file: deleting it
        // destroys the key (the TPM keeps no copy of non-persistent objects).
        blob::remove(self.key_dir(), label)?;
        info!(label, "TPM key destroyed");
        Ok(())
    }

    fn health(&self) -> Health {
        let probed = self.with_tpm(probe);
        let (up, detail) = match probed {
            Ok(()) => (true, format!("TPM at {}", self.tcti())),
            Err(err) => (false, err.to_string()),
        };
        Health {
            up,
            backend: "tpm",
            detail,
            recoveries: self.recoveries(),
            sessions: None,
        }
    }
}
