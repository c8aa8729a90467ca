//! The media stage: every image, voice note, video and file a clean message carries, downloaded
//! from WeCom with GetMediaData in 512 KB chunks and stored in an S3-compatible bucket under
//! `corp/yyyy/mm/msgid/<item>`, streamed into multipart uploads, resumable after a crash,
//! MD5-verified and never stored twice; a record's offset is finished only once each of its
//! media items is stored or parked.
//!
//! # Layout
//! - `config`: the connector's settings.
//! - the bucket is the `wx-s3` adapter's (HEAD, PUT, multipart, listings).
//! - `archive`: one item from WeCom to the bucket: checkpointed parts, MD5, retries, classes.
//! - `worker`: the stage's handler on the runtime's consumer loop: a bounded number of
//!   download tasks, each finishing its record once every item is stored or parked.
//! - `redrive`: the stage's letters replayed (`wxstream redrive --stage media`).
//! - `metrics`.
//! - here: the stage contract (`MediaSettings` builds a [`MediaWorker`]; see `wx_runtime`).
//!
//! # Invariants
//! A record's offset is finished only after each media item is stored with the MD5 WeCom
//! states, or parked with its cause. An object is visible only once complete and verified (a
//! multipart upload is completed after the MD5 check; a mismatch aborts it). The `media` row
//! is the checkpoint: after a kill -9 a download resumes from its last stored part. Never logs
//! media content or secrets.

pub mod archive;
pub mod config;
mod flow;
pub mod metrics;
pub mod redrive;
pub mod worker;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use wx_mysql::MessageStore;
use wx_runtime::ConsumerSettings;
use wx_runtime::settings::{SecretError, SettingsError};
use wx_runtime::{ConnectorKind, StageContext, StageSettings, TopicRoles};
use wx_s3::{ObjectStore, StoreConfig, StoreError};
use wx_topology::ConnectorClass;
use wx_wecom::MediaClient;

pub use config::{ClientKind, MediaSettings};
pub use worker::MediaWorker;

/// The stage's name: dead letters say it, metrics are `wxstream_media_*`.
pub const STAGE: &str = "media";

