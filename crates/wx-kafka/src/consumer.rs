//! The consumer every processing stage reads with: a consumer-group member whose offsets are
//! committed by wxstream, never automatically, and only up to records the stage has finished
//! (see `tracker`). At-least-once: a crash, kill -9 or rebalance repeats the unfinished tail,
//! never skips it.
//!
//! - `recv` hands out a record with a [`Ticket`]; `finish(ticket)` marks it done once every
//!   output is acknowledged (or every store written).
//! - `commit` writes the safe offsets (the stage calls it on a timer).
//! - On revocation the consumer waits (bounded by `drain_timeout`) for the revoked partitions'
//!   records to finish, then commits them synchronously before giving them up.
//! - `pause` / `resume` stop and restart fetching for backpressure; an operator pauses and
//!   resumes through a [`ConsumerControl`] (the REST surface). Fetching resumes only when
//!   neither holds it; the member stays in the group either way, as long as the stage keeps
//!   polling (`recv`, or `poll_while_paused` while it waits for something else).
//! - `close` drains everything, commits and leaves the group.
//! - Lag per assigned partition is exported as `<prefix>_consumer_lag_records` (broker end
//!   offset minus the stage's position), every 2 s, paused or not.

use std::collections::BTreeSet;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use tokio::sync::watch;

use crate::tracker::{OffsetTracker, Ticket, TopicPartition};
use crate::{KafkaConfig, KafkaError};

/// How a stage joins its group.
#[derive(Debug, Clone)]
pub struct ConsumerOptions {
    /// The consumer group.
    pub group: String,
    /// The topics to subscribe to.
    pub topics: Vec<String>,
    /// How long a dead member keeps its partitions.
    pub session_timeout: Duration,
    /// How long a revocation or `close` waits for records in flight before committing.
    pub drain_timeout: Duration,
    /// Whether a revocation waits for the revoked partitions' records in flight. False for a
    /// stage whose records in flight are finished by the very task that polls (the sink's batch
    /// being gathered): the revocation runs inside that poll, so waiting could only run out the
    /// drain timeout and delay the new owner. Those records are then not committed here; the new
    /// owner writes them again (idempotent stores).
    pub drain_on_revoke: bool,
    /// Where a group with no committed offset starts: true = the beginning.
    pub from_beginning: bool,
    /// The stage's metric prefix, e.g. `wxstream_decrypt` (lag is exported as
    /// `<prefix>_consumer_lag_records`).
    pub metric_prefix: String,
    /// Largest amount of prefetched data librdkafka buffers, in KiB (bounds memory).
    pub max_buffered_kib: u32,
    /// librdkafka's `max.poll.interval.ms`: a member that does not poll for this long is
    /// deemed stuck and leaves its group. A stage that waits for something else (a store)
    /// keeps polling meanwhile ([`GroupConsumer::poll_while_paused`]).
    pub max_poll_interval: Duration,
}

impl ConsumerOptions {
    /// Defaults for a stage: 10 s session, 10 s drain, from the beginning, 16 MiB buffer,
    /// 5 min poll interval (librdkafka's default).
    pub fn new(group: &str, topics: &[&str], metric_prefix: &str) -> ConsumerOptions {
        ConsumerOptions {
            group: group.to_string(),
            topics: topics.iter().map(|t| t.to_string()).collect(),
            session_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(10),
            drain_on_revoke: true,
            from_beginning: true,
            metric_prefix: metric_prefix.to_string(),
            max_buffered_kib: 16 * 1024,
            max_poll_interval: Duration::from_secs(300),
        }
    }

    /// The same options with the stage's session and drain timeouts.
    pub fn with_timeouts(mut self, session: Duration, drain: Duration) -> ConsumerOptions {
        self.session_timeout = session;
        self.drain_timeout = drain;
        self
    }
}

/// One consumed record and its ticket.
#[derive(Debug, Clone)]
pub struct Consumed {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    /// The record's timestamp (ms), when it has one.
    pub timestamp: Option<i64>,
    pub ticket: Ticket,
}

