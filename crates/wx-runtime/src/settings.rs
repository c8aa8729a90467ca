//! Building blocks of the stages' `settings` blocks: secrets by reference, callback credentials,
//! durations written like `5s`, deserialisation whose errors name the field
//! ([`SettingsError`]), and [`ConsumerSettings`], the consumer-group fields every consuming stage
//! embeds with one set of defaults.

use std::path::PathBuf;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use wx_kafka::ConsumerOptions;

/// A settings block that does not parse or validate. Names the stage and the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{stage} settings: field `{field}`: {reason}")]
pub struct SettingsError {
    pub stage: String,
    pub field: String,
    pub reason: String,
}

impl SettingsError {
    pub fn new(stage: &str, field: &str, reason: impl std::fmt::Display) -> SettingsError {
        SettingsError {
            stage: stage.to_string(),
            field: field.to_string(),
            reason: reason.to_string(),
        }
    }
}

/// A secret that cannot be read. Says where it looked, never what it found.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("environment variable {0} is not set")]
    EnvUnset(String),
    #[error("cannot read secret file {path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("secret {0} is empty")]
    Empty(String),
}

/// A secret given by reference: `{env: NAME}` or `{file: PATH}`. Never in the document itself.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum SecretRef {
    Env(String),
    File(PathBuf),
}

impl std::fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretRef::Env(name) => write!(f, "env:{name}"),
            SecretRef::File(path) => write!(f, "file:{}", path.display()),
        }
    }
}

/// A resolved secret; `Debug` prints `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl Secret {
    /// Holds `value` as a secret (a password taken from a request, a hash read from a file).
    pub fn new(value: String) -> Secret {
        Secret(value)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl SecretRef {
    /// Reads the secret; the error says where it looked, never what it found.
    pub fn resolve(&self) -> Result<Secret, SecretError> {
        let value = match self {
            SecretRef::Env(name) => {
                std::env::var(name).map_err(|_| SecretError::EnvUnset(name.clone()))?
            }
            SecretRef::File(path) => {
                std::fs::read_to_string(path).map_err(|source| SecretError::File {
                    path: path.clone(),
                    source,
                })?
            }
        };
        let value = value.trim().to_string();
        if value.is_empty() {
            return Err(SecretError::Empty(format!("{self:?}")));
        }
        Ok(Secret(value))
    }
}

/// A librdkafka property's value in the worker configuration: text (or a number or a
/// boolean), or a secret by reference, which every secret property
/// ([`wx_kafka::is_secret_property`]) must be.
#[derive(Deserialize)]
#[serde(untagged)]
enum KafkaProperty {
    Text(String),
    Integer(i64),
    Boolean(bool),
    Secret(SecretRef),
}

/// The worker configuration's `kafka` block, before its secrets are read.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KafkaDocument {
    brokers: String,
    #[serde(default)]
    request_timeout_ms: Option<u64>,
    #[serde(default)]
    properties: std::collections::BTreeMap<String, KafkaProperty>,
}

/// Deserializes the worker configuration's `kafka` block (`brokers`, `request_timeout_ms`,
/// `properties`) into a [`wx_kafka::KafkaConfig`], reading each property given by reference
/// (`{env: NAME}` or `{file: PATH}`). A secret property written as text is refused, naming the
/// property, never its value; so is a reference that cannot be read.
pub fn kafka_config<'de, D: Deserializer<'de>>(d: D) -> Result<wx_kafka::KafkaConfig, D::Error> {
    let document = KafkaDocument::deserialize(d)?;
    let mut config = wx_kafka::KafkaConfig::new(document.brokers);
    if let Some(ms) = document.request_timeout_ms {
        config.request_timeout_ms = ms;
    }
    for (key, value) in document.properties {
        let value = match value {
            KafkaProperty::Secret(secret) => secret
                .resolve()
                .map_err(|e| serde::de::Error::custom(format!("kafka.properties.{key}: {e}")))?
                .expose()
                .to_string(),
            _ if wx_kafka::is_secret_property(&key) => {
                return Err(serde::de::Error::custom(format!(
                    "kafka.properties.{key} is a secret: give it by reference ({{env: NAME}} or {{file: PATH}}), never as text"
                )));
            }
            KafkaProperty::Text(text) => text,
            KafkaProperty::Integer(n) => n.to_string(),
            KafkaProperty::Boolean(b) => b.to_string(),
        };
        config.properties.insert(key, value);
    }
    Ok(config)
}

