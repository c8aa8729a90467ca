//! The stats stage's Kafka shell around [`WindowStore`]: a consumer group on the clean topic, one
//! window store per assigned partition, finals and corrections to the compacted stats topic
//! (acknowledged before anything moves on), late events parked with class `late`.
//!
//! Commit rule (exactness after kill -9): a record's offset is finished only once every window
//! it fell in is dropped, i.e. the committed offset never passes the first record of a window
//! still retained ([`WindowStore::safe_offset`]).
//!
//! Checkpoints: before a commit that follows dropped windows or a moved offset, the partition's
//! [`Checkpoint`] (watermark and last offset observed) is written, acknowledged, to the compacted
//! checkpoint topic (partition = clean partition, key = `group/clean topic/partition`). A
//! restart replays from the committed offset with that watermark: every retained window is
//! rebuilt whole and re-emitted under the same compacted key, and records handled before (in
//! windows dropped since, or parked as late) are recognised and skipped. Kafka's own offset
//! metadata could hold the checkpoint too; it stays in its topic because it must be durable
//! before the commit it guards, which a separate acknowledged write makes plain (ARCHITECTURE.md).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use wx_codec::{ChatMessage, Codec, DeadLetter, GroupWindowCount, StatsFormat};
use wx_kafka::{
    Consumed, ConsumerOptions, GroupConsumer, KafkaConfig, KafkaError, Producer, Ticket,
};
use wx_topology::settings::{duration, parse_settings};

use crate::window::{Checkpoint, DirectGrouping, WindowSpec, WindowStore};

fn default_windows() -> Vec<String> {
    vec!["1m".into(), "1h".into()]
}
fn default_grace() -> Duration {
    Duration::from_secs(10)
}
fn default_lateness() -> Duration {
    Duration::from_secs(600)
}
fn default_group() -> String {
    "wxstream-stats".into()
}
fn default_direct() -> String {
    "conversation".into()
}

/// Why the stats stage stopped.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    /// A record could not be parked, so its offset is never finished: stop rather than skip it.
    #[error("a dead letter of class {class} cannot be encoded")]
    DeadLetterEncode {
        class: String,
        source: wx_codec::CodecError,
    },
}

/// The stats connector's settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatsSettings {
    /// Window sizes, e.g. `[1m, 1h]`.
    #[serde(default = "default_windows")]
    pub windows: Vec<String>,
    /// How long after a window's end events are still waited for.
    #[serde(default = "default_grace", deserialize_with = "duration")]
    pub grace: Duration,
    /// How long after closing a window still takes corrections.
    #[serde(default = "default_lateness", deserialize_with = "duration")]
    pub lateness: Duration,
    /// `conversation` or `sender`: how 1:1 chats are grouped.
    #[serde(default = "default_direct")]
    pub direct_grouping: String,
    /// `avro` or `json`.
    #[serde(default)]
    pub format: StatsFormat,
    #[serde(default = "default_group")]
    pub group_id: String,
    /// How long a dead member keeps its partitions.
    #[serde(
        default = "wx_topology::settings::consumer_defaults::session_timeout",
        deserialize_with = "duration"
    )]
    pub session_timeout: Duration,
}

impl StatsSettings {
    /// Parses and validates the connector's `settings` block; errors name the field.
    pub fn from_settings(
        settings: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<StatsSettings, String> {
        let parsed: StatsSettings = parse_settings("stats", settings)?;
        parsed.spec()?;
        Ok(parsed)
    }

    /// The window spec the settings describe.
    pub fn spec(&self) -> Result<WindowSpec, String> {
        let mut sizes_ms = Vec::new();
        for w in &self.windows {
            let d = wx_topology::settings::parse_duration(w)
                .map_err(|e| format!("stats settings: field `windows`: {w}: {e}"))?;
            let ms = i64::try_from(d.as_millis()).unwrap_or(0);
            if ms <= 0 {
                return Err("stats settings: field `windows`: sizes must be positive".into());
            }
            sizes_ms.push(ms);
        }
        let direct = match self.direct_grouping.as_str() {
            "conversation" => DirectGrouping::Conversation,
            "sender" => DirectGrouping::Sender,
            _ => {
                return Err(
                    "stats settings: field `direct_grouping`: `conversation` or `sender`".into(),
                );
            }
        };
        Ok(WindowSpec {
            sizes_ms,
            grace_ms: i64::try_from(self.grace.as_millis()).unwrap_or(0),
            lateness_ms: i64::try_from(self.lateness.as_millis()).unwrap_or(0),
            direct,
        })
    }
}

/// Metric names (`wxstream_stats_*`).
pub mod metric {
    pub const OPEN_WINDOWS: &str = "wxstream_stats_open_windows";
    pub const EMITTED: &str = "wxstream_stats_records_emitted_total";
    pub const CORRECTIONS: &str = "wxstream_stats_corrections_total";
    pub const LATE: &str = "wxstream_stats_late_events_total";
    pub const WATERMARK_LAG: &str = "wxstream_stats_watermark_lag_seconds";

