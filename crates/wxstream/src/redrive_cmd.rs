//! `wxstream redrive [--stage STAGE]`: replays a stage's parked dead letters through its own
//! redrive (`wx_runtime::redrive::Redrive`: the decrypt stage's through decryption, the sink's
//! into its targets, the media stage's files into the bucket), with filters, a progress bar, a
//! dry-run mode and a summary table. The stages come from the one list `run` uses (`stages`).

use std::time::{Duration, UNIX_EPOCH};

use anyhow::Context;
use clap::Args;
use wx_codec::DeadLetter;
use wx_runtime::letters::{RedriveFilter, RedriveSummary, by_class};
use wx_runtime::{DEAD_LETTER, StageContext};

use crate::config::WorkerConfig;
use crate::run_cmd::connector_of;

#[derive(Debug, Args)]
pub struct RedriveArgs {
    /// Whose letters to replay (a stage with a redrive: decrypt, sink, media).
    #[arg(long, default_value = "decrypt", value_parser = crate::stages::name_parser())]
    stage: String,
    /// Only these error classes (repeatable), e.g. `unknown_key_version`.
    #[arg(long = "class")]
    classes: Vec<String>,
    /// Only these key versions (repeatable).
    #[arg(long = "key-version")]
    key_versions: Vec<i32>,
    /// Only these corps (repeatable).
    #[arg(long = "corp")]
    corps: Vec<String>,
    /// Only records whose last failure is at or after this time: RFC 3339
    /// (`2026-11-22T10:00:00Z`) or an age (`2h` = two hours ago).
    #[arg(long)]
    since: Option<String>,
    /// Only records whose last failure is before this time (same forms as --since).
    #[arg(long)]
    until: Option<String>,
    /// Decrypt and report what would happen, write nothing.
    #[arg(long)]
    dry_run: bool,
    /// How long reading the dead-letter topic to its end may take.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    read_timeout: Duration,
}

use wx_codec::now_ms;

/// An RFC 3339 time or an age before now, in ms.
fn parse_time(text: &str) -> anyhow::Result<i64> {
    if let Ok(age) = humantime::parse_duration(text) {
        return Ok(now_ms() - i64::try_from(age.as_millis()).unwrap_or(i64::MAX));
    }
    let at = humantime::parse_rfc3339_weak(text)
        .with_context(|| format!("`{text}` is neither an RFC 3339 time nor an age like 2h"))?;
    Ok(at
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0))
}

pub async fn run(config: &WorkerConfig, args: RedriveArgs) -> anyhow::Result<i32> {
    let topology = config.topology()?;
    let codec = config.codec().await?;
    let filter = RedriveFilter {
        classes: args.classes.clone(),
        key_versions: args.key_versions.clone(),
        corps: args.corps.clone(),
        since_ms: args.since.as_deref().map(parse_time).transpose()?,
        until_ms: args.until.as_deref().map(parse_time).transpose()?,
    };
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} redrive [{bar:40}] {pos}/{len} {per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let progress = |done: u64| bar.set_position(done);
    let entry =
        crate::stages::by_name(&args.stage).with_context(|| format!("no stage {}", args.stage))?;
    let connector = connector_of(&topology, entry.class)?;
    let Some((redrive, context)) = (entry.redrive)(
        &config.topic_prefix,
        connector,
        &config.kafka,
        codec.clone(),
    )
    .await
    .with_context(|| format!("connector {}", connector.name))?
    else {
        anyhow::bail!("the {} stage has no redrive", entry.name);
    };
    // A redrive that writes is an operator action: audited (a dry run changes nothing).
    let auditor = match args.dry_run {
        true => None,
        false => crate::audit::Auditor::of(config)?,
    };
    if auditor.is_none() && !args.dry_run {
        tracing::warn!(
            "The topology has no sink connector, so no archive database: this redrive is not audited."
        );
    }
    let selected = select(&context, &filter, args.read_timeout).await?;
    bar.set_length(selected.len() as u64);
    let request = wx_runtime::redrive::RedriveRequest {
        selected,
        dry_run: args.dry_run,
        progress: &progress,
    };
    let redriven = redrive.redrive(request).await;
    bar.finish_and_clear();
    if let Some(auditor) = auditor {
        let counts = redriven.as_ref().map(|summary| {
            let mut counts = serde_json::Map::new();
            for ((_, outcome), n) in &summary.rows {
                let total = counts.entry(outcome.clone()).or_insert(0.into());
                *total = (total.as_u64().unwrap_or(0) + n).into();
            }
            serde_json::Value::Object(counts)
        });
        let counts = counts.map_err(|e| anyhow::anyhow!("{e}"));
        let arguments = serde_json::json!({
            "stage": args.stage,
            "classes": args.classes,
            "key_versions": args.key_versions,
            "corps": args.corps,
            "since": args.since,
            "until": args.until,
        });
        auditor
            .record(crate::audit::cli_action("redrive", arguments, &counts))
            .await?;
    }
    let summary = redriven?;
    report(&summary, args.dry_run, &redrive.destination());
    Ok(0)
}

/// The letters of the context's stage parked now that `filter` selects, with a line on what
/// is parked.
async fn select(
    context: &StageContext,
    filter: &RedriveFilter,
    timeout: Duration,
) -> anyhow::Result<Vec<(String, DeadLetter)>> {
    let (parked, selected) = wx_runtime::redrive::select(context, filter, timeout).await?;
    let mut classes: Vec<_> = by_class(&parked.letters).into_iter().collect();
    classes.sort();
    eprintln!(
        "{} parked in {} ({} unreadable records skipped); by class: {classes:?}; {} of stage {} selected.",
        parked.letters.len(),
        context.topic(DEAD_LETTER),
        parked.unreadable,
        selected.len(),
        context.stage
    );
    Ok(selected)
}

/// The summary table and its last line.
fn report(summary: &RedriveSummary, dry_run: bool, destination: &str) {
    println!("{:<24} {:<36} {:>8}", "parked class", "outcome", "records");
    for ((class, outcome), n) in &summary.rows {
        println!("{class:<24} {outcome:<36} {n:>8}");
    }
    let (moved, failed) = if dry_run {
        (summary.count("would_move"), summary.count("would_fail"))
    } else {
        (
            summary.count("moved"),
            summary.count("failed_again") + summary.count("encode_failed"),
        )
    };
    println!(
        "{}: {moved} moved to {destination}, {failed} still parked{}.",
        if dry_run { "dry run" } else { "redrive" },
        if dry_run { " (nothing written)" } else { "" },
    );
}
