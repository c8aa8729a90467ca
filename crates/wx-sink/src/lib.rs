//! The sink workers: clean messages into MySQL (the full record) and Elasticsearch (what people
//! search), idempotently, committing a clean offset only when every earlier record of its
//! partition is in both stores or parked on the dead-letter topic.
//!
//! # Layout
//! - `months`: UTC calendar months (partitions and indices are monthly by msgtime). Pure.
//! - `triage`: a bulk reply read item by item (written / retry / refused) and bulk requests
//!   bounded by count and bytes. Pure.
//! - `mysql`: migrations, partitions created ahead, batched idempotent upserts, recall marks,
//!   forward-only rooms and members. The only `sqlx` user.
//! - `search`: the index template, monthly indices behind an alias, bulk `create`. The only
//!   Elasticsearch client user.
//! - `worker`: the Kafka loop: batch, MySQL, Elasticsearch, park refusals, then finish offsets;
//!   pause consumption while a store fails.
//! - `config`, `metrics`.
//!
//! # Invariants
//! A record's offset is finished only after its row and its document are written (or it is
//! parked). Writes are idempotent by msgid: a replay changes no count and regresses no row.
//! Never logs message content.

pub mod config;
pub mod metrics;
pub mod months;
pub mod mysql;
pub mod search;
pub mod triage;
pub mod worker;

use std::sync::Arc;

use wx_codec::Codec;
use wx_kafka::{ConsumerOptions, GroupConsumer, KafkaConfig, Producer};

pub use config::SinkSettings;
pub use mysql::MessageStore;
pub use search::SearchIndex;
pub use worker::{SinkWorker, WorkerOptions};

/// Errors building the stage (fatal).
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{0}")]
    Settings(String),
    #[error("MySQL: {0}")]
    Mysql(#[from] sqlx::Error),
    #[error("search: {0}")]
    Search(#[from] search::SearchError),
    #[error(transparent)]
    Kafka(#[from] wx_kafka::KafkaError),
}

/// Connects both stores (applying migrations, partitions and the index template) and joins the
/// group on `clean_topic`. Must be called inside a tokio runtime.
pub async fn build(
    settings: &SinkSettings,
    kafka: &KafkaConfig,
    codec: Arc<Codec>,
    clean_topic: &str,
    dead_letter_topic: &str,
) -> Result<SinkWorker, BuildError> {
    let url = settings.mysql_url.resolve().map_err(BuildError::Settings)?;
    let store = MessageStore::connect(url.expose(), &settings.database).await?;
    let created = store
        .ensure_partitions(wx_kafka::now_ms(), settings.partitions_ahead)
        .await?;
    tracing::info!(database = %settings.database, partitions = ?created, "MySQL ready.");
    let search = SearchIndex::new(&settings.elasticsearch_url, &settings.index_prefix)?;
    search.ensure_template().await?;
    let producer = Producer::new(kafka, "wxstream-sink", std::time::Duration::from_secs(30))?;
    let options = ConsumerOptions {
        max_poll_interval: settings.max_poll_interval,
        // The batch being gathered is finished by the task whose poll runs the revocation.
        drain_on_revoke: false,
        ..ConsumerOptions::new(&settings.group_id, &[clean_topic], "wxstream_sink")
            .with_timeouts(settings.session_timeout, settings.drain_timeout)
    };
    let consumer = GroupConsumer::join(kafka, &options)?;
    Ok(SinkWorker {
        store,
        search,
        consumer,
        producer,
        codec,
        options: WorkerOptions {
            batch_max: settings.batch_max,
            batch_linger: settings.batch_linger,
            bulk_max_bytes: settings.bulk_max_bytes,
            backoff_cap: settings.backoff_cap,
            commit_interval: settings.commit_interval,
            dead_letter_topic: dead_letter_topic.to_string(),
        },
        health: Default::default(),
        carried: Default::default(),
    })
}
