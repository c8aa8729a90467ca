//! The one dead-letter path of every stage. A letter is built by [`wx_codec::DeadLetter::new`]
//! (the same fields from every stage) and keyed by [`wx_codec::DeadLetter::key`] (unique per
//! parked record: `<stage>:<corp>/<msgid>` where known, else its source
//! `<stage>:<topic>/<partition>/<offset>`). The [`Parker`] encodes and sends it; an encode
//! failure is a [`StageError::Encode`] (the stage stops and the record's offset is never
//! finished) and a send is retried until the broker acknowledges it, so a record is finished
//! only once its letter is durable.

use std::sync::Arc;
use std::time::Duration;

use wx_codec::{ChatMessage, Codec, DeadLetter, ParkedFrom};
use wx_kafka::{Consumed, OutputRecord, Producer};
use wx_topology::ErrorTolerance;

use tokio_util::sync::CancellationToken;

use crate::error::StageError;
use crate::health::StageHealth;
use crate::{Backoff, StageConsumer, StageContext};

/// How the originals of a clean-topic stage's letters are read back: a clean record's value.
pub const CLEAN_RECORD: &str = "clean-record";

/// The dead-letter class of an input record that does not decode.
pub const UNDECODABLE: &str = "undecodable";

/// The dead-letter class of a record larger than where it must go takes, even alone: a clean
/// message over the clean topic's `max.message.bytes` (decrypt), a row over MySQL's
/// `max_allowed_packet`, a document over the search endpoint's request limit (sink targets),
/// a GetChatData item over the raw topic's limit (ingest).
pub const TOO_LARGE: &str = "too_large";

/// The counter of a stage's parked records, `wxstream_<stage>_dead_lettered_total`.
fn dead_lettered_metric(stage: &str) -> String {
    format!("wxstream_{stage}_dead_lettered_total")
}

/// How the replay of one parked clean record ended ([`Parker::replay_clean_letters`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replayed {
    /// It is where it belongs now: its letter is tombstoned.
    Moved,
    /// It failed again: its letter is written again (`attempts` + 1) with this class and cause.
    Again { class: String, cause: String },
    /// The replay was interrupted: this letter and the rest stay as they are.
    Stopped,
}

/// Encodes and sends a stage's dead letters; with `errors.tolerance: none`, refuses to park
/// ([`StageError::Intolerant`]): the stage stops on the record instead.
#[derive(Debug, Clone)]
pub struct Parker {
    stage: &'static str,
    producer: Producer,
    codec: Arc<Codec>,
    topic: String,
    /// How the originals of [`Parker::letter`] are read back (`clean-record`, ...).
    original_format: &'static str,
    tolerance: ErrorTolerance,
    /// Where a wait for the schema registry shows ([`Parker::schema_ready`]).
    health: Arc<StageHealth>,
    /// The stage's stop, which ends such a wait.
    shutdown: CancellationToken,
}

/// The component of a stage's health that a schema registry which cannot answer fails.
pub const SCHEMA_REGISTRY: &str = "schema_registry";

/// Counts the tries of a stage that the schema registry could not answer, by stage.
pub const SCHEMA_REGISTRY_ERRORS: &str = "wxstream_schema_registry_errors_total";

impl Parker {
    /// The parker of `context`'s stage ([`StageContext::parker`]): its dead-letter topic, codec,
    /// tolerance, health and stop.
    pub(crate) fn new(
        context: &StageContext,
        producer: Producer,
        original_format: &'static str,
    ) -> Parker {
        Parker {
            stage: context.stage,
            producer,
            codec: context.codec.clone(),
            topic: context.topic(crate::DEAD_LETTER).to_string(),
            original_format,
            tolerance: context.connector.errors_tolerance,
            health: context.health.clone(),
            shutdown: context.shutdown.clone(),
        }
    }

