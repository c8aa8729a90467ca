//! How a stage's consumer joins its group: [`ConsumerOptions`]. Its defaults live in one place,
//! `wx_runtime::ConsumerSettings`, which every stage's settings embed and which builds these.

use std::time::Duration;

/// How a stage joins its group.
#[derive(Debug, Clone)]
pub struct ConsumerOptions {
    /// The consumer group.
    pub group: String,
    /// Static membership (`group.instance.id`): a restarted member with the same id takes its
    /// partitions back without a rebalance. Two live members with one id fence each other (the
    /// older gets a fatal error and its stage stops).
    pub group_instance_id: Option<String>,
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
    /// keeps polling meanwhile ([`crate::GroupConsumer::poll_while_paused`]).
    pub max_poll_interval: Duration,
}
