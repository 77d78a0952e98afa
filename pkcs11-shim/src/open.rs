//! [`open`]: the one place that turns a [`BackendConfig`] into a running
//! backend, PKCS#11 or TPM, behind the [`KeyBackend`] trait.

use std::sync::Arc;

use crate::backend::KeyBackend;
use crate::config::BackendConfig;
use crate::error::Result;
use crate::pkcs11::Pkcs11Backend;
use crate::tpm::TpmBackend;

/// Opens the configured backend: connects, logs in, and checks the device.
pub fn open(config: &BackendConfig) -> Result<Arc<dyn KeyBackend>> {
    config.validate()?;
    Ok(match (&config.pkcs11, &config.tpm) {
        (Some(c), _) => Arc::new(Pkcs11Backend::open(c.clone())?),
        (None, Some(c)) => Arc::new(TpmBackend::open(c.clone())?),
        (None, None) => unreachable!("validate() requires one table"),
    })
}
