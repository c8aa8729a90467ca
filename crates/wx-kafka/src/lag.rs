//! The consumer-lag reporter: every 2 s, until the consumer is dropped, each assigned
//! partition's lag, the records between the stage's position (the next record it will receive;
//! before it received any, the group's committed offset) and the partition's end. The end is
//! asked from the broker, because librdkafka's own figure stops moving while a partition is
//! paused: exactly when an operator watches it grow. The questions go through a client of the
//! reporter's own, so they never wait behind the stage's long-polling fetches.

use std::sync::{Arc, Weak};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::{Offset, TopicPartitionList};

use crate::KafkaConfig;
use crate::member::{MemberContext, Shared};

pub(crate) fn spawn_lag_reporter(
    consumer: Weak<StreamConsumer<MemberContext>>,
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
