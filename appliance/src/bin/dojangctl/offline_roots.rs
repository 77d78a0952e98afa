//! The offline IACA's roots on the ceremony machine: the first
//! (`pki/iaca.pem`) and each successor a rollover made
//! (`pki/iaca-<key id>.pem`), found by key identifier; their keys in the
//! offline token, found by public key (labels are only names). Owns the
//! rollover and certify ceremonies' use of them.

use std::path::PathBuf;

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use dojang::config::PkiConfig;
use dojang::pki::exchange::{
    CeremonyRequest, IssuedCertificate, RolloverCertificates, RootCrl, certify, crl_der_b64,
};
use dojang::pki::profile::{self, CertFacts};
use dojang::pki::rollover::{issue_link, key_id_of, short_key_id, successor_config};
use dojang::pki::{HsmKey, PkiStore, cert_der_from_pem, issue_crl};
use pkcs11_shim::{Algorithm, KeyBackend, KeyPurpose, PublicKey};
use time::OffsetDateTime;

/// A root on disk.
struct Root {
    der: Vec<u8>,
    facts: CertFacts,
    first: bool,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn roots(pki: &PkiConfig) -> anyhow::Result<Vec<Root>> {
    let mut roots = Vec::new();
    for entry in
        std::fs::read_dir(&pki.dir).with_context(|| format!("reading {}", pki.dir.display()))?
    {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        let first = name == "iaca.pem";
        if !(first || (name.starts_with("iaca-") && name.ends_with(".pem"))) {
            continue;
        }
        let der = cert_der_from_pem(&std::fs::read(&path)?)?;
        let facts = profile::check_iaca(&der)?;
        roots.push(Root { der, facts, first });
    }
    roots.sort_by_key(|r| (!r.first, r.facts.not_before));
    Ok(roots)
}

fn public_of(der: &[u8]) -> anyhow::Result<PublicKey> {
    let spki = openssl::x509::X509::from_der(der)?
        .public_key()?
        .public_key_to_der()?;
    Ok(PublicKey::from_spki_der(&spki)?)
}

fn common_name(der: &[u8]) -> anyhow::Result<String> {
    let cert = openssl::x509::X509::from_der(der)?;
    let entry = cert
        .subject_name()
        .entries_by_nid(openssl::nid::Nid::COMMONNAME)
        .next()
        .context("a root without a common name")?;
    Ok(entry.data().to_string()?)
}

/// The `[pki]` a root's certificates are made with.
fn config_of(pki: &PkiConfig, root: &Root) -> anyhow::Result<PkiConfig> {
    Ok(if root.first {
        pki.clone()
    } else {
        successor_config(
            pki,
            &common_name(&root.der)?,
            root.facts.ski.as_deref().unwrap_or_default(),
        )
    })
}

/// The offline token's IACA key for `root`, by public key.
fn key_of<'a>(backend: &'a dyn KeyBackend, root: &Root) -> anyhow::Result<HsmKey<'a>> {
    let public = public_of(&root.der)?;
    let label = backend
        .list()?
        .into_iter()
        .find(|k| {
            k.purpose == KeyPurpose::Iaca
                && k.public_key
                    .as_ref()
                    .is_some_and(|p| p.spki_der() == public.spki_der())
        })
        .map(|k| k.label)
        .context("the offline token holds no key for this root")?;
    Ok(HsmKey::find(backend, &label, KeyPurpose::Iaca)?)
}

fn by_key_id<'r>(roots: &'r [Root], key_id: &str) -> anyhow::Result<&'r Root> {
    roots
        .iter()
        .find(|r| r.facts.ski.as_deref().map(hex).as_deref() == Some(key_id))
        .with_context(|| format!("no root with key id {key_id} in the PKI directory"))
}

/// What a certify ceremony made: the certifying root, the certificates,
/// its CRL (PEM) and the older roots' CRLs.
pub(crate) struct Certified {
    pub(crate) root: Vec<u8>,
    pub(crate) certificates: Vec<IssuedCertificate>,
    pub(crate) crl: String,
    pub(crate) older_crls: Vec<RootCrl>,
}

