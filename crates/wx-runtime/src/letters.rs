//! The dead-letter topic read back, for every stage's redrive: the letters parked now (the
//! latest record of each key, tombstones applied), selected by a filter, and how each replay
//! ended. Pure: reading the topic and writing the replays are the callers' business.

use std::collections::{BTreeMap, HashMap};

use wx_codec::{Codec, DeadLetter};
use wx_kafka::Record;

/// Which parked records to replay (empty lists match everything).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedriveFilter {
    pub classes: Vec<String>,
    pub key_versions: Vec<i32>,
    pub corps: Vec<String>,
    /// Last failure at or after this time (ms).
    pub since_ms: Option<i64>,
    /// Last failure before this time (ms).
    pub until_ms: Option<i64>,
}

impl RedriveFilter {
    /// True for a dead letter of `stage` that the filter selects.
    pub fn matches(&self, stage: &str, dead: &DeadLetter) -> bool {
        dead.stage == stage
            && (self.classes.is_empty() || self.classes.contains(&dead.error_class))
            && (self.key_versions.is_empty()
                || dead
                    .key_version
                    .is_some_and(|v| self.key_versions.contains(&v)))
            && (self.corps.is_empty()
                || dead
                    .corp_id
                    .as_ref()
                    .is_some_and(|c| self.corps.contains(c)))
            && self.since_ms.is_none_or(|t| dead.last_failed_at >= t)
            && self.until_ms.is_none_or(|t| dead.last_failed_at < t)
    }
}

/// The parked records: the latest dead letter of every key not tombstoned, in key order.
#[derive(Debug, Default)]
pub struct Parked {
    pub letters: Vec<(String, DeadLetter)>,
    /// Records that are not dead letters this build can read (left alone, counted).
    pub unreadable: usize,
}

/// Reduces the dead-letter topic's records (in partition offset order) to what is parked now.
pub fn parked(codec: &Codec, records: &[Record]) -> Parked {
    let mut ordered: Vec<&Record> = records.iter().collect();
    ordered.sort_by_key(|r| (r.partition, r.offset));
    let mut latest: BTreeMap<String, Option<DeadLetter>> = BTreeMap::new();
    let mut unreadable = 0;
    for record in ordered {
        let key = record
            .key
            .as_deref()
            .map(|k| String::from_utf8_lossy(k).into_owned());
        match (&record.value, key) {
            (None, Some(key)) => {
                latest.insert(key, None);
            }
            (Some(value), key) => match codec.decode::<DeadLetter>(value) {
                Ok(dead) => {
                    let key = key.unwrap_or_else(|| dead.key());
                    latest.insert(key, Some(dead));
                }
                Err(_) => unreadable += 1,
            },
            (None, None) => unreadable += 1,
        }
    }
    Parked {
        letters: latest
            .into_iter()
            .filter_map(|(k, v)| v.map(|d| (k, d)))
            .collect(),
        unreadable,
    }
}

/// How each selected record ended, by its parked class.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedriveSummary {
    /// (parked class, outcome) -> records. Outcomes: `moved`, `filtered`,
    /// `failed_again:<class>`, `encode_failed` (nothing written, still parked); in a dry run
    /// `would_move`, `would_fail:<class>`.
    pub rows: BTreeMap<(String, String), u64>,
}

impl RedriveSummary {
    /// Records whose outcome starts with `prefix`.
    pub fn count(&self, prefix: &str) -> u64 {
        self.rows
            .iter()
            .filter(|((_, outcome), _)| outcome.starts_with(prefix))
            .map(|(_, n)| n)
            .sum()
    }
}

/// Counts of parked records by class (for the dry-run table and logs).
pub fn by_class(letters: &[(String, DeadLetter)]) -> HashMap<String, u64> {
    let mut out = HashMap::new();
    for (_, d) in letters {
        *out.entry(d.error_class.clone()).or_default() += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(class: &str, corp: &str, msgid: &str, version: i32, at: i64) -> DeadLetter {
        DeadLetter {
            original: b"{}".to_vec(),
            original_format: "archive-item-json".into(),
            error_class: class.into(),
            error_message: "m".into(),
            stage: "decrypt".into(),
            corp_id: Some(corp.into()),
            msgid: Some(msgid.into()),
            key_version: Some(version),
            source_topic: "raw".into(),
            source_partition: 0,
            source_offset: 1,
            seq: Some(1),
            first_failed_at: at,
            last_failed_at: at,
            attempts: 1,
        }
    }

    #[test]
    fn the_filter_selects_by_stage_class_version_corp_and_time() {
        let d = letter("unknown_key_version", "wwA", "m1", 99, 1_000);
        assert!(RedriveFilter::default().matches("decrypt", &d));
        assert!(
            !RedriveFilter::default().matches("sink", &d),
            "another stage's letter"
        );
        let f = |f: RedriveFilter| f.matches("decrypt", &d);
        assert!(f(RedriveFilter {
            classes: vec!["unknown_key_version".into()],
            key_versions: vec![99],
            corps: vec!["wwA".into()],
            since_ms: Some(1_000),
            until_ms: Some(1_001),
        }));
        assert!(!f(RedriveFilter {
            classes: vec!["bad_padding".into()],
            ..Default::default()
        }));
        assert!(!f(RedriveFilter {
            key_versions: vec![1],
            ..Default::default()
        }));
        assert!(!f(RedriveFilter {
            corps: vec!["wwB".into()],
            ..Default::default()
        }));
        assert!(!f(RedriveFilter {
            until_ms: Some(1_000),
            ..Default::default()
        }));
    }

    #[test]
    fn the_latest_record_of_a_key_wins_and_tombstones_resolve() {
        let codec = Codec::fixed().expect("codec");
        let rec = |offset: i64, key: &str, value: Option<DeadLetter>| Record {
            partition: 0,
            offset,
            key: Some(key.as_bytes().to_vec()),
            value: value.map(|d| codec.encode(&d).expect("encode")),
        };
        let mut again = letter("unknown_key_version", "wwA", "m1", 99, 5);
        again.attempts = 2;
        let records = vec![
            rec(
                0,
                "wwA/m1",
                Some(letter("unknown_key_version", "wwA", "m1", 99, 1)),
            ),
            rec(1, "wwA/m2", Some(letter("bad_padding", "wwA", "m2", 1, 1))),
            rec(2, "wwA/m1", Some(again.clone())),
            rec(3, "wwA/m2", None),
            Record {
                partition: 1,
                offset: 0,
                key: Some(b"x".to_vec()),
                value: Some(b"not avro".to_vec()),
            },
        ];
        let p = parked(&codec, &records);
        assert_eq!(p.letters, vec![("wwA/m1".to_string(), again)]);
        assert_eq!(p.unreadable, 1);
    }
}