struct Shared {
    tracker: Mutex<OffsetTracker>,
    finished: Condvar,
    drain_timeout: Duration,
    drain_on_revoke: bool,
    assigned: watch::Sender<BTreeSet<TopicPartition>>,
    /// Paused by the stage (backpressure), by an operator.
    paused: Mutex<(bool, bool)>,
    /// An assignment has been received: the member joined its group.
    joined: std::sync::atomic::AtomicBool,
    /// At least one broker connection is up (from librdkafka's statistics).
    broker_up: std::sync::atomic::AtomicBool,
    group: String,
    metric_prefix: String,
}

impl Shared {
    fn tracker(&self) -> MutexGuard<'_, OffsetTracker> {
        self.tracker.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The pause flags: (backpressure, operator).
    fn paused(&self) -> MutexGuard<'_, (bool, bool)> {
        self.paused.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn finish(&self, ticket: &Ticket) -> bool {
        let done = self.tracker().finish(ticket);
        self.finished.notify_all();
        done
    }

    /// Waits until no record of `partitions` is in flight, or the drain timeout passes.
    fn drain(&self, partitions: Option<&[TopicPartition]>) -> usize {
        let deadline = Instant::now() + self.drain_timeout;
        let mut tracker = self.tracker();
        loop {
            let left = tracker.in_flight(partitions);
            let now = Instant::now();
            if left == 0 || now >= deadline {
                return left;
            }
            tracker = self
                .finished
                .wait_timeout(tracker, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Commits every safe offset that moved, synchronously or not.
    fn commit_with<C: Consumer<X>, X: ConsumerContext>(
        &self,
        consumer: &C,
        only: Option<&[TopicPartition]>,
        mode: CommitMode,
    ) -> Result<usize, rdkafka::error::KafkaError> {
        let pending: Vec<_> = self
            .tracker()
            .to_commit()
            .into_iter()
            .filter(|(tp, _)| only.is_none_or(|o| o.contains(tp)))
            .collect();
        if pending.is_empty() {
            return Ok(0);
        }
        let mut list = TopicPartitionList::new();
        for ((topic, partition), offset) in &pending {
            list.add_partition_offset(topic, *partition, Offset::Offset(*offset))?;
        }
        consumer.commit(&list, mode)?;
        let mut tracker = self.tracker();
        for ((topic, partition), offset) in &pending {
            tracker.committed(topic, *partition, *offset);
            metrics::gauge!(
                format!("{}_committed_offset", self.metric_prefix),
                "topic" => topic.clone(), "partition" => partition.to_string()
            )
            .set(*offset as f64);
        }
        Ok(pending.len())
    }
}

fn list_partitions(list: &TopicPartitionList) -> Vec<TopicPartition> {
    list.elements()
        .iter()
        .map(|e| (e.topic().to_string(), e.partition()))
        .collect()
}

/// Runs a blocking call, telling a multi-threaded tokio runtime first so other tasks move on.
fn blocking<R>(f: impl FnOnce() -> R) -> R {
    if tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
    {
        tokio::task::block_in_place(f)
    } else {
        f()
    }
}

struct StageContext {
    shared: Arc<Shared>,
}

impl ClientContext for StageContext {
    fn stats(&self, statistics: Statistics) {
        let up = statistics
            .brokers
            .values()
            .any(|b| b.state == "UP" && b.nodeid >= 0);
        self.shared
            .broker_up
            .store(up, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Every 2 s, until the consumer is dropped: each assigned partition's lag, the records between
/// the stage's position (the next record it will receive; before it received any, the group's
/// committed offset) and the partition's end. The end is asked from the broker, because
/// librdkafka's own figure stops moving while a partition is paused: exactly when an operator
/// watches it grow. The questions go through a client of the reporter's own, so they never wait
/// behind the stage's long-polling fetches on the same connection.
fn spawn_lag_reporter(
    consumer: std::sync::Weak<StreamConsumer<StageContext>>,
    shared: Arc<Shared>,
    config: &KafkaConfig,
) {
    let timeout = config.request_timeout();
    let mut client = config.client_config();
    client
        .set("group.id", &shared.group)
        .set("enable.auto.commit", "false");
    let asker: BaseConsumer = match client.create() {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "Cannot create the consumer-lag client; lag is not exported.");
            return;
        }
    };
    let spawned = std::thread::Builder::new()
        .name("wx-consumer-lag".into())
        .spawn(move || {
            loop {
                std::thread::sleep(Duration::from_secs(2));
                if consumer.strong_count() == 0 {
                    return;
                }
                let assigned = shared.assigned.borrow().clone();
                for (topic, partition) in assigned {
                    let Ok((_, high)) = asker.fetch_watermarks(&topic, partition, timeout) else {
                        continue;
                    };
                    let position = shared.tracker().position(&topic, partition);
                    let done = position.or_else(|| {
                        let mut list = TopicPartitionList::new();
                        list.add_partition(&topic, partition);
                        asker.committed_offsets(list, timeout).ok().and_then(|l| {
                            match l.find_partition(&topic, partition)?.offset() {
                                Offset::Offset(o) => Some(o),
                                _ => None,
                            }
                        })
                    });
                    let Some(done) = done else { continue };
                    metrics::gauge!(
                        format!("{}_consumer_lag_records", shared.metric_prefix),
                        "topic" => topic.clone(), "partition" => partition.to_string()
                    )
                    .set((high - done).max(0) as f64);
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "Cannot start the consumer-lag reporter; lag is not exported.");
    }
}

impl ConsumerContext for StageContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(list) = rebalance else {
            return;
        };
        let revoked = list_partitions(list);
        // Let the records in flight finish so their offsets can be committed before another
        // member takes the partitions (fewer duplicates; never a gap either way).
        let left = if self.shared.drain_on_revoke {
            blocking(|| self.shared.drain(Some(&revoked)))
        } else {
            self.shared.tracker().in_flight(Some(&revoked))
        };
        if let Err(e) = self
            .shared
            .commit_with(consumer, Some(&revoked), CommitMode::Sync)
        {
            tracing::warn!(group = %self.shared.group, error = %e, "Committing revoked partitions failed; their unfinished records will be repeated.");
        }
        let mut tracker = self.shared.tracker();
        for (topic, partition) in &revoked {
            tracker.revoke(topic, *partition);
        }
        tracing::info!(group = %self.shared.group, partitions = ?revoked, unfinished = left, "Partitions revoked after draining.");
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(list) => {
                let set: BTreeSet<_> = list_partitions(list).into_iter().collect();
                tracing::info!(group = %self.shared.group, partitions = ?set, "Partitions assigned.");
                let (backpressure, operator) = *self.shared.paused();
                if backpressure || operator {
                    // A pause outlives rebalances.
                    let _ = consumer.pause(list);
                }
                self.shared
                    .joined
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                self.shared.assigned.send_replace(set);
            }
            Rebalance::Revoke(_) => {
                self.shared.assigned.send_replace(BTreeSet::new());
            }
            Rebalance::Error(e) => {
                tracing::warn!(group = %self.shared.group, error = %e, "Rebalance error.")
            }
        }
    }
}

/// A member of a stage's consumer group (module docs).
pub struct GroupConsumer {
    consumer: Arc<StreamConsumer<StageContext>>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for GroupConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupConsumer")
            .field("group", &self.shared.group)
            .field("assigned", &*self.shared.assigned.borrow())
            .finish_non_exhaustive()
    }
}

impl GroupConsumer {
    /// Joins the group and subscribes. Must be called inside a tokio runtime.
    pub fn join(
        config: &KafkaConfig,
        options: &ConsumerOptions,
    ) -> Result<GroupConsumer, KafkaError> {
        let (assigned, _) = watch::channel(BTreeSet::new());
        let shared = Arc::new(Shared {
            tracker: Mutex::new(OffsetTracker::new()),
            finished: Condvar::new(),
            drain_timeout: options.drain_timeout,
            drain_on_revoke: options.drain_on_revoke,
            assigned,
            paused: Mutex::new((false, false)),
            joined: std::sync::atomic::AtomicBool::new(false),
            broker_up: std::sync::atomic::AtomicBool::new(false),
            group: options.group.clone(),
            metric_prefix: options.metric_prefix.clone(),
        });
        let mut client = config.client_config();
        client
            .set("group.id", &options.group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set(
                "auto.offset.reset",
                if options.from_beginning {
                    "earliest"
                } else {
                    "latest"
                },
            )
            .set("partition.assignment.strategy", "roundrobin")
            .set(
                "session.timeout.ms",
                options.session_timeout.as_millis().to_string(),
            )
            .set(
                "heartbeat.interval.ms",
                (options.session_timeout.as_millis() / 4)
                    .max(100)
                    .to_string(),
            )
            .set(
                "max.poll.interval.ms",
                options.max_poll_interval.as_millis().to_string(),
            )
            .set(
                "queued.max.messages.kbytes",
                options.max_buffered_kib.to_string(),
            )
            .set("statistics.interval.ms", "5000")
            .set("enable.partition.eof", "false");
        let consumer: Arc<StreamConsumer<StageContext>> = client
            .create_with_context(StageContext {
                shared: shared.clone(),
            })
            .map(Arc::new)
            .map_err(|source| KafkaError::Client {
                brokers: config.brokers.clone(),
                source,
            })?;
        let topics: Vec<&str> = options.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics).map_err(|e| KafkaError::Read {
            topic: options.topics.join(","),
            reason: e.to_string(),
        })?;
        spawn_lag_reporter(Arc::downgrade(&consumer), shared.clone(), config);
        Ok(GroupConsumer { consumer, shared })
    }

    /// The next record. Cancellation-safe.
    pub async fn recv(&self) -> Result<Consumed, KafkaError> {
        let message = self.consumer.recv().await.map_err(|e| KafkaError::Read {
            topic: String::new(),
            reason: e.to_string(),
        })?;
        let topic = message.topic().to_string();
        let ticket = self
            .shared
            .tracker()
            .begin(&topic, message.partition(), message.offset());
        Ok(Consumed {
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            value: message.payload().map(<[u8]>::to_vec),
            timestamp: message.timestamp().to_millis(),
            topic,
            ticket,
        })
    }

    /// Marks a record done: all its outputs are acknowledged. Returns false for a record of a
    /// partition revoked since.
    pub fn finish(&self, ticket: &Ticket) -> bool {
        self.shared.finish(ticket)
    }

    /// A handle that finishes tickets from other tasks.
    pub fn finisher(&self) -> Finisher {
        Finisher {
            shared: self.shared.clone(),
        }
    }

    /// Commits the safe offsets that moved (asynchronously); returns how many partitions.
    pub fn commit(&self) -> Result<usize, KafkaError> {
        self.shared
            .commit_with(&*self.consumer, None, CommitMode::Async)
            .map_err(|e| KafkaError::Read {
                topic: String::new(),
                reason: format!("commit failed: {e}"),
            })
    }

    /// The offsets that are safe to commit now, per partition.
    pub fn committable(&self) -> Vec<(TopicPartition, i64)> {
        let tracker = self.shared.tracker();
        tracker
            .partitions()
            .into_iter()
            .filter_map(|(t, p)| tracker.committable(&t, p).map(|o| ((t, p), o)))
            .collect()
    }

    /// Records in flight.
    pub fn in_flight(&self) -> usize {
        self.shared.tracker().in_flight(None)
    }

    /// The assigned partitions, as they change.
    pub fn assignments(&self) -> watch::Receiver<BTreeSet<TopicPartition>> {
        self.shared.assigned.subscribe()
    }

    /// Stops fetching from every assigned partition for backpressure (the member stays in the
    /// group).
    pub fn pause(&self) -> Result<(), KafkaError> {
        set_paused(&self.consumer, &self.shared, |p| p.0 = true)
    }

    /// Fetches again after [`GroupConsumer::pause`], unless an operator paused the stage.
    pub fn resume(&self) -> Result<(), KafkaError> {
        set_paused(&self.consumer, &self.shared, |p| p.0 = false)
    }

    /// Waits `duration` while the stage is paused, polling meanwhile: librdkafka counts the
    /// time between polls against `max.poll.interval.ms` whether or not the partitions are
    /// paused, and a member that stops polling leaves its group. Paused partitions deliver
    /// nothing; a record that arrives anyway (one already on its way) is pushed to `into`, for
    /// the caller to process with its next batch. Cancellation-safe: what was received is in
    /// `into`.
    pub async fn poll_while_paused(&self, duration: Duration, into: &mut Vec<Consumed>) {
        let deadline = tokio::time::Instant::now() + duration;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return,
                received = self.recv() => match received {
                    Ok(record) => into.push(record),
                    Err(e) => {
                        tracing::debug!(group = %self.shared.group, error = %e, "Polling while paused failed.");
                        let pause = tokio::time::Instant::now() + Duration::from_millis(100);
                        tokio::time::sleep_until(pause.min(deadline)).await;
                    }
                },
            }
        }
    }

