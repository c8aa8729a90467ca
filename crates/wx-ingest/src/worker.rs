//! The ingest worker: which corps this process pulls, decided by Kafka's group protocol.
//!
//! Every worker joins one consumer group on the checkpoint topic. A corp's checkpoint lives in
//! partition `murmur2(corp id) % partitions`; the worker assigned that partition pulls the corp.
//! The group gives each partition exactly one owner. A dead worker's partitions move after
//! `session_timeout`, and its successor starts from the last checkpoint (a page the dead worker
//! wrote without checkpointing is pulled again: duplicates, never a gap). Ownership is the group's assignment alone: a worker gives up a corp
//! only by stopping its puller inside the revocation (see `wx_kafka::GroupMember`), so two live
//! workers never pull one corp at the same time. No Kafka transactions are involved.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use wx_kafka::{
    GroupMember, KafkaConfig, KafkaError, MemberStatus, partition_count, partition_for_key,
    read_to_end,
};
use wx_runtime::settings::SecretError;
use wx_runtime::{AlterError, StageContext, StageControl};

use crate::client::ArchiveClient;
use crate::config::IngestSettings;
use crate::puller::{Checkpoint, Puller, PullerContext};

/// Errors that stop the worker (configuration, broker unreachable at start).
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("ingest settings: corp {corp}: field `{field}`: {source}")]
    Secret {
        corp: String,
        field: &'static str,
        source: SecretError,
    },
    #[error("ingest settings: corp {corp}: loading the vendor SDK: {source}")]
    Sdk {
        corp: String,
        source: wx_finance_sdk::SdkError,
    },
    #[error("ingest settings: corp {corp}: callback credentials: {source}")]
    Callback {
        corp: String,
        source: wx_crypto::CallbackError,
    },
    #[error("cannot listen for callbacks on {address}: {source}")]
    Listen {
        address: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("the puller of corp {corp} stopped: {source}")]
    Puller {
        corp: String,
        source: Box<wx_runtime::StageError>,
    },
    #[error("the callback receiver failed: {0}")]
    Serve(std::io::Error),
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    #[error("reading checkpoints stopped: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Wakers by corp: a `msgaudit_notify` callback wakes that corp's puller.
pub type Wakers = Arc<HashMap<String, Arc<Notify>>>;

/// Keys of wake records on the checkpoint topic start so (`wake:<corp>`; no corp id does).
const WAKE_PREFIX: &str = "wake:";

/// The callback receiver's link to the ingest group through the checkpoint topic: wakes a
/// corp's puller in whichever worker owns it, and shares callback nonces with every receiver
/// (`crate::nonces`).
///
/// A wake is a tombstone keyed `wake:<corp>` written to the corp's checkpoint partition, which
/// only its owner's group member reads (compaction drops it; checkpoint reads skip it, as it has
/// no value). A `msgaudit_notify` reaches any worker behind the callback Service, seldom the
/// owner.
#[derive(Debug, Clone)]
pub struct GroupLink {
    producer: wx_kafka::Producer,
    topic: String,
    partitions: i32,
    kafka: KafkaConfig,
    health: Arc<wx_runtime::StageHealth>,
}

impl GroupLink {
    /// The link for the checkpoint `topic` of `partitions` partitions.
    pub fn new(
        kafka: &KafkaConfig,
        producer: wx_kafka::Producer,
        topic: &str,
        partitions: i32,
        health: Arc<wx_runtime::StageHealth>,
    ) -> GroupLink {
        GroupLink {
            producer,
            topic: topic.to_string(),
            partitions,
            kafka: kafka.clone(),
            health,
        }
    }

    /// Where the receiver records and reads nonces.
    pub fn nonce_log(&self) -> crate::nonces::NonceLog {
        crate::nonces::NonceLog {
            kafka: self.kafka.clone(),
            producer: self.producer.clone(),
            topic: self.topic.clone(),
            partitions: self.partitions,
            health: self.health.clone(),
        }
    }

