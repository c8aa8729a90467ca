//! The sink stage's handler on the runtime's consumer loop, a thin shell around the stores:
//! for each batch, write MySQL, then Elasticsearch, park what a store refuses, and only then
//! finish the records' offsets. While a store fails the consumer is paused (no unbounded
//! buffering) and the write retried with capped backoff; it resumes by itself when the store is
//! back. Between retries it keeps polling the paused consumer, so an outage longer than
//! `max.poll.interval.ms` does not take the worker out of its group.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use wx_codec::{ChatMessage, Codec, DeadLetter};
use wx_kafka::{Consumed, Producer};
use wx_runtime::{
    Batching, Clock, Handler, Parker, Stage, StageConsumer, StageContext, StageControl, StageError,
    StageHealth,
};

use wx_runtime::settings::redact_urls;

use crate::SinkSettings;
use crate::metrics as m;
use crate::search::{Failure, SearchIndex, document, index_for};
use crate::triage::{ItemVerdict, chunks};
use wx_mysql::{MessageStore, refuses_rows};

/// How the originals of the sink's dead letters are read back: a clean-topic record's value.
pub const CLEAN_RECORD: &str = "clean-record";

/// One sink worker (a consumer-group member) and what it writes to.
pub struct SinkWorker {
    consumer: StageConsumer,
    writer: Writer,
    partitions_ahead: u32,
    maintenance_interval: Duration,
}

/// Writes batches to both stores.
struct Writer {
    store: MessageStore,
    search: SearchIndex,
    codec: Arc<Codec>,
    parker: Parker,
    health: Arc<StageHealth>,
    clock: Clock,
    batch_max: usize,
    batch_linger: Duration,
    bulk_max_bytes: usize,
    backoff_cap: Duration,
    /// Set by `run`: a retry of a failing store gives up on shutdown.
    shutdown: CancellationToken,
}

impl std::fmt::Debug for SinkWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SinkWorker")
            .field("database", &self.writer.store.database())
            .field("index", &self.writer.search.prefix())
            .finish_non_exhaustive()
    }
}

/// Doubles a backoff up to `cap`.
fn next_backoff(delay: Duration, cap: Duration) -> Duration {
    (delay * 2).min(cap)
}

impl SinkWorker {
    pub(crate) fn new(
        settings: &SinkSettings,
        context: &StageContext,
        store: MessageStore,
        search: SearchIndex,
        consumer: StageConsumer,
        producer: Producer,
    ) -> SinkWorker {
        SinkWorker {
            consumer,
            partitions_ahead: settings.partitions_ahead,
            maintenance_interval: settings.partition_maintenance_interval,
            writer: Writer {
                store,
                search,
                codec: context.codec.clone(),
                parker: context.parker(producer, CLEAN_RECORD),
                health: context.health.clone(),
                clock: context.clock,
                batch_max: settings.batch_max,
                batch_linger: settings.batch_linger,
                bulk_max_bytes: settings.bulk_max_bytes,
                backoff_cap: settings.backoff_cap,
                shutdown: CancellationToken::new(),
            },
        }
    }
}

impl Stage for SinkWorker {
    fn control(&self) -> Arc<dyn StageControl> {
        Arc::new(self.consumer.control())
    }

    async fn run(self, shutdown: CancellationToken) -> Result<(), StageError> {
        let SinkWorker {
            consumer,
            mut writer,
            partitions_ahead,
            maintenance_interval,
        } = self;
        writer.shutdown = shutdown.clone();
        let batching = Batching {
            max: writer.batch_max,
            linger: writer.batch_linger,
        };
        let stop_maintaining = shutdown.child_token();
        let maintenance = tokio::spawn(maintain_partitions(
            writer.store.clone(),
            writer.health.clone(),
            writer.clock,
            partitions_ahead,
            maintenance_interval,
            stop_maintaining.clone(),
        ));
        let result = consumer.run(writer, batching, shutdown).await;
        stop_maintaining.cancel();
        let _ = maintenance.await;
        result
    }
}

