//! The mTLS API under `/v1` (documented in `docs/openapi.yaml`): routing,
//! content checks, the in-flight limit, and the hop onto the signing pool.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use time::OffsetDateTime;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::http::{self, Body, Peer, Router};
use super::issue::Answer;
use super::pool::BlockingPool;
use super::service::Service;
use crate::refusal::{Class, Refusal};

/// The API router.
pub struct Api {
    service: Arc<Service>,
    pool: Arc<BlockingPool>,
    max_body: usize,
    body_timeout: std::time::Duration,
    in_flight: Arc<Semaphore>,
    closing: Arc<std::sync::atomic::AtomicBool>,
}

impl Api {
    /// A router whose requests share `in_flight` permits.
    pub(crate) fn new(
        service: Arc<Service>,
        pool: Arc<BlockingPool>,
        max_body: usize,
        body_timeout: std::time::Duration,
        in_flight: Arc<Semaphore>,
        closing: Arc<std::sync::atomic::AtomicBool>,
    ) -> Self {
        Api {
            service,
            pool,
            max_body,
            body_timeout,
            in_flight,
            closing,
        }
    }
}

fn overloaded() -> Refusal {
    Refusal::unavailable("overloaded", "too many requests in flight; retry shortly")
}

fn require_json(request: &Request<Incoming>) -> Result<(), Refusal> {
    let content_type = request
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = content_type.split(';').next().unwrap_or("").trim();
    if essence.eq_ignore_ascii_case("application/json") {
        Ok(())
    } else {
        Err(Refusal::new(
            Class::UnsupportedMediaType,
            "unsupported_media_type",
            "the body must be application/json",
        ))
    }
}

fn idempotency_key(request: &Request<Incoming>) -> Result<Option<String>, Refusal> {
    let Some(value) = request.headers().get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .map(|k| k.trim_matches('"'))
        .filter(|k| !k.is_empty() && k.len() <= 128 && k.bytes().all(|b| b.is_ascii_graphic()));
    match key {
        Some(k) => Ok(Some(k.to_owned())),
        None => Err(Refusal::bad_request(
            "invalid_idempotency_key",
            "Idempotency-Key must be 1 to 128 printable ASCII characters",
        )),
    }
}

impl Api {
    /// A slot among the requests in flight, taken before the body is read.
    fn slot(&self) -> Result<OwnedSemaphorePermit, Refusal> {
        if self.closing.load(std::sync::atomic::Ordering::Acquire) {
            return Err(Refusal::unavailable(
                "shutting_down",
                "this node is stopping; retry (another node)",
            ));
        }
        self.in_flight
            .clone()
            .try_acquire_owned()
            .map_err(|_| overloaded())
    }

    /// Reads the body within the body timeout.
    async fn body(&self, request: Request<Incoming>) -> Result<hyper::body::Bytes, Refusal> {
        tokio::time::timeout(self.body_timeout, http::read_body(request, self.max_body))
            .await
            .unwrap_or_else(|_| {
                Err(Refusal::new(
                    Class::RequestTimeout,
                    "body_timeout",
                    "the request body did not arrive in time",
                ))
            })
    }

    async fn on_pool(&self, job: impl FnOnce(&Service) -> Answer + Send + 'static) -> Answer {
        let slot = self.slot()?;
        self.run(slot, job).await
    }

    /// Runs `job` on the signing pool; the slot is held until the job is
    /// done, even if the client goes away, so a drain waits for it.
    async fn run(
        &self,
        slot: OwnedSemaphorePermit,
        job: impl FnOnce(&Service) -> Answer + Send + 'static,
    ) -> Answer {
        let service = self.service.clone();
        let receiver = self
            .pool
            .submit(move || {
                let _slot = slot;
                job(&service)
            })
            .map_err(|_| overloaded())?;
        receiver
            .await
            .unwrap_or_else(|_| Err(Refusal::new(Class::Internal, "internal", "internal error")))
    }