    /// Returns once the codec can decode `value` as far as its schema id goes: at once without
    /// a registry or for a known id, else after the registry answered for the id (a schema, or
    /// "unknown", which then parks the record as undecodable). While the registry cannot answer
    /// (down, timed out, refusing the credentials) it retries with backoff, the stage's
    /// `/readyz` shows `schema_registry` failing and [`SCHEMA_REGISTRY_ERRORS`] counts: a good
    /// record is never parked for the registry's trouble. With the stage's `consumer`, fetching
    /// is paused meanwhile and the consumer polled (it stays in its group, as a store's retry
    /// does). The stage's stop ends the wait with [`StageError::Interrupted`] (the record
    /// unfinished).
    pub async fn schema_ready(
        &self,
        value: &[u8],
        consumer: Option<&StageConsumer>,
    ) -> Result<(), StageError> {
        let mut backoff: Option<Backoff> = None;
        let mut paused_here = false;
        loop {
            match self.codec.prepare(value).await {
                Ok(()) => {
                    if backoff.is_some() {
                        self.health.recovered(SCHEMA_REGISTRY);
                        tracing::info!(stage = self.stage, "The schema registry answers again.");
                    }
                    if let Some(consumer) = consumer.filter(|_| paused_here) {
                        consumer.hold(false);
                    }
                    return Ok(());
                }
                Err(e) => {
                    self.health.failing(SCHEMA_REGISTRY, &e);
                    metrics::counter!(SCHEMA_REGISTRY_ERRORS, "stage" => self.stage).increment(1);
                    let delay = backoff
                        .get_or_insert_with(|| {
                            Backoff::new(Duration::from_millis(500), Duration::from_secs(30))
                        })
                        .next_delay();
                    tracing::warn!(stage = self.stage, error = %e, retry_in_ms = delay.as_millis() as u64, "The schema registry cannot resolve a record's schema id; waiting, nothing parked.");
                    let waited = match consumer {
                        Some(consumer) => {
                            paused_here |= consumer.hold(true);
                            consumer.back_off(delay, &self.shutdown).await?
                        }
                        None => tokio::select! {
                            _ = self.shutdown.cancelled() => false,
                            _ = tokio::time::sleep(delay) => true,
                        },
                    };
                    if !waited {
                        return Err(StageError::Interrupted);
                    }
                }
            }
        }
    }

    /// A letter for a consumed record (its whole value is the original), without identity;
    /// name the message with [`DeadLetter::about_message`] when it decoded.
    pub fn letter(
        &self,
        record: &Consumed,
        class: &str,
        message: impl Into<String>,
        now_ms: i64,
    ) -> DeadLetter {
        DeadLetter::new(
            self.stage,
            ParkedFrom {
                topic: &record.topic,
                partition: record.partition,
                offset: record.offset,
                seq: None,
            },
            record.value.clone().unwrap_or_default(),
            self.original_format,
            class,
            message,
            now_ms,
        )
    }

    /// The record a letter is written as; with `errors.tolerance: none`, the error that stops
    /// the stage on the letter's record instead (every park passes here).
    pub fn encode(&self, letter: &DeadLetter) -> Result<OutputRecord, StageError> {
        if self.tolerance == ErrorTolerance::None {
            return Err(StageError::Intolerant {
                source_topic: letter.source_topic.clone(),
                partition: letter.source_partition,
                offset: letter.source_offset,
                class: letter.error_class.clone(),
            });
        }
        self.encode_letter(letter)
    }

    /// The record a letter is written as, whatever the tolerance (a letter parked before,
    /// written again by redrive).
    fn encode_letter(&self, letter: &DeadLetter) -> Result<OutputRecord, StageError> {
        let value = self
            .codec
            .encode(letter)
            .map_err(|source| StageError::Encode {
                subject: "dead letter",
                source,
            })?;
        Ok(OutputRecord {
            topic: self.topic.clone(),
            key: letter.key().into_bytes(),
            value,
        })
    }

    /// Parks a letter: encoded, then sent until the broker acknowledges it. Only then may the
    /// caller finish the parked record's offset. A letter always fits (its original is
    /// bounded), so a refusal for good is the dead-letter topic's configuration:
    /// [`StageError::Refused`].
    pub async fn park(&self, letter: &DeadLetter) -> Result<(), StageError> {
        let record = self.encode(letter)?;
        self.producer
            .start(record)
            .await
            .settle(&self.producer, Duration::from_secs(10))
            .await
            .map_err(StageError::refused)?;
        Ok(())
    }

    /// Parks a letter ([`Parker::park`]) and counts it:
    /// `wxstream_<stage>_dead_lettered_total{partition, class}`.
    pub async fn park_counted(&self, letter: &DeadLetter) -> Result<(), StageError> {
        self.park(letter).await?;
        metrics::counter!(
            dead_lettered_metric(self.stage),
            "partition" => letter.source_partition.to_string(),
            "class" => letter.error_class.clone()
        )
        .increment(1);
        Ok(())
    }

