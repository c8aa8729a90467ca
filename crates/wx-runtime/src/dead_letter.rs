//! The one dead-letter path of every stage. A letter is built by [`wx_codec::DeadLetter::new`]
//! (the same fields from every stage) and keyed by [`wx_codec::DeadLetter::key`] (unique per
//! parked record: `<stage>:<corp>/<msgid>` where known, else its source
//! `<stage>:<topic>/<partition>/<offset>`). The [`Parker`] encodes and sends it; an encode
//! failure is a [`StageError::Encode`] (the stage stops and the record's offset is never
//! finished) and a send is retried until the broker acknowledges it, so a record is finished
//! only once its letter is durable.

use std::sync::Arc;
use std::time::Duration;

use wx_codec::{Codec, DeadLetter, ParkedFrom};
use wx_kafka::{Consumed, OutputRecord, Producer};

use crate::error::StageError;

/// Encodes and sends a stage's dead letters.
#[derive(Debug, Clone)]
pub struct Parker {
    stage: &'static str,
    producer: Producer,
    codec: Arc<Codec>,
    topic: String,
    /// How the originals of [`Parker::letter`] are read back (`clean-record`, ...).
    original_format: &'static str,
}

impl Parker {
    pub fn new(
        stage: &'static str,
        producer: Producer,
        codec: Arc<Codec>,
        topic: &str,
        original_format: &'static str,
    ) -> Parker {
        Parker {
            stage,
            producer,
            codec,
            topic: topic.to_string(),
            original_format,
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

    /// The record a letter is written as.
    pub fn encode(&self, letter: &DeadLetter) -> Result<OutputRecord, StageError> {
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
    /// caller finish the parked record's offset.
    pub async fn park(&self, letter: &DeadLetter) -> Result<(), StageError> {
        let record = self.encode(letter)?;
        self.producer
            .start(record)
            .await
            .settle(&self.producer, Duration::from_secs(10))
            .await;
        Ok(())
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
        let Ok(record) = self.encode(&letter) else {
            tracing::error!(
                key,
                "A replayed letter cannot be encoded; it stays as it was."
            );
            return;
        };
        self.producer
            .send_until_acknowledged(
                &record.topic,
                key.as_bytes(),
                Some(&record.value),
                Duration::from_secs(10),
            )
            .await;
    }

    /// Clears the letter under `key` (a tombstone, sent until acknowledged): its record was
    /// replayed where it belongs (redrive).
    pub async fn tombstone(&self, key: &str) {
        self.producer
            .send_until_acknowledged(&self.topic, key.as_bytes(), None, Duration::from_secs(10))
            .await;
    }

    /// The dead-letter topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }
}
