//! The public listener: what verifiers fetch, without authentication: the
//! IACA certificate and CRL, DS certificates, the JWKS (document signers
//! only), the SD-JWT VC issuer metadata, the signed status lists and their
//! keys. Everything carries cache
//! headers; nothing here reveals more than a verifier needs.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header::{CACHE_CONTROL, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

use crate::http::{self, BlockingPool, Body, Peer, Router};
use crate::refusal::{Class, Refusal};
use crate::service::Service;
use crate::status::TokenForm;

/// Whether an `Accept` header asks for the CBOR form of a status list.
fn accepts_cwt(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| {
        a.split(',')
            .any(|t| t.trim().starts_with(crate::status::CWT_TYPE))
    })
}

/// The public router.
pub struct Public {
    service: Arc<Service>,
    pool: Arc<BlockingPool>,
    base_url: String,
    issuer: String,
}

impl Public {
    /// A router for `base_url`, naming `issuer` in the issuer metadata.
    pub fn new(
        service: Arc<Service>,
        pool: Arc<BlockingPool>,
        base_url: String,
        issuer: String,
    ) -> Self {
        Public {
            service,
            pool,
            base_url,
            issuer,
        }
    }

    async fn answer(
        &self,
        request: &Request<Incoming>,
    ) -> (&'static str, Result<(&'static str, Vec<u8>, u32), Refusal>) {
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return (
                "other",
                Err(Refusal::new(
                    Class::MethodNotAllowed,
                    "method_not_allowed",
                    "only GET is served here",
                )),
            );
        }
        let keys = self.service.keys.view();
        let keys_max_age = keys_max_age(self.service.policy.current().keys.prepublish);
        let not_found = || Refusal::new(Class::NotFound, "not_found", "no such document");
        let path = request.uri().path();
        match path {
            "/.well-known/jwks.json" => (
                "/.well-known/jwks.json",
                Ok(("application/jwk-set+json", keys.jwks.clone(), keys_max_age)),
            ),
            "/.well-known/jwt-vc-issuer" => {
                let body = serde_json::json!({
                    "issuer": self.issuer,
                    "jwks_uri": format!("{}/.well-known/jwks.json", self.base_url),
                });
                (
                    "/.well-known/jwt-vc-issuer",
                    Ok(("application/json", body.to_string().into_bytes(), 300)),
                )
            }
            crate::status::publisher::STATUS_KEYS_PATH => (
                "/status/jwks.json",
                Ok((
                    "application/jwk-set+json",
                    keys.status_jwks.clone(),
                    keys_max_age,
                )),
            ),
            "/iaca.pem" => (
                "/iaca.pem",
                keys.iaca_pem
                    .clone()
                    .map(|c| ("application/x-pem-file", c, 3600))
                    .ok_or_else(not_found),
            ),
            // The CRL distribution point: one DER CRL (RFC 5280 §4.2.1.13,
            // RFC 2585), what conforming readers parse; PEM beside it.
            "/iaca.crl" => (
                "/iaca.crl",
                keys.crl_der
                    .clone()
                    .map(|c| ("application/pkix-crl", c, 300))
                    .ok_or_else(not_found),
            ),
            "/iacas.json" => (
                "/iacas.json",
                Ok(("application/json", iaca_list(&keys), 3600)),
            ),
            "/iaca.crl.pem" => (
                "/iaca.crl.pem",
                keys.crl_pem
                    .clone()
                    .map(|c| ("application/x-pem-file", c, 300))
                    .ok_or_else(not_found),
            ),
            _ => {
                let accept = request
                    .headers()
                    .get(hyper::header::ACCEPT)
                    .and_then(|v| v.to_str().ok());
                self.other_path(&keys, path, accept).await
            }
        }
    }

    /// Paths with a parameter: DS certificates, successor roots' CRLs,
    /// status lists.
    async fn other_path(
        &self,
        keys: &crate::keys::view::KeyView,
        path: &str,
        request_accept: Option<&str>,
    ) -> (&'static str, Result<(&'static str, Vec<u8>, u32), Refusal>) {
        let not_found = || Refusal::new(Class::NotFound, "not_found", "no such document");
        if let Some(label) = path
            .strip_prefix("/ds/")
            .and_then(|l| l.strip_suffix(".pem"))
        {
            return (
                "/ds/{label}.pem",
                keys.ds_pem
                    .get(label)
                    .map(|c| ("application/x-pem-file", c.clone(), 3600))
                    .ok_or_else(not_found),
            );
        }
        // A successor root's CRL (after an IACA rollover).
        if path.starts_with("/iaca-") && path.ends_with(".crl") {
            return (
                "/iaca-{key_id}.crl",
                keys.root_views
                    .iter()
                    .skip(1)
                    .find(|r| r.crl_path == path && r.status != "retired")
                    .and_then(|r| r.crl_der.clone())
                    .map(|c| ("application/pkix-crl", c, 300))
                    .ok_or_else(not_found),
            );
        }
        if let Some(list) = path.strip_prefix("/status/") {
            // The CBOR form at its own URI (`…/N.cwt`, what mdocs name),
            // or by content negotiation at the list's URI.
            if let Some(list) = list.strip_suffix(".cwt") {
                return (
                    "/status/{list}.cwt",
                    self.status_list(list, TokenForm::Cwt).await,
                );
            }
            let form = if accepts_cwt(request_accept) {
                TokenForm::Cwt
            } else {
                TokenForm::Jwt
            };
            return ("/status/{list}", self.status_list(list, form).await);
        }
        ("other", Err(not_found()))
    }

    /// `/status/{list}`: the signed list in `form`, signed on the public pool.
    async fn status_list(
        &self,
        list: &str,
        form: TokenForm,
    ) -> Result<(&'static str, Vec<u8>, u32), Refusal> {
        let not_found = || Refusal::new(Class::NotFound, "not_found", "no such document");
        let Ok(list) = list.parse::<u32>() else {
            return Err(not_found());
        };
        let service = self.service.clone();
        let token = match self
            .pool
            .submit(move || service.status.status_token(list, form))
        {
            Ok(rx) => rx.await.unwrap_or_else(|_| Err("worker gone".into())),
            Err(_) => return Err(Refusal::unavailable("overloaded", "busy; retry shortly")),
        };
        match token {
            Ok(Some(t)) => Ok((form.media_type(), t.to_vec(), 60)),
            Ok(None) => Err(not_found()),
            Err(e) => {
                tracing::warn!(error = %e, "signing a status list");
                Err(Refusal::unavailable(
                    "status_list_unavailable",
                    "the status list cannot be signed now; retry",
                ))
            }
        }
    }
}