    /// Registers every stats metric's help text.
    pub fn describe() {
        use metrics::{describe_counter, describe_gauge};
        describe_gauge!(OPEN_WINDOWS, "Windows not yet closed, by partition.");
        describe_counter!(EMITTED, "Window records emitted (finals and corrections).");
        describe_counter!(CORRECTIONS, "Corrections of closed windows.");
        describe_counter!(
            LATE,
            "Events later than grace + lateness, parked as `late`."
        );
        describe_gauge!(
            WATERMARK_LAG,
            "Wall clock minus the watermark, by partition."
        );
        describe_gauge!(
            "wxstream_stats_consumer_lag_records",
            "Clean records not yet consumed (partition end minus the stage's position), by partition."
        );
        describe_gauge!(
            "wxstream_stats_committed_offset",
            "The clean offset last committed, by partition."
        );
        // Present from the start (0), so rules and dashboards see the series before any event.
        for counter in [EMITTED, CORRECTIONS, LATE] {
            metrics::counter!(counter).increment(0);
        }
    }
}

use wx_kafka::now_ms;

/// The stats stage.
pub struct StatsStage {
    consumer: GroupConsumer,
    producer: Producer,
    codec: Arc<Codec>,
    spec: WindowSpec,
    format: StatsFormat,
    stats_topic: String,
    dead_letter_topic: String,
    checkpoint_topic: String,
    checkpoint_partitions: i32,
    group: String,
    kafka: KafkaConfig,
}

/// A partition's checkpoint as written to the checkpoint topic (JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct StoredCheckpoint {
    /// The offset committed right after this was written (for operators; not needed to resume).
    offset: i64,
    #[serde(flatten)]
    checkpoint: Checkpoint,
}

