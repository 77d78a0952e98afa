//! What an operation answers, before any transport: a reply with its JSON
//! body, or a refusal with its class, a stable `code`, the rule that
//! refused where there is one, and a message written for the client (never
//! a key handle, a PIN, a stack trace or a personal datum). The HTTP layer
//! turns both into responses in one place (`http::problem`).

/// How an operation succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// Done.
    Ok,
    /// Something new exists (a credential).
    Created,
    /// Taken up, not yet done (a proposal awaiting approvals).
    Accepted,
    /// Done, with a part of the tiled audit log (not JSON): its media type
    /// and how long caches may keep it.
    Log {
        /// `text/plain; charset=utf-8` or `application/octet-stream`.
        media_type: &'static str,
        /// Seconds.
        max_age: u32,
    },
}

/// What kind of refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// The request is malformed.
    BadRequest,
    /// No client identity.
    Unauthorized,
    /// The client's role does not allow it.
    Forbidden,
    /// No such thing.
    NotFound,
    /// Not a method of this route.
    MethodNotAllowed,
    /// The body did not arrive in time.
    RequestTimeout,
    /// It conflicts with the registry's state.
    Conflict,
    /// The body is too large.
    PayloadTooLarge,
    /// The body is not JSON.
    UnsupportedMediaType,
    /// Well-formed, but the policy refuses it.
    Unprocessable,
    /// Over a rate limit.
    TooManyRequests,
    /// A bug or a corrupt store.
    Internal,
    /// The key backend or the store cannot serve now.
    Unavailable,
}

impl Class {
    /// The client's doing.
    pub fn is_client_error(self) -> bool {
        !self.is_server_error()
    }

    /// Ours.
    pub fn is_server_error(self) -> bool {
        matches!(self, Class::Internal | Class::Unavailable)
    }
}

/// A refusal.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// Its class.
    pub class: Class,
    /// Stable machine-readable code, e.g. `policy_denied`.
    pub code: &'static str,
    /// Human-readable explanation (no personal data).
    pub detail: String,
    /// The policy or registry rule that refused, if any.
    pub rule: Option<String>,
    /// Seconds to wait before retrying (rate limits, unavailability).
    pub retry_after: Option<u32>,
}

impl Refusal {
    /// A refusal without a rule.
    pub fn new(class: Class, code: &'static str, detail: impl Into<String>) -> Self {
        Refusal {
            class,
            code,
            detail: detail.into(),
            rule: None,
            retry_after: None,
        }
    }

    /// Names the rule that refused.
    pub fn with_rule(mut self, rule: impl Into<String>) -> Self {
        self.rule = Some(rule.into());
        self
    }

    /// Asks the client to come back after `seconds`.
    pub fn retry_after(mut self, seconds: u32) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// A malformed request.
    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        Refusal::new(Class::BadRequest, code, detail)
    }

    /// The key backend or the store cannot serve now: retry in a second.
    pub fn unavailable(code: &'static str, detail: impl Into<String>) -> Self {
        Refusal::new(Class::Unavailable, code, detail).retry_after(1)
    }

    /// A bug: the cause is logged, the client learns nothing more.
    pub fn internal() -> Self {
        Refusal::new(Class::Internal, "internal", "internal error")
    }
}

/// A reply and its JSON body, or a refusal.
pub type Answer = Result<(Reply, Vec<u8>), Refusal>;
