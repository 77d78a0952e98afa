//! Public halves of token keys, as SPKI DER, PEM and JWK (RFC 7517), with the
//! RFC 7638 thumbprint used as `kid`. Built from the raw point the token
//! reports; nothing here ever sees a private key.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use openssl::bn::BigNumContext;
use openssl::ec::{EcGroup, EcPoint};
use openssl::nid::Nid;
use openssl::pkey::{Id, PKey, Public};
use openssl::sign::Verifier;
use serde::{Deserialize, Serialize};

use crate::algorithm::{Algorithm, ecdsa_raw_to_der};
use crate::error::{Error, Result};

/// A public key as a JWK (RFC 7517): EC (`P-256`, `P-384`) or OKP (`Ed25519`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    /// `EC` or `OKP`.
    pub kty: String,
    /// `P-256`, `P-384` or `Ed25519`.
    pub crv: String,
    /// base64url of the x coordinate (or the Ed25519 public key).
    pub x: String,
    /// base64url of the y coordinate (EC only).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub y: Option<String>,
}

impl Jwk {
    /// The RFC 7638 thumbprint (SHA-256, base64url), Dojang's `kid`.
    pub fn thumbprint(&self) -> String {
        // Required members only, lexicographic order, no whitespace (RFC 7638 §3.2).
        // base64url values need no JSON escaping.
        let canonical = match &self.y {
            Some(y) => format!(
                r#"{{"crv":"{}","kty":"{}","x":"{}","y":"{}"}}"#,
                self.crv, self.kty, self.x, y
            ),
            None => format!(
                r#"{{"crv":"{}","kty":"{}","x":"{}"}}"#,
                self.crv, self.kty, self.x
            ),
        };
        B64URL.encode(crate::digest::sha256(canonical.as_bytes()))
    }
}

/// The public half of a signing key in the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    algorithm: Algorithm,
    /// The uncompressed EC point, or the 32 Ed25519 bytes.
    raw: Vec<u8>,
    spki_der: Vec<u8>,
    jwk: Jwk,
}

/// SubjectPublicKeyInfo up to the BIT STRING's content, for an uncompressed
/// point: SEQUENCE { SEQUENCE { id-ecPublicKey, namedCurve }, BIT STRING }.
const SPKI_P256_PREFIX: &[u8] = &[
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];
const SPKI_P384_PREFIX: &[u8] = &[
    0x30, 0x76, 0x30, 0x10, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x05, 0x2b,
    0x81, 0x04, 0x00, 0x22, 0x03, 0x62, 0x00,
];

/// The curve's group, built once: OpenSSL 3 looks curves up by name slowly.
fn curve(nid: Nid) -> std::result::Result<&'static EcGroup, openssl::error::ErrorStack> {
    static P256: std::sync::OnceLock<EcGroup> = std::sync::OnceLock::new();
    static P384: std::sync::OnceLock<EcGroup> = std::sync::OnceLock::new();
    let cell = if nid == Nid::SECP384R1 { &P384 } else { &P256 };
    if let Some(group) = cell.get() {
        return Ok(group);
    }
    let group = EcGroup::from_curve_name(nid)?;
    Ok(cell.get_or_init(|| group))
}