/// How long verifiers may cache the key sets: 5 minutes, but at most half
/// the policy's prepublication, so a key published `prepublish` before it
/// signs is in every verifier's cache by then (a cache time longer than the
/// prepublication would defeat it).
fn keys_max_age(prepublish: time::Duration) -> u32 {
    let half = (prepublish.whole_seconds() / 2).clamp(1, 300);
    u32::try_from(half).unwrap_or(300)
}

impl Router for Public {
    fn listener(&self) -> &'static str {
        "public"
    }

    fn route(
        self: Arc<Self>,
        request: Request<Incoming>,
        _peer: Arc<Peer>,
    ) -> Pin<Box<dyn Future<Output = Response<Body>> + Send>> {
        Box::pin(async move {
            let request_id = http::request_id();
            let (route, answer) = self.answer(&request).await;
            let response = match answer {
                Ok((content_type, body, max_age)) => {
                    let mut r = http::respond(StatusCode::OK, content_type, body, &request_id);
                    if let Ok(v) = HeaderValue::from_str(&format!("public, max-age={max_age}")) {
                        let _ = r.headers_mut().insert(CACHE_CONTROL, v);
                    }
                    r
                }
                Err(p) => http::problem(&p, &request_id),
            };
            self.service
                .node
                .metrics
                .count_request("public", route, response.status());
            response
        })
    }
}

/// `/iacas.json`: every IACA root this issuer has had, oldest first, with
/// its state (`current` certifies; `retiring` is still trusted for what it
/// certified; `retired` certifies nothing still in use), its certificate,
/// its CRL's path and the link certificates to its neighbours.
fn iaca_list(keys: &crate::keys::view::KeyView) -> Vec<u8> {
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

#[cfg(test)]
mod tests {
    #[test]
    fn the_key_sets_are_cached_for_at_most_half_the_prepublication() {
        use time::Duration;
        assert_eq!(super::keys_max_age(Duration::days(7)), 300);
        assert_eq!(super::keys_max_age(Duration::minutes(4)), 120);
        assert_eq!(super::keys_max_age(Duration::seconds(2)), 1);
        assert_eq!(super::keys_max_age(Duration::ZERO), 1);
    }
}
