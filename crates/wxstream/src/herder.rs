//! Connector state shared by every worker of a pipeline, kept as Kafka Connect keeps its config
//! and status topics: in one compacted control topic (`wxstream.control`, one partition), which
//! every `wxstream run` process follows from its first record. Its records (JSON values):
//! - `target/<connector>`: the state an operator asked for through any worker (RUNNING,
//!   PAUSED, STOPPED). Every worker hosting the connector obeys it as soon as it reads it, and
//!   a starting worker reads the topic to its end before it goes on, so a pause or a stop
//!   outlasts restarts of every worker.
//! - `status/<connector>/<worker>`: a worker's task of the connector (state, and why when
//!   FAILED), written when it changes and every [`HEARTBEAT`]; a tombstone when the worker
//!   stops. A record not renewed for [`GONE_AFTER`] is a worker gone: it is not shown.
//! - `restart/<connector>`: a restart asked through any worker (every worker's task, only the
//!   failed ones, or one worker's); each worker carries out a request written after it started,
//!   once.
//!
//! A connector's status (`GET /connectors/{name}/status`, on any worker) lists every live
//! worker's task, numbered in the order of their worker ids.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use wx_codec::now_ms;
use wx_kafka::{Followed, KafkaConfig, Producer};

use crate::connectors::{Connector, Target};

/// The control topic's name in the repository's topology (before the pipeline's prefix).
pub const CONTROL_TOPIC: &str = "wxstream.control";

/// How often a worker renews its tasks' status records.
pub const HEARTBEAT: Duration = Duration::from_secs(10);

/// A status record not renewed for this long is a worker gone.
pub const GONE_AFTER: Duration = Duration::from_secs(35);

/// How long a start waits to have read the control topic to its end (the broker may be down:
/// then the stages start as configured and obey what is read later).
const CATCH_UP: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Serialize, Deserialize)]
struct TargetRecord {
    state: String,
    /// The worker the operator asked.
    worker_id: String,
    at: i64,
}

/// One worker's task of a connector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub state: String,
    pub worker_id: String,
    /// Why, when FAILED (no secrets, no message content: the stage's cause).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
    pub at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RestartRecord {
    id: String,
    only_failed: bool,
    /// Only this worker's task (None: every worker's).
    #[serde(default)]
    worker_id: Option<String>,
    at: i64,
}

enum Event {
    Target(String, Target),
    Restart(String, RestartRecord),
}

/// This worker's end of the control topic.
pub struct Herder {
    topic: String,
    worker_id: String,
    producer: Producer,
    /// The connectors this worker hosts, once started ([`Herder::attach`]).
    connectors: std::sync::OnceLock<Vec<Arc<Connector>>>,
    /// The target of each connector as read before this worker's stages started.
    initial: Mutex<BTreeMap<String, Target>>,
    /// Targets and restarts read after the catch-up, for the apply task.
    received: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<Event>>>,
    /// Every worker's latest task records, by (connector, worker).
    tasks: Mutex<BTreeMap<(String, String), TaskRecord>>,
    /// Restart requests carried out (or written) by this worker.
    restarts: Mutex<BTreeSet<String>>,
    started_at: i64,
}

impl std::fmt::Debug for Herder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Herder")
            .field("topic", &self.topic)
            .field("worker_id", &self.worker_id)
            .finish_non_exhaustive()
    }
}

/// Why the herder could not start.
#[derive(Debug, thiserror::Error)]
pub enum HerderError {
    #[error(
        "the control topic {topic} cannot be read ({source}); create it with `wxstream topology apply`"
    )]
    Topic {
        topic: String,
        source: wx_kafka::KafkaError,
    },
    #[error("{0}")]
    Kafka(#[from] wx_kafka::KafkaError),
}

fn state_of(target: Target) -> &'static str {
    match target {
        Target::Started => "RUNNING",
        Target::Paused => "PAUSED",
        Target::Stopped => "STOPPED",
    }
}

fn target_of(state: &str) -> Option<Target> {
    match state {
        "RUNNING" | "STARTED" => Some(Target::Started),
        "PAUSED" => Some(Target::Paused),
        "STOPPED" => Some(Target::Stopped),
        _ => None,
    }
}