impl PublicKey {
    /// From an uncompressed EC point `04 || X || Y` on the algorithm's curve.
    pub fn from_ec_point(algorithm: Algorithm, point: &[u8]) -> Result<Self> {
        let (nid, crv, coord_len) = match algorithm {
            Algorithm::Es256 => (Nid::X9_62_PRIME256V1, "P-256", 32),
            Algorithm::Es384 => (Nid::SECP384R1, "P-384", 48),
            other => {
                return Err(Error::Encoding(format!("{other} keys are not EC keys")));
            }
        };
        let coordinates = match point.split_first() {
            Some((0x04, coordinates)) if coordinates.len() == 2 * coord_len => coordinates,
            _ => {
                return Err(Error::Encoding(format!(
                    "expected an uncompressed {crv} point of {} bytes, got {} bytes",
                    1 + 2 * coord_len,
                    point.len()
                )));
            }
        };
        let enc = |e: openssl::error::ErrorStack| Error::Encoding(e.to_string());
        let group = curve(nid).map_err(enc)?;
        let mut ctx = BigNumContext::new().map_err(enc)?;
        // Decoding checks the point is on the curve; an uncompressed encoding
        // cannot be the point at infinity, and P-256/P-384 have prime order
        // (cofactor 1), so no subgroup check is needed. EC_KEY_check_key
        // would add a scalar multiplication for nothing: it was a third of
        // the daemon's CPU per issuance.
        let _ = EcPoint::from_bytes(group, point, &mut ctx).map_err(enc)?;
        let mut spki_der = match algorithm {
            Algorithm::Es256 => SPKI_P256_PREFIX.to_vec(),
            _ => SPKI_P384_PREFIX.to_vec(),
        };
        spki_der.extend_from_slice(point);
        let (x, y) = coordinates.split_at(coord_len);
        Ok(PublicKey {
            algorithm,
            raw: point.to_vec(),
            spki_der,
            jwk: Jwk {
                kty: "EC".into(),
                crv: crv.into(),
                x: B64URL.encode(x),
                y: Some(B64URL.encode(y)),
            },
        })
    }

    /// From a raw 32-byte Ed25519 public key.
    pub fn from_ed25519(raw: &[u8]) -> Result<Self> {
        if raw.len() != 32 {
            return Err(Error::Encoding(format!(
                "an Ed25519 public key has 32 bytes, got {}",
                raw.len()
            )));
        }
        let spki_der = PKey::public_key_from_raw_bytes(raw, Id::ED25519)
            .and_then(|k| k.public_key_to_der())
            .map_err(|e| Error::Encoding(e.to_string()))?;
        Ok(PublicKey {
            algorithm: Algorithm::EdDsa,
            raw: raw.to_vec(),
            spki_der,
            jwk: Jwk {
                kty: "OKP".into(),
                crv: "Ed25519".into(),
                x: B64URL.encode(raw),
                y: None,
            },
        })
    }

    /// From a DER SubjectPublicKeyInfo (e.g. a certificate's key): P-256,
    /// P-384 or Ed25519; anything else is refused.
    pub fn from_spki_der(der: &[u8]) -> Result<Self> {
        let enc = |e: openssl::error::ErrorStack| Error::Encoding(e.to_string());
        let pkey = PKey::public_key_from_der(der).map_err(enc)?;
        match pkey.id() {
            Id::EC => {
                let ec = pkey.ec_key().map_err(enc)?;
                let algorithm = match ec.group().curve_name() {
                    Some(Nid::X9_62_PRIME256V1) => Algorithm::Es256,
                    Some(Nid::SECP384R1) => Algorithm::Es384,
                    _ => {
                        return Err(Error::Encoding(
                            "EC key on a curve Dojang does not use".into(),
                        ));
                    }
                };
                let mut ctx = BigNumContext::new().map_err(enc)?;
                let point = ec
                    .public_key()
                    .to_bytes(
                        ec.group(),
                        openssl::ec::PointConversionForm::UNCOMPRESSED,
                        &mut ctx,
                    )
                    .map_err(enc)?;
                Self::from_ec_point(algorithm, &point)
            }
            Id::ED25519 => Self::from_ed25519(&pkey.raw_public_key().map_err(enc)?),
            _ => Err(Error::Encoding("not an EC or Ed25519 public key".into())),
        }
    }

