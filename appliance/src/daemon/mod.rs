//! The daemon: start the owners and pools, run the listeners, the audit
//! and key threads, signals and reloads, and drain on the way out.

mod run;
mod threads;

pub use self::run::run;
