//! A development TLS PKI for the demo and the tests: a client/server CA,
//! a server certificate, client certificates carrying SPIFFE-style URI
//! identities, and a CRL. Keys are software keys written to files: this is
//! for a laptop, never for production, where the TLS CA is the
//! organisation's and the server key is provisioned by its operators.

use std::net::IpAddr;
use std::path::Path;

use openssl::ec::{EcGroup, EcKey, PointConversionForm};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyUsagePurpose, PublicKeyData,
    SanType, SerialNumber, SignatureAlgorithm, SigningKey,
};
use time::{Duration, OffsetDateTime};

/// A dev PKI step that failed.
#[derive(Debug, thiserror::Error)]
#[error("dev TLS: {0}")]
pub struct DevTlsError(String);

fn err(e: impl std::fmt::Display) -> DevTlsError {
    DevTlsError(e.to_string())
}

/// A P-256 software key as rcgen sees it.
struct SoftKey {
    key: PKey<Private>,
    point: Vec<u8>,
}

impl SoftKey {
    fn generate() -> Result<Self, DevTlsError> {
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).map_err(err)?;
        let ec = EcKey::generate(&group).map_err(err)?;
        let mut ctx = openssl::bn::BigNumContext::new().map_err(err)?;
        let point = ec
            .public_key()
            .to_bytes(&group, PointConversionForm::UNCOMPRESSED, &mut ctx)
            .map_err(err)?;
        Ok(SoftKey {
            key: PKey::from_ec_key(ec).map_err(err)?,
            point,
        })
    }

    fn pem(&self) -> Result<String, DevTlsError> {
        let pem = self.key.private_key_to_pem_pkcs8().map_err(err)?;
        String::from_utf8(pem).map_err(err)
    }
}

impl PublicKeyData for SoftKey {
    fn der_bytes(&self) -> &[u8] {
        &self.point
    }
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

impl SigningKey for SoftKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        let mut signer = openssl::sign::Signer::new(MessageDigest::sha256(), &self.key)
            .map_err(|_| rcgen::Error::RemoteKeyError)?;
        signer
            .sign_oneshot_to_vec(msg)
            .map_err(|_| rcgen::Error::RemoteKeyError)
    }
}

/// A P-256 public key held elsewhere (a token): certified, never signing.
struct HeldKey(Vec<u8>);

impl PublicKeyData for HeldKey {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

fn serial() -> Result<(SerialNumber, Vec<u8>), DevTlsError> {
    let mut bytes = [0u8; 16];
    openssl::rand::rand_bytes(&mut bytes).map_err(err)?;
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok((SerialNumber::from_slice(&bytes), bytes.to_vec()))
}

fn whole_seconds(t: OffsetDateTime) -> OffsetDateTime {
    t.replace_nanosecond(0).unwrap_or(t)
}

/// The dev CA.
pub struct DevCa {
    issuer: Issuer<'static, SoftKey>,
    cert_pem: String,
    key_pem: String,
}

/// A certificate to issue.
#[derive(Debug, Clone)]
pub struct LeafSpec {
    /// Subject CN.
    pub common_name: String,
    /// DNS SANs.
    pub dns: Vec<String>,
    /// IP SANs.
    pub ips: Vec<IpAddr>,
    /// A URI SAN (the client identity).
    pub uri: Option<String>,
    /// More URI SANs (to test that a certificate naming several is refused).
    pub extra_uris: Vec<String>,
    /// A client certificate (else a server certificate).
    pub client: bool,
    /// notBefore.
    pub not_before: OffsetDateTime,
    /// notAfter.
    pub not_after: OffsetDateTime,
}

impl LeafSpec {
    /// A client certificate for `identity`, valid from an hour ago for a year.
    pub fn client(identity: &str) -> Self {
        let now = OffsetDateTime::now_utc();
        LeafSpec {
            common_name: identity.rsplit('/').next().unwrap_or(identity).to_owned(),
            dns: Vec::new(),
            ips: Vec::new(),
            uri: Some(identity.to_owned()),
            extra_uris: Vec::new(),
            client: true,
            not_before: now - Duration::hours(1),
            not_after: now + Duration::days(365),
        }
    }

