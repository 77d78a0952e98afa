//! What the wallet listener holds between steps, in this node's memory
//! only: offers (the holder data the counter sent, until the wallet gets an
//! access token, then until its credential is issued), access tokens,
//! nonces and notification ids. None of it reaches the registry — a
//! database reader learns nothing of a pending offer — and a restart drops
//! pending offers (the counter makes another). Once a token is spent only
//! who made the offer is kept, never the holder data.

use std::sync::{Arc, Mutex, MutexGuard};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;

use super::expiring::{Expiring, Full};
use crate::config::WalletListener;
use crate::node::Caller;

/// Who made an offer, under which policy, for which profile: what the
/// audit entries of its steps name.
pub(super) struct About {
    /// The counter's client, on whose behalf the credential is issued.
    pub(super) client: Caller,
    /// The profile: the one credential configuration offered.
    pub(super) profile: String,
    /// The policy that allowed the offer.
    pub(super) policy_hash: String,
}

/// An offer the counter made: the issuance request without a phone key.
pub(super) struct Offer {
    /// The request's members (holder data among them): memory only.
    pub(super) request: serde_json::Map<String, serde_json::Value>,
    /// Who made it.
    pub(super) about: Arc<About>,
}

struct PendingOffer {
    offer: Arc<Offer>,
    code: String,
    tx_code: String,
    attempts_left: u32,
}

/// Proof or request errors a token survives before it is spent.
const TOKEN_TRIES: u32 = 5;

/// An access token's state: a credential request holds it while it runs.
enum TokenUse {
    Ready { offer: Arc<Offer>, tries_left: u32 },
    InUse { offer: Arc<Offer>, tries_left: u32 },
    Spent,
}

struct Token {
    about: Arc<About>,
    state: TokenUse,
}

/// How a credential request ended, for its token.
#[derive(Clone, Copy)]
pub(super) enum Outcome<'a> {
    /// Issued with this credential id: the token is spent.
    Issued(&'a str),
    /// Refused for something the wallet can correct (a proof, a nonce, a
    /// busy node): one of the token's tries.
    Retry,
    /// Refused for good (the policy, once the phone was known; a server
    /// error after signing may have committed): the token is spent.
    Final,
}

/// A credential issued to a wallet, for its notification.
pub(super) struct Issued {
    /// The registry's credential id.
    pub(super) credential_id: String,
    /// Who made the offer.
    pub(super) about: Arc<About>,
    token: String,
}

/// A new offer: where the wallet fetches it and what the holder types.
pub(super) struct NewOffer {
    /// The id in the offer's URI.
    pub(super) handle: String,
    /// The transaction code (digits) the holder is told at the counter.
    pub(super) tx_code: String,
    /// Unix seconds the pre-authorized code stops working.
    pub(super) expires: i64,
}

/// What a pre-authorized code and transaction code are worth.
pub(super) enum Checked {
    /// Both right: [`Book::grant`] may give a token.
    Right(Arc<About>),
    /// No such code (never issued, redeemed, expired or dead).
    Unknown,
    /// The transaction code was wrong; `dead` when it was the last try.
    WrongTxCode {
        /// Who made the offer.
        about: Arc<About>,
        /// No try is left: the code is gone.
        dead: bool,
    },
}

/// Why an access token does not open the credential endpoint.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum TokenRefused {
    /// Unknown or expired.
    Invalid,
    /// A credential request with it is running.
    Busy,
    /// Its credential was issued, or it was refused for good.
    Spent,
}

struct Maps {
    offers: Expiring<PendingOffer>,
    handles: Expiring<String>,
    tokens: Expiring<Token>,
    nonces: Expiring<()>,
    issued: Expiring<Issued>,
}

/// The wallet's pending state.
pub(super) struct Book {
    maps: Mutex<Maps>,
    tx_code_attempts: u32,
}

/// Equal, in time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && openssl::memcmp::eq(a, b)
}

/// A random token of 32 bytes, base64url.
pub(super) fn random_token() -> Result<String, crate::credential::CredentialError> {
    crate::credential::random::<32>().map(|b| B64URL.encode(b))
}

