//! A map whose entries live a fixed time: entries expire in the order they
//! were added (one lifetime per map), so purging pops from the front and
//! costs nothing per request however many are held. Bounded by a count and
//! by the entries' summed weight (bytes, for entries that hold requests).

use std::collections::{HashMap, VecDeque};

/// The map is full of live entries.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Full;

struct Entry<V> {
    expires: i64,
    weight: usize,
    value: V,
}

/// Entries keyed by a random string, each gone `lifetime` seconds after it
/// was added.
pub(super) struct Expiring<V> {
    lifetime: i64,
    capacity: usize,
    max_weight: usize,
    weight: usize,
    entries: HashMap<String, Entry<V>>,
    order: VecDeque<(i64, String)>,
}

impl<V> Expiring<V> {
    /// At most `capacity` entries and `max_weight` summed weight.
    pub(super) fn new(lifetime_s: u64, capacity: usize, max_weight: usize) -> Self {
        Expiring {
            lifetime: i64::try_from(lifetime_s).unwrap_or(i64::MAX),
            capacity,
            max_weight,
            weight: 0,
            entries: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Drops what expired by `now` (and the order's records of keys
    /// removed earlier).
    pub(super) fn purge(&mut self, now: i64) {
        while let Some((expires, key)) = self.order.front() {
            let stale = self
                .entries
                .get(key)
                .is_none_or(|entry| entry.expires != *expires);
            if *expires > now && !stale {
                break;
            }
            if !stale {
                let key = key.clone();
                let _ = self.remove(&key);
            }
            let _ = self.order.pop_front();
        }
    }

    /// Drops the oldest live entry.
    fn evict_oldest(&mut self) {
        while let Some((expires, key)) = self.order.pop_front() {
            if self.entries.get(&key).is_some_and(|e| e.expires == expires) {
                let _ = self.remove(&key);
                return;
            }
        }
    }

    /// Adds `value` under `key` at `now`; returns when it expires.
    pub(super) fn insert(
        &mut self,
        key: String,
        value: V,
        weight: usize,
        now: i64,
    ) -> Result<i64, Full> {
        self.purge(now);
        if self.entries.len() >= self.capacity
            || self.weight.saturating_add(weight) > self.max_weight
        {
            return Err(Full);
        }
        let expires = now.saturating_add(self.lifetime);
        self.order.push_back((expires, key.clone()));
        self.weight += weight;
        let entry = Entry {
            expires,
            weight,
            value,
        };
        if let Some(old) = self.entries.insert(key, entry) {
            self.weight -= old.weight;
        }
        Ok(expires)
    }

    /// Adds `value`, dropping the oldest entry when full: for entries anyone
    /// may ask for (nonces), where a flood must shorten their life, not
    /// refuse everyone.
    pub(super) fn insert_evicting(&mut self, key: String, value: V, now: i64) -> i64 {
        self.purge(now);
        while self.entries.len() >= self.capacity && !self.entries.is_empty() {
            self.evict_oldest();
        }
        self.insert(key, value, 0, now).unwrap_or(now)
    }

    /// The live entry under `key`, with when it expires.
    pub(super) fn get_mut(&mut self, key: &str, now: i64) -> Option<(i64, &mut V)> {
        self.purge(now);
        self.entries
            .get_mut(key)
            .map(|entry| (entry.expires, &mut entry.value))
    }

    /// Removes the entry under `key` (live or not).
    pub(super) fn remove(&mut self, key: &str) -> Option<V> {
        let entry = self.entries.remove(key)?;
        self.weight -= entry.weight;
        Some(entry.value)
    }

    /// Live entries (after a purge).
    pub(super) fn len(&mut self, now: i64) -> usize {
        self.purge(now);
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_after_their_lifetime_and_free_their_place() {
        let mut m = Expiring::new(10, 2, usize::MAX);
        assert_eq!(m.insert("a".into(), 1, 0, 100), Ok(110));
        assert_eq!(m.insert("b".into(), 2, 0, 105), Ok(115));
        assert_eq!(m.insert("c".into(), 3, 0, 106), Err(Full));
        assert_eq!(m.get_mut("a", 109).map(|(_, v)| *v), Some(1));
        assert!(m.get_mut("a", 110).is_none(), "expired at its time");
        assert_eq!(m.insert("c".into(), 3, 0, 110), Ok(120));
        assert_eq!(m.len(114), 2);
        assert_eq!(m.len(115), 1);
    }

    #[test]
    fn a_removed_key_added_again_keeps_its_new_lifetime() {
        let mut m = Expiring::new(10, 4, usize::MAX);
        let _ = m.insert("a".into(), 1, 0, 0);
        assert_eq!(m.remove("a"), Some(1));
        let _ = m.insert("a".into(), 2, 0, 5);
        // The first entry's expiry (10) must not remove the second (15).
        assert_eq!(m.get_mut("a", 12).map(|(_, v)| *v), Some(2));
        assert!(m.get_mut("a", 15).is_none());
    }

    #[test]
    fn weight_is_bounded_and_given_back() {
        let mut m = Expiring::new(10, 100, 1000);
        assert!(m.insert("a".into(), (), 600, 0).is_ok());
        assert_eq!(m.insert("b".into(), (), 500, 0), Err(Full));
        let _ = m.remove("a");
        assert!(m.insert("b".into(), (), 500, 1).is_ok());
        assert!(
            m.insert("c".into(), (), 500, 11).is_ok(),
            "b expired: its weight is back"
        );
    }

    #[test]
    fn a_full_map_of_nonces_drops_the_oldest() {
        let mut m = Expiring::new(10, 2, usize::MAX);
        let _ = m.insert_evicting("a".into(), (), 0);
        let _ = m.insert_evicting("b".into(), (), 1);
        let _ = m.insert_evicting("c".into(), (), 2);
        assert!(m.get_mut("a", 2).is_none(), "the oldest went");
        assert!(m.get_mut("b", 2).is_some() && m.get_mut("c", 2).is_some());
    }
}
