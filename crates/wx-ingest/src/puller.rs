//! One corp's archive puller. The invariant every earlier ingester broke (domain page §5.1): the
//! cursor moves only after the broker acknowledged the batch it covers, and the checkpoint is
//! written after that. A crash anywhere in between re-pulls the same page: duplicates (which every
//! later stage absorbs by msgid), never a gap.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use wx_codec::{Codec, EncryptedItem, RawBatch, SourceKind};
use wx_kafka::{Delivered, KafkaError, Producer, Refusal};
use wx_runtime::backoff_delay;

use crate::client::{ArchiveClient, PullError};
use crate::config::IngestSettings;

/// The value on the checkpoint topic (key = corp id), JSON so operators can read it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub corp_id: String,
    /// The exclusive cursor: every seq up to this one is in the raw topic.
    pub seq: u64,
    pub updated_at_ms: i64,
    /// Where the batch that moved the cursor landed (-1, -1: moved by an operator).
    pub raw_partition: i32,
    pub raw_offset: i64,
}

impl Checkpoint {
    /// `corp`'s cursor at `seq` now, after the batch at `raw_partition`/`raw_offset`.
    pub fn new(corp: &str, seq: u64, raw_partition: i32, raw_offset: i64) -> Checkpoint {
        Checkpoint {
            corp_id: corp.to_string(),
            seq,
            updated_at_ms: now_ms(),
            raw_partition,
            raw_offset,
        }
    }

    /// Its record value.
    pub fn value(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

use wx_codec::now_ms;

/// The seconds part of a current-style msgid (`<id>_<10-digit s or 13-digit ms>[_suffix]`), used
/// only to estimate how old unpulled data is (never as the message's time).
pub fn msgid_time_estimate_ms(msgid: &str) -> Option<i64> {
    let stamp = msgid.split('_').nth(1)?;
    let n: i64 = stamp.parse().ok()?;
    match stamp.len() {
        10 => Some(n * 1000),
        13 => Some(n),
        _ => None,
    }
}

/// Everything a puller needs, shared by the worker's pullers.
#[derive(Clone)]
pub struct PullerContext {
    pub settings: Arc<IngestSettings>,
    pub producer: Producer,
    pub codec: Arc<Codec>,
    pub raw_topic: String,
    pub checkpoint_topic: String,
    /// True while an operator has paused the connector: no pulls.
    pub paused: tokio::sync::watch::Receiver<bool>,
    pub health: Arc<wx_runtime::StageHealth>,
    /// Where a puller that cannot go on says so (its corp and why): the worker then stops the
    /// stage visibly instead of keeping a corp it no longer pulls.
    pub failed: tokio::sync::mpsc::UnboundedSender<(String, wx_runtime::StageError)>,
    /// Parks the GetChatData items that cannot be read.
    pub parker: wx_runtime::Parker,
    /// The connector's `tasks.max`: how many of this worker's pullers pull a page at once
    /// (a puller holds a slot from its GetChatData call until its page is written).
    pub slots: Arc<tokio::sync::Semaphore>,
}

impl std::fmt::Debug for PullerContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PullerContext")
            .field("raw_topic", &self.raw_topic)
            .field("checkpoint_topic", &self.checkpoint_topic)
            .finish_non_exhaustive()
    }
}

/// One corp's puller.
pub struct Puller {
    pub corp_id: String,
    pub client: Arc<dyn ArchiveClient>,
    pub context: PullerContext,
    pub checkpoint_partition: i32,
    /// Notified by a `msgaudit_notify` callback: pull now.
    pub wake: Arc<Notify>,
}

impl std::fmt::Debug for Puller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Puller")
            .field("corp_id", &self.corp_id)
            .finish_non_exhaustive()
    }
}

enum Wait {
    Continue,
    Stop,
}

/// Why a write did not land.
enum Unwritten {
    /// The puller was cancelled while it waited to retry: the cursor stays.
    Cancelled,
    /// The broker refuses the record for good ([`KafkaError::refusal`]).
    Refused(KafkaError),
}

/// Why a page was not written whole.
enum PageEnd {
    Cancelled,
    /// The puller cannot go on (a topic refused, a batch that cannot be encoded or a letter
    /// that cannot be parked): the worker stops the stage visibly.
    Failed(wx_runtime::StageError),
}

