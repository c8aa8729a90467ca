//! The stats stage's handler on the runtime's consumer loop, around [`WindowStore`]: one window
//! store per assigned clean partition, finals and corrections to the compacted stats topic
//! (acknowledged before anything moves on), late events parked with class `late`.
//!
//! Commit rule (exactness after kill -9): a record's offset is finished only once every window
//! it fell in is dropped, i.e. the committed offset never passes the first record of a window
//! still retained ([`WindowStore::safe_offset`]).
//!
//! On the runtime's commit timer (the `commit_interval`, 1 s by default) windows close, their
//! finals are emitted, and before the commit that follows dropped windows or a moved offset the
//! partition's checkpoint is written (`checkpoint`). A restart replays from the committed offset
//! with that watermark: every retained window is rebuilt whole and re-emitted under the same
//! compacted key, and records handled before (in windows dropped since, or parked as late) are
//! recognised and skipped.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use wx_codec::{Codec, GroupWindowCount, StatsFormat};
use wx_kafka::{Consumed, OutputRecord, Producer, Ticket, TopicPartition};
use wx_runtime::{
    Backoff, Batching, Clock, Handler, Parker, Stage, StageConsumer, StageContext, StageControl,
    StageError, StageHealth,
};

use crate::checkpoint::{CheckpointError, Checkpoints};

/// The first and the longest pause between tries of a checkpoint read that failed.
const CHECKPOINT_RETRY: Duration = Duration::from_secs(1);
const CHECKPOINT_RETRY_CAP: Duration = Duration::from_secs(15);
use crate::metrics as metric;
use crate::window::{WindowSpec, WindowStore};

/// The msgtimes the stage counts; others are parked as `invalid_time` before they touch any
/// state (a watermark, a window, window arithmetic near `i64::MAX`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValidTimes {
    pub earliest_ms: i64,
    /// How far after the wall clock a msgtime may be.
    pub max_future_ms: i64,
}

impl ValidTimes {
    fn admits(&self, msgtime: i64, now: i64) -> bool {
        msgtime >= self.earliest_ms && msgtime <= now.saturating_add(self.max_future_ms)
    }
}

/// The stats stage.
pub struct StatsStage {
    consumer: StageConsumer,
    counter: Counter,
}

impl std::fmt::Debug for StatsStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatsStage")
            .field("stats_topic", &self.counter.stats_topic)
            .finish_non_exhaustive()
    }
}

/// Counts records into windows and emits them.
struct Counter {
    producer: Producer,
    codec: Arc<Codec>,
    parker: Parker,
    checkpoints: Checkpoints,
    health: Arc<StageHealth>,
    clock: Clock,
    spec: WindowSpec,
    valid: ValidTimes,
    format: StatsFormat,
    stats_topic: String,
    partitions: HashMap<i32, PartitionState>,
    /// The stage's shutdown, which ends a wait for a checkpoint.
    shutdown: CancellationToken,
}

struct PartitionState {
    topic: String,
    store: WindowStore,
    /// Tickets not yet finished, by offset.
    held: BTreeMap<i64, Ticket>,
    /// The safe offset and the number of windows dropped when the last checkpoint was written.
    written: Option<(i64, u64)>,
}

impl StatsStage {
    pub(crate) fn new(
        context: &StageContext,
        consumer: StageConsumer,
        producer: Producer,
        checkpoints: Checkpoints,
        spec: WindowSpec,
        valid: ValidTimes,
        format: StatsFormat,
    ) -> StatsStage {
        StatsStage {
            consumer,
            counter: Counter {
                parker: context.parker(producer.clone(), wx_runtime::CLEAN_RECORD),
                producer,
                codec: context.codec.clone(),
                checkpoints,
                health: context.health.clone(),
                clock: context.clock,
                spec,
                valid,
                format,
                stats_topic: context.topic("stats").to_string(),
                partitions: HashMap::new(),
                shutdown: CancellationToken::new(),
            },
        }
    }
}

impl Stage for StatsStage {
    fn control(&self) -> Arc<dyn StageControl> {
        Arc::new(self.consumer.control())
    }

    async fn run(self, shutdown: CancellationToken) -> Result<(), StageError> {
        let mut counter = self.counter;
        counter.shutdown = shutdown.clone();
        let result = self.consumer.run(counter, Batching::ONE, shutdown).await;
        tracing::info!("The stats stage stopped; retained windows are replayed on restart.");
        result
    }
}

impl Handler for Counter {
    async fn handle(
        &mut self,
        batch: Vec<Consumed>,
        consumer: &StageConsumer,
    ) -> Result<(), StageError> {
        for record in batch {
            self.count(record, consumer).await?;
        }
        Ok(())
    }

