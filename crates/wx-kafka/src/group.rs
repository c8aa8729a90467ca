//! Membership in a consumer group, used to share work that is not a stream of records: the
//! partitions a member is assigned decide what it owns (ingest: the corps whose checkpoint lives
//! in those partitions). Kafka's group protocol gives exactly one owner per partition, and a dead
//! member's partitions move to the others after `session.timeout.ms`, with no transactions.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use tokio::sync::watch;

use crate::{KafkaConfig, KafkaError};

struct MembershipContext {
    assigned: watch::Sender<BTreeSet<i32>>,
}

impl ClientContext for MembershipContext {}

impl ConsumerContext for MembershipContext {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        // The eager protocol: a revocation takes everything, an assignment gives the new set.
        match rebalance {
            Rebalance::Assign(list) => {
                let set = list.elements().iter().map(|e| e.partition()).collect();
                tracing::info!(partitions = ?set, "Assigned partitions.");
                self.assigned.send_replace(set);
            }
            Rebalance::Revoke(_) => {
                tracing::info!("Partitions revoked.");
                self.assigned.send_replace(BTreeSet::new());
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "Rebalance error."),
        }
    }
}

/// A live member of a group on one topic. Dropping it leaves the group.
pub struct GroupMember {
    consumer: Arc<StreamConsumer<MembershipContext>>,
    assigned: watch::Receiver<BTreeSet<i32>>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for GroupMember {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupMember")
            .field("assigned", &*self.assigned.borrow())
            .finish_non_exhaustive()
    }
}

impl GroupMember {
    /// Joins `group` on `topic`. `session_timeout` is how long a dead member keeps its partitions.
    pub fn join(
        config: &KafkaConfig,
        group: &str,
        topic: &str,
        session_timeout: Duration,
    ) -> Result<GroupMember, KafkaError> {
        let (tx, rx) = watch::channel(BTreeSet::new());
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
        let consumer: StreamConsumer<MembershipContext> = client
            .create_with_context(MembershipContext { assigned: tx })
            .map_err(|source| KafkaError::Client {
                brokers: config.brokers.clone(),
                source,
            })?;
        consumer.subscribe(&[topic]).map_err(|e| KafkaError::Read {
            topic: topic.to_string(),
            reason: e.to_string(),
        })?;
        let consumer = Arc::new(consumer);
        // Polling keeps the membership alive and delivers rebalances; the records themselves are
        // not this member's business.
        let polled = consumer.clone();
        let task = tokio::spawn(async move {
            loop {
                if let Err(e) = polled.recv().await {
                    tracing::debug!(error = %e, "Group poll error.");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        });
        Ok(GroupMember {
            consumer,
            assigned: rx,
            task,
        })
    }

    /// Changes of the assigned partitions.
    pub fn assignments(&self) -> watch::Receiver<BTreeSet<i32>> {
        self.assigned.clone()
    }
}

impl Drop for GroupMember {
    fn drop(&mut self) {
        self.task.abort();
        self.consumer.unsubscribe();
    }
}