/// Certifies `request` with the root it names, and signs a CRL for every
/// older root it lists.
pub(crate) fn certify_request(
    pki: &PkiConfig,
    backend: &dyn KeyBackend,
    request: &CeremonyRequest,
    now: OffsetDateTime,
) -> anyhow::Result<Certified> {
    let roots = roots(pki)?;
    let root = by_key_id(&roots, &request.iaca_key_id)?;
    let key = key_of(backend, root)?;
    // After the last CRL this tool wrote: two ceremonies within one second
    // must not sign CRLs with one thisUpdate (the daemon refuses the second
    // as not newer than the one it serves).
    let previous = std::fs::read_to_string(PkiStore::new(&pki.dir).crl_path()).ok();
    let crl_at = dojang::pki::ceremony::next_crl_update(previous.as_deref(), now)?;
    let (certificates, crl) = certify(
        &config_of(pki, root)?,
        &root.der,
        &key,
        request,
        (now, crl_at),
    )?;
    let mut older_crls = Vec::new();
    for order in &request.older_roots {
        let older = by_key_id(&roots, &order.iaca_key_id)?;
        let serials = order
            .revoke
            .iter()
            .map(|h| Ok(openssl::bn::BigNum::from_hex_str(h)?.to_vec()))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let key = key_of(backend, older)?;
        let pem = issue_crl(&config_of(pki, older)?, &older.der, &key, &serials, crl_at)?;
        older_crls.push(RootCrl {
            iaca_key_id: order.iaca_key_id.clone(),
            crl: crl_der_b64(&pem)?,
        });
    }
    Ok(Certified {
        root: root.der.clone(),
        certificates,
        crl,
        older_crls,
    })
}

/// A rollover: a successor key in the offline token, its self-signed
/// root named `common_name` (CRL beside the first's, by key id), the links
/// both ways with the newest root, and the successor's first CRL. Writes
/// `pki/iaca-<key id>.pem`; (the current root, CRL PEM, certificates).
pub(crate) fn roll_over(
    pki: &PkiConfig,
    backend: &dyn KeyBackend,
    common_name: &str,
    now: OffsetDateTime,
) -> anyhow::Result<(Vec<u8>, String, RolloverCertificates, PathBuf)> {
    let roots = roots(pki)?;
    let current = roots
        .last()
        .context("no IACA yet: the root ceremony comes first")?;
    let current_key = key_of(backend, current)?;
    let current_config = config_of(pki, current)?;
    let label = format!("iaca-{}", now.unix_timestamp());
    let info = backend.generate(&label, KeyPurpose::Iaca, Algorithm::Es256)?;
    let public = info.public_key.context("no public key")?;
    let ski = key_id_of(&public);
    let next_config = successor_config(pki, common_name, &ski);
    let next_key = HsmKey::find(backend, &label, KeyPurpose::Iaca)?;
    let (root, facts) = dojang::pki::issue_iaca(&next_config, &next_key, now)?;
    let link = issue_link(
        (&next_config, &public, facts.not_after),
        (&current_config, &current.der),
        &current_key,
        now,
    )?;
    let back_link = issue_link(
        (
            &current_config,
            &public_of(&current.der)?,
            current.facts.not_after,
        ),
        (&next_config, &root),
        &next_key,
        now,
    )?;
    let crl = issue_crl(&next_config, &root, &next_key, &[], now)?;
    let path = pki.dir.join(format!("iaca-{}.pem", short_key_id(&ski)));
    std::fs::write(&path, dojang::pki::cert_pem(&root)?)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok((
        current.der.clone(),
        crl,
        RolloverCertificates {
            root: B64.encode(&root),
            link: B64.encode(link),
            back_link: B64.encode(back_link),
        },
        path,
    ))
}
