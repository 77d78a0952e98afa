//! Certificates on disk, as PEM beside the configuration.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use openssl::x509::X509;
use time::OffsetDateTime;

use super::error::PkiError;
use super::profile::{self, CertFacts};

fn io(context: String) -> impl FnOnce(std::io::Error) -> PkiError {
    move |cause| PkiError::Io { context, cause }
}

/// DER to PEM (`CERTIFICATE`).
pub fn cert_pem(der: &[u8]) -> Result<String, PkiError> {
    let x509 = X509::from_der(der).map_err(|e| PkiError::Invalid(e.to_string()))?;
    let pem = x509
        .to_pem()
        .map_err(|e| PkiError::Invalid(e.to_string()))?;
    String::from_utf8(pem).map_err(|e| PkiError::Invalid(e.to_string()))
}

/// PEM to DER (the first certificate).
pub fn cert_der_from_pem(pem: &[u8]) -> Result<Vec<u8>, PkiError> {
    X509::from_pem(pem)
        .and_then(|c| c.to_der())
        .map_err(|e| PkiError::Invalid(format!("not a PEM certificate: {e}")))
}

/// The audit rule naming an IACA: its certificate's SHA-256 and validity
/// (never the file it came from: entries say what, not where).
pub fn iaca_rule(der: &[u8], not_after: time::OffsetDateTime) -> String {
    let fingerprint: String = openssl::sha::sha256(der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let until = not_after
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    format!("IACA sha256:{fingerprint}, valid until {until}")
}

/// A DS certificate with its key label.
#[derive(Debug, Clone)]
pub struct DsCertificate {
    /// The DS key's label (the file name).
    pub label: String,
    /// The certificate, DER.
    pub der: Vec<u8>,
    /// What the profile check read off it.
    pub facts: CertFacts,
}

/// The PKI directory.
#[derive(Debug, Clone)]
pub struct PkiStore {
    dir: PathBuf,
}

impl PkiStore {
    /// The store at `dir` (not created until written).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        PkiStore { dir: dir.into() }
    }

    /// `iaca.pem`.
    pub fn iaca_path(&self) -> PathBuf {
        self.dir.join("iaca.pem")
    }

    /// `iaca.crl.pem`.
    pub fn crl_path(&self) -> PathBuf {
        self.dir.join("iaca.crl.pem")
    }

    /// `ds/<label>.pem`.
    pub fn ds_path(&self, label: &str) -> PathBuf {
        self.dir.join("ds").join(format!("{label}.pem"))
    }

    fn write_new(path: &Path, text: &str) -> Result<(), PkiError> {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(io(format!("creating {}", parent.display())))?;
        }
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(path)
            .map_err(io(format!("creating {}", path.display())))?;
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(io(format!("writing {}", path.display())))
    }

    /// Writes the IACA certificate; refuses to replace one.
    pub fn write_iaca(&self, der: &[u8]) -> Result<PathBuf, PkiError> {
        let path = self.iaca_path();
        Self::write_new(&path, &cert_pem(der)?)?;
        Ok(path)
    }

    /// Writes a DS certificate; refuses to replace one.
    pub fn write_ds(&self, label: &str, der: &[u8]) -> Result<PathBuf, PkiError> {
        let path = self.ds_path(label);
        Self::write_new(&path, &cert_pem(der)?)?;
        Ok(path)
    }

    /// Replaces the CRL atomically (write, fsync, rename).
    pub fn write_crl(&self, pem: &str) -> Result<PathBuf, PkiError> {
        let path = self.crl_path();
        let tmp = self.dir.join(".iaca.crl.pem.tmp");
        let _ = fs::remove_file(&tmp);
        Self::write_new(&tmp, pem)?;
        fs::rename(&tmp, &path).map_err(io(format!("replacing {}", path.display())))?;
        Ok(path)
    }

    /// Reads and checks the IACA certificate.
    pub fn iaca(&self) -> Result<(Vec<u8>, CertFacts), PkiError> {
        let path = self.iaca_path();
        let pem = fs::read(&path).map_err(io(format!(
            "reading {} (run `dojangctl pki init` first)",
            path.display()
        )))?;
        let der = cert_der_from_pem(&pem)?;
        let facts = profile::check_iaca(&der)?;
        Ok((der, facts))
    }

    /// Every DS certificate, checked against the IACA, oldest first.
    pub fn ds_certificates(&self) -> Result<Vec<DsCertificate>, PkiError> {
        let (_, iaca) = self.iaca()?;
        let dir = self.dir.join("ds");
        let mut certs = Vec::new();
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(certs),
            Err(e) => return Err(io(format!("listing {}", dir.display()))(e)),
        };
        for entry in entries {
            let path = entry
                .map_err(io(format!("listing {}", dir.display())))?
                .path();
            let Some(label) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".pem"))
            else {
                continue;
            };
            let pem = fs::read(&path).map_err(io(format!("reading {}", path.display())))?;
            let der = cert_der_from_pem(&pem)?;
            let facts = profile::check_ds(&der, Some(&iaca))?;
            certs.push(DsCertificate {
                label: label.to_owned(),
                der,
                facts,
            });
        }
        certs.sort_by_key(|c| (c.facts.not_before, c.label.clone()));
        Ok(certs)
    }

    /// The DS certificate to sign with: `label` if given, else the newest
    /// one valid at `now`.
    pub fn ds_for_signing(
        &self,
        label: Option<&str>,
        now: OffsetDateTime,
    ) -> Result<DsCertificate, PkiError> {
        let certs = self.ds_certificates()?;
        let chosen = match label {
            Some(label) => certs.into_iter().find(|c| c.label == label),
            None => certs
                .into_iter()
                .rev()
                .find(|c| c.facts.not_before <= now && now < c.facts.not_after),
        };
        chosen.ok_or_else(|| {
            PkiError::Invalid(match label {
                Some(l) => {
                    format!("no DS certificate for key {l:?} (run `dojangctl pki issue-ds`)")
                }
                None => "no DS certificate valid now (run `dojangctl pki issue-ds`)".into(),
            })
        })
    }
}