/// A corp's WXBizMsgCrypt credentials (callbacks).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallbackCredentials {
    pub token: SecretRef,
    pub encoding_aes_key: SecretRef,
}

fn default_session_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_drain_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_commit_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_max_poll_interval() -> Duration {
    Duration::from_secs(300)
}

/// The consumer-group fields of a stage's settings block, written flat beside the stage's own
/// fields (`session_timeout: 10s`), with one set of defaults for every stage.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerSettings {
    /// The consumer group [`<topic prefix>wxstream-<stage>`: two pipelines on one cluster,
    /// told apart by their topic prefix, never share a group by accident].
    #[serde(default)]
    pub group_id: Option<String>,
    /// Static membership (`group.instance.id`), e.g. a StatefulSet pod's name [none].
    #[serde(default)]
    pub group_instance_id: Option<String>,
    /// How long a dead member keeps its partitions [10s].
    #[serde(default = "default_session_timeout", deserialize_with = "duration")]
    pub session_timeout: Duration,
    /// How long a revocation or shutdown waits for records in flight before committing [10s].
    #[serde(default = "default_drain_timeout", deserialize_with = "duration")]
    pub drain_timeout: Duration,
    /// How often finished offsets are committed [1s].
    #[serde(default = "default_commit_interval", deserialize_with = "duration")]
    pub commit_interval: Duration,
    /// librdkafka's `max.poll.interval.ms`: how long a member may go without polling before it
    /// is deemed stuck and leaves its group [5m]. Waiting for a failing store does not count:
    /// the stage keeps polling, paused, meanwhile.
    #[serde(default = "default_max_poll_interval", deserialize_with = "duration")]
    pub max_poll_interval: Duration,
}

impl Default for ConsumerSettings {
    fn default() -> ConsumerSettings {
        ConsumerSettings {
            group_id: None,
            group_instance_id: None,
            session_timeout: default_session_timeout(),
            drain_timeout: default_drain_timeout(),
            commit_interval: default_commit_interval(),
            max_poll_interval: default_max_poll_interval(),
        }
    }
}

impl ConsumerSettings {
    /// The field names, taken out of a settings block before the stage's own fields are parsed.
    pub const FIELDS: [&'static str; 6] = [
        "group_id",
        "group_instance_id",
        "session_timeout",
        "drain_timeout",
        "commit_interval",
        "max_poll_interval",
    ];

    /// The consumer group of `stage` in the pipeline whose topics carry `pipeline` as prefix.
    pub fn group(&self, pipeline: &str, stage: &str) -> String {
        self.group_id
            .clone()
            .unwrap_or_else(|| format!("{pipeline}wxstream-{stage}"))
    }

    /// How `stage`'s consumer joins its group on `topics`: these settings, from the beginning
    /// when the group has no committed offset, waiting for records in flight on revocation, and
    /// at most 16 MiB prefetched.
    pub fn options(&self, pipeline: &str, stage: &str, topics: &[&str]) -> ConsumerOptions {
        ConsumerOptions {
            group: self.group(pipeline, stage),
            group_instance_id: self.group_instance_id.clone(),
            topics: topics.iter().map(|t| t.to_string()).collect(),
            session_timeout: self.session_timeout,
            drain_timeout: self.drain_timeout,
            drain_on_revoke: true,
            from_beginning: true,
            metric_prefix: format!("wxstream_{stage}"),
            max_buffered_kib: 16 * 1024,
            max_poll_interval: self.max_poll_interval,
        }
    }

    fn validate(self, stage: &str) -> Result<ConsumerSettings, SettingsError> {
        if self.max_poll_interval < self.session_timeout {
            // librdkafka refuses the pair; say which field to change.
            return Err(SettingsError::new(
                stage,
                "max_poll_interval",
                "must be at least `session_timeout`",
            ));
        }
        if self.commit_interval.is_zero() {
            return Err(SettingsError::new(
                stage,
                "commit_interval",
                "must be more than 0",
            ));
        }
        Ok(self)
    }
}

/// A settings block split in two: the entries named in `fields`, and the rest.
pub fn split_fields(
    settings: &serde_json::Map<String, serde_json::Value>,
    fields: &[&str],
) -> (
    serde_json::Map<String, serde_json::Value>,
    serde_json::Map<String, serde_json::Value>,
) {
    settings
        .clone()
        .into_iter()
        .partition(|(k, _)| fields.contains(&k.as_str()))
}

