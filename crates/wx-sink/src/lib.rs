//! The sink workers: clean messages into MySQL (the full record) and Elasticsearch (what people
//! search), idempotently, committing a clean offset only when every earlier record of its
//! partition is in both stores or parked on the dead-letter topic.
//!
//! # Layout
//! - `months` (re-exported from wx-codec): UTC calendar months (partitions and indices are monthly by msgtime).
//! - `triage`: a bulk reply read item by item (written / retry / refused) and bulk requests
//!   bounded by count and bytes. Pure.
//! - MySQL is the `wx-mysql` adapter's (migrations, partitions created ahead, batched idempotent
//!   upserts, recall marks, forward-only rooms and members; the media table too).
//! - `search`: the index template, monthly indices behind an alias, bulk `create`. The only
//!   Elasticsearch client user.
//! - `worker`: the stage's handler on the runtime's consumer loop: batch, MySQL,
//!   Elasticsearch, park refusals, then finish offsets; pause consumption while a store fails.
//! - `config`, `metrics`.
//! - here: the stage contract (`SinkSettings` builds a [`SinkWorker`]; see `wx_runtime`).
//!
//! # Invariants
//! A record's offset is finished only after its row and its document are written (or it is
//! parked). Writes are idempotent by msgid: a replay changes no count and regresses no row.
//! Never logs message content.

pub mod config;
pub mod metrics;
pub use wx_codec::months;
pub mod redrive;
pub mod search;
pub mod triage;
pub mod worker;

use wx_runtime::settings::{SecretError, SettingsError};
use wx_runtime::{ConnectorKind, StageContext, StageSettings, TopicRoles};
use wx_topology::ConnectorClass;

pub use config::SinkSettings;
pub use search::SearchIndex;
pub use worker::SinkWorker;
pub use wx_mysql::MessageStore;

/// Both stores, ready: the database with its migrations and partitions, the index template.
pub(crate) async fn connect_stores(
    settings: &SinkSettings,
    context: &StageContext,
) -> Result<(MessageStore, SearchIndex), BuildError> {
    let url = settings.mysql_url.resolve()?;
    let store = MessageStore::connect(url.expose(), &settings.database).await?;
    let created = store
        .ensure_partitions(context.clock.now_ms(), settings.partitions_ahead)
        .await?;
    tracing::info!(database = %settings.database, partitions = ?created, "MySQL ready.");
    let search = SearchIndex::new(&settings.elasticsearch_url, &settings.index_prefix)?;
    search.ensure_template().await?;
    Ok((store, search))
}

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
    Search(#[from] search::SearchError),
    #[error(transparent)]
    Kafka(#[from] wx_kafka::KafkaError),
}

impl StageSettings for SinkSettings {
    const NAME: &'static str = STAGE;
    const CLASS: ConnectorClass = ConnectorClass::Sink;
    const KIND: ConnectorKind = ConnectorKind::Sink;
    const TOPICS: TopicRoles = TopicRoles {
        inputs: &["clean"],
        outputs: &[],
        dead_letter: true,
    };
    const OFFSETS_ROLE: &'static str = "clean";
    type Stage = SinkWorker;
    type BuildError = BuildError;

    fn consumer_mut(&mut self) -> &mut wx_runtime::ConsumerSettings {
        &mut self.consumer
    }

    fn validate(&self) -> Result<(), SettingsError> {
        self.check()
    }

    fn describe_metrics() {
        metrics::describe();
    }

    /// Connects both stores (applying migrations, partitions and the index template) and joins
    /// the group on the clean topic.
    async fn build(&self, context: &StageContext) -> Result<SinkWorker, BuildError> {
        let (store, search) = connect_stores(self, context).await?;
        let producer = context.producer(std::time::Duration::from_secs(30))?;
        let consumer = context.consumer(&self.consumer, |options| {
            // The batch being gathered is finished by the task whose poll runs the revocation.
            options.drain_on_revoke = false;
        })?;
        Ok(SinkWorker::new(
            self, context, store, search, consumer, producer,
        ))
    }
}
