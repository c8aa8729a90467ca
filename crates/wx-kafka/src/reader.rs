//! Reading a partition (or a topic) from the beginning to its current end, outside any consumer
//! group: how a worker rebuilds state kept in a compacted topic (ingest checkpoints), and how
//! tests read what a stage wrote.

use std::time::{Duration, Instant};

use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use crate::{KafkaConfig, KafkaError};

/// One record as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
}

pub(crate) fn reader(config: &KafkaConfig) -> Result<BaseConsumer, KafkaError> {
    let mut client = config.client_config();
    client
        .set("group.id", "wxstream-reader-unused")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false");
    client.create().map_err(|source| KafkaError::Client {
        brokers: config.brokers.clone(),
        source,
    })
}

/// Every record of every partition of `topic` up to the end it had when the call started.
/// Blocking: call it from `spawn_blocking` (or `block_in_place`) in async code.
pub fn read_topic(
    config: &KafkaConfig,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<Record>, KafkaError> {
    let partitions = partition_count(config, topic)?;
    read_to_end(config, topic, &(0..partitions).collect::<Vec<_>>(), timeout)
}

/// Every record of `partitions` of `topic` up to the end they had when the call started.
/// Blocking: call it from `spawn_blocking` in async code.
pub fn read_to_end(
    config: &KafkaConfig,
    topic: &str,
    partitions: &[i32],
    timeout: Duration,
) -> Result<Vec<Record>, KafkaError> {
    read_until_end(config, topic, partitions, Offset::Beginning, timeout)
        .map(|(records, _)| records)
}

/// The records of the last `n` offsets of a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tail {
    pub records: Vec<Record>,
    /// The partition holds offsets before those `n`: what is not in the tail may be earlier.
    /// Decided by offsets, not by counting records: after compaction, or with transaction
    /// markers, `n` offsets hold fewer than `n` records.
    pub earlier: bool,
}

/// The records of the last `n` offsets of `partition` of `topic`, up to the end it had when the
/// call started. Blocking.
pub fn read_tail(
    config: &KafkaConfig,
    topic: &str,
    partition: i32,
    n: i64,
    timeout: Duration,
) -> Result<Tail, KafkaError> {
    let (records, marks) =
        read_until_end(config, topic, &[partition], Offset::OffsetTail(n), timeout)?;
    let earlier = marks
        .iter()
        .any(|&(_, low, high)| low < high.saturating_sub(n));
    Ok(Tail { records, earlier })
}

/// A partition's (partition, low, high) watermarks.
type Watermarks = (i32, i64, i64);

/// The records from `from` to the end each partition had when the call started, and each
/// partition's watermarks then.
fn read_until_end(
    config: &KafkaConfig,
    topic: &str,
    partitions: &[i32],
    from: Offset,
    timeout: Duration,
) -> Result<(Vec<Record>, Vec<Watermarks>), KafkaError> {
    let consumer = reader(config)?;
    let mut ends = Vec::new();
    let mut marks = Vec::new();
    let mut list = TopicPartitionList::new();
    for &p in partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, config.request_timeout())
            .map_err(|source| KafkaError::Unreachable {
                brokers: config.brokers.clone(),
                timeout: config.request_timeout(),
                source,
            })?;
        marks.push((p, low, high));
        if high > low {
            ends.push((p, high));
            list.add_partition_offset(topic, p, from)
                .map_err(|e| KafkaError::Read {
                    topic: topic.to_string(),
                    reason: e.to_string(),
                })?;
        }
    }
    let mut out = Vec::new();
    if ends.is_empty() {
        return Ok((out, marks));
    }
    consumer.assign(&list).map_err(|e| KafkaError::Read {
        topic: topic.to_string(),
        reason: e.to_string(),
    })?;
    let deadline = Instant::now() + timeout;
    let mut remaining = ends.clone();
    while !remaining.is_empty() {
        if Instant::now() > deadline {
            return Err(KafkaError::Read {
                topic: topic.to_string(),
                reason: format!(
                    "did not reach the end of partitions {remaining:?} within {timeout:?}"
                ),
            });
        }
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            // Nothing more to hand out: a partition whose position reached its end is read,
            // even when its last offsets hold no record a consumer sees (transaction markers).
            if let Ok(positions) = consumer.position() {
                remaining.retain(|(p, high)| {
                    !matches!(
                        positions.find_partition(topic, *p).map(|e| e.offset()),
                        Some(Offset::Offset(at)) if at >= *high
                    )
                });
            }
            continue;
        };
        let message = message.map_err(|e| KafkaError::Read {
            topic: topic.to_string(),
            reason: e.to_string(),
        })?;
        out.push(Record {
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            value: message.payload().map(<[u8]>::to_vec),
        });
        remaining.retain(|(p, high)| !(*p == message.partition() && message.offset() + 1 >= *high));
    }
    Ok((out, marks))
}

