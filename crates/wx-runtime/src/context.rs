//! What a stage is built from ([`StageContext`]): its connector document with its topics looked
//! up by role name, the worker's Kafka settings, the codec, the clock, the stage's health, its
//! metric prefix and the process's shutdown token.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use wx_codec::Codec;
use wx_kafka::{GroupConsumer, KafkaConfig, KafkaError, Producer};
use wx_topology::ConnectorSpec;

use crate::clock::Clock;
use crate::consume::StageConsumer;
use crate::dead_letter::Parker;
use crate::error::LaunchError;
use crate::health::StageHealth;
use crate::settings::ConsumerSettings;

/// The role name of the dead-letter topic (`errors.deadletterqueue.topic.name`).
pub const DEAD_LETTER: &str = "dead-letter";

/// Which topics a stage reads and writes, by role: `inputs[i]` names the connector's
/// `topics[i]`, `outputs[i]` its `output.topics[i]`; `dead_letter` says whether it parks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicRoles {
    pub inputs: &'static [&'static str],
    pub outputs: &'static [&'static str],
    pub dead_letter: bool,
}

impl TopicRoles {
    /// A stage reading `inputs`, writing `outputs`, parking on the dead-letter topic.
    pub const fn parking(
        inputs: &'static [&'static str],
        outputs: &'static [&'static str],
    ) -> TopicRoles {
        TopicRoles {
            inputs,
            outputs,
            dead_letter: true,
        }
    }
}

/// Everything a stage is built from.
#[derive(Debug, Clone)]
pub struct StageContext {
    /// The stage's name (`decrypt`): its metric prefix is `wxstream_<stage>`, its dead letters
    /// say it, its default group is `<pipeline>wxstream-<stage>`.
    pub stage: &'static str,
    /// The pipeline: the prefix of its topic names (empty for the default pipeline).
    pub pipeline: String,
    pub connector: ConnectorSpec,
    pub kafka: KafkaConfig,
    pub codec: Arc<Codec>,
    pub clock: Clock,
    pub health: Arc<StageHealth>,
    pub shutdown: CancellationToken,
    /// The consumer-group fields of its `settings` block (defaults for a stage that has none).
    pub consumer_settings: ConsumerSettings,
    topics: BTreeMap<&'static str, String>,
}

impl StageContext {
    /// The context of `connector` for `stage`, checking its topics against the stage's roles.
    pub fn new(
        stage: &'static str,
        roles: TopicRoles,
        pipeline: &str,
        connector: &ConnectorSpec,
        kafka: &KafkaConfig,
        codec: Arc<Codec>,
        shutdown: CancellationToken,
    ) -> Result<StageContext, LaunchError> {
        let wrong = |what: &str, names: &[&str]| LaunchError::Topics {
            connector: connector.name.clone(),
            reason: format!("{what} must be [{}]", names.join(", ")),
        };
        if connector.topics.len() != roles.inputs.len() {
            return Err(wrong("topics", roles.inputs));
        }
        if connector.output_topics.len() != roles.outputs.len() {
            return Err(wrong("output.topics", roles.outputs));
        }
        let mut topics = BTreeMap::new();
        for (role, topic) in roles.inputs.iter().zip(&connector.topics) {
            topics.insert(*role, topic.clone());
        }
        for (role, topic) in roles.outputs.iter().zip(&connector.output_topics) {
            topics.insert(*role, topic.clone());
        }
        if roles.dead_letter {
            let topic = connector.dead_letter_topic.clone().ok_or_else(|| {
                wrong(
                    "errors.deadletterqueue.topic.name",
                    &["the dead-letter topic"],
                )
            })?;
            topics.insert(DEAD_LETTER, topic);
        }
        Ok(StageContext {
            stage,
            pipeline: pipeline.to_string(),
            connector: connector.clone(),
            kafka: kafka.clone(),
            codec,
            clock: Clock,
            health: Arc::default(),
            shutdown,
            consumer_settings: ConsumerSettings::default(),
            topics,
        })
    }

    /// Every topic the stage reads or writes.
    pub fn topic_names(&self) -> Vec<String> {
        self.topics.values().cloned().collect()
    }

    /// The topic playing `role` (one of the stage's declared roles).
    ///
    /// # Panics
    /// For a role the stage did not declare: a bug in the stage, caught by its first test.
    pub fn topic(&self, role: &str) -> &str {
        match self.topics.get(role) {
            Some(topic) => topic,
            None => panic!("stage {} declares no topic role {role}", self.stage),
        }
    }

    /// The stage's consumer group under `settings` (by default `<pipeline>wxstream-<stage>`).
    pub fn group(&self) -> String {
        self.consumer_settings.group(&self.pipeline, self.stage)
    }

    /// The stage's metric prefix, `wxstream_<stage>`.
    pub fn metric_prefix(&self) -> String {
        format!("wxstream_{}", self.stage)
    }

    /// An idempotent producer named after the stage, whose sends that fail and are retried show
    /// in the stage's readiness (`kafka-sends`) until one goes through.
    pub fn producer(&self, delivery_timeout: Duration) -> Result<Producer, KafkaError> {
        Ok(Producer::new(
            &self.kafka,
            &format!("wxstream-{}", self.stage),
            delivery_timeout,
        )?
        .watched(std::sync::Arc::new(crate::health::SendHealth::new(
            self.health.clone(),
        ))))
    }

    /// The stage's consumer on its input topics, joined with its consumer settings (`adjust`
    /// changes the options a stage sets for itself).
    pub fn consumer(
        &self,
        adjust: impl FnOnce(&mut wx_kafka::ConsumerOptions),
    ) -> Result<StageConsumer, KafkaError> {
        let inputs: Vec<&str> = self.connector.topics.iter().map(String::as_str).collect();
        let settings = &self.consumer_settings;
        let mut options = settings.options(&self.pipeline, self.stage, &inputs);
        adjust(&mut options);
        let consumer = GroupConsumer::join(&self.kafka, &options)?;
        Ok(StageConsumer::new(
            consumer,
            settings.commit_interval,
            self.health.clone(),
            self.metric_prefix(),
        ))
    }

    /// The stage's dead-letter parker, writing through `producer`; the originals of its
    /// letters are consumed records read back as `original_format`.
    pub fn parker(&self, producer: Producer, original_format: &'static str) -> Parker {
        Parker::new(self, producer, original_format)
    }
}