/// Six random digits (rejection sampling: no digit more likely).
fn random_digits() -> Result<String, crate::credential::CredentialError> {
    loop {
        let n = u32::from_be_bytes(crate::credential::random::<4>()?);
        if n < 4_294_000_000 {
            return Ok(format!("{:06}", n % 1_000_000));
        }
    }
}

impl Book {
    /// An empty book with the listener's lifetimes and limits.
    pub(super) fn new(settings: &WalletListener) -> Self {
        let (cap, any) = (settings.max_pending, usize::MAX);
        Book {
            maps: Mutex::new(Maps {
                offers: Expiring::new(settings.offer_ttl_s, cap, settings.max_pending_bytes),
                handles: Expiring::new(settings.offer_ttl_s, cap, any),
                tokens: Expiring::new(settings.access_token_ttl_s, cap, any),
                nonces: Expiring::new(settings.nonce_ttl_s, cap, any),
                // A wallet notifies right after it stored the credential.
                issued: Expiring::new(settings.access_token_ttl_s, cap, any),
            }),
            tx_code_attempts: settings.tx_code_attempts,
        }
    }

    fn maps(&self) -> MutexGuard<'_, Maps> {
        // A panic elsewhere cannot leave the maps half-changed (each
        // change is one insert or remove): keep serving.
        self.maps.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drops everything expired (holder data first of all).
    pub(super) fn purge(&self, now: i64) {
        let mut maps = self.maps();
        maps.offers.purge(now);
        maps.handles.purge(now);
        maps.tokens.purge(now);
        maps.nonces.purge(now);
        maps.issued.purge(now);
    }

    /// Holds `offer` (whose request took `bytes`) until it is redeemed or
    /// expires.
    pub(super) fn add_offer(&self, offer: Offer, bytes: usize, now: i64) -> Result<NewOffer, Full> {
        let (Ok(code), Ok(handle), Ok(tx_code)) = (random_token(), random_token(), random_digits())
        else {
            return Err(Full);
        };
        let mut maps = self.maps();
        let pending = PendingOffer {
            offer: Arc::new(offer),
            code: code.clone(),
            tx_code: tx_code.clone(),
            attempts_left: self.tx_code_attempts,
        };
        let expires = maps.offers.insert(code.clone(), pending, bytes, now)?;
        if let Err(full) = maps.handles.insert(handle.clone(), code.clone(), 0, now) {
            let _ = maps.offers.remove(&code);
            return Err(full);
        }
        Ok(NewOffer {
            handle,
            tx_code,
            expires,
        })
    }

    /// The pre-authorized code, profile and expiry of the offer at `handle`.
    pub(super) fn offer_at(&self, handle: &str, now: i64) -> Option<(String, String, i64)> {
        let mut maps = self.maps();
        let code = maps.handles.get_mut(handle, now)?.1.clone();
        let (expires, pending) = maps.offers.get_mut(&code, now)?;
        Some((
            pending.code.clone(),
            pending.offer.about.profile.clone(),
            expires,
        ))
    }

    /// Checks a pre-authorized code and the holder's transaction code: a
    /// wrong one costs one of the offer's tries at once, the last one kills
    /// the code.
    pub(super) fn check_code(&self, code: &str, tx_code: &str, now: i64) -> Checked {
        let mut maps = self.maps();
        let Some((_, pending)) = maps.offers.get_mut(code, now) else {
            return Checked::Unknown;
        };
        let about = pending.offer.about.clone();
        if same(pending.tx_code.as_bytes(), tx_code.as_bytes()) {
            return Checked::Right(about);
        }
        pending.attempts_left = pending.attempts_left.saturating_sub(1);
        let dead = pending.attempts_left == 0;
        if dead {
            let _ = maps.offers.remove(code);
        }
        Checked::WrongTxCode { about, dead }
    }

