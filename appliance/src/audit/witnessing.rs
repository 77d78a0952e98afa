//! This node's side of c2sp.org/tlog-witness: each new checkpoint goes to
//! the configured witnesses with a consistency proof from the size each
//! holds; the cosignatures that verify under their keys are added to the
//! stored checkpoint (so every node, the public `/checkpoint` and the
//! mirror publish them). Whether the latest checkpoint has its quorum shows
//! in readiness and in metrics; a witness refusing a checkpoint as a fork
//! is counted and logged as one. One witness's exchange is
//! `witness_client.rs`'s.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::checkpoint::Checkpoint;
use super::witness_client::{NotCosigned, Witness};
use crate::config::AuditSettings;
use crate::metrics::Metrics;
use crate::node::LoadError;
use crate::store::Registry;

/// How soon a checkpoint that missed a witness is sent again (doubled
/// after each round that missed one, up to [`MAX_RETRY`]).
const RETRY: Duration = Duration::from_secs(2);
const MAX_RETRY: Duration = Duration::from_secs(16);

/// What the last round made of the latest checkpoint.
#[derive(Debug, Clone, Default)]
struct Round {
    size: u64,
    cosigned: Vec<String>,
    refused: Vec<(String, String)>,
    at: Option<Instant>,
    /// Rounds in a row that missed a witness.
    misses: u32,
}

/// The witnesses of this node's log.
pub struct Witnesses {
    witnesses: Vec<Witness>,
    quorum: usize,
    required: bool,
    last: Mutex<Round>,
    /// The size (+1) whose row and note last disagreed (0: none).
    disagreed: AtomicU64,
}

impl Witnesses {
    /// The witnesses `settings` names (none: a node without witnesses).
    pub fn new(settings: &AuditSettings) -> Result<Self, LoadError> {
        let witnesses = settings
            .witnesses
            .iter()
            .map(Witness::new)
            .collect::<Result<Vec<_>, _>>()?;
        for (i, w) in witnesses.iter().enumerate() {
            // One key under two names makes two key IDs, and one
            // cosignature could be relabelled as either.
            if witnesses
                .iter()
                .take(i)
                .any(|o| o.key.name() == w.key.name() || o.key.public() == w.key.public())
            {
                return Err(LoadError(format!(
                    "server.audit.witnesses names {} twice (by name or by key): one witness would count twice",
                    w.key.name()
                )));
            }
            // Its lines would read as the log's own signatures.
            if w.key.name() == settings.origin {
                return Err(LoadError(format!(
                    "server.audit.witnesses: a witness named {} like the log itself",
                    w.key.name()
                )));
            }
        }
        Ok(Witnesses {
            witnesses,
            quorum: settings.quorum(),
            required: settings.require_witness_quorum,
            last: Mutex::new(Round::default()),
            disagreed: AtomicU64::new(0),
        })
    }

    /// Whether any witness is configured.
    pub fn any(&self) -> bool {
        !self.witnesses.is_empty()
    }

    /// Sends the latest checkpoint to each witness that has not cosigned
    /// it yet, all at once (again after a back-off if one did not), and
    /// stores the cosignatures that verify, one per witness.
    pub fn round(&self, registry: &dyn Registry, metrics: &Metrics) {
        if self.witnesses.is_empty() {
            return;
        }
        let Some((size, note, body)) = self.latest(registry) else {
            return;
        };
        let signatures = note.split_once("\n\n").map_or("", |(_, s)| s);
        let has = |w: &Witness| vouched(w, size, &body, signatures);
        let misses = match self.last.lock() {
            Ok(last) if last.size == size => {
                let wait = RETRY.saturating_mul(1 << last.misses.min(3)).min(MAX_RETRY);
                if self.witnesses.iter().all(has) || last.at.is_some_and(|at| at.elapsed() < wait) {
                    return;
                }
                last.misses
            }
            _ => 0,
        };
        let missing: Vec<&Witness> = self.witnesses.iter().filter(|w| !has(w)).collect();
        let asked = ask_all(&missing, registry, size, &note, &body);
        let mut round = Round {
            size,
            at: Some(Instant::now()),
            ..Round::default()
        };
        let mut added = Vec::new();
        for (w, answer) in asked {
            match answer {
                Ok(line) => added.push((w, line)),
                Err(reason) => {
                    tracing::warn!(witness = %w.key.name(), size, reason = reason.explain(), "a witness did not cosign the audit checkpoint");
                    metrics
                        .audit_witness_refusals
                        .with_label_values(&[w.key.name(), reason.label()])
                        .inc();
                    round
                        .refused
                        .push((w.key.name().to_owned(), reason.explain().to_owned()));
                }
            }
        }
        let stored = self.store(registry, size, &note, &added);
        let stored_signatures = stored.split_once("\n\n").map_or("", |(_, s)| s);
        for w in &self.witnesses {
            let cosigned = vouched(w, size, &body, stored_signatures);
            if cosigned {
                round.cosigned.push(w.key.name().to_owned());
            }
            metrics
                .audit_witness_cosigned
                .with_label_values(&[w.key.name()])
                .set(i64::from(cosigned));
        }
        metrics
            .audit_witness_quorum_met
            .set(i64::from(round.cosigned.len() >= self.quorum));
        round.misses = if round.cosigned.len() < self.witnesses.len() {
            misses.saturating_add(1)
        } else {
            0
        };
        if let Ok(mut last) = self.last.lock() {
            *last = round;
        }
    }