    /// A slot in flight, then the body, read only if `client` has `role`:
    /// strangers cannot make the daemon buffer bodies (the job refuses them,
    /// and audits the refusal, from an empty body). Every change goes
    /// through here, so a node running a policy officers did not adopt
    /// refuses them all here.
    async fn admit(
        &self,
        request: Request<Incoming>,
        client: &str,
        role: dojang_policies::Role,
    ) -> Result<(OwnedSemaphorePermit, hyper::body::Bytes), Refusal> {
        let slot = self.slot()?;
        let current = self.service.current();
        self.service.require_adopted_policy(&current)?;
        let body = if current.policy.has_role(client, role) {
            self.body(request).await?
        } else {
            hyper::body::Bytes::new()
        };
        Ok((slot, body))
    }

    /// A proposal from an officer: `rotate` and `revoke` carry a JSON body.
    async fn officer_request(
        &self,
        request: Request<Incoming>,
        client: String,
        action: &str,
        label: Option<String>,
    ) -> Answer {
        let needs_body = matches!(action, "rotate" | "revoke" | "policy");
        if needs_body {
            require_json(&request)?;
        }
        let (slot, body) = self
            .admit(request, &client, dojang_policies::Role::Officer)
            .await?;
        let action = action.to_owned();
        self.run(slot, move |s| {
            let operation = Service::key_operation(&action, label.as_deref(), &body);
            s.propose(&client, operation)
        })
        .await
    }

