//! `topology/retention.yaml`: how long the archive keeps each corp's messages (a default and
//! per-corp durations), and the Kafka topics that hold messages, whose own retention must not
//! outlast the shortest corp's (`wxstream topology check`).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::Retention;
use crate::load::TopologyError;

/// The archive's retention policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionPolicy {
    /// A corp's retention unless `corps` names it (`forever`: never deleted by retention).
    pub default: Retention,
    /// Per corp id.
    #[serde(default)]
    pub corps: BTreeMap<String, Retention>,
    /// The topics (names before the pipeline's prefix) that hold messages; each one's
    /// `retention` in topics.yaml must be at most the shortest retention here.
    #[serde(default)]
    pub kafka_topics: Vec<String>,
}

impl RetentionPolicy {
    /// `corp`'s retention.
    pub fn of(&self, corp: &str) -> Retention {
        self.corps.get(corp).copied().unwrap_or(self.default)
    }

    /// The shortest retention of any corp (the default included).
    pub fn shortest(&self) -> Retention {
        self.corps
            .values()
            .copied()
            .chain([self.default])
            .min_by_key(|r| match r {
                Retention::Forever => i64::MAX,
                r => r.as_millis(),
            })
            .unwrap_or(self.default)
    }

    /// The oldest message time `corp` keeps at `now_ms` (messages before it expire); none when
    /// it keeps everything.
    pub fn cutoff_ms(&self, corp: &str, now_ms: i64) -> Option<i64> {
        match self.of(corp) {
            Retention::Forever => None,
            r => Some(now_ms.saturating_sub(r.as_millis())),
        }
    }

    /// The topics of `topology` among `kafka_topics` (matched by name, with or without the
    /// pipeline's prefix) that keep messages longer than the shortest corp retention: one line
    /// each.
    pub fn outlasting_topics(&self, topics: &[crate::TopicSpec]) -> Vec<String> {
        let shortest = self.shortest();
        let limit = match shortest {
            Retention::Forever => return Vec::new(),
            r => r.as_millis(),
        };
        topics
            .iter()
            .filter(|t| self.kafka_topics.iter().any(|k| t.name.ends_with(k.as_str())))
            .filter(|t| t.retention.as_millis() < 0 || t.retention.as_millis() > limit)
            .map(|t| {
                format!(
                    "topic {} keeps messages for {}, longer than the shortest corp retention {shortest} (retention.yaml)",
                    t.name, t.retention
                )
            })
            .collect()
    }
}

/// `dir/retention.yaml`, if there is one.
pub fn load_retention(dir: &Path) -> Result<Option<RetentionPolicy>, TopologyError> {
    let path = dir.join("retention.yaml");
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(crate::load::error(&path, "", format!("cannot read: {e}"))),
    };
    serde_yaml_ng::from_str(&text)
        .map(Some)
        .map_err(|e| crate::load::error(&path, "", e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corps_take_their_own_or_the_default_and_topics_are_checked_against_the_shortest() {
        let policy: RetentionPolicy = serde_yaml_ng::from_str(
            "default: 120d\ncorps:\n  wwa: 60d\n  wwb: forever\nkafka_topics: [wxstream.raw, wxstream.clean]\n",
        )
        .expect("policy");
        assert_eq!(policy.of("wwa").to_string(), "60d");
        assert_eq!(policy.of("wwz").to_string(), "120d");
        assert_eq!(policy.cutoff_ms("wwb", 1_000), None);
        assert_eq!(
            policy.cutoff_ms("wwa", 100 * 86_400_000),
            Some(40 * 86_400_000)
        );
        assert_eq!(policy.shortest().to_string(), "60d");
        let topics = "defaults: {partitions: 1, replication: 1}\ntopics:\n  - {name: p.wxstream.raw, retention: 7d, cleanup_policy: delete, purpose: x}\n  - {name: p.wxstream.clean, retention: forever, cleanup_policy: delete, purpose: x}\n  - {name: p.wxstream.stats, retention: forever, cleanup_policy: compact, purpose: x}\n";
        let specs = crate::load_str(Path::new("topics.yaml"), topics, &[])
            .expect("topology")
            .topics;
        let problems = policy.outlasting_topics(&specs);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("p.wxstream.clean keeps messages for forever"));
        assert!(serde_yaml_ng::from_str::<RetentionPolicy>("default: 1d\nbogus: 1").is_err());
    }
}
