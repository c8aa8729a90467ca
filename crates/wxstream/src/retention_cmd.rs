//! `wxstream retention run [--dry-run] [--every D]`: deletes what each corp's retention
//! (`topology/retention.yaml`) no longer keeps and no legal hold covers, from MySQL, search, the
//! media bucket and the dead-letter topic (`purge`); audited, a run a store failed part-way too.
//! A dry run prints the same counts and writes nothing (not even an audit entry). With
//! `--every`, it runs again at that interval until stopped (a schedule inside a long-running
//! process; a Kubernetes CronJob runs it once).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use serde_json::{Value, json};
use wx_mysql::purge::Selection;

use crate::audit::Auditor;
use crate::config::WorkerConfig;
use crate::purge::{Archive, Counts, Wholes, finish, held_clauses, purge, summary};

#[derive(Debug, clap::Subcommand)]
pub enum RetentionCommand {
    /// Delete what each corp's retention no longer keeps (held messages stay).
    Run(RetentionArgs),
}

#[derive(Debug, Args)]
pub struct RetentionArgs {
    /// Print what would be deleted, per store, and write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Run again at this interval until SIGTERM (e.g. `24h`).
    #[arg(long, value_parser = humantime::parse_duration)]
    every: Option<Duration>,
    /// How long reading the dead-letter topic to its end may take.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    read_timeout: Duration,
}

pub async fn run(config: &WorkerConfig, command: RetentionCommand) -> anyhow::Result<i32> {
    let RetentionCommand::Run(args) = command;
    loop {
        let code = run_once(config, &args).await?;
        let Some(every) = args.every else {
            return Ok(code);
        };
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = tokio::signal::ctrl_c() => return Ok(code),
        }
    }
}

async fn run_once(config: &WorkerConfig, args: &RetentionArgs) -> anyhow::Result<i32> {
    let policy = wx_topology::load_retention(&config.topology_dir)?.with_context(|| {
        format!(
            "no retention.yaml in {}: there is no retention to apply",
            config.topology_dir.display()
        )
    })?;
    let auditor = Auditor::new(config)?;
    let now = wx_codec::now_ms();
    // What the run was given, filled in as it is learnt (an entry of a run that failed part-way
    // still says which holds and cutoffs it had got to).
    let mut arguments = json!({"now_ms": now, "cutoffs": {}, "holds": []});
    let done = retain(config, &auditor, &policy, args, now, &mut arguments).await;
    if args.dry_run {
        done?;
        println!("dry run: nothing written.");
        return Ok(0);
    }
    // Audited however it ended: done, or a store that failed part-way.
    auditor.audited("retention.run", arguments, done).await?;
    println!("retention run done (audited).");
    Ok(0)
}

/// The run (or, with `--dry-run`, its counts), printed per store; its summary.
async fn retain(
    config: &WorkerConfig,
    auditor: &Auditor,
    policy: &wx_topology::RetentionPolicy,
    args: &RetentionArgs,
    now: i64,
    arguments: &mut Value,
) -> anyhow::Result<Value> {
    let archive = Archive::connect(config, auditor.store().await?.clone()).await?;
    let holds = archive.mysql.holds(false).await?;
    arguments["holds"] = json!(holds.iter().map(|h| h.id).collect::<Vec<_>>());
    let cutoff = |corp: &str| policy.cutoff_ms(corp, now);
    let selected = |corp: &str, newest: i64| cutoff(corp).is_some_and(|c| newest < c);
    let wholes = Wholes::find(&archive, &holds, &selected).await?;
    let mut letters = archive.dead_letters(args.read_timeout).await?;
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} retention {msg} {pos} messages {per_sec}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    let progress = |n: u64| bar.inc(n);
    let mut per_corp: BTreeMap<String, Counts> = BTreeMap::new();
    let mut cutoffs = serde_json::Map::new();
    for corp in archive.mysql.corps().await? {
        let Some(before) = cutoff(&corp) else {
            continue;
        };
        bar.set_message(corp.clone());
        cutoffs.insert(corp.clone(), json!(before));
        arguments["cutoffs"] = Value::Object(cutoffs.clone());
        let counts = purge(
            &archive,
            &Selection::before(&corp, before),
            &holds,
            &wholes,
            &mut letters,
            args.dry_run,
            &progress,
        )
        .await?;
        per_corp.insert(corp, counts);
    }
    // Letters whose message never reached MySQL (it could not be decrypted): its time is not
    // known, but it is no later than when it was parked, so a letter parked before its corp's
    // cutoff is expired. Kept while any hold covers its corp (whose user it is cannot be told).
    let expired: Vec<(String, String)> = letters
        .iter()
        .filter_map(|(key, letter)| {
            let corp = letter.corp_id.as_deref()?;
            let before = cutoff(corp)?;
            let held = holds
                .iter()
                .any(|h| h.released.is_none() && h.corp_id == corp);
            (!held && letter.first_failed_at < before).then(|| (corp.to_string(), key.clone()))
        })
        .collect();
    for (corp, key) in expired {
        if !args.dry_run {
            archive.tombstone(std::slice::from_ref(&key)).await?;
        }
        per_corp.entry(corp).or_default().dead_letters += 1;
    }
    // Whole partitions and indices.
    let query = json!({"bool": {
        "should": cutoffs.iter().map(|(corp, before)| json!({"bool": {"filter": [
            {"term": {"corp_id": corp}}, {"range": {"msgtime": {"lt": before}}}
        ]}})).collect::<Vec<Value>>(),
        "minimum_should_match": 1,
        "must_not": held_clauses(&holds),
    }});
    let wholes_done = finish(&archive, &holds, &wholes, &selected, &query, args.dry_run).await?;
    bar.finish_and_clear();
    let mut total = wholes_done;
    for counts in per_corp.values() {
        total.add(counts);
    }
    total.print(args.dry_run);
    Ok(summary(&total, &per_corp))
}
