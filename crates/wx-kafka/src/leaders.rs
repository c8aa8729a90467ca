//! Whether every partition a stage reads or writes has a leader that answers: the readiness
//! signal a stage cannot get from its own traffic. A stage with nothing to do sends and
//! fetches nothing, so a broker it depends on can be gone unnoticed; and when a cluster loses
//! its KRaft quorum (two of three combined nodes down) the survivor's metadata freezes, leaders
//! and in-sync replicas as they were, so metadata alone cannot tell either. So the probe asks
//! each leader something only a live leader answers: the offsets of one partition it leads.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::{KafkaConfig, KafkaError};

/// A leader that did not answer, or partitions without a leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unavailable {
    /// `host:port/id` of the leader; `None` for partitions the cluster names no leader for.
    pub broker: Option<String>,
    /// How many of the probed partitions it leads.
    pub partitions: usize,
    pub reason: String,
}

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.broker {
            Some(broker) => write!(
                f,
                "broker {broker}, leader of {} partition(s) of this stage's topics, does not answer ({})",
                self.partitions, self.reason
            ),
            None => write!(f, "{} partition(s) have no leader", self.partitions),
        }
    }
}

/// A client kept for probing (one connection per broker, reused tick after tick).
pub struct LeaderProbe {
    client: BaseConsumer,
    topics: Vec<String>,
    brokers: String,
}

impl std::fmt::Debug for LeaderProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderProbe")
            .field("topics", &self.topics)
            .finish_non_exhaustive()
    }
}

impl LeaderProbe {
    pub fn new(config: &KafkaConfig, topics: Vec<String>) -> Result<LeaderProbe, KafkaError> {
        Ok(LeaderProbe {
            client: crate::reader::reader(config)?,
            topics,
            brokers: config.brokers.clone(),
        })
    }

    /// The leaders of the topics' partitions that do not answer within `timeout` (each asked
    /// for one partition's offsets), and the partitions without a leader; empty when all is
    /// well. Err when no broker answers a metadata request. Blocking: at most one metadata
    /// request and one offsets request per leader, each bounded by `timeout`.
    pub fn unavailable(&self, timeout: Duration) -> Result<Vec<Unavailable>, KafkaError> {
        let metadata = self
            .client
            .fetch_metadata(None, timeout)
            .map_err(|source| KafkaError::Unreachable {
                brokers: self.brokers.clone(),
                timeout,
                source,
            })?;
        let names: BTreeMap<i32, String> = metadata
            .brokers()
            .iter()
            .map(|b| (b.id(), format!("{}:{}/{}", b.host(), b.port(), b.id())))
            .collect();
        // Each leader with one partition of its to ask about, and how many it leads.
        let mut leaders: BTreeMap<i32, (String, i32, usize)> = BTreeMap::new();
        let mut leaderless = 0;
        for topic in metadata
            .topics()
            .iter()
            .filter(|t| self.topics.iter().any(|n| n == t.name()))
        {
            for partition in topic.partitions() {
                if partition.leader() < 0 {
                    leaderless += 1;
                    continue;
                }
                leaders
                    .entry(partition.leader())
                    .or_insert_with(|| (topic.name().to_string(), partition.id(), 0))
                    .2 += 1;
            }
        }
        let mut out = Vec::new();
        if leaderless > 0 {
            out.push(Unavailable {
                broker: None,
                partitions: leaderless,
                reason: "no leader".into(),
            });
        }
        for (id, (topic, partition, led)) in leaders {
            if let Err(e) = self.client.fetch_watermarks(&topic, partition, timeout) {
                out.push(Unavailable {
                    broker: Some(names.get(&id).cloned().unwrap_or_else(|| id.to_string())),
                    partitions: led,
                    reason: e.to_string(),
                });
            }
        }
        Ok(out)
    }
}
