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

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use wx_codec::{Codec, RecordKind};
use wx_kafka::{KafkaConfig, Producer};
use wx_runtime::{StageError, StageSettings, launch};
use wxstream_tests::e2e::Reader;
use wxstream_tests::{
    CALLBACK_KEY, CALLBACK_TOKEN, WxProcess, brokers, free_port, repo_topology, stack_setting,
    unique, wait_until, write_decrypt_connector, write_ingest_topology, wx_args,
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
        let prefix = wxstream_tests::fresh_topics(&format!("rt-{}", S::NAME)).await;
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

/// A stage launched in this process, as `wxstream run` launches it.
struct InProcess {
    task: tokio::task::JoinHandle<Result<(), StageError>>,
    control: Arc<dyn wx_runtime::StageControl>,
    shutdown: CancellationToken,
}

impl InProcess {
    async fn start<S: StageSettings>(
        pipeline: &str,
        connector: &wx_topology::ConnectorSpec,
        codec: Arc<Codec>,
    ) -> InProcess {
        let shutdown = CancellationToken::new();
        let kafka = KafkaConfig::new(brokers());
        let launched = launch::<S>(pipeline, connector, &kafka, codec, shutdown.clone())
            .await
            .expect("the stage builds");
        InProcess {
            control: launched.control.clone(),
            task: tokio::spawn(launched.task),
            shutdown,
        }
    }

    /// How the stage ends by itself within `seconds`.
    async fn ends_by_itself(self, seconds: u64) -> Result<(), StageError> {
        tokio::time::timeout(Duration::from_secs(seconds), self.task)
            .await
            .expect("the stage stops by itself")
            .expect("no panic")
    }

    /// Polls `check` until it holds; fails if the stage stops first or `seconds` pass.
    async fn until<F, Fut>(&mut self, what: &str, seconds: u64, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = std::time::Instant::now() + Duration::from_secs(seconds);
        while !check().await {
            assert!(
                !self.task.is_finished(),
                "the stage stopped before {what}: {:?}",
                (&mut self.task).await
            );
            assert!(
                std::time::Instant::now() < deadline,
                "{what} within {seconds} s"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// Still running a while later, then a clean stop on shutdown.
    async fn keeps_running_then_stops(self) {
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(!self.task.is_finished(), "the stage keeps running");
        self.shutdown.cancel();
        let ended = self.ends_by_itself(40).await;
        assert!(ended.is_ok(), "a clean stop: {ended:?}");
    }
}

/// Runs stage `S` on three undecodable records whose third letter cannot be encoded; checks
/// the two letters and that the third record is not committed.
async fn parks_uniquely_and_never_finishes_an_unencodable_letter<S: StageSettings>(settings: &str) {
    let setup = Setup::new::<S>(settings, 3).await;
    let codec = Arc::new(Codec::fixed().expect("codec"));
    codec.fail_encoding_after(RecordKind::DeadLetter, 2);
    let ended = InProcess::start::<S>("", &setup.connector, codec)
        .await
        .ends_by_itself(90)
        .await;
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

/// A directory holding the private key of version 1 (a decrypt stage's `key_dir`).
fn private_keys() -> tempfile::TempDir {
    let keys = tempfile::tempdir().expect("tmp");
    wx_sim::SimKeys::generate(&[1])
        .expect("keys")
        .write_private(keys.path(), |_| true)
        .expect("write keys");
    keys
}

/// A decrypt job that panics (here: decoding its raw record, through the codec's injected fault)
/// used to skip its place in the output order, freezing its partition's commits for ever. The
/// stage now stops with `StageError::Panicked`, and that record's offset is never committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decrypt_job_that_panics_stops_the_stage_with_its_record_unfinished() {
    let keys = private_keys();
    let setup = Setup::new::<wx_decrypt::DecryptSettings>(
        &format!("key_dir: {}", keys.path().display()),
        3,
    )
    .await;
    let codec = Arc::new(Codec::fixed().expect("codec"));
    codec.panic_decoding_after(RecordKind::RawBatch, 1);
    let ended = InProcess::start::<wx_decrypt::DecryptSettings>("", &setup.connector, codec)
        .await
        .ends_by_itself(90)
        .await;
    let error = ended.expect_err("a panicking job stops the stage");
    assert!(
        matches!(error, StageError::Panicked { .. }),
        "stopped by the panic: {error}"
    );
    // The jobs run side by side on the blocking pool, so the one decode that does not panic is
    // whichever job reaches the codec first. Jobs are written in record order: when it is
    // record 0's, record 0 is parked and record 1 is the first that panicked; otherwise record 0
    // itself panicked and nothing may be parked.
    let parked = setup.parked_offsets("decrypt").await;
    let first_panicked = match parked.as_slice() {
        [] => setup.offsets[0],
        [only] if *only == setup.offsets[0] => setup.offsets[1],
        other => panic!("only records before the panicking one are handled, in order: {other:?}"),
    };
    let committed = setup.committed().await.unwrap_or(setup.offsets[0]);
    assert!(
        committed <= first_panicked,
        "the record whose job panicked (offset {first_panicked}) was committed past ({committed})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decrypt_parks_each_undecodable_record_and_never_finishes_an_unencodable_letter() {
    let keys = private_keys();
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
    let codec = Arc::new(Codec::fixed().expect("codec"));
    let mut stage = InProcess::start::<wx_stats::StatsSettings>("", &setup.connector, codec).await;
    let committed_past = Some(setup.offsets[1] + 1);
    stage
        .until("the parked records committed", 60, || async {
            setup.committed().await == committed_past
        })
        .await;
    // More ticks of a partition without a watermark.
    stage.keeps_running_then_stops().await;
    assert_eq!(setup.parked_offsets("stats").await, setup.offsets);
}

/// Connect's `errors.tolerance: none`: the stage stops (FAILED) on the first record it cannot
/// process, which is neither parked nor committed; with `all` (above) it is parked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_errors_tolerance_none_a_bad_record_stops_the_stage_unparked_and_uncommitted() {
    let mut setup = Setup::new::<wx_stats::StatsSettings>("windows: [1m]", 2).await;
    setup.connector.errors_tolerance = wx_topology::ErrorTolerance::None;
    let codec = Arc::new(Codec::fixed().expect("codec"));
    let ended = InProcess::start::<wx_stats::StatsSettings>("", &setup.connector, codec)
        .await
        .ends_by_itself(60)
        .await;
    let error = ended.expect_err("a bad record stops the stage").to_string();
    assert!(
        error.contains("errors.tolerance is none") && error.contains("(undecodable)"),
        "the cause says why and what: {error}"
    );
    assert_eq!(
        setup.parked_offsets("stats").await,
        Vec::<i64>::new(),
        "nothing parked"
    );
    let committed = setup.committed().await.unwrap_or(setup.offsets[0]);
    assert!(
        committed <= setup.offsets[0],
        "nothing from the bad record on was committed ({committed})"
    );
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
    wxstream_tests::readyz(&format!("127.0.0.1:{port}"))
        .await
        .unwrap_or((0, serde_json::Value::Null))
}

/// A topology directory with only a decrypt connector (keys of version 1), `extra` settings
/// lines appended; returns the arguments of `wxstream run --only decrypt` on it.
fn decrypt_only(dir: &std::path::Path, prefix: &str, extra: &str) -> Vec<String> {
    let keys = dir.join("keys");
    wx_sim::SimKeys::generate(&[1])
        .expect("keys")
        .write_private(&keys, |_| true)
        .expect("write keys");
    write_ingest_topology(dir, "http://127.0.0.1:1", &[], "");
    std::fs::remove_file(dir.join("connectors/ingest.yaml")).expect("decrypt only");
    write_decrypt_connector(dir, &keys, extra);
    wx_args(dir, prefix, &["run", "--only", "decrypt"])
}

/// Starts a `wxstream run` process (with `env` added) with its operations endpoint on `port`
/// and waits until it is ready.
async fn ready_process(
    args: &[String],
    log: &std::path::Path,
    port: u16,
    env: &[(&str, &str)],
) -> WxProcess {
    let process = WxProcess::start_env(args, log, &format!("127.0.0.1:{port}"), env);
    wait_until("the process ready", 60, &process, || async {
        readyz(port).await.0 == 200
    })
    .await;
    process
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fatal_consumer_error_fails_the_stage_visibly_without_spinning_until_restarted_over_rest()
{
    let prefix = wxstream_tests::fresh_topics("rt-fatal").await;
    let dir = tempfile::tempdir().expect("tmp");
    // Two processes with one static member id: a misconfigured StatefulSet.
    let args = decrypt_only(
        dir.path(),
        &prefix,
        "  group_instance_id: pinned\n  session_timeout: 6s\n",
    );
    let port = free_port();
    // Liveness fails once the stage has been FAILED for 4 s with nobody restarting it.
    let mut first = ready_process(
        &args,
        &dir.path().join("a.log"),
        port,
        &[("WXSTREAM_FAILED_LIVENESS_AFTER", "4s")],
    )
    .await;

    let mut second = WxProcess::start_with(&args, &dir.path().join("b.log"), "");
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
    let base = format!("http://127.0.0.1:{port}");
    let state = || async {
        let body: serde_json::Value = reqwest::get(format!("{base}/connectors/decrypt/status"))
            .await
            .expect("status")
            .json()
            .await
            .expect("status JSON");
        body["connector"]["state"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(state().await, "FAILED");
    // Nobody restarted it: past failed_liveness_after, /livez fails (Kubernetes restarts).
    wait_until(
        "/livez fails for the stage left FAILED",
        30,
        &first,
        || async {
            reqwest::get(format!("{base}/livez"))
                .await
                .is_ok_and(|r| r.status() == 503)
        },
    )
    .await;

    // The cause removed (the other member gone), a restart over REST brings the stage back
    // in the running process, as Connect's restart does.
    second.kill9();
    let restarted = reqwest::Client::new()
        .post(format!("{base}/connectors/decrypt/restart"))
        .send()
        .await
        .expect("restart");
    assert_eq!(
        restarted.status().as_u16(),
        204,
        "{:?}",
        restarted.text().await
    );
    assert_eq!(state().await, "RUNNING", "restarted");
    wait_until("the restarted stage ready", 90, &first, || async {
        readyz(port).await.0 == 200
    })
    .await;
    assert_eq!(
        reqwest::get(format!("{base}/livez"))
            .await
            .expect("livez")
            .status()
            .as_u16(),
        200,
        "alive again"
    );
    let metrics = wxstream_tests::metrics_text(&format!("127.0.0.1:{port}")).await;
    assert!(
        metrics.contains("wxstream_stage_up{connector=\"decrypt\"} 1"),
        "wxstream_stage_up shows the stage back"
    );
    let status = first
        .terminate(Duration::from_secs(30))
        .expect("exits on SIGTERM");
    assert_eq!(
        status.code(),
        Some(0),
        "the stage recovered, so the exit code is 0:\n{}",
        first.log_tail()
    );
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
    let ended = InProcess::start::<wx_stats::StatsSettings>("", &setup.connector, codec)
        .await
        .ends_by_itself(60)
        .await;
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

/// A simulator serving `messages` archive messages of one corp, on a local port; its URL.
async fn simulated_corp(corp: &str, messages: u64) -> (wx_sim::Simulator, String) {
    let keys = wx_sim::SimKeys::generate(&[1]).expect("keys");
    let feeds = wxstream_tests::sim_feeds(
        &keys,
        &[corp.to_string()],
        7,
        messages,
        (wxstream_tests::now_ms() - 3_600_000, 100),
        wx_sim::FaultRates::default(),
    );
    let sim = wx_sim::Simulator::new(wx_sim::ServerConfig::default(), feeds);
    let url = wxstream_tests::serve_simulator(&sim).await;
    (sim, url)
}

/// A puller that cannot encode a page used to stop alone, leaving its corp owned by a worker
/// that no longer pulled it. The stage now fails visibly (and the group moves the corp), with
/// the cursor left before the page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ingest_puller_that_cannot_encode_fails_the_stage_instead_of_keeping_its_corp() {
    let prefix = wxstream_tests::fresh_topics("rt-ingest").await;
    let corps = vec!["wwrt0".to_string()];
    let (_sim, url) = simulated_corp(&corps[0], 2_000).await;
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
    let ended = InProcess::start::<wx_ingest::IngestSettings>(&prefix, connector, codec)
        .await
        .ends_by_itself(60)
        .await;
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

/// A group whose partitions are held by a member that stopped answering (frozen with SIGSTOP)
/// lags behind its input; another member that owns nothing still shows the lag as the broker
/// measures it, and says in its status that it owns nothing while its group lags. (A member's
/// own lag sums to 0 when it owns nothing, so neither the old readiness nor the old lag alert
/// saw this.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_owns_nothing_while_its_group_lags_shows_the_lag() {
    let prefix = wxstream_tests::fresh_topics("rt-lag").await;
    let dir = tempfile::tempdir().expect("tmp");
    let args = decrypt_only(
        dir.path(),
        &prefix,
        "  session_timeout: 45s\n  max_poll_interval: 60s\n",
    );
    let (port_a, port_b) = (free_port(), free_port());
    let first = ready_process(&args, &dir.path().join("a.log"), port_a, &[]).await;
    // The first member freezes with every partition assigned to it.
    let stop = |signal: &str| {
        std::process::Command::new("kill")
            .args([signal, &first.pid().to_string()])
            .status()
            .expect("kill")
    };
    assert!(stop("-STOP").success());
    let raw = format!("{prefix}wxstream.raw");
    let producer = Producer::new(
        &KafkaConfig::new(brokers()),
        "runtime-test",
        Duration::from_secs(30),
    )
    .expect("producer");
    for i in 0..300 {
        producer
            .send(&raw, Some(i % 6), b"k", GARBAGE)
            .await
            .expect("send");
    }
    let second = WxProcess::start_with(
        &args,
        &dir.path().join("b.log"),
        &format!("127.0.0.1:{port_b}"),
    );
    let status = format!("http://127.0.0.1:{port_b}/connectors/decrypt/status");
    wait_until(
        "the idle member reports its group's lag",
        40,
        &second,
        || async {
            let Ok(reply) = reqwest::get(&status).await else {
                return false;
            };
            let body: serde_json::Value = reply.json().await.unwrap_or_default();
            let scrape = wxstream_tests::metrics_text(&format!("127.0.0.1:{port_b}")).await;
            body["notes"].to_string().contains("300 records behind")
                && wxstream_tests::metric_sum(&scrape, "wxstream_decrypt_group_lag_records")
                    >= 300.0
        },
    )
    .await;
    assert!(stop("-CONT").success());
}

/// Produces clean messages to partition 0 of `topic`, in order, each acknowledged.
async fn produce_to_partition_0(topic: &str, messages: &[wx_codec::ChatMessage]) {
    let codec = Codec::fixed().expect("codec");
    let producer = Producer::new(
        &KafkaConfig::new(brokers()),
        "runtime-test",
        Duration::from_secs(30),
    )
    .expect("producer");
    for m in messages {
        let value = codec.encode(m).expect("encode");
        producer
            .send(topic, Some(0), m.partition_key().as_bytes(), &value)
            .await
            .expect("send");
    }
}

/// The stats stage's current letters of `class`, as `<corp>/<msgid>`.
async fn stats_letters(prefix: &str, class: &'static str) -> std::collections::BTreeSet<String> {
    let reader = Reader::new(&brokers(), prefix);
    tokio::task::spawn_blocking(move || reader.parked())
        .await
        .expect("letters")
        .iter()
        .filter(|d| d.stage == "stats" && d.error_class == class)
        .filter_map(wx_codec::DeadLetter::identity)
        .collect()
}

/// One partition carries two corps: `wwlive` at the wall clock and `wwback`, onboarded with its
/// archive 15 minutes of event time behind. Watermarks are per corp, so `wwback` is counted,
/// not parked as late. A msgtime far in the future (a callback's `CreateTime` in milliseconds),
/// near `i64::MAX` or before WeCom existed is parked as `invalid_time` before it touches any
/// state, and `wwlive`'s later events still count. Then a counted msgid whose window has been
/// dropped arrives again: a duplicate, not parked as late (a msgid never counted there is).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_count_a_corp_behind_another_and_park_only_impossible_times_and_true_late_events() {
    let setup =
        Setup::new::<wx_stats::StatsSettings>("windows: [1m]\ngrace: 1s\nlateness: 10s", 0).await;
    let now = wxstream_tests::now_ms();
    let clean = wxstream_tests::pipeline::clean_messages;
    let live = clean("wwlive", 60, now - 120_000, 1_000);
    let back = clean("wwback", 120, now - 15 * 60_000 - 120_000, 1_000);
    let mut impossible = clean("wwlive", 3, now - 50_000, 1_000);
    impossible[0].msgtime = now + 10 * 86_400_000;
    impossible[1].msgtime = i64::MAX - 1;
    impossible[2].msgtime = 1_000;
    let mut later = clean("wwlive", 10, now - 45_000, 1_000);
    // One seed makes the same old-style msgids in each batch of one corp: keep them apart.
    for (m, tag) in impossible
        .iter_mut()
        .map(|m| (m, "impossible"))
        .chain(later.iter_mut().map(|m| (m, "later")))
    {
        m.msgid = format!("{}-{tag}", m.msgid);
    }
    let sent: Vec<_> = [&live, &back, &impossible, &later]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    produce_to_partition_0(&setup.input, &sent).await;

    // The truth: distinct msgids per corp, group and minute of everything but the impossible.
    let mut truth: BTreeMap<String, std::collections::BTreeSet<&str>> = BTreeMap::new();
    for m in [&live, &back, &later].into_iter().flatten() {
        if let Some((group, _)) =
            wx_stats::window::group_of(m, wx_stats::DirectGrouping::Conversation)
        {
            let start = m.msgtime.div_euclid(60_000) * 60_000;
            truth
                .entry(format!("{}/{group}/60000/{start}", m.corp_id))
                .or_default()
                .insert(&m.msgid);
        }
    }
    let truth: BTreeMap<String, i64> = truth
        .into_iter()
        .map(|(k, ids)| (k, ids.len() as i64))
        .collect();
    assert!(truth.keys().any(|k| k.starts_with("wwback/")));
    let windows = || async {
        let reader = Reader::new(&brokers(), &setup.prefix);
        tokio::task::spawn_blocking(move || reader.windows())
            .await
            .expect("windows")
            .into_iter()
            .map(|(k, by_type)| (k, by_type.values().sum::<i64>()))
            .collect::<BTreeMap<String, i64>>()
    };
    let impossible_ids: std::collections::BTreeSet<String> =
        impossible.iter().map(|m| m.identity()).collect();
    let codec = Arc::new(Codec::fixed().expect("codec"));
    let mut stage = InProcess::start::<wx_stats::StatsSettings>("", &setup.connector, codec).await;
    stage
        .until(
            "every window of both corps final with its exact count, only the impossible parked",
            90,
            || async {
                windows().await == truth
                    && stats_letters(&setup.prefix, "invalid_time").await == impossible_ids
            },
        )
        .await;
    assert!(
        stats_letters(&setup.prefix, "late").await.is_empty(),
        "nothing was late"
    );

    // wwback's first minute is past its lateness (wwback's watermark is a minute later). Its
    // first msgid again, and a msgid that minute never counted.
    let first = back
        .iter()
        .find(|m| m.action != "switch")
        .expect("a counted message")
        .clone();
    let mut control = first.clone();
    control.msgid = format!("{}-never-counted", control.msgid);
    produce_to_partition_0(&setup.input, &[first, control.clone()]).await;
    stage
        .until("the never-counted msgid parked as late", 60, || async {
            stats_letters(&setup.prefix, "late")
                .await
                .contains(&control.identity())
        })
        .await;
    assert_eq!(
        stats_letters(&setup.prefix, "late").await,
        [control.identity()].into(),
        "the redelivered counted msgid is a duplicate, not late"
    );
    assert_eq!(windows().await, truth, "no count changed");
    stage.keeps_running_then_stops().await;
}

/// Adds `corp` to the ingest connector of `dir` with callback credentials and no archive secret.
fn add_callbacks_only_corp(dir: &std::path::Path, corp: &str) {
    let connector_file = dir.join("connectors/ingest.yaml");
    let yaml = std::fs::read_to_string(&connector_file).expect("ingest.yaml");
    let block = wxstream_tests::callback_credentials(dir);
    std::fs::write(
        &connector_file,
        format!("{yaml}    - corp_id: {corp}\n{block}"),
    )
    .expect("ingest.yaml");
}

/// A corp configured for callbacks only (no archive secret: an Official Account, or an app
/// without the archive licence) builds, receives its callbacks, and is never pulled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callbacks_only_corp_needs_no_archive_secret_and_is_never_pulled() {
    let prefix = wxstream_tests::fresh_topics("rt-cbonly").await;
    let corps = vec!["wwarch".to_string()];
    let (sim, url) = simulated_corp(&corps[0], 200).await;
    let dir = tempfile::tempdir().expect("tmp");
    let port = free_port();
    write_ingest_topology(
        dir.path(),
        &url,
        &wxstream_tests::sim_secrets(&corps),
        &format!("  poll_interval: 1s\n  callback_listen: 127.0.0.1:{port}\n"),
    );
    add_callbacks_only_corp(dir.path(), "wwcbonly");
    let topology = wx_topology::load_dir(dir.path())
        .expect("topology")
        .with_topic_prefix(&prefix);
    let connector = topology
        .connectors
        .iter()
        .find(|c| c.name == "ingest")
        .expect("ingest");
    // A corp without an archive secret is valid when it has callback credentials.
    let mut stage = InProcess::start::<wx_ingest::IngestSettings>(
        &prefix,
        connector,
        Arc::new(Codec::fixed().expect("codec")),
    )
    .await;

    let sender = wx_sim::CallbackSender::new(wx_sim::CallbackConfig {
        url: format!("http://127.0.0.1:{port}/callback/wwcbonly"),
        token: CALLBACK_TOKEN.into(),
        encoding_aes_key: CALLBACK_KEY.into(),
        attempts: 10,
        retry_ms: 500,
        json: false,
    })
    .expect("sender");
    let delivery = sender.text_message("wwcbonly", "alice", "hello", 42).await;
    assert!(delivery.delivered, "the callback is accepted: {delivery:?}");
    stage
        .until("the archive corp pulled", 30, || async {
            sim.pulls().iter().filter(|p| p.corp_id == "wwarch").count() >= 2
        })
        .await;
    assert!(
        sim.pulls().iter().all(|p| p.corp_id != "wwcbonly"),
        "the callbacks-only corp is never pulled"
    );
    assert_eq!(
        stage.control.work(),
        ("corps", serde_json::json!(["wwarch"])),
        "only the archive corp has a puller"
    );
    stage.keeps_running_then_stops().await;
}

/// The callback receiver faces the internet: a path it does not know never becomes a metric
/// label (10,000 random paths add no series), two identical signed POSTs sent at once are
/// stored once (the nonce is taken in one step), a corp's burst of signed requests beyond its
/// rate limit gets WeCom's rate-limit error, and forged requests do not spend the corp's budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_callback_paths_add_no_series_and_a_concurrent_duplicate_is_stored_once() {
    let prefix = wxstream_tests::fresh_topics("rt-callback").await;
    let dir = tempfile::tempdir().expect("tmp");
    let (callbacks, ops) = (free_port(), free_port());
    write_ingest_topology(
        dir.path(),
        "http://127.0.0.1:1",
        &[],
        &format!(
            "  callback_listen: 127.0.0.1:{callbacks}\n  callback_requests_per_second: 500\n  callback_requests_per_second_per_corp: 5\n  callback_timestamp_window: 3s\n  callback_max_nonces: 3\n"
        ),
    );
    add_callbacks_only_corp(dir.path(), "wwcb");
    let args = wx_args(dir.path(), &prefix, &["run", "--only", "ingest"]);
    let process = ready_process(&args, &dir.path().join("ingest.log"), ops, &[]).await;
    let http = reqwest::Client::new();
    let post = |path: String| {
        http.post(format!("http://127.0.0.1:{callbacks}{path}"))
            .body("<xml/>")
            .send()
    };
    // The corp labels of the callback counter's series.
    let corps = || async {
        wxstream_tests::metrics_text(&format!("127.0.0.1:{ops}"))
            .await
            .lines()
            .filter(|l| l.starts_with("wxstream_ingest_callback_requests_total{"))
            .filter_map(|l| Some(l.split("corp=\"").nth(1)?.split('"').next()?.to_string()))
            .collect::<std::collections::BTreeSet<String>>()
    };
    post("/callback/not-a-corp".into()).await.expect("post");
    assert_eq!(corps().await, ["unknown".to_string()].into());
    let mut globally_limited = 0;
    for round in 0..100 {
        let sent: Vec<_> = (0..100)
            .map(|i| {
                let path = format!(
                    "/callback/{:08x}{round}-{i}?timestamp=-9223372036854775808",
                    rand::random::<u32>()
                );
                tokio::spawn(
                    http.post(format!("http://127.0.0.1:{callbacks}{path}"))
                        .body("x")
                        .send(),
                )
            })
            .collect();
        for request in sent {
            let reply = request.await.expect("join").expect("post");
            // Refused as unknown, or by the global rate limit first (an unknown path has no
            // corp bucket, so a 429 here is the global limit's).
            match reply.status().as_u16() {
                404 => {}
                429 => globally_limited += 1,
                other => panic!("an unknown corp is refused: {other}"),
            }
        }
    }
    assert_eq!(
        corps().await,
        ["unknown".to_string()].into(),
        "10,000 unknown paths are one label value"
    );
    assert!(
        globally_limited > 0,
        "a flood beyond 500 requests a second meets the global limit"
    );
    // The global bucket refills.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let crypt = wx_crypto::CallbackCrypt::new(CALLBACK_TOKEN, CALLBACK_KEY, "wwcb").expect("crypt");
    let plain = format!(
        "<xml><ToUserName><![CDATA[wwcb]]></ToUserName><FromUserName><![CDATA[alice]]></FromUserName><CreateTime>{0}</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[hi]]></Content><MsgId>7</MsgId><AgentID>1000002</AgentID></xml>",
        wxstream_tests::now_ms() / 1000
    );
    let encrypt = crypt.encrypt(plain.as_bytes());
    let timestamp = (wxstream_tests::now_ms() / 1000).to_string();
    let nonce = "same-nonce";
    let signature = crypt.sign(&timestamp, nonce, &encrypt);
    let body = format!(
        "<xml><ToUserName><![CDATA[wwcb]]></ToUserName><Encrypt><![CDATA[{encrypt}]]></Encrypt><AgentID><![CDATA[1000002]]></AgentID></xml>"
    );
    let url = format!(
        "http://127.0.0.1:{callbacks}/callback/wwcb?msg_signature={signature}&timestamp={timestamp}&nonce={nonce}"
    );
    let (a, b) = tokio::join!(
        http.post(&url).body(body.clone()).send(),
        http.post(&url).body(body.clone()).send()
    );
    let mut statuses = [
        a.expect("post").status().as_u16(),
        b.expect("post").status().as_u16(),
    ];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 409], "one stored, one refused as a replay");

    // A request stamped at the far edge of the window (3 s ahead of the clock) and replayed 3.5 s
    // later still has an acceptable timestamp: its nonce must still be remembered.
    let ahead = (wxstream_tests::now_ms() / 1000 + 3).to_string();
    let late_signature = crypt.sign(&ahead, "late-nonce", &encrypt);
    let late_url = format!(
        "http://127.0.0.1:{callbacks}/callback/wwcb?msg_signature={late_signature}&timestamp={ahead}&nonce=late-nonce"
    );
    let first = http
        .post(&late_url)
        .body(body.clone())
        .send()
        .await
        .expect("post");
    assert_eq!(first.status(), 200, "accepted at the window's edge");
    // Past the window since it was first seen, its timestamp still within it.
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    let replay = http
        .post(&late_url)
        .body(body.clone())
        .send()
        .await
        .expect("post");
    assert_eq!(
        replay.status(),
        409,
        "a replay late in its window is refused"
    );
    let raw = format!("{prefix}wxstream.raw");
    let stored = tokio::task::spawn_blocking(move || {
        let config = KafkaConfig::new(brokers());
        wx_kafka::read_to_end(
            &config,
            &raw,
            &(0..6).collect::<Vec<_>>(),
            Duration::from_secs(30),
        )
        .expect("raw")
        .len()
    })
    .await
    .expect("read");
    assert_eq!(
        stored,
        2,
        "each callback is stored once (the pair's, the late one's):\n{}",
        process.log_tail()
    );

    // A burst of signed requests for one corp beyond its 5 a second (stamped now: the window
    // is 3 s).
    let now_s = (wxstream_tests::now_ms() / 1000).to_string();
    let burst_url = format!(
        "http://127.0.0.1:{callbacks}/callback/wwcb?msg_signature={}&timestamp={now_s}&nonce={nonce}",
        crypt.sign(&now_s, nonce, &encrypt)
    );
    let burst: Vec<_> = (0..30)
        .map(|_| tokio::spawn(http.post(&burst_url).body(body.clone()).send()))
        .collect();
    let mut limited = 0;
    for request in burst {
        let reply = request.await.expect("join").expect("post");
        if reply.status() == 429 {
            let body: serde_json::Value = reply.json().await.expect("json");
            assert_eq!(body["errcode"], 45009, "WeCom's rate-limit error");
            limited += 1;
        }
    }
    assert!(limited >= 20, "only {limited} of 30 were rate limited");

    // The nonce table holds 3: two are taken; a third fits; a fourth finds it full of live
    // nonces and is answered busy rather than forgetting one; once they expire (twice the 3 s
    // window) there is room again.
    // (Half a second: the corp's bucket refills two requests, and the first nonces, about 4 s
    // old, are still live.)
    tokio::time::sleep(Duration::from_millis(500)).await;
    let fresh = |nonce: &str| {
        let timestamp = (wxstream_tests::now_ms() / 1000).to_string();
        let signature = crypt.sign(&timestamp, nonce, &encrypt);
        http.post(format!("http://127.0.0.1:{callbacks}/callback/wwcb?msg_signature={signature}&timestamp={timestamp}&nonce={nonce}"))
            .body(body.clone())
            .send()
    };
    assert_eq!(fresh("third").await.expect("post").status(), 200);
    assert_eq!(
        fresh("fourth").await.expect("post").status(),
        503,
        "a full table of live nonces answers busy"
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        fresh("fifth").await.expect("post").status(),
        200,
        "expired nonces make room"
    );

    // Forged requests for the corp (anyone who knows its id can send them) do not spend its
    // budget: after 50 of them in well under a second, WeCom's genuine callback is stored
    // (`../shared/reviews/audit-2026-12.md` L4).
    tokio::time::sleep(Duration::from_secs(7)).await;
    let forged: Vec<_> = (0..50)
        .map(|_| tokio::spawn(http.post(&url).body("x").send()))
        .collect();
    for request in forged {
        let status = request.await.expect("join").expect("post").status();
        assert_ne!(status, 200, "a forged request is refused");
    }
    let genuine = fresh("sixth").await.expect("post");
    assert_eq!(
        genuine.status(),
        200,
        "forged requests spent the corp's budget: {:?}",
        genuine.text().await
    );
}

/// A member paused for backpressure when its group rebalances, whose pause is lifted between
/// the revocation and the next assignment, gets its partitions back fetching: librdkafka keeps
/// a partition's pause across a rebalance that gives it back to the same member, so lifting the
/// pause while nothing is assigned must still reach it (the media stage's stall after a broker
/// crash: `../shared/reviews/broker-crash-media-2026-12.md`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_lifted_between_revocation_and_reassignment_lets_the_partitions_fetch_again() {
    let prefix = wxstream_tests::fresh_topics("pausegap").await;
    let topic = format!("{prefix}wxstream.raw");
    let other = format!("{prefix}wxstream.stats");
    let kafka = KafkaConfig::new(brokers());
    let producer = Producer::new(&kafka, "pause-test", Duration::from_secs(30)).expect("producer");
    let produce = |n: u32| {
        let producer = &producer;
        let topic = &topic;
        async move {
            for i in 0..n {
                producer
                    .send(topic, Some(0), format!("k{i}").as_bytes(), b"v")
                    .await
                    .expect("send");
            }
        }
    };
    produce(1).await;
    let group = unique("pausegap");
    let options = |topics: Vec<String>| wx_kafka::ConsumerOptions {
        group: group.clone(),
        group_instance_id: None,
        topics,
        session_timeout: Duration::from_secs(6),
        drain_timeout: Duration::from_secs(1),
        drain_on_revoke: false,
        from_beginning: true,
        metric_prefix: "wxstream_pausetest".into(),
        max_buffered_kib: 1024,
        max_poll_interval: Duration::from_secs(60),
    };
    let member = Arc::new(
        wx_kafka::GroupConsumer::join(&kafka, &options(vec![topic.clone()])).expect("join"),
    );
    let first = tokio::time::timeout(Duration::from_secs(60), member.recv())
        .await
        .expect("a first record within 60 s")
        .expect("recv");
    member.finish(&first.ticket);
    member.pause().expect("pause");
    // Poll (rebalances are served by polls) and keep what arrives.
    let arrived = Arc::new(std::sync::Mutex::new(Vec::new()));
    let poller = tokio::spawn({
        let member = member.clone();
        let arrived = arrived.clone();
        async move {
            loop {
                let mut got = Vec::new();
                let _ = member
                    .poll_while_paused(Duration::from_millis(100), &mut got)
                    .await;
                for record in got {
                    member.finish(&record.ticket);
                    arrived.lock().unwrap().push(record.offset);
                }
            }
        }
    });
    // Twenty records while paused: none arrives.
    produce(20).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        arrived.lock().unwrap().is_empty(),
        "a paused partition delivers nothing"
    );
    // A second member on another topic of the same group: the group rebalances, and the first
    // member gets its partitions back. Lift the pause while it holds none.
    let mut assignments = member.assignments();
    let second = wx_kafka::GroupConsumer::join(&kafka, &options(vec![other])).expect("join");
    let second_poller = tokio::spawn(async move {
        loop {
            let _ = second.recv().await;
        }
    });
    let revoked = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            assignments.changed().await.expect("assignments");
            if assignments.borrow_and_update().is_empty() {
                return;
            }
        }
    })
    .await;
    revoked.expect("the first member's partitions are revoked within 60 s");
    member.resume().expect("resume");
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            assignments.changed().await.expect("assignments");
            if !assignments.borrow_and_update().is_empty() {
                return;
            }
        }
    })
    .await
    .expect("the first member gets its partitions back within 60 s");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let total = arrived.lock().unwrap().len();
        if total >= 20 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the member's partition stayed paused after the rebalance: {total} of the 20 records \
             produced while paused were consumed, though nothing holds it paused (paused: {})",
            member.is_paused()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    poller.abort();
    second_poller.abort();
}

