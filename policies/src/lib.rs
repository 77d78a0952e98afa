//! Dojang's issuance policy: pure evaluation of (identity, request, registry
//! facts, now) into a decision. Empty until the policy work lands; the crate
//! exists so the workspace has its fixed shape.

#![forbid(unsafe_code)]
