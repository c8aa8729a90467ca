//! On a three-node Kafka cluster of the test's own (`wxstream_tests::KafkaCluster`: each node
//! broker and KRaft controller), every topic with 3 replicas and `min.insync.replicas` 2, all
//! five stages as separate processes, two workers each for decrypt and sink:
//! - kill -9 of the broker that leads the most raw and clean partitions, mid-run, restarted
//!   30 s later: nothing lost, nothing duplicated where a user looks, every file stored, no
//!   stage restarted by hand;
//! - a rolling restart of the three brokers (SIGTERM one, start it again, wait until its
//!   replicas are back in sync, next), mid-run: the same;
//! - a rolling restart of every stage's workers (a new one started and ready, then the old one
//!   SIGTERMed), mid-run: the same.
//!
//! And, with the topics as `topics.yaml` declares them (one replica each, spread over the three
//! brokers), an ingest worker taking its corp over while the broker of the corp's checkpoint
//! partition is down: the read is retried and shown until the broker is back.

use std::time::{Duration, Instant};

use wxstream_tests::e2e::Pipeline;
use wxstream_tests::pipeline::drop_database;
use wxstream_tests::{KafkaCluster, KafkaNode, WxProcess, python, run_ok_text};

const CORPS: usize = 3;
const PER_CORP: u64 = 10_000;

/// `body` (Python) behind a prelude that defines `admin`, a `confluent_kafka` AdminClient on
/// `sys.argv[1]`, and `meta`, the cluster's metadata; `sys.argv[2:]` are the caller's.
fn admin_script(body: &str) -> String {
    format!(
        "import sys, json, collections\n\
         from confluent_kafka.admin import AdminClient\n\
         admin = AdminClient({{'bootstrap.servers': sys.argv[1]}})\n\
         meta = admin.list_topics(timeout=30)\n\
         {body}\n"
    )
}

/// Runs [`admin_script`]`(body)` on `brokers` with `args`; returns what it printed (a failure
/// fails the test).
fn admin_query(brokers: &str, body: &str, args: &[String], what: &str) -> String {
    run_ok_text(
        std::process::Command::new(python())
            .args(["-c", &admin_script(body), brokers])
            .args(args),
        what,
    )
}

/// How many partitions of `topics` each broker (by node id) leads now.
fn leaderships(brokers: &str, topics: &[String]) -> Vec<(i64, usize)> {
    let text = admin_query(
        brokers,
        "led = collections.Counter(p.leader for t in sys.argv[2:] for p in meta.topics[t].partitions.values())\n\
         print(json.dumps(sorted(led.items())))",
        topics,
        "reading the partitions' leaders",
    );
    serde_json::from_str(&text).expect("leaders")
}

/// What the cluster says of the groups' coordination: each group's coordinator and state, and
/// each `__consumer_offsets` partition's leader and in-sync replicas (printed when a worker
/// stays out of its group, to tell a client that does not find its coordinator from a cluster
/// that has none to give). A diagnostic: whatever the script prints, errors included, never a
/// failure of its own.
fn coordination(brokers: &str, groups: &[String]) -> String {
    let script = admin_script(
        "offsets = meta.topics.get('__consumer_offsets')\n\
         parts = {} if offsets is None else {p.id: (p.leader, list(p.isrs)) for p in offsets.partitions.values()}\n\
         print('__consumer_offsets (partition: leader, isr):', json.dumps(sorted(parts.items())))\n\
         for g, f in admin.describe_consumer_groups(sys.argv[2:], request_timeout=10).items():\n\
         \x20   try:\n\
         \x20       d = f.result()\n\
         \x20       print(g, 'coordinator', d.coordinator.id, 'state', d.state, 'members', len(d.members))\n\
         \x20   except Exception as e:\n\
         \x20       print(g, 'not described:', e)",
    );
    match std::process::Command::new(python())
        .args(["-c", &script, brokers])
        .args(groups)
        .output()
    {
        Ok(out) => format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => format!("describing the groups' coordination could not run: {e}"),
    }
}

/// The longest time the clean topic's msgids stood still (sampled every second) until it
/// holds `total`: how long the pipeline stalled.
async fn longest_stall(reader: wxstream_tests::e2e::Reader, total: usize) -> Duration {
    let (mut last, mut since, mut longest) = (0, Instant::now(), Duration::ZERO);
    while last < total && since.elapsed() < Duration::from_secs(600) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let read = reader.clone();
        let now = tokio::task::spawn_blocking(move || read.clean().len())
            .await
            .expect("join");
        if now > last {
            longest = longest.max(since.elapsed().saturating_sub(Duration::from_secs(1)));
            (last, since) = (now, Instant::now());
        }
    }
    longest
}

