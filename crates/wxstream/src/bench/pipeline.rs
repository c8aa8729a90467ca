//! `wxstream bench pipeline`: the whole pipeline as a user feels it, on the local stack's real
//! engines. The WeCom simulator runs in this process; the four stages run as `wxstream run
//! --only <stage>` child processes (so each has its own RSS and CPU time); progress is read from
//! their `/metrics`. In the same run, each stage's ceiling on the same machine: RSA-2048
//! decryptions on every core, the broker's produce and consume rate for the same raw records,
//! MariaDB's `LOAD DATA` and the search engine's bulk rate at its best batch size.
//!
//! A benchmark: it prints figures (a table, or JSON with `--json`) and asserts nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use serde::Serialize;
use wx_codec::{Codec, now_ms};
use wx_kafka::{KafkaConfig, Producer, TopicAdmin};
use wx_mysql::MessageStore;
use wx_search::SearchIndex;
use wx_sim::{CorpFeed, FaultRates, FeedSpec, ServerConfig, SimKeys, Simulator};

use crate::bench::sink::{bulk_create_all, clean_messages, load_data_ceiling};
use crate::bench::{fixture, percentile, rsa_ceiling};
use crate::config::WorkerConfig;

#[derive(Debug, Args)]
pub struct PipelineBenchArgs {
    /// Corps in the simulated feed.
    #[arg(long, default_value_t = 3)]
    corps: usize,
    /// Bulk mode: messages per corp, all available at once.
    #[arg(long, default_value_t = 20_000)]
    messages: u64,
    /// Rate mode: messages a second (over all corps) arriving for `--duration` seconds.
    #[arg(long)]
    rate: Option<u64>,
    /// Rate mode: how long messages keep arriving, in seconds.
    #[arg(long, default_value_t = 120)]
    duration: u64,
    /// Seconds per CPU ceiling figure (RSA).
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Messages of the ceilings' fixture (RSA items, LOAD DATA rows, search documents); a
    /// smaller one makes a quick smoke run.
    #[arg(long, default_value_t = 20_000)]
    ceiling_messages: u64,
    /// Name what the run leaves after STEM (topics `STEM-bench-<time>.*`, database
    /// `STEM_bench_<time>`, indices `STEM-bench-<time>` and `STEM-ceiling-*`), so `scripts/stack
    /// prune STEM` deletes it (the smoke test passes its test stem). Without it: `bench-<time>.*`,
    /// `wxstream_bench_<time>`, `wxstream-bench-<time>`.
    #[arg(long, value_parser = parse_stem)]
    stem: Option<String>,
    /// Print one JSON document instead of the table.
    #[arg(long)]
    json: bool,
    /// mysql://user:password@host:port (default: WXSTACK_MYSQL_URL from `scripts/stack env`).
    #[arg(long, env = "WXSTACK_MYSQL_URL")]
    mysql_url: String,
    /// The search endpoint (default: WXSTACK_ES_URL).
    #[arg(long, env = "WXSTACK_ES_URL", default_value = "http://127.0.0.1:9200")]
    search_url: String,
    /// Replicas of every topic (3 on a cluster of three brokers: `min.insync.replicas` 2 too).
    #[arg(long, default_value_t = 1)]
    replication: i32,
}

/// The four stages, in pipeline order, with the counter that shows each one's progress.
const STAGES: [(&str, &str); 4] = [
    ("ingest", "wxstream_ingest_items_total"),
    ("decrypt", "wxstream_decrypt_items_produced_total"),
    ("sink", "wxstream_sink_documents_written_total"),
    ("stats", "wxstream_stats_records_consumed_total"),
];

/// A stage's child process, killed when dropped.
pub(crate) struct StageProcess {
    name: &'static str,
    counter: &'static str,
    child: Child,
    metrics: String,
    /// (seconds since the start, counter) samples.
    progress: Vec<(f64, f64)>,
}

impl Drop for StageProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl StageProcess {
    /// Peak RSS (MiB) and CPU seconds (user + system) from /proc, while it runs.
    pub(crate) fn usage(&self) -> (f64, f64) {
        process_usage(self.child.id())
    }

