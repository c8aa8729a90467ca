//! The idempotent producer every stage writes with: `enable.idempotence=true` (so `acks=all` and
//! no reordering or duplicates on retry within a session), and a send that returns only once the
//! broker acknowledged the record.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::util::Timeout;

use crate::{KafkaConfig, KafkaError, Refusal};

/// Where an acknowledged record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    pub partition: i32,
    pub offset: i64,
}

/// An idempotent producer (acks=all). Through a broker outage librdkafka keeps retrying, and
/// when records time out in flight it bumps the producer epoch by itself (tested against Apache
/// Kafka by the broker-crash test), so a failed send is simply retried by the caller. Only a
/// *fatal* error makes a librdkafka client unusable for good (its documentation: the
/// application must create a new producer instance); then the client is replaced. A new client
/// has a new producer id, so a record whose acknowledgement was lost may be written twice:
/// at-least-once, absorbed downstream by msgid.
///
/// A send the broker refuses for good comes back as an error whose [`KafkaError::refusal`] says
/// so, and is never retried: a record too large for its topic (parked or split by the caller),
/// a topic that does not exist or may not be written (the stage stops). librdkafka, unlike
/// Java's producer, does not split a batch the broker refuses as too large, so a record refused
/// in a batch is sent once more alone (through a second client that never batches, made on the
/// first such refusal) before it counts as too large: only a topic whose `max.message.bytes` is
/// below librdkafka's `batch.size` (1 MB) can see that.
#[derive(Clone)]
pub struct Producer {
    inner: Arc<RwLock<FutureProducer>>,
    /// The unbatched client for records refused in a batch, made when first needed.
    alone: Arc<Mutex<Option<FutureProducer>>>,
    client: ClientConfig,
    brokers: String,
    /// Told when a send fails and is tried again, and when one goes through after.
    watch: Option<Arc<dyn SendWatch>>,
    /// Sends timed out in a row in the current client.
    timeouts: Arc<AtomicU32>,
}

/// Sends that time out in a row before the client is replaced (see `Producer::failed`).
const TIMEOUTS_BEFORE_RENEWAL: u32 = 3;

/// What is told of a producer's sends that fail and are tried again (a broker away, too few
/// in-sync replicas for `acks=all`, ...), and of the first that goes through after: a stage
/// shows the first in its readiness until the second (the runtime attaches one to every
/// stage's producer). Called on every acknowledged send, so `recovered` must be cheap when
/// nothing failed.
pub trait SendWatch: Send + Sync {
    fn failing(&self, topic: &str, error: &KafkaError);
    fn recovered(&self);
}

/// A produce error of rdkafka's as ours, with its [`Refusal`] if it is one.
fn produce_error(topic: &str, e: &rdkafka::error::KafkaError) -> KafkaError {
    KafkaError::Produce {
        topic: topic.to_string(),
        reason: e.to_string(),
        refusal: Refusal::of(e),
    }
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("brokers", &self.brokers)
            .finish_non_exhaustive()
    }
}

impl Producer {
    /// `delivery_timeout` bounds how long librdkafka retries one record before the send fails.
    pub fn new(
        config: &KafkaConfig,
        client_id: &str,
        delivery_timeout: Duration,
    ) -> Result<Producer, KafkaError> {
        let mut client = config.client_config();
        client
            .set("client.id", client_id)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            // Java clients' default partitioner, so keys land where Kafka tools expect them.
            .set("partitioner", "murmur2_random")
            .set("message.max.bytes", "8388608")
            .set(
                "message.timeout.ms",
                delivery_timeout.as_millis().to_string(),
            );
        let inner: FutureProducer = client.create().map_err(|source| KafkaError::Client {
            brokers: config.brokers.clone(),
            source,
        })?;
        Ok(Producer {
            inner: Arc::new(RwLock::new(inner)),
            alone: Arc::default(),
            client,
            brokers: config.brokers.clone(),
            watch: None,
            timeouts: Arc::default(),
        })
    }

    /// The same producer, telling `watch` of its sends that fail and are retried.
    pub fn watched(self, watch: Arc<dyn SendWatch>) -> Producer {
        Producer {
            watch: Some(watch),
            ..self
        }
    }

