//! wxstream's only door to Kafka (the one crate that imports `rdkafka`).
//!
//! # Layout
//! - [`KafkaConfig`]: connection settings shared by every client.
//! - `admin`: reads topic metadata and configs, creates topics; `topology apply` and
//!   `topology check` are built on it.
//! - `producer`: the idempotent producer (acks=all) and Kafka's murmur2 partitioner.
//! - `reader`: reads partitions to their end outside any group (state rebuild, tests).
//! - `group`: consumer-group membership whose assigned partitions decide ownership.
//! - `consumer`: the stages' consumer: offsets committed only up to finished records, drained
//!   and committed on revocation and close, pause/resume, lag per partition.
//! - `tracker`: the pure offset tracker behind it.
//! - `health`: what a stage reports to the operations surface (failing components, last
//!   error); [`ConsumerControl`] is the operator's handle on a stage's consumer.
//!
//! # Invariants
//! No stage logic lives here: this crate moves bytes and offsets. It never deletes a topic or
//! lowers a partition count.

mod admin;
mod consumer;
mod group;
pub mod health;
mod producer;
mod reader;
mod tracker;

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::ClientConfig;
use serde::{Deserialize, Serialize};

pub use admin::{ApplyReport, TopicAdmin};
pub use consumer::{Consumed, ConsumerControl, ConsumerOptions, Finisher, GroupConsumer};
pub use group::GroupMember;
pub use health::StageHealth;
pub use producer::{Delivered, PendingDelivery, Producer, murmur2, partition_for_key};
pub use reader::{
    Record, committed_offsets, committed_total, end_offsets, partition_count, ping, read_tail,
    read_to_end,
};
pub use tracker::{OffsetTracker, Ticket, TopicPartition};

/// Milliseconds since the Unix epoch (the wall clock every stage stamps records with).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Errors talking to the broker.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    #[error("cannot create a Kafka client for {brokers}")]
    Client {
        brokers: String,
        source: rdkafka::error::KafkaError,
    },
    #[error(
        "the broker at {brokers} did not answer a metadata request within {timeout:?} (is it running? start the local stack with `scripts/stack up`)"
    )]
    Unreachable {
        brokers: String,
        timeout: Duration,
        source: rdkafka::error::KafkaError,
    },
    #[error("creating topic {topic} failed: {reason}")]
    CreateTopic { topic: String, reason: String },
    #[error("producing to {topic} failed: {reason}")]
    Produce { topic: String, reason: String },
    #[error("the producer's queue is full")]
    QueueFull,
    #[error("reading {topic} failed: {reason}")]
    Read { topic: String, reason: String },
}

/// Connection settings shared by every Kafka client of a worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port[,host:port...]`.
    pub brokers: String,
    /// How long an admin or metadata request may take.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Extra librdkafka properties (`security.protocol`, `sasl.mechanism`, ...), passed as is.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

fn default_request_timeout_ms() -> u64 {
    10_000
}

impl KafkaConfig {
    /// Settings for `brokers` with every other value at its default.
    pub fn new(brokers: impl Into<String>) -> KafkaConfig {
        KafkaConfig {
            brokers: brokers.into(),
            request_timeout_ms: default_request_timeout_ms(),
            properties: BTreeMap::new(),
        }
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// A librdkafka client configuration with the brokers and extra properties set.
    pub(crate) fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        for (key, value) in &self.properties {
            config.set(key, value);
        }
        config
    }
}
