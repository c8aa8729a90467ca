//! What `topology apply` must do: compare the declared topics with what the broker reports.
//! Never destructive: drift is reported, not repaired, because fixing it (fewer partitions,
//! another cleanup policy) can lose data or break key ordering.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use crate::model::TopicSpec;

/// A topic as the broker describes it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObservedTopic {
    pub partitions: i32,
    pub replication: i32,
    /// Topic configs the broker reported; a key absent here was not reported (the broker may not
    /// support describing it) and is not counted as drift.
    pub configs: BTreeMap<String, String>,
}

/// One difference between a declared topic and the broker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "what", rename_all = "snake_case")]
pub enum Drift {
    Partitions {
        declared: i32,
        actual: i32,
    },
    Replication {
        declared: i32,
        actual: i32,
    },
    Config {
        key: String,
        declared: String,
        actual: String,
    },
}

impl fmt::Display for Drift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Drift::Partitions { declared, actual } => {
                write!(f, "partitions: declared {declared}, broker has {actual}")
            }
            Drift::Replication { declared, actual } => {
                write!(f, "replication: declared {declared}, broker has {actual}")
            }
            Drift::Config {
                key,
                declared,
                actual,
            } => write!(f, "{key}: declared {declared}, broker has {actual}"),
        }
    }
}

/// What to do about one declared topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum TopicAction {
    /// The topic does not exist: create it.
    Create { topic: TopicSpec },
    /// The topic exists as declared.
    InSync { name: String },
    /// The topic exists but differs; reported, never repaired automatically.
    Drift { name: String, drift: Vec<Drift> },
}

/// Compares every declared topic with the broker's view, in declaration order.
pub fn plan(
    declared: &[TopicSpec],
    observed: &BTreeMap<String, ObservedTopic>,
) -> Vec<TopicAction> {
    declared
        .iter()
        .map(|spec| match observed.get(&spec.name) {
            None => TopicAction::Create {
                topic: spec.clone(),
            },
            Some(actual) => {
                let drift = drift_of(spec, actual);
                if drift.is_empty() {
                    TopicAction::InSync {
                        name: spec.name.clone(),
                    }
                } else {
                    TopicAction::Drift {
                        name: spec.name.clone(),
                        drift,
                    }
                }
            }
        })
        .collect()
}

fn drift_of(spec: &TopicSpec, actual: &ObservedTopic) -> Vec<Drift> {
    let mut drift = Vec::new();
    if spec.partitions != actual.partitions {
        drift.push(Drift::Partitions {
            declared: spec.partitions,
            actual: actual.partitions,
        });
    }
    if spec.replication != actual.replication {
        drift.push(Drift::Replication {
            declared: spec.replication,
            actual: actual.replication,
        });
    }
    for (key, declared) in spec.kafka_configs() {
        if let Some(value) = actual.configs.get(&key)
            && !same_config(&key, &declared, value)
        {
            drift.push(Drift::Config {
                key,
                declared,
                actual: value.clone(),
            });
        }
    }
    drift
}

/// `cleanup.policy` is a list: `compact,delete` equals `delete, compact`.
fn same_config(key: &str, declared: &str, actual: &str) -> bool {
    if key == "cleanup.policy" {
        let set = |s: &str| {
            let mut v: Vec<String> = s.split(',').map(|p| p.trim().to_string()).collect();
            v.sort();
            v
        };
        set(declared) == set(actual)
    } else {
        declared == actual
    }
}