/// Keeps `ahead` monthly partitions ahead of the current month while the sink runs, checking
/// every `interval`; a failure is shown in health and tried again next time.
async fn maintain_partitions(
    store: MessageStore,
    health: Arc<StageHealth>,
    clock: Clock,
    ahead: u32,
    interval: Duration,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // the first is immediate; `build` has just done it
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        match store.ensure_partitions(clock.now_ms(), ahead).await {
            Ok(created) => {
                health.recovered("mysql partitions");
                if !created.is_empty() {
                    tracing::info!(partitions = ?created, "Monthly partitions created ahead.");
                }
            }
            Err(e) => {
                let e = redact_urls(&e.to_string());
                tracing::warn!(error = %e, "Creating the monthly partitions ahead failed; trying again later.");
                health.failing("mysql partitions", &e);
            }
        }
    }
}

impl Handler for Writer {
    async fn handle(
        &mut self,
        batch: Vec<Consumed>,
        consumer: &StageConsumer,
    ) -> Result<(), StageError> {
        if !self.write_batch(&batch, consumer).await? {
            // Shutdown while a store was failing: these records stay unfinished and are
            // repeated by the next owner.
            return Ok(());
        }
        for record in &batch {
            consumer.finish(&record.ticket);
        }
        Ok(())
    }

    async fn stop(self) -> Result<(), StageError> {
        Ok(())
    }
}

impl Writer {
    /// Waits `delay` before the next try of a failing store (consumption paused); false on
    /// shutdown.
    async fn back_off(
        &self,
        consumer: &StageConsumer,
        delay: Duration,
    ) -> Result<bool, StageError> {
        consumer.hold(true);
        consumer.back_off(delay, &self.shutdown).await
    }

    /// Parks a record a store refuses (or that does not decode), counted by class.
    async fn park(&self, letter: DeadLetter) -> Result<(), StageError> {
        self.parker.park(&letter).await?;
        metrics::counter!(m::DEAD_LETTERED, "partition" => letter.source_partition.to_string(), "class" => letter.error_class.clone()).increment(1);
        Ok(())
    }

