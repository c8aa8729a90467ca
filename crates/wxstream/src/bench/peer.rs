//! `wxstream bench stats-peer`: the stats stage next to a peer, a Kafka Streams application
//! (`scripts/peer/kafka-streams`, run by `scripts/bench-peer`) counting the same clean topic in
//! the same windows with the same grace.
//!
//! Two runs on the local broker:
//! - **throughput**: `--messages` clean messages are written first, then each counts them alone
//!   (the stats stage, then the peer): records a second, records a CPU second, peak RSS;
//! - **emit delay**: both count a topic written at 200 messages a second stamped with the wall
//!   clock, for `--delay-seconds`; the delay of a window's final record is the wall clock at
//!   emission minus the window's end minus the grace.
//!
//! A benchmark: it prints figures and asserts nothing.

use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;
use wx_codec::{ChatMessage, Codec, GroupWindowCount, now_ms};
use wx_kafka::{KafkaConfig, Producer, TopicAdmin};

use crate::bench::pipeline::{StageProcess, process_usage, start_stage};
use crate::bench::sink::clean_messages;
use crate::bench::{fixture, percentile};
use crate::config::WorkerConfig;

const WINDOW_MS: i64 = 60_000;
const GRACE_MS: i64 = 10_000;

#[derive(Debug, Args)]
pub struct PeerBenchArgs {
    /// Clean messages counted in the throughput run.
    #[arg(long, default_value_t = 100_000)]
    messages: u64,
    /// Seconds of the emit-delay run (200 messages a second, stamped with the wall clock).
    #[arg(long, default_value_t = 60)]
    delay_seconds: u64,
    /// The peer's Java classpath (its jars and compiled classes; `scripts/bench-peer` sets it).
    #[arg(long)]
    peer_classpath: String,
    /// The java command (a JDK 17 or later).
    #[arg(long, default_value = "java")]
    java: String,
    /// Print one JSON document instead of the table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Default, Serialize)]
struct Side {
    records_per_second: f64,
    records_per_cpu_second: f64,
    cpu_seconds: f64,
    peak_rss_mib: f64,
    windows_closed_in_delay_run: usize,
    emit_delay_ms_p50: f64,
    emit_delay_ms_p99: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    date: String,
    messages: u64,
    window_ms: i64,
    grace_ms: i64,
    stats_stage: Side,
    kafka_streams: Side,
}

/// The peer's JVM, killed when dropped; its stdout lines collected as they come.
struct Peer {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Peer {
    fn start(
        args: &PeerBenchArgs,
        config: &WorkerConfig,
        input: &str,
        output: &str,
        application: &str,
        expected: u64,
    ) -> anyhow::Result<Peer> {
        let schema = config.topology_dir.join("../schemas/clean_message.avsc");
        let mut child = Command::new(&args.java)
            .args(["-cp", &args.peer_classpath, "wxstream.peer.WindowCount"])
            .args([&config.kafka.brokers, input, output, application])
            .args([WINDOW_MS.to_string(), GRACE_MS.to_string()])
            .arg(&schema)
            .arg(expected.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take();
        let sink = lines.clone();
        std::thread::spawn(move || {
            let Some(stdout) = stdout else { return };
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                sink.lock().unwrap_or_else(|p| p.into_inner()).push(line);
            }
        });
        Ok(Peer { child, lines })
    }

    fn line(&self, prefix: &str) -> Option<String> {
        let lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        lines
            .iter()
            .find_map(|l| l.strip_prefix(prefix).map(str::to_string))
    }

