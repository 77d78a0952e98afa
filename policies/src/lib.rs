//! Dojang's issuance policy: pure evaluation of (identity, request, registry
//! facts, now) into a decision. Nothing here does I/O or reads a clock: the
//! caller passes "now" in.
//!
//! So far: the calendar rules of the programme ([`calendar`]) and resident
//! registration numbers ([`resident_number`]).

#![forbid(unsafe_code)]

pub mod calendar;
pub mod resident_number;
