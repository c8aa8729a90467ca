//! wxstream's only door to Kafka (the one crate that imports `rdkafka`).
//!
//! # Layout
//! - [`KafkaConfig`]: connection settings shared by every client.
//! - `admin`: reads topic metadata and configs, creates topics; `topology apply` and
//!   `topology check` are built on it.
//! - `producer`: the idempotent producer (acks=all) and Kafka's murmur2 partitioner.
//! - `reader`: reads partitions to their end outside any group (state rebuild, tests).
//! - `leaders`: whether every partition of a stage's topics has a leader that answers (its
//!   readiness when its own traffic cannot tell).
//! - `group`: consumer-group membership whose assigned partitions decide ownership.
//! - `consumer`: the stages' consumer: offsets committed only up to finished records,
//!   pause/resume, and [`ConsumerControl`], the operator's handle on it.
//!   - `options`: how it joins its group ([`ConsumerOptions`], one set of defaults);
//!   - `member`: what it shares with librdkafka's callbacks (tracker, pause flags, the
//!     rebalance callbacks that drain and commit revoked partitions);
//!   - `lag`: the consumer-lag reporter;
//!   - `tracker`: the pure offset tracker.
//!
//! # Invariants
//! No stage logic lives here: this crate moves bytes and offsets. It never deletes a topic or
//! lowers a partition count.

mod admin;
mod consumer;
mod group;
mod lag;
mod leaders;
mod member;
mod options;
mod producer;
mod reader;
mod tracker;

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::ClientConfig;
use serde::{Deserialize, Serialize};

pub use admin::{ApplyReport, TopicAdmin};
pub use consumer::{Consumed, ConsumerControl, Finisher, GroupConsumer, RECEIVE_ERROR_PAUSE};
pub use group::{GroupMember, MemberStatus};
pub use leaders::{LeaderProbe, Unavailable};

pub use options::ConsumerOptions;
pub use producer::{
    Delivered, InFlight, OutputRecord, PendingDelivery, Producer, SendWatch, murmur2,
    partition_for_key,
};
pub use reader::{
    Followed, Record, Tail, cluster_id, commit_offsets, committed_offsets, committed_total,
    end_offsets, follow_since, partition_count, ping, read_tail, read_to_end, read_topic,
    watermarks,
};
pub use tracker::{OffsetTracker, Ticket, TopicPartition};

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
    CreateTopic {
        topic: String,
        reason: String,
        /// The broker or the connection to it failed for the moment (a broker going away, a
        /// controller moving, a timeout): [`crate::TopicAdmin::apply`] tries again.
        transient: bool,
    },
    #[error("producing to {topic} failed: {reason}")]
    Produce {
        topic: String,
        reason: String,
        /// Set when the broker will never take the record (see [`Refusal`]).
        refusal: Option<Refusal>,
    },
    #[error("the producer's queue is full")]
    QueueFull,
    #[error("reading {topic} failed: {reason}")]
    Read { topic: String, reason: String },
    #[error("subscribing to {topics} failed: {source}")]
    Subscribe {
        topics: String,
        source: rdkafka::error::KafkaError,
    },
    #[error("receiving from the group failed: {source}{}", fatal_suffix(fatal))]
    Consume {
        source: rdkafka::error::KafkaError,
        /// librdkafka's fatal error, when the client can no longer be used.
        fatal: Option<String>,
    },
    #[error("committing offsets failed: {source}{}", fatal_suffix(fatal))]
    Commit {
        source: rdkafka::error::KafkaError,
        fatal: Option<String>,
    },
    #[error("pausing or resuming fetching failed: {source}")]
    Pause { source: rdkafka::error::KafkaError },
    /// Changing a consumer group's offsets, or deleting the group, failed (e.g. the group still
    /// has members).
    #[error("consumer group {group}: {reason}")]
    Group { group: String, reason: String },
}

/// A produce error that no retry can cure: the caller parks, splits or stops, never retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The record is larger than the topic's `max.message.bytes` (or the producer's
    /// `message.max.bytes`), sent alone.
    TooLarge,
    /// The topic does not exist, is not a valid name, or may not be written by this principal:
    /// configuration, not the broker being unwell.
    Topic,
}

impl Refusal {
    /// The refusal an rdkafka produce error stands for, if it is one.
    pub(crate) fn of(e: &rdkafka::error::KafkaError) -> Option<Refusal> {
        use rdkafka::types::RDKafkaErrorCode as Code;
        match e.rdkafka_error_code()? {
            Code::MessageSizeTooLarge | Code::MessageBatchTooLarge | Code::InvalidMessageSize => {
                Some(Refusal::TooLarge)
            }
            // `UnknownTopicOrPartition` from a broker is retriable (a leader moving, metadata
            // catching up) and librdkafka retries it itself; its local `UnknownTopic` comes only
            // once the topic stayed absent from the metadata.
            Code::UnknownTopic
            | Code::InvalidTopic
            | Code::TopicAuthorizationFailed
            | Code::ClusterAuthorizationFailed => Some(Refusal::Topic),
            _ => None,
        }
    }
}

