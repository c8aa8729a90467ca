//! The stages' wall clock. Every time a stage stamps or compares is read here (UTC ms, the
//! records' unit), so a stage never reads the time another way.

/// The wall clock a stage reads.
#[derive(Debug, Clone, Copy, Default)]
pub struct Clock;

impl Clock {
    /// Milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> i64 {
        wx_codec::now_ms()
    }
}
