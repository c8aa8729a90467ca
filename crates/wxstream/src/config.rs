//! The worker's configuration, layered: `config/defaults.yaml` (compiled in) < `--config FILE`
//! < environment variables `WXSTREAM_<SECTION>__<KEY>` < command-line flags.
//!
//! Which environment variables are configuration: `WXSTREAM_<KEY>` where `<KEY>` is a top-level
//! key of `config/defaults.yaml` (`WXSTREAM_METRICS_LISTEN`), and every `WXSTREAM_<SECTION>__<KEY>`
//! (a double underscore is the configuration form, so a misspelt section or key there is an
//! error naming it). Any other `WXSTREAM_*` variable is not wxstream's: Kubernetes injects
//! `WXSTREAM_SINK_PORT=tcp://...` and `WXSTREAM_SINK_SERVICE_HOST` for a Service named
//! `wxstream-sink`, and shells export their own. Those are ignored, and named (never their
//! values) in one log line at start, with the configuration key each resembles, if any.

use std::path::{Path, PathBuf};

use anyhow::Context;
use figment::Figment;
use figment::providers::{Env, Format, Yaml};
use serde::Deserialize;
use wx_kafka::KafkaConfig;

const DEFAULTS: &str = include_str!("../../../config/defaults.yaml");

/// Settings every subcommand shares.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    /// Kafka connection; secret properties by reference (`wx_runtime::settings::kafka_config`).
    #[serde(deserialize_with = "wx_runtime::settings::kafka_config")]
    pub kafka: KafkaConfig,
    /// Confluent-compatible schema registry URL; empty means the fixed ids of `schemas/ids.json`.
    pub schema_registry_url: String,
    /// How the registry is used (when `schema_registry_url` is set).
    pub schema_registry: RegistryConfig,
    /// Directory of `topics.yaml` and `connectors/`.
    pub topology_dir: PathBuf,
    /// Prefix added to every topic name.
    pub topic_prefix: String,
    /// Logging.
    pub log: LogConfig,
    /// The operations endpoint (metrics, health, REST); empty turns it off.
    pub metrics_listen: String,
    /// The bearer token the operations endpoint requires for pause, resume and the connector
    /// documents (a secret reference). Required when `metrics_listen` is not a loopback address.
    #[serde(default)]
    pub ops_token: Option<wx_runtime::settings::SecretRef>,
    /// The operations endpoint's HTTP Basic users: a secret reference to htpasswd lines
    /// (`name:bcrypt-hash`), beside or instead of `ops_token`.
    #[serde(default)]
    pub ops_users: Option<wx_runtime::settings::SecretRef>,
    /// How long a stage may stay FAILED before `/livez` fails (Kubernetes then restarts it).
    #[serde(deserialize_with = "wx_runtime::settings::duration")]
    pub failed_liveness_after: std::time::Duration,
    /// The `WXSTREAM_*` variables that were not configuration (names only, each with the key it
    /// resembles), for the start log.
    #[serde(skip)]
    pub ignored_env: Vec<String>,
}

/// How the schema registry is used: subjects, registration, credentials (a secret reference),
/// TLS, deadline. `config/defaults.yaml` documents each key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    pub subject_strategy: wx_codec::SubjectStrategy,
    pub auto_register: bool,
    pub username: String,
    #[serde(default)]
    pub password: Option<wx_runtime::settings::SecretRef>,
    pub ca_file: String,
    #[serde(deserialize_with = "wx_runtime::settings::duration")]
    pub timeout: std::time::Duration,
}

impl RegistryConfig {
    /// The codec's options for the registry at `url`, secrets read: a password without a user
    /// (or the reverse), an unreadable secret or CA file is a configuration error.
    pub fn options(&self, url: &str) -> anyhow::Result<wx_codec::RegistryOptions> {
        let basic_auth = match (self.username.is_empty(), &self.password) {
            (true, None) => None,
            (false, Some(password)) => Some((
                self.username.clone(),
                password
                    .resolve()
                    .context("schema_registry.password")?
                    .expose()
                    .to_string(),
            )),
            _ => anyhow::bail!(
                "schema_registry: username and password are given together or not at all"
            ),
        };
        let ca_pem = if self.ca_file.is_empty() {
            None
        } else {
            Some(std::fs::read(&self.ca_file).with_context(|| {
                format!("schema_registry.ca_file {} cannot be read", self.ca_file)
            })?)
        };
        Ok(wx_codec::RegistryOptions {
            url: url.to_string(),
            basic_auth,
            ca_pem,
            subject_strategy: self.subject_strategy,
            auto_register: self.auto_register,
            timeout: self.timeout,
        })
    }
}