    /// Paused for backpressure.
    pub fn is_paused(&self) -> bool {
        self.shared.paused().0
    }

    /// The operator's handle on this consumer.
    pub fn control(&self) -> ConsumerControl {
        ConsumerControl {
            consumer: self.consumer.clone(),
            shared: self.shared.clone(),
        }
    }

    /// Waits (bounded by the drain timeout) for records in flight, commits synchronously and
    /// leaves the group. Returns the records still unfinished (they will be repeated).
    pub async fn close(self) -> usize {
        let shared = self.shared.clone();
        let left = tokio::task::spawn_blocking(move || shared.drain(None))
            .await
            .unwrap_or(0);
        if let Err(e) = self
            .shared
            .commit_with(&*self.consumer, None, CommitMode::Sync)
        {
            tracing::warn!(group = %self.shared.group, error = %e, "The final commit failed; the unfinished tail will be repeated.");
        }
        self.consumer.unsubscribe();
        left
    }
}

/// Applies a change to the pause flags and pauses or resumes fetching accordingly.
fn set_paused(
    consumer: &StreamConsumer<StageContext>,
    shared: &Shared,
    change: impl FnOnce(&mut (bool, bool)),
) -> Result<(), KafkaError> {
    let mut flags = shared.paused();
    change(&mut flags);
    let list = consumer.assignment().map_err(|e| KafkaError::Read {
        topic: String::new(),
        reason: e.to_string(),
    })?;
    let result = if flags.0 || flags.1 {
        consumer.pause(&list)
    } else {
        consumer.resume(&list)
    };
    result.map_err(|e| KafkaError::Read {
        topic: String::new(),
        reason: e.to_string(),
    })
}

