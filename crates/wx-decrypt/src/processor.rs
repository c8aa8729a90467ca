//! The processor's Kafka loop, a thin shell around [`Decryptor`]:
//!
//! ```text
//! receive --(bounded)--> decrypt on the rayon pool --(in order)--> enqueue outputs
//!         --(bounded)--> await acknowledgements --> finish the raw offset --> commit (timer)
//! ```
//!
//! Records are received in partition order and their outputs enqueued in the same order, so
//! each partition's order is kept on the clean topic while every core decrypts. A raw offset is
//! finished only when every output of its record (clean and dead-letter) is acknowledged; a
//! failed send is retried with capped backoff and the offset waits. The number of records in the
//! pipeline is bounded (`batches_in_flight`), which bounds memory and pauses fetching by
//! back-pressure.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use wx_codec::Codec;
use wx_kafka::{
    Consumed, ConsumerOptions, Finisher, GroupConsumer, KafkaConfig, KafkaError, PendingDelivery,
    Producer, Ticket,
};

use crate::decryptor::{Decryptor, Outcome, RawSource};
use crate::metrics as m;
use crate::now_ms;

/// Where the processor reads and writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    pub raw: String,
    pub clean: String,
    pub dead_letter: String,
}

/// The processor's knobs (from `DecryptSettings`).
#[derive(Debug, Clone)]
pub struct ProcessorOptions {
    pub group_id: String,
    pub session_timeout: Duration,
    pub drain_timeout: Duration,
    pub commit_interval: Duration,
    pub batches_in_flight: usize,
    pub delivery_timeout: Duration,
}

/// One encoded output record.
#[derive(Debug, Clone)]
pub struct OutputRecord {
    pub topic: String,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

/// Encodes an item's outcome as the record to produce (None for a filtered item).
pub fn encode_outcome(
    codec: &Codec,
    topics: &Topics,
    outcome: &Outcome,
) -> Result<Option<OutputRecord>, wx_codec::CodecError> {
    Ok(match outcome {
        Outcome::Clean(message) => Some(OutputRecord {
            topic: topics.clean.clone(),
            key: message.conversation_id.as_bytes().to_vec(),
            value: codec.encode(message)?,
        }),
        Outcome::Dead(dead) => Some(OutputRecord {
            topic: topics.dead_letter.clone(),
            key: dead.key().into_bytes(),
            value: codec.encode(dead)?,
        }),
        Outcome::Filtered { .. } => None,
    })
}

/// Sends one output until the broker acknowledges it (retries counted in the metrics).
pub async fn send_until_acknowledged(producer: &Producer, record: &OutputRecord) {
    let retries = producer
        .send_until_acknowledged(
            &record.topic,
            &record.key,
            Some(&record.value),
            Duration::from_secs(10),
        )
        .await;
    metrics::counter!(m::SEND_RETRIES).increment(u64::from(retries));
}

/// Puts a record on the producer's queue, waiting while the queue is full.
async fn enqueue(producer: &Producer, record: &OutputRecord) -> Option<PendingDelivery> {
    loop {
        match producer.enqueue(&record.topic, &record.key, &record.value) {
            Ok(pending) => return Some(pending),
            Err(KafkaError::QueueFull) => tokio::time::sleep(Duration::from_millis(5)).await,
            Err(e) => {
                tracing::warn!(topic = %record.topic, error = %e, "Enqueueing failed; the record will be sent again.");
                return None;
            }
        }
    }
}

struct Decrypted {
    ticket: Ticket,
    partition: i32,
    outcomes: Vec<Outcome>,
    items: usize,
    started: Instant,
}

struct Sent {
    ticket: Ticket,
    partition: i32,
    deliveries: Vec<(OutputRecord, Option<PendingDelivery>)>,
    outcomes: Vec<Outcome>,
    started: Instant,
}

/// The decrypt processor: one consumer-group member.
pub struct Processor {
    decryptor: Arc<Decryptor>,
    codec: Arc<Codec>,
    producer: Producer,
    consumer: GroupConsumer,
    topics: Topics,
    options: ProcessorOptions,
}

impl std::fmt::Debug for Processor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Processor")
            .field("topics", &self.topics)
            .finish_non_exhaustive()
    }
}

impl Processor {
    /// The operator's handle on the processor's consumer.
    pub fn control(&self) -> wx_kafka::ConsumerControl {
        self.consumer.control()
    }

    /// Connects the producer and joins the group. Must be called inside a tokio runtime.
    pub fn build(
        decryptor: Arc<Decryptor>,
        codec: Arc<Codec>,
        kafka: &KafkaConfig,
        topics: Topics,
        options: ProcessorOptions,
    ) -> Result<Processor, KafkaError> {
        let producer = Producer::new(kafka, "wxstream-decrypt", options.delivery_timeout)?;
        let consumer_options =
            ConsumerOptions::new(&options.group_id, &[&topics.raw], "wxstream_decrypt")
                .with_timeouts(options.session_timeout, options.drain_timeout);
        let consumer = GroupConsumer::join(kafka, &consumer_options)?;
        Ok(Processor {
            decryptor,
            codec,
            producer,
            consumer,
            topics,
            options,
        })
    }

    /// The consumer, for pause/resume and status.
    pub fn consumer(&self) -> &GroupConsumer {
        &self.consumer
    }