    /// The latest value of the stage's progress counter, sampled now.
    pub(crate) async fn sample(&mut self, http: &reqwest::Client, t: f64) -> Option<String> {
        let scrape = http
            .get(&self.metrics)
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        let value = wx_runtime::scrape::metric_sum(&scrape, self.counter);
        self.progress.push((t, value));
        Some(scrape)
    }

    /// Items a second between the first sample above zero and the first at the final value.
    pub(crate) fn rate(&self) -> (f64, f64) {
        let last = self.progress.last().map_or(0.0, |p| p.1);
        let start = self.progress.iter().find(|p| p.1 > 0.0).map(|p| p.0);
        let end = self.progress.iter().find(|p| p.1 >= last).map(|p| p.0);
        match (start, end) {
            (Some(s), Some(e)) if e > s => (last, last / (e - s)),
            _ => (last, 0.0),
        }
    }
}

/// Peak RSS (MiB) and CPU seconds (user + system) of a running process, from /proc.
pub(crate) fn process_usage(pid: u32) -> (f64, f64) {
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmHWM:"))?.to_string();
            line.split_whitespace().nth(1)?.parse::<f64>().ok()
        })
        .map_or(0.0, |kib| kib / 1024.0);
    let cpu = stat_cpu_seconds(&format!("/proc/{pid}/stat")).unwrap_or(0.0);
    (rss, cpu)
}

/// CPU seconds (user + system) from a `/proc/.../stat` file (a process's, or a thread's:
/// `/proc/thread-self/stat`).
pub(crate) fn stat_cpu_seconds(path: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the command (which may hold spaces): utime and stime are the 12th and 13th
    // after the closing parenthesis, in clock ticks.
    let rest = stat
        .rsplit_once(')')?
        .1
        .split_whitespace()
        .collect::<Vec<_>>();
    let ticks = rest.get(11)?.parse::<f64>().ok()? + rest.get(12)?.parse::<f64>().ok()?;
    Some(ticks / clock_ticks())
}

/// Kernel clock ticks a second (`getconf CLK_TCK`, 100 on Linux unless told otherwise).
fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

#[derive(Debug, Serialize)]
struct StageFigures {
    stage: &'static str,
    items: f64,
    per_second: f64,
    ceiling_per_second: Option<f64>,
    ceiling: Option<&'static str>,
    peak_rss_mib: f64,
    cpu_seconds: f64,
}

#[derive(Debug, Serialize)]
struct Figures {
    date: String,
    machine: String,
    mode: String,
    messages: u64,
    end_to_end_seconds: f64,
    end_to_end_per_second: f64,
    latency_ms_p50: f64,
    latency_ms_p95: f64,
    latency_ms_p99: f64,
    latency_samples: usize,
    row_latency_ms_p50: f64,
    row_latency_ms_p99: f64,
    stages: Vec<StageFigures>,
    /// CPU seconds of the four stages together.
    cpu_seconds: f64,
    /// The four stages' CPU per message served (ms).
    cpu_ms_per_message: f64,
    /// CPU per RSA-2048 private-key operation with every core busy (cores x seconds /
    /// operations, ms): the faster of the two below, so a slow RSA never flatters the ratio.
    rsa_ms_per_op: f64,
    /// The same for the library wxstream decrypts with.
    rsa_library_ms_per_op: f64,
    /// The same for `openssl speed -multi <cores> rsa2048` (None without the command).
    rsa_openssl_ms_per_op: Option<f64>,
    /// `cpu_ms_per_message / rsa_ms_per_op`: 1.0 would be RSA alone.
    cpu_vs_rsa: f64,
    broker_produce_per_second: f64,
    broker_consume_per_second: f64,
    search_best_batch: usize,
}