/// A run on a three-node cluster of the test's own: every topic with 3 replicas and
/// `min.insync.replicas` 2, all five stages as separate processes (two workers each for decrypt
/// and sink), 3 corps x 10,000 messages with media, a third of them through when a test's fault
/// begins.
struct ClusterRun {
    _dir: tempfile::TempDir,
    cluster: KafkaCluster,
    pipeline: Pipeline,
    /// Each worker with its stage and the address of its operations endpoint (`/readyz`).
    stages: Vec<(&'static str, String, WxProcess)>,
}

impl ClusterRun {
    async fn start(stem: &str) -> ClusterRun {
        let dir = tempfile::tempdir().expect("tmp");
        let cluster = KafkaCluster::start_in(dir.path()).await;
        let media = wxstream_tests::e2e::small_media();
        let pipeline = Pipeline::start_with_media(
            stem,
            &cluster.brokers(),
            CORPS,
            PER_CORP,
            media,
            |topics| topics.iter_mut().for_each(|t| t.replicate(3)),
        )
        .await;
        let mut stages = Vec::new();
        for stage in pipeline.stages() {
            let workers: &[&str] = if matches!(stage, "decrypt" | "sink") {
                &["-a", "-b"]
            } else {
                &["-a"]
            };
            for suffix in workers {
                let listen = format!("127.0.0.1:{}", wxstream_tests::free_port());
                let process = pipeline.start_stage_listening(stage, suffix, &listen);
                stages.push((stage, listen, process));
            }
        }
        pipeline.wait_for_clean(5_000, 300, &stages[1].2).await;
        ClusterRun {
            _dir: dir,
            cluster,
            pipeline,
            stages,
        }
    }

    /// Every stage's consumer group, as its connector file names it.
    fn groups(&self) -> Vec<String> {
        self.pipeline
            .stages()
            .iter()
            .filter_map(|stage| {
                let path = self.pipeline.dir().join(format!("connectors/{stage}.yaml"));
                let text = std::fs::read_to_string(path).ok()?;
                text.lines()
                    .find_map(|l| l.trim().strip_prefix("group_id: ").map(str::to_string))
            })
            .collect()
    }

    /// The run's topics of `names` (`wxstream.raw`, ...), prefixed.
    fn topics(&self, names: &[&str]) -> Vec<String> {
        let prefix = &self.pipeline.names.prefix;
        names.iter().map(|n| format!("{prefix}{n}")).collect()
    }

    /// Measures, from now until the clean topic holds every message, the longest time it
    /// stood still.
    fn watch_stall(&self) -> tokio::task::JoinHandle<Duration> {
        let (expected, _) = self.pipeline.expected();
        tokio::spawn(longest_stall(self.pipeline.reader(), expected.len()))
    }

    /// The pull-to-stored latency (the message's first pull to its MySQL row) of the messages
    /// stored from `since_ms` on: (p50 ms, p99 ms, messages).
    async fn latency_since(&self, since_ms: i64) -> (f64, f64, usize) {
        let raw = format!("{}wxstream.raw", self.pipeline.names.prefix);
        let kafka = wx_kafka::KafkaConfig::new(self.cluster.brokers());
        let pulled = tokio::task::spawn_blocking(move || {
            let codec = wx_codec::Codec::fixed().expect("codec");
            wx_runtime::measure::pulled_at(&kafka, &raw, &codec).expect("pull times")
        })
        .await
        .expect("join");
        let store = wx_mysql::MessageStore::connect(
            &wxstream_tests::stores::mysql_url(),
            &self.pipeline.names.database,
            wx_runtime::settings::default_store_timeout(),
        )
        .await
        .expect("MariaDB");
        let mut latencies: Vec<f64> = store
            .stored_at()
            .await
            .expect("stored at")
            .iter()
            .filter(|(_, _, _, at)| *at >= since_ms)
            .filter_map(|(corp, _, seq, at)| {
                pulled.get(&(corp.clone(), *seq)).map(|p| (at - p) as f64)
            })
            .collect();
        latencies.sort_by(f64::total_cmp);
        let p = |q| wx_runtime::measure::percentile(&latencies, q);
        (p(0.5), p(0.99), latencies.len())
    }

