//! Replay protection for callbacks: the nonces seen within the timestamp window, shared by
//! every receiver of the ingest group and kept across restarts
//! (`../shared/reviews/audit-2026-12.md` X5: a per-process table let a captured callback be
//! replayed after a rolling restart, or against another replica).
//!
//! - A nonce is taken in this process's table before its callback is stored (a concurrent
//!   duplicate is a replay too) and given back when storing fails, so WeCom's retry is not one.
//! - Once the callback is acknowledged by the broker, the nonce is recorded on the checkpoint
//!   topic: a tombstone keyed `nonce:<corp>:<nonce>` in the corp's partition (checkpoint reads
//!   skip records without a value, and compaction drops tombstones after
//!   `delete.retention.ms`). Never before: a recorded nonce whose callback was not stored would
//!   turn WeCom's retry into a "replay" and lose it.
//! - Every receiver follows those records from twice the window back (the window behind the
//!   clock and the same skew ahead): at start it refuses callbacks with WeCom's retryable error,
//!   shown in `/readyz` as `callback-nonces`, until it has read what was recorded before it
//!   started; afterwards it learns the other receivers' nonces as they are recorded.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use wx_codec::now_ms;
use wx_kafka::{Followed, KafkaConfig, Producer, partition_for_key};
use wx_runtime::StageHealth;

/// Keys of nonce records on the checkpoint topic start so (no corp id does).
const NONCE_PREFIX: &str = "nonce:";

/// The readiness component of a receiver still reading the recorded nonces.
pub const COMPONENT: &str = "callback-nonces";

/// How long recording one nonce may take.
const RECORD_TIMEOUT: Duration = Duration::from_secs(10);

/// Where nonces are recorded and read: the ingest group's checkpoint topic.
#[derive(Debug, Clone)]
pub struct NonceLog {
    pub kafka: KafkaConfig,
    pub producer: Producer,
    pub topic: String,
    pub partitions: i32,
    /// Where "still reading" is shown.
    pub health: Arc<StageHealth>,
}

fn record_key(corp: &str, nonce: &str) -> String {
    format!("{NONCE_PREFIX}{corp}:{nonce}")
}

/// The (corp, nonce) a record key names, if it is a nonce record's.
fn parse_key(key: &[u8]) -> Option<(String, String)> {
    let rest = key.strip_prefix(NONCE_PREFIX.as_bytes())?;
    let rest = std::str::from_utf8(rest).ok()?;
    let (corp, nonce) = rest.split_once(':')?;
    Some((corp.to_string(), nonce.to_string()))
}

/// Why a nonce cannot be taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceRefusal {
    Replayed,
    /// The table holds `max` live nonces.
    Full,
    /// The nonces recorded before this receiver started are not all read yet.
    Loading,
}

/// The nonces of the replay window.
#[derive(Debug)]
pub struct Nonces {
    /// (corp, nonce) -> when it was first seen, and whether its callback is stored (a pending
    /// one is being stored now: a concurrent duplicate is a replay too).
    table: Mutex<HashMap<(String, String), (i64, bool)>>,
    /// The most nonces remembered (`callback_max_nonces`). They are forgotten only once no
    /// timestamp that could carry them is accepted any more (`keep_ms`), never to make room:
    /// when the table is full of live nonces the receiver answers "busy" (WeCom retries) rather
    /// than forget one and re-open its replay.
    max: usize,
    /// Twice the timestamp window: the window behind the clock and the same skew ahead.
    keep_ms: i64,
    log: Option<NonceLog>,
    /// What was recorded before this receiver started is read (always, without a log).
    loaded: AtomicBool,
}

/// A nonce taken for a callback being stored. Dropped without [`TakenNonce::stored`] (storing
/// failed, or the request was cancelled: the client gave up while the broker was slow), it is
/// given back, so WeCom's retry is not a replay and no pending entry outlives its request.
#[derive(Debug)]
pub struct TakenNonce {
    nonces: Arc<Nonces>,
    key: (String, String),
    stored: bool,
}

impl TakenNonce {
    /// The callback is stored: the nonce is kept, and recorded for every receiver (in the
    /// background: the answer to WeCom does not wait for it).
    pub fn stored(mut self) {
        self.stored = true;
        let Some(log) = self.nonces.log.clone() else {
            return;
        };
        let (corp, nonce) = self.key.clone();
        tokio::spawn(async move {
            let key = record_key(&corp, &nonce);
            let partition = partition_for_key(corp.as_bytes(), log.partitions);
            let send = log
                .producer
                .send_tombstone_to(&log.topic, partition, key.as_bytes());
            let recorded = tokio::time::timeout(RECORD_TIMEOUT, send).await;
            let outcome = if matches!(recorded, Ok(Ok(_))) {
                "recorded"
            } else {
                // Only this receiver knows the nonce until its window passes.
                tracing::warn!(corp = %corp, "Could not record a callback nonce for the other receivers.");
                "failed"
            };
            metrics::counter!("wxstream_ingest_callback_nonces_recorded_total", "outcome" => outcome)
                .increment(1);
        });
    }
}

impl Drop for TakenNonce {
    fn drop(&mut self) {
        let mut table = self.nonces.lock();
        if self.stored {
            table.insert(self.key.clone(), (now_ms(), true));
        } else {
            table.remove(&self.key);
        }
    }
}