impl Herder {
    /// Follows the control topic of the pipeline whose prefix is `prefix` and reads it to its
    /// end (unless the broker does not answer within [`CATCH_UP`]) before the stages start, so
    /// each starts in its target state ([`Herder::target`]). A control topic that does not exist
    /// is a configuration error; a broker that does not answer is waited for (the stages start
    /// as configured and obey the topic once it is read).
    pub async fn start(
        kafka: &KafkaConfig,
        prefix: &str,
        worker_id: String,
        shutdown: CancellationToken,
    ) -> Result<Arc<Herder>, HerderError> {
        let topic = format!("{prefix}{CONTROL_TOPIC}");
        let (check_kafka, check_topic) = (kafka.clone(), topic.clone());
        let checked = tokio::task::spawn_blocking(move || {
            wx_kafka::partition_count(&check_kafka, &check_topic)
        })
        .await
        .map_err(|e| {
            HerderError::Kafka(wx_kafka::KafkaError::Read {
                topic: topic.clone(),
                reason: e.to_string(),
            })
        })?;
        match checked {
            Ok(_) => {}
            // The broker answered: the topic is not there.
            Err(source @ wx_kafka::KafkaError::Read { .. }) => {
                return Err(HerderError::Topic {
                    topic: topic.clone(),
                    source,
                });
            }
            Err(e) => {
                tracing::warn!(topic = %topic, error = %e, "The control topic cannot be read yet; the connectors start as configured and obey it once read.");
            }
        }
        let (events, received) = tokio::sync::mpsc::unbounded_channel();
        let herder = Arc::new(Herder {
            producer: Producer::new(kafka, "wxstream-herder", Duration::from_secs(10))?,
            topic,
            worker_id,
            connectors: std::sync::OnceLock::new(),
            initial: Mutex::default(),
            received: Mutex::new(Some(received)),
            tasks: Mutex::default(),
            restarts: Mutex::default(),
            started_at: now_ms(),
        });
        let (caught_up, mut read) = tokio::sync::watch::channel(false);
        let follower = herder.clone();
        let (follow_kafka, stop) = (kafka.clone(), shutdown.clone());
        std::thread::Builder::new()
            .name("wxstream-herder".into())
            .spawn(move || follower.follow(&follow_kafka, &stop, &events, &caught_up))
            .map_err(|e| wx_kafka::KafkaError::Read {
                topic: herder.topic.clone(),
                reason: format!("cannot start the control topic's reader: {e}"),
            })?;
        if tokio::time::timeout(CATCH_UP, read.wait_for(|done| *done))
            .await
            .is_err()
        {
            tracing::warn!(topic = %herder.topic, "The control topic was not read to its end in time; the connectors start as configured and obey it once read.");
        }
        Ok(herder)
    }

    /// The state `connector` is to start in: the control topic's, else running.
    pub fn target(&self, connector: &str) -> Target {
        lock(&self.initial)
            .get(connector)
            .copied()
            .unwrap_or(Target::Started)
    }

    /// Hands over the started connectors: from now on their targets and restarts are obeyed
    /// and their status published, until `shutdown`.
    pub fn attach(
        self: &Arc<Herder>,
        connectors: Vec<Arc<Connector>>,
        shutdown: CancellationToken,
    ) {
        let _ = self.connectors.set(connectors);
        let received = lock(&self.received).take();
        if let Some(mut received) = received {
            let applier = self.clone();
            tokio::spawn(async move {
                while let Some(event) = received.recv().await {
                    applier.apply(event).await;
                    applier.publish(false).await;
                }
            });
        }
        let publisher = self.clone();
        tokio::spawn(async move { publisher.publish_until(shutdown).await });
    }

