//! The decrypt stage's handler on the runtime's consumer loop, a thin shell around
//! [`Decryptor`]:
//!
//! ```text
//! receive --(bounded)--> decrypt on the rayon pool --(in order)--> encode, enqueue outputs
//!         --(bounded)--> await acknowledgements --> finish the raw offset
//! ```
//!
//! Records are received in partition order and their outputs enqueued in the same order, so
//! each partition's order is kept on the clean topic while every core decrypts. A raw offset is
//! finished only when every output of its record (clean and dead-letter) is acknowledged; a
//! failed send is retried with capped backoff and the offset waits. The number of records in the
//! pipeline is bounded (`batches_in_flight`), which bounds memory and pauses fetching by
//! back-pressure. A clean message the clean topic refuses as too large is parked (`too_large`,
//! the clean record as its original) instead, so the one acknowledger never holds the other
//! partitions behind it. An output that cannot be encoded, an output refused for good otherwise
//! (its topic gone or not writable), or a decrypt job that panics, stops the stage with the
//! cause; that record's offset is never finished.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use wx_codec::{ChatMessage, Codec, DeadLetter, ParkedFrom, now_ms};
use wx_kafka::{Consumed, Finisher, InFlight, KafkaError, OutputRecord, Producer, Refusal, Ticket};
use wx_runtime::{Handler, Parker, StageConsumer, StageContext, StageError};

use crate::decryptor::{Decryptor, Outcome, RawSource, original_format};
use crate::metrics as m;

/// How long a failed output send waits at most before it is tried again.
const SEND_BACKOFF_CAP: Duration = Duration::from_secs(10);

/// Where outcomes are written: clean messages to the clean topic, dead letters through the
/// runtime's parker. Shared by the processor and redrive.
#[derive(Debug, Clone)]
pub struct Outputs {
    codec: Arc<Codec>,
    clean_topic: String,
    parker: Parker,
    producer: Producer,
}

impl Outputs {
    pub fn new(context: &StageContext, producer: Producer) -> Outputs {
        Outputs {
            codec: context.codec.clone(),
            clean_topic: context.topic("clean").to_string(),
            parker: context.parker(producer.clone(), original_format::RAW_RECORD),
            producer,
        }
    }

    /// The clean topic.
    pub fn clean_topic(&self) -> &str {
        &self.clean_topic
    }

    /// The dead-letter topic.
    pub fn dead_letter_topic(&self) -> &str {
        self.parker.topic()
    }

    /// Waits until a raw record's schema id can be decoded ([`Parker::schema_ready`]).
    pub async fn schema_ready(&self, value: &[u8]) -> Result<(), StageError> {
        self.parker.schema_ready(value, None).await
    }

    pub fn producer(&self) -> &Producer {
        &self.producer
    }

    /// The record an outcome is written as (None for a filtered item).
    pub fn encode(&self, outcome: &Outcome) -> Result<Option<OutputRecord>, StageError> {
        Ok(match outcome {
            Outcome::Clean(message) => Some(OutputRecord {
                topic: self.clean_topic.clone(),
                key: message.partition_key().into_bytes(),
                value: self.encode_clean(message)?,
            }),
            Outcome::Dead(dead) => Some(self.parker.encode(dead)?),
            Outcome::Filtered { .. } => None,
        })
    }

    /// A clean message's value on the clean topic.
    fn encode_clean(&self, message: &ChatMessage) -> Result<Vec<u8>, StageError> {
        self.codec
            .encode(message)
            .map_err(|source| StageError::Encode {
                subject: "clean message",
                source,
            })
    }

    /// Writes records until each is acknowledged (all enqueued first, in order); counts the
    /// retries. The error of a refusal for good.
    pub async fn write_all(&self, records: Vec<OutputRecord>) -> Result<(), KafkaError> {
        let retries = self.producer.write_all(records, SEND_BACKOFF_CAP).await?;
        metrics::counter!(m::SEND_RETRIES).increment(u64::from(retries));
        Ok(())
    }

