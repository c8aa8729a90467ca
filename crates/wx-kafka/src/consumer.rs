//! The consumer every processing stage reads with: a consumer-group member whose offsets are
//! committed by wxstream, never automatically, and only up to records the stage has finished
//! (see `tracker`). At-least-once: a crash, kill -9 or rebalance repeats the unfinished tail,
//! never skips it.
//!
//! - `recv` hands out a record with a [`Ticket`]; `finish(ticket)` marks it done once every
//!   output is acknowledged (or every store written).
//! - `commit` writes the safe offsets (the stage runtime calls it on its one commit timer).
//! - On revocation the consumer waits (bounded by `drain_timeout`) for the revoked partitions'
//!   records to finish, then commits them synchronously before giving them up (`member`).
//! - `pause` / `resume` stop and restart fetching for backpressure; an operator pauses and
//!   resumes through a [`ConsumerControl`] (the REST surface). Fetching resumes only when
//!   neither holds it; the member stays in the group either way, as long as the stage keeps
//!   polling (`recv`, or `poll_while_paused` while it waits for something else).
//! - `close` drains everything, commits and leaves the group.
//! - Lag per assigned partition is exported as `<prefix>_consumer_lag_records` (`lag`).
//!
//! Errors say whether they are fatal ([`KafkaError::is_fatal`]): librdkafka reports a client it
//! can no longer use (a static member fenced by another with the same `group.instance.id`, ...).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use tokio::sync::watch;

use crate::lag::spawn_lag_reporter;
use crate::member::{MemberContext, Shared};
use crate::options::ConsumerOptions;
use crate::tracker::{Ticket, TopicPartition};
use crate::{KafkaConfig, KafkaError};

/// The pause after a retryable consumer error before receiving again. Short and fixed, never a
/// growing backoff: librdkafka queues its errors (a broker that refuses connections, a
/// partition's fetch error) on the consumer's queue in order with the rebalances, and makes
/// them at its own pace (the same broker error at most once in 30 s, fetch errors behind
/// `fetch.error.backoff.ms`), so receiving cannot spin. The stage runtime's loop slept a
/// growing backoff (to 5 s) after each one and drained them slower than two dead brokers made
/// them: the assignment queued behind them waited minutes, a member the coordinator counted in
/// its stable group out of it for the stage
/// (`cluster.rs::two_of_three_brokers_down_stops_every_stage_visibly_and_it_resumes_when_one_is_back`).
/// Used by every receive of a stage, the paused one (`poll_while_paused`) too.
pub const RECEIVE_ERROR_PAUSE: Duration = Duration::from_millis(10);

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

/// A member of a stage's consumer group (module docs).
pub struct GroupConsumer {
    consumer: Arc<StreamConsumer<MemberContext>>,
    shared: Arc<Shared>,
    commits: Arc<CommitSlot>,
}