/// An operator's handle on a stage's consumer: pause and resume, what it is assigned, whether
/// it has joined its group and reaches a broker.
#[derive(Clone)]
pub struct ConsumerControl {
    consumer: Arc<StreamConsumer<StageContext>>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ConsumerControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerControl")
            .field("group", &self.shared.group)
            .finish_non_exhaustive()
    }
}

impl ConsumerControl {
    /// Stops fetching until [`ConsumerControl::resume`]; survives rebalances.
    pub fn pause(&self) -> Result<(), KafkaError> {
        set_paused(&self.consumer, &self.shared, |p| p.1 = true)
    }

    /// Lifts the operator's pause.
    pub fn resume(&self) -> Result<(), KafkaError> {
        set_paused(&self.consumer, &self.shared, |p| p.1 = false)
    }

    /// Paused by an operator.
    pub fn is_paused(&self) -> bool {
        self.shared.paused().1
    }

    /// The consumer group.
    pub fn group(&self) -> &str {
        &self.shared.group
    }

    /// The partitions assigned now.
    pub fn assigned(&self) -> BTreeSet<TopicPartition> {
        self.shared.assigned.borrow().clone()
    }

    /// True once the member has received an assignment.
    pub fn joined(&self) -> bool {
        self.shared
            .joined
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// True while librdkafka reports a broker connection up (statistics, every 5 s).
    pub fn broker_up(&self) -> bool {
        self.shared
            .broker_up
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Finishes tickets from another task than the one receiving.
#[derive(Clone)]
pub struct Finisher {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Finisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Finisher").finish_non_exhaustive()
    }
}

impl Finisher {
    pub fn finish(&self, ticket: &Ticket) -> bool {
        self.shared.finish(ticket)
    }
}
