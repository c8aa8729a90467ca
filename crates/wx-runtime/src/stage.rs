//! The stage contract, in the spirit of Vector's "the config is the factory": a stage's
//! settings type parses its connector's `settings` block and builds the stage from a
//! [`StageContext`]; the stage then runs until shutdown. [`launch`] does both for any stage,
//! so `wxstream run` iterates over a table of stages.

use std::pin::Pin;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use wx_codec::Codec;
use wx_kafka::KafkaConfig;
use wx_topology::{ConnectorClass, ConnectorSpec};

use crate::context::{StageContext, TopicRoles};
use crate::control::StageControl;
use crate::error::{LaunchError, StageError};
use crate::health::StageHealth;
use crate::redrive::Redrive;
use crate::settings::{ConsumerSettings, SettingsError, parse_stage_settings};

/// A connector's `type` in the Connect-style REST API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectorKind {
    /// Brings data into Kafka (ingest).
    Source,
    /// Consumes Kafka topics: into stores outside Kafka (sink, media), or into other topics
    /// (decrypt, stats: Kafka Connect has no type for a stage that reads and writes topics; its
    /// tools know `source`, `sink` and `unknown`, and what they do with a connector, offsets
    /// above all, is a sink's: a consumer group's committed offsets).
    Sink,
}

impl ConnectorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectorKind::Source => "source",
            ConnectorKind::Sink => "sink",
        }
    }
}

/// A stage's settings: the factory of the stage. The type is its connector's `settings` block
/// (unknown fields rejected) without the [`ConsumerSettings`] fields, which are split off into
/// the stage's context.
pub trait StageSettings: serde::de::DeserializeOwned + Send + Sync + 'static {
    /// The stage's name: `wxstream run --only <name>`, metric prefix `wxstream_<name>`.
    const NAME: &'static str;
    /// The connector class whose document configures it.
    const CLASS: ConnectorClass;
    const KIND: ConnectorKind;
    /// The topics it reads and writes, by role.
    const TOPICS: TopicRoles;
    /// The role of the topic whose offsets `GET /connectors/{name}/offsets` reports (its first
    /// input unless said otherwise).
    const OFFSETS_ROLE: &'static str = Self::TOPICS.inputs[0];

    type Stage: Stage;
    type BuildError: std::error::Error + Send + Sync + 'static;

    /// Checks what the types alone cannot (the error names the field).
    fn validate(&self) -> Result<(), SettingsError> {
        Ok(())
    }

    /// Parses and validates the connector's `settings` block; the error names the field.
    fn parse(settings: &serde_json::Map<String, serde_json::Value>) -> Result<Self, SettingsError> {
        Ok(Self::parse_with_consumer(settings)?.0)
    }

    /// [`StageSettings::parse`], with the [`ConsumerSettings`] fields split off (the stage's
    /// context carries them).
    fn parse_with_consumer(
        settings: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<(Self, ConsumerSettings), SettingsError> {
        let (parsed, consumer) = parse_stage_settings::<Self>(Self::NAME, settings)?;
        parsed.validate()?;
        Ok((parsed, consumer))
    }

    /// Registers the help text of the stage's metrics.
    fn describe_metrics();

    /// Builds the stage: connects, loads what it needs, joins its group.
    fn build(
        &self,
        context: &StageContext,
    ) -> impl Future<Output = Result<Self::Stage, Self::BuildError>> + Send;

    /// The stage's redrive of its letters, connected as the stage connects (no group joined);
    /// None for a stage without one.
    fn redrive<'a>(&'a self, _context: &'a StageContext) -> Option<RedriveBuild<'a, Self>> {
        None
    }
}

/// The future of [`StageSettings::redrive`].
pub type RedriveBuild<'a, S> = Pin<
    Box<
        dyn Future<Output = Result<Box<dyn Redrive>, <S as StageSettings>::BuildError>> + Send + 'a,
    >,
>;

/// A built stage.
pub trait Stage: Send + 'static {
    /// The operator's handle on it.
    fn control(&self) -> Arc<dyn StageControl>;

    /// Runs until `shutdown`, then drains and commits; an error is fatal (the connector shows
    /// FAILED with its cause).
    fn run(
        self,
        shutdown: CancellationToken,
    ) -> impl Future<Output = Result<(), StageError>> + Send;
}

/// A stage's task, type-erased.
pub type StageTask = Pin<Box<dyn Future<Output = Result<(), StageError>> + Send>>;

