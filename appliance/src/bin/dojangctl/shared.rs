//! Helpers shared by more than one command group: reading a public key
//! from a JWK file (`credential sample --device-jwk`, `verify --issuer-jwk`).

use anyhow::Context;
use openssl::bn::BigNumContext;
use openssl::ec::{EcGroup, EcKey, PointConversionForm};
use openssl::nid::Nid;
use pkcs11_shim::{Algorithm, Jwk, PublicKey, public_key_from_jwk};

/// The public key in the JWK file at `path`, or without one a fresh P-256
/// key standing in for a holder's device key.
pub(crate) fn device_key(path: Option<&std::path::Path>) -> anyhow::Result<PublicKey> {
    match path {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let jwk: Jwk = serde_json::from_str(&text)
                .with_context(|| format!("{} is not a JWK", path.display()))?;
            Ok(public_key_from_jwk(&jwk)?)
        }
        None => {
            // Stands in for the phone's key: only its public half is used.
            let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
            let key = EcKey::generate(&group)?;
            let mut ctx = BigNumContext::new()?;
            let point =
                key.public_key()
                    .to_bytes(&group, PointConversionForm::UNCOMPRESSED, &mut ctx)?;
            Ok(PublicKey::from_ec_point(Algorithm::Es256, &point)?)
        }
    }
}
