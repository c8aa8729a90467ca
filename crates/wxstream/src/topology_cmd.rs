//! `wxstream topology apply | check | show`.

use anyhow::Context;
use clap::Subcommand;
use wx_kafka::{ApplyReport, TopicAdmin};
use wx_topology::TopicAction;

use crate::config::WorkerConfig;

#[derive(Debug, Subcommand)]
pub enum TopologyCommand {
    /// Create missing topics and report drift; never alters or deletes an existing topic.
    /// Exits 0 when every topic is as declared, 2 when drift remains.
    Apply {
        /// Replication factor for every topic (overrides topics.yaml; 3 on production clusters).
        #[arg(long)]
        replication: Option<i32>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Compare the broker with the topology; exits 1 on any missing topic or drift.
    Check {
        #[arg(long)]
        replication: Option<i32>,
        #[arg(long)]
        json: bool,
    },
    /// Print the validated topology as JSON (connectors and resolved topics).
    Show,
}

pub async fn run(config: &WorkerConfig, command: TopologyCommand) -> anyhow::Result<i32> {
    let mut topology = config.topology()?;
    let (replication, json, apply) = match command {
        TopologyCommand::Show => {
            println!("{}", serde_json::to_string_pretty(&topology)?);
            return Ok(0);
        }
        TopologyCommand::Apply { replication, json } => (replication, json, true),
        TopologyCommand::Check { replication, json } => (replication, json, false),
    };
    if let Some(r) = replication {
        anyhow::ensure!(r >= 1, "--replication must be at least 1");
        for topic in &mut topology.topics {
            topic.replicate(r);
            if let Some(problem) = topic.durability_problem() {
                anyhow::bail!("topic {} with --replication {r}: {problem}", topic.name);
            }
        }
    }
    let admin = TopicAdmin::new(&config.kafka)?;
    let report = if apply {
        admin.apply(&topology.topics).await
    } else {
        admin.check(&topology.topics).await
    }
    .with_context(|| format!("topology {} failed", if apply { "apply" } else { "check" }))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report, apply);
    }
    // The topics that hold messages must not keep them longer than the archive may.
    let outlasting = match wx_topology::load_retention(&config.topology_dir)? {
        Some(policy) => policy.outlasting_topics(&topology.topics),
        None => Vec::new(),
    };
    for problem in &outlasting {
        eprintln!("retention: {problem}");
    }
    Ok(match (apply, report.in_sync(), report.has_drift()) {
        (true, _, false) => 0,
        (true, _, true) => 2,
        (false, true, _) if outlasting.is_empty() => 0,
        (false, _, _) => 1,
    })
}

fn print_report(report: &ApplyReport, apply: bool) {
    for action in &report.actions {
        match action {
            TopicAction::Create { topic } if report.created.contains(&topic.name) => println!(
                "created   {:<36} partitions={} replication={} cleanup={} retention={}",
                topic.name,
                topic.partitions,
                topic.replication,
                topic.cleanup_policy.as_kafka(),
                topic.retention
            ),
            TopicAction::Create { topic } if apply => {
                println!("existing  {:<36} (created concurrently)", topic.name)
            }
            TopicAction::Create { topic } => println!("MISSING   {}", topic.name),
            TopicAction::InSync { name } => println!("in sync   {name}"),
            TopicAction::Drift { name, drift } => {
                println!("DRIFT     {name}");
                for d in drift {
                    println!("            {d}");
                }
            }
        }
    }
    if !report.configs_compared {
        println!(
            "note: the broker did not describe topic configs; only partitions and replication were compared"
        );
    }
    if report.has_drift() {
        println!(
            "drift is reported, never repaired: fix it by hand (e.g. kafka-topics --alter) or update topology/topics.yaml"
        );
    }
}
