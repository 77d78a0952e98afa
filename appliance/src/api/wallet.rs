//! The wallet listener (`[server.wallet]`, TLS, no client certificate):
//! OpenID4VCI 1.0 for holders' phones — issuer and authorization server
//! metadata, offers by reference, token, nonce, credential, notification.
//! Errors are OAuth's JSON, not problem+json (what wallets parse); nothing
//! a wallet receives may be cached. Work that writes (token, credential,
//! notification) runs on the signing pool, within a share of it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE};
use hyper::{Method, Request, Response, StatusCode};
use time::OffsetDateTime;
use tokio::sync::Semaphore;

use crate::http::{self, BlockingPool, Body, Peer, Router};
use crate::service::Service;
use crate::wallet::{OAuthError, Wallet, WalletReply};

/// The wallet router.
pub struct WalletApi {
    service: Arc<Service>,
    pool: Arc<BlockingPool>,
    /// Wallet jobs on the signing pool at once: the counters' API keeps
    /// the rest.
    in_flight: Arc<Semaphore>,
    body_timeout: Duration,
    /// The issuer URL's path (`""` or `/…`): endpoints live under it.
    base_path: String,
}

/// A wallet request, routed.
enum Step {
    IssuerMetadata,
    ServerMetadata,
    Offer(String),
    Token,
    Nonce,
    Credential,
    Notification,
    Refresh,
}

/// The path of an https URL (`""` for none).
fn url_path(url: &str) -> String {
    let rest = url.strip_prefix("https://").unwrap_or(url);
    rest.find('/')
        .and_then(|i| rest.get(i..))
        .unwrap_or("")
        .to_owned()
}

impl WalletApi {
    /// The router for `service`'s wallet; writes run on `pool`, at most
    /// `in_flight` at once.
    pub fn new(
        service: Arc<Service>,
        pool: Arc<BlockingPool>,
        in_flight: usize,
        body_timeout: Duration,
    ) -> Option<Self> {
        let base_path = url_path(service.wallet.as_ref()?.base_url());
        Some(WalletApi {
            service,
            pool,
            in_flight: Arc::new(Semaphore::new(in_flight.max(1))),
            body_timeout,
            base_path,
        })
    }

    fn wallet(&self) -> Result<&Wallet, OAuthError> {
        self.service
            .wallet
            .as_ref()
            .ok_or_else(OAuthError::server_error)
    }

    fn step(&self, method: &Method, path: &str) -> Option<Step> {
        let base = self.base_path.as_str();
        const ISSUER: &str = "/.well-known/openid-credential-issuer";
        const SERVER: &str = "/.well-known/oauth-authorization-server";
        // The path-inserted form (RFC 8414 §3.1, OpenID4VCI 1.0 §12.2.2) and
        // the appended form some wallets still use.
        let is = |well_known: &str| {
            path == format!("{well_known}{base}") || path == format!("{base}{well_known}")
        };
        if *method == Method::GET && is(ISSUER) {
            return Some(Step::IssuerMetadata);
        }
        if *method == Method::GET && is(SERVER) {
            return Some(Step::ServerMetadata);
        }
        let endpoint = path.strip_prefix(base)?;
        match *method {
            Method::GET => endpoint
                .strip_prefix("/offers/")
                .filter(|h| !h.is_empty() && !h.contains('/'))
                .map(|h| Step::Offer(h.to_owned())),
            Method::POST => match endpoint {
                "/token" => Some(Step::Token),
                "/nonce" => Some(Step::Nonce),
                "/credential" => Some(Step::Credential),
                "/notification" => Some(Step::Notification),
                "/refresh" => Some(Step::Refresh),
                _ => None,
            },
            _ => None,
        }
    }

    async fn answer(
        &self,
        request: Request<Incoming>,
        request_id: &str,
    ) -> (&'static str, Result<WalletReply, OAuthError>) {
        let path = request.uri().path().to_owned();
        let Some(step) = self.step(request.method(), &path) else {
            let not_found = OAuthError {
                status: 404,
                error: "invalid_request",
                description: "no such endpoint".into(),
            };
            return ("other", Err(not_found));
        };
        let now = OffsetDateTime::now_utc();
        match step {
            Step::IssuerMetadata => ("/.well-known/openid-credential-issuer", self.metadata(true)),
            Step::ServerMetadata => (
                "/.well-known/oauth-authorization-server",
                self.metadata(false),
            ),
            Step::Offer(handle) => (
                "/offers/{id}",
                self.wallet()
                    .and_then(|w| w.offer_document(&handle, now.unix_timestamp())),
            ),
            Step::Nonce => (
                "/nonce",
                self.wallet()
                    .and_then(|w| w.nonce(&self.service.node, now.unix_timestamp())),
            ),
            Step::Token => ("/token", self.token(request).await),
            Step::Refresh => ("/refresh", self.refresh(request).await),
            Step::Credential => (
                "/credential",
                self.with_token(request, request_id.to_owned(), true).await,
            ),
            Step::Notification => (
                "/notification",
                self.with_token(request, request_id.to_owned(), false).await,
            ),
        }
    }

    fn metadata(&self, issuer: bool) -> Result<WalletReply, OAuthError> {
        let wallet = self.wallet()?;
        let body = if issuer {
            crate::wallet::issuer_metadata(
                wallet.base_url(),
                &self.service.policy.current(),
                wallet.settings().batch_size,
            )
        } else {
            crate::wallet::authorization_server_metadata(wallet.base_url())
        };
        Ok(WalletReply {
            status: 200,
            body: serde_json::to_vec(&body).unwrap_or_default(),
            no_store: false,
        })
    }

