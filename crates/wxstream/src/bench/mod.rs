//! `wxstream bench ...`: benchmarks, not tests: they print figures and assert nothing.
//!
//! - here: `bench decrypt` (the decrypt-and-normalise path's throughput per core next to the
//!   machine's RSA-2048 limit, and the processor's throughput against the local broker) and the
//!   helpers every benchmark shares (fixtures, percentiles, peak memory);
//! - `sink`: the sink's write paths next to MariaDB's `LOAD DATA` ceiling;
//! - `pipeline`: the whole topology as separate processes, per-stage CPU and memory;
//! - `peer`: the stats stage next to Kafka Streams;
//! - `media`: the media stage next to the store's own copy and MD5 ceiling.

pub mod media;
pub mod peer;
pub mod pipeline;
pub mod sink;
pub mod windows;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Subcommand};
use tokio_util::sync::CancellationToken;
use wx_codec::Codec;
use wx_crypto::bench::{openssl_speed_rsa2048, rate};
use wx_decrypt::{DecryptSettings, DecryptStage, Decryptor, RawSource};
use wx_runtime::Stage;
use wx_sim::{CorpFeed, FaultRates, FeedSpec, SimKeys};

use crate::config::WorkerConfig;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Decrypt-and-normalise throughput per core vs RSA-2048, and against the broker.
    Decrypt(DecryptBenchArgs),
    /// Sink rows/s and docs/s against MariaDB and the search server, vs LOAD DATA.
    Sink(crate::bench::sink::SinkBenchArgs),
    /// The whole pipeline on the local stack: end-to-end and per-stage throughput, pull-to-stored
    /// latency, RSS and CPU per stage, next to each stage's ceiling measured in the same run.
    Pipeline(crate::bench::pipeline::PipelineBenchArgs),
    /// The stats stage next to a Kafka Streams peer on the same clean topic (run it through
    /// `scripts/bench-peer`, which builds the peer).
    StatsPeer(crate::bench::peer::PeerBenchArgs),
    /// The media stage storing large files into the S3 server: MB/s against the store's own
    /// upload rate and GetMediaData's, peak RSS and CPU of the stage.
    Media(crate::bench::media::MediaBenchArgs),
    /// The stats stage's window work per message as the open windows grow (1 to 10,000 groups).
    Windows(crate::bench::windows::WindowsBenchArgs),
}

#[derive(Debug, Args)]
pub struct DecryptBenchArgs {
    /// Messages in the generated feed.
    #[arg(long, default_value_t = 20_000)]
    messages: u64,
    /// Items per raw batch (a GetChatData page).
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Seconds per RSA rate figure.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Also run the processor against the broker (`--brokers`, or the configured one).
    #[arg(long)]
    broker: bool,
}

pub(crate) use wx_runtime::measure::percentile;

/// Peak resident memory of this process, from /proc (Linux).
pub(crate) fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

pub async fn run(config: &WorkerConfig, command: BenchCommand) -> anyhow::Result<i32> {
    let args = match command {
        BenchCommand::Decrypt(args) => args,
        BenchCommand::Sink(args) => return crate::bench::sink::run(args).await,
        BenchCommand::Pipeline(args) => return crate::bench::pipeline::run(config, args).await,
        BenchCommand::StatsPeer(args) => return crate::bench::peer::run(config, args).await,
        BenchCommand::Media(args) => return crate::bench::media::run(config, args).await,
        BenchCommand::Windows(args) => {
            return tokio::task::block_in_place(|| crate::bench::windows::run(args));
        }
    };
    tokio::task::block_in_place(|| decrypt_cpu(&args))?;
    if args.broker {
        decrypt_broker(config, &args).await?;
    }
    Ok(0)
}

pub(crate) struct Fixture {
    pub(crate) decryptor: Arc<Decryptor>,
    pub(crate) codec: Arc<Codec>,
    pub(crate) feed: CorpFeed,
    pub(crate) batches: Vec<Vec<u8>>,
    _keys_dir: tempfile::TempDir,
}

