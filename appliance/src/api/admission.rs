//! Who may have a request in flight on the mTLS API: each client identity
//! up to its own cap (one certificate cannot take every slot), then a
//! shared pool; officers' and revokers' routes may also use a lane of their
//! own, so a flood of issuance cannot lock them out mid-revocation.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Requests in flight, by lane and by client.
pub struct InFlight {
    shared: Arc<Semaphore>,
    reserved: Arc<Semaphore>,
    per_client: usize,
    clients: Arc<Mutex<HashMap<String, usize>>>,
    shared_size: usize,
    reserved_size: usize,
}

/// A request's place in flight; released when dropped.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    _client: ClientHold,
}

struct ClientHold {
    clients: Arc<Mutex<HashMap<String, usize>>>,
    client: String,
}

impl Drop for ClientHold {
    fn drop(&mut self) {
        if let Ok(mut clients) = self.clients.lock()
            && let Some(n) = clients.get_mut(&self.client)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                let _ = clients.remove(&self.client);
            }
        }
    }
}

/// Why no slot was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// This client has its cap of requests in flight.
    Client,
    /// Every slot its routes may use is taken.
    Node,
}

impl InFlight {
    /// `total` slots of which `reserved` are kept for officer and revoker
    /// routes; at most `per_client` per client identity.
    pub fn new(total: usize, reserved: usize, per_client: usize) -> Self {
        let reserved_size = reserved.min(total.saturating_sub(1));
        let shared_size = total - reserved_size;
        InFlight {
            shared: Arc::new(Semaphore::new(shared_size)),
            reserved: Arc::new(Semaphore::new(reserved_size)),
            per_client: per_client.max(1),
            clients: Arc::new(Mutex::new(HashMap::new())),
            shared_size,
            reserved_size,
        }
    }

    /// A slot for `client`; `privileged` routes (officers', revokers') may
    /// take one from the reserved lane when the shared pool is full.
    pub fn take(&self, client: &str, privileged: bool) -> Result<Slot, Full> {
        let hold = {
            let Ok(mut clients) = self.clients.lock() else {
                return Err(Full::Node);
            };
            let n = clients.entry(client.to_owned()).or_insert(0);
            if *n >= self.per_client {
                // A node with no free slot is full for everyone: say so.
                return Err(if self.shared.available_permits() == 0 {
                    Full::Node
                } else {
                    Full::Client
                });
            }
            *n += 1;
            ClientHold {
                clients: self.clients.clone(),
                client: client.to_owned(),
            }
        };
        let permit = match self.shared.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) if privileged => self
                .reserved
                .clone()
                .try_acquire_owned()
                .map_err(|_| Full::Node)?,
            Err(_) => return Err(Full::Node),
        };
        Ok(Slot {
            _permit: permit,
            _client: hold,
        })
    }

    /// Waits until no request is in flight (the router's closing flag is
    /// what keeps new ones from starting).
    pub async fn drained(&self) {
        let shared = u32::try_from(self.shared_size).unwrap_or(u32::MAX);
        let reserved = u32::try_from(self.reserved_size).unwrap_or(u32::MAX);
        let _ = tokio::join!(
            self.shared.acquire_many(shared),
            self.reserved.acquire_many(reserved)
        );
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn one_client_stops_at_its_cap_and_others_go_on() {
        let slots = InFlight::new(10, 2, 3);
        let held: Vec<Slot> = (0..3)
            .map(|_| slots.take("abuser", false).unwrap())
            .collect();
        assert_eq!(slots.take("abuser", false).err(), Some(Full::Client));
        assert!(slots.take("other", false).is_ok());
        drop(held);
        assert!(slots.take("abuser", false).is_ok(), "released on drop");
    }

    #[test]
    fn the_reserved_lane_is_for_privileged_routes_only() {
        let slots = InFlight::new(4, 1, 10);
        let held: Vec<Slot> = (0..3)
            .map(|_| slots.take("issuer", false).unwrap())
            .collect();
        assert_eq!(slots.take("issuer2", false).err(), Some(Full::Node));
        let officer = slots.take("officer", true).unwrap();
        assert_eq!(slots.take("officer2", true).err(), Some(Full::Node));
        drop((held, officer));
        assert!(slots.take("issuer2", false).is_ok());
    }

    #[test]
    fn drained_waits_for_every_slot() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let slots = InFlight::new(4, 1, 10);
        let slot = slots.take("officer", true).unwrap();
        runtime.block_on(async {
            let waited =
                tokio::time::timeout(std::time::Duration::from_millis(50), slots.drained()).await;
            assert!(waited.is_err(), "drained with a request in flight");
            drop(slot);
            tokio::time::timeout(std::time::Duration::from_secs(1), slots.drained())
                .await
                .unwrap();
        });
    }
}