    /// Closes the windows that are due, emits them, and makes each partition's checkpoint
    /// durable before the commit right after moves past what it covers.
    async fn before_commit(&mut self, consumer: &StageConsumer) -> Result<(), StageError> {
        let now = self.clock.now_ms();
        let mut partitions = std::mem::take(&mut self.partitions);
        let mut result = Ok(());
        for (p, state) in partitions.iter_mut() {
            let finals = state.store.close_due(now);
            result = self.emit(*p, &finals).await;
            if result.is_err() {
                break;
            }
            result = self.write_checkpoint(*p, state).await;
            if result.is_err() {
                break;
            }
            release(consumer, state);
            metrics::gauge!(metric::OPEN_WINDOWS, "partition" => p.to_string())
                .set(state.store.open_windows() as f64);
            // No watermark before the partition's first counted event (i64::MIN).
            if state.store.watermark() != i64::MIN {
                metrics::gauge!(metric::WATERMARK_LAG, "partition" => p.to_string())
                    .set((now.saturating_sub(state.store.watermark()) as f64 / 1000.0).max(0.0));
            }
        }
        self.partitions = partitions;
        result
    }

    /// Revoked partitions' windows are rebuilt by their next owner from the committed (safe)
    /// offset.
    fn assigned(&mut self, partitions: &BTreeSet<TopicPartition>) {
        self.partitions
            .retain(|p, _| partitions.iter().any(|(_, owned)| owned == p));
    }

    async fn stop(self) -> Result<(), StageError> {
        Ok(())
    }
}

impl Counter {
    /// Counts one clean record, or parks it (`late`, `undecodable`); holds its ticket until no
    /// retained window needs it.
    async fn count(
        &mut self,
        record: Consumed,
        consumer: &StageConsumer,
    ) -> Result<(), StageError> {
        if !consumer.is_live(&record.ticket) {
            // Received before a rebalance that took its partition (and maybe gave it back):
            // the partition is delivered again from its committed offset.
            return Ok(());
        }
        if !self.partitions.contains_key(&record.partition) {
            let Some(state) = self
                .partition_state(&record.topic, record.partition, record.offset, consumer)
                .await?
            else {
                // Shutdown, or the partition moved while its checkpoint was awaited: the
                // record's ticket is stale, and it is delivered again from the committed offset.
                return Ok(());
            };
            self.partitions.insert(record.partition, state);
        }
        metrics::counter!(metric::RECORDS_CONSUMED).increment(1);
        let now = self.clock.now_ms();
        // A tombstone, or parked as undecodable: None.
        let message = self.parker.clean_message(&record, now, consumer).await?;
        let Some(state) = self.partitions.get_mut(&record.partition) else {
            return Ok(());
        };
        let was_replaying = state.store.replaying();
        let letter = match message {
            Some(m) if !self.valid.admits(m.msgtime, now) => {
                let why = format!(
                    "msgtime {} is before {} or more than {} ms after the wall clock",
                    m.msgtime, self.valid.earliest_ms, self.valid.max_future_ms
                );
                Some(
                    self.parker
                        .letter(&record, "invalid_time", why, now)
                        .about_message(&m),
                )
            }
            Some(m) => {
                let observed = state.store.observe(&m, record.offset, now);
                (!observed.late.is_empty()).then(|| {
                    metrics::counter!(metric::LATE).increment(1);
                    self.parker
                        .letter(
                            &record,
                            "late",
                            "later than the window's grace and allowed lateness",
                            now,
                        )
                        .about_message(&m)
                })
            }
            None => None,
        };
        if was_replaying && !state.store.replaying() {
            tracing::info!(
                partition = record.partition,
                through = record.offset,
                "Replay done; counting live."
            );
        }
        if let Some(letter) = letter {
            // Acknowledged before the record's offset may be finished; an encode failure stops
            // the stage with the offset unfinished.
            self.parker.park_counted(&letter).await?;
        }
        let Some(state) = self.partitions.get_mut(&record.partition) else {
            return Ok(());
        };
        state.held.insert(record.offset, record.ticket.clone());
        release(consumer, state);
        Ok(())
    }

