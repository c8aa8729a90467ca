//! `wxstream bench media`: the media stage storing large files, as a child process of its own
//! (`run --only media`), against the local stack's S3 server. Prints the stage's MB/s next to
//! the store's own upload rate (one multipart upload of the same size straight from memory,
//! measured in the same run) and GetMediaData's rate alone (the simulator, no store), with the
//! stage's peak RSS and CPU.
//!
//! The simulator runs in this process and serves `--files` files of `--size-mb` MB each; one
//! clean `file` message per file is produced to a fresh clean topic.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use serde::Serialize;
use wx_codec::{Codec, now_ms};
use wx_ingest::{MediaClient, SimulatorClient};
use wx_kafka::Producer;
use wx_s3::{ObjectStore, StoreConfig};
use wx_sim::{MediaRef, ServerConfig, Simulator};

use crate::bench::pipeline::{apply_topics, start_stage};
use crate::config::WorkerConfig;

#[derive(Debug, Args)]
pub struct MediaBenchArgs {
    /// Files to store.
    #[arg(long, default_value_t = 4)]
    files: usize,
    /// Size of each file, in MB (MiB).
    #[arg(long, default_value_t = 100)]
    size_mb: usize,
    /// Downloads the stage runs at once (`max_concurrent_downloads`).
    #[arg(long, default_value_t = 4)]
    concurrent: usize,
    /// Multipart part size, in MiB (at least 5).
    #[arg(long, default_value_t = 8)]
    part_mb: usize,
    /// Print one JSON document instead of the table.
    #[arg(long)]
    json: bool,
    /// Keep the stored objects (hundreds of MB) in the bucket; by default they are deleted
    /// once checked (the topics and the database stay for inspection).
    #[arg(long)]
    keep: bool,
    /// mysql://user:password@host:port (default: WXSTACK_MYSQL_URL from `scripts/stack env`).
    #[arg(long, env = "WXSTACK_MYSQL_URL")]
    mysql_url: String,
    /// The S3 endpoint (default: WX_S3_ENDPOINT from `scripts/stack env`).
    #[arg(long, env = "WX_S3_ENDPOINT")]
    s3_endpoint: String,
    /// The bucket (default: WX_S3_BUCKET).
    #[arg(long, env = "WX_S3_BUCKET", default_value = "wxstream-media")]
    bucket: String,
}

#[derive(Debug, Serialize)]
struct Figures {
    machine: String,
    files: usize,
    file_mib: usize,
    total_mib: f64,
    concurrent: usize,
    part_mib: usize,
    seconds: f64,
    stage_mib_per_s: f64,
    store_upload_mib_per_s: f64,
    getmediadata_mib_per_s: f64,
    peak_rss_mib: f64,
    cpu_seconds: f64,
    /// The stage's CPU seconds per GiB stored.
    cpu_seconds_per_gib: f64,
    /// MD5 plus one copy per GiB on this machine, measured in the same run (the floor).
    md5_copy_seconds_per_gib: f64,
    /// `cpu_seconds_per_gib / md5_copy_seconds_per_gib`: 1.0 would be the floor alone.
    cpu_vs_md5_copy: f64,
    stored: usize,
    md5_verified: usize,
}

const MIB: f64 = 1024.0 * 1024.0;

fn store_from_env(args: &MediaBenchArgs) -> anyhow::Result<ObjectStore> {
    let var = |name: &str| {
        std::env::var(name)
            .with_context(|| format!("{name} is not set: run `eval \"$(scripts/stack env)\"`"))
    };
    Ok(ObjectStore::new(&StoreConfig {
        endpoint: Some(args.s3_endpoint.clone()),
        region: "us-east-1".into(),
        bucket: args.bucket.clone(),
        access_key_id: var("WX_S3_ACCESS_KEY_ID")?,
        secret_access_key: var("WX_S3_SECRET_ACCESS_KEY")?,
        path_style: true,
        timeout: wx_runtime::settings::default_store_timeout(),
        ca_file: None,
    })?)
}

