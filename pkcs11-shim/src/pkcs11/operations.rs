//! The [`KeyBackend`] operations of [`Pkcs11Backend`]: each checks its
//! input, borrows a pooled session through `with_session` (which recovers
//! from a device loss), and works on checked keys from the connection's
//! handle cache.

use cryptoki::context::Function;
use tracing::{info, warn};

use super::backend::Pkcs11Backend;
use super::classify::ck;
use super::generate::generate_checked;
use super::keys::{dojang_key_label, token_objects};
use super::sign::{hmac_with, sign_with};
use crate::algorithm::{Algorithm, KeyPurpose};
use crate::backend::{
    Health, KeyBackend, KeyInfo, check_hmac_input, check_purpose, check_sign_input,
};
use crate::error::{Error, ErrorClass, Result};
use crate::label::validate_label;

impl KeyBackend for Pkcs11Backend {
    fn kind(&self) -> &'static str {
        "pkcs11"
    }

    fn algorithms(&self) -> Vec<Algorithm> {
        self.with_connection(|conn| {
            Algorithm::ALL
                .into_iter()
                .filter(|a| conn.supports(*a))
                .collect()
        })
        .unwrap_or_default()
    }

    fn generate(&self, label: &str, purpose: KeyPurpose, algorithm: Algorithm) -> Result<KeyInfo> {
        validate_label(label)?;
        purpose.check_algorithm(algorithm)?;
        let _one_at_a_time = self.generation_lock();
        let generated = self.with_session(|conn, session| {
            generate_checked(conn, session, label, purpose, algorithm)
        })?;
        info!(label, %purpose, %algorithm, "key generated in the token");
        Ok(generated)
    }

    fn find(&self, label: &str) -> Result<KeyInfo> {
        validate_label(label)?;
        self.with_session(|conn, session| Ok(conn.key(session, label)?.info.clone()))
    }

    fn list(&self) -> Result<Vec<KeyInfo>> {
        self.with_session(|conn, session| {
            let mut keys = Vec::new();
            for handle in token_objects(session)? {
                let Some(label) = dojang_key_label(session, handle)? else {
                    continue;
                };
                // One refused key must not hide the others from an officer.
                match conn.key(session, &label) {
                    Ok(key) => keys.push(key.info.clone()),
                    Err(err @ Error::KeyPolicy { .. }) => {
                        warn!(label, error = %err, "key refused and left out of the list");
                    }
                    Err(err) => return Err(err),
                }
            }
            keys.sort_by(|a, b| a.label.cmp(&b.label));
            Ok(keys)
        })
    }

    fn sign(&self, label: &str, purpose: KeyPurpose, message: &[u8]) -> Result<Vec<u8>> {
        check_sign_input(message)?;
        self.with_session(|conn, session| {
            let key = conn.key(session, label)?;
            check_purpose(&key.info, purpose)?;
            sign_with(session, key.handle, &key.info, message).inspect_err(|err| {
                if err.class() == ErrorClass::KeyMissing {
                    // The handle died (key destroyed elsewhere): look it up again next time.
                    conn.forget(label);
                }
            })
        })
    }

    fn hmac_sha256(&self, label: &str, purpose: KeyPurpose, data: &[u8]) -> Result<[u8; 32]> {
        check_hmac_input(data)?;
        self.with_session(|conn, session| {
            let key = conn.key(session, label)?;
            check_purpose(&key.info, purpose)?;
            hmac_with(session, key.handle, &key.info, data)
        })
    }

    fn destroy(&self, label: &str) -> Result<()> {
        validate_label(label)?;
        self.with_session(|conn, session| {
            // Only Dojang's own keys: find through the checked lookup first.
            let _ = conn.key(session, label)?;
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
            Ok((conn.slot().id(), conn.generation()))
        });
        let sessions = self.with_connection(|conn| conn.pool().counts());
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
            recoveries: self.recoveries(),
            sessions,
        }
    }
}