    /// Everything reconciles (clean = rows = documents = expected, parked = poison, windows =
    /// MySQL, every file stored once) with no stage restarted by hand; prints how long the
    /// clean topic stood still, the pull-to-stored latency of what was stored from the fault on
    /// (`began`: its start as an instant and in ms), and how long after `fault` it all
    /// reconciled.
    async fn assert_rode_out(
        mut self,
        fault: &str,
        began: (Instant, i64),
        stall: tokio::task::JoinHandle<Duration>,
    ) {
        let (began, began_ms) = began;
        let refs: Vec<&WxProcess> = self.stages.iter().map(|(_, _, p)| p).collect();
        let tally = self.pipeline.assert_reconciled(300, &refs).await;
        let (p50, p99, stored) = self.latency_since(began_ms).await;
        eprintln!(
            "pull-to-stored latency of the {stored} messages stored from {fault} on: p50 {p50:.0} ms, p99 {p99:.0} ms"
        );
        eprintln!(
            "the clean topic stood still for at most {:?} after {fault} began",
            stall.await.expect("stall")
        );
        let media = self
            .pipeline
            .assert_media_reconciled_with(300, &refs, false)
            .await;
        eprintln!(
            "reconciled {:?} after {fault} began: {tally:?}\nmedia: {media:?}",
            began.elapsed()
        );
        assert!(media.items > 0, "the feed carries media: {media:?}");
        for (stage, _, process) in self.stages.iter_mut() {
            assert!(
                process.is_running(),
                "a {stage} worker exited instead of riding out {fault}:\n{}",
                process.log_tail()
            );
        }
        drop(self.stages);
        drop(self.cluster);
        drop_database(&self.pipeline.names.database).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_leading_the_most_partitions_killed_mid_run_loses_nothing() {
    let mut run = ClusterRun::start("clusterkill").await;
    let topics = run.topics(&["wxstream.raw", "wxstream.clean"]);
    let led = leaderships(&run.cluster.brokers(), &topics);
    let (leader, partitions) = led
        .iter()
        .copied()
        .max_by_key(|(_, n)| *n)
        .expect("leaders");
    eprintln!("leaderships of raw and clean by node: {led:?}; killing node {leader}");
    let index = usize::try_from(leader - 1).expect("node id");
    let stall = run.watch_stall();
    let killed_at = Instant::now();
    let killed_ms = wxstream_tests::now_ms();
    let mut node = run.cluster.nodes.remove(index);
    let node = tokio::task::spawn_blocking(move || {
        node.kill9();
        std::thread::sleep(Duration::from_secs(30));
        node.restart();
        node
    })
    .await
    .expect("join");
    run.cluster.nodes.insert(index, node);
    eprintln!(
        "node {leader} (leading {partitions} partitions) killed with -9 and restarted after {:?}",
        killed_at.elapsed()
    );
    run.assert_rode_out("the kill", (killed_at, killed_ms), stall)
        .await;
}

/// A rolling restart of every stage's workers mid-run, the way a Kubernetes rolling update
/// does it: for each worker, a new one is started and, once its `/readyz` answers 200, the old
/// one gets SIGTERM and must exit cleanly within 60 s. Nothing is lost and nothing is restarted
/// by hand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_every_stage_mid_run_loses_nothing() {
    let mut run = ClusterRun::start("clusterstages").await;
    let stall = run.watch_stall();
    let began = (Instant::now(), wxstream_tests::now_ms());
    let old = std::mem::take(&mut run.stages);
    for (i, (stage, _, mut process)) in old.into_iter().enumerate() {
        let replaced = Instant::now();
        let listen = format!("127.0.0.1:{}", wxstream_tests::free_port());
        let new = run
            .pipeline
            .start_stage_listening(stage, &format!("-new{i}"), &listen);
        wxstream_tests::wait_until(
            &format!("the new {stage} worker ready"),
            120,
            &new,
            || async { matches!(wxstream_tests::readyz(&listen).await, Some((200, _))) },
        )
        .await;
        let status = tokio::task::spawn_blocking(move || {
            let status = process.terminate(Duration::from_secs(60));
            (status, process.log_tail())
        })
        .await
        .expect("join");
        assert!(
            status.0.is_some_and(|s| s.success()),
            "the old {stage} worker stops cleanly on SIGTERM within 60 s: {:?}\n{}",
            status.0,
            status.1
        );
        eprintln!("{stage} worker {i} replaced in {:?}", replaced.elapsed());
        run.stages.push((stage, listen, new));
    }
    run.assert_rode_out("the rolling restart of every stage", began, stall)
        .await;
}

/// How many partitions of `topics` have fewer in-sync replicas than replicas now.
fn under_replicated(brokers: &str, topics: &[String]) -> usize {
    admin_query(
        brokers,
        "print(sum(1 for t in sys.argv[2:] for p in meta.topics[t].partitions.values() if len(p.isrs) < len(p.replicas)))",
        topics,
        "reading the partitions' in-sync replicas",
    )
    .trim()
    .parse()
    .expect("a count")
}

/// A rolling restart of the three brokers mid-run, as an operator upgrades a cluster: SIGTERM
/// one (a controlled shutdown: its leaderships move first), start it again on its data, wait
/// until every partition of the run's topics has all three replicas in sync again, then the
/// next. Nothing is lost and no stage is restarted by hand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_the_three_brokers_mid_run_loses_nothing() {
    let mut run = ClusterRun::start("clusterroll").await;
    let topics = run.topics(&[
        "wxstream.raw",
        "wxstream.clean",
        "wxstream.dead-letter",
        "wxstream.stats",
        "wxstream.stats-checkpoints",
        "wxstream.ingest-checkpoints",
    ]);
    let stall = run.watch_stall();
    let began = (Instant::now(), wxstream_tests::now_ms());
    for index in 0..run.cluster.nodes.len() {
        let brokers = run.cluster.brokers();
        let mut node = run.cluster.nodes.remove(index);
        let topics = topics.clone();
        let node = tokio::task::spawn_blocking(move || {
            let stopped = Instant::now();
            node.terminate();
            node.start_again();
            let deadline = Instant::now() + Duration::from_secs(300);
            loop {
                let behind = under_replicated(&brokers, &topics);
                if behind == 0 {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{behind} partitions still under-replicated 300 s after node {} restarted",
                    index + 1
                );
                std::thread::sleep(Duration::from_secs(1));
            }
            eprintln!(
                "node {} stopped, restarted and back in sync in {:?}",
                index + 1,
                stopped.elapsed()
            );
            node
        })
        .await
        .expect("join");
        run.cluster.nodes.insert(index, node);
    }
    run.assert_rode_out("the rolling restart", began, stall)
        .await;
}

/// The node id of the leader of `partition` of `topic`.
fn leader_of(brokers: &str, topic: &str, partition: i32) -> u32 {
    admin_query(
        brokers,
        "print(meta.topics[sys.argv[2]].partitions[int(sys.argv[3])].leader)",
        &[topic.to_string(), partition.to_string()],
        "reading a partition's leader",
    )
    .trim()
    .parse()
    .expect("a node id")
}

/// Audit L2: a checkpoint read that fails when a worker takes its corps over is retried, and
/// shown in `/readyz` meanwhile, instead of leaving the corps owned and never pulled. The read
/// fails because the broker of the corp's checkpoint partition (a topic of one replica) is down
/// when the worker joins; once it is back, the retry reads the checkpoint and the corp is pulled
/// to its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_read_that_fails_at_take_over_is_shown_and_retried() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut cluster = KafkaCluster::start_in(dir.path()).await;
    let brokers = cluster.brokers();
    let corp = "wwheld0";
    let (sim, url) =
        wxstream_tests::media::simulator_with(corp, &[], wx_sim::ServerConfig::default()).await;
    let topology = dir.path().join("topology");
    wxstream_tests::write_ingest_topology(
        &topology,
        &url,
        &[(corp.to_string(), format!("secret-{corp}"))],
        "  page_limit: 100\n",
    );
    let args = |rest: &[&str]| -> Vec<String> {
        let mut args = vec![
            "--brokers".to_string(),
            brokers.clone(),
            "--topology".into(),
            topology.display().to_string(),
        ];
        args.extend(rest.iter().map(|a| a.to_string()));
        args
    };
    run_ok_text(
        std::process::Command::new(wxstream_tests::wxstream_bin())
            .args(args(&["topology", "apply"])),
        "creating the topics",
    );
    let checkpoints = "wxstream.ingest-checkpoints";
    let partition = wx_kafka::partition_for_key(corp.as_bytes(), 6);
    let leader = tokio::task::spawn_blocking({
        let brokers = brokers.clone();
        move || leader_of(&brokers, checkpoints, partition)
    })
    .await
    .expect("join");
    let node = &mut cluster.nodes[usize::try_from(leader).expect("id") - 1];
    node.kill9();

