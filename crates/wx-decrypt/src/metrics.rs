//! The decrypt stage's metric names (`wxstream_decrypt_*`) and their help texts.
//!
//! Reconciliation, per raw partition: `items_consumed_total` = `items_produced_total` +
//! `items_dead_lettered_total` (all classes) + `items_filtered_total` (all reasons) + the items
//! still in flight (zero once the stage is idle or stopped).

pub const RECORDS_CONSUMED: &str = "wxstream_decrypt_records_consumed_total";
pub const ITEMS_CONSUMED: &str = "wxstream_decrypt_items_consumed_total";
pub const ITEMS_PRODUCED: &str = "wxstream_decrypt_items_produced_total";
pub const ITEMS_DEAD_LETTERED: &str = "wxstream_decrypt_items_dead_lettered_total";
pub const ITEMS_FILTERED: &str = "wxstream_decrypt_items_filtered_total";
pub const DECRYPT_SECONDS: &str = "wxstream_decrypt_item_decrypt_seconds";
pub const RECORD_SECONDS: &str = "wxstream_decrypt_record_seconds";
pub const BATCH_ITEMS: &str = "wxstream_decrypt_batch_items";
pub const IN_FLIGHT: &str = "wxstream_decrypt_records_in_flight";
pub const SEND_RETRIES: &str = "wxstream_decrypt_send_retries_total";
pub const KEY_RELOADS: &str = "wxstream_decrypt_key_reloads_total";
pub const KEY_VERSIONS: &str = "wxstream_decrypt_key_versions";

/// Registers the help text of every decrypt metric (Prometheus requires it).
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(RECORDS_CONSUMED, "Raw records consumed, by raw partition.");
    describe_counter!(
        ITEMS_CONSUMED,
        "Items (archive messages or callbacks) consumed, by raw partition."
    );
    describe_counter!(
        ITEMS_PRODUCED,
        "Clean messages acknowledged by the broker, by raw partition."
    );
    describe_counter!(
        ITEMS_DEAD_LETTERED,
        "Items parked on the dead-letter topic, by raw partition and error class."
    );
    describe_counter!(
        ITEMS_FILTERED,
        "Items that are not messages (callback events), by raw partition and reason."
    );
    describe_histogram!(
        DECRYPT_SECONDS,
        metrics::Unit::Seconds,
        "Decrypt-and-normalise time per item (a record's time over its items)."
    );
    describe_histogram!(
        RECORD_SECONDS,
        metrics::Unit::Seconds,
        "Time from receiving a raw record to every output acknowledged."
    );
    describe_histogram!(BATCH_ITEMS, "Items per raw record.");
    describe_gauge!(IN_FLIGHT, "Raw records received and not yet finished.");
    describe_counter!(SEND_RETRIES, "Output sends retried after a failure.");
    describe_counter!(KEY_RELOADS, "Key ring reloads, by outcome (ok, error).");
    describe_gauge!(KEY_VERSIONS, "Key versions held, by ring (`*` = shared).");
}