pub async fn run(config: &WorkerConfig, args: PipelineBenchArgs) -> anyhow::Result<i32> {
    let stamp = now_ms() / 1000;
    let (prefix, database, index, ceiling_index) = match &args.stem {
        Some(stem) => (
            format!("{stem}-bench-{stamp}."),
            format!("{stem}_bench_{stamp}"),
            format!("{stem}-bench-{stamp}"),
            format!("{stem}-ceiling-{stamp}"),
        ),
        None => (
            format!("bench-{stamp}."),
            format!("wxstream_bench_{stamp}"),
            format!("wxstream-bench-{stamp}"),
            format!("wxstream-ceiling-{stamp}"),
        ),
    };
    let corps: Vec<String> = (0..args.corps.max(1))
        .map(|i| format!("wwbench{i}"))
        .collect();
    let n = corps.len() as u64;
    // Bulk: every message stamped in the last hour. Rate: stamped from 15 s from now (time
    // for the stages to start) at `rate` a second; the simulator serves a message only once
    // its time has come.
    let (per_corp, start_ms, spacing_ms, mode) = match args.rate {
        None => (
            args.messages,
            now_ms() - 3_600_000,
            (3_000_000 / args.messages.max(1) as i64).max(1),
            format!("bulk: {} corps x {} messages", n, args.messages),
        ),
        Some(rate) => (
            rate * args.duration / n,
            now_ms() + 15_000,
            (n as i64 * 1000 / rate.max(1) as i64).max(1),
            format!(
                "rate: {rate} messages/s for {} s over {n} corps",
                args.duration
            ),
        ),
    };
    let total = per_corp * n;
    let dir = tempfile::tempdir()?;
    let keys = SimKeys::generate(&[1])?;
    keys.write_private(&dir.path().join("keys"), |_| true)?;
    let feeds = corps
        .iter()
        .enumerate()
        .map(|(i, corp)| {
            let spec = FeedSpec {
                corp_id: corp.clone(),
                seed: 7 + i as u64,
                messages: per_corp,
                start_ms,
                spacing_ms,
                key_versions: vec![1],
                withheld_key_version: 99,
                faults: FaultRates::default(),
                media: Default::default(),
            };
            Ok((CorpFeed::build(&spec, &keys)?, format!("secret-{corp}")))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let sim = Simulator::new(ServerConfig::default(), feeds);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let sim_url = format!("http://{}", listener.local_addr()?);
    let stop_sim = tokio_util::sync::CancellationToken::new();
    tokio::spawn(sim.serve(listener, stop_sim.clone().cancelled_owned()));

    write_topology(
        dir.path(),
        &config.topology_dir,
        &sim_url,
        &corps,
        &database,
        &index,
        &args,
    )?;
    apply_topics(config, dir.path(), &prefix, args.replication).await?;
    eprintln!(
        "wxstream bench pipeline: {mode}, {total} messages; topics {prefix}*, database {database}, index {index}"
    );

    let started = Instant::now();
    let mut stages = Vec::new();
    let env = [("WX_MYSQL_URL", args.mysql_url.as_str())];
    for (name, counter) in STAGES {
        stages.push(start_stage(
            config,
            dir.path(),
            &prefix,
            name,
            counter,
            &env,
        )?);
    }
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:40}] {pos}/{len} stored {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let http = reqwest::Client::new();
    let deadline = Duration::from_secs(args.rate.map_or(900, |_| args.duration + 600));
    let mut done_at = None;
    while done_at.is_none() {
        anyhow::ensure!(
            started.elapsed() < deadline,
            "not done after {} s; the stages' logs are in {}",
            deadline.as_secs(),
            dir.path().display()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
        let t = started.elapsed().as_secs_f64();
        let mut rows = 0.0;
        for stage in &mut stages {
            if let Ok(Some(status)) = stage.child.try_wait() {
                anyhow::bail!(
                    "the {} stage exited ({status}); its log is in {}",
                    stage.name,
                    dir.path().display()
                );
            }
            let Some(scrape) = stage.sample(&http, t).await else {
                continue;
            };
            if stage.name == "sink" {
                rows = wx_runtime::scrape::metric_sum(&scrape, "wxstream_sink_rows_written_total");
            }
        }
        let at = |name: &str| {
            stages
                .iter()
                .find(|s| s.name == name)
                .and_then(|s| s.progress.last())
                .map_or(0.0, |p| p.1)
        };
        bar.set_position(at("sink").min(rows) as u64);
        bar.set_message(format!(
            "(pulled {:.0}, decrypted {:.0}, rows {rows:.0}, documents {:.0}, counted {:.0})",
            at("ingest"),
            at("decrypt"),
            at("sink"),
            at("stats")
        ));
        if [at("sink"), rows, at("stats")]
            .iter()
            .all(|v| *v >= total as f64)
        {
            done_at = Some(now_ms());
        }
    }
    bar.finish();
    let usage: Vec<(f64, f64)> = stages.iter().map(StageProcess::usage).collect();
    let rates: Vec<(f64, f64)> = stages.iter().map(StageProcess::rate).collect();
    debug_assert_eq!(STAGES[0].0, "ingest");
    debug_assert_eq!(STAGES[2].0, "sink");
    drop(stages);
    stop_sim.cancel();

    // End to end: the first pull (the earliest `fetched_at` of the raw topic) to the moment
    // both stores held every message; latency: each message's pull to its MySQL row.
    let codec = Codec::fixed()?;
    let raw = format!("{prefix}wxstream.raw");
    let pulled = tokio::task::block_in_place(|| {
        wx_runtime::measure::pulled_at(&config.kafka, &raw, &codec)
    })?;
    let first_pull = pulled.values().copied().min().unwrap_or(0);
    let store = MessageStore::connect(
        &args.mysql_url,
        &database,
        wx_runtime::settings::default_store_timeout(),
    )
    .await?;
    let search = SearchIndex::new(
        &wx_search::Endpoint::url(&args.search_url),
        &index,
        wx_runtime::settings::default_store_timeout(),
    )?;
    let (rows, documents) = (store.count_rows("messages").await?, search.count().await?);
    anyhow::ensure!(
        rows as u64 == total && documents == total,
        "{rows} rows and {documents} documents for {total} messages"
    );
    // A message is stored once both stores hold it: the later of its row's and its document's
    // `ingested_at` (the document is written after the row's batch is committed).
    let stored = store.stored_at().await?;
    let documents_at: BTreeMap<(String, String), i64> = search
        .written_at()
        .await?
        .into_iter()
        .map(|(corp, msgid, at)| ((corp, msgid), at))
        .collect();
    let mut row_latencies = Vec::new();
    let mut latencies = Vec::new();
    for (corp, msgid, seq, row_at) in &stored {
        let Some(pulled_at) = pulled.get(&(corp.clone(), *seq)) else {
            continue;
        };
        row_latencies.push((row_at - pulled_at) as f64);
        if let Some(doc_at) = documents_at.get(&(corp.clone(), msgid.clone())) {
            latencies.push(((*row_at).max(*doc_at) - pulled_at) as f64);
        }
    }
    row_latencies.sort_by(f64::total_cmp);
    latencies.sort_by(f64::total_cmp);
    // Ingest's and the sink's rates from the records' own stamps (exact, where the metric
    // samples are 250 ms apart): items over the span of their pull times, rows over the span
    // of their write times.
    let span_rate = |times: &mut dyn Iterator<Item = i64>| {
        let (lo, hi) = times.fold((i64::MAX, i64::MIN), |(lo, hi), t| (lo.min(t), hi.max(t)));
        (hi > lo).then(|| total as f64 / ((hi - lo) as f64 / 1000.0))
    };
    let mut rates = rates;
    if let Some(r) = span_rate(&mut pulled.values().copied()) {
        rates[0].1 = r;
    }
    if let Some(r) = span_rate(&mut stored.iter().map(|s| s.3)) {
        rates[2].1 = r;
    }
    let end_to_end = (done_at.unwrap_or_else(now_ms) - first_pull) as f64 / 1000.0;

    // The ceilings, on the same machine, once the pipeline is done.
    eprintln!("measuring the ceilings on this machine");
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let f = tokio::task::block_in_place(|| fixture(args.ceiling_messages.max(1000), 1000))?;
    // The best of a few rounds each: a round the machine slowed would make RSA look dearer
    // and the stages' ratio to it better than it is.
    let (mut rsa, mut openssl) = (0.0_f64, None::<f64>);
    for _ in 0..RSA_ROUNDS {
        rsa = rsa.max(tokio::task::block_in_place(|| {
            rsa_ceiling(&f, cores, args.seconds)
        }));
        let round = tokio::task::block_in_place(|| {
            wx_crypto::bench::openssl_speed_rsa2048_on(args.seconds.ceil() as u32, cores)
        });
        openssl = match (openssl, round) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }
    let ceiling_prefix = format!("{prefix}ceiling.");
    let (produce, consume) = broker_ceiling(
        &config.kafka,
        &config.topology_dir,
        &f.batches,
        &ceiling_prefix,
    )
    .await?;
    let messages = clean_messages(&f);
    let load_data = load_data_ceiling(&args.mysql_url, &store, &messages).await?;
    let mut best = (0usize, 0.0f64);
    for batch in [250, 500, 1000, 2000] {
        // Not under `{index}-*`: two templates may not match one index.
        let probe = SearchIndex::new(
            &wx_search::Endpoint::url(&args.search_url),
            &format!("{ceiling_index}-{batch}"),
            wx_runtime::settings::default_store_timeout(),
        )?;
        probe.ensure_template().await?;
        let t = Instant::now();
        bulk_create_all(&probe, &messages, batch).await?;
        let rate = messages.len() as f64 / t.elapsed().as_secs_f64();
        if rate > best.1 {
            best = (batch, rate);
        }
    }
    let ceilings: [(Option<f64>, Option<&'static str>); 4] = [
        (Some(produce), Some("broker produce")),
        (Some(rsa), Some("RSA-2048 on every core")),
        (
            Some(load_data.min(best.1)),
            Some("min(LOAD DATA, search bulk)"),
        ),
        (Some(consume), Some("broker consume")),
    ];
    let cpu_seconds: f64 = usage.iter().map(|u| u.1).sum();
    let cpu_ms_per_message = 1000.0 * cpu_seconds / (total.max(1) as f64);
    let ms_per_op = |ops_per_second: f64| 1000.0 * cores as f64 / ops_per_second;
    let rsa_library_ms_per_op = ms_per_op(rsa);
    let rsa_openssl_ms_per_op = openssl.filter(|o| *o > 0.0).map(ms_per_op);
    let rsa_ms_per_op =
        rsa_openssl_ms_per_op.map_or(rsa_library_ms_per_op, |o| o.min(rsa_library_ms_per_op));
    let figures = Figures {
        cpu_seconds,
        cpu_ms_per_message,
        rsa_ms_per_op,
        rsa_library_ms_per_op,
        rsa_openssl_ms_per_op,
        cpu_vs_rsa: cpu_ms_per_message / rsa_ms_per_op,
        date: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        machine: machine(),
        mode,
        messages: total,
        end_to_end_seconds: end_to_end,
        end_to_end_per_second: total as f64 / end_to_end.max(0.001),
        latency_ms_p50: percentile(&latencies, 0.5),
        latency_ms_p95: percentile(&latencies, 0.95),
        latency_ms_p99: percentile(&latencies, 0.99),
        latency_samples: latencies.len(),
        row_latency_ms_p50: percentile(&row_latencies, 0.5),
        row_latency_ms_p99: percentile(&row_latencies, 0.99),
        stages: STAGES
            .iter()
            .zip(rates.iter().zip(&usage).zip(ceilings))
            .map(|(&(stage, _), ((rate, usage), ceiling))| StageFigures {
                stage,
                items: rate.0,
                per_second: rate.1,
                ceiling_per_second: ceiling.0,
                ceiling: ceiling.1,
                peak_rss_mib: usage.0,
                cpu_seconds: usage.1,
            })
            .collect(),
        broker_produce_per_second: produce,
        broker_consume_per_second: consume,
        search_best_batch: best.0,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&figures)?);
    } else {
        print_table(&figures, load_data, best.1);
    }
    Ok(0)
}

fn print_table(f: &Figures, load_data: f64, search: f64) {
    println!("{} on {}; {}", f.date, f.machine, f.mode);
    println!(
        "end to end: {} messages in {:.1} s = {:.0} messages/s (first pull to the last message in both stores)",
        f.messages, f.end_to_end_seconds, f.end_to_end_per_second
    );
    println!(
        "pull -> stored in both stores: p50 {:.0} ms, p95 {:.0} ms, p99 {:.0} ms ({} messages; to the MySQL row alone: p50 {:.0} ms, p99 {:.0} ms)",
        f.latency_ms_p50,
        f.latency_ms_p95,
        f.latency_ms_p99,
        f.latency_samples,
        f.row_latency_ms_p50,
        f.row_latency_ms_p99
    );
    println!(
        "{:<8} {:>9} {:>10} {:>12} {:>7} {:>9} {:>7}  ceiling",
        "stage", "items", "items/s", "ceiling/s", "ratio", "RSS MiB", "CPU s"
    );
    for s in &f.stages {
        let ceiling = s.ceiling_per_second.unwrap_or(0.0);
        println!(
            "{:<8} {:>9.0} {:>10.0} {:>12.0} {:>6.0}% {:>9.0} {:>7.1}  {}",
            s.stage,
            s.items,
            s.per_second,
            ceiling,
            if ceiling > 0.0 {
                100.0 * s.per_second / ceiling
            } else {
                0.0
            },
            s.peak_rss_mib,
            s.cpu_seconds,
            s.ceiling.unwrap_or("-")
        );
    }
    println!(
        "ceilings: broker produce {:.0} / consume {:.0} messages/s (as raw batches), MariaDB LOAD DATA {load_data:.0} rows/s, search bulk {search:.0} docs/s (best batch {})",
        f.broker_produce_per_second, f.broker_consume_per_second, f.search_best_batch
    );
    println!(
        "CPU: {:.1} s in the four stages = {:.3} ms per message; one RSA-2048 private-key operation with every core busy: {:.3} ms with wxstream's library, {} with `openssl speed -multi`; {:.2}x the faster",
        f.cpu_seconds,
        f.cpu_ms_per_message,
        f.rsa_library_ms_per_op,
        f.rsa_openssl_ms_per_op.map_or(
            "not measured (no openssl command)".to_string(),
            |ms| format!("{ms:.3} ms")
        ),
        f.cpu_vs_rsa
    );
}

/// CPU model and cores, from /proc/cpuinfo.
pub(crate) fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    format!("{cores} cores ({model})")
}