/// The store's own rate: one multipart upload of `bytes` from memory, `part` bytes a part,
/// one part at a time (as the stage sends each download's parts). MiB/s.
async fn store_ceiling(
    store: &ObjectStore,
    key: &str,
    bytes: usize,
    part: usize,
) -> anyhow::Result<f64> {
    let body = wx_s3::Bytes::from(wx_sim::media_range("bench-ceiling", 0, part));
    let started = Instant::now();
    let id = store
        .begin_upload(key, "application/octet-stream", "")
        .await?;
    let mut parts = Vec::new();
    let mut sent = 0;
    while sent < bytes {
        let n = i32::try_from(parts.len() + 1)?;
        let etag = store.upload_part(key, &id, n, body.clone()).await?;
        parts.push((n, etag));
        sent += part;
    }
    store.complete_upload(key, &id, &parts).await?;
    Ok(sent as f64 / MIB / started.elapsed().as_secs_f64())
}

/// GetMediaData alone: one file through the simulator's HTTP API, chunk by chunk. MiB/s.
async fn download_ceiling(url: &str, corp: &str, file: &MediaRef) -> anyhow::Result<f64> {
    let client = SimulatorClient::new(
        url,
        corp,
        &format!("secret-{corp}"),
        Duration::from_secs(30),
        "bench",
    );
    let started = Instant::now();
    let mut index = String::new();
    let mut bytes = 0usize;
    loop {
        let chunk = client
            .get_media_chunk(&file.sdkfileid, &index)
            .await
            .map_err(|e| anyhow::anyhow!("GetMediaData: {e}"))?;
        bytes += chunk.data.len();
        index = chunk.out_index;
        if chunk.is_finish {
            break;
        }
    }
    Ok(bytes as f64 / MIB / started.elapsed().as_secs_f64())
}

fn write_connector(
    dir: &Path,
    repo_topology: &Path,
    sim_url: &str,
    corp: &str,
    database: &str,
    key_prefix: &str,
    args: &MediaBenchArgs,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir.join("connectors"))?;
    std::fs::copy(repo_topology.join("topics.yaml"), dir.join("topics.yaml"))
        .with_context(|| format!("{}/topics.yaml", repo_topology.display()))?;
    let secret = dir.join(format!("secret-{corp}"));
    std::fs::write(&secret, format!("secret-{corp}"))?;
    let yaml = format!(
        "name: media\nconnector.class: wxstream.media\ntasks.max: 1\ntopics: [wxstream.clean]\nerrors.tolerance: all\nerrors.deadletterqueue.topic.name: wxstream.dead-letter\nsettings:\n  client: simulator\n  simulator_url: {sim_url}\n  corps:\n    - corp_id: {corp}\n      secret: {{file: {}}}\n  max_concurrent_downloads: {}\n  part_size: {}\n  mysql_url: {{env: WX_MYSQL_URL}}\n  database: {database}\n  s3:\n    endpoint: {}\n    bucket: {}\n    key_prefix: {key_prefix}\n    access_key_id: {{env: WX_S3_ACCESS_KEY_ID}}\n    secret_access_key: {{env: WX_S3_SECRET_ACCESS_KEY}}\n",
        secret.display(),
        args.concurrent,
        args.part_mb << 20,
        args.s3_endpoint,
        args.bucket,
    );
    std::fs::write(dir.join("connectors/media.yaml"), yaml)?;
    Ok(())
}

