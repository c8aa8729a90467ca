//! The topology documents as they are written.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

/// `topology/topics.yaml`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicsFile {
    /// Values a topic takes when it does not set them.
    #[serde(default)]
    pub defaults: TopicDefaults,
    /// The topics the pipeline needs.
    pub topics: Vec<TopicSpecDoc>,
}

/// Defaults applied to every topic of `topics.yaml`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicDefaults {
    /// Partitions of a topic that does not say.
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    /// Replication factor of a topic that does not say (1 for a single local broker; 3 in
    /// production).
    #[serde(default = "default_replication")]
    pub replication: i32,
}

fn default_partitions() -> i32 {
    6
}

fn default_replication() -> i32 {
    1
}

impl Default for TopicDefaults {
    fn default() -> Self {
        TopicDefaults {
            partitions: default_partitions(),
            replication: default_replication(),
        }
    }
}

/// One topic as written; optional fields fall back to [`TopicDefaults`].
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicSpecDoc {
    pub name: String,
    pub partitions: Option<i32>,
    pub replication: Option<i32>,
    pub retention: Retention,
    pub cleanup_policy: CleanupPolicy,
    pub purpose: String,
    /// Further Kafka topic configs (`max.message.bytes`, `min.compaction.lag.ms`, ...).
    #[serde(default)]
    pub configs: BTreeMap<String, String>,
}

/// A topic with every value resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    pub replication: i32,
    pub retention: Retention,
    pub cleanup_policy: CleanupPolicy,
    pub purpose: String,
    pub configs: BTreeMap<String, String>,
}

impl TopicSpec {
    /// The Kafka topic configs this spec declares: cleanup.policy, retention.ms and the extra
    /// ones.
    pub fn kafka_configs(&self) -> BTreeMap<String, String> {
        let mut out = self.configs.clone();
        out.insert(
            "cleanup.policy".into(),
            self.cleanup_policy.as_kafka().into(),
        );
        out.insert(
            "retention.ms".into(),
            self.retention.as_millis().to_string(),
        );
        out
    }

    /// The topic replicated `replication` times (`topology apply --replication`), with the
    /// `min.insync.replicas` that durability needs: 2 from 3 replicas on (an `acks=all` write
    /// then rests on two brokers), 1 below (the broker's default). A value the topic declares
    /// itself is kept.
    pub fn replicate(&mut self, replication: i32) {
        self.replication = replication;
        if replication >= 3 {
            self.configs
                .entry(MIN_INSYNC_REPLICAS.into())
                .or_insert_with(|| "2".into());
        }
    }

    /// Why the topic's replication is not durable, if it is not: from 3 replicas on it must
    /// declare `min.insync.replicas` of at least 2, and never more than its replicas (no write
    /// could then be acknowledged).
    pub fn durability_problem(&self) -> Option<String> {
        let declared = self.configs.get(MIN_INSYNC_REPLICAS);
        let min = match declared.map(|v| v.parse::<i32>()) {
            None => None,
            Some(Ok(min)) if min >= 1 => Some(min),
            Some(_) => {
                return Some(format!(
                    "{MIN_INSYNC_REPLICAS} must be a whole number from 1"
                ));
            }
        };
        match min {
            Some(min) if min > self.replication => Some(format!(
                "{MIN_INSYNC_REPLICAS} {min} is more than its {} replicas: no write could be acknowledged",
                self.replication
            )),
            Some(min) if self.replication >= 3 && min < 2 => Some(format!(
                "{MIN_INSYNC_REPLICAS} {min} with {} replicas: an acks=all write could rest on one broker; declare at least 2",
                self.replication
            )),
            None if self.replication >= 3 => Some(format!(
                "{} replicas without {MIN_INSYNC_REPLICAS}: an acks=all write could rest on one broker once the in-sync set shrinks; declare {MIN_INSYNC_REPLICAS}: \"2\" (or apply with --replication, which does)",
                self.replication
            )),
            _ => None,
        }
    }
}

/// The topic config that says how many replicas acknowledge an `acks=all` write.
pub const MIN_INSYNC_REPLICAS: &str = "min.insync.replicas";

/// How long a topic keeps data: a duration such as `7d` or `12h`, or `forever`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retention {
    Forever,
    For(Duration),
}

impl Retention {
    /// Kafka's `retention.ms` (-1 for forever).
    pub fn as_millis(self) -> i64 {
        match self {
            Retention::Forever => -1,
            Retention::For(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        }
    }
}

impl fmt::Display for Retention {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Retention::Forever => f.write_str("forever"),
            // Whole days or hours read as written in topics.yaml (`90d`, not `2months 29days ...`).
            Retention::For(d) if d.as_secs() % 86_400 == 0 && d.subsec_nanos() == 0 => {
                write!(f, "{}d", d.as_secs() / 86_400)
            }
            Retention::For(d) if d.as_secs() % 3_600 == 0 && d.subsec_nanos() == 0 => {
                write!(f, "{}h", d.as_secs() / 3_600)
            }
            Retention::For(d) => write!(f, "{}", humantime::format_duration(*d)),
        }
    }
}

impl Serialize for Retention {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Retention {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        if text == "forever" {
            return Ok(Retention::Forever);
        }
        let duration = humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!(
                "`{text}` is not a duration like 7d or 12h, nor `forever`: {e}"
            ))
        })?;
        if duration.as_millis() == 0 {
            return Err(serde::de::Error::custom(
                "retention must be longer than zero",
            ));
        }
        Ok(Retention::For(duration))
    }
}