    fn current(&self) -> FutureProducer {
        self.inner.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// After a send through `used` was acknowledged.
    fn delivered(&self) {
        self.timeouts.store(0, Ordering::Relaxed);
    }

    /// After a failed send through `used`: replaces the client if it reports a fatal error, or
    /// once [`TIMEOUTS_BEFORE_RENEWAL`] sends in a row timed out in it. The second is the way
    /// out of a stuck client: after a broker was frozen (SIGSTOP, a VM paused, a network
    /// partition that kept the connections open) longer than the delivery timeout, the
    /// idempotent client's every later send timed out too, the broker long back (found by
    /// `failures.rs::output_sends_retried_show_in_readiness_until_they_go_through`).
    fn failed(&self, used: &FutureProducer, error: &rdkafka::error::KafkaError) {
        let why = if let Some(fatal) = used.client().fatal_error() {
            format!("a fatal error ({fatal:?})")
        } else if error.rdkafka_error_code() == Some(RDKafkaErrorCode::MessageTimedOut)
            && self.timeouts.fetch_add(1, Ordering::Relaxed) + 1 >= TIMEOUTS_BEFORE_RENEWAL
        {
            format!("{TIMEOUTS_BEFORE_RENEWAL} sends in a row timed out")
        } else {
            return;
        };
        let mut slot = self.inner.write().unwrap_or_else(|p| p.into_inner());
        // Another sender may have replaced it already.
        if !std::ptr::eq(slot.client().native_ptr(), used.client().native_ptr()) {
            return;
        }
        self.timeouts.store(0, Ordering::Relaxed);
        match self.client.create::<FutureProducer>() {
            Ok(fresh) => {
                tracing::warn!(reason = %why, "The producer's client is replaced with a new one.");
                *slot = fresh;
            }
            Err(e) => {
                tracing::error!(reason = %why, error = %e, "The producer's client could not be replaced.")
            }
        }
    }

    /// The client that sends one record per request, made on first use.
    fn alone(&self) -> Result<FutureProducer, KafkaError> {
        let mut slot = self.alone.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(client) = slot.as_ref() {
            return Ok(client.clone());
        }
        let mut config = self.client.clone();
        config.set("batch.num.messages", "1").set("linger.ms", "0");
        let client: FutureProducer = config.create().map_err(|source| KafkaError::Client {
            brokers: self.brokers.clone(),
            source,
        })?;
        *slot = Some(client.clone());
        Ok(client)
    }

    /// Sends one record and waits for the broker's acknowledgement. `partition` None lets the
    /// murmur2 partitioner place it by key. A record refused as too large is sent once more
    /// alone before the refusal is returned (see [`Producer`]).
    pub async fn send(
        &self,
        topic: &str,
        partition: Option<i32>,
        key: &[u8],
        payload: &[u8],
    ) -> Result<Delivered, KafkaError> {
        let record = || {
            let record = FutureRecord::to(topic).key(key).payload(payload);
            match partition {
                Some(p) => record.partition(p),
                None => record,
            }
        };
        match self.deliver(topic, record()).await {
            Err(e) if e.refusal() == Some(Refusal::TooLarge) => {
                let alone = self.alone()?;
                match alone.send(record(), Timeout::Never).await {
                    Ok(delivery) => Ok(Delivered {
                        partition: delivery.partition,
                        offset: delivery.offset,
                    }),
                    Err((e, _)) => Err(produce_error(topic, &e)),
                }
            }
            other => other,
        }
    }

    /// Writes a tombstone (a null value) for `key`: on a compacted topic it removes the key.
    pub async fn send_tombstone(&self, topic: &str, key: &[u8]) -> Result<Delivered, KafkaError> {
        let record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).key(key);
        self.deliver(topic, record).await
    }

    /// As [`Producer::send_tombstone`], to a chosen partition.
    pub async fn send_tombstone_to(
        &self,
        topic: &str,
        partition: i32,
        key: &[u8],
    ) -> Result<Delivered, KafkaError> {
        let record: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(topic).key(key).partition(partition);
        self.deliver(topic, record).await
    }

    /// Sends one record (a tombstone when `payload` is None) until the broker acknowledges
    /// it, backing off from 100 ms up to `backoff_cap` between attempts. Returns the number of
    /// failed attempts, or the error once the broker refuses it for good
    /// ([`KafkaError::refusal`]). For outputs that must not be lost: the caller's offset waits
    /// meanwhile.
    pub async fn send_until_acknowledged(
        &self,
        topic: &str,
        key: &[u8],
        payload: Option<&[u8]>,
        backoff_cap: Duration,
    ) -> Result<u32, KafkaError> {
        self.retry_until_acknowledged(topic, backoff_cap, || async move {
            match payload {
                Some(value) => self.send(topic, None, key, value).await,
                None => self.send_tombstone(topic, key).await,
            }
        })
        .await
    }

