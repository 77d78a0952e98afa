//! Key generation in the token: the label must be free and the token able
//! to do the algorithm; the key gets a fresh `CKA_ID` carrying its purpose
//! and Dojang's templates; then it is read back and checked as any later
//! use would check it, and destroyed if it fails.

use cryptoki::context::Function;
use cryptoki::session::Session;

use super::classify::ck;
use super::connection::Connection;
use super::keys::{load_key, objects_labelled};
use super::template::{self, ID_RANDOM_LEN};
use crate::algorithm::{Algorithm, KeyPurpose};
use crate::backend::KeyInfo;
use crate::error::{Error, Result};

/// Generates the key `label` in the token and returns it as a load found it.
pub(crate) fn generate_checked(
    conn: &Connection,
    session: &Session,
    label: &str,
    purpose: KeyPurpose,
    algorithm: Algorithm,
) -> Result<KeyInfo> {
    if !conn.supports(algorithm) {
        return Err(Error::Unsupported {
            algorithm: algorithm.to_string(),
            backend: "this PKCS#11 token".into(),
        });
    }
    if !objects_labelled(session, label)?.is_empty() {
        return Err(Error::KeyExists {
            label: label.to_owned(),
        });
    }
    generate(session, label, purpose, algorithm)?;
    // Read back and check as any later use would; a key that fails the
    // checks is destroyed, never left behind half-trusted.
    match load_key(session, label) {
        Ok(key) => Ok(key.info),
        Err(err) => {
            let _ = conn.destroy_labelled(session, label);
            Err(err)
        }
    }
}

/// Creates the key pair or secret key in the token.
fn generate(
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