    /// Redeems a checked code (once: `None` if another request did first):
    /// the offer moves to a new access token.
    pub(super) fn grant(&self, code: &str, now: i64) -> Result<Option<String>, Full> {
        let token = random_token().map_err(|_| Full)?;
        let mut maps = self.maps();
        let Some(pending) = maps.offers.remove(code) else {
            return Ok(None);
        };
        let offer = pending.offer;
        let about = offer.about.clone();
        let state = TokenUse::Ready {
            offer,
            tries_left: TOKEN_TRIES,
        };
        let _ = maps
            .tokens
            .insert(token.clone(), Token { about, state }, 0, now)?;
        Ok(Some(token))
    }

    /// A nonce for one proof; when too many are held the oldest goes.
    pub(super) fn new_nonce(&self, now: i64) -> Result<String, Full> {
        let nonce = random_token().map_err(|_| Full)?;
        let _ = self.maps().nonces.insert_evicting(nonce.clone(), (), now);
        Ok(nonce)
    }

    /// Takes a nonce: true once, while it lives.
    pub(super) fn take_nonce(&self, nonce: &str, now: i64) -> bool {
        let mut maps = self.maps();
        maps.nonces.get_mut(nonce, now).is_some() && maps.nonces.remove(nonce).is_some()
    }

    /// The offer of a usable access token, which is held until
    /// [`Self::finish`].
    pub(super) fn begin(&self, token: &str, now: i64) -> Result<Arc<Offer>, TokenRefused> {
        let mut maps = self.maps();
        let (_, t) = maps
            .tokens
            .get_mut(token, now)
            .ok_or(TokenRefused::Invalid)?;
        match std::mem::replace(&mut t.state, TokenUse::Spent) {
            TokenUse::Ready { offer, tries_left } => {
                t.state = TokenUse::InUse {
                    offer: offer.clone(),
                    tries_left,
                };
                Ok(offer)
            }
            busy @ TokenUse::InUse { .. } => {
                t.state = busy;
                Err(TokenRefused::Busy)
            }
            TokenUse::Spent => Err(TokenRefused::Spent),
        }
    }

    /// Ends a credential request: a notification id if it issued.
    pub(super) fn finish(&self, token: &str, outcome: Outcome<'_>, now: i64) -> Option<String> {
        let mut maps = self.maps();
        let (_, t) = maps.tokens.get_mut(token, now)?;
        let previous = std::mem::replace(&mut t.state, TokenUse::Spent);
        let about = t.about.clone();
        match (outcome, previous) {
            (Outcome::Retry, TokenUse::InUse { offer, tries_left }) if tries_left > 1 => {
                t.state = TokenUse::Ready {
                    offer,
                    tries_left: tries_left - 1,
                };
                None
            }
            (Outcome::Issued(credential_id), _) => {
                let id = random_token().ok()?;
                let record = Issued {
                    credential_id: credential_id.to_owned(),
                    about,
                    token: token.to_owned(),
                };
                let _ = maps.issued.insert(id.clone(), record, 0, now).ok()?;
                Some(id)
            }
            _ => None,
        }
    }

    /// The credential a notification id names, for the token that got it
    /// (once).
    pub(super) fn notified(&self, id: &str, token: &str, now: i64) -> Option<Issued> {
        let mut maps = self.maps();
        let (_, issued) = maps.issued.get_mut(id, now)?;
        if !same(issued.token.as_bytes(), token.as_bytes()) {
            return None;
        }
        maps.issued.remove(id)
    }

