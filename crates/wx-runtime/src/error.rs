//! The errors that cross the runtime's boundary, each of one class:
//! - [`StageError`]: why a running stage stopped. Every variant is fatal by construction: what
//!   is retryable (a broker or store that is unwell) is retried inside the stage and shown in
//!   its health, never returned.
//! - [`LaunchError`]: why a stage could not start (the configuration is wrong, or a dependency
//!   was unreachable while it built): the process stops visibly.

use crate::settings::SettingsError;

/// Why a running stage stopped. The stage's connector shows FAILED with this cause.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// librdkafka can no longer use the client (e.g. a static member fenced by another).
    #[error("the consumer failed for good: {0}")]
    Kafka(#[from] wx_kafka::KafkaError),
    /// An output (clean record, dead letter, window count) cannot be encoded: a bug or a schema
    /// this build cannot satisfy, not bad input. The record's offset is never finished, so a
    /// fixed build processes it again.
    #[error("a {subject} record cannot be encoded, so its input is not finished: {source}")]
    Encode {
        subject: &'static str,
        source: wx_codec::CodecError,
    },
    /// The broker refuses an output for good ([`wx_kafka::KafkaError::refusal`]: its topic does
    /// not exist or may not be written, or a record no form of which fits): configuration, so
    /// the stage stops with the cause and the record's offset is never finished.
    #[error("the broker refuses an output for good, so its input is not finished: {0}")]
    Refused(Box<wx_kafka::KafkaError>),
    /// A task of the stage panicked (a bug); its record is not finished.
    #[error("{what} panicked")]
    Panicked { what: &'static str },
    /// A record could not be processed and the connector says `errors.tolerance: none`: it is
    /// neither parked nor finished, so the stage stops on it (Kafka Connect's behaviour).
    /// The record's cause is not in the error: a store's text may quote message content, and
    /// this error reaches logs, the status and the control topic.
    #[error(
        "errors.tolerance is none: a record from {source_topic}-{partition}@{offset} was not processed ({class}); it is neither parked nor committed: remove its cause, or set errors.tolerance: all to park such records, then restart the connector"
    )]
    Intolerant {
        source_topic: String,
        partition: i32,
        offset: i64,
        class: String,
    },
    /// The stage is stopping (shutdown, or a stop or pause over REST) while a record waited for
    /// something that cannot answer (the schema registry): the record is not finished, and the
    /// consume loop ends cleanly, as on any shutdown. Not a failure.
    #[error("stopping while a record waited; it is not finished")]
    Interrupted,
    /// A stage-specific fatal condition (its own typed error).
    #[error(transparent)]
    Stage(Box<dyn std::error::Error + Send + Sync>),
}

impl StageError {
    /// An output the broker refuses for good: [`StageError::Refused`].
    pub fn refused(error: wx_kafka::KafkaError) -> StageError {
        StageError::Refused(Box::new(error))
    }

    /// A stage-specific fatal error.
    pub fn stage(error: impl std::error::Error + Send + Sync + 'static) -> StageError {
        StageError::Stage(Box::new(error))
    }
}

/// Why a stage could not start.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("connector {connector}: {source}")]
    Settings {
        connector: String,
        source: SettingsError,
    },
    #[error("connector {connector}: {reason}")]
    Topics { connector: String, reason: String },
    #[error("connector {connector}: {source}")]
    Build {
        connector: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}