    /// Reads the control topic from its first record for as long as the process runs
    /// (retried with backoff while the broker cannot be read).
    fn follow(
        &self,
        kafka: &KafkaConfig,
        shutdown: &CancellationToken,
        events: &tokio::sync::mpsc::UnboundedSender<Event>,
        caught_up: &tokio::sync::watch::Sender<bool>,
    ) {
        let mut backoff =
            wx_runtime::Backoff::new(Duration::from_millis(500), Duration::from_secs(15));
        while !shutdown.is_cancelled() {
            // Until the end is reached, only each connector's last target counts (history is
            // not replayed: a stop, resume and pause in the log is a pause); restarts read
            // then are older than this reading and are not carried out.
            let mut pending: Option<BTreeMap<String, Target>> = Some(BTreeMap::new());
            let followed = wx_kafka::follow_since(
                kafka,
                &self.topic,
                0,
                || !shutdown.is_cancelled(),
                |record| match record {
                    Followed::Record { key, value, .. } => {
                        let event = key.and_then(|key| self.read(key, value));
                        match (event, pending.as_mut()) {
                            (Some(Event::Target(name, target)), Some(latest)) => {
                                latest.insert(name, target);
                            }
                            (Some(Event::Restart(..)), Some(_)) | (None, _) => {}
                            (Some(event), None) => {
                                let _ = events.send(event);
                            }
                        }
                    }
                    Followed::CaughtUp => {
                        let latest = pending.take().unwrap_or_default();
                        if !*caught_up.borrow() {
                            *lock(&self.initial) = latest.clone();
                        }
                        for (name, target) in latest {
                            let _ = events.send(Event::Target(name, target));
                        }
                        caught_up.send_replace(true);
                    }
                },
            );
            if let Err(e) = followed {
                tracing::warn!(topic = %self.topic, error = %e, "Reading the control topic failed; retrying.");
                std::thread::sleep(backoff.next_delay());
            }
        }
    }

    /// Takes in one record: a status is kept, a target or restart handed on.
    fn read(&self, key: &[u8], value: Option<&[u8]>) -> Option<Event> {
        let key = std::str::from_utf8(key).ok()?;
        let mut parts = key.splitn(3, '/');
        match (parts.next()?, parts.next()?, parts.next()) {
            ("status", connector, Some(worker)) => {
                let mut tasks = lock(&self.tasks);
                let slot = (connector.to_string(), worker.to_string());
                match value.and_then(|v| serde_json::from_slice::<TaskRecord>(v).ok()) {
                    Some(record) => {
                        tasks.insert(slot, record);
                    }
                    None => {
                        tasks.remove(&slot);
                    }
                }
                None
            }
            ("target", connector, None) => {
                let record: TargetRecord = serde_json::from_slice(value?).ok()?;
                Some(Event::Target(
                    connector.to_string(),
                    target_of(&record.state)?,
                ))
            }
            ("restart", connector, None) => {
                let record: RestartRecord = serde_json::from_slice(value?).ok()?;
                Some(Event::Restart(connector.to_string(), record))
            }
            _ => None,
        }
    }

    fn hosted(&self, name: &str) -> Option<&Arc<Connector>> {
        self.connectors.get()?.iter().find(|c| c.name == name)
    }

    fn hosted_all(&self) -> &[Arc<Connector>] {
        self.connectors.get().map_or(&[], Vec::as_slice)
    }

    /// Obeys one target or restart for a connector this worker hosts.
    async fn apply(&self, event: Event) {
        match event {
            Event::Target(name, target) => {
                let Some(connector) = self.hosted(&name) else {
                    return;
                };
                if connector.target() == target {
                    return;
                }
                tracing::info!(connector = %name, state = state_of(target), "Obeying the control topic's target state.");
                if let Err(e) = connector.set_target(target).await {
                    tracing::error!(connector = %name, error = %e, "The target state could not be reached.");
                }
            }
            Event::Restart(name, request) => {
                let Some(connector) = self.hosted(&name) else {
                    return;
                };
                let mine = request
                    .worker_id
                    .as_ref()
                    .is_none_or(|w| *w == self.worker_id);
                let new = request.at >= self.started_at
                    && lock(&self.restarts).insert(request.id.clone());
                if mine && new {
                    tracing::info!(connector = %name, only_failed = request.only_failed, "Restarting as asked through the control topic.");
                    if let Err(e) = connector.restart(request.only_failed).await {
                        tracing::error!(connector = %name, error = %e, "A restart failed.");
                    }
                }
            }
        }
    }

    /// Writes the target state an operator asked for: every worker (this one too) obeys it.
    pub async fn set_target(
        &self,
        connector: &str,
        target: Target,
    ) -> Result<(), wx_kafka::KafkaError> {
        let record = TargetRecord {
            state: state_of(target).into(),
            worker_id: self.worker_id.clone(),
            at: now_ms(),
        };
        self.write(&format!("target/{connector}"), &record).await
    }

