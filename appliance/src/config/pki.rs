//! The `[pki]` table: the names and validity periods of the certificate
//! hierarchy, checked against ISO/IEC 18013-5 Annex B before any ceremony.

use std::path::PathBuf;

use serde::Deserialize;

/// Longest DS certificate validity Annex B allows.
pub const MAX_DS_VALIDITY_DAYS: i64 = 457;
/// Longest IACA validity Annex B allows (20 years).
pub const MAX_IACA_VALIDITY_DAYS: i64 = 7305;

/// The `[pki]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PkiConfig {
    /// Where certificates and the CRL are written.
    pub dir: PathBuf,
    /// countryName of the IACA and every DS (ISO 3166 alpha-2).
    #[serde(default = "default_country")]
    pub country: String,
    /// organizationName, e.g. the issuing ministry.
    pub organization: String,
    /// commonName of the IACA root.
    pub iaca_common_name: String,
    /// IssuerAltName: a URI (`https://…`) or an e-mail address.
    pub issuer_alt_name: String,
    /// Where verifiers fetch the IACA's CRL (CRLDistributionPoints).
    pub crl_url: String,
    /// Label of the IACA key in the token.
    #[serde(default = "default_iaca_key")]
    pub iaca_key: String,
    /// IACA validity in days (at most 20 years).
    #[serde(default = "default_iaca_days")]
    pub iaca_validity_days: u32,
    /// DS certificate validity in days (at most 457).
    #[serde(default = "default_ds_days")]
    pub ds_validity_days: u32,
    /// How long a CRL is valid (its nextUpdate).
    #[serde(default = "default_crl_days")]
    pub crl_validity_days: u32,
    /// Where the IACA's private key lives: `offline` (the default: a token
    /// no daemon configuration names, used in officers' ceremonies) or
    /// `online` (the daemon's token: any holder of its PIN can mint DS
    /// certificates; kept for deployments that have not held their first
    /// ceremony yet).
    #[serde(default)]
    pub iaca_custody: IacaCustody,
    /// Certified DS keys kept for the next scheduled rotations, besides
    /// the published emergency spare (offline custody).
    #[serde(default = "default_spare_keys")]
    pub spare_keys: u32,
    /// Readiness warns when fewer certified spares than this are left.
    #[serde(default = "default_spare_warn")]
    pub spare_warn_below: u32,
}

/// Where the IACA's private key lives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IacaCustody {
    /// In an offline token; DS certificates come from ceremonies.
    #[default]
    Offline,
    /// In the daemon's token.
    Online,
}

fn default_country() -> String {
    "KR".into()
}
fn default_iaca_key() -> String {
    "iaca".into()
}
fn default_iaca_days() -> u32 {
    3650
}
fn default_ds_days() -> u32 {
    365
}
fn default_crl_days() -> u32 {
    30
}
fn default_spare_keys() -> u32 {
    2
}
fn default_spare_warn() -> u32 {
    1
}

impl PkiConfig {
    /// Checks the values against Annex B before any ceremony.
    pub fn validate(&self) -> Result<(), String> {
        let invalid = |m: String| Err(m);
        if self.country.len() != 2 || !self.country.bytes().all(|b| b.is_ascii_uppercase()) {
            return invalid(format!(
                "pki.country {:?} must be two capital letters",
                self.country
            ));
        }
        if !(1..=MAX_IACA_VALIDITY_DAYS).contains(&i64::from(self.iaca_validity_days)) {
            return invalid("pki.iaca_validity_days must be 1 to 7305 (20 years)".into());
        }
        if !(1..=MAX_DS_VALIDITY_DAYS).contains(&i64::from(self.ds_validity_days)) {
            return invalid("pki.ds_validity_days must be 1 to 457 (ISO 18013-5 Annex B)".into());
        }
        if self.crl_validity_days == 0 || self.crl_validity_days > 366 {
            return invalid("pki.crl_validity_days must be 1 to 366".into());
        }
        if !(self.crl_url.starts_with("https://") || self.crl_url.starts_with("http://")) {
            return invalid("pki.crl_url must be an http(s) URL".into());
        }
        if self.issuer_alt_name.is_empty() || !self.issuer_alt_name.is_ascii() {
            return invalid("pki.issuer_alt_name must be an ASCII URI or e-mail address".into());
        }
        for (name, value) in [
            ("organization", &self.organization),
            ("iaca_common_name", &self.iaca_common_name),
        ] {
            if value.trim().is_empty() || value.len() > 64 {
                return invalid(format!("pki.{name} must be 1 to 64 characters"));
            }
        }
        if !(1..=16).contains(&self.spare_keys) {
            return invalid("pki.spare_keys must be 1 to 16".into());
        }
        if self.spare_warn_below > self.spare_keys {
            return invalid("pki.spare_warn_below must not exceed pki.spare_keys".into());
        }
        pkcs11_shim::validate_label(&self.iaca_key).map_err(|e| format!("pki.iaca_key: {e}"))
    }

    /// Whether the IACA key is in an offline token (ceremonies certify DS keys).
    pub fn offline(&self) -> bool {
        self.iaca_custody == IacaCustody::Offline
    }
}