    /// The algorithm this key signs with.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The key as the SPKI bit string carries it: the uncompressed EC point
    /// `04 || X || Y`, or the 32 Ed25519 bytes.
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// SubjectPublicKeyInfo, DER.
    pub fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }

    /// SubjectPublicKeyInfo, PEM (`-----BEGIN PUBLIC KEY-----`).
    pub fn to_pem(&self) -> Result<String> {
        let pkey = self.to_openssl()?;
        let pem = pkey
            .public_key_to_pem()
            .map_err(|e| Error::Encoding(e.to_string()))?;
        String::from_utf8(pem).map_err(|e| Error::Encoding(e.to_string()))
    }

    /// The key as a JWK.
    pub fn jwk(&self) -> &Jwk {
        &self.jwk
    }

    /// The RFC 7638 thumbprint of the JWK, used as `kid`.
    pub fn kid(&self) -> String {
        self.jwk.thumbprint()
    }

    /// The key as an OpenSSL public key, for verification.
    pub fn to_openssl(&self) -> Result<PKey<Public>> {
        PKey::public_key_from_der(&self.spki_der).map_err(|e| Error::Encoding(e.to_string()))
    }

    /// Verifies a raw signature over `message` with OpenSSL (software, outside the token).
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<bool> {
        let pkey = self.to_openssl()?;
        let enc = |e: openssl::error::ErrorStack| Error::Encoding(e.to_string());
        match self.algorithm.prehash() {
            Some(digest) => {
                if signature.len() != self.algorithm.signature_len() {
                    return Ok(false);
                }
                let der = ecdsa_raw_to_der(signature)?;
                let mut verifier = Verifier::new(digest, &pkey).map_err(enc)?;
                verifier.update(message).map_err(enc)?;
                Ok(verifier.verify(&der).unwrap_or(false))
            }
            None => {
                let mut verifier = Verifier::new_without_digest(&pkey).map_err(enc)?;
                Ok(verifier.verify_oneshot(signature, message).unwrap_or(false))
            }
        }
    }
}

/// Strips the DER OCTET STRING PKCS#11 wraps around `CKA_EC_POINT`.
///
/// Some modules return the bare point; both forms are accepted.
pub(crate) fn unwrap_ec_point(value: &[u8], expected_len: usize) -> Result<&[u8]> {
    if value.len() == expected_len {
        return Ok(value);
    }
    let body = match value {
        [0x04, len, rest @ ..] if usize::from(*len) < 0x80 => (usize::from(*len), rest),
        [0x04, 0x81, len, rest @ ..] => (usize::from(*len), rest),
        _ => {
            return Err(Error::Encoding(
                "CKA_EC_POINT is neither a DER OCTET STRING nor a bare point".into(),
            ));
        }
    };
    if body.0 != body.1.len() || body.0 != expected_len {
        return Err(Error::Encoding(format!(
            "CKA_EC_POINT holds {} bytes, expected {expected_len}",
            body.1.len()
        )));
    }
    Ok(body.1)
}

