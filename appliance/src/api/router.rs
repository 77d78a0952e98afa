//! The mTLS API under `/v1` (documented in `docs/openapi.yaml`): content
//! checks, the in-flight limit, the role check of the route table
//! ([`super::routes`]), and the hop onto the signing pool. Answers become
//! HTTP here and nowhere else.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use time::OffsetDateTime;

use super::admission::{Full, InFlight, Slot};
use super::routes::Route;
use crate::http::identity::ClientCa;
use crate::http::{self, BlockingPool, Body, Peer, Router};
use crate::node::Caller;
use crate::officers::Officers;
use crate::refusal::{Answer, Class, Refusal, Reply};
use crate::service::Service;

/// The API router.
pub struct Api {
    service: Arc<Service>,
    pool: Arc<BlockingPool>,
    /// Audit reads (entries, proofs) run here, never on the signing pool.
    audit_pool: Arc<BlockingPool>,
    max_body: usize,
    body_timeout: std::time::Duration,
    in_flight: Arc<InFlight>,
    closing: Arc<std::sync::atomic::AtomicBool>,
    /// The minute each (client, action) last had a refused role audited:
    /// a client hammering a route it may not use writes one entry a minute.
    refusals_audited: std::sync::Mutex<std::collections::HashMap<(String, &'static str), i64>>,
}

/// Clients remembered for the once-a-minute refusal audit, at most.
const REFUSALS_REMEMBERED: usize = 10_000;

/// What a request carries past the router's checks.
struct Admitted {
    slot: Slot,
    body: Bytes,
}

impl Api {
    /// A router whose requests share `in_flight` slots; signing work runs
    /// on `pool`, audit reads on `audit_pool`.
    pub fn new(
        service: Arc<Service>,
        (pool, audit_pool): (Arc<BlockingPool>, Arc<BlockingPool>),
        max_body: usize,
        body_timeout: std::time::Duration,
        in_flight: Arc<InFlight>,
        closing: Arc<std::sync::atomic::AtomicBool>,
    ) -> Self {
        Api {
            service,
            pool,
            audit_pool,
            max_body,
            body_timeout,
            in_flight,
            closing,
            refusals_audited: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// Whether this refusal of `client`'s role for `action` is the first
    /// this minute (the one audited).
    fn first_refusal_this_minute(&self, client: &str, action: &'static str) -> bool {
        let minute = OffsetDateTime::now_utc().unix_timestamp().div_euclid(60);
        let Ok(mut seen) = self.refusals_audited.lock() else {
            return true;
        };
        if seen.len() >= REFUSALS_REMEMBERED {
            seen.retain(|_, m| *m == minute);
        }
        seen.insert((client.to_owned(), action), minute) != Some(minute)
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

/// The content checks of a route, before any slot is taken.
fn check_content(route: &Route, request: &Request<Incoming>) -> Result<Option<String>, Refusal> {
    match route {
        Route::Issue => {
            require_json(request)?;
            idempotency_key(request)
        }
        Route::ChangeState(..) => {
            let has_body = request
                .headers()
                .get(hyper::header::CONTENT_LENGTH)
                .is_some_and(|v| v.as_bytes() != b"0");
            if has_body {
                require_json(request)?;
            }
            Ok(None)
        }
        Route::Offer
        | Route::Refresh(_)
        | Route::Decide { approve: true, .. }
        | Route::CeremonyResponse => require_json(request).map(|()| None),
        Route::Propose { action, .. } if matches!(*action, "rotate" | "revoke" | "policy") => {
            require_json(request).map(|()| None)
        }
        _ => Ok(None),
    }
}

impl Api {
    /// A slot among the requests in flight, taken before the body is read:
    /// within `client`'s own cap, from the officers' and revokers' lane if
    /// `privileged` and the shared slots are taken.
    fn slot(&self, client: &str, privileged: bool) -> Result<Slot, Refusal> {
        if self.closing.load(std::sync::atomic::Ordering::Acquire) {
            return Err(Refusal::unavailable(
                "shutting_down",
                "this node is stopping; retry (another node)",
            ));
        }
        self.in_flight
            .take(client, privileged)
            .map_err(|full| match full {
                Full::Client => Refusal::new(
                    Class::TooManyRequests,
                    "client_overloaded",
                    "this client has too many requests in flight; retry shortly",
                )
                .with_rule("client.in_flight")
                .retry_after(1),
                Full::Node => overloaded(),
            })
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

    /// Runs `job` on the signing pool; the slot is held until the job is
    /// done, even if the client goes away, so a drain waits for it.
    async fn run(
        &self,
        slot: Slot,
        job: impl FnOnce(&Service) -> Answer + Send + 'static,
    ) -> Answer {
        self.run_on(&self.pool, slot, job).await
    }

    /// Runs `job` on `pool`, holding `slot` until it is done.
    async fn run_on(
        &self,
        pool: &BlockingPool,
        slot: Slot,
        job: impl FnOnce(&Service) -> Answer + Send + 'static,
    ) -> Answer {
        let service = self.service.clone();
        let receiver = pool
            .submit(move || {
                let _slot = slot;
                job(&service)
            })
            .map_err(|_| overloaded())?;
        receiver
            .await
            .unwrap_or_else(|_| Err(Refusal::new(Class::Internal, "internal", "internal error")))
    }

    /// A slot in flight (from the officers' and revokers' lane only for a
    /// client that holds the route's role), then (for a change) the
    /// adopted-policy check, the route's role, and the body: strangers
    /// cannot make the daemon buffer bodies. A refused role that the route
    /// audits is recorded first.
    async fn admit(
        &self,
        route: &Route,
        request: Request<Incoming>,
        client: &Caller,
        ca: ClientCa,
    ) -> Result<Admitted, Refusal> {
        let policy = self.service.policy.current();
        let role = route.admit(&policy, client, ca);
        let slot = self.slot(client, route.privileged() && role.is_ok())?;
        if route.changes() {
            self.service.policy.require_adopted(&policy)?;
        }
        if let Err((refusal, audited)) = role {
            return match audited {
                Some(action) if self.first_refusal_this_minute(client, action) => {
                    let (client, hash) = (client.clone(), policy.hash.clone());
                    let answer = self
                        .run(slot, move |s| {
                            let now = OffsetDateTime::now_utc();
                            s.node
                                .audited(&client, action, Err(refusal), &hash, None, now)
                        })
                        .await;
                    Err(answer.err().unwrap_or_else(Refusal::internal))
                }
                // Not audited (the route's refusals are not, or this one
                // was this minute): no pool job, no write.
                _ => Err(refusal),
            };
        }
        let body = if route.changes() {
            self.body(request).await?
        } else {
            Bytes::new()
        };
        Ok(Admitted { slot, body })
    }

    async fn handle(
        &self,
        request: Request<Incoming>,
        client: Caller,
        ca: ClientCa,
        request_id: String,
    ) -> (Route, Answer) {
        let method = request.method().clone();
        let query = request.uri().query().unwrap_or("").to_owned();
        let route = route_of(&request);
        let answer = match &route {
            Route::MethodNotAllowed => Err(Refusal::new(
                Class::MethodNotAllowed,
                "method_not_allowed",
                format!("{method} is not allowed here"),
            )),
            Route::NotFound => Err(Refusal::new(
                Class::NotFound,
                "not_found",
                "no such endpoint",
            )),
            _ => {
                self.serve(&route, request, (client, ca), request_id, query)
                    .await
            }
        };
        (route, answer)
    }

    async fn serve(
        &self,
        route: &Route,
        request: Request<Incoming>,
        (client, ca): (Caller, ClientCa),
        request_id: String,
        query: String,
    ) -> Answer {
        let key = check_content(route, &request)?;
        let Admitted { slot, body } = self.admit(route, request, &client, ca).await?;
        let pool = if route.audit_read() {
            &self.audit_pool
        } else {
            &self.pool
        };
        let route = route.clone();
        let queued = std::time::Instant::now();
        self.run_on(pool, slot, move |s| {
            let now = OffsetDateTime::now_utc();
            match route {
                Route::Issue => {
                    s.issuer
                        .issue(&request_id, &client, (&body, key.as_deref()), queued, now)
                }
                Route::Offer => match &s.wallet {
                    Some(wallet) => wallet.create_offer((&s.node, &s.issuer), &client, &body, now),
                    None => Err(crate::wallet::wallet_not_configured()),
                },
                Route::Metadata(id) => s.issuer.metadata(&id),
                Route::ChangeState(id, action) => {
                    s.issuer.change_state(&client, &id, action, &body, now)
                }
                Route::Refresh(id) => s.issuer.refresh(&client, &id, &body, now),
                Route::AuditCheckpoint => s.audit.checkpoint_answer(),
                Route::AuditEntries => s.audit.entries(&query),
                Route::AuditInclusion => s.audit.inclusion(&query),
                Route::AuditConsistency => s.audit.consistency(&query),
                Route::AuditLog(path) => s.audit.log_file(&path, true),
                Route::Keys => s.officers.list_keys(),
                Route::Propose { action, label, .. } => {
                    let operation = Officers::key_operation(action, label.as_deref(), &body);
                    s.officers.propose(&client, operation)
                }
                Route::Approvals => s.officers.list_proposals(),
                Route::Decide { id, approve } => s.officers.decide(&client, &id, approve, &body),
                Route::CeremonyRequest => s.officers.ceremony_request(&client),
                Route::CeremonyResponse => s.officers.ceremony_response(&client, &body),
                Route::MethodNotAllowed | Route::NotFound => Err(Refusal::internal()),
            }
        })
        .await
    }
}

/// The route a request asks for, from its method and path.
fn route_of(request: &Request<Incoming>) -> Route {
    let segments: Vec<&str> = request
        .uri()
        .path()
        .trim_start_matches('/')
        .split('/')
        .collect();
    Route::parse(request.method(), &segments)
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
            let (client, route, answer) = match &peer.identity {
                Ok(client) => {
                    let (route, answer) = self
                        .handle(request, client.clone(), peer.ca, request_id.clone())
                        .await;
                    (client.identity.as_str(), route, answer)
                }
                // Refused before anything is read, but counted, timed and
                // logged like any answer: certificates our CA issued
                // without a usable identity are worth seeing.
                Err(why) => {
                    let (code, detail) = why.explain();
                    let p = Refusal::new(Class::Unauthorized, code, detail)
                        .with_rule("client.identity");
                    ("", route_of(&request), Err(p))
                }
            };
            let (action, route) = (route.action(), route.name());
            let response = match &answer {
                Ok((
                    Reply::Log {
                        media_type,
                        max_age,
                    },
                    body,
                )) => {
                    let mut r =
                        http::respond(StatusCode::OK, media_type, body.clone(), &request_id);
                    super::public::cache_for(&mut r, *max_age);
                    r
                }
                Ok((reply, body)) => http::json(
                    http::problem::reply_status(*reply),
                    body.clone(),
                    &request_id,
                ),
                Err(p) => http::problem(p, &request_id),
            };
            let status = response.status();
            self.service
                .node
                .metrics
                .count_request("api", route, status, started);
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
            "/v1/offers:",
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
            "/v1/ceremony/requests:",
            "/v1/ceremony/responses:",
            "/.well-known/jwks.json:",
            "/.well-known/jwt-vc-issuer:",
            "/iaca.pem:",
            "/iaca.crl:",
            "/iaca.crl.pem:",
            "/iacas.json:",
            "/iaca-{key_id}.crl:",
            "/ds/{label}.pem:",
            "/status/jwks.json:",
            "/status/{list}.cwt:",
            "/status/{list}:",
        ] {
            assert!(OPENAPI.contains(route), "{route} undocumented");
        }
        // Every code the server sources construct a problem with.
        let sources = [
            include_str!("router.rs"),
            include_str!("routes.rs"),
            include_str!("public.rs"),
            include_str!("ops.rs"),
            include_str!("../errors.rs"),
            include_str!("../refusal.rs"),
            include_str!("../http/server.rs"),
            include_str!("../issuance/issue.rs"),
            include_str!("../issuance/refresh.rs"),
            include_str!("../issuance/request.rs"),
            include_str!("../issuance/state.rs"),
            include_str!("../issuance/offer.rs"),
            include_str!("../issuance/presented.rs"),
            include_str!("../wallet/offers.rs"),
            include_str!("../officers/proposals.rs"),
            include_str!("../officers/check.rs"),
            include_str!("../officers/execute.rs"),
            include_str!("../officers/ceremony.rs"),
            include_str!("../audit/auditor.rs"),
            include_str!("../policy/state.rs"),
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