/// Writes the benchmark's topology: the repository's topics, and the four connectors pointed
/// at the simulator, the generated keys, a fresh database and index.
fn write_topology(
    dir: &Path,
    repo_topology: &Path,
    sim_url: &str,
    corps: &[String],
    database: &str,
    index: &str,
    args: &PipelineBenchArgs,
) -> anyhow::Result<()> {
    let connectors = dir.join("connectors");
    let secrets = dir.join("secrets");
    std::fs::create_dir_all(&connectors)?;
    std::fs::create_dir_all(&secrets)?;
    std::fs::copy(repo_topology.join("topics.yaml"), dir.join("topics.yaml"))
        .with_context(|| format!("{}/topics.yaml", repo_topology.display()))?;
    let mut corp_lines = String::new();
    for corp in corps {
        let file = secrets.join(corp);
        std::fs::write(&file, format!("secret-{corp}"))?;
        corp_lines.push_str(&format!(
            "    - corp_id: {corp}\n      secret: {{file: {}}}\n",
            file.display()
        ));
    }
    let dlq = "errors.tolerance: all\nerrors.deadletterqueue.topic.name: wxstream.dead-letter";
    let files = [
        (
            "ingest",
            format!(
                "name: ingest\nconnector.class: wxstream.ingest\ntasks.max: 4\noutput.topics: [wxstream.raw, wxstream.ingest-checkpoints]\n{dlq}\nsettings:\n  client: simulator\n  simulator_url: {sim_url}\n  page_limit: 1000\n  poll_interval: {}\n  corps:\n{corp_lines}",
                if args.rate.is_some() { "200ms" } else { "1s" }
            ),
        ),
        (
            "decrypt",
            format!(
                "name: decrypt\nconnector.class: wxstream.decrypt\ntasks.max: 2\ntopics: [wxstream.raw]\noutput.topics: [wxstream.clean]\n{dlq}\nsettings:\n  key_dir: {}\n",
                dir.join("keys").display()
            ),
        ),
        (
            "sink",
            format!(
                "name: sink\nconnector.class: wxstream.sink\ntasks.max: 2\ntopics: [wxstream.clean]\n{dlq}\nsettings:\n  mysql_url: {{env: WX_MYSQL_URL}}\n  database: {database}\n  elasticsearch_url: {}\n  index_prefix: {index}\n",
                args.search_url
            ),
        ),
        (
            "stats",
            format!(
                "name: stats\nconnector.class: wxstream.stats\ntasks.max: 1\ntopics: [wxstream.clean]\noutput.topics: [wxstream.stats, wxstream.stats-checkpoints]\n{dlq}\nsettings:\n  windows: [1m, 1h]\n"
            ),
        ),
    ];
    for (name, yaml) in files {
        std::fs::write(connectors.join(format!("{name}.yaml")), yaml)?;
    }
    Ok(())
}