    pub async fn wake(&self, corp: &str) -> Result<(), KafkaError> {
        let partition = partition_for_key(corp.as_bytes(), self.partitions);
        let key = format!("{WAKE_PREFIX}{corp}");
        self.producer
            .send_tombstone_to(&self.topic, partition, key.as_bytes())
            .await
            .map(|_| ())
    }
}

/// Wakes the puller a wake record names, if this worker has one for that corp.
fn wake_from_key(wakers: &Wakers, key: &[u8]) {
    if let Some(corp) = key.strip_prefix(WAKE_PREFIX.as_bytes())
        && let Ok(corp) = std::str::from_utf8(corp)
        && let Some(wake) = wakers.get(corp)
    {
        wake.notify_one();
    }
}

/// A built ingest worker, ready to run.
pub struct IngestWorker {
    /// Pullers that could not go on (see `PullerContext::failed`).
    failures:
        tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<(String, wx_runtime::StageError)>>,
    kafka: KafkaConfig,
    group: String,
    session_timeout: Duration,
    context: PullerContext,
    clients: HashMap<String, Arc<dyn ArchiveClient>>,
    wakers: Wakers,
    partitions: i32,
    worker_id: String,
    paused: tokio::sync::watch::Sender<bool>,
    owned: Arc<std::sync::Mutex<BTreeSet<String>>>,
    /// `group_instance_id`: static membership.
    instance_id: Option<String>,
    /// The membership, once joined (what the control's readiness reads).
    member: Arc<std::sync::Mutex<Option<MemberStatus>>>,
}

/// The operator's handle on an ingest worker: pause and resume pulling, the corps it pulls, its
/// health.
#[derive(Debug, Clone)]
pub struct IngestControl {
    paused: tokio::sync::watch::Sender<bool>,
    owned: Arc<std::sync::Mutex<BTreeSet<String>>>,
    /// The corps whose archive the connector pulls (those with a secret).
    pulled: Arc<BTreeSet<String>>,
    /// The checkpoint topic's partition count (a corp's checkpoint is on its key's partition).
    partitions: i32,
    group: String,
    /// The worker's membership once it has joined (None before and after it runs).
    member: Arc<std::sync::Mutex<Option<MemberStatus>>>,
}

impl IngestControl {
    /// Writes each corp's checkpoint record (a tombstone for None) where its pullers write
    /// it, each acknowledged before the next. Blocking (on the blocking pool).
    fn write_checkpoints(
        &self,
        kafka: &KafkaConfig,
        topic: &str,
        records: Vec<(String, Option<Vec<u8>>)>,
    ) -> Result<(), KafkaError> {
        let producer =
            wx_kafka::Producer::new(kafka, "wxstream-ingest-offsets", Duration::from_secs(10))?;
        let runtime = tokio::runtime::Handle::current();
        for (corp, value) in records {
            let partition = partition_for_key(corp.as_bytes(), self.partitions);
            match value {
                Some(value) => {
                    runtime.block_on(producer.send(
                        topic,
                        Some(partition),
                        corp.as_bytes(),
                        &value,
                    ))?;
                }
                None => {
                    runtime.block_on(producer.send_tombstone_to(
                        topic,
                        partition,
                        corp.as_bytes(),
                    ))?;
                }
            };
            tracing::info!(corp = %corp, "A corp's cursor changed over REST.");
        }
        Ok(())
    }

