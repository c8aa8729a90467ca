//! The sink connector's settings: the `settings` block of `topology/connectors/sink.yaml`.

use std::time::Duration;

use serde::Deserialize;
use wx_topology::settings::{SecretRef, duration, parse_settings};

fn default_database() -> String {
    "wxstream".into()
}
fn default_prefix() -> String {
    "wxstream-messages".into()
}
fn default_group() -> String {
    "wxstream-sink".into()
}
fn default_batch_max() -> usize {
    500
}
fn default_linger() -> Duration {
    Duration::from_millis(200)
}
fn default_bulk_max_bytes() -> usize {
    5 * 1024 * 1024
}
fn default_ahead() -> u32 {
    3
}
fn default_backoff_cap() -> Duration {
    Duration::from_secs(10)
}
fn default_max_poll_interval() -> Duration {
    Duration::from_secs(300)
}

/// The sink connector's settings. Durations are written like `200ms`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkSettings {
    /// `mysql://user:password@host:port` (a secret: `{env: NAME}` or `{file: PATH}`).
    pub mysql_url: SecretRef,
    /// The database (created with utf8mb4 if missing; migrations applied at start).
    #[serde(default = "default_database")]
    pub database: String,
    /// The search endpoint, e.g. `http://127.0.0.1:9200`.
    pub elasticsearch_url: String,
    /// Monthly indices are `<prefix>-YYYY.MM`, all behind the alias `<prefix>`.
    #[serde(default = "default_prefix")]
    pub index_prefix: String,
    /// The consumer group on the clean topic.
    #[serde(default = "default_group")]
    pub group_id: String,
    /// Records per batch (one MySQL transaction, one or more bulk requests).
    #[serde(default = "default_batch_max")]
    pub batch_max: usize,
    /// How long a batch waits to fill.
    #[serde(default = "default_linger", deserialize_with = "duration")]
    pub batch_linger: Duration,
    /// Largest bulk request body (items are also capped at `batch_max`).
    #[serde(default = "default_bulk_max_bytes")]
    pub bulk_max_bytes: usize,
    /// Monthly partitions created ahead of the current month.
    #[serde(default = "default_ahead")]
    pub partitions_ahead: u32,
    /// Longest pause between retries of a failing store.
    #[serde(default = "default_backoff_cap", deserialize_with = "duration")]
    pub backoff_cap: Duration,
    /// librdkafka's `max.poll.interval.ms`: how long the worker may go without polling the
    /// clean topic before it is deemed stuck and leaves its group. Retrying a failing store
    /// does not count: the worker keeps polling (paused) while it waits.
    #[serde(default = "default_max_poll_interval", deserialize_with = "duration")]
    pub max_poll_interval: Duration,
    #[serde(
        default = "wx_topology::settings::consumer_defaults::session_timeout",
        deserialize_with = "duration"
    )]
    pub session_timeout: Duration,
    #[serde(
        default = "wx_topology::settings::consumer_defaults::drain_timeout",
        deserialize_with = "duration"
    )]
    pub drain_timeout: Duration,
    #[serde(
        default = "wx_topology::settings::consumer_defaults::commit_interval",
        deserialize_with = "duration"
    )]
    pub commit_interval: Duration,
}

impl SinkSettings {
    /// Parses and validates the connector's `settings` block; errors name the field.
    pub fn from_settings(
        settings: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<SinkSettings, String> {
        let parsed: SinkSettings = parse_settings("sink", settings)?;
        if parsed.batch_max == 0 {
            return Err("sink settings: field `batch_max`: must be at least 1".into());
        }
        if parsed.max_poll_interval < parsed.session_timeout {
            // librdkafka refuses the pair; say which field to change.
            return Err(
                "sink settings: field `max_poll_interval`: must be at least `session_timeout`"
                    .into(),
            );
        }
        if parsed.database.is_empty()
            || !parsed
                .database
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err("sink settings: field `database`: letters, digits and _ only".into());
        }
        Ok(parsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_settings_and_field_errors() {
        let parse = |yaml: &str| {
            let map: serde_json::Map<String, serde_json::Value> =
                serde_yaml_ng::from_str(yaml).expect("yaml");
            SinkSettings::from_settings(&map)
        };
        let ok = parse("mysql_url: {env: X}\nelasticsearch_url: http://h:9200").expect("ok");
        assert_eq!(ok.index_prefix, "wxstream-messages");
        assert_eq!(ok.batch_max, 500);
        for (yaml, field) in [
            ("elasticsearch_url: u", "mysql_url"),
            (
                "mysql_url: {env: X}\nelasticsearch_url: u\ndatabase: 'a;b'",
                "database",
            ),
            (
                "mysql_url: {env: X}\nelasticsearch_url: u\nbatch_linger: soon",
                "batch_linger",
            ),
            (
                "mysql_url: mysql://root@h\nelasticsearch_url: u",
                "mysql_url",
            ),
            (
                "mysql_url: {env: X}\nelasticsearch_url: u\nmax_poll_interval: 5s",
                "max_poll_interval",
            ),
        ] {
            let err = parse(yaml).expect_err(yaml);
            assert!(err.contains(field), "{yaml}: {err}");
        }
    }
}