pub async fn run(config: &WorkerConfig, args: MediaBenchArgs) -> anyhow::Result<i32> {
    anyhow::ensure!(
        args.part_mb >= 5,
        "--part-mb must be at least 5 (S3's smallest part)"
    );
    let stamp = now_ms() / 1000;
    let prefix = format!("bench-media-{stamp}.");
    let database = format!("wxstream_bench_media_{stamp}");
    let key_prefix = format!("bench-media-{stamp}/");
    let corp = "wwbench";
    let size = args.size_mb << 20;
    let total = size * args.files;
    eprintln!(
        "wxstream bench media: {} files x {} MiB ({} MiB); preparing the simulator's files",
        args.files,
        args.size_mb,
        total >> 20
    );
    let files: Vec<MediaRef> = (0..args.files)
        .map(|i| MediaRef::file(&format!("CtsBench{stamp}x{i}"), size))
        .collect();
    let fixture = crate::bench::fixture(args.files as u64, args.files.max(1))?;
    let mut messages = crate::bench::sink::clean_messages(&fixture);
    anyhow::ensure!(
        messages.len() >= args.files,
        "the fixture made too few messages"
    );
    messages.truncate(args.files);
    for (message, file) in messages.iter_mut().zip(&files) {
        message.corp_id = corp.into();
        message.msgtype = "file".into();
        message.text = None;
        message.payload_json = file.file_payload("bench.bin");
    }
    let keys = wx_sim::SimKeys::generate(&[1])?;
    let spec = wx_sim::FeedSpec {
        corp_id: corp.into(),
        seed: 1,
        messages: 1,
        start_ms: now_ms() - 60_000,
        spacing_ms: 1_000,
        key_versions: vec![1],
        withheld_key_version: 99,
        faults: Default::default(),
        media: Default::default(),
    };
    let mut feed = wx_sim::CorpFeed::build(&spec, &keys)?;
    feed.media.extend(files.iter().cloned());
    let sim = Simulator::new(
        ServerConfig {
            calls_per_minute: 60_000,
            ..ServerConfig::default()
        },
        vec![(feed, format!("secret-{corp}"))],
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let sim_url = format!("http://{}", listener.local_addr()?);
    let stop_sim = tokio_util::sync::CancellationToken::new();
    tokio::spawn(sim.serve(listener, stop_sim.clone().cancelled_owned()));

    let store = store_from_env(&args)?;
    store
        .check_bucket()
        .await
        .with_context(|| format!("the bucket {}", args.bucket))?;
    eprintln!("measuring the store's own upload rate and GetMediaData's ...");
    let part = args.part_mb << 20;
    let store_rate = store_ceiling(&store, &format!("{key_prefix}ceiling"), size, part).await?;
    let download_rate = download_ceiling(&sim_url, corp, &files[0]).await?;

    let dir = tempfile::tempdir()?;
    write_connector(
        dir.path(),
        &config.topology_dir,
        &sim_url,
        corp,
        &database,
        &key_prefix,
        &args,
    )?;
    apply_topics(config, dir.path(), &prefix, 1).await?;
    let codec = Codec::fixed()?;
    let producer = Producer::new(&config.kafka, "wxstream-bench", Duration::from_secs(30))?;
    for message in &messages {
        producer
            .send(
                &format!("{prefix}wxstream.clean"),
                None,
                message.partition_key().as_bytes(),
                &codec.encode(message)?,
            )
            .await?;
    }
    eprintln!(
        "topics {prefix}*, database {database}, objects {}/{key_prefix}*",
        args.bucket
    );

    let started = Instant::now();
    let env = [("WX_MYSQL_URL", args.mysql_url.as_str())];
    let mut stage = start_stage(
        config,
        dir.path(),
        &prefix,
        "media",
        "wxstream_media_bytes_stored_total",
        &env,
    )?;
    let bar = indicatif::ProgressBar::new(total as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:40}] {bytes}/{total_bytes} stored ({bytes_per_sec})",
        )?
        .progress_chars("=> "),
    );
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(1800);
    let usage = loop {
        let t = started.elapsed().as_secs_f64();
        if let Some(scrape) = stage.sample(&http, t).await {
            let stored =
                wx_runtime::scrape::metric_sum(&scrape, "wxstream_media_bytes_stored_total");
            bar.set_position(stored as u64);
            if stored as usize >= total {
                break stage.usage();
            }
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the media stage did not store {total} bytes within 30 minutes; see its log in {}",
            dir.path().display()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let seconds = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    drop(stage);
    stop_sim.cancel();
    // What the stage stored, checked against the simulator's sizes and MD5s.
    let table = wx_mysql::MessageStore::connect(
        &args.mysql_url,
        &database,
        wx_runtime::settings::default_store_timeout(),
    )
    .await?;
    let rows = table.media_rows().await?;
    let want: std::collections::BTreeMap<&str, &MediaRef> =
        files.iter().map(|f| (f.md5.as_str(), f)).collect();
    let md5_verified = rows
        .iter()
        .filter(|r| {
            r.status == "stored"
                && r.md5
                    .as_deref()
                    .and_then(|m| want.get(m))
                    .is_some_and(|f| r.size == Some(f.size as u64))
        })
        .count();
    let gib = total as f64 / (1024.0 * MIB);
    // The floor: MD5 and a copy of 1 GiB, the best of three rounds.
    let floor = (0..3)
        .map(|_| wx_media::archive::md5_and_copy_seconds_per_gib(1 << 30))
        .fold(f64::INFINITY, f64::min);
    let cpu_seconds_per_gib = usage.1 / gib.max(f64::MIN_POSITIVE);
    let figures = Figures {
        machine: crate::bench::pipeline::machine(),
        files: args.files,
        file_mib: args.size_mb,
        total_mib: total as f64 / MIB,
        concurrent: args.concurrent,
        part_mib: args.part_mb,
        seconds,
        stage_mib_per_s: total as f64 / MIB / seconds,
        store_upload_mib_per_s: store_rate,
        getmediadata_mib_per_s: download_rate,
        peak_rss_mib: usage.0,
        cpu_seconds: usage.1,
        cpu_seconds_per_gib,
        md5_copy_seconds_per_gib: floor,
        cpu_vs_md5_copy: cpu_seconds_per_gib / floor,
        stored: rows.iter().filter(|r| r.status == "stored").count(),
        md5_verified,
    };
    if !args.keep {
        for (key, _) in store.list_objects(&key_prefix).await? {
            store.delete(&key).await?;
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&figures)?);
    } else {
        print_table(&figures);
    }
    Ok(if figures.md5_verified == args.files {
        0
    } else {
        1
    })
}

