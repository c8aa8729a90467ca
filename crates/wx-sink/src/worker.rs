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
use crate::mysql::{MessageStore, is_retryable};
use crate::search::{SearchIndex, document, index_for};
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
        let key = dead.key();
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
        let Some(stored) = self.write_mysql(messages, shutdown).await else {
            return false;
        };
        let ok = self.write_search(&stored, shutdown).await;
        if self.consumer.is_paused() && ok {
            self.set_paused(false);
        }
        ok
    }

    /// MySQL with retries; rows the database refuses as data are parked one by one. Returns the
    /// rows stored (None on shutdown).
    async fn write_mysql<'a>(
        &self,
        messages: Vec<(&'a Consumed, ChatMessage)>,
        shutdown: &CancellationToken,
    ) -> Option<Vec<(&'a Consumed, ChatMessage)>> {
        let rows: Vec<ChatMessage> = messages.iter().map(|(_, m)| m.clone()).collect();
        match self.retry_mysql(&rows, shutdown).await? {
            Ok(()) => {
                for (record, _) in &messages {
                    metrics::counter!(m::ROWS_WRITTEN, "partition" => record.partition.to_string())
                        .increment(1);
                }
                Some(messages)
            }
            Err(e) => {
                tracing::warn!(error = %e, "MySQL refused a batch; writing its rows one by one.");
                let mut stored = Vec::with_capacity(messages.len());
                for (record, message) in messages {
                    match self
                        .retry_mysql(std::slice::from_ref(&message), shutdown)
                        .await?
                    {
                        Ok(()) => {
                            metrics::counter!(m::ROWS_WRITTEN, "partition" => record.partition.to_string()).increment(1);
                            stored.push((record, message));
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
                Some(stored)
            }
        }
    }

    /// Retries retryable errors (pausing consumption meanwhile); returns the final outcome, or
    /// None on shutdown.
    async fn retry_mysql(
        &self,
        rows: &[ChatMessage],
        shutdown: &CancellationToken,
    ) -> Option<Result<(), sqlx::Error>> {
        let mut delay = Duration::from_millis(200);
        loop {
            let started = Instant::now();
            match self.store.write(rows).await {
                Ok(()) => {
                    metrics::histogram!(m::BATCH_SECONDS, "store" => "mysql")
                        .record(started.elapsed().as_secs_f64());
                    self.health.recovered("mysql");
                    return Some(Ok(()));
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

    /// Elasticsearch: bulk `create` bounded by count and bytes; retryable items (429, 5xx) are
    /// sent again with capped backoff, refused ones parked with the item's error, version
    /// conflicts count as written. False on shutdown.
    async fn write_search(
        &self,
        stored: &[(&Consumed, ChatMessage)],
        shutdown: &CancellationToken,
    ) -> bool {
        let prefix = self.search.prefix().to_string();
        let mut pending: Vec<usize> = (0..stored.len()).collect();
        let mut delay = Duration::from_millis(200);
        while !pending.is_empty() {
            let docs: Vec<(String, serde_json::Value)> = pending
                .iter()
                .map(|&i| {
                    (
                        index_for(&prefix, stored[i].1.msgtime),
                        document(&stored[i].1),
                    )
                })
                .collect();
            let sizes: Vec<usize> = docs.iter().map(|(_, d)| d.to_string().len() + 96).collect();
            let mut retry = Vec::new();
            for range in chunks(&sizes, self.options.batch_max, self.options.bulk_max_bytes) {
                let started = Instant::now();
                match self.search.bulk_create(&docs[range.clone()]).await {
                    Ok(verdicts) => {
                        metrics::histogram!(m::BATCH_SECONDS, "store" => "search")
                            .record(started.elapsed().as_secs_f64());
                        for (offset, verdict) in verdicts.into_iter().enumerate() {
                            let index = pending[range.start + offset];
                            let (record, message) = &stored[index];
                            match verdict {
                                ItemVerdict::Written => metrics::counter!(m::DOCUMENTS_WRITTEN, "partition" => record.partition.to_string()).increment(1),
                                ItemVerdict::Retry { status } => {
                                    self.health.failing("search", format!("bulk items answered {status}"));
                                    retry.push(index)
                                }
                                ItemVerdict::Refused { status, reason } => {
                                    self.park(dead_letter(record, Some(message), "mapping", format!("{status}: {reason}"))).await
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
                            let (record, message) = &stored[pending[i]];
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
