//! The one consumer loop every consuming stage runs ([`StageConsumer::run`]):
//!
//! ```text
//! loop: shutdown?  -> stop
//!       commit timer -> handler.before_commit, then commit the finished offsets
//!       assignment changed -> handler.assigned
//!       a record, or records carried back -> gather a batch (up to `max`, `linger`)
//!                      -> handler.assigned if the assignment changed meanwhile
//!                      -> drop the records of partitions revoked since they arrived
//!                      -> handler.handle
//!       an error    -> retryable: health + metric, go on receiving (a short pause)
//!                      fatal: stop the stage with the cause (never spins)
//! then: handler.stop, close the consumer (drain, final commit, leave the group)
//! ```
//!
//! The handler finishes each record's ticket once its outputs are acknowledged (or its stores
//! written, or it is parked); the loop owns the only commit timer. A handler that cannot take
//! every record now (no download slot free) hands the rest back ([`StageConsumer::carry_back`])
//! and returns: the loop commits and hears of rebalances between its batches, so a long wait
//! never stalls commits or lets a revoked partition's records run on.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use wx_kafka::{
    Consumed, ConsumerControl, Finisher, GroupConsumer, KafkaError, Ticket, TopicPartition,
};

use crate::error::StageError;
use crate::health::StageHealth;

/// How records are handed to the handler: one by one (`max` 1) or in batches of up to `max`,
/// waiting at most `linger` for a batch to fill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batching {
    pub max: usize,
    pub linger: Duration,
}

impl Batching {
    /// Record by record.
    pub const ONE: Batching = Batching {
        max: 1,
        linger: Duration::ZERO,
    };
}

/// What a stage does with the records its consumer receives.
pub trait Handler: Send {
    /// Handles records received together. An error stops the stage; the records it did not
    /// finish are repeated after a restart.
    fn handle(
        &mut self,
        batch: Vec<Consumed>,
        consumer: &StageConsumer,
    ) -> impl Future<Output = Result<(), StageError>> + Send;

    /// Runs on the commit timer right before the finished offsets are committed (what must be
    /// durable before the commit that guards it is written here).
    fn before_commit(
        &mut self,
        _consumer: &StageConsumer,
    ) -> impl Future<Output = Result<(), StageError>> + Send {
        async { Ok(()) }
    }

    /// The assigned partitions changed.
    fn assigned(&mut self, _partitions: &BTreeSet<TopicPartition>) {}

    /// The loop ended (shutdown or error): let the stage's own tasks finish what is in flight,
    /// before the consumer drains and commits.
    fn stop(self) -> impl Future<Output = Result<(), StageError>> + Send;
}

/// A stage's consumer with the runtime's loop, backpressure and error handling around it.
#[derive(Debug)]
pub struct StageConsumer {
    consumer: GroupConsumer,
    commit_interval: Duration,
    health: Arc<StageHealth>,
    prefix: String,
    /// Records that arrived while the stage waited (paused) for something else: the next
    /// batch's start.
    carried: Mutex<Vec<Consumed>>,
}

/// Registers the help text of the loop's metrics under the stage's prefix.
fn describe(prefix: &str) {
    metrics::describe_counter!(
        format!("{prefix}_consumer_errors_total"),
        "Receive errors of the stage's consumer, by fatal (true stops the stage)."
    );
    metrics::describe_counter!(
        format!("{prefix}_commit_failures_total"),
        "Offset commits that failed and were retried on the next tick."
    );
    metrics::describe_gauge!(
        format!("{prefix}_group_lag_records"),
        "The group's lag as the broker sees it (end minus committed offset), by partition of the input topic, whoever owns it."
    );
    metrics::describe_gauge!(
        format!("{prefix}_consumer_lag_records"),
        "Input records not yet consumed (partition end minus the stage's position), by partition."
    );
    metrics::describe_gauge!(
        format!("{prefix}_committed_offset"),
        "The input offset last committed, by partition."
    );
    metrics::describe_gauge!(
        format!("{prefix}_paused"),
        "1 while consumption is paused because something downstream is failing."
    );
    metrics::gauge!(format!("{prefix}_paused")).set(0.0);
}