    /// Waits for a delivery's acknowledgement, sending it again while it fails. A clean message
    /// the clean topic refuses as too large is parked instead, and its outcome becomes that
    /// letter; any other refusal for good is [`StageError::Refused`].
    async fn settle(&self, delivery: InFlight, outcome: &mut Outcome) -> Result<(), StageError> {
        let refused = match delivery.settle(&self.producer, SEND_BACKOFF_CAP).await {
            Ok(retries) => {
                metrics::counter!(m::SEND_RETRIES).increment(u64::from(retries));
                return Ok(());
            }
            Err(e) => e,
        };
        let Outcome::Clean(message) = &*outcome else {
            return Err(StageError::refused(refused));
        };
        if refused.refusal() != Some(Refusal::TooLarge) {
            return Err(StageError::refused(refused));
        }
        let letter = self.too_large(message, &refused)?;
        tracing::warn!(corp = %message.corp_id, partition = message.source.partition, offset = message.source.offset, "A clean message is larger than the clean topic takes; parked as too_large.");
        self.parker.park(&letter).await?;
        *outcome = Outcome::Dead(letter);
        Ok(())
    }

    /// The letter of a clean message the clean topic refuses as too large: the clean record is
    /// its original (read back by redrive once the topic's limit is raised), at its raw source.
    fn too_large(
        &self,
        message: &ChatMessage,
        refused: &KafkaError,
    ) -> Result<DeadLetter, StageError> {
        let original = self.encode_clean(message)?;
        let cause = format!(
            "the clean message is {} bytes encoded, more than {} takes: {refused}",
            original.len(),
            self.clean_topic
        );
        Ok(DeadLetter::new(
            crate::STAGE,
            ParkedFrom {
                topic: &message.source.topic,
                partition: message.source.partition,
                offset: message.source.offset,
                seq: message.source.seq,
            },
            original,
            wx_runtime::CLEAN_RECORD,
            wx_runtime::TOO_LARGE,
            cause,
            now_ms(),
        )
        .about_message(message))
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
    /// Each delivery with the index of the outcome it carries.
    deliveries: Vec<(usize, InFlight)>,
    outcomes: Vec<Outcome>,
    started: Instant,
}

/// The running pipeline: decrypt jobs in receive order, the writer and the acknowledger.
pub(crate) struct Processor {
    decryptor: Arc<Decryptor>,
    /// Resolves raw records' schema ids before they are decrypted (a registry's ids).
    schemas: Parker,
    jobs: Option<mpsc::Sender<JoinHandle<Decrypted>>>,
    writer: Option<JoinHandle<Result<(), StageError>>>,
    acker: Option<JoinHandle<Result<(), StageError>>>,
}

impl Processor {
    pub(crate) fn start(
        decryptor: Arc<Decryptor>,
        outputs: Outputs,
        consumer: &StageConsumer,
        depth: usize,
    ) -> Processor {
        let (jobs, decrypted) = mpsc::channel::<JoinHandle<Decrypted>>(depth);
        let (sent_tx, sent_rx) = mpsc::channel::<Sent>(depth);
        let schemas = outputs.parker.clone();
        let writer = tokio::spawn(write_outputs(decrypted, sent_tx, outputs.clone()));
        let acker = tokio::spawn(await_acknowledgements(
            sent_rx,
            consumer.finisher(),
            outputs,
        ));
        Processor {
            decryptor,
            schemas,
            jobs: Some(jobs),
            writer: Some(writer),
            acker: Some(acker),
        }
    }

    /// Waits until what the writer sent is acknowledged (the acknowledger ends once the writer
    /// has, or on a refusal for good), so the outputs of the records before a failure are
    /// delivered, not purged with the producer. The acknowledger's error, if it stopped on one.
    async fn settle_sent(&mut self) -> Result<(), StageError> {
        match self.acker.take() {
            Some(acker) => acker.await.unwrap_or(Err(StageError::Panicked {
                what: "the decrypt acknowledger",
            })),
            None => Ok(()),
        }
    }

    /// Closes the job queue (the writer ends once it has written what it holds), then waits
    /// for the writer and for the acknowledgement of what it sent: each one's outcome.
    async fn wind_down(&mut self) -> (Result<(), StageError>, Result<(), StageError>) {
        self.jobs = None;
        let written = match self.writer.take() {
            Some(writer) => writer.await.unwrap_or(Err(StageError::Panicked {
                what: "the decrypt writer",
            })),
            None => Ok(()),
        };
        (written, self.settle_sent().await)
    }

