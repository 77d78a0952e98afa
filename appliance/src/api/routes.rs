//! The API's routes and the one table of who may call each: the router
//! checks the role here, once, before a body is read or a job queued.

use dojang_policies::{Policy, Role};

use crate::http::identity::ClientCa;
use crate::refusal::{Class, Refusal};

/// A request, routed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Route {
    /// `POST /v1/credentials`.
    Issue,
    /// `POST /v1/offers`: an OpenID4VCI offer for a holder's wallet.
    Offer,
    /// `GET /v1/credentials/{id}`.
    Metadata(String),
    /// `POST /v1/credentials/{id}/revoke|suspend|reinstate`.
    ChangeState(String, &'static str),
    /// `POST /v1/credentials/{id}/refresh`.
    Refresh(String),
    /// `GET /v1/audit/checkpoint`.
    AuditCheckpoint,
    /// `GET /v1/audit/entries?…`.
    AuditEntries,
    /// `GET /v1/audit/proof/inclusion?…`.
    AuditInclusion,
    /// `GET /v1/audit/proof/consistency?…`.
    AuditConsistency,
    /// `GET /v1/audit/log/{path}`: the tiled log with its entry bundles.
    AuditLog(String),
    /// `GET /v1/keys`.
    Keys,
    /// `POST /v1/keys/rotate`, `/v1/keys/{label}/…`, `/v1/pki/iaca`,
    /// `/v1/policy/change`: an officer's proposal.
    Propose {
        /// The route's name for metrics and logs.
        name: &'static str,
        /// `rotate`, `revoke`, `activate`, `retire`, `destroy`, `iaca`, `policy`.
        action: &'static str,
        /// The key, for the routes that name one.
        label: Option<String>,
    },
    /// `GET /v1/approvals`.
    Approvals,
    /// `POST /v1/approvals/{id}/approve|reject`.
    Decide {
        /// The proposal.
        id: String,
        /// Approve, or reject.
        approve: bool,
    },
    /// `POST /v1/ceremony/requests`: a request for the offline IACA.
    CeremonyRequest,
    /// `POST /v1/ceremony/responses`: the offline ceremony's response.
    CeremonyResponse,
    /// A known prefix with another method.
    MethodNotAllowed,
    /// Nothing here.
    NotFound,
}

/// Who may call a route, and what a refusal of the role is audited as.
struct Access {
    roles: &'static [Role],
    audited: Option<&'static str>,
}

fn propose(name: &'static str, action: &'static str, label: Option<&str>) -> Route {
    Route::Propose {
        name,
        action,
        label: label.map(str::to_owned),
    }
}

impl Route {
    /// Routes `method` and the path's segments.
    pub(super) fn parse(method: &hyper::Method, segments: &[&str]) -> Route {
        use hyper::Method;
        match (method, segments) {
            (&Method::POST, ["v1", "credentials"]) => Route::Issue,
            (&Method::POST, ["v1", "offers"]) => Route::Offer,
            (&Method::GET, ["v1", "credentials", id]) => Route::Metadata((*id).to_owned()),
            (&Method::POST, ["v1", "credentials", id, "revoke"]) => {
                Route::ChangeState((*id).to_owned(), "revoke")
            }
            (&Method::POST, ["v1", "credentials", id, "suspend"]) => {
                Route::ChangeState((*id).to_owned(), "suspend")
            }
            (&Method::POST, ["v1", "credentials", id, "reinstate"]) => {
                Route::ChangeState((*id).to_owned(), "reinstate")
            }
            (&Method::POST, ["v1", "credentials", id, "refresh"]) => {
                Route::Refresh((*id).to_owned())
            }
            (&Method::GET, ["v1", "audit", "checkpoint"]) => Route::AuditCheckpoint,
            (&Method::GET, ["v1", "audit", "entries"]) => Route::AuditEntries,
            (&Method::GET, ["v1", "audit", "proof", "inclusion"]) => Route::AuditInclusion,
            (&Method::GET, ["v1", "audit", "proof", "consistency"]) => Route::AuditConsistency,
            (&Method::GET, ["v1", "audit", "log", path @ ..]) if !path.is_empty() => {
                Route::AuditLog(path.join("/"))
            }
            (&Method::GET, ["v1", "keys"]) => Route::Keys,
            (&Method::POST, ["v1", "keys", "rotate"]) => propose("/v1/keys/rotate", "rotate", None),
            (&Method::POST, ["v1", "keys", label, "revoke"]) => {
                propose("/v1/keys/{label}/revoke", "revoke", Some(label))
            }
            (&Method::POST, ["v1", "keys", label, "activate"]) => {
                propose("/v1/keys/{label}/activate", "activate", Some(label))
            }
            (&Method::POST, ["v1", "keys", label, "retire"]) => {
                propose("/v1/keys/{label}/retire", "retire", Some(label))
            }
            (&Method::POST, ["v1", "keys", label, "destroy"]) => {
                propose("/v1/keys/{label}/destroy", "destroy", Some(label))
            }
            (&Method::POST, ["v1", "pki", "iaca"]) => propose("/v1/pki/iaca", "iaca", None),
            (&Method::POST, ["v1", "policy", "change"]) => {
                propose("/v1/policy/change", "policy", None)
            }
            (&Method::GET, ["v1", "approvals"]) => Route::Approvals,
            (&Method::POST, ["v1", "ceremony", "requests"]) => Route::CeremonyRequest,
            (&Method::POST, ["v1", "ceremony", "responses"]) => Route::CeremonyResponse,
            (&Method::POST, ["v1", "approvals", id, step @ ("approve" | "reject")]) => {
                Route::Decide {
                    id: (*id).to_owned(),
                    approve: *step == "approve",
                }
            }
            (
                _,
                [
                    "v1",
                    "credentials" | "offers" | "keys" | "approvals" | "policy" | "pki" | "ceremony",
                    ..,
                ],
            ) => Route::MethodNotAllowed,
            _ => Route::NotFound,
        }
    }