    /// Writes a batch to both stores; Ok(false) when shutdown interrupted a retry.
    async fn write_batch(
        &self,
        batch: &[Consumed],
        consumer: &StageConsumer,
    ) -> Result<bool, StageError> {
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
                    let letter = self.parker.letter(
                        record,
                        "undecodable",
                        e.to_string(),
                        self.clock.now_ms(),
                    );
                    self.park(letter).await?;
                }
                None => {}
            }
        }
        let Some(stored) = self.write_mysql(messages, consumer).await? else {
            return Ok(false);
        };
        let written = self.write_search(&stored, consumer).await?;
        if written {
            consumer.hold(false);
        }
        Ok(written)
    }

    /// MySQL with retries; rows the database refuses as data are parked one by one. Returns the
    /// rows stored (None on shutdown).
    async fn write_mysql<'a>(
        &self,
        messages: Vec<(&'a Consumed, ChatMessage)>,
        consumer: &StageConsumer,
    ) -> Result<Option<Vec<(&'a Consumed, ChatMessage)>>, StageError> {
        let rows: Vec<ChatMessage> = messages.iter().map(|(_, m)| m.clone()).collect();
        let Some(outcome) = self.retry_mysql(&rows, consumer).await? else {
            return Ok(None);
        };
        let Err(e) = outcome else {
            for (record, _) in &messages {
                metrics::counter!(m::ROWS_WRITTEN, "partition" => record.partition.to_string())
                    .increment(1);
            }
            return Ok(Some(messages));
        };
        tracing::warn!(error = %redact_urls(&e.to_string()), "MySQL refused a batch; writing its rows one by one.");
        let mut stored = Vec::with_capacity(messages.len());
        for (record, message) in messages {
            let Some(outcome) = self
                .retry_mysql(std::slice::from_ref(&message), consumer)
                .await?
            else {
                return Ok(None);
            };
            match outcome {
                Ok(()) => {
                    metrics::counter!(m::ROWS_WRITTEN, "partition" => record.partition.to_string())
                        .increment(1);
                    stored.push((record, message));
                }
                Err(e) => {
                    let letter = self
                        .parker
                        .letter(
                            record,
                            "store_rejected",
                            redact_urls(&e.to_string()),
                            self.clock.now_ms(),
                        )
                        .about_message(&message);
                    self.park(letter).await?;
                }
            }
        }
        Ok(Some(stored))
    }

    /// Retries retryable errors (pausing consumption meanwhile); returns the final outcome, or
    /// None on shutdown.
    async fn retry_mysql(
        &self,
        rows: &[ChatMessage],
        consumer: &StageConsumer,
    ) -> Result<Option<Result<(), wx_mysql::MysqlError>>, StageError> {
        let mut delay = Duration::from_millis(200);
        loop {
            let started = Instant::now();
            match self.store.write(rows).await {
                Ok(()) => {
                    metrics::histogram!(m::BATCH_SECONDS, "store" => "mysql")
                        .record(started.elapsed().as_secs_f64());
                    self.health.recovered("mysql");
                    return Ok(Some(Ok(())));
                }
                Err(e) if !refuses_rows(&e) => {
                    let e = redact_urls(&e.to_string());
                    metrics::counter!(m::RETRIES, "store" => "mysql").increment(1);
                    self.health.failing("mysql", &e);
                    if consumer.hold(true) {
                        tracing::warn!(error = %e, "MySQL is failing; pausing consumption and retrying.");
                    }
                    if !self.back_off(consumer, delay).await? {
                        return Ok(None);
                    }
                    delay = next_backoff(delay, self.backoff_cap);
                }
                Err(e) => return Ok(Some(Err(e))),
            }
        }
    }

    /// Elasticsearch: bulk `create` bounded by count and bytes. Items and requests the store
    /// fails (auth, a write block, a missing index, 429, 5xx, unreachable) are sent again with
    /// capped backoff while consumption is paused; a request over the endpoint's size limit is
    /// halved until it fits; only documents refused as such (400 mapping, or one document alone
    /// over the limit) are parked; version conflicts count as written. Ok(false) on shutdown.
    async fn write_search(
        &self,
        stored: &[(&Consumed, ChatMessage)],
        consumer: &StageConsumer,
    ) -> Result<bool, StageError> {
        let prefix = self.search.prefix().to_string();
        let mut pending: Vec<usize> = (0..stored.len()).collect();
        let mut delay = Duration::from_millis(200);
        let refused = |record: &Consumed, message: &ChatMessage, class: &str, reason: String| {
            self.parker
                .letter(record, class, reason, self.clock.now_ms())
                .about_message(message)
        };
        while !pending.is_empty() {
            let written_at = self.clock.now_ms();
            let docs: Vec<(String, serde_json::Value)> = pending
                .iter()
                .map(|&i| {
                    (
                        index_for(&prefix, stored[i].1.msgtime),
                        document(&stored[i].1, written_at),
                    )
                })
                .collect();
            let sizes: Vec<usize> = docs.iter().map(|(_, d)| d.to_string().len() + 96).collect();
            let mut retry = Vec::new();
            let mut requests: std::collections::VecDeque<_> =
                chunks(&sizes, self.batch_max, self.bulk_max_bytes).into();
            while let Some(range) = requests.pop_front() {
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
                                ItemVerdict::Retry { status, reason } => {
                                    self.health.failing("search", format!("bulk items answered {status}: {reason}"));
                                    retry.push(index)
                                }
                                ItemVerdict::Refused { status, reason } => {
                                    self.park(refused(record, message, "mapping", format!("{status}: {reason}"))).await?
                                }
                            }
                        }
                    }
                    Err(e) if e.failure() == Failure::Store => {
                        tracing::warn!(error = %e, "The search endpoint is failing; retrying.");
                        self.health.failing("search", &e);
                        retry.extend(range.map(|i| pending[i]));
                    }
                    Err(e) if e.failure() == Failure::TooLarge && range.len() > 1 => {
                        // Larger than the endpoint accepts (`http.max_content_length`): halve it.
                        let middle = range.start + range.len() / 2;
                        requests.push_front(middle..range.end);
                        requests.push_front(range.start..middle);
                    }
                    Err(e) => {
                        // A document alone over the request limit, or a request refused as such.
                        let class = e.failure().parked_class();
                        for i in range {
                            let (record, message) = &stored[pending[i]];
                            self.park(refused(record, message, class, e.to_string()))
                                .await?;
                        }
                    }
                }
            }
            pending = retry;
            if !pending.is_empty() {
                metrics::counter!(m::RETRIES, "store" => "search").increment(pending.len() as u64);
                if !self.back_off(consumer, delay).await? {
                    return Ok(false);
                }
                delay = next_backoff(delay, self.backoff_cap);
            }
        }
        self.health.recovered("search");
        Ok(true)
    }
}