/// Builds a JWK-checked public key from a JWK (e.g. a holder's phone key).
///
/// Checks the curve is one Dojang accepts and the point is on it.
pub fn public_key_from_jwk(jwk: &Jwk) -> Result<PublicKey> {
    let decode = |field: &str, v: &str| {
        B64URL
            .decode(v)
            .map_err(|_| Error::InvalidInput(format!("JWK member {field:?} is not base64url")))
    };
    match (jwk.kty.as_str(), jwk.crv.as_str()) {
        ("EC", "P-256" | "P-384") => {
            let alg = if jwk.crv == "P-256" {
                Algorithm::Es256
            } else {
                Algorithm::Es384
            };
            let y = jwk
                .y
                .as_deref()
                .ok_or_else(|| Error::InvalidInput("EC JWK without \"y\"".into()))?;
            let mut point = vec![0x04];
            point.extend(decode("x", &jwk.x)?);
            point.extend(decode("y", y)?);
            PublicKey::from_ec_point(alg, &point).map_err(|e| {
                Error::InvalidInput(format!("JWK is not a valid {} key: {e}", jwk.crv))
            })
        }
        ("OKP", "Ed25519") => PublicKey::from_ed25519(&decode("x", &jwk.x)?)
            .map_err(|e| Error::InvalidInput(format!("JWK is not a valid Ed25519 key: {e}"))),
        (kty, crv) => Err(Error::InvalidInput(format!(
            "JWK key type {kty:?} on curve {crv:?} is not accepted (P-256, P-384, Ed25519)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openssl::ec::EcKey;

    #[test]
    fn spki_from_a_point_is_what_openssl_encodes_and_off_curve_points_are_refused() {
        for (nid, alg) in [
            (Nid::X9_62_PRIME256V1, Algorithm::Es256),
            (Nid::SECP384R1, Algorithm::Es384),
        ] {
            let group = EcGroup::from_curve_name(nid).unwrap();
            let key = EcKey::generate(&group).unwrap();
            let mut ctx = BigNumContext::new().unwrap();
            let point = key
                .public_key()
                .to_bytes(
                    &group,
                    openssl::ec::PointConversionForm::UNCOMPRESSED,
                    &mut ctx,
                )
                .unwrap();
            let ours = PublicKey::from_ec_point(alg, &point).unwrap();
            let theirs =
                PKey::from_ec_key(EcKey::from_public_key(&group, key.public_key()).unwrap())
                    .unwrap()
                    .public_key_to_der()
                    .unwrap();
            assert_eq!(ours.spki_der(), theirs.as_slice());
            let mut off = point.clone();
            let last = off.len() - 1;
            off[last] ^= 1;
            assert!(PublicKey::from_ec_point(alg, &off).is_err());
        }
    }
    use openssl::ec::PointConversionForm;
    use openssl::pkey::Private;
    use openssl::sign::Signer;

    fn p256() -> PKey<Private> {
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
        PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap()
    }

    fn point_of(key: &PKey<Private>) -> Vec<u8> {
        let ec = key.ec_key().unwrap();
        let mut ctx = BigNumContext::new().unwrap();
        ec.public_key()
            .to_bytes(ec.group(), PointConversionForm::UNCOMPRESSED, &mut ctx)
            .unwrap()
    }

    #[test]
    fn ec_point_gives_matching_spki_and_jwk() {
        let key = p256();
        let pk = PublicKey::from_ec_point(Algorithm::Es256, &point_of(&key)).unwrap();
        assert_eq!(pk.spki_der(), key.public_key_to_der().unwrap());
        assert_eq!(pk.jwk().kty, "EC");
        assert_eq!(B64URL.decode(&pk.jwk().x).unwrap().len(), 32);
        assert_eq!(public_key_from_jwk(pk.jwk()).unwrap(), pk);
        assert_eq!(PublicKey::from_spki_der(pk.spki_der()).unwrap(), pk);
    }

    #[test]
    fn off_curve_points_are_refused() {
        let mut point = point_of(&p256());
        point[64] ^= 1;
        assert!(PublicKey::from_ec_point(Algorithm::Es256, &point).is_err());
    }

    #[test]
    fn wrong_curves_are_refused() {
        let jwk = Jwk {
            kty: "EC".into(),
            crv: "secp256k1".into(),
            x: "AA".into(),
            y: Some("AA".into()),
        };
        assert!(matches!(
            public_key_from_jwk(&jwk),
            Err(Error::InvalidInput(_))
        ));
    }

    #[test]
    fn rfc7638_thumbprint_example() {
        // RFC 7638 §3.1 uses an RSA key; this checks the EC member order against
        // a thumbprint computed by hand from the canonical form.
        let jwk = Jwk {
            kty: "EC".into(),
            crv: "P-256".into(),
            x: "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU".into(),
            y: Some("x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0".into()),
        };
        let canonical = r#"{"crv":"P-256","kty":"EC","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}"#;
        assert_eq!(
            jwk.thumbprint(),
            B64URL.encode(crate::digest::sha256(canonical.as_bytes()))
        );
    }

    #[test]
    fn verify_accepts_openssl_signatures_and_rejects_tampering() {
        let key = p256();
        let pk = PublicKey::from_ec_point(Algorithm::Es256, &point_of(&key)).unwrap();
        let mut signer = Signer::new(MessageDigest::sha256(), &key).unwrap();
        let der = signer.sign_oneshot_to_vec(b"hello").unwrap();
        let raw = crate::algorithm::ecdsa_der_to_raw(&der, 32).unwrap();
        assert!(pk.verify(b"hello", &raw).unwrap());
        assert!(!pk.verify(b"hellO", &raw).unwrap());
    }

    #[test]
    fn ec_point_octet_string_is_unwrapped() {
        let point = point_of(&p256());
        let mut wrapped = vec![0x04, 65];
        wrapped.extend_from_slice(&point);
        assert_eq!(unwrap_ec_point(&wrapped, 65).unwrap(), &point[..]);
        assert_eq!(unwrap_ec_point(&point, 65).unwrap(), &point[..]);
        assert!(unwrap_ec_point(&wrapped[..10], 65).is_err());
    }

    use openssl::hash::MessageDigest;
}
