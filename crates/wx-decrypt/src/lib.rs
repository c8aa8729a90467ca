//! The decrypt processor: raw batches into clean messages, and anything that cannot be
//! decrypted or parsed into the dead-letter topic with its cause; plus the redrive that replays
//! dead letters once the cause is fixed.
//!
//! # Layout
//! - `normalise`: decrypted archive JSON into the clean fields (pure; every msgtype, tolerant
//!   of raw control characters, searchable text, conversation id).
//! - `callback_msg`: a decrypted callback into the clean fields, or a filtered event (pure).
//! - `decryptor`: one raw record into its outcomes (RSA by `publickey_ver`, the archive cipher,
//!   WXBizMsgCrypt for callbacks), items in parallel on the rayon pool; redrive of one dead
//!   letter. Synchronous, no I/O.
//! - `keys`: the key rings, reloaded without a restart when their files change or on SIGHUP.
//! - `processor`: the Kafka loop (thin shell): order kept per partition, offsets finished only
//!   when every output is acknowledged.
//! - `redrive`: reads the parked records, replays the selected ones, tombstones what moved.
//! - `config`, `metrics`: the connector's settings and metric names.
//!
//! # Invariants
//! Nothing is dropped: every item ends as a clean message, a dead letter or a counted filtered
//! event. Never logs plaintext, ciphertext or key material (errors carry classes and field
//! names). Knows nothing of the stores downstream.

pub mod callback_msg;
pub mod config;
pub mod decryptor;
pub mod keys;
pub mod metrics;
pub mod normalise;
pub mod processor;
pub mod redrive;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use wx_codec::Codec;
use wx_kafka::{KafkaConfig, KafkaError};

pub use config::DecryptSettings;
pub use decryptor::{Decryptor, Outcome, RawSource};
pub use keys::{KeyRings, KeySource, ReloadingKeys};
pub use processor::{Processor, ProcessorOptions, Topics};

/// Milliseconds since the Unix epoch (dead letters' failure times, `decrypted_at`).
pub use wx_kafka::now_ms;

/// Errors building the stage (fatal: bad settings, unreadable keys, no broker).
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{0}")]
    Settings(String),
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
    let cipher = settings.archive_cipher().map_err(BuildError::Settings)?;
    let callbacks = settings.callback_crypts().map_err(BuildError::Settings)?;
    Ok(Arc::new(Decryptor::new(keys, cipher, callbacks, codec)))
}

/// The decrypt stage: the processor and the key watcher.
#[derive(Debug)]
pub struct DecryptStage {
    processor: Processor,
    decryptor: Arc<Decryptor>,
    reload_interval: std::time::Duration,
}

impl DecryptStage {
    /// What the operations surface reads and steers.
    pub fn control(&self) -> wx_kafka::ConsumerControl {
        self.processor.control()
    }

    /// Validates, loads the keys, connects. Must be called inside a tokio runtime.
    pub fn build(
        settings: &DecryptSettings,
        kafka: &KafkaConfig,
        codec: Arc<Codec>,
        topics: Topics,
    ) -> Result<DecryptStage, BuildError> {
        let decryptor = build_decryptor(settings, codec.clone())?;
        tracing::info!(versions = ?decryptor.keys().current().versions(), "Key rings loaded.");
        let processor = Processor::build(
            decryptor.clone(),
            codec,
            kafka,
            topics,
            settings.processor_options(),
        )?;
        Ok(DecryptStage {
            processor,
            decryptor,
            reload_interval: settings.key_reload_interval,
        })
    }

    /// Runs until `shutdown`, then drains and commits.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), KafkaError> {
        let watcher = tokio::spawn(keys::watch(
            self.decryptor.keys().clone(),
            self.reload_interval,
            shutdown.clone(),
        ));
        let result = self.processor.run(shutdown).await;
        let _ = watcher.await;
        result
    }
}
