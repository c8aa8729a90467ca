//! The stats stage: event-time tumbling windows of distinct-msgid counts per group, for BI.
//!
//! # Layout
//! - `window`: the window state machine of one clean-topic partition (pure, table-tested):
//!   grouping, distinct counting by msgtype, the watermark, the grace period, corrections within
//!   the allowed lateness, late events beyond it, idle partitions closing on wall-clock time, and
//!   the offset that is safe to commit.
//!
//! **Planned (issue 7):** the Kafka loop around it (consumer group on the clean topic, output to
//! the compacted stats topic, late events to the dead-letter topic), metrics, the BI page.
//!
//! # Invariants
//! Pure: no I/O, no clock (times are arguments). Exactness after a crash comes from the commit
//! rule: the committed offset never passes the first record of any window still retained, so a
//! replay rebuilds every retained window whole, and a re-emission overwrites its key.

pub mod window;

pub use window::{DirectGrouping, Late, WindowSpec, WindowStore};