/// Errors building the stage (fatal: the configuration or a store is wrong at start).
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error("media settings: {0}")]
    Secret(#[from] SecretError),
    /// (A connection error can quote the URL; its credentials are never shown.)
    #[error("MySQL: {}", wx_runtime::settings::redact_urls(&.0.to_string()))]
    Mysql(#[from] wx_mysql::MysqlError),
    #[error("the bucket `{bucket}` cannot be used: {source}")]
    Bucket { bucket: String, source: StoreError },
    #[error("the vendor SDK: {0}")]
    Sdk(#[from] wx_finance_sdk::SdkError),
    #[error(transparent)]
    Kafka(#[from] wx_kafka::KafkaError),
}

/// Clients by corp.
type Clients = HashMap<String, Arc<dyn MediaClient>>;

/// One GetMediaData client per configured corp, and one `media/get` client per corp with a
/// `callback_secret`.
fn clients(settings: &MediaSettings, worker: &str) -> Result<(Clients, Clients), BuildError> {
    let spec = settings.wecom.spec(settings.request_timeout, worker);
    let api_url = spec.api_url(settings.api_url.as_deref());
    let (mut clients, mut callback_clients) = (Clients::new(), Clients::new());
    for corp in &settings.corps {
        let secret = corp.secret.resolve()?;
        let client: Arc<dyn MediaClient> = spec.open(&corp.corp_id, secret.expose())?;
        clients.insert(corp.corp_id.clone(), client);
        if let Some(callback_secret) = &corp.callback_secret {
            let secret = callback_secret.resolve()?;
            let client = wx_wecom::MediaGetClient::new(
                api_url,
                &corp.corp_id,
                secret.expose(),
                settings.request_timeout,
            );
            callback_clients.insert(corp.corp_id.clone(), Arc::new(client) as _);
        }
    }
    Ok((clients, callback_clients))
}

/// The bucket, checked: it exists and the credentials may use it.
pub async fn connect_store(settings: &MediaSettings) -> Result<ObjectStore, BuildError> {
    let s3 = &settings.s3;
    let store = ObjectStore::new(&StoreConfig {
        endpoint: s3.endpoint.clone(),
        region: s3.region.clone(),
        bucket: s3.bucket.clone(),
        access_key_id: s3.access_key_id.resolve()?.expose().to_string(),
        secret_access_key: s3.secret_access_key.resolve()?.expose().to_string(),
        path_style: s3.path_style,
        timeout: settings.store_timeout,
        ca_file: s3.ca_file.clone(),
    })
    .map_err(|source| BuildError::Bucket {
        bucket: s3.bucket.clone(),
        source,
    })?;
    store
        .check_bucket()
        .await
        .map_err(|source| BuildError::Bucket {
            bucket: s3.bucket.clone(),
            source,
        })?;
    Ok(store)
}

/// What every download needs, as the stage (and redrive) builds it: the `media` table (the
/// migrations applied), the checked bucket, each corp's GetMediaData client.
pub(crate) async fn archiver(
    settings: &MediaSettings,
    context: &StageContext,
    shutdown: tokio_util::sync::CancellationToken,
) -> Result<archive::Archiver, BuildError> {
    let url = settings.mysql_url.resolve()?;
    let table =
        MessageStore::connect(url.expose(), &settings.database, settings.store_timeout).await?;
    let store = connect_store(settings).await?;
    tracing::info!(bucket = %settings.s3.bucket, database = %settings.database, "Media stores ready.");
    let worker = format!("media-{}", std::process::id());
    let (clients, callback_clients) = clients(settings, &worker)?;
    Ok(archive::Archiver::new(archive::ArchiverParts {
        store,
        table,
        clients,
        callback_clients,
        calls_per_minute: settings.calls_per_minute,
        key_prefix: settings.s3.key_prefix.clone(),
        part_size: settings.part_size,
        md5_attempts: settings.md5_attempts,
        backoff_cap: settings.backoff_cap,
        health: context.health.clone(),
        shutdown,
    }))
}

impl wx_wecom::WecomSettings for MediaSettings {
    fn wecom_mut(&mut self) -> &mut wx_wecom::ClientSettings {
        &mut self.wecom
    }
}

impl StageSettings for MediaSettings {
    const NAME: &'static str = STAGE;
    const CLASS: ConnectorClass = ConnectorClass::Media;
    const KIND: ConnectorKind = ConnectorKind::Sink;
    const TOPICS: TopicRoles = TopicRoles::parking(&["clean"], &[]);
    type Stage = MediaWorker;
    type BuildError = BuildError;

    fn validate(&self) -> Result<(), SettingsError> {
        self.check()
    }

    fn parse_with_consumer(
        settings: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<(Self, ConsumerSettings), SettingsError> {
        wx_wecom::parse_with_client(settings)
    }

    fn describe_metrics() {
        metrics::describe(&archive::PARK_CLASSES);
    }

    /// Connects MySQL (applying the migrations: the `media` table), checks the bucket, makes
    /// each corp's GetMediaData client and joins the group on the clean topic.
    async fn build(&self, context: &StageContext) -> Result<MediaWorker, BuildError> {
        let shutdown = context.shutdown.child_token();
        let archiver = archiver(self, context, shutdown.clone()).await?;
        let producer = context.producer(std::time::Duration::from_secs(30))?;
        let consumer = context.consumer(|_| {})?;
        Ok(MediaWorker {
            consumer,
            dispatcher: worker::Dispatcher {
                archiver: Arc::new(archiver),
                parker: context.parker(producer, wx_runtime::CLEAN_RECORD),
                clock: context.clock,
                slots: Arc::new(Semaphore::new(self.max_concurrent_downloads)),
                tasks: JoinSet::new(),
                finisher: None,
                failed: Arc::new(Mutex::new(None)),
                shutdown,
                partitions: HashMap::new(),
                busy_since: None,
            },
        })
    }

    /// Archives its letters' media again. Ctrl-C stops it between files (a download in
    /// progress resumes from its checkpoint next time).
    fn redrive<'a>(
        &'a self,
        context: &'a StageContext,
    ) -> Option<wx_runtime::RedriveBuild<'a, Self>> {
        Some(Box::pin(async move {
            let stop = context.shutdown.child_token();
            let on_signal = stop.clone();
            tokio::spawn(async move {
                if tokio::signal::ctrl_c().await.is_ok() {
                    on_signal.cancel();
                }
            });
            let replay = redrive::Replay::connect(self, context, stop).await?;
            Ok(Box::new(replay) as Box<dyn wx_runtime::redrive::Redrive>)
        }))
    }
}
