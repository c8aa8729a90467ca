//! The decrypt processor: raw batches into clean messages, and anything that cannot be
//! decrypted or parsed into the dead-letter topic with its cause; plus the redrive that replays
//! dead letters once the cause is fixed.
//!
//! # Layout
//! - `normalise`: decrypted archive JSON into the clean fields (pure; every msgtype, tolerant
//!   of raw control characters, searchable text, conversation id).
//! - `callback_msg`: a decrypted callback into the clean fields, or a filtered event (pure).
//! - `failure`: the class and content-free message of what could not become a clean message.
//! - `decryptor`: one raw record into its outcomes (RSA by `publickey_ver`, the archive cipher,
//!   WXBizMsgCrypt for callbacks), items in parallel on the rayon pool; redrive of one dead
//!   letter. Synchronous, no I/O.
//! - `keys`: the key rings, reloaded without a restart when their files change or on SIGHUP.
//! - `processor`: the stage's handler on the runtime's consumer loop (thin shell): order kept
//!   per partition, offsets finished only when every output is acknowledged.
//! - `redrive`: reads the parked records, replays the selected ones, tombstones what moved.
//! - `config`, `metrics`: the connector's settings and metric names.
//! - here: the stage contract (`DecryptSettings` builds a [`DecryptStage`]; see `wx_runtime`).
//!
//! # Invariants
//! Nothing is dropped: every item ends as a clean message, a dead letter or a counted filtered
//! event. Never logs plaintext, ciphertext or key material (errors carry classes and field
//! names). Knows nothing of the stores downstream.

pub mod callback_msg;
pub mod config;
pub mod decryptor;
pub mod failure;
pub mod keys;
pub mod metrics;
pub mod normalise;
pub mod processor;
pub mod redrive;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use wx_codec::Codec;
use wx_kafka::KafkaError;
use wx_runtime::settings::{SecretError, SettingsError};
use wx_runtime::{
    Batching, ConnectorKind, Stage, StageConsumer, StageContext, StageControl, StageError,
    StageSettings, TopicRoles,
};
use wx_topology::ConnectorClass;

pub use config::DecryptSettings;
pub use decryptor::{Decryptor, Outcome, RawSource};
pub use keys::{KeyRings, KeySource, ReloadingKeys};
pub use processor::Outputs;

/// The stage's name: dead letters say it, metrics are `wxstream_decrypt_*`.
pub const STAGE: &str = "decrypt";

/// Errors building the stage (fatal: bad settings, unreadable keys or secrets, no broker).
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error("decrypt settings: field `{field}`: {source}")]
    Secret { field: String, source: SecretError },
    #[error("loading the vendor SDK: {0}")]
    Sdk(#[from] wx_finance_sdk::SdkError),
    #[error("decrypt settings: field `callbacks.{corp}`: {source}")]
    Callback {
        corp: String,
        source: wx_crypto::CallbackError,
    },
    #[error("loading the key rings: {0}")]
    Keys(#[from] wx_crypto::KeyRingError),
    #[error(transparent)]
    Kafka(#[from] KafkaError),
}

/// The decryptor the settings describe (keys loaded, cipher and callback credentials ready).
pub fn build_decryptor(
    settings: &DecryptSettings,
    codec: Arc<Codec>,
) -> Result<Arc<Decryptor>, BuildError> {
    let keys = Arc::new(ReloadingKeys::load(settings.key_source())?);
    let cipher = settings.archive_cipher()?;
    let callbacks = settings.callback_crypts()?;
    Ok(Arc::new(Decryptor::new(keys, cipher, callbacks, codec)))
}

impl StageSettings for DecryptSettings {
    const NAME: &'static str = STAGE;
    const CLASS: ConnectorClass = ConnectorClass::Decrypt;
    const KIND: ConnectorKind = ConnectorKind::Sink;
    const TOPICS: TopicRoles = TopicRoles::parking(&["raw"], &["clean"]);
    type Stage = DecryptStage;
    type BuildError = BuildError;

    fn validate(&self) -> Result<(), SettingsError> {
        self.check()
    }

    fn describe_metrics() {
        metrics::describe();
    }

    async fn build(&self, context: &StageContext) -> Result<DecryptStage, BuildError> {
        let decryptor = build_decryptor(self, context.codec.clone())?;
        tracing::info!(versions = ?decryptor.keys().current().versions(), "Key rings loaded.");
        DecryptStage::new(self, context, decryptor)
    }

    /// Decrypts its letters again, to the clean topic.
    fn redrive<'a>(
        &'a self,
        context: &'a StageContext,
    ) -> Option<wx_runtime::RedriveBuild<'a, Self>> {
        Some(Box::pin(async move {
            let decryptor = build_decryptor(self, context.codec.clone())?;
            tracing::info!(versions = ?decryptor.keys().current().versions(), "Key rings loaded.");
            let outputs = Outputs::new(context, context.producer(self.delivery_timeout)?);
            Ok(Box::new(redrive::Replay::new(decryptor, outputs))
                as Box<dyn wx_runtime::redrive::Redrive>)
        }))
    }
}

/// The decrypt stage: the processor on the runtime's consumer loop, and the key watcher.
#[derive(Debug)]
pub struct DecryptStage {
    consumer: StageConsumer,
    decryptor: Arc<Decryptor>,
    outputs: Outputs,
    batches_in_flight: usize,
    reload_interval: Duration,
}

impl DecryptStage {
    /// The stage around a decryptor built elsewhere (the benchmark's fixture keys); joins the
    /// group. Must be called inside a tokio runtime.
    pub fn new(
        settings: &DecryptSettings,
        context: &StageContext,
        decryptor: Arc<Decryptor>,
    ) -> Result<DecryptStage, BuildError> {
        let producer = context.producer(settings.delivery_timeout)?;
        let outputs = Outputs::new(context, producer);
        let consumer = context.consumer(|_| {})?;
        Ok(DecryptStage {
            consumer,
            decryptor,
            outputs,
            batches_in_flight: settings.batches_in_flight,
            reload_interval: settings.key_reload_interval,
        })
    }
}

impl Stage for DecryptStage {
    fn control(&self) -> Arc<dyn StageControl> {
        Arc::new(self.consumer.control())
    }

    async fn run(self, shutdown: CancellationToken) -> Result<(), StageError> {
        let stop_watching = shutdown.child_token();
        let watcher = tokio::spawn(keys::watch(
            self.decryptor.keys().clone(),
            self.reload_interval,
            stop_watching.clone(),
        ));
        let processor = processor::Processor::start(
            self.decryptor,
            self.outputs,
            &self.consumer,
            self.batches_in_flight,
        );
        let result = self.consumer.run(processor, Batching::ONE, shutdown).await;
        stop_watching.cancel();
        let _ = watcher.await;
        result
    }
}