/// Parses a consuming stage's settings block: the [`ConsumerSettings`] fields, then the stage's
/// own fields (`T`, which rejects unknown fields) from the rest.
pub fn parse_stage_settings<T: DeserializeOwned>(
    stage: &str,
    settings: &serde_json::Map<String, serde_json::Value>,
) -> Result<(T, ConsumerSettings), SettingsError> {
    let (consumer, own) = split_fields(settings, &ConsumerSettings::FIELDS);
    let consumer: ConsumerSettings = parse_settings(stage, &consumer)?;
    Ok((parse_settings(stage, &own)?, consumer.validate(stage)?))
}

/// `text` with the credentials of every URL in it replaced by `***` (defined in `wx-codec`, the
/// lowest crate that shows URLs: its schema registry client).
pub use wx_codec::redact_urls;

/// The default deadline of one call to a store (MySQL, the search endpoint, the object store):
/// a store that does not answer within it is failing, as one that refuses the connection is
/// (`store_timeout` of the sink and media connectors).
pub fn default_store_timeout() -> Duration {
    Duration::from_secs(30)
}

/// Parses a duration written like `5s`, `250ms`, `4d`.
pub fn parse_duration(text: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(text)
}

/// Deserialises a duration written like `5s`, `250ms`, `4d`.
pub fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text).map_err(serde::de::Error::custom)
}

/// Deserialises a stage's `settings` block; the error names the stage and the field path.
pub fn parse_settings<T: DeserializeOwned>(
    stage: &str,
    settings: &serde_json::Map<String, serde_json::Value>,
) -> Result<T, SettingsError> {
    let value = serde_json::Value::Object(settings.clone());
    serde_path_to_error::deserialize(value)
        .map_err(|e| SettingsError::new(stage, &e.path().to_string(), e.inner()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Example {
        #[serde(deserialize_with = "duration")]
        wait: Duration,
        secret: SecretRef,
    }

    #[test]
    fn errors_name_the_field_and_secrets_never_print() {
        let ok: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(r#"{"wait":"250ms","secret":{"env":"NOPE_X"}}"#).expect("json");
        let parsed: Example = parse_settings("demo", &ok).expect("parses");
        assert_eq!(parsed.wait, Duration::from_millis(250));
        assert_eq!(format!("{:?}", parsed.secret), "env:NOPE_X");
        assert_eq!(format!("{:?}", Secret("hunter2".into())), "***");

        let bad: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(r#"{"wait":"soon","secret":{"env":"X"}}"#).expect("json");
        let err = parse_settings::<Example>("demo", &bad).expect_err("bad duration");
        assert!(
            err.to_string().starts_with("demo settings: field `wait`"),
            "{err}"
        );
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Stage {
        batch: u32,
    }

    #[test]
    fn consumer_fields_are_split_off_with_one_set_of_defaults() {
        let parse = |json: &str| {
            let map: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(json).expect("json");
            parse_stage_settings::<Stage>("demo", &map)
        };
        let (stage, consumer) = parse(r#"{"batch": 3}"#).expect("defaults");
        assert_eq!(stage.batch, 3);
        assert_eq!(consumer, ConsumerSettings::default());
        assert_eq!(consumer.group("", "demo"), "wxstream-demo");
        assert_eq!(
            consumer.group("staging.", "demo"),
            "staging.wxstream-demo",
            "a pipeline's default groups carry its topic prefix"
        );
        let every_field = r#"{"batch": 3, "group_id": "g", "group_instance_id": "pod-0",
            "session_timeout": "6s", "drain_timeout": "2s", "commit_interval": "500ms",
            "max_poll_interval": "1m"}"#;
        let (_, consumer) = parse(every_field).expect("every field");
        assert_eq!(consumer.group("staging.", "demo"), "g");
        let options = consumer.options("", "demo", &["t"]);
        assert_eq!(options.group_instance_id.as_deref(), Some("pod-0"));
        assert_eq!(options.session_timeout, Duration::from_secs(6));
        assert_eq!(options.metric_prefix, "wxstream_demo");
        for (json, field) in [
            (r#"{"batch": 3, "nope": 1}"#, "nope"),
            (
                r#"{"batch": 3, "session_timeout": "soon"}"#,
                "session_timeout",
            ),
            (
                r#"{"batch": 3, "session_timeout": "20s", "max_poll_interval": "10s"}"#,
                "max_poll_interval",
            ),
        ] {
            let err = parse(json).expect_err(json);
            assert_eq!(err.field, field, "{json}: {err}");
        }
    }
}