    /// The corps this worker pulls now.
    pub fn corps(&self) -> BTreeSet<String> {
        self.owned.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl StageControl for IngestControl {
    /// Stops every puller before its next page (the callback receiver keeps accepting).
    fn pause(&self) -> Result<(), KafkaError> {
        self.paused.send_replace(true);
        Ok(())
    }

    fn resume(&self) -> Result<(), KafkaError> {
        self.paused.send_replace(false);
        Ok(())
    }

    fn is_paused(&self) -> bool {
        *self.paused.borrow()
    }

    /// Not ready until the worker is a member of its group (it owns corps only through it),
    /// and whenever it has left it (a rebalance, a session lost to an unreachable coordinator),
    /// with the group error it last met.
    fn not_ready(&self) -> Vec<String> {
        let member = self
            .member
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match member {
            Some(status) if status.joined() => Vec::new(),
            Some(status) => {
                let reason = wx_runtime::not_a_member(&self.group);
                vec![match status.error() {
                    Some(error) => format!("{reason}: {error}"),
                    None => reason,
                }]
            }
            None => vec![format!("not joined to consumer group {} yet", self.group)],
        }
    }

    fn work(&self) -> (&'static str, serde_json::Value) {
        ("corps", json!(self.corps()))
    }

    /// Moves corps' cursors (Connect's source entries: partition `{corp_id}`, offset `{seq}`,
    /// or null for the archive's start) by writing their checkpoints, as a puller does. Each
    /// corp must be one this connector pulls and each seq a whole number. Moving a cursor back
    /// pulls those messages again (stored once downstream: upserts by msgid); moving it on skips
    /// them for good (WeCom keeps 5 days), so it is the operator's explicit choice.
    fn alter_offsets(
        &self,
        kafka: &KafkaConfig,
        topic: &str,
        offsets: &[serde_json::Value],
    ) -> Result<(), AlterError> {
        let mut moves = Vec::new();
        for entry in offsets {
            let Some(corp) = entry
                .get("partition")
                .and_then(|p| p.get("corp_id"))
                .and_then(serde_json::Value::as_str)
            else {
                return Err(AlterError::Invalid(
                    "The partition for an ingest connector offset must contain the key 'corp_id' (a string)".into(),
                ));
            };
            if !self.pulled.contains(corp) {
                return Err(AlterError::Invalid(format!(
                    "corp {corp} is not pulled by this connector (corps with an archive secret: {})",
                    self.pulled.iter().cloned().collect::<Vec<_>>().join(", ")
                )));
            }
            let seq = match entry.get("offset") {
                None | Some(serde_json::Value::Null) => 0,
                Some(offset) => offset
                    .get("seq")
                    .and_then(wx_runtime::integer)
                    .and_then(|seq| u64::try_from(seq).ok())
                    .ok_or_else(|| {
                        AlterError::Invalid(format!(
                            "The offset of corp {corp} should either be null or contain the key 'seq', a whole number"
                        ))
                    })?,
            };
            // Moved by an operator, not by a batch.
            moves.push((
                corp.to_string(),
                Some(Checkpoint::new(corp, seq, -1, -1).value()),
            ));
        }
        self.write_checkpoints(kafka, topic, moves)?;
        Ok(())
    }

    /// Forgets every pulled corp's cursor (a tombstone each): resumed, the connector pulls
    /// each corp's archive from its start (what WeCom still keeps).
    fn reset_offsets(&self, kafka: &KafkaConfig, topic: &str) -> Result<(), AlterError> {
        let forgotten = self
            .pulled
            .iter()
            .map(|corp| (corp.clone(), None))
            .collect();
        self.write_checkpoints(kafka, topic, forgotten)?;
        Ok(())
    }

    /// Each corp's checkpointed archive seq.
    fn offsets(
        &self,
        kafka: &KafkaConfig,
        topic: &str,
    ) -> Result<Vec<serde_json::Value>, wx_runtime::OffsetsError> {
        let partitions = partition_count(kafka, topic)?;
        let all: Vec<i32> = (0..partitions).collect();
        let latest: std::collections::BTreeMap<String, u64> =
            read_checkpoints(kafka, topic, &all)?.into_iter().collect();
        Ok(latest
            .into_iter()
            .map(
                |(corp, seq)| json!({ "partition": { "corp_id": corp }, "offset": { "seq": seq } }),
            )
            .collect())
    }
}

impl std::fmt::Debug for IngestWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngestWorker")
            .field("corps", &self.clients.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

struct Running {
    cancel: CancellationToken,
    task: JoinHandle<u64>,
}

impl IngestWorker {
    /// Resolves secrets, loads clients and connects to the broker.
    pub fn build(
        settings: &IngestSettings,
        context: &StageContext,
    ) -> Result<IngestWorker, IngestError> {
        let kafka = &context.kafka;
        let worker_id = format!(
            "{}-{}-{:08x}",
            std::env::var("HOSTNAME").unwrap_or_else(|_| "worker".into()),
            std::process::id(),
            rand::random::<u32>()
        );
        let spec = settings.wecom.spec(settings.request_timeout, &worker_id);
        let mut clients: HashMap<String, Arc<dyn ArchiveClient>> = HashMap::new();
        for corp in &settings.corps {
            // A callbacks-only corp has no archive client and is never pulled.
            let Some(secret) = &corp.secret else {
                continue;
            };
            let secret = secret.resolve().map_err(|source| IngestError::Secret {
                corp: corp.corp_id.clone(),
                field: "secret",
                source,
            })?;
            let client: Arc<dyn ArchiveClient> = spec
                .open(&corp.corp_id, secret.expose())
                .map_err(|source| IngestError::Sdk {
                    corp: corp.corp_id.clone(),
                    source,
                })?;
            clients.insert(corp.corp_id.clone(), client);
        }
        let wakers: Wakers = Arc::new(
            settings
                .corps
                .iter()
                .map(|c| (c.corp_id.clone(), Arc::new(Notify::new())))
                .collect(),
        );
        let checkpoint_topic = context.topic("checkpoints");
        let partitions = partition_count(kafka, checkpoint_topic)?;
        let producer = context.producer(Duration::from_secs(30))?;
        let parker = context.parker(producer.clone(), "getchatdata-item-json");
        let (paused, paused_rx) = tokio::sync::watch::channel(false);
        let (failed, failures) = tokio::sync::mpsc::unbounded_channel();
        Ok(IngestWorker {
            kafka: kafka.clone(),
            group: context.group(),
            session_timeout: context.consumer_settings.session_timeout,
            context: PullerContext {
                settings: Arc::new(settings.clone()),
                producer,
                codec: context.codec.clone(),
                raw_topic: context.topic("raw").to_string(),
                checkpoint_topic: checkpoint_topic.to_string(),
                paused: paused_rx,
                health: context.health.clone(),
                failed,
                parker,
                slots: Arc::new(tokio::sync::Semaphore::new(
                    usize::try_from(context.connector.tasks_max.max(1)).unwrap_or(1),
                )),
            },
            failures: tokio::sync::Mutex::new(failures),
            clients,
            wakers,
            partitions,
            worker_id,
            paused,
            owned: Default::default(),
            instance_id: context.consumer_settings.group_instance_id.clone(),
            member: Default::default(),
        })
    }

    /// What the operations surface reads and steers.
    pub fn control(&self) -> IngestControl {
        IngestControl {
            paused: self.paused.clone(),
            owned: self.owned.clone(),
            pulled: Arc::new(self.clients.keys().cloned().collect()),
            partitions: self.partitions,
            group: self.group.clone(),
            member: self.member.clone(),
        }
    }

    /// The wakers the callback receiver notifies.
    pub fn wakers(&self) -> Wakers {
        self.wakers.clone()
    }

    /// How the callback receiver wakes a corp's puller in its owner, whichever worker that is, and
    /// shares nonces with the other receivers.
    pub fn group_link(&self) -> GroupLink {
        GroupLink::new(
            &self.kafka,
            self.context.producer.clone(),
            &self.context.checkpoint_topic,
            self.partitions,
            self.context.health.clone(),
        )
    }

    /// The latest checkpoint of each corp whose checkpoint lives in `partitions`.
    async fn checkpoints(&self, partitions: Vec<i32>) -> Result<HashMap<String, u64>, IngestError> {
        let (kafka, topic) = (self.kafka.clone(), self.context.checkpoint_topic.clone());
        tokio::task::spawn_blocking(move || read_checkpoints(&kafka, &topic, &partitions)).await?
    }

    /// Pulls the corps this worker owns until `shutdown`, then stops every puller after its
    /// current page (bounded) and flushes. It owns the checkpoint partitions the group assigns
    /// it, and releases a partition to the group only once its corps' pullers have stopped.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), IngestError> {
        let member = GroupMember::join(
            &self.kafka,
            &self.group,
            &self.context.checkpoint_topic,
            self.session_timeout,
            // A puller stops after its current page; `stop` aborts it after 30 s.
            STOP_TIMEOUT + Duration::from_secs(5),
            self.instance_id.as_deref(),
            {
                let wakers = self.wakers.clone();
                move |key: &[u8]| wake_from_key(&wakers, key)
            },
        )?;
        *self.member.lock().unwrap_or_else(|p| p.into_inner()) = Some(member.status());
        let mut assignments = member.assignments();
        let mut running: HashMap<String, Running> = HashMap::new();
        let mut failures = self.failures.lock().await;
        let mut failed = None;
        tracing::info!(worker = %self.worker_id, "Ingest worker joined.");
        // Corps owned but not started because their checkpoints could not be read: retried
        // with capped backoff, shown in health meanwhile (never left owned and unpulled).
        let mut retry =
            wx_runtime::Backoff::new(Duration::from_millis(500), Duration::from_secs(15));
        let mut unstarted = false;
        loop {
            let owned = assignments.borrow_and_update().clone();
            unstarted = match self.reconcile(&owned, &mut running).await {
                Ok(()) => {
                    if unstarted {
                        self.context.health.recovered("checkpoints");
                    }
                    retry.reset();
                    false
                }
                Err(e) => {
                    tracing::warn!(error = %e, "Reading checkpoints failed; the corps taken over are started once it succeeds.");
                    self.context.health.failing("checkpoints", &e);
                    true
                }
            };
            let again = if unstarted {
                retry.next_delay()
            } else {
                Duration::MAX
            };
            member.release(
                running
                    .keys()
                    .map(|c| partition_for_key(c.as_bytes(), self.partitions))
                    .collect(),
            );
            *self.owned.lock().unwrap_or_else(|p| p.into_inner()) =
                running.keys().cloned().collect();
            tokio::select! {
                _ = shutdown.cancelled() => break,
                changed = assignments.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
                _ = tokio::time::sleep(again), if unstarted => {}
                Some((corp, source)) = failures.recv() => {
                    // A corp must never stay owned and unpulled: stop the stage visibly; its
                    // corps move to the other workers through the group.
                    failed = Some(IngestError::Puller {
                        corp,
                        source: Box::new(source),
                    });
                    break;
                }
            }
        }
        stop_all(&mut running).await;
        member.release(BTreeSet::new());
        drop(member);
        *self.member.lock().unwrap_or_else(|p| p.into_inner()) = None;
        let _ = self.context.producer.flush(Duration::from_secs(10));
        failed.map_or(Ok(()), Err)
    }

    /// Stops the pullers of the corps no longer owned, starts those of the corps newly owned;
    /// Err when their checkpoints cannot be read (none of those is started: the caller retries).
    async fn reconcile(
        &self,
        assigned: &BTreeSet<i32>,
        running: &mut HashMap<String, Running>,
    ) -> Result<(), IngestError> {
        let owned =
            |corp: &str| assigned.contains(&partition_for_key(corp.as_bytes(), self.partitions));
        // Stop the corps this worker lost first, so the overlap with their new owner is short.
        let lost: Vec<String> = running.keys().filter(|c| !owned(c)).cloned().collect();
        stop_many(
            lost.into_iter()
                .filter_map(|c| running.remove_entry(&c))
                .collect(),
        )
        .await;
        let starting: Vec<&String> = self
            .clients
            .keys()
            .filter(|c| owned(c) && !running.contains_key(*c))
            .collect();
        if starting.is_empty() {
            return Ok(());
        }
        let partitions: BTreeSet<i32> = starting
            .iter()
            .map(|c| partition_for_key(c.as_bytes(), self.partitions))
            .collect();
        // Without the checkpoint the cursor is unknown: do not guess (0 would re-pull
        // everything, which is safe but slow; a wrong guess could skip).
        let checkpoints = self.checkpoints(partitions.into_iter().collect()).await?;
        for corp in starting {
            let cursor = checkpoints.get(corp).copied().unwrap_or(0);
            let cancel = CancellationToken::new();
            let puller = Puller {
                corp_id: corp.clone(),
                client: self.clients[corp].clone(),
                context: self.context.clone(),
                checkpoint_partition: partition_for_key(corp.as_bytes(), self.partitions),
                wake: self.wakers[corp].clone(),
            };
            let task = tokio::spawn(supervised(
                corp.clone(),
                cursor,
                puller.run(cursor, cancel.clone()),
                self.context.failed.clone(),
            ));
            metrics::gauge!("wxstream_ingest_owned_corps").increment(1.0);
            running.insert(corp.clone(), Running { cancel, task });
        }
        Ok(())
    }
}

/// Each corp's checkpointed cursor (the latest record per corp) in `partitions` of the checkpoint
/// topic. Blocking: the worker calls it when it takes corps over, the operations surface for
/// `GET /connectors/ingest/offsets`.
pub fn read_checkpoints(
    kafka: &KafkaConfig,
    topic: &str,
    partitions: &[i32],
) -> Result<HashMap<String, u64>, IngestError> {
    let records = read_to_end(kafka, topic, partitions, Duration::from_secs(60))?;
    let mut out = HashMap::new();
    for record in records {
        let Some(value) = record.value else {
            // A corp's checkpoint forgotten (DELETE .../offsets); other tombstones on the
            // topic (`wake:`, `nonce:` keys) name no corp held here.
            if let Some(key) = record
                .key
                .as_deref()
                .and_then(|k| std::str::from_utf8(k).ok())
            {
                out.remove(key);
            }
            continue;
        };
        match serde_json::from_slice::<Checkpoint>(&value) {
            // Records are in offset order per partition, so the last one wins.
            Ok(c) => {
                out.insert(c.corp_id, c.seq);
            }
            Err(e) => {
                tracing::warn!(partition = record.partition, offset = record.offset, error = %e, "Ignoring an unreadable checkpoint record.")
            }
        }
    }
    Ok(out)
}

/// Runs a corp's puller as a task of its own, so that a panic in it is reported at once on the
/// pullers' failure channel (the stage stops visibly and its corps move through the group)
/// instead of leaving the corp owned and unpulled until the next rebalance. Aborting the
/// returned future aborts the puller too. Its value: the puller's cursor, or `cursor` (where it
/// began) when it panicked.
async fn supervised(
    corp: String,
    cursor: u64,
    puller: impl Future<Output = u64> + Send + 'static,
    failed: tokio::sync::mpsc::UnboundedSender<(String, wx_runtime::StageError)>,
) -> u64 {
    let task = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(puller));
    match task.await {
        Ok(cursor) => cursor,
        Err(e) => {
            if e.is_panic() {
                tracing::error!(corp = %corp, "A puller panicked; stopping the stage.");
                let _ = failed.send((
                    corp,
                    wx_runtime::StageError::Panicked {
                        what: "an ingest puller",
                    },
                ));
            }
            cursor
        }
    }
}

/// How long a puller may take to finish its current page when its corp is released.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

async fn stop(corp: String, mut r: Running) {
    r.cancel.cancel();
    match tokio::time::timeout(STOP_TIMEOUT, &mut r.task).await {
        Ok(Ok(cursor)) => tracing::info!(corp = %corp, cursor, "Released the corp."),
        _ => {
            // Aborted, so it cannot overlap with the next owner; its unfinished page is pulled
            // again from the last checkpoint (a duplicate, never a gap).
            r.task.abort();
            let _ = (&mut r.task).await;
            tracing::warn!(corp = %corp, "A puller did not stop in time and was aborted; its next owner may repeat a page.")
        }
    }
    metrics::gauge!("wxstream_ingest_owned_corps").decrement(1.0);
}

/// Stops pullers together: every one is told to stop first, then all are awaited at once, so
/// the hand-over takes one puller's stop time, not their sum, and ends before the group's
/// release timeout (`STOP_TIMEOUT` + 5 s): no corp is pulled by two workers at once.
async fn stop_many(pullers: Vec<(String, Running)>) {
    for (_, r) in &pullers {
        r.cancel.cancel();
    }
    let mut stopping = tokio::task::JoinSet::new();
    for (corp, r) in pullers {
        stopping.spawn(stop(corp, r));
    }
    stopping.join_all().await;
}

async fn stop_all(running: &mut HashMap<String, Running>) {
    stop_many(running.drain().collect()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_wake_record_wakes_only_the_corp_it_names() {
        let (a, b) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        let wakers: Wakers = Arc::new(HashMap::from([
            ("wwa".to_string(), a.clone()),
            ("wwb".to_string(), b.clone()),
        ]));
        for key in [
            &b"wwa"[..],
            b"wake:wwc",
            b"wake:",
            b"wake:\xff",
            b"wake:wwa",
        ] {
            wake_from_key(&wakers, key);
        }
        tokio::time::timeout(Duration::from_secs(1), a.notified())
            .await
            .expect("wwa woken");
        assert!(
            tokio::time::timeout(Duration::from_millis(100), b.notified())
                .await
                .is_err(),
            "wwb not woken"
        );
    }

    #[tokio::test]
    async fn a_puller_that_panics_is_reported_at_once_and_one_that_returns_is_not() {
        let (failed, mut failures) = tokio::sync::mpsc::unbounded_channel();
        let cursor = supervised(
            "wwpanic".into(),
            7,
            async { panic!("a puller's bug") },
            failed.clone(),
        )
        .await;
        assert_eq!(cursor, 7, "where it began");
        let (corp, error) = failures.try_recv().expect("the panic reported");
        assert_eq!(corp, "wwpanic");
        assert!(matches!(
            error,
            wx_runtime::StageError::Panicked {
                what: "an ingest puller"
            }
        ));
        assert_eq!(supervised("wwok".into(), 7, async { 12 }, failed).await, 12);
        assert!(failures.try_recv().is_err(), "nothing reported");
    }

    #[tokio::test]
    async fn aborting_the_supervisor_aborts_its_puller() {
        let (failed, _failures) = tokio::sync::mpsc::unbounded_channel();
        let (alive, mut watch) = tokio::sync::watch::channel(());
        let (started, running) = tokio::sync::oneshot::channel();
        let puller = async move {
            let _alive = alive;
            let _ = started.send(());
            tokio::time::sleep(Duration::from_secs(3600)).await;
            0
        };
        let task = tokio::spawn(supervised("wwabort".into(), 0, puller, failed));
        running.await.expect("the puller runs");
        task.abort();
        let _ = task.await;
        // The puller's end of the channel is dropped once it is aborted.
        tokio::time::timeout(Duration::from_secs(5), watch.changed())
            .await
            .expect("the puller stopped")
            .expect_err("the sender dropped");
    }
}
