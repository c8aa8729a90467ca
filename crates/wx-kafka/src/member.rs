//! The state a stage's consumer shares with librdkafka's callbacks: the offset tracker, the
//! pause flags, the assignment, and the rebalance callbacks that drain and commit revoked
//! partitions before giving them up.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::watch;

use crate::tracker::{OffsetTracker, Ticket, TopicPartition};

/// Who holds fetching paused: the stage (backpressure while a store fails) or an operator.
/// Fetching resumes only when neither does.
#[derive(Debug, Default)]
pub(crate) struct PauseFlags {
    pub(crate) backpressure: AtomicBool,
    pub(crate) operator: AtomicBool,
}

impl PauseFlags {
    pub(crate) fn any(&self) -> bool {
        self.backpressure.load(Ordering::SeqCst) || self.operator.load(Ordering::SeqCst)
    }
}

pub(crate) struct Shared {
    tracker: Mutex<OffsetTracker>,
    finished: Condvar,
    drain_timeout: Duration,
    drain_on_revoke: bool,
    pub(crate) assigned: watch::Sender<BTreeSet<TopicPartition>>,
    pub(crate) paused: PauseFlags,
    /// Serialises pause changes with the pause/resume calls they lead to.
    pub(crate) pause_lock: Mutex<()>,
    /// The member holds an assignment (false before the first and from a revocation to the next).
    pub(crate) joined: AtomicBool,
    /// At least one broker connection is up (from librdkafka's statistics).
    pub(crate) broker_up: AtomicBool,
    /// Finished positions of revoked partitions whose commit failed (the member was evicted
    /// from its group meanwhile, typically while the coordinator's broker was away): if the
    /// next assignment gives them back, fetching resumes there instead of at the older
    /// committed offset, and the next commit saves them.
    pub(crate) unsaved: Mutex<HashMap<TopicPartition, i64>>,

    /// The group's lag on the input topics as the broker sees it (-1 until measured).
    pub(crate) group_lag: std::sync::atomic::AtomicI64,
    pub(crate) group: String,
    pub(crate) metric_prefix: String,
}

impl Shared {
    pub(crate) fn new(
        group: &str,
        metric_prefix: &str,
        drain_timeout: Duration,
        drain_on_revoke: bool,
    ) -> Shared {
        Shared {
            tracker: Mutex::new(OffsetTracker::new()),
            finished: Condvar::new(),
            drain_timeout,
            drain_on_revoke,
            assigned: watch::channel(BTreeSet::new()).0,
            paused: PauseFlags::default(),
            pause_lock: Mutex::new(()),
            joined: AtomicBool::new(false),
            broker_up: AtomicBool::new(false),
            unsaved: Mutex::default(),

            group_lag: std::sync::atomic::AtomicI64::new(-1),
            group: group.to_string(),
            metric_prefix: metric_prefix.to_string(),
        }
    }

    pub(crate) fn tracker(&self) -> MutexGuard<'_, OffsetTracker> {
        self.tracker.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn finish(&self, ticket: &Ticket) -> bool {
        let done = self.tracker().finish(ticket);
        self.finished.notify_all();
        done
    }