/// Kafka's `cleanup.policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CleanupPolicy {
    Delete,
    Compact,
    CompactDelete,
}

impl CleanupPolicy {
    pub fn as_kafka(self) -> &'static str {
        match self {
            CleanupPolicy::Delete => "delete",
            CleanupPolicy::Compact => "compact",
            CleanupPolicy::CompactDelete => "compact,delete",
        }
    }
}

/// The stage a connector document configures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ConnectorClass {
    /// Archive pull and callback receiver, writing the raw topic (a source).
    #[serde(rename = "wxstream.ingest")]
    Ingest,
    /// Raw to clean and dead-letter topics.
    #[serde(rename = "wxstream.decrypt")]
    Decrypt,
    /// Clean topic to MySQL and Elasticsearch (a sink).
    #[serde(rename = "wxstream.sink")]
    Sink,
    /// Clean topic to windowed per-group counts on the stats topic.
    #[serde(rename = "wxstream.stats")]
    Stats,
    /// Clean topic's media (images, voice, video, files) into S3-compatible object storage (a
    /// sink).
    #[serde(rename = "wxstream.media")]
    Media,
}

impl ConnectorClass {
    /// The class's name in a connector document (`wxstream.sink`, ...).
    pub fn name(self) -> &'static str {
        match self {
            ConnectorClass::Ingest => "wxstream.ingest",
            ConnectorClass::Decrypt => "wxstream.decrypt",
            ConnectorClass::Sink => "wxstream.sink",
            ConnectorClass::Stats => "wxstream.stats",
            ConnectorClass::Media => "wxstream.media",
        }
    }

    /// Source connectors read no topic; every other stage reads at least one.
    pub fn is_source(self) -> bool {
        matches!(self, ConnectorClass::Ingest)
    }

    /// Sink connectors write to stores, not to topics (except the dead-letter topic).
    pub fn is_sink(self) -> bool {
        matches!(self, ConnectorClass::Sink | ConnectorClass::Media)
    }
}

/// What a stage does with a record it cannot process (Kafka Connect's `errors.tolerance`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ErrorTolerance {
    /// Stop the task on the first bad record.
    None,
    /// Park bad records on the dead-letter topic and go on.
    All,
}

/// One stage's document under `topology/connectors/`, shaped like a Kafka Connect connector
/// config so operators' habits carry over.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectorSpec {
    /// Unique connector name (the REST surface and metrics use it).
    pub name: String,
    /// Which stage this is.
    #[serde(rename = "connector.class")]
    pub class: ConnectorClass,
    /// Upper bound of parallel tasks (consumers or pullers) one worker runs.
    #[serde(rename = "tasks.max")]
    pub tasks_max: u32,
    /// Topics the stage consumes (empty for sources).
    #[serde(default)]
    pub topics: Vec<String>,
    /// Topics the stage produces to (besides the dead-letter topic).
    #[serde(rename = "output.topics", default)]
    pub output_topics: Vec<String>,
    /// `none` stops on a bad record; `all` parks it on the dead-letter topic.
    #[serde(rename = "errors.tolerance")]
    pub errors_tolerance: ErrorTolerance,
    /// Where bad records are parked (required with `errors.tolerance: all`).
    #[serde(rename = "errors.deadletterqueue.topic.name", default)]
    pub dead_letter_topic: Option<String>,
    /// Stage-specific settings, validated by the stage itself.
    #[serde(default)]
    pub settings: serde_json::Map<String, serde_json::Value>,
}

/// The whole topology: resolved topics and every connector.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Topology {
    pub topics: Vec<TopicSpec>,
    pub connectors: Vec<ConnectorSpec>,
}

impl Topology {
    /// The topic declared under `name`.
    pub fn topic(&self, name: &str) -> Option<&TopicSpec> {
        self.topics.iter().find(|t| t.name == name)
    }

    /// The connector named `name`.
    pub fn connector(&self, name: &str) -> Option<&ConnectorSpec> {
        self.connectors.iter().find(|c| c.name == name)
    }

    /// The same topology with every topic name prefixed, references included. Tests use it to
    /// get topics of their own on a shared broker; operators to run several pipelines on one
    /// cluster.
    pub fn with_topic_prefix(&self, prefix: &str) -> Topology {
        let rename = |name: &String| format!("{prefix}{name}");
        Topology {
            topics: self
                .topics
                .iter()
                .map(|t| TopicSpec {
                    name: rename(&t.name),
                    ..t.clone()
                })
                .collect(),
            connectors: self
                .connectors
                .iter()
                .map(|c| ConnectorSpec {
                    topics: c.topics.iter().map(rename).collect(),
                    output_topics: c.output_topics.iter().map(rename).collect(),
                    dead_letter_topic: c.dead_letter_topic.as_ref().map(rename),
                    ..c.clone()
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_class_name_is_what_its_document_says() {
        for class in [
            ConnectorClass::Ingest,
            ConnectorClass::Decrypt,
            ConnectorClass::Sink,
            ConnectorClass::Stats,
            ConnectorClass::Media,
        ] {
            assert_eq!(
                serde_json::to_value(class).expect("class"),
                serde_json::json!(class.name())
            );
        }
    }
}