    async fn handle(
        &self,
        request: Request<Incoming>,
        client: String,
        request_id: String,
    ) -> (&'static str, Option<String>, Answer) {
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match (&method, segments.as_slice()) {
            (&Method::POST, ["v1", "credentials"]) => {
                let route = "/v1/credentials";
                let prepared = require_json(&request).and_then(|()| idempotency_key(&request));
                let key = match prepared {
                    Ok(k) => k,
                    Err(p) => return (route, None, Err(p)),
                };
                let (slot, body) = match self
                    .admit(request, &client, dojang_policies::Role::Issuer)
                    .await
                {
                    Ok(admitted) => admitted,
                    Err(p) => return (route, None, Err(p)),
                };
                let answer = self
                    .run(slot, move |s| {
                        s.issue(
                            &request_id,
                            &client,
                            &body,
                            key.as_deref(),
                            OffsetDateTime::now_utc(),
                        )
                    })
                    .await;
                (route, None, answer)
            }
            (&Method::GET, ["v1", "credentials", id]) => {
                let id = (*id).to_owned();
                let answer = self.on_pool(move |s| s.metadata(&client, &id)).await;
                ("/v1/credentials/{id}", None, answer)
            }
            (&Method::POST, ["v1", "credentials", id, action])
                if matches!(*action, "revoke" | "suspend" | "reinstate") =>
            {
                let (route, action): (&'static str, &'static str) = match *action {
                    "revoke" => ("/v1/credentials/{id}/revoke", "revoke"),
                    "suspend" => ("/v1/credentials/{id}/suspend", "suspend"),
                    _ => ("/v1/credentials/{id}/reinstate", "reinstate"),
                };
                let id = (*id).to_owned();
                let has_body = request
                    .headers()
                    .get(hyper::header::CONTENT_LENGTH)
                    .is_some_and(|v| v.as_bytes() != b"0");
                if has_body && let Err(p) = require_json(&request) {
                    return (route, None, Err(p));
                }
                let (slot, body) = match self
                    .admit(request, &client, dojang_policies::Role::Revoker)
                    .await
                {
                    Ok(admitted) => admitted,
                    Err(p) => return (route, None, Err(p)),
                };
                let answer = self
                    .run(slot, move |s| {
                        s.change_state(&client, &id, action, &body, OffsetDateTime::now_utc())
                    })
                    .await;
                (route, Some(action.to_owned()), answer)
            }
            (&Method::POST, ["v1", "credentials", id, "refresh"]) => {
                let route = "/v1/credentials/{id}/refresh";
                if let Err(p) = require_json(&request) {
                    return (route, None, Err(p));
                }
                let id = (*id).to_owned();
                let (slot, body) = match self
                    .admit(request, &client, dojang_policies::Role::Issuer)
                    .await
                {
                    Ok(admitted) => admitted,
                    Err(p) => return (route, None, Err(p)),
                };
                let answer = self
                    .run(slot, move |s| {
                        s.refresh(&client, &id, &body, OffsetDateTime::now_utc())
                    })
                    .await;
                (route, Some("refresh".to_owned()), answer)
            }
            (&Method::GET, ["v1", "audit", what @ ..]) => {
                let query = request.uri().query().unwrap_or("").to_owned();
                let (route, answer): (&'static str, _) = match what {
                    ["checkpoint"] => (
                        "/v1/audit/checkpoint",
                        self.on_pool(move |s| s.audit_checkpoint(&client)).await,
                    ),
                    ["entries"] => (
                        "/v1/audit/entries",
                        self.on_pool(move |s| s.audit_entries(&client, &query))
                            .await,
                    ),
                    ["proof", "inclusion"] => (
                        "/v1/audit/proof/inclusion",
                        self.on_pool(move |s| s.audit_inclusion(&client, &query))
                            .await,
                    ),
                    ["proof", "consistency"] => (
                        "/v1/audit/proof/consistency",
                        self.on_pool(move |s| s.audit_consistency(&client, &query))
                            .await,
                    ),
                    _ => (
                        "other",
                        Err(Refusal::new(
                            Class::NotFound,
                            "not_found",
                            "no such endpoint",
                        )),
                    ),
                };
                (route, None, answer)
            }
            (&Method::GET, ["v1", "keys"]) => (
                "/v1/keys",
                None,
                self.on_pool(move |s| s.list_keys(&client)).await,
            ),
            (&Method::POST, ["v1", "keys", "rotate"]) => {
                let route = "/v1/keys/rotate";
                (
                    route,
                    Some("rotate".to_owned()),
                    self.officer_request(request, client, "rotate", None).await,
                )
            }
            (
                &Method::POST,
                [
                    "v1",
                    "keys",
                    label,
                    action @ ("revoke" | "activate" | "retire" | "destroy"),
                ],
            ) => {
                let route: &'static str = match *action {
                    "revoke" => "/v1/keys/{label}/revoke",
                    "activate" => "/v1/keys/{label}/activate",
                    "retire" => "/v1/keys/{label}/retire",
                    _ => "/v1/keys/{label}/destroy",
                };
                let (label, action) = ((*label).to_owned(), (*action).to_owned());
                let answer = self
                    .officer_request(request, client, &action, Some(label))
                    .await;
                (route, Some(action), answer)
            }
            (&Method::POST, ["v1", "pki", "iaca"]) => (
                "/v1/pki/iaca",
                Some("iaca".to_owned()),
                self.officer_request(request, client, "iaca", None).await,
            ),
            (&Method::POST, ["v1", "policy", "change"]) => (
                "/v1/policy/change",
                Some("policy".to_owned()),
                self.officer_request(request, client, "policy", None).await,
            ),
            (&Method::GET, ["v1", "approvals"]) => (
                "/v1/approvals",
                None,
                self.on_pool(move |s| s.list_proposals(&client)).await,
            ),
            (&Method::POST, ["v1", "approvals", id, step @ ("approve" | "reject")]) => {
                let (id, approve) = ((*id).to_owned(), *step == "approve");
                let route = if approve {
                    "/v1/approvals/{id}/approve"
                } else {
                    "/v1/approvals/{id}/reject"
                };
                let answer = async {
                    if approve {
                        require_json(&request)?;
                    }
                    let (slot, body) = self
                        .admit(request, &client, dojang_policies::Role::Officer)
                        .await?;
                    self.run(slot, move |s| s.decide(&client, &id, approve, &body))
                        .await
                }
                .await;
                (route, Some((*step).to_owned()), answer)
            }
            (
                _,
                [
                    "v1",
                    "credentials" | "keys" | "approvals" | "policy" | "pki",
                    ..,
                ],
            ) => (
                "other",
                None,
                Err(Refusal::new(
                    Class::MethodNotAllowed,
                    "method_not_allowed",
                    format!("{method} is not allowed here"),
                )),
            ),
            _ => (
                "other",
                None,
                Err(Refusal::new(
                    Class::NotFound,
                    "not_found",
                    "no such endpoint",
                )),
            ),
        }
    }
}