    /// Runs until `shutdown`, then drains what is in flight and commits.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), KafkaError> {
        let Processor {
            decryptor,
            codec,
            producer,
            consumer,
            topics,
            options,
        } = self;
        let depth = options.batches_in_flight;
        let (decrypt_tx, decrypt_rx) = mpsc::channel::<tokio::task::JoinHandle<Decrypted>>(depth);
        let (sent_tx, sent_rx) = mpsc::channel::<Sent>(depth);
        let writer = tokio::spawn(write_outputs(
            decrypt_rx,
            sent_tx,
            codec.clone(),
            producer.clone(),
            topics.clone(),
        ));
        let acker = tokio::spawn(await_acknowledgements(
            sent_rx,
            consumer.finisher(),
            producer.clone(),
        ));

        let mut commit = tokio::time::interval(options.commit_interval);
        commit.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = commit.tick() => {
                    if let Err(e) = consumer.commit() {
                        tracing::warn!(error = %e, "Committing offsets failed; will retry.");
                    }
                    metrics::gauge!(m::IN_FLIGHT).set(consumer.in_flight() as f64);
                }
                received = consumer.recv() => {
                    let record = match received {
                        Ok(record) => record,
                        Err(e) => {
                            tracing::warn!(error = %e, "Consuming failed; retrying.");
                            tokio::time::sleep(Duration::from_millis(500)).await;
                            continue;
                        }
                    };
                    let job = spawn_decrypt(decryptor.clone(), record);
                    // Blocks while `batches_in_flight` records are in the pipeline.
                    if decrypt_tx.send(job).await.is_err() {
                        break;
                    }
                }
            }
        }
        drop(decrypt_tx);
        let _ = writer.await;
        let _ = acker.await;
        let unfinished = consumer.close().await;
        tracing::info!(unfinished, "The decrypt processor stopped after draining.");
        Ok(())
    }
}

fn spawn_decrypt(
    decryptor: Arc<Decryptor>,
    record: Consumed,
) -> tokio::task::JoinHandle<Decrypted> {
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let source = RawSource {
            topic: record.topic.clone(),
            partition: record.partition,
            offset: record.offset,
        };
        let outcomes = decryptor.process_record(record.value.as_deref(), &source, now_ms());
        let items = outcomes.len();
        let partition = record.partition.to_string();
        metrics::counter!(m::RECORDS_CONSUMED, "partition" => partition.clone()).increment(1);
        metrics::counter!(m::ITEMS_CONSUMED, "partition" => partition).increment(items as u64);
        metrics::histogram!(m::BATCH_ITEMS).record(items as f64);
        if items > 0 {
            metrics::histogram!(m::DECRYPT_SECONDS)
                .record(started.elapsed().as_secs_f64() / items as f64);
        }
        Decrypted {
            ticket: record.ticket,
            partition: record.partition,
            outcomes,
            items,
            started,
        }
    })
}

async fn write_outputs(
    mut jobs: mpsc::Receiver<tokio::task::JoinHandle<Decrypted>>,
    sent: mpsc::Sender<Sent>,
    codec: Arc<Codec>,
    producer: Producer,
    topics: Topics,
) {
    while let Some(job) = jobs.recv().await {
        let decrypted = match job.await {
            Ok(d) => d,
            Err(e) => {
                // A panic in decryption is a bug; the offset is never finished, so the record
                // is repeated after a restart rather than lost.
                tracing::error!(error = %e, "A decrypt job failed.");
                continue;
            }
        };
        let mut deliveries = Vec::with_capacity(decrypted.items);
        for outcome in &decrypted.outcomes {
            match encode_outcome(&codec, &topics, outcome) {
                Ok(Some(record)) => {
                    let pending = enqueue(&producer, &record).await;
                    deliveries.push((record, pending));
                }
                Ok(None) => {}
                Err(e) => {
                    // Our own schema rejected our own record: a bug, not bad input. Never
                    // finishing the offset keeps the record for a fixed build.
                    tracing::error!(error = %e, "Encoding an output failed.");
                }
            }
        }
        let batch = Sent {
            ticket: decrypted.ticket,
            partition: decrypted.partition,
            deliveries,
            outcomes: decrypted.outcomes,
            started: decrypted.started,
        };
        if sent.send(batch).await.is_err() {
            return;
        }
    }
}

async fn await_acknowledgements(
    mut sent: mpsc::Receiver<Sent>,
    finisher: Finisher,
    producer: Producer,
) {
    while let Some(batch) = sent.recv().await {
        for (record, pending) in batch.deliveries {
            let acknowledged = match pending {
                Some(p) => p.acknowledged().await.is_ok(),
                None => false,
            };
            if !acknowledged {
                send_until_acknowledged(&producer, &record).await;
            }
        }
        let partition = batch.partition.to_string();
        for outcome in &batch.outcomes {
            match outcome {
                Outcome::Clean(_) => {
                    metrics::counter!(m::ITEMS_PRODUCED, "partition" => partition.clone())
                        .increment(1)
                }
                Outcome::Dead(dead) => metrics::counter!(
                    m::ITEMS_DEAD_LETTERED,
                    "partition" => partition.clone(),
                    "class" => dead.error_class.clone()
                )
                .increment(1),
                Outcome::Filtered { reason } => metrics::counter!(
                    m::ITEMS_FILTERED,
                    "partition" => partition.clone(),
                    "reason" => *reason
                )
                .increment(1),
            }
        }
        metrics::histogram!(m::RECORD_SECONDS).record(batch.started.elapsed().as_secs_f64());
        finisher.finish(&batch.ticket);
    }
}