/// Log output.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: LogFormat,
    /// A tracing EnvFilter directive.
    pub filter: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl WorkerConfig {
    /// Reads the layers; `file` is the optional `--config`. `WXSTREAM_*` variables are read
    /// as the module's documentation says: configuration keys, or ignored (and listed in
    /// `ignored_env`).
    pub fn load(file: Option<&Path>) -> anyhow::Result<WorkerConfig> {
        let keys = top_level_keys()?;
        let ignored = std::env::vars_os()
            .filter_map(|(name, _)| name.into_string().ok())
            .filter_map(|name| {
                let key = name
                    .get(..ENV_PREFIX.len())
                    .filter(|p| p.eq_ignore_ascii_case(ENV_PREFIX))
                    .map(|_| &name[ENV_PREFIX.len()..])?;
                if is_configuration(key, &keys) {
                    return None;
                }
                Some(match resembles(key, &keys) {
                    Some(close) => format!(
                        "{name} (did you mean {ENV_PREFIX}{}?)",
                        close.to_uppercase()
                    ),
                    None => name.clone(),
                })
            })
            .collect();
        let env = Env::prefixed(ENV_PREFIX)
            .filter(move |key| is_configuration(key.as_str(), &keys))
            .split("__");
        let mut config = Self::load_layers(file, env)?;
        config.ignored_env = ignored;
        Ok(config)
    }

    fn load_layers(file: Option<&Path>, env: Env) -> anyhow::Result<WorkerConfig> {
        let mut figment = Figment::from(Yaml::string(DEFAULTS));
        if let Some(file) = file {
            anyhow::ensure!(
                file.is_file(),
                "config file {} does not exist",
                file.display()
            );
            figment = figment.merge(Yaml::file(file));
        }
        figment.merge(env).extract().context(
            "invalid configuration (defaults < --config file < WXSTREAM_<KEY> and \
             WXSTREAM_<SECTION>__<KEY> environment variables)",
        )
    }

    /// One line naming the ignored `WXSTREAM_*` variables (never their values), each with the
    /// configuration variable it resembles, if one is close; nothing when there are none.
    pub fn log_ignored_env(&self) {
        if self.ignored_env.is_empty() {
            return;
        }
        tracing::info!(
            variables = %self.ignored_env.join(", "),
            "ignoring WXSTREAM_* environment variables that are not configuration (only \
             WXSTREAM_<KEY> of a top-level key and WXSTREAM_<SECTION>__<KEY> are)"
        );
    }

    /// The codec: the fixed id table, or the schema registry when one is configured (its
    /// subjects named after the topology's topics).
    pub async fn codec(&self) -> anyhow::Result<std::sync::Arc<wx_codec::Codec>> {
        let codec = if self.schema_registry_url.is_empty() {
            wx_codec::Codec::fixed()?
        } else {
            let options = self.schema_registry.options(&self.schema_registry_url)?;
            let topics = crate::stages::record_topics(&self.topology()?, &self.topic_prefix);
            wx_codec::Codec::with_registry(&options, &topics)
                .await
                .context("the schema registry (schema_registry_url)")?
        };
        Ok(std::sync::Arc::new(codec))
    }

    /// The topology, with the configured prefix applied.
    pub fn topology(&self) -> anyhow::Result<wx_topology::Topology> {
        let topology = wx_topology::load_dir(&self.topology_dir)?;
        Ok(if self.topic_prefix.is_empty() {
            topology
        } else {
            topology.with_topic_prefix(&self.topic_prefix)
        })
    }
}

const ENV_PREFIX: &str = "WXSTREAM_";

/// The top-level keys of the configuration: those of `config/defaults.yaml`, so the rule cannot
/// drift from the keys themselves.
fn top_level_keys() -> anyhow::Result<Vec<String>> {
    let defaults: std::collections::BTreeMap<String, figment::value::Value> =
        Figment::from(Yaml::string(DEFAULTS))
            .extract()
            .context("config/defaults.yaml")?;
    Ok(defaults.into_keys().collect())
}

/// Whether `name` (a variable's name after `WXSTREAM_`, any case) is configuration: a top-level
/// key, or the `<SECTION>__<KEY>` form.
fn is_configuration(name: &str, keys: &[String]) -> bool {
    name.contains("__") || keys.iter().any(|key| key.eq_ignore_ascii_case(name))
}