/// A checkpoint read that fails when a partition is first seen (the checkpoint topic is gone
/// here; in production its partition's leader is away after a broker restart) is retried for as
/// long as it takes, consumption paused and polled meanwhile and the wait in health: the stage
/// does not stop, and once the topic is back it counts on (`../shared/reviews/audit-2026-12.md`
/// S4: it stopped FAILED after 30 tries and never came back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stats_checkpoint_read_that_fails_is_retried_until_it_succeeds_and_the_stage_never_stops()
{
    let setup = Setup::new::<wx_stats::StatsSettings>("windows: [1m]", 0).await;
    let checkpoints = setup.connector.output_topics[1].clone();
    let codec = Arc::new(Codec::fixed().expect("codec"));
    let kafka = KafkaConfig::new(brokers());
    let shutdown = CancellationToken::new();
    let launched =
        launch::<wx_stats::StatsSettings>("", &setup.connector, &kafka, codec, shutdown.clone())
            .await
            .expect("the stage builds");
    let health = launched.health.clone();
    let control = launched.control.clone();
    let mut stage = InProcess {
        control: launched.control.clone(),
        task: tokio::spawn(launched.task),
        shutdown,
    };
    stage
        .until("the stage joins its group", 60, || async {
            control.not_ready().is_empty()
        })
        .await;
    let deleted = std::process::Command::new(wxstream_tests::repo_root().join("scripts/stack"))
        .args(["delete-topic", &checkpoints])
        .status()
        .expect("scripts/stack delete-topic");
    assert!(deleted.success(), "deleting {checkpoints}");
    let producer =
        Producer::new(&setup.kafka, "runtime-test", Duration::from_secs(30)).expect("producer");
    let offset = producer
        .send(&setup.input, Some(0), b"k", GARBAGE)
        .await
        .expect("send")
        .offset;
    stage
        .until("health names the checkpoints", 60, || async {
            health.failures().contains_key("checkpoints")
        })
        .await;
    // Longer than the 30 one-second tries that used to stop the stage.
    tokio::time::sleep(Duration::from_secs(40)).await;
    assert!(!stage.task.is_finished(), "the stage keeps waiting");
    assert!(
        health.failures().contains_key("checkpoints"),
        "the wait stays visible: {:?}",
        health.failures()
    );
    wxstream_tests::apply_repo_topics(&setup.prefix).await;
    stage
        .until("the record is parked and committed past", 90, || async {
            setup.committed().await.is_some_and(|c| c > offset)
        })
        .await;
    assert!(
        !health.failures().contains_key("checkpoints"),
        "recovered: {:?}",
        health.failures()
    );
    stage.keeps_running_then_stops().await;
}