pub(crate) fn fixture(messages: u64, batch: usize) -> anyhow::Result<Fixture> {
    let keys = SimKeys::generate(&[1, 2])?;
    let dir = tempfile::tempdir()?;
    keys.write_private(dir.path(), |_| true)?;
    let spec = FeedSpec {
        corp_id: "wwbench".into(),
        seed: 42,
        messages,
        start_ms: 1_700_000_000_000,
        spacing_ms: 100,
        key_versions: vec![1, 2],
        withheld_key_version: 99,
        faults: FaultRates::default(),
        media: Default::default(),
    };
    let feed = CorpFeed::build(&spec, &keys)?;
    let codec = Arc::new(Codec::fixed()?);
    let decryptor = Arc::new(Decryptor::simulator(dir.path(), codec.clone())?);
    let batches = feed
        .items
        .chunks(batch.max(1))
        .enumerate()
        .map(|(i, chunk)| {
            let start = i * batch.max(1);
            codec.encode(&feed.raw_batch(start..start + chunk.len()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Fixture {
        decryptor,
        codec,
        feed,
        batches,
        _keys_dir: dir,
    })
}

/// RSA-2048 private-key decryptions a second on `threads` threads (the key ring, over the
/// fixture's items): the decrypt stage's ceiling.
pub(crate) fn rsa_ceiling(f: &Fixture, threads: usize, seconds: f64) -> f64 {
    let rings = f.decryptor.keys().current();
    let ring = rings.for_corp("wwbench");
    let items = &f.feed.items;
    let rsa_op = |i: usize| {
        let item = &items[i % items.len()];
        let _ = ring.decrypt_random_key(item.publickey_ver, &item.encrypt_random_key);
    };
    rate(threads, seconds, &rsa_op)
}

fn decrypt_cpu(args: &DecryptBenchArgs) -> anyhow::Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "wxstream bench decrypt: {} messages in batches of {}, {cores} cores",
        args.messages, args.batch
    );
    let f = fixture(args.messages, args.batch)?;
    let items = &f.feed.items;
    let speed = openssl_speed_rsa2048(args.seconds.ceil() as u32);
    match speed {
        Some(s) => println!("`openssl speed rsa2048`: {s:.0} private-key ops/s on one core"),
        None => println!("`openssl speed rsa2048`: not available (no openssl command)"),
    }
    println!(
        "{:>7} {:>14} {:>14} {:>12} {:>10} {:>10} {:>10} {:>10}",
        "threads",
        "RSA only/s",
        "full path/s",
        "per core/s",
        "vs RSA",
        "vs speed",
        "p50 ms",
        "p99 ms"
    );
    let mut thread_counts = vec![1];
    if cores > 1 {
        thread_counts.push(cores);
    }
    for threads in thread_counts {
        let rsa = rsa_ceiling(&f, threads, args.seconds);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .context("rayon pool")?;
        let source = RawSource {
            topic: "bench".into(),
            partition: 0,
            offset: 0,
        };
        let mut latencies = Vec::with_capacity(f.batches.len());
        let started = Instant::now();
        let mut produced = 0usize;
        pool.install(|| {
            for batch in &f.batches {
                let t = Instant::now();
                let outcomes = f.decryptor.process_record(Some(batch), &source, 0);
                // Encoding the clean record is part of the path.
                for o in &outcomes {
                    if let wx_decrypt::Outcome::Clean(m) = o {
                        produced += f.codec.encode(m).map(|v| v.len()).unwrap_or(0).min(1);
                    }
                }
                latencies.push(t.elapsed().as_secs_f64() * 1000.0);
            }
        });
        let elapsed = started.elapsed().as_secs_f64();
        let path = produced as f64 / elapsed;
        latencies.sort_by(f64::total_cmp);
        println!(
            "{threads:>7} {rsa:>14.0} {path:>14.0} {:>12.0} {:>9.0}% {:>10} {:>10.1} {:>10.1}",
            path / threads as f64,
            100.0 * path / rsa,
            speed.map_or("-".to_string(), |s| format!(
                "{:.0}%",
                100.0 * path / (s * threads as f64)
            )),
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.99),
        );
        anyhow::ensure!(
            produced == items.len(),
            "only {produced} of {} messages came out clean",
            items.len()
        );
    }
    println!(
        "(p50/p99: time to decrypt and normalise one batch; peak RSS {:.0} MiB)",
        peak_rss_mib().unwrap_or(0.0)
    );
    Ok(())
}

async fn decrypt_broker(config: &WorkerConfig, args: &DecryptBenchArgs) -> anyhow::Result<()> {
    let f = fixture(args.messages, args.batch)?;
    let prefix = format!(
        "bench-{}.",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
    );
    let topology = config.topology()?.with_topic_prefix(&prefix);
    let (settings, mut context) =
        crate::run_cmd::stage_context::<DecryptSettings>(&topology, config, f.codec.clone())?;
    let (raw, clean, dead) = (
        context.topic("raw").to_string(),
        context.topic("clean").to_string(),
        context.topic(wx_runtime::DEAD_LETTER).to_string(),
    );
    let wanted: Vec<_> = topology
        .topics
        .iter()
        .filter(|t| [&raw, &clean, &dead].contains(&&t.name))
        .cloned()
        .collect();
    wx_kafka::TopicAdmin::new(&config.kafka)?
        .apply(&wanted)
        .await
        .context("creating the benchmark's topics")?;
    let producer =
        wx_kafka::Producer::new(&config.kafka, "wxstream-bench", Duration::from_secs(30))?;
    let started = Instant::now();
    for (i, batch) in f.batches.iter().enumerate() {
        let partition = i32::try_from(i).unwrap_or(0) % 6;
        producer
            .send(&raw, Some(partition), b"wwbench", batch)
            .await?;
    }
    println!(
        "broker: wrote {} raw batches in {:.1} s to {} (6 partitions)",
        f.batches.len(),
        started.elapsed().as_secs_f64(),
        raw
    );
    context.consumer_settings.group_id = Some(format!("{prefix}decrypt"));
    let stage = DecryptStage::new(&settings, &context, f.decryptor.clone())?;
    let stop = CancellationToken::new();
    let started = Instant::now();
    let task = tokio::spawn(stage.run(stop.clone()));
    let total = f.feed.items.len() as i64;
    let kafka = config.kafka.clone();
    let mut last_print = Instant::now();
    loop {
        let (k, c, d) = (kafka.clone(), clean.clone(), dead.clone());
        let written = tokio::task::spawn_blocking(move || -> anyhow::Result<i64> {
            let sum = |t: &str| -> anyhow::Result<i64> {
                Ok(wx_kafka::end_offsets(&k, t)?.iter().map(|(_, o)| o).sum())
            };
            Ok(sum(&c)? + sum(&d)?)
        })
        .await??;
        if written >= total {
            break;
        }
        if last_print.elapsed() > Duration::from_secs(5) {
            println!(
                "broker: {written}/{total} messages out after {:.0} s",
                started.elapsed().as_secs_f64()
            );
            last_print = Instant::now();
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(1800),
            "the processor did not finish within 30 minutes"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    stop.cancel();
    task.await??;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "broker: the processor decrypted and produced {total} messages in {elapsed:.1} s: {:.0} msg/s, {:.0} per core (broker on the same machine); peak RSS {:.0} MiB",
        total as f64 / elapsed,
        total as f64 / elapsed / cores as f64,
        peak_rss_mib().unwrap_or(0.0)
    );
    Ok(())
}
