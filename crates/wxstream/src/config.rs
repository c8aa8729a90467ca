//! The worker's configuration, layered: `config/defaults.yaml` (compiled in) < `--config FILE`
//! < environment variables `WXSTREAM_<SECTION>__<KEY>` < command-line flags.

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
    /// Kafka connection.
    pub kafka: KafkaConfig,
    /// Confluent Schema Registry URL; empty means the fixed ids of `schemas/ids.json`.
    pub schema_registry_url: String,
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
    /// Reads the layers; `file` is the optional `--config`. Every `WXSTREAM_*` variable is a
    /// configuration key: an unknown one is an error, not ignored.
    pub fn load(file: Option<&Path>) -> anyhow::Result<WorkerConfig> {
        Self::load_layers(file, Env::prefixed("WXSTREAM_").split("__"))
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
        figment
            .merge(env)
            .extract()
            .context("invalid configuration (defaults < --config file < WXSTREAM_* environment)")
    }

    /// The codec: the fixed id table, or the schema registry when one is configured.
    pub async fn codec(&self) -> anyhow::Result<std::sync::Arc<wx_codec::Codec>> {
        let codec = if self.schema_registry_url.is_empty() {
            wx_codec::Codec::fixed()?
        } else {
            wx_codec::Codec::with_registry(&self.schema_registry_url).await?
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
}