    let listen = format!("127.0.0.1:{}", wxstream_tests::free_port());
    let worker = WxProcess::start_with(
        &args(&["run", "--only", "ingest"]),
        &dir.path().join("ingest.log"),
        &listen,
    );
    wxstream_tests::wait_until(
        "/readyz names the failing checkpoint read",
        120,
        &worker,
        || async {
            matches!(
                wxstream_tests::readyz(&listen).await,
                Some((503, body)) if body.to_string().contains("checkpoints")
            )
        },
    )
    .await;
    assert!(
        sim.pulls().is_empty(),
        "nothing is pulled before the corp's checkpoint is read"
    );
    node.start_again();
    let served = sim.truth()[0].messages.len();
    wxstream_tests::wait_until("every message in the raw topic", 180, &worker, || {
        let brokers = brokers.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                wxstream_tests::raw_seqs(&brokers, "wxstream.raw")
                    .get(corp)
                    .map_or(0, std::collections::BTreeSet::len)
                    == served
            })
            .await
            .unwrap_or(false)
        }
    })
    .await;
    wxstream_tests::wait_until("ready again", 60, &worker, || async {
        matches!(wxstream_tests::readyz(&listen).await, Some((200, _)))
    })
    .await;
}

/// `node` started again on its data (blocking until it answers).
async fn started_again(mut node: KafkaNode) -> KafkaNode {
    tokio::task::spawn_blocking(move || {
        node.start_again();
        node
    })
    .await
    .expect("join")
}