/// Creates the topics of the benchmark's topology in `dir` under `prefix` (a fresh pipeline's
/// topics for every run), each with `replication` replicas.
pub(crate) async fn apply_topics(
    config: &WorkerConfig,
    dir: &Path,
    prefix: &str,
    replication: i32,
) -> anyhow::Result<()> {
    let mut topology = wx_topology::load_dir(dir)?.with_topic_prefix(prefix);
    for topic in &mut topology.topics {
        topic.replicate(replication);
    }
    TopicAdmin::new(&config.kafka)?
        .apply(&topology.topics)
        .await?;
    Ok(())
}

/// A stem as `scripts/stack prune` takes it: lowercase letters and digits, a letter first.
fn parse_stem(stem: &str) -> Result<String, String> {
    let mut chars = stem.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_lowercase());
    if first_ok && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()) {
        Ok(stem.to_string())
    } else {
        Err("lowercase letters and digits, a letter first".into())
    }
}

/// Rounds of each RSA measurement (library, `openssl speed`); the fastest counts.
const RSA_ROUNDS: usize = 3;

/// Starts `wxstream run --only <name>` on the topology in `dir`, its metrics on a free port,
/// its log in `dir/<name>.log`, with `env` added to its environment.
pub(crate) fn start_stage(
    config: &WorkerConfig,
    dir: &Path,
    prefix: &str,
    name: &'static str,
    counter: &'static str,
    env: &[(&str, &str)],
) -> anyhow::Result<StageProcess> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
    let exe: PathBuf = std::env::current_exe()?;
    let child = Command::new(exe)
        .args(["--brokers", &config.kafka.brokers, "--topology"])
        .arg(dir)
        .args(["--topic-prefix", prefix, "run", "--only", name])
        .env("WXSTREAM_METRICS_LISTEN", format!("127.0.0.1:{port}"))
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting the {name} stage"))?;
    Ok(StageProcess {
        name,
        counter,
        child,
        metrics: format!("http://127.0.0.1:{port}/metrics"),
        progress: Vec::new(),
    })
}

