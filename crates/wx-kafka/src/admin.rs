//! Topic administration: what `wxstream topology apply` and `check` do against a broker.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use serde::Serialize;
use wx_topology::{ObservedTopic, TopicAction, TopicSpec, plan};

use crate::{KafkaConfig, KafkaError};

/// How many times [`TopicAdmin::apply`] tries a creation that fails for the moment, and the wait
/// after the first failure (doubling: 1, 2, 4, 8 s).
pub const APPLY_ATTEMPTS: u32 = 5;
const APPLY_RETRY_BASE: Duration = Duration::from_secs(1);

/// Whether a broker's answer to one topic's creation means "not now" rather than "no".
fn transient_admin_code(code: rdkafka::types::RDKafkaErrorCode) -> bool {
    use rdkafka::types::RDKafkaErrorCode as Code;
    matches!(
        code,
        Code::RequestTimedOut
            | Code::NotController
            | Code::BrokerNotAvailable
            | Code::LeaderNotAvailable
            | Code::NetworkException
            | Code::CoordinatorLoadInProgress
            | Code::CoordinatorNotAvailable
            | Code::DestroyBroker
            | Code::BrokerTransportFailure
            | Code::AllBrokersDown
            | Code::OperationTimedOut
            | Code::ThrottlingQuotaExceeded
    )
}

/// An admin client for the topics of a topology.
pub struct TopicAdmin {
    config: KafkaConfig,
    admin: AdminClient<DefaultClientContext>,
}

impl std::fmt::Debug for TopicAdmin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopicAdmin")
            .field("brokers", &self.config.brokers)
            .finish_non_exhaustive()
    }
}

/// The outcome of `apply` or `check`: what was (or would be) done per topic, and whether the
/// broker reported topic configs at all.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApplyReport {
    pub actions: Vec<TopicAction>,
    /// Topics created by this run (empty for `check`).
    pub created: Vec<String>,
    /// False when the broker did not answer DescribeConfigs: only partitions and replication
    /// were compared.
    pub configs_compared: bool,
}

impl ApplyReport {
    /// True when every declared topic exists as declared.
    pub fn in_sync(&self) -> bool {
        self.actions
            .iter()
            .all(|a| matches!(a, TopicAction::InSync { .. }))
    }

    /// True when some existing topic differs from its declaration.
    pub fn has_drift(&self) -> bool {
        self.actions
            .iter()
            .any(|a| matches!(a, TopicAction::Drift { .. }))
    }
}

impl TopicAdmin {
    pub fn new(config: &KafkaConfig) -> Result<TopicAdmin, KafkaError> {
        let admin = config
            .client_config()
            .create()
            .map_err(|source| KafkaError::Client {
                brokers: config.brokers.clone(),
                source,
            })?;
        Ok(TopicAdmin {
            config: config.clone(),
            admin,
        })
    }

    fn options(&self) -> AdminOptions {
        AdminOptions::new().request_timeout(Some(self.config.request_timeout()))
    }

    /// Deletes consumer group `group` with its committed offsets (the broker refuses while it
    /// has members). A group that does not exist is not an error.
    pub async fn delete_group(&self, group: &str) -> Result<(), KafkaError> {
        let failed = |reason: String| KafkaError::Group {
            group: group.to_string(),
            reason,
        };
        let results = self
            .admin
            .delete_groups(&[group], &self.options())
            .await
            .map_err(|e| failed(format!("deleting the group failed: {e}")))?;
        for result in results {
            match result {
                Ok(_) => {}
                Err((_, rdkafka::types::RDKafkaErrorCode::GroupIdNotFound)) => {}
                Err((_, code)) => return Err(failed(format!("deleting the group failed: {code}"))),
            }
        }
        Ok(())
    }