    /// A server certificate for localhost and the loopback addresses.
    pub fn localhost_server() -> Self {
        let now = OffsetDateTime::now_utc();
        LeafSpec {
            common_name: "localhost".into(),
            dns: vec!["localhost".into()],
            ips: vec![IpAddr::from([127, 0, 0, 1]), IpAddr::from([0u16; 8])],
            uri: None,
            extra_uris: Vec::new(),
            client: false,
            not_before: now - Duration::hours(1),
            not_after: now + Duration::days(365),
        }
    }
}

/// An issued certificate with its key.
#[derive(Debug, Clone)]
pub struct Leaf {
    /// Certificate, PEM.
    pub cert_pem: String,
    /// PKCS#8 private key, PEM.
    pub key_pem: String,
    /// Serial number bytes (for a CRL).
    pub serial: Vec<u8>,
}

impl DevCa {
    /// A new CA named `common_name`, valid ten years.
    pub fn generate(common_name: &str) -> Result<Self, DevTlsError> {
        let key = SoftKey::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.key_identifier_method =
            KeyIdMethod::PreSpecified(pkcs11_shim::digest::sha256(&key.point)[..20].to_vec());
        let now = whole_seconds(OffsetDateTime::now_utc());
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(3650);
        params.serial_number = Some(serial()?.0);
        let cert = params.self_signed(&key).map_err(err)?;
        let key_pem = key.pem()?;
        Ok(DevCa {
            cert_pem: crate::pki::cert_pem(cert.der()).map_err(err)?,
            key_pem,
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA key, PEM.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Issues a leaf certificate with a new software key.
    pub fn issue(&self, spec: &LeafSpec) -> Result<Leaf, DevTlsError> {
        let key = SoftKey::generate()?;
        let (cert_pem, serial) = self.certify(spec, &key)?;
        Ok(Leaf {
            cert_pem,
            key_pem: key.pem()?,
            serial,
        })
    }

    /// Issues a leaf certificate for a P-256 key held elsewhere (its
    /// uncompressed point): a server key in the token. The certificate
    /// (PEM) and its serial.
    pub fn issue_for_point(
        &self,
        spec: &LeafSpec,
        point: &[u8],
    ) -> Result<(String, Vec<u8>), DevTlsError> {
        self.certify(spec, &HeldKey(point.to_vec()))
    }

    fn certify(
        &self,
        spec: &LeafSpec,
        key: &impl PublicKeyData,
    ) -> Result<(String, Vec<u8>), DevTlsError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, spec.common_name.as_str());
        params.distinguished_name = dn;
        let mut sans = Vec::new();
        for d in &spec.dns {
            sans.push(SanType::DnsName(d.as_str().try_into().map_err(err)?));
        }
        for ip in &spec.ips {
            sans.push(SanType::IpAddress(*ip));
        }
        for uri in spec.uri.iter().chain(&spec.extra_uris) {
            sans.push(SanType::URI(uri.as_str().try_into().map_err(err)?));
        }
        params.subject_alt_names = sans;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![if spec.client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        params.use_authority_key_identifier_extension = true;
        params.not_before = whole_seconds(spec.not_before);
        params.not_after = whole_seconds(spec.not_after);
        let (serial, serial_bytes) = serial()?;
        params.serial_number = Some(serial);
        let cert = params.signed_by(key, &self.issuer).map_err(err)?;
        Ok((crate::pki::cert_pem(cert.der()).map_err(err)?, serial_bytes))
    }

    /// A CRL revoking `serials`, valid for `days`.
    pub fn crl(&self, serials: &[&[u8]], days: i64) -> Result<String, DevTlsError> {
        let now = whole_seconds(OffsetDateTime::now_utc());
        let params = CertificateRevocationListParams {
            this_update: now - Duration::minutes(5),
            next_update: now + Duration::days(days),
            crl_number: SerialNumber::from_slice(&now.unix_timestamp().to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| rcgen::RevokedCertParams {
                    serial_number: SerialNumber::from_slice(s),
                    revocation_time: now - Duration::minutes(5),
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::PreSpecified(
                pkcs11_shim::digest::sha256(&self.issuer.key().point)[..20].to_vec(),
            ),
        };
        let crl = params.signed_by(&self.issuer).map_err(err)?;
        let pem = openssl::x509::X509Crl::from_der(crl.der())
            .and_then(|c| c.to_pem())
            .map_err(err)?;
        String::from_utf8(pem).map_err(err)
    }
}

fn write(path: &Path, text: &str, private: bool) -> Result<(), DevTlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(path)
        .map_err(|e| err(format!("{}: {e}", path.display())))?;
    file.write_all(text.as_bytes())
        .map_err(|e| err(format!("{}: {e}", path.display())))
}

/// Writes a dev TLS PKI into `dir`: `ca.pem`, `server.pem`/`server.key`
/// (localhost), `<name>.pem`/`<name>.key` for each `(name, identity)`
/// client, and an empty `crl.pem`. The CA key is not kept.
///
/// With `server_point` (the uncompressed point of a `tls-server` key in the
/// token) the server certificate is for that key and no `server.key` is
/// written.
pub fn write_dev_pki(
    dir: &Path,
    clients: &[(&str, &str)],
    server_point: Option<&[u8]>,
) -> Result<(), DevTlsError> {
    std::fs::create_dir_all(dir).map_err(|e| err(format!("{}: {e}", dir.display())))?;
    let ca = DevCa::generate("Dojang Dev TLS CA")?;
    write(&dir.join("ca.pem"), ca.cert_pem(), false)?;
    match server_point {
        Some(point) => {
            let (cert, _) = ca.issue_for_point(&LeafSpec::localhost_server(), point)?;
            write(&dir.join("server.pem"), &cert, false)?;
        }
        None => {
            let server = ca.issue(&LeafSpec::localhost_server())?;
            write(&dir.join("server.pem"), &server.cert_pem, false)?;
            write(&dir.join("server.key"), &server.key_pem, true)?;
        }
    }
    // The wallet listener's certificate: a key file of its own (a
    // wallet-facing front is often a TLS terminator outside the token).
    let wallet = ca.issue(&LeafSpec::localhost_server())?;
    write(&dir.join("wallet.pem"), &wallet.cert_pem, false)?;
    write(&dir.join("wallet.key"), &wallet.key_pem, true)?;
    for (name, identity) in clients {
        let client = ca.issue(&LeafSpec::client(identity))?;
        write(&dir.join(format!("{name}.pem")), &client.cert_pem, false)?;
        write(&dir.join(format!("{name}.key")), &client.key_pem, true)?;
    }
    write(&dir.join("crl.pem"), &ca.crl(&[], 365)?, false)?;
    Ok(())
}