/// What [`follow_since`] hands its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Followed<'a> {
    /// A record's key, value (None: a tombstone) and timestamp (ms), in offset order per
    /// partition.
    Record {
        key: Option<&'a [u8]>,
        value: Option<&'a [u8]>,
        timestamp: Option<i64>,
    },
    /// Every partition reached the end it had when following began: what was written before
    /// the call is all handed over (once).
    CaughtUp,
}

/// Follows every partition of `topic` from its first record written at or after `since_ms`,
/// handing each record's key and timestamp to `each`, and [`Followed::CaughtUp`] once what
/// was there when it began is read; then goes on with new records while `keep_going()` holds
/// (checked at least every 500 ms). Outside any consumer group. Blocking: run it on a thread
/// of its own. An error before the first record (metadata, offsets) is returned, for the
/// caller to retry; a broker that goes away afterwards is waited for (librdkafka reconnects).
pub fn follow_since(
    config: &KafkaConfig,
    topic: &str,
    since_ms: i64,
    keep_going: impl Fn() -> bool,
    mut each: impl FnMut(Followed<'_>),
) -> Result<(), KafkaError> {
    let partitions = partition_count(config, topic)?;
    let consumer = reader(config)?;
    let unreachable = |source| KafkaError::Unreachable {
        brokers: config.brokers.clone(),
        timeout: config.request_timeout(),
        source,
    };
    let read_error = |e: rdkafka::error::KafkaError| KafkaError::Read {
        topic: topic.to_string(),
        reason: e.to_string(),
    };
    let mut times = TopicPartitionList::new();
    let mut remaining = Vec::new();
    for p in 0..partitions {
        let (_, high) = consumer
            .fetch_watermarks(topic, p, config.request_timeout())
            .map_err(unreachable)?;
        remaining.push((p, high));
        times
            .add_partition_offset(topic, p, Offset::Offset(since_ms))
            .map_err(read_error)?;
    }
    // Partitions with nothing at or after `since_ms` come back as the end: only new records.
    let start = consumer
        .offsets_for_times(times, config.request_timeout())
        .map_err(unreachable)?;
    remaining.retain(
        |(p, high)| match start.find_partition(topic, *p).map(|e| e.offset()) {
            Some(Offset::Offset(at)) => at < *high,
            // The end: nothing at or after `since_ms` to catch up with.
            _ => false,
        },
    );
    consumer.assign(&start).map_err(read_error)?;
    let mut caught_up = false;
    while keep_going() {
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(message)) => {
                each(Followed::Record {
                    key: message.key(),
                    value: message.payload(),
                    timestamp: message.timestamp().to_millis(),
                });
                let (p, at) = (message.partition(), message.offset());
                remaining.retain(|&(rp, high)| !(rp == p && at + 1 >= high));
            }
            Some(Err(e)) => {
                tracing::debug!(topic, error = %e, "Following a topic: a poll failed; going on.");
            }
            None => {
                if let Ok(positions) = consumer.position() {
                    remaining.retain(|(p, high)| {
                        !matches!(
                            positions.find_partition(topic, *p).map(|e| e.offset()),
                            Some(Offset::Offset(at)) if at >= *high
                        )
                    });
                }
            }
        }
        if !caught_up && remaining.is_empty() {
            caught_up = true;
            each(Followed::CaughtUp);
        }
    }
    Ok(())
}

/// Whether the broker answers a metadata request (within `timeout`). Blocking.
pub fn ping(config: &KafkaConfig, timeout: Duration) -> Result<(), KafkaError> {
    reader(config)?
        .fetch_metadata(None, timeout)
        .map(|_| ())
        .map_err(|source| KafkaError::Unreachable {
            brokers: config.brokers.clone(),
            timeout,
            source,
        })
}