impl Puller {
    async fn pause(&self, delay: Duration, cancel: &CancellationToken, wakeable: bool) -> Wait {
        tokio::select! {
            _ = cancel.cancelled() => Wait::Stop,
            _ = tokio::time::sleep(delay) => Wait::Continue,
            _ = self.wake.notified(), if wakeable => Wait::Continue,
        }
    }

    /// Writes `payload` to `topic`, retrying transport failures with backoff until it is
    /// acknowledged or the puller is cancelled (then the cursor does not move). A refusal for
    /// good is returned at once, never retried.
    async fn write(
        &self,
        topic: &str,
        partition: Option<i32>,
        payload: &[u8],
        cancel: &CancellationToken,
    ) -> Result<Delivered, Unwritten> {
        let settings = &self.context.settings;
        let mut attempt = 0;
        loop {
            match self
                .context
                .producer
                .send(topic, partition, self.corp_id.as_bytes(), payload)
                .await
            {
                Ok(delivered) => {
                    self.context.health.recovered("kafka");
                    return Ok(delivered);
                }
                Err(e) if e.refusal().is_some() => {
                    metrics::counter!("wxstream_ingest_write_errors_total", "corp" => self.corp_id.clone()).increment(1);
                    return Err(Unwritten::Refused(e));
                }
                Err(e) => {
                    self.context.health.failing("kafka", &e);
                    metrics::counter!("wxstream_ingest_write_errors_total", "corp" => self.corp_id.clone()).increment(1);
                    tracing::warn!(corp = %self.corp_id, topic, error = %e, "Writing to the broker failed; retrying, the cursor stays.");
                    let delay = backoff_delay(
                        attempt,
                        Duration::from_millis(500),
                        settings.backoff_cap,
                        rand::thread_rng().r#gen(),
                    );
                    attempt += 1;
                    if let Wait::Stop = self.pause(delay, cancel, false).await {
                        return Err(Unwritten::Cancelled);
                    }
                }
            }
        }
    }

    /// The letter of one GetChatData item (its JSON, read back as `getchatdata-item-json`),
    /// parked from `getchatdata/<corp>` at `offset`.
    fn item_letter(
        &self,
        offset: i64,
        seq: Option<i64>,
        json: Vec<u8>,
        class: &str,
        message: String,
    ) -> wx_codec::DeadLetter {
        let topic = format!("getchatdata/{}", self.corp_id);
        wx_codec::DeadLetter::new(
            crate::STAGE,
            wx_codec::ParkedFrom {
                topic: &topic,
                partition: 0,
                offset,
                seq,
            },
            json,
            "getchatdata-item-json",
            class,
            message,
            now_ms(),
        )
    }

    /// Parks each malformed item of a page pulled from `cursor` (class `malformed_item`): the
    /// item's JSON as WeCom sent it, its corp, seq and msgid where readable, and why. Its key
    /// is `ingest:<corp>/<msgid>`, or `ingest:getchatdata/<corp>/0/<seq>/<seq>` without a
    /// msgid: the same on a re-pull.
    async fn park_malformed(
        &self,
        items: &[crate::client::MalformedItem],
        cursor: u64,
    ) -> Result<(), wx_runtime::StageError> {
        for item in items {
            let seq = item.seq.map(|s| i64::try_from(s).unwrap_or(i64::MAX));
            let letter = self
                .item_letter(
                    seq.unwrap_or(i64::try_from(cursor).unwrap_or(i64::MAX)),
                    seq,
                    item.json.clone(),
                    "malformed_item",
                    format!("a GetChatData item that cannot be read: {}", item.cause),
                )
                .about(&self.corp_id, item.msgid.as_deref(), None);
            self.context.parker.park(&letter).await?;
            metrics::counter!("wxstream_ingest_malformed_items_total", "corp" => self.corp_id.clone()).increment(1);
            tracing::warn!(corp = %self.corp_id, seq = ?item.seq, cause = %item.cause, "A GetChatData item cannot be read; parked, and the cursor moves past it.");
        }
        Ok(())
    }