    /// The latest checkpoint: its size, note and body, if its row and
    /// note agree on the size (the note's is what witnesses sign; a
    /// disagreement is logged once per size).
    fn latest(&self, registry: &dyn Registry) -> Option<(u64, String, String)> {
        let (size, note) = registry.latest_checkpoint().ok()??;
        let body = format!("{}\n", note.split_once("\n\n")?.0);
        if Checkpoint::parse_body(&body).ok().map(|c| c.size) != Some(size) {
            if self
                .disagreed
                .swap(size.saturating_add(1), Ordering::Relaxed)
                != size.saturating_add(1)
            {
                tracing::warn!(
                    size,
                    "the latest checkpoint's row and note disagree on its size: not sent to the witnesses"
                );
            }
            return None;
        }
        Some((size, note, body))
    }

    /// Stores the note with `added` cosignatures if it is still `note`;
    /// the note as stored. Only cosignatures stored count: another node
    /// may have changed it meanwhile (the next round reads it again).
    fn store(
        &self,
        registry: &dyn Registry,
        size: u64,
        note: &str,
        added: &[(&Witness, String)],
    ) -> String {
        let Some((body, signatures)) = note.split_once("\n\n") else {
            return note.to_owned();
        };
        if added.is_empty() {
            return note.to_owned();
        }
        let cosigned = self.merged(&format!("{body}\n"), signatures, added);
        match registry.cosign_checkpoint(size, note, &cosigned) {
            Ok(true) => cosigned,
            Ok(false) => note.to_owned(),
            Err(e) => {
                tracing::warn!(error = %e, "storing the witnesses' cosignatures");
                note.to_owned()
            }
        }
    }

    /// The note with `added` cosignatures: the log's own lines and those of
    /// keys it does not know kept, at most one valid line per configured
    /// witness (a planted line under a witness's name that does not verify
    /// is dropped, so nobody can make the note grow round after round).
    fn merged(&self, body: &str, signatures: &str, added: &[(&Witness, String)]) -> String {
        let mut kept: Vec<&str> = Vec::new();
        let mut present: Vec<&str> = Vec::new();
        for line in signatures.lines() {
            match self.witnesses.iter().find(|w| w.key.claims(line)) {
                None => kept.push(line),
                Some(w) if !present.contains(&w.key.name()) && w.key.verify(body, line).is_ok() => {
                    present.push(w.key.name());
                    kept.push(line);
                }
                Some(_) => {}
            }
        }
        for (w, line) in added {
            if !present.contains(&w.key.name()) {
                present.push(w.key.name());
                kept.push(line.trim_end());
            }
        }
        let mut note = format!("{body}\n");
        for line in kept {
            note.push_str(line);
            note.push('\n');
        }
        note
    }

    /// For readiness: whether the latest checkpoint sent has its quorum,
    /// and what each witness said (`None` without witnesses).
    pub fn status(&self) -> Option<(bool, String)> {
        if self.witnesses.is_empty() {
            return None;
        }
        let last = self.last.lock().ok()?.clone();
        if last.at.is_none() {
            // Not yet known is not met: a required quorum waits for it.
            return Some((
                !self.required,
                "no checkpoint sent to the witnesses yet".into(),
            ));
        }
        let mut detail = format!(
            "checkpoint {}: cosigned by {} of {} witnesses (quorum {})",
            last.size,
            last.cosigned.len(),
            self.witnesses.len(),
            self.quorum
        );
        for (name, why) in &last.refused {
            detail.push_str(&format!("; {name}: {why}"));
        }
        let met = last.cosigned.len() >= self.quorum;
        if !met && !self.required {
            // Not a failure: a witness down must not stop issuance unless
            // the operator says so (`require_witness_quorum`).
            detail = format!("WARNING: quorum not met: {detail}");
        }
        Some((met || !self.required, detail))
    }
}

/// Whether witness `w` vouches for checkpoint `size` (`body`) among the
/// note's `signatures`: its cosignature verifies, this process has heard
/// from it, and it holds no larger tree. A stored cosignature alone is the
/// database's word: a registry put back from a copy carries the
/// cosignatures of a tree the witness has since outgrown. (Once heard
/// from, other nodes' cosignatures count without asking again.)
fn vouched(w: &Witness, size: u64, body: &str, signatures: &str) -> bool {
    w.holds().is_some_and(|held| held <= size) && w.key.verify(body, signatures).is_ok()
}