/// The number of partitions of `topic`.
pub fn partition_count(config: &KafkaConfig, topic: &str) -> Result<i32, KafkaError> {
    let consumer = reader(config)?;
    let metadata = consumer
        .fetch_metadata(Some(topic), config.request_timeout())
        .map_err(|source| KafkaError::Unreachable {
            brokers: config.brokers.clone(),
            timeout: config.request_timeout(),
            source,
        })?;
    let count = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map_or(0, |t| t.partitions().len());
    if count == 0 {
        return Err(KafkaError::Read {
            topic: topic.to_string(),
            reason: "the topic does not exist (run `wxstream topology apply`)".into(),
        });
    }
    Ok(i32::try_from(count).unwrap_or(i32::MAX))
}

/// The end offset (high watermark) of every partition of `topic`. Blocking.
pub fn end_offsets(config: &KafkaConfig, topic: &str) -> Result<Vec<(i32, i64)>, KafkaError> {
    Ok(watermarks(config, topic)?
        .into_iter()
        .map(|(p, _, high)| (p, high))
        .collect())
}

/// The low and high watermarks (first offset kept, end offset) of every partition of `topic`.
/// Blocking.
pub fn watermarks(config: &KafkaConfig, topic: &str) -> Result<Vec<(i32, i64, i64)>, KafkaError> {
    let partitions = partition_count(config, topic)?;
    let consumer = reader(config)?;
    (0..partitions)
        .map(|p| {
            consumer
                .fetch_watermarks(topic, p, config.request_timeout())
                .map(|(low, high)| (p, low, high))
                .map_err(|source| KafkaError::Unreachable {
                    brokers: config.brokers.clone(),
                    timeout: config.request_timeout(),
                    source,
                })
        })
        .collect()
}

/// The sum over `topic`'s partitions of the offsets `group` has committed (0 where none).
/// Blocking. For tests and operators' checks of a group's progress.
pub fn committed_total(config: &KafkaConfig, group: &str, topic: &str) -> Result<i64, KafkaError> {
    Ok(committed_offsets(config, group, topic)?
        .iter()
        .filter_map(|(_, o)| *o)
        .sum())
}

/// The offset `group` has committed for every partition of `topic` (None where it has not).
pub fn committed_offsets(
    config: &KafkaConfig,
    group: &str,
    topic: &str,
) -> Result<Vec<(i32, Option<i64>)>, KafkaError> {
    let partitions = partition_count(config, topic)?;
    let consumer = group_client(config, group)?;
    let mut list = TopicPartitionList::new();
    for p in 0..partitions {
        list.add_partition(topic, p);
    }
    let committed = consumer
        .committed_offsets(list, config.request_timeout())
        .map_err(|e| KafkaError::Read {
            topic: topic.to_string(),
            reason: e.to_string(),
        })?;
    Ok(committed
        .elements()
        .iter()
        .map(|e| {
            let offset = match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            };
            (e.partition(), offset)
        })
        .collect())
}

/// A client of `group` that never joins it: reads and commits the group's offsets.
fn group_client(config: &KafkaConfig, group: &str) -> Result<BaseConsumer, KafkaError> {
    let mut client = config.client_config();
    client
        .set("group.id", group)
        .set("enable.auto.commit", "false");
    client.create().map_err(|source| KafkaError::Client {
        brokers: config.brokers.clone(),
        source,
    })
}

/// Commits `offsets` (partition, next offset to read) of `topic` for `group`, from outside the
/// group: the broker takes it only while the group has no member (Kafka Connect's
/// `PATCH /connectors/{name}/offsets` on a stopped sink). Blocking.
pub fn commit_offsets(
    config: &KafkaConfig,
    group: &str,
    topic: &str,
    offsets: &[(i32, i64)],
) -> Result<(), KafkaError> {
    let consumer = group_client(config, group)?;
    let mut list = TopicPartitionList::new();
    for (partition, offset) in offsets {
        list.add_partition_offset(topic, *partition, Offset::Offset(*offset))
            .map_err(|e| KafkaError::Group {
                group: group.to_string(),
                reason: e.to_string(),
            })?;
    }
    consumer
        .commit(&list, rdkafka::consumer::CommitMode::Sync)
        .map_err(|e| KafkaError::Group {
            group: group.to_string(),
            reason: format!("committing offsets failed: {e}"),
        })
}

/// The Kafka cluster's id (None when the broker does not answer in time). Blocking.
pub fn cluster_id(config: &KafkaConfig) -> Option<String> {
    reader(config)
        .ok()?
        .client()
        .fetch_cluster_id(config.request_timeout())
}