    async fn body(
        &self,
        request: Request<Incoming>,
        media_type: &str,
    ) -> Result<Vec<u8>, OAuthError> {
        let essence = request
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|v| v.trim().to_ascii_lowercase());
        if essence.as_deref() != Some(media_type) {
            return Err(OAuthError::bad(
                "invalid_request",
                format!("the body must be {media_type}"),
            ));
        }
        let max = self.wallet()?.settings().max_body_bytes;
        match tokio::time::timeout(self.body_timeout, http::read_body(request, max)).await {
            Ok(Ok(bytes)) => Ok(bytes.to_vec()),
            Ok(Err(p)) => Err(OAuthError::bad("invalid_request", p.detail)),
            Err(_) => Err(OAuthError::bad(
                "invalid_request",
                "the body did not arrive in time",
            )),
        }
    }

    /// Runs `job` on the signing pool within the wallet's share.
    async fn run(
        &self,
        job: impl FnOnce(&Service, &Wallet) -> Result<WalletReply, OAuthError> + Send + 'static,
    ) -> Result<WalletReply, OAuthError> {
        let busy = || OAuthError::unavailable("busy; retry shortly");
        let permit = self
            .in_flight
            .clone()
            .try_acquire_owned()
            .map_err(|_| busy())?;
        let service = self.service.clone();
        let receiver = self
            .pool
            .submit(move || {
                let _permit = permit;
                match &service.wallet {
                    Some(wallet) => job(&service, wallet),
                    None => Err(OAuthError::server_error()),
                }
            })
            .map_err(|_| busy())?;
        receiver
            .await
            .unwrap_or_else(|_| Err(OAuthError::server_error()))
    }

    async fn token(&self, request: Request<Incoming>) -> Result<WalletReply, OAuthError> {
        let body = self
            .body(request, "application/x-www-form-urlencoded")
            .await?;
        self.run(move |s, w| w.token(&s.node, &body, OffsetDateTime::now_utc()))
            .await
    }

    async fn refresh(&self, request: Request<Incoming>) -> Result<WalletReply, OAuthError> {
        let body = self.body(request, "application/json").await?;
        self.run(move |s, w| w.refresh((&s.node, &s.issuer), &body, OffsetDateTime::now_utc()))
            .await
    }

    /// The credential or notification endpoint: a bearer token first.
    async fn with_token(
        &self,
        request: Request<Incoming>,
        request_id: String,
        credential: bool,
    ) -> Result<WalletReply, OAuthError> {
        let header = request.headers().get(AUTHORIZATION);
        if header.is_none() {
            // RFC 6750 §3.1: no credentials, no error code in the challenge.
            return Err(OAuthError {
                status: 401,
                error: "",
                description: "a Bearer access token is required".into(),
            });
        }
        // The scheme is case-insensitive (RFC 7235 §2.1).
        let token = header
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim().to_owned())
            .filter(|t| !t.is_empty() && t.len() <= 128)
            .ok_or_else(|| {
                OAuthError::invalid_token("the Authorization header is not a Bearer access token")
            })?;
        let body = self.body(request, "application/json").await?;
        let queued = std::time::Instant::now();
        self.run(move |s, w| {
            let now = OffsetDateTime::now_utc();
            if credential {
                w.credential(
                    (&s.node, &s.issuer),
                    (&token, &body),
                    &request_id,
                    queued,
                    now,
                )
            } else {
                w.notification(&s.node, (&token, &body), now)
            }
        })
        .await
    }
}

/// The HTTP response of a wallet step.
fn response(answer: Result<WalletReply, OAuthError>, request_id: &str) -> Response<Body> {
    let (status, body, no_store, challenge) = match answer {
        Ok(reply) => (reply.status, reply.body, reply.no_store, None),
        Err(e) if e.status == 401 && e.error.is_empty() => {
            (401, Vec::new(), true, Some("Bearer".to_owned()))
        }
        Err(e) => {
            let challenge = (e.status == 401).then(|| format!("Bearer error=\"{}\"", e.error));
            (e.status, e.body(), true, challenge)
        }
    };
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut r = http::json(status, body, request_id);
    let headers = r.headers_mut();
    let cache = if no_store {
        "no-store"
    } else {
        "public, max-age=300"
    };
    let _ = headers.insert(CACHE_CONTROL, HeaderValue::from_static(cache));
    if let Some(challenge) = challenge
        && let Ok(v) = HeaderValue::from_str(&challenge)
    {
        let _ = headers.insert(WWW_AUTHENTICATE, v);
    }
    r
}

impl Router for WalletApi {
    fn listener(&self) -> &'static str {
        "wallet"
    }

    fn route(
        self: Arc<Self>,
        request: Request<Incoming>,
        _peer: Arc<Peer>,
    ) -> Pin<Box<dyn Future<Output = Response<Body>> + Send>> {
        Box::pin(async move {
            let request_id = http::request_id();
            let started = Instant::now();
            let (route, answer) = self.answer(request, &request_id).await;
            let response = response(answer, &request_id);
            self.service
                .node
                .metrics
                .count_request("wallet", route, response.status(), started);
            response
        })
    }
}
