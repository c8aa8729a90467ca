//! The stats stage: event-time tumbling windows of distinct-msgid counts per group, for BI.
//!
//! # Layout
//! - `window`: the window state machine of one clean-topic partition (pure, table-tested and
//!   crash-tested): grouping, distinct counting by msgtype, the event-time watermark, the grace
//!   period, corrections within the allowed lateness (coalesced per tick), late events beyond
//!   it, idle partitions closing on wall-clock time, the offset that is safe to commit, and the
//!   checkpoint a restarted store resumes from.
//!
//! - `stage`: the stage's handler on the runtime's consumer loop: finals and corrections to
//!   the compacted stats topic (Avro or JSON), late and undecodable records parked, offsets
//!   finished only when no retained window needs them.
//! - `checkpoint`: each partition's checkpoint in its own compacted topic.
//! - `settings`, `metrics`: the connector's settings and metric names.
//! - here: the stage contract (`StatsSettings` builds a [`StatsStage`]; see `wx_runtime`).
//!
//! # Invariants
//! `window` is pure: no I/O, no clock (times are arguments). Exactness after a crash: the
//! committed offset never passes the first record of a retained window, and a replay from it
//! with the checkpointed watermark rebuilds every retained window whole, recognises what was
//! handled before, and emits nothing until it has passed the checkpoint; a re-emission
//! overwrites its compacted key with the same count. Lateness depends on event time, and on the
//! idle time of a quiet corp, whose windows go after their lateness of idle time (both
//! checkpointed, so a replay decides the same).

mod checkpoint;
pub mod metrics;
pub mod settings;
pub mod stage;
pub mod window;

use std::time::Duration;

use wx_runtime::{ConnectorKind, SettingsError, StageContext, StageSettings, TopicRoles};
use wx_topology::ConnectorClass;

pub use settings::StatsSettings;
pub use stage::StatsStage;
pub use window::{DirectGrouping, Late, WindowSpec, WindowStore};

use crate::checkpoint::Checkpoints;

/// The stage's name: dead letters say it, metrics are `wxstream_stats_*`.
pub const STAGE: &str = "stats";

/// Errors building the stage (fatal).
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error(transparent)]
    Kafka(#[from] wx_kafka::KafkaError),
    #[error(
        "the checkpoint topic {topic} has {partitions} partitions; it needs at least as many as {clean_topic} ({clean_partitions})"
    )]
    CheckpointPartitions {
        topic: String,
        partitions: i32,
        clean_topic: String,
        clean_partitions: i32,
    },
}

impl StageSettings for StatsSettings {
    const NAME: &'static str = STAGE;
    const CLASS: ConnectorClass = ConnectorClass::Stats;
    const KIND: ConnectorKind = ConnectorKind::Sink;
    const TOPICS: TopicRoles = TopicRoles::parking(&["clean"], &["stats", "checkpoints"]);
    type Stage = StatsStage;
    type BuildError = BuildError;

    /// The window spec and the earliest msgtime must be valid.
    fn validate(&self) -> Result<(), SettingsError> {
        self.spec()?;
        self.earliest_ms().map(|_| ())
    }

    fn describe_metrics() {
        metrics::describe();
    }

    /// Checks the checkpoint topic and joins the group on the clean topic.
    async fn build(&self, context: &StageContext) -> Result<StatsStage, BuildError> {
        let spec = self.spec()?;
        let (clean, checkpoint_topic) = (context.topic("clean"), context.topic("checkpoints"));
        let clean_partitions = wx_kafka::partition_count(&context.kafka, clean)?;
        let partitions = wx_kafka::partition_count(&context.kafka, checkpoint_topic)?;
        if partitions < clean_partitions {
            return Err(BuildError::CheckpointPartitions {
                topic: checkpoint_topic.to_string(),
                partitions,
                clean_topic: clean.to_string(),
                clean_partitions,
            });
        }
        let producer = context.producer(Duration::from_secs(30))?;
        let consumer = context.consumer(|options| {
            // Records of retained windows stay unfinished by design: do not wait for them.
            options.drain_timeout = Duration::from_secs(1);
        })?;
        let checkpoints = Checkpoints::new(
            &context.kafka,
            producer.clone(),
            checkpoint_topic,
            partitions,
            &context.group(),
        );
        let valid = stage::ValidTimes {
            earliest_ms: self.earliest_ms()?,
            max_future_ms: i64::try_from(self.max_future.as_millis()).unwrap_or(i64::MAX),
        };
        Ok(StatsStage::new(
            context,
            consumer,
            producer,
            checkpoints,
            spec,
            valid,
            self.format,
        ))
    }
}
