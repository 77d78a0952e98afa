//! The ops listener (loopback by default): `/metrics` in the Prometheus
//! text format, `/healthz` (the process answers) and `/readyz` (the key
//! backend answers, the store answers, a DS key with a valid certificate
//! can sign).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};

use crate::http::{self, BlockingPool, Body, Peer, Router};
use crate::refusal::{Class, Refusal};
use crate::service::Service;

/// The ops router.
pub struct Ops {
    service: Arc<Service>,
    pool: Arc<BlockingPool>,
}

impl Ops {
    /// A router over `service`.
    pub fn new(service: Arc<Service>, pool: Arc<BlockingPool>) -> Self {
        Ops { service, pool }
    }

    async fn on_pool<T: Send + 'static>(
        &self,
        job: impl FnOnce(&Service) -> T + Send + 'static,
    ) -> Option<T> {
        let service = self.service.clone();
        self.pool.submit(move || job(&service)).ok()?.await.ok()
    }
}

impl Router for Ops {
    fn listener(&self) -> &'static str {
        "ops"
    }

    fn route(
        self: Arc<Self>,
        request: Request<Incoming>,
        _peer: Arc<Peer>,
    ) -> Pin<Box<dyn Future<Output = Response<Body>> + Send>> {
        Box::pin(async move {
            let request_id = http::request_id();
            let started = Instant::now();
            let busy = || Refusal::unavailable("overloaded", "busy; retry shortly");
            let (route, response) = match request.uri().path() {
                "/healthz" => (
                    "/healthz",
                    http::respond(StatusCode::OK, "text/plain", b"ok\n".to_vec(), &request_id),
                ),
                "/readyz" => match self.on_pool(|s| s.readiness()).await {
                    Some(r) => {
                        let status = if r.ready {
                            StatusCode::OK
                        } else {
                            StatusCode::SERVICE_UNAVAILABLE
                        };
                        let body = serde_json::to_vec(&r).unwrap_or_default();
                        ("/readyz", http::json(status, body, &request_id))
                    }
                    None => ("/readyz", http::problem(&busy(), &request_id)),
                },
                "/metrics" => match self.on_pool(|s| s.refresh_gauges()).await {
                    Some(()) => (
                        "/metrics",
                        http::respond(
                            StatusCode::OK,
                            "text/plain; version=0.0.4",
                            self.service.node.metrics.render(),
                            &request_id,
                        ),
                    ),
                    None => ("/metrics", http::problem(&busy(), &request_id)),
                },
                _ => (
                    "other",
                    http::problem(
                        &Refusal::new(Class::NotFound, "not_found", "no such endpoint"),
                        &request_id,
                    ),
                ),
            };
            self.service
                .node
                .metrics
                .count_request("ops", route, response.status(), started);
            response
        })
    }
}
