//! RFC 9457 problem details: how a [`Refusal`] goes over HTTP, in one
//! place. Every refusal keeps its stable `code`, the rule that refused
//! where there is one, and gets the request id.

use hyper::StatusCode;
use serde::Serialize;

use crate::refusal::{Class, Refusal, Reply};

#[derive(Serialize)]
struct Body<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    code: &'a str,
    detail: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    rule: Option<&'a str>,
    request_id: &'a str,
}

/// The HTTP status of a refusal's class.
pub fn status(class: Class) -> StatusCode {
    match class {
        Class::BadRequest => StatusCode::BAD_REQUEST,
        Class::Unauthorized => StatusCode::UNAUTHORIZED,
        Class::Forbidden => StatusCode::FORBIDDEN,
        Class::NotFound => StatusCode::NOT_FOUND,
        Class::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        Class::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
        Class::Conflict => StatusCode::CONFLICT,
        Class::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        Class::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        Class::Unprocessable => StatusCode::UNPROCESSABLE_ENTITY,
        Class::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
        Class::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        Class::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// The HTTP status of a reply.
pub fn reply_status(reply: Reply) -> StatusCode {
    match reply {
        Reply::Ok | Reply::Log { .. } => StatusCode::OK,
        Reply::Created => StatusCode::CREATED,
        Reply::Accepted => StatusCode::ACCEPTED,
    }
}

/// The problem+json body of `refusal`.
pub fn body(refusal: &Refusal, request_id: &str) -> Vec<u8> {
    let status = status(refusal.class);
    let body = Body {
        kind: format!(
            "https://dojang.dev/problems/{}",
            refusal.code.replace('_', "-")
        ),
        title: status.canonical_reason().unwrap_or("Error"),
        status: status.as_u16(),
        code: refusal.code,
        detail: &refusal.detail,
        rule: refusal.rule.as_deref(),
        request_id,
    };
    serde_json::to_vec(&body).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carries_code_rule_and_request_id() {
        let p = Refusal::new(Class::Unprocessable, "policy_denied", "too young")
            .with_rule("holder.minimum_age");
        let v: serde_json::Value = serde_json::from_slice(&body(&p, "r-1")).unwrap();
        assert_eq!(v["status"], 422);
        assert_eq!(v["code"], "policy_denied");
        assert_eq!(v["rule"], "holder.minimum_age");
        assert_eq!(v["request_id"], "r-1");
        assert_eq!(v["type"], "https://dojang.dev/problems/policy-denied");
    }
}