    /// The writer or the acknowledger stopped early: why (after what was sent before is
    /// acknowledged). A writer that ends without an error stopped because the acknowledger did.
    async fn writer_failed(&mut self) -> StageError {
        match self.wind_down().await {
            (Err(e), _) | (Ok(()), Err(e)) => e,
            (Ok(()), Ok(())) => StageError::Panicked {
                what: "the decrypt writer",
            },
        }
    }
}

impl Handler for Processor {
    async fn handle(
        &mut self,
        batch: Vec<Consumed>,
        consumer: &StageConsumer,
    ) -> Result<(), StageError> {
        for record in batch {
            if let Some(value) = record.value.as_deref() {
                self.schemas.schema_ready(value, Some(consumer)).await?;
            }
            let job = spawn_decrypt(self.decryptor.clone(), record);
            // Blocks while `batches_in_flight` records are in the pipeline.
            let sent = match &self.jobs {
                Some(jobs) => jobs.send(job).await.is_ok(),
                None => false,
            };
            if !sent {
                return Err(self.writer_failed().await);
            }
        }
        Ok(())
    }

    async fn before_commit(&mut self, consumer: &StageConsumer) -> Result<(), StageError> {
        metrics::gauge!(m::IN_FLIGHT).set(consumer.in_flight() as f64);
        if self.writer.as_ref().is_some_and(JoinHandle::is_finished)
            || self.acker.as_ref().is_some_and(JoinHandle::is_finished)
        {
            return Err(self.writer_failed().await);
        }
        Ok(())
    }

    async fn stop(mut self) -> Result<(), StageError> {
        // The writer and the acknowledger finish what is in flight.
        let (written, acknowledged) = self.wind_down().await;
        written.and(acknowledged)
    }
}

fn spawn_decrypt(decryptor: Arc<Decryptor>, record: Consumed) -> JoinHandle<Decrypted> {
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

/// Takes decrypt jobs in receive order, encodes and enqueues their outputs in that order.
/// Stops with the cause on an output that cannot be encoded or a job that panicked: that
/// record never reaches the acknowledger, so its offset is never finished.
async fn write_outputs(
    mut jobs: mpsc::Receiver<JoinHandle<Decrypted>>,
    sent: mpsc::Sender<Sent>,
    outputs: Outputs,
) -> Result<(), StageError> {
    while let Some(job) = jobs.recv().await {
        let decrypted = job.await.map_err(|e| {
            tracing::error!(error = %e, "A decrypt job failed; stopping the stage.");
            StageError::Panicked {
                what: "a decrypt job",
            }
        })?;
        let mut records = Vec::with_capacity(decrypted.items);
        for (i, outcome) in decrypted.outcomes.iter().enumerate() {
            if let Some(record) = outputs.encode(outcome)? {
                records.push((i, record));
            }
        }
        let mut deliveries = Vec::with_capacity(records.len());
        for (i, record) in records {
            deliveries.push((i, outputs.producer.start(record).await));
        }
        let batch = Sent {
            ticket: decrypted.ticket,
            partition: decrypted.partition,
            deliveries,
            outcomes: decrypted.outcomes,
            started: decrypted.started,
        };
        if sent.send(batch).await.is_err() {
            return Ok(());
        }
    }
    Ok(())
}

/// Settles each record's outputs in receive order, then finishes its offset. Stops on a refusal
/// for good that is not a clean message too large (that record is never finished).
async fn await_acknowledgements(
    mut sent: mpsc::Receiver<Sent>,
    finisher: Finisher,
    outputs: Outputs,
) -> Result<(), StageError> {
    while let Some(mut batch) = sent.recv().await {
        for (i, delivery) in std::mem::take(&mut batch.deliveries) {
            if let Err(e) = outputs.settle(delivery, &mut batch.outcomes[i]).await {
                tracing::error!(partition = batch.partition, error = %e, "An output is refused for good; stopping the stage.");
                return Err(e);
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
    Ok(())
}
