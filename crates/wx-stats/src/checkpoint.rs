//! The stats checkpoints: a partition's [`Checkpoint`] (its corps' watermarks and the last offset
//! observed) in a compacted topic of its own (partition = clean partition, key = `group/clean
//! topic/partition`), written acknowledged before the commit it guards, read back when a
//! partition is assigned. It stays in its topic rather than in Kafka's offset metadata because
//! it must be durable before the commit it guards, which a separate acknowledged write makes
//! plain, and because a partition of hundreds of corps outgrows the metadata's 4 KB
//! (ARCHITECTURE.md). A checkpoint written before watermarks were kept per corp (one
//! `watermark`) still reads.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use wx_kafka::{KafkaConfig, KafkaError, Producer, Record};

use crate::window::Checkpoint;

/// A checkpoint that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    #[error(
        "the checkpoint under key {key} does not parse ({source}); tombstone that key to count from the committed offset"
    )]
    Parse {
        key: String,
        source: serde_json::Error,
    },
    #[error("reading the checkpoint stopped: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// A partition's checkpoint as written to the checkpoint topic (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct StoredCheckpoint {
    /// The offset committed right after this was written (for operators; not needed to resume).
    offset: i64,
    #[serde(flatten)]
    checkpoint: Checkpoint,
}

/// The checkpoint topic of one consumer group.
#[derive(Debug, Clone)]
pub(crate) struct Checkpoints {
    kafka: KafkaConfig,
    producer: Producer,
    topic: String,
    partitions: i32,
    group: String,
}

impl Checkpoints {
    pub(crate) fn new(
        kafka: &KafkaConfig,
        producer: Producer,
        topic: &str,
        partitions: i32,
        group: &str,
    ) -> Checkpoints {
        Checkpoints {
            kafka: kafka.clone(),
            producer,
            topic: topic.to_string(),
            partitions,
            group: group.to_string(),
        }
    }

    fn key(&self, topic: &str, partition: i32) -> String {
        format!("{}/{topic}/{partition}", self.group)
    }

    /// The latest checkpoint written for a clean partition (None if there is none).
    pub(crate) async fn read(
        &self,
        topic: &str,
        partition: i32,
    ) -> Result<Option<Checkpoint>, CheckpointError> {
        let key = self.key(topic, partition).into_bytes();
        let (kafka, cp_topic) = (self.kafka.clone(), self.topic.clone());
        let target = partition % self.partitions;
        let found = tokio::task::spawn_blocking(move || -> Result<_, KafkaError> {
            const TAIL: i64 = 512;
            let timeout = Duration::from_secs(60);
            let latest = |records: Vec<Record>| {
                records
                    .into_iter()
                    .filter(|r| r.key.as_deref() == Some(key.as_slice()))
                    .filter_map(|r| r.value)
                    .next_back()
            };
            let tail = wx_kafka::read_tail(&kafka, &cp_topic, target, TAIL, timeout)?;
            Ok(match latest(tail.records) {
                Some(v) => Some(v),
                // Not in the tail, and the partition holds earlier offsets (other groups'
                // checkpoints, or compacted ones: offsets, not records, decide).
                None if tail.earlier => latest(wx_kafka::read_to_end(
                    &kafka,
                    &cp_topic,
                    &[target],
                    timeout,
                )?),
                None => None,
            })
        })
        .await??;
        let parsed = found.map(|v| serde_json::from_slice::<StoredCheckpoint>(&v));
        match parsed.transpose() {
            Ok(stored) => Ok(stored.map(|s| s.checkpoint)),
            Err(source) => Err(CheckpointError::Parse {
                key: self.key(topic, partition),
                source,
            }),
        }
    }

    /// Writes a partition's checkpoint (with the offset about to be committed), acknowledged;
    /// the error of a refusal for good.
    pub(crate) async fn write(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        checkpoint: Checkpoint,
    ) -> Result<(), wx_kafka::KafkaError> {
        let stored = StoredCheckpoint { offset, checkpoint };
        // Integers and a map of strings to integers: serialising cannot fail.
        let value = serde_json::to_vec(&stored).unwrap_or_default();
        let key = self.key(topic, partition);
        self.producer
            .send_to_partition_until_acknowledged(
                &self.topic,
                partition % self.partitions,
                key.as_bytes(),
                &value,
                Duration::from_secs(10),
            )
            .await
            .map(|_| ())
    }
}