/// The top-level key an ignored variable's name is probably a misspelling of.
fn resembles<'k>(name: &str, keys: &'k [String]) -> Option<&'k str> {
    let name = name.to_lowercase();
    keys.iter()
        .map(|key| (strsim::jaro_winkler(&name, key), key))
        .filter(|(score, _)| *score >= 0.9)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, key)| key.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An environment layer no process sets, so the test does not depend on the caller's
    /// environment (the real layer is exercised by the end-to-end tests).
    fn no_env() -> Env {
        Env::prefixed("WXSTREAM_UNIT_TEST_UNSET_").split("__")
    }

    #[test]
    fn defaults_parse_and_a_file_overrides_them() {
        let defaults = WorkerConfig::load_layers(None, no_env()).expect("defaults");
        assert_eq!(defaults.kafka.brokers, "127.0.0.1:9092");
        assert_eq!(defaults.log.format, LogFormat::Text);

        let dir = std::env::temp_dir().join(format!("wxstream-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("worker.yaml");
        std::fs::write(
            &file,
            "kafka:\n  brokers: kafka:29092\nlog:\n  format: json\n",
        )
        .expect("write");
        let layered = WorkerConfig::load_layers(Some(&file), no_env()).expect("layered");
        assert_eq!(layered.kafka.brokers, "kafka:29092");
        assert_eq!(layered.kafka.request_timeout_ms, 10_000);
        assert_eq!(layered.log.format, LogFormat::Json);

        std::fs::write(&file, "kafka:\n  brokrs: x\n").expect("write");
        let err = WorkerConfig::load_layers(Some(&file), no_env()).expect_err("unknown field");
        assert!(format!("{err:#}").contains("brokrs"), "{err:#}");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn kafka_secret_properties_are_references_and_never_text() {
        let dir = tempfile::tempdir().expect("dir");
        let (file, password) = (dir.path().join("worker.yaml"), dir.path().join("sasl"));
        std::fs::write(&password, "s3cr3t-from-file\n").expect("write");
        std::fs::write(
            &file,
            format!(
                "kafka:\n  brokers: k:9093\n  properties:\n    security.protocol: SASL_SSL\n    sasl.username: wx\n    sasl.password: {{file: {}}}\n    socket.keepalive.enable: true\n    message.max.bytes: 8388608\n",
                password.display()
            ),
        )
        .expect("write");
        let config = WorkerConfig::load_layers(Some(&file), no_env()).expect("by reference");
        let properties = &config.kafka.properties;
        assert_eq!(properties["sasl.password"], "s3cr3t-from-file");
        assert_eq!(properties["security.protocol"], "SASL_SSL");
        assert_eq!(properties["socket.keepalive.enable"], "true");
        assert_eq!(properties["message.max.bytes"], "8388608");
        assert!(
            !format!("{config:?}").contains("s3cr3t"),
            "Debug redacts it"
        );

        std::fs::write(
            &file,
            "kafka:\n  brokers: k:9093\n  properties:\n    sasl.password: plain-text-hunter2\n",
        )
        .expect("write");
        let refused = format!(
            "{:#}",
            WorkerConfig::load_layers(Some(&file), no_env()).expect_err("text refused")
        );
        assert!(
            refused.contains("sasl.password") && refused.contains("by reference"),
            "{refused}"
        );
        assert!(!refused.contains("hunter2"), "{refused}");

        std::fs::write(
            &file,
            "kafka:\n  brokers: k:9093\n  properties:\n    ssl.key.password: {env: WXSTREAM_UNIT_TEST_UNSET_KEY}\n",
        )
        .expect("write");
        let unset = format!(
            "{:#}",
            WorkerConfig::load_layers(Some(&file), no_env()).expect_err("unset")
        );
        assert!(unset.contains("WXSTREAM_UNIT_TEST_UNSET_KEY"), "{unset}");
    }

    #[test]
    fn only_top_level_keys_and_the_section_form_are_configuration() {
        let keys = top_level_keys().expect("keys");
        for name in [
            "METRICS_LISTEN",
            "topic_prefix",
            "KAFKA__BROKERS",
            "OPS_TOKEN__ENV",
        ] {
            assert!(is_configuration(name, &keys), "{name}");
        }
        // Kubernetes' service links for a Service `wxstream-sink`, and a shell's own variables.
        for name in [
            "SINK_PORT",
            "SINK_PORT_8080_TCP_ADDR",
            "SINK_SERVICE_HOST",
            "SINK_SERVICE_PORT_OPS",
            "REPO",
            "FOO",
        ] {
            assert!(!is_configuration(name, &keys), "{name}");
        }
        // A misspelt section is still configuration, so it is an error naming it.
        assert!(is_configuration("KAFKAA__BROKERS", &keys));
        assert_eq!(resembles("METRICS_LISTN", &keys), Some("metrics_listen"));
        assert_eq!(resembles("SINK_SERVICE_HOST", &keys), None);
    }
}