impl StageConsumer {
    pub(crate) fn new(
        consumer: GroupConsumer,
        commit_interval: Duration,
        health: Arc<StageHealth>,
        prefix: String,
    ) -> StageConsumer {
        describe(&prefix);
        StageConsumer {
            consumer,
            commit_interval,
            health,
            prefix,
            carried: Mutex::new(Vec::new()),
        }
    }

    /// The operator's handle on the consumer.
    pub fn control(&self) -> ConsumerControl {
        self.consumer.control()
    }

    /// Marks a record done (see [`GroupConsumer::finish`]).
    pub fn finish(&self, ticket: &Ticket) -> bool {
        self.consumer.finish(ticket)
    }

    /// Whether a ticket's record is still this member's to finish (not of a partition revoked
    /// since).
    pub fn is_live(&self, ticket: &Ticket) -> bool {
        self.consumer.is_live(ticket)
    }

    /// Finishes tickets from another task.
    pub fn finisher(&self) -> Finisher {
        self.consumer.finisher()
    }

    /// Records in flight.
    pub fn in_flight(&self) -> usize {
        self.consumer.in_flight()
    }

    /// The assigned partitions, as they change (a change means every ticket received before
    /// it is stale: the group's protocol is eager).
    pub fn assignments(&self) -> tokio::sync::watch::Receiver<BTreeSet<TopicPartition>> {
        self.consumer.assignments()
    }

    fn carried(&self) -> std::sync::MutexGuard<'_, Vec<Consumed>> {
        self.carried.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands records of a batch back to the loop, which offers them again (before anything
    /// that arrived since) after it has committed and heard of any rebalance.
    pub fn carry_back(&self, records: impl IntoIterator<Item = Consumed>) {
        let mut carried = self.carried();
        let arrived = std::mem::take(&mut *carried);
        carried.extend(records);
        carried.extend(arrived);
    }

    /// Whether fetching is paused by [`StageConsumer::hold`].
    pub fn is_held(&self) -> bool {
        self.consumer.is_paused()
    }

    /// Pauses fetching while something downstream fails (`<prefix>_paused` is 1 meanwhile), or
    /// resumes it. True when this changed the state.
    pub fn hold(&self, paused: bool) -> bool {
        if self.consumer.is_paused() == paused {
            return false;
        }
        let result = if paused {
            self.consumer.pause()
        } else {
            self.consumer.resume()
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, paused, "Pausing or resuming consumption failed.");
        }
        metrics::gauge!(format!("{}_paused", self.prefix)).set(if paused { 1.0 } else { 0.0 });
        true
    }

    /// Waits `delay` before the next try of something failing, polling the paused consumer so
    /// the member stays in its group; what arrives meanwhile starts the next batch. Ok(false) on
    /// shutdown; a fatal consumer error is returned.
    pub async fn back_off(
        &self,
        delay: Duration,
        shutdown: &CancellationToken,
    ) -> Result<bool, StageError> {
        let mut arrived = Vec::new();
        let waited = tokio::select! {
            _ = shutdown.cancelled() => Ok(false),
            polled = self.consumer.poll_while_paused(delay, &mut arrived) => polled.map(|()| true),
        };
        self.carried().append(&mut arrived);
        Ok(waited?)
    }

    /// A receive failed: a fatal error is returned (it stops the stage); any other is shown
    /// (health, metric, a warning).
    fn noted(&self, e: KafkaError) -> Result<(), StageError> {
        let fatal = e.is_fatal();
        metrics::counter!(format!("{}_consumer_errors_total", self.prefix), "fatal" => fatal.to_string())
            .increment(1);
        if fatal {
            tracing::error!(error = %e, "The consumer failed for good; stopping the stage.");
            return Err(StageError::Kafka(e));
        }
        tracing::warn!(error = %e, "Consuming failed; receiving again.");
        self.health.failing("kafka", &e);
        Ok(())
    }

