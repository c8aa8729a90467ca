//! The one runtime every wxstream stage stands on.
//!
//! # Layout
//! - `settings`: building blocks of a connector's `settings` block (secrets by reference,
//!   durations, errors naming the field) and [`ConsumerSettings`], the consumer-group fields
//!   every consuming stage embeds with one set of defaults.
//! - `context`: [`StageContext`], what a stage is built from (connector, topics by role, Kafka
//!   settings, codec, clock, health, metric prefix, shutdown).
//! - `stage`: the contract: [`StageSettings::build`] then [`Stage::run`]; [`launch`] does both
//!   for any stage.
//! - `consume`: [`StageConsumer`] and its one consumer loop (commit timer, error classes,
//!   batching, backpressure).
//! - `dead_letter`: [`Parker`], the one way a stage parks a record.
//! - `backoff`: [`Backoff`], the one retry backoff (capped, full jitter).
//! - `control`, `health`, `clock`: what the operations surface sees; the wall clock.
//! - `letters`: the dead-letter topic read back for redrive (what is parked, filters,
//!   summaries); pure.
//! - `redrive`: the contract of a stage's replay of its letters ([`redrive::Redrive`]).
//! - `target`: the contract of a store the sink writes into ([`target::Target`]: a batch in,
//!   a verdict per message out).
//! - `error`: [`StageError`] (why a running stage stopped) and [`LaunchError`] (why it could
//!   not start).
//!
//! # Invariants
//! No stage logic lives here. A record's offset is finished only by the stage, after its
//! outputs are acknowledged; nothing here finishes one on an error path. Retryable errors are
//! retried and shown (health, metrics); only fatal ones end a stage.

mod backoff;
mod clock;
mod consume;
mod context;
mod control;
mod dead_letter;
mod error;
mod health;
mod leaders;
pub mod letters;
pub mod measure;
pub mod redrive;
pub mod scrape;
pub mod settings;
mod stage;
pub mod target;

pub use backoff::{Backoff, backoff_delay};
pub use clock::Clock;
pub use consume::{Batching, Handler, StageConsumer};
pub use context::{DEAD_LETTER, StageContext, TopicRoles};
pub use control::{AlterError, OffsetsError, StageControl, integer, not_a_member};
pub use dead_letter::{CLEAN_RECORD, Parker, Replayed, TOO_LARGE, UNDECODABLE};
pub use error::{LaunchError, StageError};
pub use health::StageHealth;
pub use settings::{ConsumerSettings, SettingsError};
pub use stage::{
    ConnectorKind, Launched, Launcher, RedriveBuild, Redriver, Stage, StageSettings, StageTask,
    launch, prepare, redriver,
};
