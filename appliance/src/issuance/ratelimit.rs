//! Requests per client per minute, counted on this node (the policy's
//! `limits.requests_per_minute` decides). Only authenticated identities
//! named in the policy are counted, so the map stays as small as the policy.

use std::collections::HashMap;
use std::sync::Mutex;

/// Fixed one-minute windows per client.
#[derive(Default)]
pub(crate) struct RateCounter {
    windows: Mutex<HashMap<String, (i64, u32)>>,
}

impl RateCounter {
    /// Counts a request from `client` at `unix` seconds; returns how many it
    /// made earlier in the same minute.
    pub(crate) fn hit(&self, client: &str, unix: i64) -> u32 {
        let minute = unix.div_euclid(60);
        let Ok(mut windows) = self.windows.lock() else {
            return 0;
        };
        let entry = windows.entry(client.to_owned()).or_insert((minute, 0));
        if entry.0 != minute {
            *entry = (minute, 0);
        }
        let before = entry.1;
        entry.1 = entry.1.saturating_add(1);
        before
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_client_per_minute() {
        let r = RateCounter::default();
        assert_eq!(r.hit("a", 120), 0);
        assert_eq!(r.hit("a", 179), 1);
        assert_eq!(r.hit("b", 179), 0);
        assert_eq!(r.hit("a", 180), 0);
    }
}