    /// (offers, tokens, nonces) held now.
    pub(super) fn pending(&self, now: i64) -> (usize, usize, usize) {
        let mut maps = self.maps();
        (
            maps.offers.len(now),
            maps.tokens.len(now),
            maps.nonces.len(now),
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    fn settings() -> WalletListener {
        toml::from_str(
            "listen = \"127.0.0.1:1\"\nbase_url = \"https://w.example\"\n\
             certificate = \"c\"\nprivate_key = \"k\"\ntx_code_attempts = 2",
        )
        .unwrap()
    }

    fn offer() -> Offer {
        Offer {
            request: serde_json::Map::new(),
            about: Arc::new(About {
                profile: "mdoc".into(),
                client: Caller::new("spiffe://t/counter".into(), b"cert"),
                policy_hash: "h".into(),
            }),
        }
    }

    fn token(book: &Book) -> String {
        let new = book.add_offer(offer(), 10, 0).unwrap();
        let code = book.offer_at(&new.handle, 0).unwrap().0;
        assert!(matches!(
            book.check_code(&code, &new.tx_code, 1),
            Checked::Right(_)
        ));
        let token = book.grant(&code, 1).unwrap().unwrap();
        assert!(book.grant(&code, 1).unwrap().is_none(), "once");
        assert!(matches!(
            book.check_code(&code, &new.tx_code, 2),
            Checked::Unknown
        ));
        assert!(
            book.offer_at(&new.handle, 2).is_none(),
            "a redeemed offer is gone"
        );
        token
    }

    #[test]
    fn a_token_gives_one_credential_and_one_notification() {
        let book = Book::new(&settings());
        let token = token(&book);
        assert!(book.begin(&token, 3).is_ok());
        assert_eq!(book.begin(&token, 3).err(), Some(TokenRefused::Busy));
        assert!(book.finish(&token, Outcome::Retry, 4).is_none());
        assert!(
            book.begin(&token, 5).is_ok(),
            "ready again after a proof error"
        );
        let id = book.finish(&token, Outcome::Issued("cred"), 6).unwrap();
        assert_eq!(book.begin(&token, 7).err(), Some(TokenRefused::Spent));
        assert!(book.notified(&id, "another token", 8).is_none());
        assert_eq!(book.notified(&id, &token, 8).unwrap().credential_id, "cred");
        assert!(book.notified(&id, &token, 9).is_none(), "once");
        assert_eq!(book.begin(&token, 301).err(), Some(TokenRefused::Invalid));
    }

    #[test]
    fn a_token_is_spent_by_a_final_refusal_or_its_last_try() {
        let book = Book::new(&settings());
        let token = token(&book);
        for _ in 1..TOKEN_TRIES {
            assert!(book.begin(&token, 3).is_ok());
            let _ = book.finish(&token, Outcome::Retry, 3);
        }
        assert!(book.begin(&token, 3).is_ok());
        let _ = book.finish(&token, Outcome::Retry, 3);
        assert_eq!(book.begin(&token, 3).err(), Some(TokenRefused::Spent));
        let token = super::tests::token(&book);
        assert!(book.begin(&token, 3).is_ok());
        let _ = book.finish(&token, Outcome::Final, 3);
        assert_eq!(book.begin(&token, 3).err(), Some(TokenRefused::Spent));
    }

    #[test]
    fn wrong_transaction_codes_kill_the_offer() {
        let book = Book::new(&settings());
        let new = book.add_offer(offer(), 10, 0).unwrap();
        let code = book.offer_at(&new.handle, 0).unwrap().0;
        let wrong = if new.tx_code == "000000" {
            "000001"
        } else {
            "000000"
        };
        assert!(matches!(
            book.check_code(&code, wrong, 1),
            Checked::WrongTxCode { dead: false, .. }
        ));
        assert!(matches!(
            book.check_code(&code, "", 1),
            Checked::WrongTxCode { dead: true, .. }
        ));
        assert!(matches!(
            book.check_code(&code, &new.tx_code, 2),
            Checked::Unknown
        ));
    }

    #[test]
    fn codes_and_nonces_expire() {
        let book = Book::new(&settings());
        let new = book.add_offer(offer(), 10, 0).unwrap();
        let code = book.offer_at(&new.handle, 0).unwrap().0;
        assert!(matches!(
            book.check_code(&code, &new.tx_code, 600),
            Checked::Unknown
        ));
        let nonce = book.new_nonce(0).unwrap();
        assert!(!book.take_nonce(&nonce, 300), "expired");
        let nonce = book.new_nonce(0).unwrap();
        assert!(book.take_nonce(&nonce, 1));
        assert!(!book.take_nonce(&nonce, 1), "used");
        assert!(!book.take_nonce("never issued", 1));
    }
}