    /// Writes a page's items as raw batches, in order: the whole page as one batch when the raw
    /// topic takes it, else halves, halved again as long as the topic refuses a batch as too
    /// large. An item too large even alone is parked (`too_large`, its JSON as the original)
    /// and the rest go on. Each batch covers the seqs after the one before it (the first from
    /// `cursor`). Returns where the last batch landed (None when every item was parked).
    async fn write_page(
        &self,
        cursor: u64,
        items: Vec<EncryptedItem>,
        fetched_at: i64,
        cancel: &CancellationToken,
    ) -> Result<Option<Delivered>, PageEnd> {
        let corp = &self.corp_id;
        let mut from = i64::try_from(cursor).unwrap_or(i64::MAX);
        let mut last = None;
        let mut pending = std::collections::VecDeque::from([items]);
        while let Some(chunk) = pending.pop_front() {
            let to = chunk.iter().map(|i| i.seq).max().unwrap_or(from).max(from);
            let batch = RawBatch {
                corp_id: corp.clone(),
                source: SourceKind::Archive,
                seq_from: Some(from),
                seq_to: Some(to),
                fetched_at,
                items: chunk,
                callback: None,
            };
            // A bug or a schema this build cannot satisfy: stop rather than skip the page (the
            // cursor stays), and make the stage fail visibly.
            let payload = self.context.codec.encode(&batch).map_err(|source| {
                tracing::error!(corp = %corp, error = %source, "Encoding a raw batch failed; the puller stops.");
                PageEnd::Failed(wx_runtime::StageError::Encode {
                    subject: "raw batch",
                    source,
                })
            })?;
            let mut chunk = batch.items;
            match self
                .write(&self.context.raw_topic, None, &payload, cancel)
                .await
            {
                Ok(delivered) => last = Some(delivered),
                Err(Unwritten::Cancelled) => return Err(PageEnd::Cancelled),
                Err(Unwritten::Refused(e)) if e.refusal() == Some(Refusal::TooLarge) => {
                    if chunk.len() > 1 {
                        let second = chunk.split_off(chunk.len() / 2);
                        tracing::info!(corp = %corp, items = chunk.len() + second.len(), bytes = payload.len(), "A raw batch is larger than the raw topic takes; written as two halves.");
                        metrics::counter!("wxstream_ingest_batch_splits_total", "corp" => corp.clone()).increment(1);
                        pending.push_front(second);
                        pending.push_front(chunk);
                        continue;
                    }
                    for item in &chunk {
                        self.park_too_large(item, payload.len(), &e)
                            .await
                            .map_err(PageEnd::Failed)?;
                    }
                }
                Err(Unwritten::Refused(e)) => {
                    tracing::error!(corp = %corp, error = %e, "The raw topic refuses the batch for good; the puller stops.");
                    return Err(PageEnd::Failed(wx_runtime::StageError::refused(e)));
                }
            }
            from = to;
        }
        Ok(last)
    }

    /// Parks an archive item the raw topic refuses even alone (class `too_large`): its JSON
    /// (bounded like every letter's original), its corp, seq and msgid.
    async fn park_too_large(
        &self,
        item: &EncryptedItem,
        bytes: usize,
        refused: &KafkaError,
    ) -> Result<(), wx_runtime::StageError> {
        let letter = self
            .item_letter(
                item.seq,
                Some(item.seq),
                serde_json::to_vec(item).unwrap_or_default(),
                wx_runtime::TOO_LARGE,
                format!("an archive item that alone makes a raw batch of {bytes} bytes, more than the raw topic takes: {refused}"),
            )
            .about(&self.corp_id, Some(&item.msgid), Some(item.publickey_ver));
        self.context.parker.park(&letter).await?;
        tracing::warn!(corp = %self.corp_id, seq = item.seq, "An archive item is larger than the raw topic takes; parked, and the cursor moves past it.");
        Ok(())
    }

