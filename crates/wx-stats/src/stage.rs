//! The stats stage's Kafka shell around [`WindowStore`]: a consumer group on the clean topic, one
//! window store per assigned partition, finals and corrections to the compacted stats topic
//! (acknowledged before anything moves on), late events parked with class `late`.
//!
//! Commit rule (exactness after kill -9): a record's offset is finished only once every window
//! it fell in is dropped, i.e. the committed offset never passes the first record of a window
//! still retained ([`WindowStore::safe_offset`]). A restart replays every retained window whole
//! and re-emits the same counts under the same compacted keys.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use wx_codec::{ChatMessage, Codec, DeadLetter, GroupWindowCount, StatsFormat};
use wx_kafka::{
    Consumed, ConsumerOptions, GroupConsumer, KafkaConfig, KafkaError, Producer, Ticket,
};
use wx_topology::settings::{duration, parse_settings};

use crate::window::{DirectGrouping, WindowSpec, WindowStore};

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
            "Clean records not yet consumed, by partition."
        );
        describe_gauge!(
            "wxstream_stats_committed_offset",
            "The clean offset last committed, by partition."
        );
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The stats stage.
pub struct StatsStage {
    consumer: GroupConsumer,
    producer: Producer,
    codec: Arc<Codec>,
    spec: WindowSpec,
    format: StatsFormat,
    stats_topic: String,
    dead_letter_topic: String,
}

impl std::fmt::Debug for StatsStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatsStage")
            .field("stats_topic", &self.stats_topic)
            .finish_non_exhaustive()
    }
}

struct PartitionState {
    store: WindowStore,
    /// Tickets not yet finished, by offset.
    held: BTreeMap<i64, Ticket>,
}

impl StatsStage {
    /// Joins the group on `clean_topic`. Must be called inside a tokio runtime.
    pub fn build(
        settings: &StatsSettings,
        kafka: &KafkaConfig,
        codec: Arc<Codec>,
        clean_topic: &str,
        stats_topic: &str,
        dead_letter_topic: &str,
    ) -> Result<StatsStage, String> {
        let spec = settings.spec()?;
        let producer = Producer::new(kafka, "wxstream-stats", Duration::from_secs(30))
            .map_err(|e| e.to_string())?;
        let mut options =
            ConsumerOptions::new(&settings.group_id, &[clean_topic], "wxstream_stats");
        // Records of retained windows stay unfinished by design: do not wait for them.
        options.drain_timeout = Duration::from_secs(1);
        let consumer = GroupConsumer::join(kafka, &options).map_err(|e| e.to_string())?;
        Ok(StatsStage {
            consumer,
            producer,
            codec,
            spec,
            format: settings.format,
            stats_topic: stats_topic.to_string(),
            dead_letter_topic: dead_letter_topic.to_string(),
        })
    }

    async fn send(&self, topic: &str, key: &str, value: &[u8]) {
        self.producer
            .send_until_acknowledged(topic, key.as_bytes(), Some(value), Duration::from_secs(10))
            .await;
    }

    async fn emit(&self, records: &[GroupWindowCount]) {
        for r in records {
            match self.format.encode(&self.codec, r) {
                Ok(value) => self.send(&self.stats_topic, &r.key(), &value).await,
                Err(e) => tracing::error!(error = %e, "Encoding a window record failed."),
            }
            metrics::counter!(metric::EMITTED).increment(1);
        }
    }

    async fn park_late(&self, record: &Consumed, m: &ChatMessage) {
        let now = now_ms();
        let dead = DeadLetter {
            original: record.value.clone().unwrap_or_default(),
            original_format: "clean-record".into(),
            error_class: "late".into(),
            error_message: "later than the window's grace and allowed lateness".into(),
            stage: "stats".into(),
            corp_id: Some(m.corp_id.clone()),
            msgid: Some(m.msgid.clone()),
            key_version: m.publickey_ver,
            source_topic: record.topic.clone(),
            source_partition: record.partition,
            source_offset: record.offset,
            seq: m.source.seq,
            first_failed_at: now,
            last_failed_at: now,
            attempts: 1,
        };
        metrics::counter!(metric::LATE).increment(1);
        if let Ok(value) = self.codec.encode(&dead) {
            let key = format!("stats:{}/{}", m.corp_id, m.msgid);
            self.send(&self.dead_letter_topic, &key, &value).await;
        }
    }

    /// Runs until `shutdown`; then commits what is safe and leaves.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), KafkaError> {
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
                        self.emit(&finals).await;
                        release(&self.consumer, state);
                        metrics::gauge!(metric::OPEN_WINDOWS, "partition" => p.to_string()).set(state.store.open_windows() as f64);
                        metrics::gauge!(metric::WATERMARK_LAG, "partition" => p.to_string())
                            .set(((now - state.store.watermark(now)) as f64 / 1000.0).max(0.0));
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
                    let state = partitions.entry(record.partition).or_insert_with(|| PartitionState {
                        store: WindowStore::new(self.spec.clone()),
                        held: BTreeMap::new(),
                    });
                    let message = record.value.as_deref().map(|v| self.codec.decode::<ChatMessage>(v));
                    match message {
                        Some(Ok(m)) => {
                            let observed = state.store.observe(&m, record.offset, now_ms());
                            metrics::counter!(metric::CORRECTIONS).increment(observed.corrections.len() as u64);
                            self.emit(&observed.corrections).await;
                            if !observed.late.is_empty() {
                                self.park_late(&record, &m).await;
                            }
                        }
                        Some(Err(e)) => tracing::warn!(error = %e, offset = record.offset, "A clean record does not decode; skipped."),
                        None => {}
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
