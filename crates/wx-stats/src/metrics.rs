//! The stats stage's metric names (`wxstream_stats_*`) and their help texts.

pub const OPEN_WINDOWS: &str = "wxstream_stats_open_windows";
pub const RECORDS_CONSUMED: &str = "wxstream_stats_records_consumed_total";
pub const EMITTED: &str = "wxstream_stats_records_emitted_total";
pub const CORRECTIONS: &str = "wxstream_stats_corrections_total";
pub const LATE: &str = "wxstream_stats_late_events_total";
pub const DEAD_LETTERED: &str = "wxstream_stats_dead_lettered_total";
pub const WATERMARK_LAG: &str = "wxstream_stats_watermark_lag_seconds";

/// Registers every stats metric's help text.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge};
    describe_gauge!(OPEN_WINDOWS, "Windows not yet closed, by partition.");
    describe_counter!(
        RECORDS_CONSUMED,
        "Clean records consumed (counted, duplicate or parked)."
    );
    describe_counter!(EMITTED, "Window records emitted (finals and corrections).");
    describe_counter!(CORRECTIONS, "Corrections of closed windows.");
    describe_counter!(
        LATE,
        "Events later than grace + lateness, parked as `late`."
    );
    describe_counter!(
        DEAD_LETTERED,
        "Clean records parked on the dead-letter topic, by partition and class (late, invalid_time, undecodable)."
    );
    describe_gauge!(
        WATERMARK_LAG,
        "Wall clock minus the watermark, by partition."
    );
    // Present from the start (0), so rules and dashboards see the series before any event.
    for counter in [RECORDS_CONSUMED, EMITTED, CORRECTIONS, LATE] {
        metrics::counter!(counter).increment(0);
    }
}
