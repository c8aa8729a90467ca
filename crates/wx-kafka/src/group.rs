//! Membership in a consumer group, used to share work that is not a stream of records: the
//! partitions a member is assigned decide what it owns (ingest: the corps whose checkpoint lives
//! in those partitions). Kafka's group protocol gives each partition one owner, and a dead
//! member's partitions move to the others after `session.timeout.ms`, with no transactions.
//!
//! The hand-over is exclusive: with the eager protocol every member gives up its partitions
//! before the group assigns them again, and this member's revocation callback does not return
//! until its owner has reported, through [`GroupMember::release`], that it no longer works on the
//! revoked partitions (bounded by `release_timeout`). So no partition is worked on by two live
//! members at once. A member that dies simply stops working; its partitions move after the
//! session timeout.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use tokio::sync::watch;

use crate::{KafkaConfig, KafkaError};

struct MembershipContext {
    assigned: watch::Sender<BTreeSet<i32>>,
    held: watch::Receiver<BTreeSet<i32>>,
    release_timeout: Duration,
    status: MemberStatus,
}

/// Whether a [`GroupMember`] is in its group now, and the group error it last met: what its
/// owner's readiness shows.
#[derive(Debug, Clone, Default)]
pub struct MemberStatus {
    inner: Arc<StatusInner>,
}

#[derive(Debug, Default)]
struct StatusInner {
    joined: AtomicBool,
    error: Mutex<Option<String>>,
}

impl MemberStatus {
    /// True from an assignment (possibly of nothing) until the next revocation or loss.
    pub fn joined(&self) -> bool {
        self.inner.joined.load(Ordering::Relaxed)
    }

    /// The last group error (an authorization refused, a coordinator unreachable), until the
    /// member is assigned again.
    pub fn error(&self) -> Option<String> {
        self.inner
            .error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Records a poll error; true when it differs from the last one (worth a warning).
    fn failed(&self, error: String) -> bool {
        let mut last = self.inner.error.lock().unwrap_or_else(|p| p.into_inner());
        let new = last.as_deref() != Some(error.as_str());
        *last = Some(error);
        new
    }

    fn set_joined(&self, joined: bool) {
        self.inner.joined.store(joined, Ordering::Relaxed);
        if joined {
            *self.inner.error.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
    }
}

impl ClientContext for MembershipContext {}

impl ConsumerContext for MembershipContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        // The eager protocol: a revocation takes everything. Tell the owner, then wait until it
        // has stopped working on what it held, so the next owner never overlaps with it.
        if let Rebalance::Revoke(_) = rebalance {
            self.status.set_joined(false);
            self.assigned.send_replace(BTreeSet::new());
            let deadline = Instant::now() + self.release_timeout;
            while !self.held.borrow().is_empty() {
                if Instant::now() >= deadline {
                    tracing::error!(
                        held = ?*self.held.borrow(),
                        "The owner did not release its partitions in time; the next owner may overlap with it."
                    );
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            tracing::info!("Partitions revoked and released.");
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(list) => {
                let set = list.elements().iter().map(|e| e.partition()).collect();
                tracing::info!(partitions = ?set, "Assigned partitions.");
                self.status.set_joined(true);
                self.assigned.send_replace(set);
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => tracing::warn!(error = %e, "Rebalance error."),
        }
    }
}

/// A live member of a group on one topic. Dropping it leaves the group.
pub struct GroupMember {
    assigned: watch::Receiver<BTreeSet<i32>>,
    held: watch::Sender<BTreeSet<i32>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    status: MemberStatus,
}

impl std::fmt::Debug for GroupMember {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupMember")
            .field("assigned", &*self.assigned.borrow())
            .field("held", &*self.held.borrow())
            .finish_non_exhaustive()
    }
}

impl GroupMember {
    /// Joins `group` on `topic`. `session_timeout` is how long a dead member keeps its
    /// partitions; `release_timeout` bounds how long a revocation waits for [`Self::release`];
    /// `instance_id` makes the membership static (`group.instance.id`). `on_key` sees the key
    /// of every record written to this member's partitions from now on (a message to their
    /// owner, whichever process wrote it).
    pub fn join(
        config: &KafkaConfig,
        group: &str,
        topic: &str,
        session_timeout: Duration,
        release_timeout: Duration,
        instance_id: Option<&str>,
        on_key: impl Fn(&[u8]) + Send + 'static,
    ) -> Result<GroupMember, KafkaError> {
        let (assigned_tx, assigned) = watch::channel(BTreeSet::new());
        let (held, held_rx) = watch::channel(BTreeSet::new());
        let mut client = config.client_config();
        client
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "latest")
            .set("partition.assignment.strategy", "roundrobin")
            .set(
                "session.timeout.ms",
                session_timeout.as_millis().to_string(),
            )
            .set(
                "heartbeat.interval.ms",
                (session_timeout.as_millis() / 4).max(100).to_string(),
            );
        if let Some(id) = instance_id {
            client.set("group.instance.id", id);
        }
        let status = MemberStatus::default();
        let consumer: BaseConsumer<MembershipContext> = client
            .create_with_context(MembershipContext {
                assigned: assigned_tx,
                held: held_rx,
                release_timeout,
                status: status.clone(),
            })
            .map_err(|source| KafkaError::Client {
                brokers: config.brokers.clone(),
                source,
            })?;
        consumer.subscribe(&[topic]).map_err(|e| KafkaError::Read {
            topic: topic.to_string(),
            reason: e.to_string(),
        })?;
        // Polling keeps the membership alive and delivers rebalances; of the records, only their
        // keys are handed on (`on_key`). It runs on a thread of its own because a revocation
        // blocks it until the owner has released its partitions.
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let seen = status.clone();
        let name = group.to_string();
        let thread = std::thread::Builder::new()
            .name(format!("group-{group}"))
            .spawn(move || {
                while !stopping.load(Ordering::Relaxed) {
                    let polled = consumer.poll(Duration::from_millis(100));
                    if let Some(Ok(record)) = &polled
                        && let Some(key) = rdkafka::Message::key(record)
                    {
                        on_key(key);
                    }
                    if let Some(Err(e)) = polled {
                        // Shown in the owner's readiness until the next assignment; logged as a
                        // warning when it changes (a refused authorization repeats every poll).
                        if seen.failed(e.to_string()) {
                            tracing::warn!(group = %name, error = %e, "Group poll error.");
                        } else {
                            tracing::debug!(group = %name, error = %e, "Group poll error.");
                        }
                    }
                }
                // Leaves the group: the revocation callback runs once more, and the owner has
                // released everything before it drops the member.
                consumer.unsubscribe();
                let _ = consumer.poll(Duration::from_millis(100));
            })
            .map_err(|e| KafkaError::Read {
                topic: topic.to_string(),
                reason: format!("cannot start the group thread: {e}"),
            })?;
        Ok(GroupMember {
            assigned,
            held,
            stop,
            thread: Some(thread),
            status,
        })
    }

    /// Whether this member is in its group, and its last group error.
    pub fn status(&self) -> MemberStatus {
        self.status.clone()
    }

    /// Changes of the assigned partitions.
    pub fn assignments(&self) -> watch::Receiver<BTreeSet<i32>> {
        self.assigned.clone()
    }

    /// Reports the partitions the owner still works on. A revocation waits until this is empty.
    pub fn release(&self, held: BTreeSet<i32>) {
        self.held.send_replace(held);
    }
}

impl Drop for GroupMember {
    fn drop(&mut self) {
        self.held.send_replace(BTreeSet::new());
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
