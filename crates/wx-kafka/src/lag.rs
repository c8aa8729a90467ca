//! The consumer-lag reporter: every 2 s, until the consumer is dropped, each assigned
//! partition's lag, the records between the stage's position (the next record it will receive;
//! before it received any, the group's committed offset) and the partition's end. The end is
//! asked from the broker, because librdkafka's own figure stops moving while a partition is
//! paused: exactly when an operator watches it grow. The questions go through a client of the
//! reporter's own, so they never wait behind the stage's long-polling fetches.
//!
//! Every 10 s it also measures the group's lag as the broker sees it, for every partition of the
//! input topics whoever owns it: end offset minus the group's committed offset (the beginning
//! when nothing is committed). A stage's own lag sums to 0 when it owns nothing, even while its
//! group is stuck behind another member; this figure does not
//! (`<prefix>_group_lag_records`).

use std::sync::{Arc, Weak};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::{Offset, TopicPartitionList};

use std::sync::atomic::Ordering;

use crate::KafkaConfig;
use crate::member::{MemberContext, Shared};

/// The group's lag on `topic` as the broker sees it (exported per partition); None when the
/// broker does not answer.
fn group_lag(asker: &BaseConsumer, shared: &Shared, topic: &str, timeout: Duration) -> Option<i64> {
    let metadata = asker.fetch_metadata(Some(topic), timeout).ok()?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut list = TopicPartitionList::new();
    for p in &partitions {
        list.add_partition(topic, *p);
    }
    let committed = asker.committed_offsets(list, timeout).ok()?;
    let mut total = 0;
    for p in partitions {
        let (low, high) = asker.fetch_watermarks(topic, p, timeout).ok()?;
        let done = match committed.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o,
            _ => low,
        };
        let lag = (high - done).max(0);
        metrics::gauge!(
            format!("{}_group_lag_records", shared.metric_prefix),
            "topic" => topic.to_string(), "partition" => p.to_string()
        )
        .set(lag as f64);
        total += lag;
    }
    Some(total)
}

pub(crate) fn spawn_lag_reporter(
    consumer: Weak<StreamConsumer<MemberContext>>,
    shared: Arc<Shared>,
    config: &KafkaConfig,
    topics: Vec<String>,
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
    let committed = move |asker: &BaseConsumer, topic: &str, partition: i32| {
        let mut list = TopicPartitionList::new();
        list.add_partition(topic, partition);
        let answer = asker.committed_offsets(list, timeout).ok()?;
        match answer.find_partition(topic, partition)?.offset() {
            Offset::Offset(o) => Some(o),
            _ => None,
        }
    };
    let spawned = std::thread::Builder::new()
        .name("wx-consumer-lag".into())
        .spawn(move || {
            for round in 0u64.. {
                std::thread::sleep(Duration::from_secs(2));
                if consumer.strong_count() == 0 {
                    return;
                }
                if round % 5 == 0 {
                    let lag: Option<i64> = topics
                        .iter()
                        .map(|topic| group_lag(&asker, &shared, topic, timeout))
                        .sum();
                    if let Some(lag) = lag {
                        shared.group_lag.store(lag, Ordering::Relaxed);
                    }
                }
                let assigned = shared.assigned.borrow().clone();
                for (topic, partition) in assigned {
                    let Ok((_, high)) = asker.fetch_watermarks(&topic, partition, timeout) else {
                        continue;
                    };
                    let position = shared.tracker().position(&topic, partition);
                    let Some(done) = position.or_else(|| committed(&asker, &topic, partition))
                    else {
                        continue;
                    };
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