/// A partition whose last offsets are transaction markers (another tool wrote to the topic
/// transactionally) is read to its end, not until the read times out; and a tail of 512
/// offsets holding far fewer records says that the partition has earlier offsets, so the
/// stats stage looks for a group's checkpoint there too (`../shared/reviews/audit-2026-12.md`
/// M2: records were counted, so a group whose checkpoint lay before the tail was "not found";
/// M3: the end was the last record's offset).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tail_read_ends_past_transaction_markers_and_knows_of_earlier_offsets() {
    let prefix = wxstream_tests::fresh_topics("rt-tail").await;
    let topic = format!("{prefix}wxstream.stats-checkpoints");
    // One record, then 300 transactions of one record each: 601 offsets, 301 records, the
    // last offset a commit marker.
    let script = r#"
import sys
from confluent_kafka import Producer
brokers, topic = sys.argv[1], sys.argv[2]
plain = Producer({"bootstrap.servers": brokers})
plain.produce(topic, key=b"earlier", value=b"{}", partition=0)
plain.flush(30)
tx = Producer({"bootstrap.servers": brokers, "transactional.id": topic + "-tx"})
tx.init_transactions(30)
for i in range(300):
    tx.begin_transaction()
    tx.produce(topic, key=b"later-%d" % i, value=b"{}", partition=0)
    tx.commit_transaction(30)