impl Nonces {
    /// The table, following `log`'s records on a thread of its own (until the table is
    /// dropped) when there is one.
    pub fn new(max: usize, window_ms: i64, log: Option<NonceLog>) -> Arc<Nonces> {
        let following = log.clone();
        let nonces = Arc::new(Nonces {
            table: Mutex::new(HashMap::new()),
            max,
            keep_ms: window_ms.saturating_mul(2),
            loaded: AtomicBool::new(log.is_none()),
            log,
        });
        if let Some(log) = following {
            log.health.failing(
                COMPONENT,
                "reading the nonces recorded in the replay window",
            );
            let weak = Arc::downgrade(&nonces);
            std::thread::Builder::new()
                .name("callback-nonces".into())
                .spawn(move || follow(&log, &weak))
                .expect("spawn the nonce follower");
        }
        nonces
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), (i64, bool)>> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a nonce for a callback about to be stored, in one step: a second request with it,
    /// concurrent or later, in this process or (once recorded) another, is a replay.
    pub fn take(self: &Arc<Self>, corp: &str, nonce: &str) -> Result<TakenNonce, NonceRefusal> {
        if !self.loaded.load(Ordering::Acquire) {
            return Err(NonceRefusal::Loading);
        }
        let key = (corp.to_string(), nonce.to_string());
        let mut table = self.lock();
        let now = now_ms();
        if table.len() >= self.max {
            // Stored or pending, a nonce no accepted timestamp can carry any more is forgotten
            // (a pending one that old belongs to no live request).
            table.retain(|_, (seen, _)| now.saturating_sub(*seen) <= self.keep_ms);
        }
        if table.contains_key(&key) {
            return Err(NonceRefusal::Replayed);
        }
        if table.len() >= self.max {
            return Err(NonceRefusal::Full);
        }
        table.insert(key.clone(), (now, false));
        Ok(TakenNonce {
            nonces: self.clone(),
            key,
            stored: false,
        })
    }

    /// A nonce another receiver (or this one, earlier) recorded at `seen`.
    fn learn(&self, key: (String, String), seen: i64) {
        if now_ms().saturating_sub(seen) > self.keep_ms {
            return;
        }
        let mut table = self.lock();
        if table.len() >= self.max {
            let now = now_ms();
            table.retain(|_, (at, _)| now.saturating_sub(*at) <= self.keep_ms);
            if table.len() >= self.max {
                // Full of live nonces: this one stays the recording receiver's alone.
                return;
            }
        }
        table.entry(key).or_insert((seen, true));
    }
}

/// Follows the recorded nonces from twice the window back, for as long as the table lives;
/// retried with capped backoff while the broker cannot be read.
fn follow(log: &NonceLog, nonces: &Weak<Nonces>) {
    let mut backoff = wx_runtime::Backoff::new(Duration::from_millis(500), Duration::from_secs(15));
    let alive = || nonces.strong_count() > 0;
    while alive() {
        let Some(keep_ms) = nonces.upgrade().map(|n| n.keep_ms) else {
            return;
        };
        let followed = wx_kafka::follow_since(
            &log.kafka,
            &log.topic,
            now_ms().saturating_sub(keep_ms),
            alive,
            |event| {
                let Some(nonces) = nonces.upgrade() else {
                    return;
                };
                match event {
                    Followed::Record { key, timestamp, .. } => {
                        if let Some(key) = key.and_then(parse_key) {
                            nonces.learn(key, timestamp.unwrap_or_else(now_ms));
                        }
                    }
                    Followed::CaughtUp => {
                        nonces.loaded.store(true, Ordering::Release);
                        log.health.recovered(COMPONENT);
                        tracing::info!("Callback nonces of the replay window read.");
                    }
                }
            },
        );
        if let Err(e) = followed {
            log.health
                .failing(COMPONENT, format!("reading the recorded nonces: {e}"));
            std::thread::sleep(backoff.next_delay());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_keys_name_their_corp_and_nonce() {
        let key = record_key("ww1", "n:1");
        assert_eq!(
            parse_key(key.as_bytes()),
            Some(("ww1".to_string(), "n:1".to_string()))
        );
        for other in [
            &b"ww1"[..],
            b"wake:ww1",
            b"nonce:",
            b"nonce:ww1",
            b"nonce:\xff:1",
        ] {
            assert_eq!(parse_key(other), None, "{other:?}");
        }
    }

    #[tokio::test]
    async fn a_nonce_is_a_replay_once_stored_or_while_pending_and_given_back_on_failure() {
        let nonces = Nonces::new(2, 1000, None);
        let pending = nonces.take("c", "1").expect("free");
        assert_eq!(nonces.take("c", "1").err(), Some(NonceRefusal::Replayed));
        drop(pending);
        let again = nonces.take("c", "1").expect("given back");
        again.stored();
        assert_eq!(nonces.take("c", "1").err(), Some(NonceRefusal::Replayed));
        assert!(nonces.take("d", "1").is_ok(), "per corp");
        let _held = nonces.take("c", "2").expect("second");
        assert_eq!(nonces.take("c", "3").err(), Some(NonceRefusal::Full));
        nonces.learn(("c".into(), "9".into()), now_ms() - 5000);
        assert_eq!(
            nonces.lock().len(),
            2,
            "a nonce older than the window is not learnt"
        );
    }
}