fn fatal_suffix(fatal: &Option<String>) -> String {
    fatal
        .as_ref()
        .map(|f| format!(" (fatal: {f})"))
        .unwrap_or_default()
}

impl KafkaError {
    /// A produce error the broker will never take back ([`Refusal`]); None for every error a
    /// retry may cure.
    pub fn refusal(&self) -> Option<Refusal> {
        match self {
            KafkaError::Produce { refusal, .. } => *refusal,
            _ => None,
        }
    }

    /// The client cannot be used any more (librdkafka's fatal errors: a static member fenced by
    /// another with the same `group.instance.id`, a producer fenced, ...). Every other error is
    /// the broker being unwell or busy, and retrying is right.
    pub fn is_fatal(&self) -> bool {
        match self {
            KafkaError::Consume { source, fatal } | KafkaError::Commit { source, fatal } => {
                fatal.is_some() || is_fatal_code(source)
            }
            KafkaError::Subscribe { source, .. } | KafkaError::Pause { source } => {
                is_fatal_code(source)
            }
            _ => false,
        }
    }
}

fn is_fatal_code(e: &rdkafka::error::KafkaError) -> bool {
    matches!(e, rdkafka::error::KafkaError::MessageConsumptionFatal(_))
        || e.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::Fatal)
}

/// Whether a librdkafka property holds a secret (`sasl.password`, `ssl.key.password`,
/// `ssl.keystore.password`, `sasl.oauthbearer.client.secret`, `ssl.key.pem`,
/// `sasl.oauthbearer.config`, ...): such a value is given by reference, never as text, and is
/// never shown.
pub fn is_secret_property(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    key.contains("password")
        || key.contains("secret")
        || key == "ssl.key.pem"
        || key == "sasl.oauthbearer.config"
}

/// Connection settings shared by every Kafka client of a worker. `Debug` shows `***` for
/// every secret property ([`is_secret_property`]).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
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

impl std::fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let properties: BTreeMap<&str, &str> = self
            .properties
            .iter()
            .map(|(key, value)| {
                let shown = if is_secret_property(key) {
                    "***"
                } else {
                    value
                };
                (key.as_str(), shown)
            })
            .collect();
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("request_timeout_ms", &self.request_timeout_ms)
            .field("properties", &properties)
            .finish()
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::error::KafkaError as RdError;
    use rdkafka::types::RDKafkaErrorCode as Code;

    #[test]
    fn secret_properties_are_never_shown() {
        let mut config = KafkaConfig::new("b:9092");
        for (key, value) in [
            ("sasl.password", "hunter2-sasl"),
            ("ssl.key.password", "hunter2-key"),
            ("sasl.oauthbearer.client.secret", "hunter2-oauth"),
            ("sasl.username", "wxstream"),
        ] {
            config.properties.insert(key.into(), value.into());
        }
        let shown = format!("{config:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("wxstream"), "{shown}");
        assert!(!is_secret_property("security.protocol"));
        assert!(is_secret_property("SSL.KEYSTORE.PASSWORD"));
    }

    #[test]
    fn only_errors_no_retry_can_cure_are_refusals() {
        let refusal = |code| Refusal::of(&RdError::MessageProduction(code));
        assert_eq!(refusal(Code::MessageSizeTooLarge), Some(Refusal::TooLarge));
        assert_eq!(refusal(Code::MessageBatchTooLarge), Some(Refusal::TooLarge));
        assert_eq!(refusal(Code::UnknownTopic), Some(Refusal::Topic));
        assert_eq!(
            refusal(Code::TopicAuthorizationFailed),
            Some(Refusal::Topic)
        );
        // The broker being unwell, or a leader moving: retried.
        for code in [
            Code::MessageTimedOut,
            Code::BrokerTransportFailure,
            Code::NotEnoughReplicas,
            Code::NotLeaderForPartition,
            Code::UnknownTopicOrPartition,
            Code::AllBrokersDown,
        ] {
            assert_eq!(refusal(code), None, "{code:?}");
        }
        let produce = KafkaError::Produce {
            topic: "t".into(),
            reason: "r".into(),
            refusal: Some(Refusal::Topic),
        };
        assert_eq!(produce.refusal(), Some(Refusal::Topic));
        assert_eq!(KafkaError::QueueFull.refusal(), None);
    }
}
