//! The sink's Kafka loop, a thin shell around the stores: gather a batch, write it to MySQL,
//! then to Elasticsearch, park what a store refuses, and only then finish the records' offsets.
//! While a store fails the consumer is paused (no unbounded buffering) and the write retried
//! with capped backoff; it resumes by itself when the store is back. Between retries it keeps
//! polling the paused consumer, so an outage longer than `max.poll.interval.ms` does not take
//! the worker out of its group.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use wx_codec::{ChatMessage, Codec, DeadLetter};
use wx_kafka::{Consumed, GroupConsumer, KafkaError, Producer, StageHealth, now_ms};

use crate::metrics as m;
use crate::mysql::{MessageStore, RecallMark, is_retryable};
use crate::search::{SearchIndex, SearchOp, document, index_for};
use crate::triage::{ItemVerdict, chunks};

/// The stage name written into dead letters.
pub const STAGE: &str = "sink";

/// Batching and retry knobs.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    pub batch_max: usize,
    pub batch_linger: Duration,
    pub bulk_max_bytes: usize,
    pub backoff_cap: Duration,
    pub commit_interval: Duration,
    pub dead_letter_topic: String,
}

/// One sink worker (a consumer-group member).
pub struct SinkWorker {
    pub(crate) store: MessageStore,
    pub(crate) search: SearchIndex,
    pub(crate) consumer: GroupConsumer,
    pub(crate) producer: Producer,
    pub(crate) codec: Arc<Codec>,
    pub(crate) options: WorkerOptions,
    pub(crate) health: Arc<StageHealth>,
    /// Records that arrived while the worker waited for a failing store: the next batch's start.
    pub(crate) carried: std::sync::Mutex<Vec<Consumed>>,
}

impl std::fmt::Debug for SinkWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SinkWorker")
            .field("database", &self.store.database())
            .field("index", &self.search.prefix())
            .finish_non_exhaustive()
    }
}

/// A record to park: the clean record's bytes and why.
fn dead_letter(
    record: &Consumed,
    message: Option<&ChatMessage>,
    class: &str,
    reason: String,
) -> DeadLetter {
    let now = now_ms();
    DeadLetter {
        original: record.value.clone().unwrap_or_default(),
        original_format: "clean-record".into(),
        error_class: class.into(),
        error_message: reason,
        stage: STAGE.into(),
        corp_id: message.map(|m| m.corp_id.clone()),
        msgid: message.map(|m| m.msgid.clone()),
        key_version: message.and_then(|m| m.publickey_ver),
        source_topic: record.topic.clone(),
        source_partition: record.partition,
        source_offset: record.offset,
        seq: message.and_then(|m| m.source.seq),
        first_failed_at: now,
        last_failed_at: now,
        attempts: 1,
    }
}

/// The bulk items of a stored batch, each with the position in `stored` of the message it
/// belongs to: a `create` per message, carrying its recall mark; then a mark `update` for every
/// mark, belonging to the batch's recall that names the message, or else to the message itself.
/// The update is needed even when the message is in the batch: on a replay its document
/// already exists, unmarked, and the `create` leaves it as it is.
fn search_items(
    prefix: &str,
    stored: &[&ChatMessage],
    marks: &[RecallMark],
) -> Vec<(usize, (String, String, SearchOp))> {
    let marked: std::collections::HashMap<(&str, &str), &RecallMark> = marks
        .iter()
        .map(|k| ((k.corp_id.as_str(), k.msgid.as_str()), k))
        .collect();
    let mut items: Vec<(usize, (String, String, SearchOp))> =
        Vec::with_capacity(stored.len() + marks.len());
    for (i, m) in stored.iter().enumerate() {
        let by = marked
            .get(&(m.corp_id.as_str(), m.msgid.as_str()))
            .map(|k| k.recalled_by.as_str());
        let op = SearchOp::Create(document(m, by));
        items.push((i, (index_for(prefix, m.msgtime), m.msgid.clone(), op)));
    }
    for mark in marks {
        let names = |m: &&ChatMessage| {
            m.corp_id == mark.corp_id && m.recalled_msgid.as_deref() == Some(mark.msgid.as_str())
        };
        let is = |m: &&ChatMessage| m.corp_id == mark.corp_id && m.msgid == mark.msgid;
        let owner = stored
            .iter()
            .position(names)
            .or_else(|| stored.iter().position(is));
        if let Some(i) = owner {
            let op = SearchOp::MarkRecalled(mark.recalled_by.clone());
            items.push((i, (index_for(prefix, mark.msgtime), mark.msgid.clone(), op)));
        }
    }
    items
}

