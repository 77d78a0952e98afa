//! Key lifecycle and dual control, as pure logic: the states a signing key
//! goes through and what a schedule says to do next ([`lifecycle`]), and
//! officer proposals that need approvals from other officers
//! ([`approvals`]). Persisting them and acting on the token is the daemon's
//! job; nothing here does I/O or reads a clock.

pub mod approvals;
pub mod lifecycle;