/// The broker's produce and consume rate for the fixture's raw batches (as messages a second:
/// records x items), on a topic of their own.
async fn broker_ceiling(
    kafka: &KafkaConfig,
    topology_dir: &Path,
    batches: &[Vec<u8>],
    prefix: &str,
) -> anyhow::Result<(f64, f64)> {
    let topics = wx_topology::load_dir(topology_dir)?
        .with_topic_prefix(prefix)
        .topics;
    let raw: Vec<_> = topics
        .into_iter()
        .filter(|t| t.name.ends_with("wxstream.raw"))
        .collect();
    anyhow::ensure!(!raw.is_empty(), "no raw topic in the repository's topology");
    TopicAdmin::new(kafka)?.apply(&raw).await?;
    let topic = raw[0].name.clone();
    let producer = Producer::new(kafka, "wxstream-bench", Duration::from_secs(60))?;
    let items_per_batch = 1000.0;
    // Three rounds of the fixture's batches (60 records of 1,000 items): long enough to time.
    const ROUNDS: usize = 3;
    let started = Instant::now();
    let mut pending = Vec::new();
    for round in 0..ROUNDS {
        for (i, batch) in batches.iter().enumerate() {
            let key = format!("k{round}-{i}");
            pending.push(producer.enqueue(&topic, key.as_bytes(), batch)?);
        }
    }
    for p in pending {
        p.acknowledged().await?;
    }
    let records = (ROUNDS * batches.len()) as f64;
    let produce = records * items_per_batch / started.elapsed().as_secs_f64();
    let started = Instant::now();
    let read = tokio::task::block_in_place(|| {
        wx_kafka::read_topic(kafka, &topic, Duration::from_secs(120))
    })?;
    let consume = read.len() as f64 * items_per_batch / started.elapsed().as_secs_f64();
    Ok((produce, consume))
}
