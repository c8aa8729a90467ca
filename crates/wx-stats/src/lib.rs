//! The stats stage: event-time tumbling windows of distinct-msgid counts per group, for BI.
//!
//! # Layout
//! - `window`: the window state machine of one clean-topic partition (pure, table-tested):
//!   grouping, distinct counting by msgtype, the watermark, the grace period, corrections within
//!   the allowed lateness, late events beyond it, idle partitions closing on wall-clock time, and
//!   the offset that is safe to commit.
//!
//! - `stage`: the Kafka shell: a consumer group on the clean topic, finals and corrections to
//!   the compacted stats topic (Avro or JSON), late events parked with class `late`, offsets
//!   finished only when no retained window needs them; the settings and metric names.
//!
//! **Planned (issue 7):** the BI page and example, and the end-to-end tests against MySQL.
//!
//! # Invariants
//! `window` is pure: no I/O, no clock (times are arguments). Exactness after a crash comes from the commit
//! rule: the committed offset never passes the first record of any window still retained, so a
//! replay rebuilds every retained window whole, and a re-emission overwrites its key.

pub mod stage;
pub mod window;

pub use stage::{StatsSettings, StatsStage};
pub use window::{DirectGrouping, Late, WindowSpec, WindowStore};