    /// Pulls from `cursor` until cancelled. Returns the cursor it reached.
    pub async fn run(self, mut cursor: u64, cancel: CancellationToken) -> u64 {
        let settings = self.context.settings.clone();
        let corp = self.corp_id.clone();
        let per_minute = NonZeroU32::new(settings.calls_per_minute).unwrap_or(NonZeroU32::MIN);
        let limiter: DefaultDirectRateLimiter = RateLimiter::direct(Quota::per_minute(per_minute));
        let retention_ms = i64::try_from(settings.retention.as_millis()).unwrap_or(i64::MAX);
        let warn_ms = retention_ms
            - i64::try_from(settings.retention_warning_margin.as_millis()).unwrap_or(0);
        let mut failures = 0u32;
        // The cursor at which a page that could not move it was last seen (its items parked).
        let mut stuck_at: Option<u64> = None;
        let mut paused = self.context.paused.clone();
        tracing::info!(corp = %corp, cursor, "Puller started.");
        // Present from the start (0), so the alert rule sees the series before any fault.
        metrics::counter!("wxstream_ingest_malformed_items_total", "corp" => corp.clone())
            .increment(0);
        metrics::gauge!("wxstream_ingest_cursor_seq", "corp" => corp.clone()).set(cursor as f64);
        loop {
            if cancel.is_cancelled() {
                break;
            }
            if *paused.borrow_and_update() {
                tracing::info!(corp = %corp, cursor, "Paused by an operator.");
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = paused.wait_for(|p| !*p) => {}
                }
                tracing::info!(corp = %corp, cursor, "Resumed.");
                continue;
            }
            if limiter.check().is_err() {
                metrics::counter!("wxstream_ingest_rate_limit_waits_total", "corp" => corp.clone())
                    .increment(1);
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = limiter.until_ready() => {}
                }
            }
            // One of the worker's `tasks.max` slots, held until this page is written.
            let _slot = match self.context.slots.clone().try_acquire_owned() {
                Ok(slot) => slot,
                Err(_) => {
                    metrics::counter!("wxstream_ingest_task_slot_waits_total", "corp" => corp.clone())
                        .increment(1);
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        slot = self.context.slots.clone().acquire_owned() => match slot {
                            Ok(slot) => slot,
                            Err(_) => break,
                        },
                    }
                }
            };
            let page = match self.client.get_chat_data(cursor, settings.page_limit).await {
                Ok(page) => {
                    self.context.health.recovered("wecom");
                    page
                }
                Err(e) => {
                    self.context
                        .health
                        .failing("wecom", format!("corp {corp}: {e}"));
                    let outcome = if e == PullError::RateLimited {
                        "rate_limited"
                    } else {
                        "error"
                    };
                    metrics::counter!("wxstream_ingest_pulls_total", "corp" => corp.clone(), "outcome" => outcome).increment(1);
                    metrics::counter!("wxstream_ingest_errors_total", "corp" => corp.clone(), "code" => e.code().to_string()).increment(1);
                    tracing::warn!(corp = %corp, code = e.code(), error = %e, "GetChatData failed; backing off.");
                    let base = match e {
                        PullError::Refused { .. } => Duration::from_secs(5),
                        _ => Duration::from_millis(500),
                    };
                    let delay = backoff_delay(
                        failures,
                        base,
                        settings.backoff_cap,
                        rand::thread_rng().r#gen(),
                    );
                    failures += 1;
                    if let Wait::Stop = self.pause(delay, &cancel, false).await {
                        break;
                    }
                    continue;
                }
            };
            failures = 0;
            let now = now_ms();
            metrics::gauge!("wxstream_ingest_last_success_timestamp_seconds", "corp" => corp.clone()).set(now as f64 / 1000.0);
            if page.items.is_empty() && page.malformed.is_empty() {
                metrics::counter!("wxstream_ingest_pulls_total", "corp" => corp.clone(), "outcome" => "empty").increment(1);
                metrics::gauge!("wxstream_ingest_caught_up_timestamp_seconds", "corp" => corp.clone()).set(now as f64 / 1000.0);
                metrics::gauge!("wxstream_ingest_oldest_unpulled_age_seconds", "corp" => corp.clone()).set(0.0);
                if let Wait::Stop = self.pause(settings.poll_interval, &cancel, true).await {
                    break;
                }
                continue;
            }
            // Duplicated items (seq <= cursor) stay in the batch: later stages dedupe by msgid.
            let seq_to = page.max_seq().unwrap_or(cursor).max(cursor);
            if seq_to == cursor {
                // A page that cannot move the cursor (audit M5: its only new item has no readable
                // seq): written and pulled again it would loop at the rate limit for ever. Its
                // malformed items are parked once; the puller waits as on an empty page and says
                // so in health until a later item moves the cursor past it.
                if stuck_at != Some(cursor) {
                    if let Err(e) = self.park_malformed(&page.malformed, cursor).await {
                        tracing::error!(corp = %corp, error = %e, "Parking a malformed item failed; the puller stops.");
                        let _ = self.context.failed.send((corp.clone(), e));
                        break;
                    }
                    stuck_at = Some(cursor);
                    tracing::warn!(corp = %corp, cursor, items = page.items.len() + page.malformed.len(), "GetChatData answers no readable seq past the cursor; waiting for a later item.");
                }
                self.context.health.failing(
                    "wecom",
                    format!("corp {corp}: GetChatData answers items after seq {cursor} without a readable seq; the cursor waits for a later item"),
                );
                metrics::counter!("wxstream_ingest_pulls_total", "corp" => corp.clone(), "outcome" => "stuck").increment(1);
                if let Wait::Stop = self.pause(settings.poll_interval, &cancel, true).await {
                    break;
                }
                continue;
            }
            stuck_at = None;
            metrics::counter!("wxstream_ingest_pulls_total", "corp" => corp.clone(), "outcome" => "ok").increment(1);
            metrics::counter!("wxstream_ingest_items_total", "corp" => corp.clone())
                .increment(page.items.len() as u64);
            metrics::counter!("wxstream_ingest_bytes_total", "corp" => corp.clone())
                .increment(page.bytes as u64);
            // An item that cannot be read is parked (acknowledged) before the cursor moves past
            // it; a crash in between parks it again under the same key.
            if let Err(e) = self.park_malformed(&page.malformed, cursor).await {
                tracing::error!(corp = %corp, error = %e, "Parking a malformed item failed; the puller stops.");
                let _ = self.context.failed.send((corp.clone(), e));
                break;
            }
            let full = page.items.len() + page.malformed.len() >= settings.page_limit as usize;
            let newest_estimate = page
                .items
                .last()
                .and_then(|i| msgid_time_estimate_ms(&i.msgid));
            // The checkpoint comes after the page's last batch is acknowledged.
            let delivered = match self.write_page(cursor, page.items, now, &cancel).await {
                Ok(last) => last.unwrap_or(Delivered {
                    partition: -1,
                    offset: -1,
                }),
                Err(PageEnd::Cancelled) => break,
                Err(PageEnd::Failed(error)) => {
                    let _ = self.context.failed.send((corp.clone(), error));
                    break;
                }
            };
            let value =
                Checkpoint::new(&corp, seq_to, delivered.partition, delivered.offset).value();
            match self
                .write(
                    &self.context.checkpoint_topic,
                    Some(self.checkpoint_partition),
                    &value,
                    &cancel,
                )
                .await
            {
                Ok(_) => {}
                Err(Unwritten::Cancelled) => break,
                Err(Unwritten::Refused(e)) => {
                    tracing::error!(corp = %corp, error = %e, "The checkpoint topic refuses the checkpoint for good; the puller stops.");
                    let _ = self
                        .context
                        .failed
                        .send((corp.clone(), wx_runtime::StageError::refused(e)));
                    break;
                }
            }
            cursor = seq_to;
            metrics::counter!("wxstream_ingest_batches_total", "corp" => corp.clone()).increment(1);
            metrics::gauge!("wxstream_ingest_cursor_seq", "corp" => corp.clone())
                .set(cursor as f64);
            if let Some(t) = newest_estimate {
                let age = (now - t).max(0);
                metrics::gauge!("wxstream_ingest_oldest_unpulled_age_seconds", "corp" => corp.clone())
                    .set(if full { age as f64 / 1000.0 } else { 0.0 });
                if full && age > warn_ms {
                    tracing::warn!(corp = %corp, cursor, age_hours = age / 3_600_000, "The corp's cursor is close to WeCom's retention window: data older than the window can no longer be pulled.");
                }
            }
            if !full {
                metrics::gauge!("wxstream_ingest_caught_up_timestamp_seconds", "corp" => corp.clone()).set(now as f64 / 1000.0);
                if let Wait::Stop = self.pause(settings.poll_interval, &cancel, true).await {
                    break;
                }
            }
        }
        tracing::info!(corp = %corp, cursor, "Puller stopped.");
        cursor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msgid_times_are_estimated_only_from_current_style_ids() {
        assert_eq!(
            msgid_time_estimate_ms("15775510700152506326_1603875615"),
            Some(1_603_875_615_000)
        );
        assert_eq!(
            msgid_time_estimate_ms("15775510700152506326_1603875615123_external"),
            Some(1_603_875_615_123)
        );
        assert_eq!(
            msgid_time_estimate_ms("CAQQluDa4QUY0On2rYSAgAMgzPrShAE="),
            None
        );
    }
}
