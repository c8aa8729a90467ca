//! The sink connector's settings: the `settings` block of `topology/connectors/sink.yaml`.

use std::time::Duration;

use serde::Deserialize;
use wx_runtime::settings::{SecretRef, SettingsError, duration};

fn default_database() -> String {
    "wxstream".into()
}

/// The sink's MySQL database as the operator commands reach it (the audit log, retention,
/// erasure, export): the URL, database and deadline of the sink's settings, read without the
/// rest, so a worker that hosts no sink (and has none of the search settings' environment) can
/// still find it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ArchiveDatabase {
    pub mysql_url: SecretRef,
    #[serde(default = "default_database")]
    pub database: String,
    #[serde(
        default = "wx_runtime::settings::default_store_timeout",
        deserialize_with = "duration"
    )]
    pub store_timeout: Duration,
}

impl ArchiveDatabase {
    /// From the sink connector's `settings` block.
    pub fn of(
        settings: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<ArchiveDatabase, SettingsError> {
        serde_json::from_value(serde_json::Value::Object(settings.clone()))
            .map_err(|e| SettingsError::new("sink", "mysql_url", e.to_string()))
    }
}
fn default_prefix() -> String {
    "wxstream-messages".into()
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
fn default_maintenance_interval() -> Duration {
    Duration::from_secs(3600)
}
fn default_one() -> u32 {
    1
}
fn default_backoff_cap() -> Duration {
    Duration::from_secs(10)
}

/// The search cluster's credentials, by reference.
enum SearchAuth<'a> {
    Basic(&'a String, &'a SecretRef),
    ApiKey(&'a SecretRef),
}

/// One URL, several separated by commas, or a list of them.
fn url_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Urls {
        One(String),
        Many(Vec<String>),
    }
    let urls = match Urls::deserialize(d)? {
        Urls::One(text) => text.split(',').map(str::to_string).collect(),
        Urls::Many(urls) => urls,
    };
    Ok(urls
        .into_iter()
        .map(|u| u.trim().to_string())
        .filter(|u| !u.is_empty())
        .collect())
}

/// The sink connector's settings. Durations are written like `200ms`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkSettings {
    /// The stores written, in order (`[mysql, search]`): a record's offset is finished once every
    /// one has it. An entry is a target's name, or `{name: {options}}` for a target that takes
    /// options of its own; `mysql` and `search` read the fields below.
    #[serde(default = "crate::targets::default_targets")]
    pub targets: Vec<crate::targets::TargetSpec>,
    /// `mysql://user:password@host:port` (a secret: `{env: NAME}` or `{file: PATH}`).
    pub mysql_url: SecretRef,
    /// The database (created with utf8mb4 if missing; migrations applied at start).
    #[serde(default = "default_database")]
    pub database: String,
    /// The search cluster's node URLs, e.g. `https://es-1:9200`: one, several separated by
    /// commas, or a list; requests go round robin.
    #[serde(deserialize_with = "url_list")]
    pub elasticsearch_url: Vec<String>,
    /// A PEM file of the CA the nodes' HTTPS certificates (host names included) are verified
    /// against [the system's roots].
    #[serde(default)]
    pub elasticsearch_ca_file: Option<std::path::PathBuf>,
    /// Basic authentication: the user, with `elasticsearch_password`.
    #[serde(default)]
    pub elasticsearch_username: Option<String>,
    /// Basic authentication's password (a secret: `{env: NAME}` or `{file: PATH}`).
    #[serde(default)]
    pub elasticsearch_password: Option<SecretRef>,
    /// An API key in its encoded form (a secret), instead of a user and password.
    #[serde(default)]
    pub elasticsearch_api_key: Option<SecretRef>,
    /// Monthly indices are `<prefix>-YYYY.MM`, all behind the alias `<prefix>`.
    #[serde(default = "default_prefix")]
    pub index_prefix: String,
    /// Primary shards of each new monthly index [1]. A shard holds at most about 2.1 billion
    /// documents (Lucene's limit) and should stay well under 200 million: at 100 million
    /// messages a day a month is about 3.1 billion documents, so 16 (README, "Scale on paper";
    /// the chart's default). Applies to indices created after a change.
    #[serde(default = "default_one")]
    pub index_shards: u32,
    /// Replicas of each shard of a new monthly index [1] (0 on a one-node cluster leaves no
    /// copy; a replica that cannot be placed leaves the index yellow, still writable).
    #[serde(default = "default_one")]
    pub index_replicas: u32,
    /// Records per batch (one MySQL transaction, one or more bulk requests).
    #[serde(default = "default_batch_max")]
    pub batch_max: usize,
    /// How long a batch waits to fill.
    #[serde(default = "default_linger", deserialize_with = "duration")]
    pub batch_linger: Duration,
    /// Largest bulk request body (items are also capped at `batch_max`).
    #[serde(default = "default_bulk_max_bytes")]
    pub bulk_max_bytes: usize,
    /// Monthly partitions created ahead of the current month, at start and then every
    /// `partition_maintenance_interval` while the sink runs (so `p_future` never fills up).
    #[serde(default = "default_ahead")]
    pub partitions_ahead: u32,
    /// How often the partitions ahead are checked and created while running [1h].
    #[serde(
        default = "default_maintenance_interval",
        deserialize_with = "duration"
    )]
    pub partition_maintenance_interval: Duration,
    /// Longest pause between retries of a failing store.
    #[serde(default = "default_backoff_cap", deserialize_with = "duration")]
    pub backoff_cap: Duration,
    /// Deadline of each call to MySQL and to the search endpoint [30s]: a store that hangs
    /// (a frozen process, a blackholed connection, a lock held) fails the call once it passes,
    /// and the sink pauses and retries as for any failing store.
    #[serde(
        default = "wx_runtime::settings::default_store_timeout",
        deserialize_with = "duration"
    )]
    pub store_timeout: Duration,
}