impl std::fmt::Debug for StatsStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatsStage")
            .field("stats_topic", &self.stats_topic)
            .finish_non_exhaustive()
    }
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
    /// The operator's handle on the stage's consumer.
    pub fn control(&self) -> wx_kafka::ConsumerControl {
        self.consumer.control()
    }

    /// Joins the group on `clean_topic`. Must be called inside a tokio runtime.
    pub fn build(
        settings: &StatsSettings,
        kafka: &KafkaConfig,
        codec: Arc<Codec>,
        clean_topic: &str,
        stats_topic: &str,
        checkpoint_topic: &str,
        dead_letter_topic: &str,
    ) -> Result<StatsStage, String> {
        let spec = settings.spec()?;
        let clean_partitions =
            wx_kafka::partition_count(kafka, clean_topic).map_err(|e| e.to_string())?;
        let checkpoint_partitions =
            wx_kafka::partition_count(kafka, checkpoint_topic).map_err(|e| e.to_string())?;
        if checkpoint_partitions < clean_partitions {
            return Err(format!(
                "the checkpoint topic {checkpoint_topic} has {checkpoint_partitions} partitions; it needs at least as many as {clean_topic} ({clean_partitions})"
            ));
        }
        let producer = Producer::new(kafka, "wxstream-stats", Duration::from_secs(30))
            .map_err(|e| e.to_string())?;
        // Records of retained windows stay unfinished by design: do not wait for them.
        let options = ConsumerOptions::new(&settings.group_id, &[clean_topic], "wxstream_stats")
            .with_timeouts(settings.session_timeout, Duration::from_secs(1));
        let consumer = GroupConsumer::join(kafka, &options).map_err(|e| e.to_string())?;
        Ok(StatsStage {
            consumer,
            producer,
            codec,
            spec,
            format: settings.format,
            stats_topic: stats_topic.to_string(),
            dead_letter_topic: dead_letter_topic.to_string(),
            checkpoint_topic: checkpoint_topic.to_string(),
            checkpoint_partitions,
            group: settings.group_id.clone(),
            kafka: kafka.clone(),
        })
    }

    fn checkpoint_key(&self, topic: &str, partition: i32) -> String {
        format!("{}/{topic}/{partition}", self.group)
    }

    /// The latest checkpoint written for a clean partition (None if there is none).
    async fn read_checkpoint(
        &self,
        topic: &str,
        partition: i32,
    ) -> Result<Option<Checkpoint>, String> {
        let key = self.checkpoint_key(topic, partition).into_bytes();
        let (kafka, cp_topic) = (self.kafka.clone(), self.checkpoint_topic.clone());
        let target = partition;
        tokio::task::spawn_blocking(move || {
            const TAIL: i64 = 512;
            let timeout = Duration::from_secs(60);
            let latest = |records: Vec<wx_kafka::Record>| {
                records
                    .into_iter()
                    .filter(|r| r.key.as_deref() == Some(key.as_slice()))
                    .filter_map(|r| r.value)
                    .next_back()
            };
            let tail = wx_kafka::read_tail(&kafka, &cp_topic, target, TAIL, timeout)
                .map_err(|e| e.to_string())?;
            let full = tail.len() as i64 >= TAIL;
            let found = match latest(tail) {
                Some(v) => Some(v),
                // Not in the tail: the partition holds other groups' checkpoints too.
                None if full => latest(
                    wx_kafka::read_to_end(&kafka, &cp_topic, &[target], timeout)
                        .map_err(|e| e.to_string())?,
                ),
                None => None,
            };
            found
                .map(|v| {
                    serde_json::from_slice::<StoredCheckpoint>(&v)
                        .map(|s| s.checkpoint)
                        .map_err(|e| format!("checkpoint does not parse: {e}"))
                })
                .transpose()
        })
        .await
        .map_err(|e| e.to_string())?
    }

    /// Writes a partition's checkpoint, acknowledged, if windows were dropped or the safe offset
    /// moved since the last one (called right after `close_due`, before committing).
    async fn write_checkpoint(&self, partition: i32, state: &mut PartitionState) {
        let Some(cp) = state.store.checkpoint() else {
            return;
        };
        let offset = state
            .store
            .safe_offset()
            .unwrap_or(state.store.last_offset() + 1);
        let dropped = state.store.dropped();
        if state.written == Some((offset, dropped)) {
            return;
        }
        let stored = StoredCheckpoint {
            offset,
            checkpoint: cp,
        };
        if let Ok(value) = serde_json::to_vec(&stored) {
            let key = self.checkpoint_key(&state.topic, partition);
            self.producer
                .send_to_partition_until_acknowledged(
                    &self.checkpoint_topic,
                    partition % self.checkpoint_partitions,
                    key.as_bytes(),
                    &value,
                    Duration::from_secs(10),
                )
                .await;
            state.written = Some((offset, dropped));
        }
    }

    async fn send(&self, topic: &str, key: &str, value: &[u8]) {
        self.producer
            .send_until_acknowledged(topic, key.as_bytes(), Some(value), Duration::from_secs(10))
            .await;
    }

    /// Sends window records, all enqueued at once and each acknowledged before returning (a
    /// failed one is sent again until it is). Their key is [`GroupWindowCount::key`], except for
    /// per-sender groups: a sender's 1:1 conversations spread over clean partitions (keyed by
    /// conversation), so each partition emits its share under `<key>/p<partition>` and readers
    /// sum the shares (exact: a msgid lives in one conversation).
    async fn emit(&self, partition: i32, records: &[GroupWindowCount]) {
        let mut pending = Vec::with_capacity(records.len());
        for r in records {
            let key = if r.group_kind == "sender" {
                format!("{}/p{partition}", r.key())
            } else {
                r.key()
            };
            match self.format.encode(&self.codec, r) {
                Ok(value) => {
                    let delivery = self
                        .producer
                        .enqueue(&self.stats_topic, key.as_bytes(), &value)
                        .ok();
                    pending.push((key, value, delivery));
                }
                Err(e) => tracing::error!(error = %e, "Encoding a window record failed."),
            }
            if r.revision > 0 {
                metrics::counter!(metric::CORRECTIONS).increment(1);
            }
        }
        for (key, value, delivery) in pending {
            let acknowledged = match delivery {
                Some(d) => d.acknowledged().await.is_ok(),
                None => false,
            };
            if !acknowledged {
                self.send(&self.stats_topic, &key, &value).await;
            }
            metrics::counter!(metric::EMITTED).increment(1);
        }
    }

    /// Parks a clean record the stage does not count: `late` (with its message), or
    /// `undecodable` (no message). Acknowledged before the caller finishes the record's offset;
    /// a letter that cannot be encoded leaves the offset unfinished (the stage stops on it).
    async fn park(
        &self,
        record: &Consumed,
        m: Option<&ChatMessage>,
        class: &str,
        reason: String,
    ) -> Result<(), StatsError> {
        let now = now_ms();
        let dead = DeadLetter {
            original: record.value.clone().unwrap_or_default(),
            original_format: "clean-record".into(),
            error_class: class.into(),
            error_message: reason,
            stage: "stats".into(),
            corp_id: m.map(|m| m.corp_id.clone()),
            msgid: m.map(|m| m.msgid.clone()),
            key_version: m.and_then(|m| m.publickey_ver),
            source_topic: record.topic.clone(),
            source_partition: record.partition,
            source_offset: record.offset,
            seq: m.and_then(|m| m.source.seq),
            first_failed_at: now,
            last_failed_at: now,
            attempts: 1,
        };
        let value = self
            .codec
            .encode(&dead)
            .map_err(|source| StatsError::DeadLetterEncode {
                class: class.to_string(),
                source,
            })?;
        self.send(&self.dead_letter_topic, &dead.key(), &value)
            .await;
        Ok(())
    }

    /// The state of a partition seen for the first time (its first record is at `first`):
    /// resumed from its latest checkpoint, or new.
    async fn partition_state(&self, topic: &str, partition: i32, first: i64) -> PartitionState {
        let checkpoint = loop {
            match self.read_checkpoint(topic, partition).await {
                Ok(cp) => break cp,
                // Without the checkpoint the replay could re-emit a dropped window partially:
                // wait for it rather than guess.
                Err(e) => {
                    tracing::warn!(error = %e, partition, "Reading the checkpoint failed; retrying.");
                    tokio::time::sleep(Duration::from_secs(1)).await;
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
                WindowStore::resume(self.spec.clone(), cp, first, now_ms())
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
        PartitionState {
            topic: topic.to_string(),
            store,
            held: BTreeMap::new(),
            written: None,
        }
    }

    /// Runs until `shutdown`; then commits what is safe and leaves.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), StatsError> {
        let mut partitions: HashMap<i32, PartitionState> = HashMap::new();
        let mut assignments = self.consumer.assignments();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = assignments.changed() => {
                    // Revoked partitions' windows are rebuilt by their next owner from the
                    // committed (safe) offset.
                    let owned: Vec<i32> = assignments.borrow().iter().map(|(_, p)| *p).collect();
                    partitions.retain(|p, _| owned.contains(p));
                }
                _ = tick.tick() => {
                    let now = now_ms();
                    for (p, state) in partitions.iter_mut() {
                        let finals = state.store.close_due(now);
                        self.emit(*p, &finals).await;
                        // Durable before the commit below moves past what it covers.
                        self.write_checkpoint(*p, state).await;
                        release(&self.consumer, state);
                        metrics::gauge!(metric::OPEN_WINDOWS, "partition" => p.to_string()).set(state.store.open_windows() as f64);
                        metrics::gauge!(metric::WATERMARK_LAG, "partition" => p.to_string())
                            .set(((now - state.store.watermark()) as f64 / 1000.0).max(0.0));
                    }
                    if let Err(e) = self.consumer.commit() {
                        tracing::warn!(error = %e, "Committing offsets failed; will retry.");
                    }
                }
                received = self.consumer.recv() => {
                    let record = match received {
                        Ok(r) => r,
                        Err(e) => {
                            tracing::warn!(error = %e, "Consuming failed; retrying.");
                            tokio::time::sleep(Duration::from_millis(500)).await;
                            continue;
                        }
                    };
                    let state = match partitions.entry(record.partition) {
                        std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                        std::collections::hash_map::Entry::Vacant(e) => e.insert(
                            self.partition_state(&record.topic, record.partition, record.offset).await,
                        ),
                    };
                    let message = record.value.as_deref().map(|v| self.codec.decode::<ChatMessage>(v));
                    let was_replaying = state.store.replaying();
                    match message {
                        Some(Ok(m)) => {
                            let observed = state.store.observe(&m, record.offset, now_ms());
                            if !observed.late.is_empty() {
                                self.park(&record, Some(&m), "late", "later than the window's grace and allowed lateness".into()).await?;
                                metrics::counter!(metric::LATE).increment(1);
                            }
                        }
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, partition = record.partition, offset = record.offset, "A clean record does not decode; parked.");
                            self.park(&record, None, "undecodable", e.to_string()).await?;
                        }
                        None => {}
                    }
                    if was_replaying && !state.store.replaying() {
                        tracing::info!(partition = record.partition, through = record.offset, "Replay done; counting live.");
                    }
                    state.held.insert(record.offset, record.ticket.clone());
                    release(&self.consumer, state);
                }
            }
        }
        let unfinished = self.consumer.close().await;
        tracing::info!(
            unfinished,
            "The stats stage stopped; retained windows are replayed on restart."
        );
        Ok(())
    }
}

/// Finishes the tickets of records no retained window needs any more.
fn release(consumer: &GroupConsumer, state: &mut PartitionState) {
    let safe = state.store.safe_offset();
    let done: Vec<i64> = state
        .held
        .keys()
        .copied()
        .filter(|o| safe.is_none_or(|s| *o < s))
        .collect();
    for offset in done {
        if let Some(ticket) = state.held.remove(&offset) {
            consumer.finish(&ticket);
        }
    }
}
