//! `wxstream redrive`: replays parked dead letters of the decrypt stage through decryption
//! (see `wx_decrypt::redrive` for the guarantees), with a progress bar, a dry-run mode and a
//! summary table.

use std::time::{Duration, UNIX_EPOCH};

use anyhow::Context;
use clap::Args;
use wx_decrypt::redrive::{RedriveFilter, by_class, parked, redrive};

use wx_decrypt::{DecryptSettings, Outputs};

use crate::config::WorkerConfig;
use crate::run_cmd::stage_context;

#[derive(Debug, Args)]
pub struct RedriveArgs {
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
    let (settings, context) = stage_context::<DecryptSettings>(&topology, config, codec.clone())?;
    let filter = RedriveFilter {
        classes: args.classes.clone(),
        key_versions: args.key_versions.clone(),
        corps: args.corps.clone(),
        since_ms: args.since.as_deref().map(parse_time).transpose()?,
        until_ms: args.until.as_deref().map(parse_time).transpose()?,
    };
    let decryptor = wx_decrypt::build_decryptor(&settings, codec.clone())
        .with_context(|| format!("connector {}", context.connector.name))?;
    eprintln!(
        "Key versions loaded: {:?}",
        decryptor.keys().current().versions()
    );

    let outputs = Outputs::new(&context, context.producer(settings.delivery_timeout)?);
    let kafka = config.kafka.clone();
    let topic = outputs.dead_letter_topic().to_string();
    let timeout = args.read_timeout;
    let records = tokio::task::spawn_blocking(move || {
        let partitions = wx_kafka::partition_count(&kafka, &topic)?;
        wx_kafka::read_to_end(
            &kafka,
            &topic,
            &(0..partitions).collect::<Vec<_>>(),
            timeout,
        )
    })
    .await?
    .with_context(|| format!("reading {}", outputs.dead_letter_topic()))?;
    let parked = parked(&codec, &records);
    let selected: Vec<_> = parked
        .letters
        .iter()
        .filter(|(_, d)| filter.matches(d))
        .cloned()
        .collect();
    let mut classes: Vec<_> = by_class(&parked.letters).into_iter().collect();
    classes.sort();
    eprintln!(
        "{} parked in {} ({} unreadable records skipped); by class: {:?}; {} selected.",
        parked.letters.len(),
        outputs.dead_letter_topic(),
        parked.unreadable,
        classes,
        selected.len()
    );

    let bar = indicatif::ProgressBar::new(selected.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} redrive [{bar:40}] {pos}/{len} {per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let progress = |done: u64| bar.set_position(done);
    let summary = redrive(decryptor, &outputs, selected, args.dry_run, &progress).await;
    bar.finish_and_clear();

    println!("{:<24} {:<36} {:>8}", "parked class", "outcome", "records");
    for ((class, outcome), n) in &summary.rows {
        println!("{class:<24} {outcome:<36} {n:>8}");
    }
    let (moved, failed) = if args.dry_run {
        (summary.count("would_move"), summary.count("would_fail"))
    } else {
        (
            summary.count("moved"),
            summary.count("failed_again") + summary.count("encode_failed"),
        )
    };
    println!(
        "{}: {moved} moved to {}, {failed} still parked{}.",
        if args.dry_run { "dry run" } else { "redrive" },
        outputs.clean_topic(),
        if args.dry_run {
            " (nothing written)"
        } else {
            ""
        },
    );
    Ok(0)
}