    /// The state of a partition seen for the first time (its first record is at `first`):
    /// resumed from its latest checkpoint, or new. Without the checkpoint the replay could
    /// re-emit a dropped window partially, so the stage never guesses: a broker that does not
    /// answer is waited for as long as it takes, with capped backoff, consumption paused and
    /// polled meanwhile (the member stays in its group) and the wait shown in health; a
    /// checkpoint that does not parse stops the stage with its key (an operator tombstones it to
    /// count from the committed offset). None on shutdown, or when the assignment changed
    /// while waiting (the record is stale).
    async fn partition_state(
        &self,
        topic: &str,
        partition: i32,
        first: i64,
        consumer: &StageConsumer,
    ) -> Result<Option<PartitionState>, StageError> {
        let assignments = consumer.assignments();
        let mut backoff = Backoff::new(CHECKPOINT_RETRY, CHECKPOINT_RETRY_CAP);
        let mut waited = false;
        let checkpoint = loop {
            match self.checkpoints.read(topic, partition).await {
                Ok(cp) => {
                    self.health.recovered("checkpoints");
                    if waited {
                        consumer.hold(false);
                    }
                    break cp;
                }
                Err(CheckpointError::Kafka(e)) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %e, partition, retry_in = ?delay, "Reading the checkpoint failed; retrying.");
                    self.health.failing("checkpoints", &e);
                    waited = true;
                    consumer.hold(true);
                    if !consumer.back_off(delay, &self.shutdown).await? {
                        return Ok(None);
                    }
                    if assignments.has_changed().unwrap_or(true) {
                        consumer.hold(false);
                        return Ok(None);
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, partition, "The partition's checkpoint cannot be read; stopping.");
                    return Err(StageError::stage(e));
                }
            }
        };
        let store = match checkpoint {
            Some(cp) => {
                tracing::info!(
                    partition,
                    from = first,
                    through = cp.through,
                    "Replaying the retained windows from the checkpoint."
                );
                WindowStore::resume(self.spec.clone(), cp, first, self.clock.now_ms())
            }
            None => {
                tracing::info!(
                    partition,
                    from = first,
                    "No checkpoint for this partition: counting from the committed offset."
                );
                WindowStore::new(self.spec.clone())
            }
        };
        Ok(Some(PartitionState {
            topic: topic.to_string(),
            store,
            held: BTreeMap::new(),
            written: None,
        }))
    }

    /// Writes a partition's checkpoint, acknowledged, if windows were dropped or the safe offset
    /// moved since the last one.
    /// A checkpoint the broker refuses for good (its topic gone or not writable) stops the
    /// stage: [`StageError::Refused`].
    async fn write_checkpoint(
        &self,
        partition: i32,
        state: &mut PartitionState,
    ) -> Result<(), StageError> {
        let Some(cp) = state.store.checkpoint() else {
            return Ok(());
        };
        let offset = state
            .store
            .safe_offset()
            .unwrap_or(state.store.last_offset() + 1);
        let dropped = state.store.dropped();
        if state.written == Some((offset, dropped)) {
            return Ok(());
        }
        self.checkpoints
            .write(&state.topic, partition, offset, cp)
            .await
            .map_err(StageError::refused)?;
        state.written = Some((offset, dropped));
        Ok(())
    }

    /// Sends window records, all enqueued at once and each acknowledged before returning (a
    /// failed one is sent again until it is). Their key is [`GroupWindowCount::key`], except for
    /// per-sender groups: a sender's 1:1 conversations spread over clean partitions (keyed by
    /// conversation), so each partition emits its share under `<key>/p<partition>` and readers
    /// sum the shares (exact: a msgid lives in one conversation). A record that cannot be
    /// encoded stops the stage before anything of the tick is committed.
    async fn emit(&self, partition: i32, records: &[GroupWindowCount]) -> Result<(), StageError> {
        let mut encoded = Vec::with_capacity(records.len());
        for r in records {
            let key = if r.group_kind == "sender" {
                format!("{}/p{partition}", r.key())
            } else {
                r.key()
            };
            let value =
                self.format
                    .encode(&self.codec, r)
                    .map_err(|source| StageError::Encode {
                        subject: "window count",
                        source,
                    })?;
            encoded.push(OutputRecord {
                topic: self.stats_topic.clone(),
                key: key.into_bytes(),
                value,
            });
        }
        let emitted = encoded.len() as u64;
        // A window count is a few hundred bytes: a refusal for good is the stats topic's
        // configuration (gone, not writable), and stops the stage.
        self.producer
            .write_all(encoded, Duration::from_secs(10))
            .await
            .map_err(StageError::refused)?;
        metrics::counter!(metric::EMITTED).increment(emitted);
        let corrections = records.iter().filter(|r| r.revision > 0).count();
        metrics::counter!(metric::CORRECTIONS).increment(corrections as u64);
        Ok(())
    }
}

/// Finishes the tickets of records no retained window needs any more.
fn release(consumer: &StageConsumer, state: &mut PartitionState) {
    // The records before the safe offset are done (all of them without a retained window):
    // split off in O(log n), not a walk over every held record.
    let done = match state.store.safe_offset() {
        Some(safe) => {
            let kept = state.held.split_off(&safe);
            std::mem::replace(&mut state.held, kept)
        }
        None => std::mem::take(&mut state.held),
    };
    for ticket in done.values() {
        consumer.finish(ticket);
    }
}