impl Router for Api {
    fn listener(&self) -> &'static str {
        "api"
    }

    fn route(
        self: Arc<Self>,
        request: Request<Incoming>,
        peer: Arc<Peer>,
    ) -> Pin<Box<dyn Future<Output = Response<Body>> + Send>> {
        Box::pin(async move {
            let request_id = http::request_id();
            let started = Instant::now();
            let Some(client) = peer.identity.clone() else {
                let p = Refusal::new(
                    Class::Unauthorized,
                    "no_client_identity",
                    "the client certificate has no URI or DNS subject alternative name",
                );
                return http::problem(&p, &request_id);
            };
            let (route, action, answer) = self
                .handle(request, client.clone(), request_id.clone())
                .await;
            let response = match &answer {
                Ok((reply, body)) => http::json(
                    super::problem::reply_status(*reply),
                    body.clone(),
                    &request_id,
                ),
                Err(p) => http::problem(p, &request_id),
            };
            let status = response.status();
            self.service.metrics.count_request("api", route, status);
            tracing::info!(
                request_id = %request_id,
                client = %client,
                route,
                action = action.as_deref().unwrap_or(""),
                status = status.as_u16(),
                code = answer.as_ref().err().map(|p| p.code).unwrap_or(""),
                rule = answer.as_ref().err().and_then(|p| p.rule.as_deref()).unwrap_or(""),
                latency_ms = started.elapsed().as_secs_f64() * 1000.0,
                "request"
            );
            response
        })
    }
}

#[cfg(test)]
mod tests {
    const OPENAPI: &str = include_str!("../../../docs/openapi.yaml");

    #[test]
    fn the_openapi_file_documents_every_route_and_problem_code() {
        for route in [
            "/v1/credentials:",
            "/v1/credentials/{id}:",
            "/v1/credentials/{id}/revoke:",
            "/v1/credentials/{id}/suspend:",
            "/v1/credentials/{id}/reinstate:",
            "/v1/credentials/{id}/refresh:",
            "/v1/audit/checkpoint:",
            "/v1/audit/entries:",
            "/v1/audit/proof/inclusion:",
            "/v1/audit/proof/consistency:",
            "/v1/keys:",
            "/v1/keys/rotate:",
            "/v1/keys/{label}/revoke:",
            "/v1/keys/{label}/activate:",
            "/v1/keys/{label}/retire:",
            "/v1/keys/{label}/destroy:",
            "/v1/approvals:",
            "/v1/policy/change:",
            "/v1/pki/iaca:",
            "/v1/approvals/{id}/approve:",
            "/v1/approvals/{id}/reject:",
            "/.well-known/jwks.json:",
            "/.well-known/jwt-vc-issuer:",
            "/iaca.pem:",
            "/iaca.crl:",
            "/ds/{label}.pem:",
            "/status/{list}:",
        ] {
            assert!(OPENAPI.contains(route), "{route} undocumented");
        }
        // Every code the server sources construct a problem with.
        let sources = [
            include_str!("api.rs"),
            include_str!("issue.rs"),
            include_str!("officers.rs"),
            include_str!("auditor.rs"),
            include_str!("public.rs"),
            include_str!("ops.rs"),
            include_str!("http.rs"),
            include_str!("problem.rs"),
        ];
        let mut codes = 0;
        for source in sources {
            for (i, _) in source.match_indices("Class::") {
                // Refusal::new(Class::X, "code", …): the next literal.
                let rest = &source[i..];
                let Some(start) = rest.find('"') else {
                    continue;
                };
                let literal = &rest[start + 1..];
                let Some(end) = literal.find('"') else {
                    continue;
                };
                let code = &literal[..end];
                let between = &rest[..start];
                if between.contains(')') || between.contains(';') {
                    continue; // not a constructor's next argument
                }
                if code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') && !code.is_empty() {
                    codes += 1;
                    assert!(OPENAPI.contains(code), "problem code {code} undocumented");
                }
            }
            for prefix in ["bad_request(\"", "unavailable(\""] {
                for (i, _) in source.match_indices(prefix) {
                    let literal = &source[i + prefix.len()..];
                    let code = &literal[..literal.find('"').unwrap_or(0)];
                    codes += 1;
                    assert!(OPENAPI.contains(code), "problem code {code} undocumented");
                }
            }
        }
        assert!(codes > 20, "found only {codes} codes: the scan is broken");
    }
}