    /// The route's name in metrics and logs (bounded: no ids).
    pub(super) fn name(&self) -> &'static str {
        match self {
            Route::Issue => "/v1/credentials",
            Route::Offer => "/v1/offers",
            Route::Metadata(_) => "/v1/credentials/{id}",
            Route::ChangeState(_, "revoke") => "/v1/credentials/{id}/revoke",
            Route::ChangeState(_, "suspend") => "/v1/credentials/{id}/suspend",
            Route::ChangeState(..) => "/v1/credentials/{id}/reinstate",
            Route::Refresh(_) => "/v1/credentials/{id}/refresh",
            Route::AuditCheckpoint => "/v1/audit/checkpoint",
            Route::AuditEntries => "/v1/audit/entries",
            Route::AuditInclusion => "/v1/audit/proof/inclusion",
            Route::AuditConsistency => "/v1/audit/proof/consistency",
            Route::AuditLog(_) => "/v1/audit/log/{path}",
            Route::Keys => "/v1/keys",
            Route::Propose { name, .. } => name,
            Route::Approvals => "/v1/approvals",
            Route::Decide { approve: true, .. } => "/v1/approvals/{id}/approve",
            Route::Decide { .. } => "/v1/approvals/{id}/reject",
            Route::CeremonyRequest => "/v1/ceremony/requests",
            Route::CeremonyResponse => "/v1/ceremony/responses",
            Route::MethodNotAllowed | Route::NotFound => "other",
        }
    }

    /// The action logged with a change.
    pub(super) fn action(&self) -> Option<String> {
        match self {
            Route::ChangeState(_, action) => Some((*action).to_owned()),
            Route::Refresh(_) => Some("refresh".to_owned()),
            Route::Propose { action, .. } => Some((*action).to_owned()),
            Route::Decide { approve, .. } => {
                Some(if *approve { "approve" } else { "reject" }.to_owned())
            }
            _ => None,
        }
    }

    /// Whether the route changes something: a node whose policy officers
    /// did not adopt refuses every change.
    pub(super) fn changes(&self) -> bool {
        matches!(
            self,
            Route::Issue
                | Route::Offer
                | Route::ChangeState(..)
                | Route::Refresh(_)
                | Route::Propose { .. }
                | Route::Decide { .. }
                | Route::CeremonyRequest
                | Route::CeremonyResponse
        )
    }

    /// Whether the route reads the audit log (proofs can be long): such
    /// requests run on the audit pool, not the signing pool.
    pub(super) fn audit_read(&self) -> bool {
        matches!(
            self,
            Route::AuditCheckpoint
                | Route::AuditEntries
                | Route::AuditInclusion
                | Route::AuditConsistency
                | Route::AuditLog(_)
        )
    }

    /// Whether the route is officers' or revokers' work, which may use the
    /// lane kept for them when issuance fills the shared slots.
    pub(super) fn privileged(&self) -> bool {
        matches!(
            self,
            Route::ChangeState(..)
                | Route::Propose { .. }
                | Route::Approvals
                | Route::Decide { .. }
                | Route::CeremonyRequest
                | Route::CeremonyResponse
        )
    }

    /// The role table.
    fn access(&self) -> Access {
        use Role::{Auditor, Issuer, Officer, Revoker};
        let (roles, audited): (&'static [Role], _) = match self {
            Route::Issue => (&[Issuer], Some("issue")),
            Route::Offer => (&[Issuer], Some("offer")),
            Route::Metadata(_) => (&[Issuer, Revoker, Auditor], None),
            Route::ChangeState(_, action) => (&[Revoker], Some(*action)),
            Route::Refresh(_) => (&[Issuer], Some("refresh")),
            Route::AuditCheckpoint
            | Route::AuditEntries
            | Route::AuditInclusion
            // A refused read of the log is itself an entry: who tried to
            // read what they may not (once a minute per client).
            | Route::AuditConsistency
            | Route::AuditLog(_) => (&[Auditor], Some("audit.read")),
            Route::Keys => (&[Officer, Auditor], None),
            Route::Propose { .. } => (&[Officer], Some("officers.propose")),
            Route::Approvals => (&[Officer], None),
            Route::Decide { approve: true, .. } => (&[Officer], Some("officers.approve")),
            Route::Decide { .. } => (&[Officer], Some("officers.reject")),
            Route::CeremonyRequest => (&[Officer], Some("ceremony.request")),
            Route::CeremonyResponse => (&[Officer], Some("ceremony.import")),
            Route::MethodNotAllowed | Route::NotFound => (&[], None),
        };
        Access { roles, audited }
    }

    /// `Ok` if `client` holds a role of the route; else the refusal, and
    /// the action to audit it as (if refusals of this route are audited).
    pub(super) fn admit(
        &self,
        policy: &Policy,
        client: &str,
        ca: ClientCa,
    ) -> Result<(), (Refusal, Option<&'static str>)> {
        let access = self.access();
        let held: Vec<Role> = access
            .roles
            .iter()
            .copied()
            .filter(|role| policy.has_role(client, *role))
            .collect();
        if held.iter().any(|role| ca_grants(ca, *role)) {
            return Ok(());
        }
        if !held.is_empty() {
            let detail = if ca == ClientCa::Services {
                format!(
                    "client {client:?}: the officer role is taken only from a certificate of the officers' CA"
                )
            } else {
                format!(
                    "client {client:?}: a certificate of the officers' CA carries the officer role only"
                )
            };
            let refusal =
                Refusal::new(Class::Forbidden, "forbidden", detail).with_rule("client.ca");
            return Err((refusal, access.audited));
        }
        let detail = match access.roles {
            [Role::Officer, Role::Auditor] => {
                format!("client {client:?} has neither the officer nor the auditor role")
            }
            roles => format!(
                "client {client:?} does not have the {} role",
                roles
                    .first()
                    .map(|r| format!("{r:?}").to_lowercase())
                    .unwrap_or_default()
            ),
        };
        let refusal = Refusal::new(Class::Forbidden, "forbidden", detail).with_rule("client.role");
        Err((refusal, access.audited))
    }
}

