//! The public listener: what verifiers fetch, without authentication: the
//! documents of the key view ([`super::documents`]: IACA certificates and
//! CRLs, DS certificates, the JWKS of document signers only, the SD-JWT VC
//! issuer metadata, the status-list keys) and the signed status lists.
//! Everything carries cache headers; nothing here reveals more than a
//! verifier needs.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use hyper::body::Incoming;
use hyper::header::{CACHE_CONTROL, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

use super::documents::{Site, key_document};
use crate::http::{self, BlockingPool, Body, Peer, Router};
use crate::refusal::{Class, Refusal, Reply};
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
        let site = Site {
            base_url: &self.base_url,
            issuer: &self.issuer,
            keys_max_age: keys_max_age(self.service.policy.current().keys.prepublish),
        };
        let path = request.uri().path();
        if let Some(doc) = key_document(&keys, path, &site) {
            return (doc.route, Ok((doc.media_type, doc.body, doc.max_age)));
        }
        if path == "/checkpoint" || path.starts_with("/tile/") {
            let route = if path == "/checkpoint" {
                "/checkpoint"
            } else {
                "/tile/{path}"
            };
            return (route, self.log_file(path).await);
        }
        let not_found = || Refusal::new(Class::NotFound, "not_found", "no such document");
        let Some(list) = path.strip_prefix("/status/") else {
            return ("other", Err(not_found()));
        };
        // The CBOR form at its own URI (`…/N.cwt`, what mdocs name), or by
        // content negotiation at the list's URI.
        if let Some(list) = list.strip_suffix(".cwt") {
            return (
                "/status/{list}.cwt",
                self.status_list(list, TokenForm::Cwt).await,
            );
        }
        let accept = request
            .headers()
            .get(hyper::header::ACCEPT)
            .and_then(|v| v.to_str().ok());
        let form = if accepts_cwt(accept) {
            TokenForm::Cwt
        } else {
            TokenForm::Jwt
        };
        ("/status/{list}", self.status_list(list, form).await)
    }

    /// `/checkpoint` and `/tile/…`: the tiled audit log without its entry
    /// bundles, read on the public pool.
    async fn log_file(&self, path: &str) -> Result<(&'static str, Vec<u8>, u32), Refusal> {
        let service = self.service.clone();
        let path = path.trim_start_matches('/').to_owned();
        let answer = match self
            .pool
            .submit(move || service.audit.log_file(&path, false))
        {
            Ok(rx) => rx.await.unwrap_or_else(|_| Err(Refusal::internal())),
            Err(_) => return Err(Refusal::unavailable("overloaded", "busy; retry shortly")),
        };
        match answer? {
            (
                Reply::Log {
                    media_type,
                    max_age,
                },
                body,
            ) => Ok((media_type, body, max_age)),
            _ => Err(Refusal::internal()),
        }
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
pub(crate) fn keys_max_age(prepublish: time::Duration) -> u32 {
    let half = (prepublish.whole_seconds() / 2).clamp(1, 300);
    u32::try_from(half).unwrap_or(300)
}

/// Lets caches keep a response `max_age` seconds; a year or more marks
/// it immutable (a tile: its path names fixed content).
pub(crate) fn cache_for(response: &mut Response<Body>, max_age: u32) {
    let immutable = if max_age >= 365 * 24 * 3600 {
        ", immutable"
    } else {
        ""
    };
    if let Ok(v) = HeaderValue::from_str(&format!("public, max-age={max_age}{immutable}")) {
        let _ = response.headers_mut().insert(CACHE_CONTROL, v);
    }
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
            let started = Instant::now();
            let (route, answer) = self.answer(&request).await;
            let response = match answer {
                Ok((content_type, body, max_age)) => {
                    let mut r = http::respond(StatusCode::OK, content_type, body, &request_id);
                    cache_for(&mut r, max_age);
                    r
                }
                Err(p) => http::problem(&p, &request_id),
            };
            self.service
                .node
                .metrics
                .count_request("public", route, response.status(), started);
            response
        })
    }
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
