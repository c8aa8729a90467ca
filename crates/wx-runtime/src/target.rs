//! The target contract: what a store the sink writes clean messages into promises. A batch goes
//! in, one [`Verdict`] per message comes out, in order: written (or already there), refused as
//! the record's fault (with its dead-letter class), or not written because the store is unwell
//! (try again later; nothing is parked for it). A target splits, chunks and retries within one
//! call only what its own protocol asks for (a refused batch written row by row, a request over
//! the endpoint's size limit halved); pausing, backoff and resuming are the caller's.
//!
//! Writes must be idempotent by the message's identity (`wx_codec::message_identity`): the sink
//! repeats a batch after a crash or a store's outage, and a redrive writes a message again.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use wx_codec::ChatMessage;

/// What a target says of one message of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Written now, or already there.
    Written,
    /// The record's fault: the store refuses this message as such; it is parked with `class`.
    Refused { class: &'static str, cause: String },
    /// The store's fault (unreachable, refusing service, misconfigured): not written; the
    /// message is sent again after a pause, and nothing is parked.
    Unwell { cause: String },
}

impl Verdict {
    /// Every message of a batch not written because the store is unwell.
    pub fn all_unwell(count: usize, cause: impl Into<String>) -> Vec<Verdict> {
        let cause = cause.into();
        vec![Verdict::Unwell { cause }; count]
    }
}

/// A boxed future of a target's call.
pub type TargetFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A store the sink writes into. See the module docs.
pub trait Target: Send + Sync + 'static {
    /// The store's name: readiness shows it, metrics label it (`store="<name>"`).
    fn name(&self) -> &'static str;

    /// What logs call it ("MySQL", "The search endpoint").
    fn label(&self) -> &'static str {
        self.name()
    }

    /// What its written counter counts (`wxstream_sink_<unit>_written_total`): `rows`,
    /// `documents`, `records`.
    fn unit(&self) -> &'static str {
        "records"
    }

    /// Writes `batch`; exactly one verdict per message, in order.
    fn write<'a>(&'a self, batch: &'a [ChatMessage]) -> TargetFuture<'a, Vec<Verdict>>;

    /// Upkeep the store needs while the sink runs (monthly partitions ahead, say): what readiness
    /// calls it and how often [`Target::maintain`] runs (None: never).
    fn maintenance(&self) -> Option<(&'static str, Duration)> {
        None
    }

    /// Does the upkeep once; `Ok(Some(note))` is logged, an error is shown in readiness and
    /// tried again next time (it must not quote secrets).
    fn maintain(&self, _now_ms: i64) -> TargetFuture<'_, Result<Option<String>, String>> {
        Box::pin(async { Ok(None) })
    }
}

/// Checks a target kept its contract (one verdict per message); a broken target's extra or
/// missing verdicts would finish offsets of records never written.
pub fn checked(target: &dyn Target, expected: usize, verdicts: Vec<Verdict>) -> Vec<Verdict> {
    if verdicts.len() == expected {
        return verdicts;
    }
    Verdict::all_unwell(
        expected,
        format!(
            "target {} answered {} verdicts for {expected} messages",
            target.name(),
            verdicts.len()
        ),
    )
}