    /// Clean-record intake, the same for every stage that reads the clean topic: the record's
    /// message, or None for a tombstone or a record that does not decode (then parked as
    /// [`UNDECODABLE`] with its whole value, and counted, before this returns).
    pub async fn clean_message(
        &self,
        record: &Consumed,
        now_ms: i64,
        consumer: &StageConsumer,
    ) -> Result<Option<ChatMessage>, StageError> {
        let Some(value) = record.value.as_deref() else {
            return Ok(None);
        };
        self.schema_ready(value, Some(consumer)).await?;
        match self.codec.decode::<ChatMessage>(value) {
            Ok(message) => Ok(Some(message)),
            Err(e) => {
                tracing::warn!(stage = self.stage, partition = record.partition, offset = record.offset, error = %e, "A clean record does not decode; parked.");
                let letter = self.letter(record, UNDECODABLE, e.to_string(), now_ms);
                self.park_counted(&letter).await?;
                Ok(None)
            }
        }
    }

    /// A replayed letter that failed again, written again under its `key`: the new cause,
    /// `attempts` + 1, the first failure time kept (redrive). Sent until acknowledged; a letter
    /// that cannot be encoded stays as it was (logged).
    pub async fn park_again(&self, key: &str, dead: &DeadLetter, class: &str, reason: String) {
        let again = DeadLetter {
            error_class: class.to_string(),
            error_message: reason,
            ..dead.clone()
        };
        let letter = dead.failed_again(again, wx_codec::now_ms());
        let Ok(record) = self.encode_letter(&letter) else {
            tracing::error!(
                key,
                "A replayed letter cannot be encoded; it stays as it was."
            );
            return;
        };
        if let Err(e) = self
            .producer
            .send_until_acknowledged(
                &record.topic,
                key.as_bytes(),
                Some(&record.value),
                Duration::from_secs(10),
            )
            .await
        {
            tracing::error!(key, error = %e, "A replayed letter is refused by the broker; it stays as it was.");
        }
    }

    /// Clears the letter under `key` (a tombstone, sent until acknowledged): its record was
    /// replayed where it belongs (redrive).
    pub async fn tombstone(&self, key: &str) {
        if let Err(e) = self
            .producer
            .send_until_acknowledged(&self.topic, key.as_bytes(), None, Duration::from_secs(10))
            .await
        {
            tracing::error!(key, error = %e, "A replayed letter's tombstone is refused by the broker; the letter stays.");
        }
    }

    /// Replays letters whose originals are clean records (the redrive of the stages after
    /// decrypt): each original decodes as a message and goes to `replay`; [`Replayed::Moved`]
    /// tombstones the letter, [`Replayed::Again`] writes it again, and an original that does not
    /// decode is parked again as `undecodable`. A dry run only decodes. An error of `replay`
    /// stops the redrive with it (a store that is unwell: nothing is parked for it).
    /// `progress` is told how many are done.
    pub async fn replay_clean_letters<E, F, Fut>(
        &self,
        selected: Vec<(String, DeadLetter)>,
        dry_run: bool,
        progress: &(dyn Fn(u64) + Sync),
        mut replay: F,
    ) -> Result<crate::letters::RedriveSummary, E>
    where
        F: FnMut(ChatMessage) -> Fut,
        Fut: Future<Output = Result<Replayed, E>>,
    {
        let mut summary = crate::letters::RedriveSummary::default();
        for (done, (key, dead)) in selected.into_iter().enumerate() {
            if self.schema_ready(&dead.original, None).await.is_err() {
                // Stopped while the registry could not answer: this letter and the rest stay.
                break;
            }
            let outcome = match self.codec.decode::<ChatMessage>(&dead.original) {
                Err(_) if dry_run => "would_fail:undecodable".to_string(),
                Err(e) => {
                    self.park_again(&key, &dead, UNDECODABLE, e.to_string())
                        .await;
                    "failed_again:undecodable".to_string()
                }
                Ok(_) if dry_run => "would_move".to_string(),
                Ok(message) => match replay(message).await? {
                    Replayed::Moved => {
                        self.tombstone(&key).await;
                        "moved".to_string()
                    }
                    Replayed::Again { class, cause } => {
                        self.park_again(&key, &dead, &class, cause).await;
                        format!("failed_again:{class}")
                    }
                    Replayed::Stopped => break,
                },
            };
            *summary
                .rows
                .entry((dead.error_class.clone(), outcome))
                .or_default() += 1;
            progress(done as u64 + 1);
        }
        Ok(summary)
    }

    /// The dead-letter topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }
}
