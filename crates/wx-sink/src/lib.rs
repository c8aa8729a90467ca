//! The sink workers: clean messages into their targets (MySQL for the full record, then
//! Elasticsearch for what people search, unless configured otherwise), idempotently, committing
//! a clean offset only when every earlier record of its partition is in every target or parked
//! on the dead-letter topic.
//!
//! # Layout
//! - `targets`: which stores are written, by name, and how each is built (the `wx-mysql` and
//!   `wx-search` adapters' targets built in; more registered by name).
//! - `worker`: the stage's handler on the runtime's consumer loop: decode, then one loop over
//!   the targets (a verdict per record: written, parked, or the store unwell: paused and
//!   retried), then finish offsets.
//! - `redrive`: parked records written again through the same targets.
//! - `config`, `metrics`.
//! - here: the stage contract (`SinkSettings` builds a [`SinkWorker`]; see `wx_runtime`).
//!
//! # Invariants
//! A record's offset is finished only after every target has it (or it is parked). Writes are
//! idempotent by msgid: a replay changes no count and regresses no row. Never logs message
//! content.

pub mod config;
pub mod metrics;
pub mod redrive;
pub mod targets;
pub mod worker;

use wx_runtime::settings::{SecretError, SettingsError};
use wx_runtime::{ConnectorKind, StageContext, StageSettings, TopicRoles};
use wx_topology::ConnectorClass;

pub use config::{ArchiveDatabase, SinkSettings};
pub use targets::{TargetBuild, TargetFactory, TargetSpec, register_target};
pub use worker::SinkWorker;

/// The stage's name: dead letters say it, metrics are `wxstream_sink_*`.
pub const STAGE: &str = "sink";

/// Errors building the stage (fatal).
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error("sink settings: field `mysql_url`: {0}")]
    Secret(#[from] SecretError),
    /// (A connection error can quote the URL; its credentials are never shown.)
    #[error("MySQL: {}", wx_runtime::settings::redact_urls(&.0.to_string()))]
    Mysql(#[from] wx_mysql::MysqlError),
    #[error("search: {0}")]
    Search(#[from] wx_search::SearchError),
    /// A target outside this crate could not be built.
    #[error("target {name}: {reason}")]
    Target { name: String, reason: String },
    #[error(transparent)]
    Kafka(#[from] wx_kafka::KafkaError),
}

impl StageSettings for SinkSettings {
    const NAME: &'static str = STAGE;
    const CLASS: ConnectorClass = ConnectorClass::Sink;
    const KIND: ConnectorKind = ConnectorKind::Sink;
    const TOPICS: TopicRoles = TopicRoles::parking(&["clean"], &[]);
    type Stage = SinkWorker;
    type BuildError = BuildError;

    fn validate(&self) -> Result<(), SettingsError> {
        self.check()
    }

    fn describe_metrics() {
        metrics::describe();
    }

    /// Builds every target (applying migrations, partitions and the index template) and joins
    /// the group on the clean topic.
    async fn build(&self, context: &StageContext) -> Result<SinkWorker, BuildError> {
        let targets = targets::build(self, context).await?;
        let producer = context.producer(std::time::Duration::from_secs(30))?;
        let consumer = context.consumer(|options| {
            // The batch being gathered is finished by the task whose poll runs the revocation.
            options.drain_on_revoke = false;
        })?;
        Ok(SinkWorker::new(self, context, targets, consumer, producer))
    }

    /// Writes its letters again through the same targets.
    fn redrive<'a>(
        &'a self,
        context: &'a StageContext,
    ) -> Option<wx_runtime::RedriveBuild<'a, Self>> {
        Some(Box::pin(async move {
            let replay = redrive::Replay::connect(self, context).await?;
            Ok(Box::new(replay) as Box<dyn wx_runtime::redrive::Redrive>)
        }))
    }
}
