//! Figures the pipeline benchmark and the fault tests both take from what the pipeline wrote:
//! when each archive message was first pulled, and percentiles.

use std::collections::BTreeMap;
use std::time::Duration;

use wx_codec::{Codec, RawBatch};
use wx_kafka::{KafkaConfig, KafkaError};

/// Each archive message's first pull time (`fetched_at`, ms), by (corp, seq), from the raw
/// topic `topic`. Blocking: call it from `spawn_blocking` or `block_in_place`.
pub fn pulled_at(
    kafka: &KafkaConfig,
    topic: &str,
    codec: &Codec,
) -> Result<BTreeMap<(String, i64), i64>, KafkaError> {
    let records = wx_kafka::read_topic(kafka, topic, Duration::from_secs(120))?;
    let mut pulled = BTreeMap::new();
    for record in records {
        let Some(value) = record.value else { continue };
        let Ok(batch) = codec.decode::<RawBatch>(&value) else {
            continue;
        };
        for item in &batch.items {
            let at = pulled
                .entry((batch.corp_id.clone(), item.seq))
                .or_insert(batch.fetched_at);
            *at = (*at).min(batch.fetched_at);
        }
    }
    Ok(pulled)
}

/// The `p` quantile (0 to 1) of `sorted` values, nearest rank; 0 for none.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_take_the_nearest_rank() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&values, 0.5), 51.0);
        assert_eq!(percentile(&values, 0.99), 99.0);
        assert_eq!(percentile(&values, 1.0), 100.0);
        assert_eq!(percentile(&[], 0.99), 0.0);
    }
}
