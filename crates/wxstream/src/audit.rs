//! The audit log of operator actions: each entry appended to the archive's MySQL `audit_log`
//! (hash-chained, append-only: `wx_mysql::audit`) and then copied to the audit topic
//! (`wxstream.audit`, kept forever). `wxstream audit verify` checks the table's chain and that
//! the topic's copy agrees with it; `wxstream audit list` prints the entries.
//!
//! The archive is where the sink writes: its connector's `mysql_url` and `database`. Who acted is
//! the REST call's authenticated principal (`ops`), or `os:<user>@<host>` for a CLI command.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use wx_kafka::{KafkaConfig, Producer};
use wx_mysql::MessageStore;
use wx_mysql::audit::{AuditAction, AuditEntry, BrokenLink, compare_copies, verify_chain};
use wx_sink::ArchiveDatabase;
use wx_topology::ConnectorClass;

use crate::config::WorkerConfig;

/// The audit topic's name, before the pipeline's prefix.
pub const TOPIC: &str = "wxstream.audit";

/// The counter of entries that could not be written (to the table or the topic).
const FAILURES: &str = "wxstream_audit_failures_total";

/// Appends operator actions to the table and the topic.
pub struct Auditor {
    settings: ArchiveDatabase,
    /// Connected on first use: a worker that hosts no sink still starts while MySQL is away.
    store: tokio::sync::OnceCell<MessageStore>,
    producer: Producer,
    kafka: KafkaConfig,
    topic: String,
}

impl std::fmt::Debug for Auditor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auditor")
            .field("database", &self.settings.database)
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl Auditor {
    /// The auditor of the archive the topology's sink connector writes; none when the topology
    /// has no sink (a pipeline that archives nothing: said by the caller).
    pub fn of(config: &WorkerConfig) -> anyhow::Result<Option<Auditor>> {
        let topology = config.topology()?;
        if !topology
            .connectors
            .iter()
            .any(|c| c.class == ConnectorClass::Sink)
        {
            return Ok(None);
        }
        Self::new(config).map(Some)
    }

    /// The auditor of the archive the topology's sink connector writes.
    pub fn new(config: &WorkerConfig) -> anyhow::Result<Auditor> {
        let topology = config.topology()?;
        let sink = crate::run_cmd::connector_of(&topology, ConnectorClass::Sink)
            .context("the audit log lives in the sink's MySQL database")?;
        let settings = ArchiveDatabase::of(&sink.settings)
            .with_context(|| format!("connector {}", sink.name))?;
        let producer = Producer::new(&config.kafka, "wxstream-audit", settings.store_timeout)?;
        Ok(Auditor {
            settings,
            store: tokio::sync::OnceCell::new(),
            producer,
            kafka: config.kafka.clone(),
            topic: format!("{}{TOPIC}", config.topic_prefix),
        })
    }

    /// The archive's MySQL store (connected, migrations applied).
    pub async fn store(&self) -> anyhow::Result<&MessageStore> {
        self.store
            .get_or_try_init(|| async {
                let url = self.settings.mysql_url.resolve()?;
                MessageStore::connect(
                    url.expose(),
                    &self.settings.database,
                    self.settings.store_timeout,
                )
                .await
                .with_context(|| format!("MySQL database {}", self.settings.database))
            })
            .await
    }

    /// Appends `action`: to the table first (the chain), then to the topic. An error names
    /// which of the two it could not write; each failure is counted (`wxstream_audit_failures_total`).
    pub async fn record(&self, action: AuditAction) -> anyhow::Result<AuditEntry> {
        let written = self.record_untracked(&action).await;
        if let Err(e) = &written {
            metrics::counter!(FAILURES).increment(1);
            tracing::error!(action = %action.action, error = %format!("{e:#}"), "An operator action could not be written to the audit log.");
        }
        written
    }

    /// Appends `action` for a command that already ran or failed (`done`: its counts, or its
    /// error), then hands `done` on. A destructive command that failed part-way (a store down
    /// after some deletions) is in the log with its cause, not missing from it.
    pub async fn audited(
        &self,
        action: &str,
        arguments: serde_json::Value,
        done: anyhow::Result<serde_json::Value>,
    ) -> anyhow::Result<serde_json::Value> {
        self.record(cli_action(action, arguments, &done))
            .await
            .with_context(|| match &done {
                Ok(_) => "the action was done, but its audit entry could not be written".into(),
                Err(e) => format!(
                    "the action failed ({e:#}), and its audit entry could not be written either"
                ),
            })?;
        done
    }

    async fn record_untracked(&self, action: &AuditAction) -> anyhow::Result<AuditEntry> {
        let store = self.store().await?;
        let entry = store
            .audit_append(action, wx_codec::now_ms())
            .await
            .context("appending to the audit_log table")?;
        let value = serde_json::to_vec(&entry)?;
        self.producer
            .send(
                &self.topic,
                Some(0),
                entry.seq.to_string().as_bytes(),
                &value,
            )
            .await
            .with_context(|| {
                format!(
                    "entry {} is in the audit_log table but could not be copied to topic {}",
                    entry.seq, self.topic
                )
            })?;
        Ok(entry)
    }

    /// Every entry of the audit topic, read to its end.
    pub async fn topic_entries(&self, timeout: Duration) -> anyhow::Result<Vec<AuditEntry>> {
        let (kafka, topic) = (self.kafka.clone(), self.topic.clone());
        let records =
            tokio::task::spawn_blocking(move || wx_kafka::read_topic(&kafka, &topic, timeout))
                .await??;
        records
            .iter()
            .filter_map(|r| r.value.as_deref())
            .map(|v| {
                serde_json::from_slice(v)
                    .with_context(|| format!("a record of topic {} is not an entry", self.topic))
            })
            .collect()
    }
}