    /// Asks every worker (or `worker` alone) to restart its task of `connector`; `done_here`:
    /// this worker has already restarted its own.
    pub async fn request_restart(
        &self,
        connector: &str,
        only_failed: bool,
        worker: Option<String>,
        done_here: bool,
    ) -> Result<(), wx_kafka::KafkaError> {
        let id = format!("{}-{}-{}", self.worker_id, now_ms(), rand_suffix());
        if done_here {
            lock(&self.restarts).insert(id.clone());
        }
        let record = RestartRecord {
            id,
            only_failed,
            worker_id: worker,
            at: now_ms(),
        };
        self.write(&format!("restart/{connector}"), &record).await
    }

    async fn write(&self, key: &str, record: &impl Serialize) -> Result<(), wx_kafka::KafkaError> {
        let value = serde_json::to_vec(record).unwrap_or_default();
        self.producer
            .send(&self.topic, Some(0), key.as_bytes(), &value)
            .await
            .map(|_| ())
    }

    /// This worker's task of `connector` as a record.
    fn local(&self, connector: &Connector) -> TaskRecord {
        let state = connector.state_name().to_string();
        TaskRecord {
            trace: (state == "FAILED")
                .then(|| connector.health().stop_reason())
                .flatten(),
            state,
            worker_id: self.worker_id.clone(),
            at: now_ms(),
        }
    }

    /// The tasks of `connector` on every live worker, this one's as it is now, in worker id
    /// order (a task's id is its place). A STOPPED task is not shown (Connect shows none).
    pub fn tasks(&self, connector: &Connector) -> Vec<TaskRecord> {
        let now = now_ms();
        let gone = i64::try_from(GONE_AFTER.as_millis()).unwrap_or(i64::MAX);
        let mut tasks: BTreeMap<String, TaskRecord> = lock(&self.tasks)
            .iter()
            .filter(|((name, _), record)| *name == connector.name && now - record.at <= gone)
            .map(|((_, worker), record)| (worker.clone(), record.clone()))
            .collect();
        tasks.insert(self.worker_id.clone(), self.local(connector));
        tasks
            .into_values()
            .filter(|t| t.state != "STOPPED")
            .collect()
    }

    pub fn worker_id(&self) -> &str {
        &self.worker_id
    }

    /// Writes this worker's status records when they change and every [`HEARTBEAT`]; at
    /// shutdown, tombstones (this worker's tasks are gone).
    async fn publish_until(&self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut beats = 0u32;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = shutdown.cancelled() => break,
            }
            beats += 1;
            let heartbeat = beats >= u32::try_from(HEARTBEAT.as_secs()).unwrap_or(10);
            if heartbeat {
                beats = 0;
            }
            self.publish(heartbeat).await;
        }
        for connector in self.hosted_all() {
            let key = format!("status/{}/{}", connector.name, self.worker_id);
            let gone = self.producer.send_tombstone(&self.topic, key.as_bytes());
            let _ = tokio::time::timeout(Duration::from_secs(3), gone).await;
        }
    }

    /// Writes the status records that changed since last read back (all with `all`).
    async fn publish(&self, all: bool) {
        for connector in self.hosted_all() {
            let record = self.local(connector);
            let slot = (connector.name.clone(), self.worker_id.clone());
            let unchanged = lock(&self.tasks)
                .get(&slot)
                .is_some_and(|known| known.state == record.state && known.trace == record.trace);
            if unchanged && !all {
                continue;
            }
            let key = format!("status/{}/{}", connector.name, self.worker_id);
            if let Err(e) = self.write(&key, &record).await {
                tracing::warn!(connector = %connector.name, error = %e, "The task status could not be written to the control topic.");
            } else {
                lock(&self.tasks).insert(slot, record);
            }
        }
    }
}

/// A few random hex digits (restart request ids written in one millisecond differ).
fn rand_suffix() -> String {
    format!("{:08x}", rand::random::<u32>())
}

/// A lock of the herder's, taken even after a panic elsewhere poisoned it (its data is
/// replaced whole, never left half-written).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}
