//! What the operations surface reads and steers of a running stage, whatever its kind.

use std::collections::BTreeSet;

use serde_json::{Value, json};
use wx_kafka::{ConsumerControl, KafkaConfig, KafkaError};

/// An error reading a stage's offsets.
pub type OffsetsError = Box<dyn std::error::Error + Send + Sync>;

/// The readiness reason of a stage out of its consumer group (every stage says it alike).
pub fn not_a_member(group: &str) -> String {
    format!("not a member of consumer group {group} (joining or rebalancing)")
}

/// An operator's handle on a stage (Kafka Connect's pause, resume and task status).
pub trait StageControl: Send + Sync + std::fmt::Debug {
    /// Stops taking new work until [`StageControl::resume`]; survives rebalances.
    fn pause(&self) -> Result<(), KafkaError>;
    fn resume(&self) -> Result<(), KafkaError>;
    fn is_paused(&self) -> bool;
    /// Why the stage is not ready, beyond its health's failing components (empty: ready).
    fn not_ready(&self) -> Vec<String>;
    /// What the task status shows of the stage's work (`assigned_partitions`, `corps`).
    fn work(&self) -> (&'static str, Value);
    /// What an operator should know that is not a failure (shown in the status as `notes`).
    fn notes(&self) -> Vec<String> {
        Vec::new()
    }
    /// Kafka Connect's offsets document entries of the stage's offsets topic. Blocking: it
    /// asks the broker.
    fn offsets(&self, kafka: &KafkaConfig, topic: &str) -> Result<Vec<Value>, OffsetsError>;
}

impl StageControl for ConsumerControl {
    fn pause(&self) -> Result<(), KafkaError> {
        ConsumerControl::pause(self)
    }

    fn resume(&self) -> Result<(), KafkaError> {
        ConsumerControl::resume(self)
    }

    fn is_paused(&self) -> bool {
        ConsumerControl::is_paused(self)
    }

    fn not_ready(&self) -> Vec<String> {
        let mut reasons = Vec::new();
        if !self.broker_up() {
            reasons.push("no broker connection reported yet".into());
        }
        if !self.joined() {
            reasons.push(not_a_member(self.group()));
        }
        reasons
    }

    fn work(&self) -> (&'static str, Value) {
        let assigned: BTreeSet<_> = self.assigned();
        (
            "assigned_partitions",
            json!(
                assigned
                    .into_iter()
                    .map(|(topic, partition)| json!({ "topic": topic, "partition": partition }))
                    .collect::<Vec<_>>()
            ),
        )
    }

    /// A member that owns nothing while its group lags says so: the partitions are held by
    /// another member, or stuck on one that no longer exists.
    fn notes(&self) -> Vec<String> {
        match self.group_lag() {
            Some(lag) if lag > 0 && self.assigned().is_empty() => vec![format!(
                "consumer group {} is {lag} records behind on its input, but this member owns no partition",
                self.group()
            )],
            _ => Vec::new(),
        }
    }

    /// The group's committed offset of every partition of the input topic.
    fn offsets(&self, kafka: &KafkaConfig, topic: &str) -> Result<Vec<Value>, OffsetsError> {
        let committed = wx_kafka::committed_offsets(kafka, self.group(), topic)?;
        Ok(committed
            .into_iter()
            .filter_map(|(partition, offset)| {
                offset.map(|o| {
                    json!({
                        "partition": { "kafka_topic": topic, "kafka_partition": partition },
                        "offset": { "kafka_offset": o },
                    })
                })
            })
            .collect())
    }
}
