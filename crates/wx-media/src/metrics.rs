//! The media stage's metric names (`wxstream_media_*`) and their help texts.
//!
//! Reconciliation: every media item of a consumed record ends in `items_total` once, as
//! `stored`, `already_stored` or `parked` (by class in `dead_lettered_total`). The group's lag
//! (`wxstream_media_group_lag_records`) and `wxstream_media_paused` come from the runtime's
//! consumer loop.

pub const RECORDS_CONSUMED: &str = "wxstream_media_records_consumed_total";
pub const ITEMS: &str = "wxstream_media_items_total";
pub const BYTES_STORED: &str = "wxstream_media_bytes_stored_total";
pub const OBJECTS_STORED: &str = "wxstream_media_objects_stored_total";
pub const MD5_RETRIES: &str = "wxstream_media_md5_retries_total";
pub const DEAD_LETTERED: &str = "wxstream_media_dead_lettered_total";
pub const IN_FLIGHT: &str = "wxstream_media_downloads_in_flight";
pub const RESUMED: &str = "wxstream_media_downloads_resumed_total";
pub const RETRIES: &str = "wxstream_media_retries_total";
pub const CHUNKS: &str = "wxstream_media_chunks_total";
pub const DOWNLOAD_SECONDS: &str = "wxstream_media_download_seconds";

/// Registers the help text of every media metric, and starts the series alerts read at 0.
pub fn describe(park_classes: &[&'static str]) {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(RECORDS_CONSUMED, "Clean records consumed, by partition.");
    describe_counter!(
        ITEMS,
        "Media items handled, by outcome (stored, already_stored, parked)."
    );
    describe_counter!(
        BYTES_STORED,
        metrics::Unit::Bytes,
        "Bytes of media stored in the object store."
    );
    describe_counter!(OBJECTS_STORED, "Objects stored in the object store.");
    describe_counter!(
        MD5_RETRIES,
        "Downloads begun again because the file's MD5 did not match md5sum."
    );
    describe_counter!(
        DEAD_LETTERED,
        "Media items parked, by class (media_expired, media_unavailable, media_md5, media_no_corp, store_rejected); clean records that do not decode, by partition and class undecodable."
    );
    describe_gauge!(IN_FLIGHT, "Downloads running now.");
    describe_counter!(
        RESUMED,
        "Downloads resumed from a checkpointed part (after a restart), not from zero."
    );
    describe_counter!(
        RETRIES,
        "Calls retried, by what failed (wecom: GetMediaData; store: the object store; mysql: the media table)."
    );
    describe_counter!(CHUNKS, "GetMediaData chunks received.");
    describe_histogram!(
        DOWNLOAD_SECONDS,
        metrics::Unit::Seconds,
        "Time from a download's start to its object stored."
    );
    metrics::gauge!(IN_FLIGHT).set(0.0);
    metrics::counter!(MD5_RETRIES).absolute(0);
    for &class in park_classes {
        metrics::counter!(DEAD_LETTERED, "class" => class).absolute(0);
    }
    metrics::counter!(BYTES_STORED).absolute(0);
    for what in ["wecom", "store", "mysql"] {
        metrics::counter!(RETRIES, "what" => what).absolute(0);
    }
}