/// Who runs this CLI command: `os:<user>@<host>`.
pub fn os_principal() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .ok()
        .filter(|u| !u.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/self/status")
                .ok()?
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().next())
                .map(|uid| format!("uid {uid}"))
        })
        .unwrap_or_else(|| "unknown".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    if host.is_empty() {
        format!("os:{user}")
    } else {
        format!("os:{user}@{host}")
    }
}

/// An action of this CLI process's user.
pub fn cli_action(
    action: &str,
    arguments: serde_json::Value,
    outcome: &anyhow::Result<serde_json::Value>,
) -> AuditAction {
    let (counts, outcome) = match outcome {
        Ok(counts) => (counts.clone(), "ok".to_string()),
        Err(e) => (serde_json::json!({}), format!("error: {e:#}")),
    };
    AuditAction {
        principal: os_principal(),
        action: action.into(),
        arguments,
        counts,
        outcome,
    }
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the audit_log table's hash chain and that the audit topic's copy agrees with it;
    /// exits 1 naming the first broken link.
    Verify {
        /// Check the table's chain only (the topic unreachable or not kept).
        #[arg(long)]
        table_only: bool,
        /// How long reading the audit topic to its end may take.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        read_timeout: Duration,
    },
    /// Print the entries, oldest first, one JSON object per line.
    List {
        /// Only the last N entries.
        #[arg(long)]
        last: Option<usize>,
    },
}

pub async fn run(config: &WorkerConfig, command: AuditCommand) -> anyhow::Result<i32> {
    let auditor = Arc::new(Auditor::new(config)?);
    let entries = auditor.store().await?.audit_entries().await?;
    match command {
        AuditCommand::List { last } => {
            let skip = last.map_or(0, |n| entries.len().saturating_sub(n));
            for entry in &entries[skip..] {
                println!("{}", serde_json::to_string(entry)?);
            }
            Ok(0)
        }
        AuditCommand::Verify {
            table_only,
            read_timeout,
        } => {
            let checked = match verify_chain(&entries) {
                Err(broken) => Err(("the audit_log table's chain", broken)),
                Ok(()) if table_only => Ok(()),
                Ok(()) => {
                    let copy = auditor.topic_entries(read_timeout).await?;
                    compare_copies(&entries, &copy).map_err(|b| ("the audit topic's copy", b))
                }
            };
            Ok(report(entries.len(), &checked, table_only))
        }
    }
}

/// Prints the verdict; the exit code.
fn report(entries: usize, checked: &Result<(), (&str, BrokenLink)>, table_only: bool) -> i32 {
    match checked {
        Ok(()) => {
            println!(
                "audit log intact: {entries} entries chained{}.",
                if table_only {
                    ""
                } else {
                    ", the audit topic's copy agrees"
                }
            );
            0
        }
        Err((what, broken)) => {
            println!("audit log BROKEN: {what}: first broken link at {broken}.");
            1
        }
    }
}