"#;
    let status = std::process::Command::new(wxstream_tests::python())
        .args(["-c", script, &brokers(), &topic])
        .status()
        .expect("python");
    assert!(status.success(), "the transactional writes");
    let tail = tokio::task::spawn_blocking(move || {
        wx_kafka::read_tail(
            &KafkaConfig::new(brokers()),
            &topic,
            0,
            512,
            Duration::from_secs(20),
        )
    })
    .await
    .expect("join")
    .expect("the tail is read to its end, past the trailing marker");
    assert!(
        (200..512).contains(&tail.records.len()),
        "512 offsets hold about 256 records: {}",
        tail.records.len()
    );
    assert!(
        tail.records
            .iter()
            .all(|r| r.key.as_deref() != Some(b"earlier".as_slice())),
        "the first record lies before the tail"
    );
    assert!(tail.earlier, "the partition has offsets before the tail");
}

/// Connect's offsets for a source (KIP-875): on a STOPPED ingest connector, a corp's cursor is
/// moved back over REST and the corp is pulled again from there; DELETE forgets every cursor
/// and the archive is pulled from its start. Entries naming a corp the connector does not pull,
/// or a seq that is not a whole number, are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_cursors_move_back_and_reset_over_rest_on_a_stopped_connector() {
    let prefix = wxstream_tests::fresh_topics("rt-ingest-offsets").await;
    let corp = "wwoffsets".to_string();
    let (_sim, url) = simulated_corp(&corp, 1_000).await;
    let dir = tempfile::tempdir().expect("tmp");
    write_ingest_topology(
        dir.path(),
        &url,
        &wxstream_tests::sim_secrets(std::slice::from_ref(&corp)),
        "  page_limit: 200\n  poll_interval: 1s\n",
    );
    let args = wx_args(dir.path(), &prefix, &["run", "--only", "ingest"]);
    let port = free_port();
    let process = ready_process(&args, &dir.path().join("ingest.log"), port, &[]).await;
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let call = |method: reqwest::Method, path: &str, body: Option<serde_json::Value>| {
        let mut request = http.request(method, format!("{base}{path}"));
        if let Some(body) = body {
            request = request.json(&body);
        }
        async move {
            let reply = request.send().await.expect("request");
            let status = reply.status().as_u16();
            (
                status,
                reply.json::<serde_json::Value>().await.unwrap_or_default(),
            )
        }
    };
    let cursor = || async {
        let (_, offsets) = call(reqwest::Method::GET, "/connectors/ingest/offsets", None).await;
        offsets["offsets"]
            .as_array()
            .and_then(|o| {
                o.iter()
                    .find(|e| e["partition"]["corp_id"] == corp.as_str())
            })
            .and_then(|e| e["offset"]["seq"].as_u64())
    };
    let items = || async {
        wxstream_tests::metric_sum(
            &wxstream_tests::metrics_text(&format!("127.0.0.1:{port}")).await,
            "wxstream_ingest_items_total",
        )
    };
    wait_until("the archive pulled", 90, &process, || async {
        items().await >= 1_000.0
    })
    .await;
    let end = cursor().await.expect("a checkpointed cursor");
    let half = end / 2;

    use reqwest::Method;
    let back = serde_json::json!({ "offsets": [{ "partition": { "corp_id": corp }, "offset": { "seq": half } }] });
    assert_eq!(
        call(
            Method::PATCH,
            "/connectors/ingest/offsets",
            Some(back.clone())
        )
        .await
        .0,
        400,
        "not while it runs"
    );
    assert_eq!(
        call(Method::PUT, "/connectors/ingest/stop", None).await.0,
        204
    );
    for (body, why) in [
        (
            serde_json::json!({ "offsets": [{ "partition": { "corp_id": "wwnobody" }, "offset": { "seq": 1 } }] }),
            "a corp it does not pull",
        ),
        (
            serde_json::json!({ "offsets": [{ "partition": { "corp_id": corp }, "offset": { "seq": -3 } }] }),
            "a seq that is not a whole number",
        ),
        (
            serde_json::json!({ "offsets": [{ "partition": { "file": "x" }, "offset": { "seq": 1 } }] }),
            "no corp_id",
        ),
    ] {
        let (status, answer) = call(Method::PATCH, "/connectors/ingest/offsets", Some(body)).await;
        assert_eq!(status, 400, "{why}: {answer}");
    }
    let (status, answer) = call(Method::PATCH, "/connectors/ingest/offsets", Some(back)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(cursor().await, Some(half), "the cursor moved back");

    let before = items().await;
    assert_eq!(
        call(Method::PUT, "/connectors/ingest/resume", None).await.0,
        202
    );
    wait_until("the corp pulled again to the end", 90, &process, || async {
        cursor().await == Some(end)
    })
    .await;
    let again = items().await - before;
    assert!(
        again >= (end - half) as f64 * 0.9,
        "the messages after the moved cursor were pulled again: {again}"
    );

    assert_eq!(
        call(Method::PUT, "/connectors/ingest/stop", None).await.0,
        204
    );
    let (status, answer) = call(Method::DELETE, "/connectors/ingest/offsets", None).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(cursor().await, None, "every cursor forgotten");
    let before = items().await;
    assert_eq!(
        call(Method::PUT, "/connectors/ingest/resume", None).await.0,
        202
    );
    wait_until(
        "the archive pulled from its start",
        90,
        &process,
        || async { cursor().await == Some(end) },
    )
    .await;
    assert!(
        items().await - before >= 1_000.0,
        "the whole archive pulled again"
    );
}
