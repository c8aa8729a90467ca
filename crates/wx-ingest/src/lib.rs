//! The ingest connector: pulls the WeCom chat archive and receives signed callbacks, writing
//! still-encrypted batches to the raw topic.
//!
//! # Layout
//! - `config`: the connector's settings (secrets by reference, `Debug` prints `***`).
//! - `client`: GetChatData behind [`ArchiveClient`]: the vendor SDK by FFI, or the simulator.
//! - `puller`: one corp's loop; the cursor moves only after the broker acknowledged the batch,
//!   and the checkpoint (a compacted topic) is written after that.
//! - `worker`: which corps this process pulls, by Kafka's group protocol on the checkpoint topic.
//! - `callback`: the WXBizMsgCrypt receiver; answers success only after the broker acknowledged.
//! - `nonces`: its replay protection, shared by every receiver through the checkpoint topic.
//! - here: the stage contract (`IngestSettings` builds an [`IngestStage`], the worker and, when
//!   `callback_listen` is set, the receiver; see `wx_runtime`).
//!
//! # Invariants
//! Never decrypts archive data and never logs plaintext or secrets. Never advances a cursor past
//! data that is not acknowledged by the broker. No Kafka transactions.

pub mod callback;
/// The WeCom clients are the `wx-wecom` adapter's.
pub use wx_wecom::client;
pub mod config;
pub mod nonces;
pub mod puller;
pub mod worker;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use wx_runtime::{
    ConnectorKind, ConsumerSettings, SettingsError, Stage, StageContext, StageControl, StageError,
    StageSettings, TopicRoles,
};
use wx_topology::ConnectorClass;

pub use callback::{CallbackReceiver, STORE_TIMEOUT as CALLBACK_STORE_TIMEOUT};

/// The stage's name: metrics are `wxstream_ingest_*`, the default group `wxstream-ingest`.
pub const STAGE: &str = "ingest";

impl wx_wecom::WecomSettings for IngestSettings {
    fn wecom_mut(&mut self) -> &mut wx_wecom::ClientSettings {
        &mut self.wecom
    }
}

impl StageSettings for IngestSettings {
    const NAME: &'static str = STAGE;
    const CLASS: ConnectorClass = ConnectorClass::Ingest;
    const KIND: ConnectorKind = ConnectorKind::Source;
    const TOPICS: TopicRoles = TopicRoles::parking(&[], &["raw", "checkpoints"]);
    const OFFSETS_ROLE: &'static str = "checkpoints";
    type Stage = IngestStage;
    type BuildError = IngestError;

    fn validate(&self) -> Result<(), SettingsError> {
        self.check()
    }

    fn parse_with_consumer(
        settings: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<(Self, ConsumerSettings), SettingsError> {
        wx_wecom::parse_with_client(settings)
    }

    fn describe_metrics() {
        describe_metrics();
    }

    /// The worker, and the callback receiver bound to `callback_listen` when it is set.
    async fn build(&self, context: &StageContext) -> Result<IngestStage, IngestError> {
        let worker = IngestWorker::build(self, context)?;
        let receiver = match self.callback_listen {
            Some(address) => {
                // Its own producer, whose delivery timeout is the store's deadline.
                let receiver = CallbackReceiver::build(
                    self,
                    context.producer(callback::STORE_TIMEOUT)?,
                    context.codec.clone(),
                    context.topic("raw"),
                    worker.wakers(),
                    Some(worker.group_link()),
                )?;
                let listener = tokio::net::TcpListener::bind(address)
                    .await
                    .map_err(|source| IngestError::Listen { address, source })?;
                tracing::info!(%address, "Callback receiver listening.");
                Some((receiver, listener))
            }
            None => None,
        };
        Ok(IngestStage { worker, receiver })
    }
}

/// The ingest stage: the worker pulling the corps it owns and, optionally, the callback
/// receiver.
#[derive(Debug)]
pub struct IngestStage {
    worker: IngestWorker,
    receiver: Option<(CallbackReceiver, tokio::net::TcpListener)>,
}

impl Stage for IngestStage {
    fn control(&self) -> Arc<dyn StageControl> {
        Arc::new(self.worker.control())
    }

    /// Runs the worker and the receiver until `shutdown`; either failing stops both.
    async fn run(self, shutdown: CancellationToken) -> Result<(), StageError> {
        let stop = shutdown.child_token();
        let worker = async {
            let pulled = self.worker.run(stop.clone()).await;
            stop.cancel();
            pulled
        };
        let receiver = async {
            let Some((receiver, listener)) = self.receiver else {
                return Ok(());
            };
            let stopped = stop.clone();
            let served = receiver
                .serve(listener, async move { stopped.cancelled().await })
                .await
                .map_err(IngestError::Serve);
            stop.cancel();
            served
        };
        let (pulled, served) = tokio::join!(worker, receiver);
        pulled.and(served).map_err(StageError::stage)
    }
}

/// Registers the help text of every ingest metric (Prometheus requires it).
pub fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge};
    describe_counter!(
        "wxstream_ingest_pulls_total",
        "GetChatData calls, by outcome (ok, empty, error, rate_limited)."
    );
    describe_counter!("wxstream_ingest_items_total", "Archive items pulled.");
    describe_counter!(
        "wxstream_ingest_malformed_items_total",
        "GetChatData items that could not be read, parked as `malformed_item`, by corp."
    );
    describe_counter!(
        "wxstream_ingest_bytes_total",
        "Bytes of GetChatData replies."
    );
    describe_counter!(
        "wxstream_ingest_batches_total",
        "Raw batches written and checkpointed."
    );
    describe_counter!(
        "wxstream_ingest_errors_total",
        "Failed GetChatData calls, by WeCom or SDK error code."
    );
    describe_counter!(
        "wxstream_ingest_write_errors_total",
        "Failed writes to the broker (retried; the cursor stays)."
    );
    describe_counter!(
        "wxstream_ingest_rate_limit_waits_total",
        "Pulls that waited for the corp's token bucket."
    );
    describe_counter!(
        "wxstream_ingest_task_slot_waits_total",
        "Pulls that waited for one of the worker's tasks.max slots (other corps' pages in flight)."
    );
    describe_gauge!(
        "wxstream_ingest_cursor_seq",
        "The corp's exclusive cursor: every seq up to it is in the raw topic."
    );
    describe_gauge!(
        "wxstream_ingest_last_success_timestamp_seconds",
        "When GetChatData last succeeded (Unix time)."
    );
    describe_gauge!(
        "wxstream_ingest_caught_up_timestamp_seconds",
        "When the corp's puller last reached the end of the available data (Unix time)."
    );
    describe_gauge!(
        "wxstream_ingest_oldest_unpulled_age_seconds",
        "Estimated age of the oldest data not yet pulled (from msgid timestamps)."
    );
    describe_gauge!(
        "wxstream_ingest_owned_corps",
        "Corps this worker pulls now."
    );
    describe_counter!(
        "wxstream_ingest_callback_requests_total",
        "Callback requests, by outcome."
    );
    describe_counter!(
        "wxstream_ingest_callback_nonces_recorded_total",
        "Callback nonces recorded for the other receivers (recorded, failed)."
    );
}
pub use client::{
    ArchiveClient, MediaChunk, MediaClient, MediaError, Page, PullError, SdkClient, SimulatorClient,
};
pub use config::{IngestSettings, Secret, SecretRef};
pub use puller::Checkpoint;
pub use worker::{GroupLink, IngestControl, IngestError, IngestWorker, Wakers, read_checkpoints};