    fn delays(&self) -> Vec<f64> {
        let lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        lines
            .iter()
            .filter_map(|l| l.strip_prefix("DELAY ")?.parse().ok())
            .collect()
    }
}

pub async fn run(config: &WorkerConfig, args: PeerBenchArgs) -> anyhow::Result<i32> {
    let prefix = format!("peer-{}.", now_ms() / 1000);
    let dir = tempfile::tempdir()?;
    write_stats_topology(dir.path(), &config.topology_dir)?;
    let codec = Codec::fixed()?;
    let kafka = &config.kafka;
    let http = reqwest::Client::new();

    // Throughput: the messages first, then each side counts them alone.
    let f = tokio::task::block_in_place(|| fixture(args.messages, 1000))?;
    let messages = clean_messages(&f);
    let n = messages.len() as u64;
    let input = apply_topics(config, &format!("{prefix}bulk.")).await?;
    produce(kafka, &input, &codec, &messages).await?;
    eprintln!("wxstream bench stats-peer: {n} clean messages in {input}; the stats stage counts");
    let mut stats = Side::default();
    {
        let mut stage = start_stage(
            config,
            dir.path(),
            &format!("{prefix}bulk."),
            "stats",
            "wxstream_stats_records_consumed_total",
            &[],
        )?;
        let started = Instant::now();
        wait_for(&mut stage, &http, n as f64, started).await?;
        let (rss, cpu) = stage.usage();
        stats.records_per_second = stage.rate().1;
        (stats.peak_rss_mib, stats.cpu_seconds) = (rss, cpu);
        stats.records_per_cpu_second = n as f64 / cpu.max(0.001);
    }
    eprintln!("the Kafka Streams peer counts");
    let mut streams = Side::default();
    {
        let output = format!("{prefix}bulk.peer-counts");
        create_like_stats(config, &output).await?;
        let peer = Peer::start(
            &args,
            config,
            &input,
            &output,
            &format!("{prefix}bulk-peer"),
            n,
        )?;
        let deadline = Instant::now() + Duration::from_secs(600);
        let report = loop {
            if let Some(report) = peer.line("REPORT ") {
                break report;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the peer did not finish in 600 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let report: serde_json::Value = serde_json::from_str(&report)?;
        let (rss, cpu) = process_usage(peer.child.id());
        streams.records_per_second = report["records_per_second"].as_f64().unwrap_or(0.0);
        (streams.peak_rss_mib, streams.cpu_seconds) = (rss, cpu);
        streams.records_per_cpu_second = n as f64 / cpu.max(0.001);
    }

    // Emit delay: both at once on a topic written at 200 messages a second with wall-clock
    // times; afterwards, a window and its grace of quiet so the last windows can close.
    let delay_prefix = format!("{prefix}delay.");
    let input = apply_topics(config, &delay_prefix).await?;
    let output = format!("{delay_prefix}peer-counts");
    create_like_stats(config, &output).await?;
    eprintln!(
        "emit delay: 200 messages/s for {} s, both counting",
        args.delay_seconds
    );
    let stage = start_stage(
        config,
        dir.path(),
        &delay_prefix,
        "stats",
        "wxstream_stats_records_consumed_total",
        &[],
    )?;
    let peer = Peer::start(
        &args,
        config,
        &input,
        &output,
        &format!("{prefix}delay-peer"),
        0,
    )?;
    let producer = Producer::new(kafka, "wxstream-bench", Duration::from_secs(30))?;
    let started = Instant::now();
    let mut sent = 0usize;
    while started.elapsed() < Duration::from_secs(args.delay_seconds) {
        let due = (started.elapsed().as_secs_f64() * 200.0) as usize;
        while sent < due {
            let mut m = messages[sent % messages.len()].clone();
            m.msgid = format!("{}-{sent}", m.msgid);
            m.msgtime = now_ms();
            producer
                .enqueue(&input, m.partition_key().as_bytes(), &codec.encode(&m)?)?
                .acknowledged()
                .await?;
            sent += 1;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(
        (WINDOW_MS + GRACE_MS + 10_000) as u64,
    ))
    .await;
    let finals = stats_finals(kafka, &format!("{delay_prefix}wxstream.stats"), &codec)?;
    let mut delays: Vec<f64> = finals
        .iter()
        .map(|r| (r.emitted_at - r.window_end - GRACE_MS) as f64)
        .collect();
    delays.sort_by(f64::total_cmp);
    stats.windows_closed_in_delay_run = delays.len();
    (stats.emit_delay_ms_p50, stats.emit_delay_ms_p99) =
        (percentile(&delays, 0.5), percentile(&delays, 0.99));
    let mut delays = peer.delays();
    delays.sort_by(f64::total_cmp);
    streams.windows_closed_in_delay_run = delays.len();
    (streams.emit_delay_ms_p50, streams.emit_delay_ms_p99) =
        (percentile(&delays, 0.5), percentile(&delays, 0.99));
    drop(stage);
    drop(peer);

    let report = Report {
        date: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        messages: n,
        window_ms: WINDOW_MS,
        grace_ms: GRACE_MS,
        stats_stage: stats,
        kafka_streams: streams,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{}: {} clean messages, 1-minute windows, 10 s grace",
            report.date, report.messages
        );
        println!(
            "{:<14} {:>10} {:>14} {:>7} {:>9} {:>16} {:>10} {:>10}",
            "",
            "records/s",
            "per CPU second",
            "CPU s",
            "RSS MiB",
            "windows closed",
            "delay p50",
            "delay p99"
        );
        for (name, s) in [
            ("stats stage", &report.stats_stage),
            ("Kafka Streams", &report.kafka_streams),
        ] {
            println!(
                "{name:<14} {:>10.0} {:>14.0} {:>7.1} {:>9.0} {:>16} {:>8.0}ms {:>8.0}ms",
                s.records_per_second,
                s.records_per_cpu_second,
                s.cpu_seconds,
                s.peak_rss_mib,
                s.windows_closed_in_delay_run,
                s.emit_delay_ms_p50,
                s.emit_delay_ms_p99
            );
        }
    }
    Ok(0)
}

/// Polls a stage's progress counter until it reaches `n`.
async fn wait_for(
    stage: &mut StageProcess,
    http: &reqwest::Client,
    n: f64,
    started: Instant,
) -> anyhow::Result<()> {
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        stage.sample(http, started.elapsed().as_secs_f64()).await;
        if stage.rate().0 >= n {
            return Ok(());
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "the stats stage did not finish in 600 s"
        );
    }
}

/// The repository's topics with `prefix`, created; returns the clean topic.
async fn apply_topics(config: &WorkerConfig, prefix: &str) -> anyhow::Result<String> {
    let topology = wx_topology::load_dir(&config.topology_dir)?.with_topic_prefix(prefix);
    TopicAdmin::new(&config.kafka)?
        .apply(&topology.topics)
        .await?;
    Ok(format!("{prefix}wxstream.clean"))
}

/// A topic shaped like the stats topic, named `name` (the peer's output).
async fn create_like_stats(config: &WorkerConfig, name: &str) -> anyhow::Result<()> {
    let mut topics = wx_topology::load_dir(&config.topology_dir)?.topics;
    topics.retain(|t| t.name == "wxstream.stats");
    for t in &mut topics {
        t.name = name.to_string();
    }
    TopicAdmin::new(&config.kafka)?.apply(&topics).await?;
    Ok(())
}

async fn produce(
    kafka: &KafkaConfig,
    topic: &str,
    codec: &Codec,
    messages: &[ChatMessage],
) -> anyhow::Result<()> {
    let producer = Producer::new(kafka, "wxstream-bench", Duration::from_secs(60))?;
    let mut pending = Vec::new();
    for m in messages {
        pending.push(producer.enqueue(topic, m.partition_key().as_bytes(), &codec.encode(m)?)?);
        if pending.len() >= 5_000 {
            for p in pending.drain(..) {
                p.acknowledged().await?;
            }
        }
    }
    for p in pending {
        p.acknowledged().await?;
    }
    Ok(())
}

/// The stats stage's first final record of every window (revision 0) on `topic`.
fn stats_finals(
    kafka: &KafkaConfig,
    topic: &str,
    codec: &Codec,
) -> anyhow::Result<Vec<GroupWindowCount>> {
    let records = tokio::task::block_in_place(|| {
        wx_kafka::read_topic(kafka, topic, Duration::from_secs(60))
    })?;
    Ok(records
        .into_iter()
        .filter_map(|r| codec.decode::<GroupWindowCount>(r.value.as_deref()?).ok())
        .filter(|r| r.is_final && r.revision == 0)
        .collect())
}

/// The stats connector alone (1-minute windows, 10 s grace), for `run --only stats`.
fn write_stats_topology(dir: &Path, repo_topology: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir.join("connectors"))?;
    std::fs::copy(repo_topology.join("topics.yaml"), dir.join("topics.yaml"))?;
    std::fs::write(
        dir.join("connectors/stats.yaml"),
        "name: stats\nconnector.class: wxstream.stats\ntasks.max: 1\ntopics: [wxstream.clean]\noutput.topics: [wxstream.stats, wxstream.stats-checkpoints]\nerrors.tolerance: all\nerrors.deadletterqueue.topic.name: wxstream.dead-letter\nsettings:\n  windows: [1m]\n  grace: 10s\n",
    )?;
    Ok(())
}
