//! The sink stage's metric names (`wxstream_sink_*`) and their help texts.
//!
//! Reconciliation, per clean partition: `records_consumed_total` = `rows_written_total`
//! (each record's row) + `dead_lettered_total` once nothing is in flight; `documents_written_total`
//! counts the same records on the search side. `wxstream_sink_paused` (1 while a store fails)
//! is exported by the runtime's consumer loop (`wx_runtime::StageConsumer::hold`).

pub const RECORDS_CONSUMED: &str = "wxstream_sink_records_consumed_total";
pub const ROWS_WRITTEN: &str = "wxstream_sink_rows_written_total";
pub const DOCUMENTS_WRITTEN: &str = "wxstream_sink_documents_written_total";
pub const DEAD_LETTERED: &str = "wxstream_sink_dead_lettered_total";
pub const RETRIES: &str = "wxstream_sink_retries_total";
pub const BATCH_SECONDS: &str = "wxstream_sink_batch_seconds";

/// Registers the help text of every sink metric.
pub fn describe() {
    use metrics::{describe_counter, describe_histogram};
    describe_counter!(RECORDS_CONSUMED, "Clean records consumed, by partition.");
    describe_counter!(ROWS_WRITTEN, "Records upserted into MySQL, by partition.");
    describe_counter!(
        DOCUMENTS_WRITTEN,
        "Records indexed (or already present) in Elasticsearch, by partition."
    );
    describe_counter!(
        DEAD_LETTERED,
        "Records parked on the dead-letter topic, by partition and class."
    );
    describe_counter!(RETRIES, "Store writes retried, by store (mysql, search).");
    describe_histogram!(
        BATCH_SECONDS,
        metrics::Unit::Seconds,
        "Time of one batch's write, by store."
    );
}