    /// What the broker knows of `names` (absent names do not exist). Configs are left empty when
    /// the broker does not answer DescribeConfigs; the second value says whether it did.
    pub async fn observe(
        &self,
        names: &[&str],
    ) -> Result<(BTreeMap<String, ObservedTopic>, bool), KafkaError> {
        let mut observed = self.in_metadata(names)?;
        let configs_compared = self.describe_configs(&mut observed).await;
        Ok((observed, configs_compared))
    }

    /// Which of `names` the cluster's metadata has, with their partitions and replication
    /// (configs left empty).
    fn in_metadata(&self, names: &[&str]) -> Result<BTreeMap<String, ObservedTopic>, KafkaError> {
        let metadata = self
            .admin
            .inner()
            .fetch_metadata(None, self.config.request_timeout())
            .map_err(|source| KafkaError::Unreachable {
                brokers: self.config.brokers.clone(),
                timeout: self.config.request_timeout(),
                source,
            })?;
        let mut observed = BTreeMap::new();
        for topic in metadata.topics() {
            if !names.contains(&topic.name()) || topic.error().is_some() {
                continue;
            }
            let partitions = topic.partitions();
            let replication = partitions
                .iter()
                .map(|p| p.replicas().len())
                .min()
                .unwrap_or(0);
            observed.insert(
                topic.name().to_string(),
                ObservedTopic {
                    partitions: i32::try_from(partitions.len()).unwrap_or(i32::MAX),
                    replication: i32::try_from(replication).unwrap_or(i32::MAX),
                    configs: BTreeMap::new(),
                },
            );
        }
        Ok(observed)
    }

