//! The stage runtime's promises, on Apache Kafka, for every stage that consumes a topic
//! (decrypt, sink, stats), each run in this process through the stage contract
//! (`wx_runtime::launch`, exactly as `wxstream run` does):
//! - an undecodable input record is parked with a key of its own, so two of them both survive
//!   compaction of the dead-letter topic;
//! - a dead letter that cannot be encoded stops the stage with the cause, and that record's
//!   offset is never committed.
//!
//! And for the process: a fatal consumer error (a static member fenced by another with the same
//! `group.instance.id`) fails the stage visibly: `/readyz` answers 503 with the cause, the
//! failure is logged once, and the process neither exits nor spins.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use wx_codec::{Codec, RecordKind};
use wx_kafka::{KafkaConfig, Producer};
use wx_runtime::{StageError, StageSettings, launch};
use wxstream_tests::e2e::Reader;
use wxstream_tests::{
    WxProcess, apply_repo_topics, brokers, free_port, repo_topology, stack_setting, unique,
    wait_until, write_decrypt_connector, write_ingest_topology, wx_args,
};

/// Bytes that are no Avro frame of any kind.
const GARBAGE: &[u8] = b"\x07 not an avro frame";

/// A stage's connector on topics of its own, with `count` undecodable records on partition 0
/// of its input topic.
struct Setup {
    prefix: String,
    connector: wx_topology::ConnectorSpec,
    group: String,
    input: String,
    kafka: KafkaConfig,
    offsets: Vec<i64>,
}

impl Setup {
    async fn new<S: StageSettings>(settings: &str, count: usize) -> Setup {
        let prefix = format!("{}.", unique(&format!("rt-{}", S::NAME)));
        apply_repo_topics(&prefix).await;
        let mut connector = repo_topology(&prefix)
            .connectors
            .into_iter()
            .find(|c| c.class == S::CLASS)
            .expect("the repository's connector");
        let group = format!("{prefix}{}", S::NAME);
        connector.settings = serde_yaml_ng::from_str(&format!(
            "{settings}\ngroup_id: {group}\ncommit_interval: 200ms\n"
        ))
        .expect("settings");
        let input = connector.topics[0].clone();
        let kafka = KafkaConfig::new(brokers());
        let producer =
            Producer::new(&kafka, "runtime-test", Duration::from_secs(30)).expect("producer");
        let mut offsets = Vec::new();
        for i in 0..count {
            let key = format!("k{i}");
            let delivered = producer
                .send(&input, Some(0), key.as_bytes(), GARBAGE)
                .await
                .expect("send");
            offsets.push(delivered.offset);
        }
        Setup {
            prefix,
            connector,
            group,
            input,
            kafka,
            offsets,
        }
    }

    /// The stage's current dead letters, by key; each must be one of the undecodable records,
    /// stored under its own key. Returns their source offsets, sorted.
    async fn parked_offsets(&self, stage: &str) -> Vec<i64> {
        let reader = Reader::new(&brokers(), &self.prefix);
        let letters = tokio::task::spawn_blocking(move || reader.letters())
            .await
            .expect("read letters");
        let mut offsets = Vec::new();
        for (key, letter) in letters.iter().filter(|(_, d)| d.stage == stage) {
            assert_eq!(letter.error_class, "undecodable", "{key}");
            assert_eq!(key, &letter.key(), "a letter is stored under its own key");
            assert_eq!(letter.source_topic, self.input);
            assert_eq!(letter.original, GARBAGE, "the original is kept whole");
            offsets.push(letter.source_offset);
        }
        offsets.sort_unstable();
        offsets
    }

    /// The group's committed offset of partition 0 (None before any commit).
    async fn committed(&self) -> Option<i64> {
        let (config, group, topic) = (self.kafka.clone(), self.group.clone(), self.input.clone());
        tokio::task::spawn_blocking(move || {
            wx_kafka::committed_offsets(&config, &group, &topic).expect("committed offsets")
        })
        .await
        .expect("committed")
        .into_iter()
        .find(|(p, _)| *p == 0)
        .and_then(|(_, o)| o)
    }
}