/// The one commit in flight (see [`GroupConsumer::commit`]).
#[derive(Default)]
struct CommitSlot {
    running: std::sync::atomic::AtomicBool,
    /// The last commit's error, handed to the next call.
    failed: std::sync::Mutex<Option<KafkaError>>,
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
        let shared = Arc::new(Shared::new(
            &options.group,
            &options.metric_prefix,
            options.drain_timeout,
            options.drain_on_revoke,
        ));
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
        if let Some(id) = &options.group_instance_id {
            client.set("group.instance.id", id);
        }
        let consumer: Arc<StreamConsumer<MemberContext>> = client
            .create_with_context(MemberContext {
                shared: shared.clone(),
            })
            .map(Arc::new)
            .map_err(|source| KafkaError::Client {
                brokers: config.brokers.clone(),
                source,
            })?;
        let topics: Vec<&str> = options.topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topics)
            .map_err(|source| KafkaError::Subscribe {
                topics: options.topics.join(","),
                source,
            })?;
        spawn_lag_reporter(
            Arc::downgrade(&consumer),
            shared.clone(),
            config,
            options.topics.clone(),
        );
        Ok(GroupConsumer {
            consumer,
            shared,
            commits: Arc::default(),
        })
    }

    /// The next record. Cancellation-safe.
    pub async fn recv(&self) -> Result<Consumed, KafkaError> {
        let message = self.consumer.recv().await.map_err(|source| {
            // librdkafka raises a fatal error once, then reports the client's state.
            let fatal = self.consumer.client().fatal_error().map(|(_, text)| text);
            KafkaError::Consume { source, fatal }
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

    /// Whether a ticket's record is still this member's to finish (see
    /// [`OffsetTracker::is_live`](crate::OffsetTracker::is_live)).
    pub fn is_live(&self, ticket: &Ticket) -> bool {
        self.shared.tracker().is_live(ticket)
    }

    /// A handle that finishes tickets from other tasks.
    pub fn finisher(&self) -> Finisher {
        Finisher {
            shared: self.shared.clone(),
        }
    }

    /// Commits every finished offset not committed yet, one commit at a time: a synchronous
    /// commit on a blocking thread, so its answer is known (rust-rdkafka 0.39 never reports an
    /// asynchronous one: it sets no commit callback) and the tracker records what the broker
    /// took. While one is in flight, calls send nothing; the error of one that failed is
    /// returned by the next call. Commits sent every tick whatever became of the one before
    /// piled up behind an unreachable coordinator, and librdkafka held the revocation that
    /// followed until each had failed: a member out of its group for 5 min after its cluster
    /// recovered (`cluster.rs::two_of_three_brokers_down_stops_every_stage_visibly_and_it_resumes_when_one_is_back`).
    pub fn commit(&self) -> Result<(), KafkaError> {
        let failed = self
            .commits
            .failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(e) = failed {
            return Err(e);
        }
        if self.commits.running.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let (consumer, shared, slot) = (
            self.consumer.clone(),
            self.shared.clone(),
            self.commits.clone(),
        );
        tokio::task::spawn_blocking(move || {
            if let Err(source) = shared.commit(&*consumer, &shared.pending(None)) {
                let fatal = consumer.client().fatal_error().map(|(_, text)| text);
                *slot.failed.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(KafkaError::Commit { fatal, source });
            }
            slot.running.store(false, Ordering::SeqCst);
        });
        Ok(())
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
        set_paused(&self.consumer, &self.shared, |s| {
            s.paused.backpressure.store(true, Ordering::SeqCst)
        })
    }

    /// Fetches again after [`GroupConsumer::pause`], unless an operator paused the stage.
    pub fn resume(&self) -> Result<(), KafkaError> {
        set_paused(&self.consumer, &self.shared, |s| {
            s.paused.backpressure.store(false, Ordering::SeqCst)
        })
    }

    /// Waits `duration` while the stage is paused, polling meanwhile: librdkafka counts the
    /// time between polls against `max.poll.interval.ms` whether or not the partitions are
    /// paused, and a member that stops polling leaves its group. Paused partitions deliver
    /// nothing; a record that arrives anyway (one already on its way) is pushed to `into`, for
    /// the caller to process with its next batch. Cancellation-safe: what was received is in
    /// `into`. A fatal error ends the wait early and is returned.
    pub async fn poll_while_paused(
        &self,
        duration: Duration,
        into: &mut Vec<Consumed>,
    ) -> Result<(), KafkaError> {
        let deadline = tokio::time::Instant::now() + duration;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return Ok(()),
                received = self.recv() => match received {
                    Ok(record) => into.push(record),
                    Err(e) if e.is_fatal() => return Err(e),
                    Err(e) => {
                        tracing::debug!(group = %self.shared.group, error = %e, "Polling while paused failed.");
                        let pause = tokio::time::Instant::now() + RECEIVE_ERROR_PAUSE;
                        tokio::time::sleep_until(pause.min(deadline)).await;
                    }
                },
            }
        }
    }

    /// Paused for backpressure.
    pub fn is_paused(&self) -> bool {
        self.shared.paused.backpressure.load(Ordering::SeqCst)
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
            .commit(&*self.consumer, &self.shared.pending(None))
        {
            tracing::warn!(group = %self.shared.group, error = %e, "The final commit failed; the unfinished tail will be repeated.");
        }
        self.consumer.unsubscribe();
        left
    }
}

/// Applies a change to the pause flags and pauses or resumes fetching accordingly.
fn set_paused(
    consumer: &StreamConsumer<MemberContext>,
    shared: &Shared,
    change: impl FnOnce(&Shared),
) -> Result<(), KafkaError> {
    let _serialised = shared.pause_lock.lock().unwrap_or_else(|p| p.into_inner());
    change(shared);
    // What is assigned now; partitions assigned later get the flags' state on assignment
    // (`Shared::apply_pause`).
    let list = consumer
        .assignment()
        .map_err(|source| KafkaError::Pause { source })?;
    let result = if shared.paused.any() {
        consumer.pause(&list)
    } else {
        consumer.resume(&list)
    };
    result.map_err(|source| KafkaError::Pause { source })
}

/// An operator's handle on a stage's consumer: pause and resume, what it is assigned, whether
/// it has joined its group and reaches a broker.
#[derive(Clone)]
pub struct ConsumerControl {
    consumer: Arc<StreamConsumer<MemberContext>>,
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
        set_paused(&self.consumer, &self.shared, |s| {
            s.paused.operator.store(true, Ordering::SeqCst)
        })
    }

    /// Lifts the operator's pause.
    pub fn resume(&self) -> Result<(), KafkaError> {
        set_paused(&self.consumer, &self.shared, |s| {
            s.paused.operator.store(false, Ordering::SeqCst)
        })
    }

    /// Paused by an operator.
    pub fn is_paused(&self) -> bool {
        self.shared.paused.operator.load(Ordering::SeqCst)
    }

    /// The consumer group.
    pub fn group(&self) -> &str {
        &self.shared.group
    }

    /// The partitions assigned now.
    pub fn assigned(&self) -> BTreeSet<TopicPartition> {
        self.shared.assigned.borrow().clone()
    }

    /// True while the member holds an assignment: false before the first, and from a
    /// revocation (a rebalance, or leaving the group on `max.poll.interval.ms`) to the next.
    pub fn joined(&self) -> bool {
        self.shared.joined.load(Ordering::Relaxed)
    }

    /// The group's lag on its input topics as the broker sees it, whoever owns the partitions
    /// (None until first measured).
    pub fn group_lag(&self) -> Option<i64> {
        let lag = self.shared.group_lag.load(Ordering::Relaxed);
        (lag >= 0).then_some(lag)
    }

    /// True while librdkafka reports a broker connection up (statistics, every 5 s).
    pub fn broker_up(&self) -> bool {
        self.shared.broker_up.load(Ordering::Relaxed)
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