    /// Fills in the configs of observed topics; false if the broker could not tell.
    async fn describe_configs(&self, observed: &mut BTreeMap<String, ObservedTopic>) -> bool {
        if observed.is_empty() {
            return true;
        }
        let names: Vec<String> = observed.keys().cloned().collect();
        let specifiers: Vec<ResourceSpecifier<'_>> = names
            .iter()
            .map(|n| ResourceSpecifier::Topic(n.as_str()))
            .collect();
        let results = match self
            .admin
            .describe_configs(specifiers.iter(), &self.options())
            .await
        {
            Ok(results) => results,
            Err(e) => {
                tracing::warn!(error = %e, "The broker did not describe topic configs; only partitions and replication are compared.");
                return false;
            }
        };
        let mut all = true;
        for (name, result) in names.iter().zip(results) {
            match result {
                Ok(resource) => {
                    if let Some(topic) = observed.get_mut(name) {
                        for entry in resource.entries {
                            if let Some(value) = entry.value {
                                topic.configs.insert(entry.name, value);
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(topic = %name, error = ?e, "The broker did not describe this topic's configs.");
                    all = false;
                }
            }
        }
        all
    }

    /// Compares `topics` with the broker without changing anything.
    pub async fn check(&self, topics: &[TopicSpec]) -> Result<ApplyReport, KafkaError> {
        let names: Vec<&str> = topics.iter().map(|t| t.name.as_str()).collect();
        let (observed, configs_compared) = self.observe(&names).await?;
        Ok(ApplyReport {
            actions: plan(topics, &observed),
            created: Vec::new(),
            configs_compared,
        })
    }

    /// Creates the missing topics of `topics` and reports drift of the others. Existing topics
    /// are never altered. Running it twice creates nothing the second time. A creation that
    /// fails for the moment (the broker or the connection to it: a cluster that just formed
    /// answered `DestroyBroker` in 2 of 8 test runs) is tried again, [`APPLY_ATTEMPTS`] times in
    /// all, each try checking first, so what an earlier try created is not created again; a
    /// refusal (a bad config, too few brokers, no permission) is returned at once.
    pub async fn apply(&self, topics: &[TopicSpec]) -> Result<ApplyReport, KafkaError> {
        let mut attempt = 1;
        let mut created = Vec::new();
        loop {
            match self.apply_once(topics, &mut created).await {
                Err(
                    e @ KafkaError::CreateTopic {
                        transient: true, ..
                    },
                ) if attempt < APPLY_ATTEMPTS => {
                    let wait = APPLY_RETRY_BASE * 2u32.pow(attempt - 1);
                    tracing::warn!(attempt, error = %e, retry_in_ms = wait.as_millis() as u64, "Creating topics failed for the moment; trying again.");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                outcome => return outcome,
            }
        }
    }

    /// One try of [`TopicAdmin::apply`]; `created` keeps what every try created.
    async fn apply_once(
        &self,
        topics: &[TopicSpec],
        created: &mut Vec<String>,
    ) -> Result<ApplyReport, KafkaError> {
        let mut report = self.check(topics).await?;
        let missing: Vec<&TopicSpec> = report
            .actions
            .iter()
            .filter_map(|a| match a {
                TopicAction::Create { topic } => Some(topic),
                _ => None,
            })
            .collect();
        if missing.is_empty() {
            report.created = created.clone();
            return Ok(report);
        }
        let configs: Vec<BTreeMap<String, String>> =
            missing.iter().map(|t| t.kafka_configs()).collect();
        let new_topics: Vec<NewTopic<'_>> = missing
            .iter()
            .zip(&configs)
            .map(|(t, configs)| {
                configs.iter().fold(
                    NewTopic::new(
                        &t.name,
                        t.partitions,
                        TopicReplication::Fixed(t.replication),
                    ),
                    |topic, (k, v)| topic.set(k, v),
                )
            })
            .collect();
        let results = self
            .admin
            .create_topics(new_topics.iter(), &self.options())
            .await
            .map_err(|e| KafkaError::CreateTopic {
                topic: missing
                    .iter()
                    .map(|t| t.name.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
                reason: e.to_string(),
                // The request as a whole failed in the client (connection, timeout): the
                // broker's refusals come per topic, below.
                transient: true,
            })?;
        let mut just_created = Vec::new();
        for result in results {
            match result {
                Ok(name) => {
                    tracing::info!(topic = %name, "Created topic.");
                    just_created.push(name.clone());
                    created.push(name);
                }
                // Another worker created it between our check and our create: that is fine.
                Err((name, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {
                    tracing::info!(topic = %name, "Topic was created concurrently.");
                }
                Err((name, code)) => {
                    return Err(KafkaError::CreateTopic {
                        topic: name,
                        reason: code.to_string(),
                        transient: transient_admin_code(code),
                    });
                }
            }
        }
        self.await_visible(&just_created).await;
        report.created = created.clone();
        Ok(report)
    }

    /// Waits (at most [`VISIBLE_WITHIN`]) until every one of `names` is in the cluster's
    /// metadata: the controller answers a creation before every broker's metadata has the topic,
    /// and what follows an apply (a check, a stage's start) must find it. Past the wait it is
    /// said in the log and the apply goes on (the topics were created).
    async fn await_visible(&self, names: &[String]) {
        if names.is_empty() {
            return;
        }
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let deadline = std::time::Instant::now() + VISIBLE_WITHIN;
        loop {
            match self.in_metadata(&names) {
                Ok(observed) if names.iter().all(|n| observed.contains_key(*n)) => return,
                _ if std::time::Instant::now() >= deadline => {
                    tracing::warn!(topics = ?names, "Created topics are not all in the cluster's metadata yet.");
                    return;
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
}

/// How long an apply waits for the topics it created to show in the metadata.
const VISIBLE_WITHIN: Duration = Duration::from_secs(30);

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::types::RDKafkaErrorCode as Code;

    #[test]
    fn a_creation_is_tried_again_only_when_the_broker_is_unwell() {
        for code in [
            Code::DestroyBroker,
            Code::NotController,
            Code::RequestTimedOut,
        ] {
            assert!(transient_admin_code(code), "{code:?}");
        }
        for code in [
            Code::InvalidConfig,
            Code::InvalidReplicationFactor,
            Code::PolicyViolation,
            Code::TopicAuthorizationFailed,
            Code::InvalidPartitions,
        ] {
            assert!(!transient_admin_code(code), "{code:?}");
        }
    }
}