/// Two of the three brokers down at once mid-run (kill -9): the KRaft quorum is lost with them,
/// so the survivor's metadata freezes (leaders and in-sync replicas as they were) and no write
/// can gather the two acknowledgements `acks=all` with `min.insync.replicas` 2 needs. Producers
/// stop, every worker says so in `/readyz` (a leader of its topics that does not answer, or
/// sends retried), nothing is committed past what is durable (the run still reconciles: a
/// commit past an unacknowledged write would leave a gap), and once one of the two is back
/// (quorum again) everything resumes with no stage restarted by hand; the third comes back
/// after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_of_three_brokers_down_stops_every_stage_visibly_and_it_resumes_when_one_is_back() {
    let mut run = ClusterRun::start("clustertwo").await;
    let stall = run.watch_stall();
    let began = (Instant::now(), wxstream_tests::now_ms());
    let mut third = run.cluster.nodes.remove(2);
    let mut second = run.cluster.nodes.remove(1);
    let (second, third) = tokio::task::spawn_blocking(move || {
        second.kill9();
        third.kill9();
        (second, third)
    })
    .await
    .expect("join");
    eprintln!("killed nodes 2 and 3 with -9");
    // Every worker says it waits on Kafka.
    for (stage, listen, process) in &run.stages {
        let since = Instant::now();
        wxstream_tests::wait_until(
            &format!("the {stage} worker on {listen} to say it waits on Kafka"),
            120,
            process,
            || async {
                matches!(
                    wxstream_tests::readyz(listen).await,
                    Some((status, body)) if status != 200 && body.to_string().contains("kafka")
                )
            },
        )
        .await;
        let seen = wxstream_tests::readyz(listen).await.map(|(_, body)| body);
        eprintln!(
            "{stage} worker not ready after {:?} ({:?} since the kill): {seen:?}",
            since.elapsed(),
            began.0.elapsed()
        );
    }
    // One of the two back: the quorum and two in-sync replicas again, and every worker ready
    // again by itself with the third still down. Seen to fail twice: with a commit sent every
    // tick whatever became of the one before (they piled up behind the dead coordinator and
    // librdkafka held the revocation until each had failed), and, once one commit at a time
    // mended that, with the consume loop sleeping a growing backoff after each receive error
    // (the assignment waited behind the queued errors: the coordinator counted the member in
    // its stable group, the stage did not). The wait stays at 6 min until more runs than the
    // one after that mend (92 s) show where the rest goes (README).
    let ready_again = Duration::from_secs(360);
    let back = Instant::now();
    let second = started_again(second).await;
    run.cluster.nodes.insert(1, second);
    let mut explained = false;
    for (stage, listen, process) in &run.stages {
        while !matches!(wxstream_tests::readyz(listen).await, Some((200, _))) {
            if !explained && back.elapsed() > Duration::from_secs(60) {
                explained = true;
                let (brokers, groups) = (run.cluster.brokers(), run.groups());
                let seen = tokio::task::spawn_blocking(move || coordination(&brokers, &groups))
                    .await
                    .expect("join");
                eprintln!(
                    "the {stage} worker is not ready 60 s after node 2 came back: {:?}\n{seen}",
                    wxstream_tests::readyz(listen).await
                );
            }
            assert!(
                back.elapsed() < ready_again,
                "the {stage} worker on {listen} ready again with node 3 still down within {ready_again:?}:\n{}",
                process.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    eprintln!(
        "node 2 started again; every worker ready {:?} later, node 3 still down",
        back.elapsed()
    );
    let third = started_again(third).await;
    run.cluster.nodes.insert(2, third);
    run.assert_rode_out("two brokers down", began, stall).await;
}