/// Doubles a backoff up to `cap`.
fn next_backoff(delay: Duration, cap: Duration) -> Duration {
    (delay * 2).min(cap)
}

impl SinkWorker {
    /// What the operations surface reads and steers.
    pub fn control(&self) -> (wx_kafka::ConsumerControl, Arc<StageHealth>) {
        (self.consumer.control(), self.health.clone())
    }

    /// Runs until `shutdown`, then drains and commits.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), KafkaError> {
        let mut commit = tokio::time::interval(self.options.commit_interval);
        commit.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        'outer: loop {
            let mut batch: Vec<Consumed> = std::mem::take(&mut *self.carried());
            if batch.is_empty() {
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => break,
                    _ = commit.tick() => {
                        if let Err(e) = self.consumer.commit() {
                            tracing::warn!(error = %e, "Committing offsets failed; will retry.");
                        }
                        continue;
                    }
                    received = self.consumer.recv() => match received {
                        Ok(r) => batch.push(r),
                        Err(e) => {
                            tracing::warn!(error = %e, "Consuming failed; retrying.");
                            tokio::time::sleep(Duration::from_millis(500)).await;
                            continue;
                        }
                    },
                }
            }
            let deadline = tokio::time::Instant::now() + self.options.batch_linger;
            while batch.len() < self.options.batch_max {
                tokio::select! {
                    _ = tokio::time::sleep_until(deadline) => break,
                    _ = shutdown.cancelled() => break,
                    received = self.consumer.recv() => match received {
                        Ok(r) => batch.push(r),
                        Err(_) => break,
                    },
                }
            }
            if !self.write_batch(&batch, &shutdown).await {
                // Shutdown while a store was failing: these records stay unfinished and are
                // repeated by the next owner.
                break 'outer;
            }
            for record in &batch {
                self.consumer.finish(&record.ticket);
            }
        }
        let unfinished = self.consumer.close().await;
        tracing::info!(unfinished, "The sink stopped after draining.");
        Ok(())
    }

    fn carried(&self) -> std::sync::MutexGuard<'_, Vec<Consumed>> {
        self.carried.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits `delay` before the next try of a failing store, polling the paused consumer so the
    /// worker stays in its group; false on shutdown.
    async fn back_off(&self, delay: Duration, shutdown: &CancellationToken) -> bool {
        let mut arrived = Vec::new();
        let waited = tokio::select! {
            _ = shutdown.cancelled() => false,
            _ = self.consumer.poll_while_paused(delay, &mut arrived) => true,
        };
        self.carried().append(&mut arrived);
        waited
    }

    async fn park(&self, dead: DeadLetter) {
        let key = format!(
            "{STAGE}:{}/{}",
            dead.corp_id.as_deref().unwrap_or("-"),
            dead.msgid.as_deref().unwrap_or("-")
        );
        metrics::counter!(m::DEAD_LETTERED, "partition" => dead.source_partition.to_string(), "class" => dead.error_class.clone()).increment(1);
        let value = match self.codec.encode(&dead) {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(error = %e, "Encoding a dead letter failed.");
                return;
            }
        };
        self.producer
            .send_until_acknowledged(
                &self.options.dead_letter_topic,
                key.as_bytes(),
                Some(&value),
                self.options.backoff_cap,
            )
            .await;
    }

    fn set_paused(&self, paused: bool) {
        let result = if paused {
            self.consumer.pause()
        } else {
            self.consumer.resume()
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, paused, "Pausing or resuming consumption failed.");
        }
        metrics::gauge!(m::PAUSED).set(if paused { 1.0 } else { 0.0 });
    }

    /// Writes a batch to both stores; false when shutdown interrupted a retry.
    async fn write_batch(&self, batch: &[Consumed], shutdown: &CancellationToken) -> bool {
        let mut messages: Vec<(&Consumed, ChatMessage)> = Vec::with_capacity(batch.len());
        for record in batch {
            metrics::counter!(m::RECORDS_CONSUMED, "partition" => record.partition.to_string())
                .increment(1);
            match record
                .value
                .as_deref()
                .map(|v| self.codec.decode::<ChatMessage>(v))
            {
                Some(Ok(message)) => messages.push((record, message)),
                Some(Err(e)) => {
                    self.park(dead_letter(record, None, "undecodable", e.to_string()))
                        .await
                }
                None => {}
            }
        }
        let Some((stored, marks)) = self.write_mysql(messages, shutdown).await else {
            return false;
        };
        let ok = self.write_search(&stored, &marks, shutdown).await;
        if self.consumer.is_paused() && ok {
            self.set_paused(false);
        }
        ok
    }

    /// MySQL with retries; rows the database refuses as data are parked one by one. Returns the
    /// rows stored and the recall marks they touch (None on shutdown).
    async fn write_mysql<'a>(
        &self,
        messages: Vec<(&'a Consumed, ChatMessage)>,
        shutdown: &CancellationToken,
    ) -> Option<(Vec<(&'a Consumed, ChatMessage)>, Vec<RecallMark>)> {
        let rows: Vec<ChatMessage> = messages.iter().map(|(_, m)| m.clone()).collect();
        match self.retry_mysql(&rows, shutdown).await? {
            Ok(marks) => {
                for (record, _) in &messages {
                    metrics::counter!(m::ROWS_WRITTEN, "partition" => record.partition.to_string())
                        .increment(1);
                }
                Some((messages, marks))
            }
            Err(e) => {
                tracing::warn!(error = %e, "MySQL refused a batch; writing its rows one by one.");
                let mut stored = Vec::with_capacity(messages.len());
                let mut marks = Vec::new();
                for (record, message) in messages {
                    match self
                        .retry_mysql(std::slice::from_ref(&message), shutdown)
                        .await?
                    {
                        Ok(mut touched) => {
                            metrics::counter!(m::ROWS_WRITTEN, "partition" => record.partition.to_string()).increment(1);
                            stored.push((record, message));
                            marks.append(&mut touched);
                        }
                        Err(e) => {
                            self.park(dead_letter(
                                record,
                                Some(&message),
                                "store_rejected",
                                e.to_string(),
                            ))
                            .await
                        }
                    }
                }
                Some((stored, marks))
            }
        }
    }

    /// Retries retryable errors (pausing consumption meanwhile); returns the final outcome, or
    /// None on shutdown.
    async fn retry_mysql(
        &self,
        rows: &[ChatMessage],
        shutdown: &CancellationToken,
    ) -> Option<Result<Vec<RecallMark>, sqlx::Error>> {
        let mut delay = Duration::from_millis(200);
        loop {
            let started = Instant::now();
            match self.store.write(rows).await {
                Ok(marks) => {
                    metrics::histogram!(m::BATCH_SECONDS, "store" => "mysql")
                        .record(started.elapsed().as_secs_f64());
                    self.health.recovered("mysql");
                    return Some(Ok(marks));
                }
                Err(e) if is_retryable(&e) => {
                    metrics::counter!(m::RETRIES, "store" => "mysql").increment(1);
                    self.health.failing("mysql", &e);
                    if !self.consumer.is_paused() {
                        tracing::warn!(error = %e, "MySQL is failing; pausing consumption and retrying.");
                        self.set_paused(true);
                    }
                    if !self.back_off(delay, shutdown).await {
                        return None;
                    }
                    delay = next_backoff(delay, self.options.backoff_cap);
                }
                Err(e) => return Some(Err(e)),
            }
        }
    }

    /// Elasticsearch: bulk requests bounded by count and bytes: a `create` per message (with
    /// its recall mark, if MySQL has one), and a mark `update` per message recalled by a recall
    /// of this batch that is not in the batch itself. Retryable items (429, 5xx) are sent again
    /// with capped backoff, refused ones parked with the item's error (a refused mark parks its
    /// recall), version conflicts count as written. False on shutdown.
    async fn write_search(
        &self,
        stored: &[(&Consumed, ChatMessage)],
        marks: &[RecallMark],
        shutdown: &CancellationToken,
    ) -> bool {
        let messages: Vec<&ChatMessage> = stored.iter().map(|(_, m)| m).collect();
        let items = search_items(self.search.prefix(), &messages, marks);
        let mut pending: Vec<usize> = (0..items.len()).collect();
        let mut delay = Duration::from_millis(200);
        while !pending.is_empty() {
            let docs: Vec<(String, String, SearchOp)> =
                pending.iter().map(|&i| items[i].1.clone()).collect();
            let sizes: Vec<usize> = docs.iter().map(|(_, _, op)| op.size()).collect();
            let mut retry = Vec::new();
            for range in chunks(&sizes, self.options.batch_max, self.options.bulk_max_bytes) {
                let started = Instant::now();
                match self.search.bulk(&docs[range.clone()]).await {
                    Ok(verdicts) => {
                        metrics::histogram!(m::BATCH_SECONDS, "store" => "search")
                            .record(started.elapsed().as_secs_f64());
                        for (offset, verdict) in verdicts.into_iter().enumerate() {
                            let index = pending[range.start + offset];
                            let (record, message) = &stored[items[index].0];
                            match verdict {
                                ItemVerdict::Written => {
                                    if matches!(items[index].1.2, SearchOp::Create(_)) {
                                        metrics::counter!(m::DOCUMENTS_WRITTEN, "partition" => record.partition.to_string()).increment(1)
                                    }
                                }
                                ItemVerdict::Retry { status } => {
                                    self.health
                                        .failing("search", format!("bulk items answered {status}"));
                                    retry.push(index)
                                }
                                ItemVerdict::Refused { status, reason } => {
                                    self.park(dead_letter(
                                        record,
                                        Some(message),
                                        "mapping",
                                        format!("{status}: {reason}"),
                                    ))
                                    .await
                                }
                            }
                        }
                    }
                    Err(e) if e.is_retryable() => {
                        tracing::warn!(error = %e, "The search endpoint is failing; retrying.");
                        self.health.failing("search", &e);
                        retry.extend(range.map(|i| pending[i]));
                    }
                    Err(e) => {
                        for i in range {
                            let (record, message) = &stored[items[pending[i]].0];
                            self.park(dead_letter(record, Some(message), "mapping", e.to_string()))
                                .await;
                        }
                    }
                }
            }
            pending = retry;
            if !pending.is_empty() {
                metrics::counter!(m::RETRIES, "store" => "search").increment(pending.len() as u64);
                if !self.consumer.is_paused() {
                    self.set_paused(true);
                }
                if !self.back_off(delay, shutdown).await {
                    return false;
                }
                delay = next_backoff(delay, self.options.backoff_cap);
            }
        }
        self.health.recovered("search");
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(msgid: &str, msgtime: i64, recalls: Option<&str>) -> ChatMessage {
        serde_json::from_value(serde_json::json!({
            "msgid": msgid, "corp_id": "ww1", "action": if recalls.is_some() { "recall" } else { "send" },
            "from": "u", "tolist": [], "roomid": "", "msgtime": msgtime,
            "msgtype": if recalls.is_some() { "revoke" } else { "text" },
            "payload_json": "{}", "extra_json": null, "text": null, "recalled_msgid": recalls,
            "conversation_id": "c", "is_external": false, "publickey_ver": null,
            "source": {"topic": "clean", "partition": 0, "offset": 0, "seq": null},
            "decrypted_at": 0
        }))
        .expect("message")
    }

    fn mark(msgid: &str, msgtime: i64, by: &str) -> RecallMark {
        RecallMark {
            corp_id: "ww1".into(),
            msgid: msgid.into(),
            msgtime,
            recalled_by: by.into(),
        }
    }

    #[test]
    fn documents_carry_recall_marks_and_recalls_mark_documents_outside_the_batch() {
        const OCT: i64 = 1_760_000_000_000; // 2025-10
        const SEP: i64 = 1_757_000_000_000; // 2025-09
        // "late" was recalled by "r2" before it arrived; "r1" and "r1b" both recall "old",
        // indexed in an earlier batch (and month); "plain" is not recalled.
        let batch = [
            message("late", OCT, None),
            message("r1", OCT, Some("old")),
            message("plain", OCT, None),
            message("r1b", OCT, Some("old")),
        ];
        let stored: Vec<&ChatMessage> = batch.iter().collect();
        let marks = [mark("late", OCT, "r2"), mark("old", SEP, "r1")];
        let items = search_items("idx", &stored, &marks);
        let created: Vec<(usize, Option<&str>)> = items
            .iter()
            .filter_map(|(i, (_, _, op))| match op {
                SearchOp::Create(doc) => Some((*i, doc["recalled_by"].as_str())),
                SearchOp::MarkRecalled(_) => None,
            })
            .collect();
        assert_eq!(
            created,
            vec![(0, Some("r2")), (1, None), (2, None), (3, None)]
        );
        let updates: Vec<_> = items
            .iter()
            .filter(|(_, (_, _, op))| matches!(op, SearchOp::MarkRecalled(_)))
            .cloned()
            .collect();
        let update = |owner: usize, month: i64, msgid: &str, by: &str| {
            let op = SearchOp::MarkRecalled(by.into());
            (owner, (index_for("idx", month), msgid.to_string(), op))
        };
        assert_eq!(
            updates,
            vec![
                // In the batch too: a replay finds its document already there, unmarked.
                update(0, OCT, "late", "r2"),
                // One update, in the message's own monthly index, owned by a recall naming it.
                update(1, SEP, "old", "r1"),
            ]
        );
    }
}