    /// Waits until no record of `partitions` is in flight, or the drain timeout passes.
    pub(crate) fn drain(&self, partitions: Option<&[TopicPartition]>) -> usize {
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

    /// The finished offsets not committed yet, of `only`'s partitions (every partition's when
    /// None).
    pub(crate) fn pending(&self, only: Option<&[TopicPartition]>) -> Vec<(TopicPartition, i64)> {
        self.tracker()
            .to_commit()
            .into_iter()
            .filter(|(tp, _)| only.is_none_or(|o| o.contains(tp)))
            .collect()
    }

    /// Commits `pending` synchronously (rust-rdkafka 0.39 never reports an asynchronous commit:
    /// it sets no commit callback); what the broker took is recorded in the tracker. Returns
    /// how many partitions were committed.
    pub(crate) fn commit<C: Consumer<X>, X: ConsumerContext>(
        &self,
        consumer: &C,
        pending: &[(TopicPartition, i64)],
    ) -> Result<usize, rdkafka::error::KafkaError> {
        if pending.is_empty() {
            return Ok(0);
        }
        let mut list = TopicPartitionList::new();
        for ((topic, partition), offset) in pending {
            list.add_partition_offset(topic, *partition, Offset::Offset(*offset))?;
        }
        consumer.commit(&list, CommitMode::Sync)?;
        self.committed(&list);
        Ok(pending.len())
    }

    /// Sets fetching of `list` as the pause flags say, both ways. librdkafka keeps a partition's
    /// pause across a rebalance that gives it back to the same member (librdkafka #1849), so a
    /// pause lifted while nothing was assigned (between a revocation and the next assignment:
    /// the resume found no partition to resume) would otherwise hold the partitions for good.
    pub(crate) fn apply_pause<C: Consumer<X>, X: ConsumerContext>(
        &self,
        consumer: &C,
        list: &TopicPartitionList,
    ) {
        let _serialised = self.pause_lock.lock().unwrap_or_else(|p| p.into_inner());
        let paused = self.paused.any();
        let result = if paused {
            consumer.pause(list)
        } else {
            consumer.resume(list)
        };
        if let Err(e) = result {
            tracing::warn!(group = %self.group, error = %e, paused, "Setting the assigned partitions' fetching failed.");
        }
    }

    /// Records offsets the broker confirmed as committed.
    fn committed(&self, list: &TopicPartitionList) {
        let mut tracker = self.tracker();
        for element in list.elements() {
            let Offset::Offset(offset) = element.offset() else {
                continue;
            };
            tracker.committed(element.topic(), element.partition(), offset);
            metrics::gauge!(
                format!("{}_committed_offset", self.metric_prefix),
                "topic" => element.topic().to_string(), "partition" => element.partition().to_string()
            )
            .set(offset as f64);
        }
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

/// librdkafka's callbacks for a stage's consumer.
pub(crate) struct MemberContext {
    pub(crate) shared: Arc<Shared>,
}

impl ClientContext for MemberContext {
    fn stats(&self, statistics: Statistics) {
        let up = statistics
            .brokers
            .values()
            .any(|b| b.state == "UP" && b.nodeid >= 0);
        self.shared.broker_up.store(up, Ordering::Relaxed);
    }
}

impl ConsumerContext for MemberContext {
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
        let finished = self.shared.pending(Some(&revoked));
        // A lost assignment (the session timed out: its generation is gone) cannot be
        // committed; a synchronous commit would only wait on a coordinator that may be down,
        // holding librdkafka's rebalance meanwhile.
        let committed = if consumer.assignment_lost() {
            Err("the assignment was lost (the member's session timed out)".to_string())
        } else {
            self.shared
                .commit(consumer, &finished)
                .map_err(|e| e.to_string())
        };
        let mut unsaved = self
            .shared
            .unsaved
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match committed {
            Ok(_) => unsaved.retain(|tp, _| !revoked.contains(tp)),
            Err(e) => {
                tracing::warn!(group = %self.shared.group, error = %e, positions = ?finished, "Committing revoked partitions failed; if they come back to this member it resumes from these finished positions, else their next owner repeats what follows the last commit.");
                unsaved.extend(finished);
            }
        }
        drop(unsaved);
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
                self.resume_unsaved(consumer, list);
                self.shared.apply_pause(consumer, list);
                self.shared.joined.store(true, Ordering::Relaxed);
                self.shared.assigned.send_replace(set);
            }
            Rebalance::Revoke(_) => {
                // Out of the group until the next assignment (a rebalance, or a member that
                // left on `max.poll.interval.ms` and rejoins with its next poll).
                self.shared.joined.store(false, Ordering::Relaxed);
                self.shared.assigned.send_replace(BTreeSet::new());
            }
            Rebalance::Error(e) => {
                tracing::warn!(group = %self.shared.group, error = %e, "Rebalance error.")
            }
        }
    }
}

impl MemberContext {
    /// Of the positions a failed commit could not save, those of partitions `list` gives back:
    /// assigned again from there (every record before them is finished, its outputs durable),
    /// and saved by the next commit. The others are forgotten: another member owns them now
    /// and starts from the committed offset (a repeat, never a gap).
    fn resume_unsaved(&self, consumer: &BaseConsumer<Self>, list: &TopicPartitionList) {
        let unsaved = std::mem::take(
            &mut *self
                .shared
                .unsaved
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        let back: Vec<(TopicPartition, i64)> = list_partitions(list)
            .into_iter()
            .filter_map(|tp| unsaved.get(&tp).map(|offset| (tp, *offset)))
            .collect();
        if back.is_empty() {
            return;
        }
        let mut again = list.clone();
        for ((topic, partition), offset) in &back {
            if let Err(e) = again.set_partition_offset(topic, *partition, Offset::Offset(*offset)) {
                tracing::warn!(group = %self.shared.group, error = %e, "Could not resume a partition at its finished position.");
                return;
            }
        }
        match consumer.assign(&again) {
            Ok(()) => {
                let mut tracker = self.shared.tracker();
                for ((topic, partition), offset) in &back {
                    tracker.resume_at(topic, *partition, *offset);
                }
                tracing::info!(group = %self.shared.group, positions = ?back, "Resuming partitions from the finished positions an earlier commit could not save.");
            }
            Err(e) => {
                tracing::warn!(group = %self.shared.group, error = %e, "Could not resume partitions at their finished positions; they start from the committed offsets.")
            }
        }
    }
}