/// A built stage ready to run, with what the operations surface shows of it.
pub struct Launched {
    pub stage: &'static str,
    pub connector: ConnectorSpec,
    pub kind: ConnectorKind,
    /// The topic whose offsets the REST surface reports.
    pub offsets_topic: String,
    /// Every topic it reads or writes (Connect's active topics).
    pub topics: Vec<String>,
    pub control: Arc<dyn StageControl>,
    pub health: Arc<StageHealth>,
    pub task: StageTask,
}

impl std::fmt::Debug for Launched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Launched")
            .field("stage", &self.stage)
            .field("connector", &self.connector.name)
            .finish_non_exhaustive()
    }
}

/// The type-erased [`launch`] of one stage type (an entry of `wxstream run`'s stage table).
pub type Launcher =
    for<'a> fn(
        &'a str,
        &'a ConnectorSpec,
        &'a KafkaConfig,
        Arc<Codec>,
        CancellationToken,
    ) -> Pin<Box<dyn Future<Output = Result<Launched, LaunchError>> + Send + 'a>>;

/// Parses `connector`'s settings as `S` and makes its context in the pipeline whose topic
/// prefix is `pipeline` (what `launch` and a redrive start from).
pub fn prepare<S: StageSettings>(
    pipeline: &str,
    connector: &ConnectorSpec,
    kafka: &KafkaConfig,
    codec: Arc<Codec>,
    shutdown: CancellationToken,
) -> Result<(S, StageContext), LaunchError> {
    let (settings, consumer) =
        S::parse_with_consumer(&connector.settings).map_err(|source| LaunchError::Settings {
            connector: connector.name.clone(),
            source,
        })?;
    let mut context = StageContext::new(
        S::NAME,
        S::TOPICS,
        pipeline,
        connector,
        kafka,
        codec,
        shutdown,
    )?;
    context.consumer_settings = consumer;
    Ok((settings, context))
}

/// Parses `connector`'s settings as `S`, builds the stage of the pipeline whose topic prefix
/// is `pipeline` and hands back its task (not yet running) with its control and health.
pub fn launch<'a, S: StageSettings>(
    pipeline: &'a str,
    connector: &'a ConnectorSpec,
    kafka: &'a KafkaConfig,
    codec: Arc<Codec>,
    shutdown: CancellationToken,
) -> Pin<Box<dyn Future<Output = Result<Launched, LaunchError>> + Send + 'a>> {
    Box::pin(async move {
        let (settings, context) = prepare::<S>(pipeline, connector, kafka, codec, shutdown)?;
        S::describe_metrics();
        let stage = settings
            .build(&context)
            .await
            .map_err(|e| LaunchError::Build {
                connector: connector.name.clone(),
                source: Box::new(e),
            })?;
        let control = stage.control();
        let shutdown = context.shutdown.clone();
        let leaders = crate::leaders::watch(
            context.kafka.clone(),
            context.topic_names(),
            context.health.clone(),
            context.metric_prefix(),
            shutdown.clone(),
        );
        Ok(Launched {
            stage: S::NAME,
            connector: connector.clone(),
            kind: S::KIND,
            offsets_topic: context.topic(S::OFFSETS_ROLE).to_string(),
            topics: context.topic_names(),
            control,
            health: context.health.clone(),
            task: Box::pin(async move {
                // Aborted when the stage's task ends, however it ends.
                let _probe = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(leaders));
                stage.run(shutdown).await
            }),
        })
    })
}

/// A stage's connected redrive and the context its letters are selected in (None: the stage
/// has no redrive).
pub type Redriving = Option<(Box<dyn Redrive>, StageContext)>;

/// The future of a [`Redriver`].
pub type RedriverFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Redriving, LaunchError>> + Send + 'a>>;

/// The type-erased [`redriver`] of one stage type.
pub type Redriver =
    for<'a> fn(&'a str, &'a ConnectorSpec, &'a KafkaConfig, Arc<Codec>) -> RedriverFuture<'a>;

/// Parses `connector`'s settings as `S` and connects its redrive (None: `S` has none), with
/// the context its letters are selected in.
pub fn redriver<'a, S: StageSettings>(
    pipeline: &'a str,
    connector: &'a ConnectorSpec,
    kafka: &'a KafkaConfig,
    codec: Arc<Codec>,
) -> RedriverFuture<'a> {
    Box::pin(async move {
        let (settings, context) =
            prepare::<S>(pipeline, connector, kafka, codec, CancellationToken::new())?;
        let Some(build) = settings.redrive(&context) else {
            return Ok(None);
        };
        let redrive = build.await.map_err(|e| LaunchError::Build {
            connector: connector.name.clone(),
            source: Box::new(e),
        })?;
        Ok(Some((redrive, context)))
    })
}