    /// As [`Producer::send_until_acknowledged`], to a chosen partition.
    pub async fn send_to_partition_until_acknowledged(
        &self,
        topic: &str,
        partition: i32,
        key: &[u8],
        value: &[u8],
        backoff_cap: Duration,
    ) -> Result<u32, KafkaError> {
        self.retry_until_acknowledged(topic, backoff_cap, || {
            self.send(topic, Some(partition), key, value)
        })
        .await
    }

    async fn deliver(
        &self,
        topic: &str,
        record: FutureRecord<'_, [u8], [u8]>,
    ) -> Result<Delivered, KafkaError> {
        let producer = self.current();
        match producer.send(record, Timeout::Never).await {
            Ok(delivery) => {
                self.delivered();
                Ok(Delivered {
                    partition: delivery.partition,
                    offset: delivery.offset,
                })
            }
            Err((e, _)) => {
                self.failed(&producer, &e);
                Err(produce_error(topic, &e))
            }
        }
    }

    /// Puts one record on the producer's queue now and returns a future of its
    /// acknowledgement. Records enqueued one after another keep that order within a partition,
    /// which an `async fn send` polled later cannot promise. Fails at once with
    /// [`KafkaError::QueueFull`] when librdkafka's queue is full (wait a moment and retry).
    pub fn enqueue(
        &self,
        topic: &str,
        key: &[u8],
        payload: &[u8],
    ) -> Result<PendingDelivery, KafkaError> {
        let record = FutureRecord::to(topic).key(key).payload(payload);
        let producer = self.current();
        match producer.send_result(record) {
            Ok(future) => Ok(PendingDelivery {
                future,
                producer,
                owner: self.clone(),
                topic: topic.to_string(),
            }),
            Err((e, _)) => {
                if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) {
                    Err(KafkaError::QueueFull)
                } else {
                    self.failed(&producer, &e);
                    Err(produce_error(topic, &e))
                }
            }
        }
    }

    /// Waits until every queued record is delivered or `timeout` passes.
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.current()
            .flush(Timeout::After(timeout))
            .map_err(|e| produce_error("", &e))
    }
}

/// One record to produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputRecord {
    pub topic: String,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

/// A record on its way: put on the queue in order, not yet acknowledged. The one "enqueue,
/// await the acknowledgement, else send again" path of every stage.
#[derive(Debug)]
pub struct InFlight {
    record: OutputRecord,
    pending: Option<PendingDelivery>,
}

impl Producer {
    /// Puts `record` on the queue now (waiting while the queue is full), so records started one
    /// after another keep their order within a partition. A record the queue refuses for
    /// another reason is sent again by [`InFlight::settle`].
    pub async fn start(&self, record: OutputRecord) -> InFlight {
        loop {
            match self.enqueue(&record.topic, &record.key, &record.value) {
                Ok(pending) => {
                    return InFlight {
                        record,
                        pending: Some(pending),
                    };
                }
                Err(KafkaError::QueueFull) => tokio::time::sleep(Duration::from_millis(5)).await,
                Err(e) => {
                    tracing::warn!(topic = %record.topic, error = %e, "Enqueueing failed; the record will be sent again.");
                    return InFlight {
                        record,
                        pending: None,
                    };
                }
            }
        }
    }
}

impl Producer {
    /// Writes records until each is acknowledged: all put on the queue first, in order, then
    /// each awaited (a failed one sent again). Returns the failed attempts, or the first
    /// refusal for good (the records after it are still awaited, so none is left in flight).
    pub async fn write_all(
        &self,
        records: Vec<OutputRecord>,
        backoff_cap: Duration,
    ) -> Result<u32, KafkaError> {
        let mut in_flight = Vec::with_capacity(records.len());
        for record in records {
            in_flight.push(self.start(record).await);
        }
        let mut failures = 0;
        let mut refused = None;
        for delivery in in_flight {
            match delivery.settle(self, backoff_cap).await {
                Ok(n) => failures += n,
                Err(e) => refused = refused.or(Some(e)),
            }
        }
        match refused {
            Some(e) => Err(e),
            None => Ok(failures),
        }
    }
}