fn print_table(f: &Figures) {
    println!("wxstream bench media on {}", f.machine);
    println!(
        "{} files x {} MiB = {:.0} MiB, {} downloads at once, {} MiB parts",
        f.files, f.file_mib, f.total_mib, f.concurrent, f.part_mib
    );
    println!("{:<34} {:>10}", "", "MiB/s");
    println!(
        "{:<34} {:>10.1}",
        "media stage (GetMediaData -> S3)", f.stage_mib_per_s
    );
    println!(
        "{:<34} {:>10.1}",
        "store's own upload (one multipart)", f.store_upload_mib_per_s
    );
    println!(
        "{:<34} {:>10.1}",
        "GetMediaData alone (simulator)", f.getmediadata_mib_per_s
    );
    println!(
        "stage at {:.0}% of the store's upload rate; {:.1} s in all",
        100.0 * f.stage_mib_per_s / f.store_upload_mib_per_s.max(f64::MIN_POSITIVE),
        f.seconds
    );
    println!(
        "media stage: peak RSS {:.0} MiB, {:.1} CPU s; {} of {} objects stored with the right size and MD5",
        f.peak_rss_mib, f.cpu_seconds, f.md5_verified, f.files
    );
    println!(
        "media stage: {:.2} CPU s per GiB stored; MD5 plus one copy {:.2} s per GiB on this machine: {:.1}x the floor",
        f.cpu_seconds_per_gib, f.md5_copy_seconds_per_gib, f.cpu_vs_md5_copy
    );
}