/// Whether a certificate from `ca` may carry `role`: with a separate
/// officers' CA, it alone makes officers, and makes nothing else.
fn ca_grants(ca: ClientCa, role: Role) -> bool {
    match ca {
        ClientCa::Shared => true,
        ClientCa::Officers => role == Role::Officer,
        ClientCa::Services => role != Role::Officer,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_but_the_unknown_ones_names_a_role() {
        let segments: &[(&hyper::Method, &[&str])] = &[
            (&hyper::Method::POST, &["v1", "credentials"]),
            (&hyper::Method::POST, &["v1", "offers"]),
            (&hyper::Method::GET, &["v1", "credentials", "x"]),
            (&hyper::Method::POST, &["v1", "credentials", "x", "revoke"]),
            (&hyper::Method::POST, &["v1", "credentials", "x", "refresh"]),
            (&hyper::Method::GET, &["v1", "audit", "entries"]),
            (&hyper::Method::GET, &["v1", "audit", "log", "checkpoint"]),
            (&hyper::Method::GET, &["v1", "keys"]),
            (&hyper::Method::POST, &["v1", "keys", "k", "destroy"]),
            (&hyper::Method::POST, &["v1", "approvals", "p", "reject"]),
            (&hyper::Method::POST, &["v1", "ceremony", "requests"]),
            (&hyper::Method::POST, &["v1", "ceremony", "responses"]),
        ];
        for (method, path) in segments {
            let route = Route::parse(method, path);
            assert!(!route.access().roles.is_empty(), "{route:?}");
            assert_ne!(route.name(), "other", "{route:?}");
        }
        assert_eq!(
            Route::parse(&hyper::Method::DELETE, &["v1", "keys"]),
            Route::MethodNotAllowed
        );
        assert_eq!(Route::parse(&hyper::Method::GET, &["v2"]), Route::NotFound);
    }
}
