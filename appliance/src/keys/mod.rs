//! Key lifecycle and dual control, as pure logic: the states a signing key
//! goes through and what a schedule says to do next ([`lifecycle`]), and
//! officer proposals that need approvals from other officers
//! ([`approvals`]) are pure logic: no I/O, no clock; [`order`] says when
//! officers' signatures make a proposal an order. The key manager
//! ([`manager`]) carries them out on the token and the registry, and builds
//! the view of who signs ([`view`]).

pub mod approvals;
pub mod ceremony;
pub mod lifecycle;
pub mod manager;
pub mod order;
pub mod view;
