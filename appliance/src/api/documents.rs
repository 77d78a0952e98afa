//! The public documents that follow from the key view alone: the key sets,
//! the SD-JWT VC issuer metadata, the IACA certificates and CRLs, the DS
//! certificates. One source for the public listener (one path at a time)
//! and the static mirror (all of them), so the two never differ.

use crate::keys::view::KeyView;

/// One document as served: its route (the metrics label), media type,
/// body and how long verifiers may cache it.
pub struct Document {
    /// The route template (`/ds/{label}.pem`), never a label itself.
    pub route: &'static str,
    /// The media type.
    pub media_type: &'static str,
    /// The bytes.
    pub body: Vec<u8>,
    /// `Cache-Control: max-age` in seconds.
    pub max_age: u32,
}

/// What the documents name besides the keys.
pub struct Site<'a> {
    /// The public listener's URL (no trailing slash).
    pub base_url: &'a str,
    /// `iss` of SD-JWT VCs.
    pub issuer: &'a str,
    /// How long the key sets may be cached (bounded by the prepublication).
    pub keys_max_age: u32,
}

/// The document at `path`, if the key view has one there.
pub fn key_document(keys: &KeyView, path: &str, site: &Site<'_>) -> Option<Document> {
    let doc = |route, media_type, body: Vec<u8>, max_age| {
        Some(Document {
            route,
            media_type,
            body,
            max_age,
        })
    };
    let keys_age = site.keys_max_age;
    match path {
        "/.well-known/jwks.json" => doc(
            "/.well-known/jwks.json",
            "application/jwk-set+json",
            keys.jwks.clone(),
            keys_age,
        ),
        "/.well-known/jwt-vc-issuer" => {
            let body = serde_json::json!({
                "issuer": site.issuer,
                "jwks_uri": format!("{}/.well-known/jwks.json", site.base_url),
            });
            doc(
                "/.well-known/jwt-vc-issuer",
                "application/json",
                body.to_string().into_bytes(),
                300,
            )
        }
        crate::status::publisher::STATUS_KEYS_PATH => doc(
            "/status/jwks.json",
            "application/jwk-set+json",
            keys.status_jwks.clone(),
            keys_age,
        ),
        "/iaca.pem" => doc(
            "/iaca.pem",
            "application/x-pem-file",
            keys.iaca_pem.clone()?,
            3600,
        ),
        // The CRL distribution point: one DER CRL (RFC 5280 §4.2.1.13,
        // RFC 2585), what conforming readers parse; PEM beside it.
        "/iaca.crl" => doc(
            "/iaca.crl",
            "application/pkix-crl",
            keys.crl_der.clone()?,
            300,
        ),
        "/iaca.crl.pem" => doc(
            "/iaca.crl.pem",
            "application/x-pem-file",
            keys.crl_pem.clone()?,
            300,
        ),
        "/iacas.json" => doc("/iacas.json", "application/json", iaca_list(keys), 3600),
        _ => parameter_document(keys, path),
    }
}

/// Paths with a parameter: DS certificates, successor roots' CRLs.
fn parameter_document(keys: &KeyView, path: &str) -> Option<Document> {
    if let Some(label) = path
        .strip_prefix("/ds/")
        .and_then(|l| l.strip_suffix(".pem"))
    {
        return Some(Document {
            route: "/ds/{label}.pem",
            media_type: "application/x-pem-file",
            body: keys.ds_pem.get(label)?.clone(),
            max_age: 3600,
        });
    }
    // A successor root's CRL (after an IACA rollover).
    if path.starts_with("/iaca-") && path.ends_with(".crl") {
        let crl = keys
            .root_views
            .iter()
            .skip(1)
            .find(|r| r.crl_path == path && r.status != "retired")?
            .crl_der
            .clone()?;
        return Some(Document {
            route: "/iaca-{key_id}.crl",
            media_type: "application/pkix-crl",
            body: crl,
            max_age: 300,
        });
    }
    None
}

/// Every path [`key_document`] may answer for this key view (some may
/// have nothing yet, e.g. no CRL before the first).
pub fn key_document_paths(keys: &KeyView) -> Vec<String> {
    let mut paths: Vec<String> = [
        "/.well-known/jwks.json",
        "/.well-known/jwt-vc-issuer",
        crate::status::publisher::STATUS_KEYS_PATH,
        "/iaca.pem",
        "/iaca.crl",
        "/iaca.crl.pem",
        "/iacas.json",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    paths.extend(keys.ds_pem.keys().map(|label| format!("/ds/{label}.pem")));
    paths.extend(keys.root_views.iter().skip(1).map(|r| r.crl_path.clone()));
    paths
}

/// `/iacas.json`: every IACA root this issuer has had, oldest first, with
/// its state (`current` certifies; `retiring` is still trusted for what it
/// certified; `retired` certifies nothing still in use), its certificate,
/// its CRL's path and the link certificates to its neighbours.
fn iaca_list(keys: &KeyView) -> Vec<u8> {
    let pem = |der: &[u8]| crate::pki::cert_pem(der).unwrap_or_default();
    let roots: Vec<serde_json::Value> = keys
        .roots
        .iter()
        .zip(&keys.root_views)
        .map(|(root, view)| {
            serde_json::json!({
                "key_id": view.key_id,
                "status": view.status,
                "not_before": crate::node::rfc3339(root.1.not_before),
                "not_after": crate::node::rfc3339(root.1.not_after),
                "certificate": pem(&root.0),
                "crl": view.crl_path,
                "links": view.links.iter().map(|l| pem(l)).collect::<Vec<_>>(),
            })
        })
        .collect();
    serde_json::json!({ "iacas": roots })
        .to_string()
        .into_bytes()
}
