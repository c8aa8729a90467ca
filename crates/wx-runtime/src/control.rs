//! What the operations surface reads and steers of a running stage, whatever its kind.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde_json::{Value, json};
use wx_kafka::{ConsumerControl, KafkaConfig, KafkaError};

/// An error reading a stage's offsets.
pub type OffsetsError = Box<dyn std::error::Error + Send + Sync>;

/// Why a stopped stage's offsets were not changed (`PATCH`/`DELETE .../offsets`).
#[derive(Debug, thiserror::Error)]
pub enum AlterError {
    /// The request is wrong (Connect answers 400): the text says what to send instead.
    #[error("{0}")]
    Invalid(String),
    /// The stage keeps no offsets that can be changed this way.
    #[error("{0}")]
    Unsupported(String),
    /// The broker did not do it (e.g. the group still has a member on another worker).
    #[error(transparent)]
    Kafka(#[from] KafkaError),
}

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

    /// What is left of this control once the stage's task has ended: one that holds no Kafka
    /// client (a consumer kept alive would keep its group member, and the group's offsets
    /// could not be changed). None: this one holds none.
    fn released(&self) -> Option<std::sync::Arc<dyn StageControl>> {
        None
    }

    /// Kafka Connect's `PATCH .../offsets` on the stopped stage: sets the offsets named in
    /// `offsets` (Connect's `{"partition": ..., "offset": ...}` entries). Blocking.
    fn alter_offsets(
        &self,
        _kafka: &KafkaConfig,
        _topic: &str,
        _offsets: &[Value],
    ) -> Result<(), AlterError> {
        Err(AlterError::Unsupported(
            "this connector's offsets cannot be altered".into(),
        ))
    }

    /// Kafka Connect's `DELETE .../offsets` on the stopped stage: forgets every offset, so the
    /// stage starts over from its inputs' earliest records. Blocking.
    fn reset_offsets(&self, _kafka: &KafkaConfig, _topic: &str) -> Result<(), AlterError> {
        Err(AlterError::Unsupported(
            "this connector's offsets cannot be reset".into(),
        ))
    }
}

/// A sink offset entry of Connect's offsets document, checked as Connect's `SinkUtils` does:
/// (topic, partition, offset; None resets the partition).
fn sink_offset(entry: &Value) -> Result<(String, i32, Option<i64>), AlterError> {
    let invalid = |m: String| AlterError::Invalid(m);
    let partition = entry.get("partition").and_then(Value::as_object);
    let (Some(topic), Some(number)) = (
        partition.and_then(|p| p.get("kafka_topic")),
        partition.and_then(|p| p.get("kafka_partition")),
    ) else {
        return Err(invalid(
            "The partition for a sink connector offset must contain the keys 'kafka_topic' and 'kafka_partition'".into(),
        ));
    };
    let Some(topic) = topic.as_str() else {
        return Err(invalid("Kafka topic names must be valid strings".into()));
    };
    let number = integer(number).and_then(|n| i32::try_from(n).ok()).ok_or_else(|| {
        invalid(format!(
            "Failed to parse the following Kafka partition value in the provided offsets: '{number}'. Partition values for sink connectors need to be integers."
        ))
    })?;
    let offset = match entry.get("offset") {
        None | Some(Value::Null) => None,
        Some(offset) => {
            let Some(value) = offset.get("kafka_offset") else {
                return Err(invalid(
                    "The offset for a sink connector should either be null or contain the key 'kafka_offset'".into(),
                ));
            };
            Some(integer(value).ok_or_else(|| {
                invalid(format!(
                    "Failed to parse the following Kafka offset value in the provided offsets: '{value}'. Offset values for sink connectors need to be integers."
                ))
            })?)
        }
    };
    Ok((topic.to_string(), number, offset))
}

/// An integer given as a JSON number or a numeric string (Connect takes both).
pub fn integer(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
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
        of_group(self).offsets(kafka, topic)
    }

    fn released(&self) -> Option<Arc<dyn StageControl>> {
        Some(Arc::new(of_group(self)))
    }

    fn alter_offsets(
        &self,
        kafka: &KafkaConfig,
        topic: &str,
        offsets: &[Value],
    ) -> Result<(), AlterError> {
        of_group(self).alter_offsets(kafka, topic, offsets)
    }

    fn reset_offsets(&self, kafka: &KafkaConfig, topic: &str) -> Result<(), AlterError> {
        of_group(self).reset_offsets(kafka, topic)
    }
}

/// The offsets of a consumer stage's group: what its control is once the stage's task has
/// ended (STOPPED, or FAILED), holding no client.
#[derive(Debug, Clone)]
pub struct GroupOffsets {
    group: String,
}

/// The offsets of `control`'s group.
fn of_group(control: &ConsumerControl) -> GroupOffsets {
    GroupOffsets {
        group: control.group().to_string(),
    }
}

impl GroupOffsets {
    fn group(&self) -> &str {
        &self.group
    }
}

impl StageControl for GroupOffsets {
    fn pause(&self) -> Result<(), KafkaError> {
        Ok(())
    }

    fn resume(&self) -> Result<(), KafkaError> {
        Ok(())
    }

    fn is_paused(&self) -> bool {
        false
    }

    fn not_ready(&self) -> Vec<String> {
        Vec::new()
    }

    fn work(&self) -> (&'static str, Value) {
        ("assigned_partitions", json!([]))
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

    /// Commits the given offsets for the group, each checked against the input topic: its
    /// partitions, and offsets between the first record kept and the end (null: the first
    /// record kept, where the group starts with no committed offset).
    fn alter_offsets(
        &self,
        kafka: &KafkaConfig,
        topic: &str,
        offsets: &[Value],
    ) -> Result<(), AlterError> {
        let bounds = wx_kafka::watermarks(kafka, topic)?;
        let mut commits = Vec::new();
        for entry in offsets {
            let (named, partition, offset) = sink_offset(entry)?;
            if named != topic {
                return Err(AlterError::Invalid(format!(
                    "connector offsets name topic '{named}', but this connector's consumer group {} reads only '{topic}'",
                    self.group()
                )));
            }
            let Some(&(_, low, high)) = bounds.iter().find(|(p, _, _)| *p == partition) else {
                return Err(AlterError::Invalid(format!(
                    "topic '{topic}' has no partition {partition} (it has {})",
                    bounds.len()
                )));
            };
            let offset = offset.unwrap_or(low);
            if !(low..=high).contains(&offset) {
                return Err(AlterError::Invalid(format!(
                    "offset {offset} of {topic}-{partition} is outside the records the partition keeps ({low} to {high})"
                )));
            }
            commits.push((partition, offset));
        }
        wx_kafka::commit_offsets(kafka, self.group(), topic, &commits)?;
        Ok(())
    }

    /// Deletes the consumer group, as Connect does for a sink.
    fn reset_offsets(&self, kafka: &KafkaConfig, _topic: &str) -> Result<(), AlterError> {
        let admin = wx_kafka::TopicAdmin::new(kafka)?;
        tokio::runtime::Handle::current().block_on(admin.delete_group(self.group()))?;
        Ok(())
    }
}