    /// A receive failed: [`StageConsumer::noted`], then receiving goes on after
    /// [`wx_kafka::RECEIVE_ERROR_PAUSE`].
    async fn received_error(
        &self,
        e: KafkaError,
        shutdown: &CancellationToken,
    ) -> Result<(), StageError> {
        self.noted(e)?;
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = tokio::time::sleep(wx_kafka::RECEIVE_ERROR_PAUSE) => {}
        }
        Ok(())
    }

    /// The commit timer's work: what must be durable first (the handler's), then the commit.
    async fn commit_finished<H: Handler>(&self, handler: &mut H) -> Result<(), StageError> {
        handler.before_commit(self).await?;
        self.commit()
    }

    fn commit(&self) -> Result<(), StageError> {
        match self.consumer.commit() {
            Ok(_) => Ok(()),
            Err(e) if e.is_fatal() => Err(StageError::Kafka(e)),
            Err(e) => {
                // Mostly a rebalance in progress; the next tick commits the same offsets.
                tracing::warn!(error = %e, "Committing offsets failed; will retry.");
                metrics::counter!(format!("{}_commit_failures_total", self.prefix)).increment(1);
                Ok(())
            }
        }
    }

    /// Runs `handler` over the consumer until `shutdown` or a fatal error (module docs), then
    /// stops the handler and closes the consumer (drain, final commit, leave the group).
    pub async fn run<H: Handler>(
        self,
        mut handler: H,
        batching: Batching,
        shutdown: CancellationToken,
    ) -> Result<(), StageError> {
        let mut commit = tokio::time::interval(self.commit_interval);
        commit.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut assignments = self.consumer.assignments();
        let mut failing = false;
        let result = loop {
            if shutdown.is_cancelled() {
                break Ok(());
            }
            let mut batch = std::mem::take(&mut *self.carried());
            if batch.is_empty() {
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => break Ok(()),
                    _ = commit.tick() => {
                        if let Err(e) = self.commit_finished(&mut handler).await {
                            break Err(e);
                        }
                        continue;
                    }
                    Ok(()) = assignments.changed() => {
                        let assigned = assignments.borrow_and_update().clone();
                        // An assignment is the group answering: a stage with nothing to read
                        // (no record would clear it) is no longer failing on Kafka.
                        if failing && !assigned.is_empty() {
                            failing = false;
                            self.health.recovered("kafka");
                        }
                        handler.assigned(&assigned);
                        continue;
                    }
                    received = self.consumer.recv() => match received {
                        Ok(record) => batch.push(record),
                        Err(e) => match self.received_error(e, &shutdown).await {
                            Ok(()) => {
                                failing = true;
                                continue;
                            }
                            Err(fatal) => break Err(fatal),
                        },
                    },
                }
            } else {
                // Records carried back: the commit timer is served between their batches too.
                let due = tokio::select! {
                    biased;
                    _ = commit.tick() => true,
                    () = std::future::ready(()) => false,
                };
                if due && let Err(e) = self.commit_finished(&mut handler).await {
                    break Err(e);
                }
            }
            if failing {
                failing = false;
                self.health.recovered("kafka");
            }
            match self.fill(&mut batch, batching, &shutdown).await {
                Ok(errored) => failing |= errored,
                Err(e) => break Err(e),
            }
            // A rebalance while the batch gathered or waited: the handler hears of it before it
            // sees a record of the new assignment, and the records received before it are
            // dropped (the protocol is eager: their partitions were revoked, and they are
            // delivered again from the committed offsets, here or to another member).
            if assignments.has_changed().unwrap_or(false) {
                let assigned = assignments.borrow_and_update().clone();
                handler.assigned(&assigned);
            }
            batch.retain(|record| self.is_live(&record.ticket));
            if batch.is_empty() {
                continue;
            }
            match handler.handle(batch, &self).await {
                Ok(()) => {}
                // A wait the stop interrupted: the record is unfinished, the stop is clean.
                Err(StageError::Interrupted) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        let stopped = handler.stop().await;
        let unfinished = self.consumer.close().await;
        tracing::info!(unfinished, "The consumer stopped after draining.");
        result.and(stopped)
    }

    /// Adds records to `batch` until it holds `batching.max`, `batching.linger` passed or a
    /// receive failed (shown, [`StageConsumer::noted`]: Ok(true) then).
    async fn fill(
        &self,
        batch: &mut Vec<Consumed>,
        batching: Batching,
        shutdown: &CancellationToken,
    ) -> Result<bool, StageError> {
        if batch.len() >= batching.max {
            return Ok(false);
        }
        let deadline = tokio::time::Instant::now() + batching.linger;
        while batch.len() < batching.max {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                _ = shutdown.cancelled() => break,
                received = self.consumer.recv() => match received {
                    Ok(record) => batch.push(record),
                    Err(e) => {
                        self.noted(e)?;
                        return Ok(true);
                    }
                },
            }
        }
        Ok(false)
    }
}