/// Runs stage `S` on three undecodable records whose third letter cannot be encoded; checks
/// the two letters and that the third record is not committed.
async fn parks_uniquely_and_never_finishes_an_unencodable_letter<S: StageSettings>(settings: &str) {
    let setup = Setup::new::<S>(settings, 3).await;
    let codec = Arc::new(Codec::fixed().expect("codec"));
    codec.fail_encoding_after(RecordKind::DeadLetter, 2);
    let launched = launch::<S>(
        "",
        &setup.connector,
        &setup.kafka,
        codec,
        CancellationToken::new(),
    )
    .await
    .expect("the stage builds");
    let ended = tokio::time::timeout(Duration::from_secs(90), launched.task)
        .await
        .expect("the stage stops by itself");
    let error = ended.expect_err("a letter that cannot be encoded stops the stage");
    assert!(
        matches!(error, StageError::Encode { .. }),
        "{}: {error}",
        S::NAME
    );
    assert_eq!(
        setup.parked_offsets(S::NAME).await,
        setup.offsets[..2],
        "{}: both undecodable records survive under keys of their own",
        S::NAME
    );
    let committed = setup.committed().await.unwrap_or(setup.offsets[0]);
    assert!(
        committed <= setup.offsets[2],
        "{}: the record whose letter could not be encoded (offset {}) was committed past ({committed})",
        S::NAME,
        setup.offsets[2]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decrypt_parks_each_undecodable_record_and_never_finishes_an_unencodable_letter() {
    let keys = tempfile::tempdir().expect("tmp");
    wx_sim::SimKeys::generate(&[1])
        .expect("keys")
        .write_private(keys.path(), |_| true)
        .expect("write keys");
    parks_uniquely_and_never_finishes_an_unencodable_letter::<wx_decrypt::DecryptSettings>(
        &format!("key_dir: {}", keys.path().display()),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_parks_each_undecodable_record_and_never_finishes_an_unencodable_letter() {
    let name = unique("rt_sink").replace('-', "_");
    parks_uniquely_and_never_finishes_an_unencodable_letter::<wx_sink::SinkSettings>(&format!(
        "mysql_url: {{env: WX_MYSQL_URL}}\nelasticsearch_url: {}\ndatabase: {name}\nindex_prefix: {}\nbatch_linger: 50ms",
        stack_setting("WXSTACK_ES_URL"),
        name.replace('_', "-")
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_parks_each_undecodable_record_and_never_finishes_an_unencodable_letter() {
    parks_uniquely_and_never_finishes_an_unencodable_letter::<wx_stats::StatsSettings>(
        "windows: [1m]",
    )
    .await;
}

/// A partition that has seen only undecodable records has no watermark yet; its ticks must not
/// compute a lag from one (an overflow that panicked the stage in debug builds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_parks_undecodable_records_commits_past_them_and_keeps_running() {
    let setup = Setup::new::<wx_stats::StatsSettings>("windows: [1m]", 2).await;
    let shutdown = CancellationToken::new();
    let codec = Arc::new(Codec::fixed().expect("codec"));
    let launched = launch::<wx_stats::StatsSettings>(
        "",
        &setup.connector,
        &setup.kafka,
        codec,
        shutdown.clone(),
    )
    .await
    .expect("the stage builds");
    let mut task = tokio::spawn(launched.task);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while setup.committed().await != Some(setup.offsets[1] + 1) {
        assert!(
            !task.is_finished(),
            "the stage stopped: {:?}",
            (&mut task).await
        );
        assert!(
            std::time::Instant::now() < deadline,
            "the parked records were not committed"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Several more ticks of a partition without a watermark.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!task.is_finished(), "the stage keeps running");
    shutdown.cancel();
    let ended = tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("stops on shutdown")
        .expect("no panic");
    assert!(ended.is_ok(), "a clean stop: {ended:?}");
    assert_eq!(setup.parked_offsets("stats").await, setup.offsets);
}

/// CPU seconds (user + system) the process has used, from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("proc stat");
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat[stat.rfind(')').expect("stat") + 2..]
        .split_whitespace()
        .collect();
    let ticks: f64 =
        fields[11].parse::<f64>().expect("utime") + fields[12].parse::<f64>().expect("stime");
    ticks / 100.0
}

/// `/readyz`'s status and body (0 while nothing answers).
async fn readyz(port: u16) -> (u16, serde_json::Value) {
    match reqwest::get(format!("http://127.0.0.1:{port}/readyz")).await {
        Ok(response) => {
            let status = response.status().as_u16();
            (status, response.json().await.unwrap_or_default())
        }
        Err(_) => (0, serde_json::Value::Null),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fatal_consumer_error_fails_the_stage_visibly_without_spinning() {
    let prefix = format!("{}.", unique("rt-fatal"));
    apply_repo_topics(&prefix).await;
    let dir = tempfile::tempdir().expect("tmp");
    let keys = dir.path().join("keys");
    wx_sim::SimKeys::generate(&[1])
        .expect("keys")
        .write_private(&keys, |_| true)
        .expect("write keys");
    write_ingest_topology(dir.path(), "http://127.0.0.1:1", &[], "");
    std::fs::remove_file(dir.path().join("connectors/ingest.yaml")).expect("decrypt only");
    // Two processes with one static member id: a misconfigured StatefulSet.
    write_decrypt_connector(
        dir.path(),
        &keys,
        &format!(
            "  group_id: {prefix}decrypt\n  group_instance_id: pinned\n  session_timeout: 6s\n"
        ),
    );
    let args = wx_args(dir.path(), &prefix, &["run", "--only", "decrypt"]);
    let port = free_port();
    let mut first = WxProcess::start_with(
        &args,
        &dir.path().join("a.log"),
        &format!("127.0.0.1:{port}"),
    );
    wait_until("the first process ready", 60, &first, || async {
        readyz(port).await.0 == 200
    })
    .await;

    let _second = WxProcess::start_with(&args, &dir.path().join("b.log"), "");
    wait_until("the fenced stage failed visibly", 90, &first, || async {
        let (status, body) = readyz(port).await;
        status == 503 && body.to_string().contains("stopped")
    })
    .await;
    let (status, body) = readyz(port).await;
    let reasons = body.to_string();
    assert_eq!(status, 503);
    assert!(
        reasons.contains("fatal") && reasons.contains("decrypt"),
        "the cause is named: {reasons}"
    );
    let metrics = wxstream_tests::metrics_text(&format!("127.0.0.1:{port}")).await;
    assert!(
        metrics.contains("wxstream_stage_up{connector=\"decrypt\"} 0"),
        "wxstream_stage_up shows the failed stage"
    );

    // It stays up, showing FAILED, and does not spin: a spinning loop burns a core.
    let pid = first.pid();
    let before = cpu_seconds(pid);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let used = cpu_seconds(pid) - before;
    assert!(
        first.is_running(),
        "the process stays up to show the failure"
    );
    assert!(
        used < 1.0,
        "the failed stage spins: {used:.2} CPU seconds in 5 s"
    );
    let (status, _) = readyz(port).await;
    assert_eq!(status, 503, "still not ready");
    let log = std::fs::read_to_string(&first.log).expect("log");
    assert_eq!(
        log.matches("A stage failed").count(),
        1,
        "the failure is logged once:\n{}",
        first.log_tail()
    );
    let status = first
        .terminate(Duration::from_secs(30))
        .expect("exits on SIGTERM");
    assert_eq!(status.code(), Some(1), "the exit code says a stage failed");
}

/// A checkpoint that does not parse must not be guessed around (a partial re-emission) nor
/// retried for ever inside the receive loop: the stage stops and names the key to tombstone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_stops_visibly_on_a_checkpoint_that_does_not_parse() {
    let setup = Setup::new::<wx_stats::StatsSettings>("windows: [1m]", 1).await;
    let checkpoints = setup.connector.output_topics[1].clone();
    let key = format!("{}/{}/0", setup.group, setup.input);
    Producer::new(&setup.kafka, "runtime-test", Duration::from_secs(30))
        .expect("producer")
        .send(&checkpoints, Some(0), key.as_bytes(), b"{not a checkpoint")
        .await
        .expect("send");
    let codec = Arc::new(Codec::fixed().expect("codec"));
    let launched = launch::<wx_stats::StatsSettings>(
        "",
        &setup.connector,
        &setup.kafka,
        codec,
        CancellationToken::new(),
    )
    .await
    .expect("the stage builds");
    let ended = tokio::time::timeout(Duration::from_secs(60), launched.task)
        .await
        .expect("the stage stops by itself");
    let error = ended
        .expect_err("an unreadable checkpoint stops the stage")
        .to_string();
    assert!(
        error.contains("checkpoint") && error.contains(&key),
        "the cause names the key: {error}"
    );
    let committed = setup.committed().await.unwrap_or(setup.offsets[0]);
    assert!(
        committed <= setup.offsets[0],
        "nothing past the record was committed ({committed})"
    );
}

/// A puller that cannot encode a page used to stop alone, leaving its corp owned by a worker
/// that no longer pulled it. The stage now fails visibly (and the group moves the corp), with
/// the cursor left before the page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ingest_puller_that_cannot_encode_fails_the_stage_instead_of_keeping_its_corp() {
    let prefix = format!("{}.", unique("rt-ingest"));
    apply_repo_topics(&prefix).await;
    let keys = wx_sim::SimKeys::generate(&[1]).expect("keys");
    let corps = vec!["wwrt0".to_string()];
    let feeds = wxstream_tests::sim_feeds(
        &keys,
        &corps,
        7,
        2_000,
        (wxstream_tests::now_ms() - 3_600_000, 100),
        wx_sim::FaultRates::default(),
    );
    let sim = wx_sim::Simulator::new(wx_sim::ServerConfig::default(), feeds);
    let url = wxstream_tests::serve_simulator(&sim).await;
    let dir = tempfile::tempdir().expect("tmp");
    write_ingest_topology(
        dir.path(),
        &url,
        &wxstream_tests::sim_secrets(&corps),
        "  page_limit: 500\n  poll_interval: 1s\n",
    );
    let topology = wx_topology::load_dir(dir.path())
        .expect("topology")
        .with_topic_prefix(&prefix);
    let connector = topology
        .connectors
        .iter()
        .find(|c| c.name == "ingest")
        .expect("ingest");
    let codec = Arc::new(Codec::fixed().expect("codec"));
    codec.fail_encoding_after(RecordKind::RawBatch, 1);
    let kafka = KafkaConfig::new(brokers());
    let launched = launch::<wx_ingest::IngestSettings>(
        &prefix,
        connector,
        &kafka,
        codec,
        CancellationToken::new(),
    )
    .await
    .expect("the stage builds");
    let ended = tokio::time::timeout(Duration::from_secs(60), launched.task)
        .await
        .expect("the stage stops by itself");
    let error = ended
        .expect_err("the puller's failure fails the stage")
        .to_string();
    assert!(error.contains("puller of corp wwrt0"), "{error}");
    let raw = format!("{prefix}wxstream.raw");
    let seqs = tokio::task::spawn_blocking(move || wxstream_tests::raw_seqs(&brokers(), &raw))
        .await
        .expect("raw");
    assert_eq!(
        seqs.get("wwrt0").map(|s| s.len()),
        Some(500),
        "only the page before the failure was written"
    );
}
