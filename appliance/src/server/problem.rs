//! RFC 9457 problem details: every refusal the service gives, with a stable
//! `code`, the policy `rule` that refused where there is one, and the
//! request id. Messages are written for the client and never carry a key
//! handle, a PIN, a stack trace or a personal datum.

use hyper::StatusCode;
use serde::Serialize;

/// A refusal.
#[derive(Debug, Clone)]
pub struct Problem {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code, e.g. `policy_denied`.
    pub code: &'static str,
    /// Human-readable explanation (no personal data).
    pub detail: String,
    /// The policy or registry rule that refused, if any.
    pub rule: Option<String>,
    /// Seconds to wait before retrying (429/503).
    pub retry_after: Option<u32>,
}

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

impl Problem {
    /// A problem without a rule.
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Problem {
            status,
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

    /// 400 with `code`.
    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::BAD_REQUEST, code, detail)
    }

    /// 503: the key backend or the store cannot serve now.
    pub fn unavailable(code: &'static str, detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::SERVICE_UNAVAILABLE, code, detail).retry_after(1)
    }

    /// The JSON body.
    pub fn body(&self, request_id: &str) -> Vec<u8> {
        let body = Body {
            kind: format!(
                "https://dojang.dev/problems/{}",
                self.code.replace('_', "-")
            ),
            title: self.status.canonical_reason().unwrap_or("Error"),
            status: self.status.as_u16(),
            code: self.code,
            detail: &self.detail,
            rule: self.rule.as_deref(),
            request_id,
        };
        serde_json::to_vec(&body).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carries_code_rule_and_request_id() {
        let p = Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "policy_denied",
            "too young",
        )
        .with_rule("holder.minimum_age");
        let v: serde_json::Value = serde_json::from_slice(&p.body("r-1")).unwrap();
        assert_eq!(v["status"], 422);
        assert_eq!(v["code"], "policy_denied");
        assert_eq!(v["rule"], "holder.minimum_age");
        assert_eq!(v["request_id"], "r-1");
        assert_eq!(v["type"], "https://dojang.dev/problems/policy-denied");
    }
}