impl SinkSettings {
    /// How the search cluster is authenticated to, as configured (nothing read yet).
    fn search_auth(&self) -> Result<Option<SearchAuth<'_>>, SettingsError> {
        let wrong = |field: &str, reason: &str| SettingsError::new(crate::STAGE, field, reason);
        match (
            &self.elasticsearch_username,
            &self.elasticsearch_password,
            &self.elasticsearch_api_key,
        ) {
            (None, None, None) => Ok(None),
            (Some(username), Some(password), None) => {
                Ok(Some(SearchAuth::Basic(username, password)))
            }
            (None, None, Some(key)) => Ok(Some(SearchAuth::ApiKey(key))),
            (_, _, Some(_)) => Err(wrong(
                "elasticsearch_api_key",
                "an API key or a user and password, not both",
            )),
            _ => Err(wrong(
                "elasticsearch_username",
                "a user and a password go together",
            )),
        }
    }

    /// The search cluster as configured, its secrets read.
    pub fn search_endpoint(&self) -> Result<wx_search::Endpoint, SettingsError> {
        let read = |field: &str, secret: &SecretRef| {
            secret
                .resolve()
                .map_err(|e| SettingsError::new(crate::STAGE, field, e.to_string()))
        };
        let auth = match self.search_auth()? {
            None => None,
            Some(SearchAuth::Basic(username, password)) => Some(wx_search::Auth::Basic {
                username: username.clone(),
                password: read("elasticsearch_password", password)?,
            }),
            Some(SearchAuth::ApiKey(key)) => {
                Some(wx_search::Auth::ApiKey(read("elasticsearch_api_key", key)?))
            }
        };
        Ok(wx_search::Endpoint {
            urls: self.elasticsearch_url.clone(),
            ca_file: self.elasticsearch_ca_file.clone(),
            auth,
        })
    }

    /// What the types alone do not check (`StageSettings::validate`).
    pub(crate) fn check(&self) -> Result<(), SettingsError> {
        if self.store_timeout.is_zero() {
            return Err(SettingsError::new(
                crate::STAGE,
                "store_timeout",
                "must be more than 0",
            ));
        }
        if self.batch_max == 0 {
            return Err(SettingsError::new(
                crate::STAGE,
                "batch_max",
                "must be at least 1",
            ));
        }
        if !(1..=1024).contains(&self.index_shards) {
            return Err(SettingsError::new(
                crate::STAGE,
                "index_shards",
                "must be between 1 and 1024",
            ));
        }
        if self.elasticsearch_url.is_empty() {
            return Err(SettingsError::new(
                crate::STAGE,
                "elasticsearch_url",
                "names no URL",
            ));
        }
        self.search_auth()?;
        crate::targets::check(&self.targets)?;
        wx_mysql::check_database(crate::STAGE, &self.database)
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
            <SinkSettings as wx_runtime::StageSettings>::parse(&map)
        };
        let ok = parse("mysql_url: {env: X}\nelasticsearch_url: http://h:9200").expect("ok");
        assert_eq!(ok.index_prefix, "wxstream-messages");
        assert_eq!(ok.batch_max, 500);
        assert_eq!(ok.targets, crate::targets::default_targets());
        assert_eq!((ok.index_shards, ok.index_replicas), (1, 1));
        assert_eq!(ok.elasticsearch_url, ["http://h:9200"]);
        let listed = |urls: &str| {
            let yaml = format!("mysql_url: {{env: X}}\nelasticsearch_url: {urls}");
            parse(&yaml).expect("ok").elasticsearch_url
        };
        let two = ["https://a:9200", "https://b:9200"];
        assert_eq!(listed("'https://a:9200, https://b:9200'"), two);
        assert_eq!(listed("[https://a:9200, https://b:9200]"), two);
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
            (
                "mysql_url: {env: X}\nelasticsearch_url: u\ntargets: [mysql, clickhouse]",
                "unknown target `clickhouse`",
            ),
            (
                "mysql_url: {env: X}\nelasticsearch_url: u\ntargets: [mysql, mysql]",
                "named twice",
            ),
            (
                "mysql_url: {env: X}\nelasticsearch_url: u\ntargets: []",
                "targets",
            ),
            (
                "mysql_url: {env: X}\nelasticsearch_url: u\nindex_shards: 0",
                "index_shards",
            ),
            (
                "mysql_url: {env: X}\nelasticsearch_url: ' , '",
                "names no URL",
            ),
            (
                "mysql_url: {env: X}\nelasticsearch_url: u\nelasticsearch_username: wx",
                "go together",
            ),
            (
                "mysql_url: {env: X}\nelasticsearch_url: u\nelasticsearch_password: {env: P}\nelasticsearch_api_key: {env: K}",
                "not both",
            ),
            (
                "mysql_url: {env: X}\nelasticsearch_url: u\nelasticsearch_password: hunter2",
                "elasticsearch_password",
            ),
        ] {
            let err = parse(yaml).expect_err(yaml);
            assert!(err.to_string().contains(field), "{yaml}: {err}");
        }
    }
}