/// Asks each of `witnesses` at once, each on a thread of its own.
fn ask_all<'w>(
    witnesses: &[&'w Witness],
    registry: &dyn Registry,
    size: u64,
    note: &str,
    body: &str,
) -> Vec<(&'w Witness, Result<String, NotCosigned>)> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = witnesses
            .iter()
            .map(|w| (*w, scope.spawn(|| w.ask(registry, size, note, body))))
            .collect();
        handles
            .into_iter()
            .map(|(w, h)| (w, h.join().unwrap_or(Err(NotCosigned::Unreachable))))
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::witness::CosignerKey;
    use crate::config::WitnessSettings;

    fn settings(url: &str, key: &str) -> WitnessSettings {
        WitnessSettings {
            url: url.into(),
            key: key.into(),
            ca: None,
        }
    }

    fn signed_line(
        key: &openssl::pkey::PKey<openssl::pkey::Private>,
        w: &CosignerKey,
        body: &str,
    ) -> String {
        let message = super::super::witness::cosigned_message(body, 1_800_000_000);
        let signature = openssl::sign::Signer::new_without_digest(key)
            .unwrap()
            .sign_oneshot_to_vec(&message)
            .unwrap();
        w.line(1_800_000_000, &signature)
    }

    #[test]
    fn a_note_keeps_one_valid_line_per_witness_and_drops_planted_ones() {
        let private = openssl::pkey::PKey::generate_ed25519().unwrap();
        let public: [u8; 32] = private.raw_public_key().unwrap().try_into().unwrap();
        let key = CosignerKey::new("w.example/1", public).unwrap();
        let settings = AuditSettings {
            witnesses: vec![settings("http://w.example", &key.vkey())],
            ..AuditSettings::default()
        };
        let witnesses = Witnesses::new(&settings).unwrap();
        let body = "log\n2\nAAAA\n";
        let log_line = "\u{2014} log AAAAAAAA";
        let planted = key.line(5, &[0; 64]);
        let good = signed_line(&private, &key, body);
        let signatures = format!("{log_line}\n{planted}");
        let added = [(&witnesses.witnesses[0], good.clone())];
        let note = witnesses.merged(body, &signatures, &added);
        assert_eq!(note, format!("{body}\n{log_line}\n{good}"));
        // Already there: nothing more is added, however often it is asked.
        let again = witnesses.merged(body, note.split_once("\n\n").unwrap().1, &added);
        assert_eq!(again, note);
    }

    #[test]
    fn a_stored_cosignature_counts_once_the_witness_was_heard_from_and_holds_no_more() {
        let private = openssl::pkey::PKey::generate_ed25519().unwrap();
        let public: [u8; 32] = private.raw_public_key().unwrap().try_into().unwrap();
        let key = CosignerKey::new("w.example/1", public).unwrap();
        let witness = Witness::new(&settings("http://w.example", &key.vkey())).unwrap();
        let body = "log\n7\nAAAA\n";
        let line = signed_line(&private, &key, body);
        // Not heard from since the start: the database's word only.
        assert!(!vouched(&witness, 7, body, &line));
        witness.set_holds(Some(7));
        assert!(vouched(&witness, 7, body, &line));
        assert!(!vouched(&witness, 7, body, ""));
        // It holds a larger tree: this checkpoint is a rollback.
        witness.set_holds(Some(9));
        assert!(!vouched(&witness, 7, body, &line));
    }

    #[test]
    fn a_missed_quorum_warns_unless_the_operator_requires_it() {
        let key = CosignerKey::new("w.example/1", [9; 32]).unwrap();
        for required in [false, true] {
            let settings = AuditSettings {
                witnesses: vec![settings("http://w.example", &key.vkey())],
                require_witness_quorum: required,
                ..AuditSettings::default()
            };
            let witnesses = Witnesses::new(&settings).unwrap();
            assert_eq!(
                witnesses.status().map(|s| s.0),
                Some(!required),
                "before any round"
            );
            *witnesses.last.lock().unwrap() = Round {
                size: 7,
                refused: vec![("w.example/1".into(), "unreachable".into())],
                at: Some(Instant::now()),
                ..Round::default()
            };
            let (ok, detail) = witnesses.status().unwrap();
            assert_eq!(ok, !required, "{detail}");
            assert!(detail.contains("w.example/1: unreachable"), "{detail}");
            assert_eq!(detail.starts_with("WARNING"), !required, "{detail}");
        }
        let twice = AuditSettings {
            witnesses: vec![
                settings("http://a", &key.vkey()),
                settings("http://b", &key.vkey()),
            ],
            ..AuditSettings::default()
        };
        assert!(Witnesses::new(&twice).is_err());
        let other = CosignerKey::new("w.example/2", [9; 32]).unwrap();
        let one_key_two_names = AuditSettings {
            witnesses: vec![
                settings("http://a", &key.vkey()),
                settings("http://b", &other.vkey()),
            ],
            ..AuditSettings::default()
        };
        assert!(Witnesses::new(&one_key_two_names).is_err());
        let origin = AuditSettings::default().origin;
        let like_the_log = CosignerKey::new(&origin, [3; 32]).unwrap();
        let named_like_the_log = AuditSettings {
            witnesses: vec![settings("http://a", &like_the_log.vkey())],
            ..AuditSettings::default()
        };
        assert!(Witnesses::new(&named_like_the_log).is_err());
    }
}
