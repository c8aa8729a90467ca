//! The stats stage: event-time tumbling windows of distinct-msgid counts per group, for BI.
//!
//! # Layout
//! - `window`: the window state machine of one clean-topic partition (pure, table-tested and
//!   crash-tested): grouping, distinct counting by msgtype, the event-time watermark, the grace
//!   period, corrections within the allowed lateness (coalesced per tick), late events beyond
//!   it, idle partitions closing on wall-clock time, the offset that is safe to commit, and the
//!   checkpoint a restarted store resumes from.
//!
//! - `stage`: the Kafka shell: a consumer group on the clean topic, finals and corrections to
//!   the compacted stats topic (Avro or JSON), late events parked with class `late`, offsets
//!   finished only when no retained window needs them, checkpoints in their own compacted topic;
//!   the settings and metric names.
//!
//! # Invariants
//! `window` is pure: no I/O, no clock (times are arguments). Exactness after a crash: the
//! committed offset never passes the first record of a retained window, and a replay from it
//! with the checkpointed watermark rebuilds every retained window whole, recognises what was
//! handled before, and emits nothing until it has passed the checkpoint; a re-emission
//! overwrites its compacted key with the same count. Lateness depends on event time only.

pub mod stage;
pub mod window;

pub use stage::{StatsSettings, StatsStage};
pub use window::{DirectGrouping, Late, WindowSpec, WindowStore};