impl InFlight {
    /// Waits for the broker's acknowledgement; if the delivery failed, sends the record again
    /// until it is acknowledged (backing off up to `backoff_cap`). Returns the failed attempts,
    /// or the error once the broker refuses the record for good ([`KafkaError::refusal`]).
    pub async fn settle(
        self,
        producer: &Producer,
        backoff_cap: Duration,
    ) -> Result<u32, KafkaError> {
        let failed = match self.pending {
            Some(pending) => pending.acknowledged().await.err(),
            None => Some(KafkaError::Produce {
                topic: self.record.topic.clone(),
                reason: "it could not be put on the producer's queue".into(),
                refusal: None,
            }),
        };
        match (&producer.watch, failed) {
            (Some(watch), None) => {
                watch.recovered();
                return Ok(0);
            }
            (None, None) => return Ok(0),
            (Some(watch), Some(e)) if e.refusal().is_none() => {
                watch.failing(&self.record.topic, &e)
            }
            _ => {}
        }
        let record = &self.record;
        let retries = producer
            .send_until_acknowledged(&record.topic, &record.key, Some(&record.value), backoff_cap)
            .await?;
        Ok(1 + retries)
    }
}

/// The acknowledgement of a record put on the queue by [`Producer::enqueue`].
pub struct PendingDelivery {
    future: rdkafka::producer::DeliveryFuture,
    producer: FutureProducer,
    owner: Producer,
    topic: String,
}

impl std::fmt::Debug for PendingDelivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingDelivery")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl PendingDelivery {
    /// Waits for the broker's acknowledgement (or the delivery timeout).
    pub async fn acknowledged(self) -> Result<Delivered, KafkaError> {
        let failed = |reason: String| KafkaError::Produce {
            topic: self.topic.clone(),
            reason,
            refusal: None,
        };
        match self.future.await {
            Ok(Ok(delivery)) => {
                self.owner.delivered();
                Ok(Delivered {
                    partition: delivery.partition,
                    offset: delivery.offset,
                })
            }
            Ok(Err((e, _))) => {
                self.owner.failed(&self.producer, &e);
                Err(produce_error(&self.topic, &e))
            }
            Err(_) => Err(failed("the producer was dropped before delivery".into())),
        }
    }
}

/// Kafka's default (Java) partitioner: murmur2 of the key, positive, modulo the partitions.
pub fn partition_for_key(key: &[u8], partitions: i32) -> i32 {
    let hash = murmur2(key) & 0x7fff_ffff;
    i32::try_from(hash % u32::try_from(partitions.max(1)).unwrap_or(1)).unwrap_or(0)
}

/// Kafka's murmur2 (org.apache.kafka.common.utils.Utils.murmur2), seed 0x9747b28c.
pub fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len();
    let mut h: u32 = 0x9747_b28c ^ u32::try_from(len).unwrap_or(u32::MAX);
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

impl Producer {
    /// Repeats `attempt` until it succeeds, backing off from 100 ms up to `backoff_cap`, each
    /// failure told to the watch; returns the number of failed attempts, or the error of a
    /// refusal for good (never retried).
    async fn retry_until_acknowledged<F, Fut>(
        &self,
        topic: &str,
        backoff_cap: Duration,
        mut attempt: F,
    ) -> Result<u32, KafkaError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<Delivered, KafkaError>>,
    {
        let mut delay = Duration::from_millis(100);
        let mut failures = 0;
        loop {
            match attempt().await {
                Ok(_) => {
                    if let Some(watch) = &self.watch {
                        watch.recovered();
                    }
                    return Ok(failures);
                }
                Err(e) if e.refusal().is_some() => {
                    tracing::error!(topic = %topic, error = %e, "The broker refuses this record for good; not retried.");
                    return Err(e);
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!(topic = %topic, error = %e, "A send failed; retrying.");
                    if let Some(watch) = &self.watch {
                        watch.failing(topic, &e);
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(backoff_cap);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafkas_reference_values() {
        // From Apache Kafka's UtilsTest.testMurmur2 (as signed ints there).
        let cases: [(&[u8], i32); 5] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
        ];
        for (key, expected) in cases {
            assert_eq!(
                murmur2(key) as i32,
                expected,
                "{}",
                String::from_utf8_lossy(key)
            );
        }
        assert!((0..6).contains(&partition_for_key(b"wwsim0", 6)));
    }
}
