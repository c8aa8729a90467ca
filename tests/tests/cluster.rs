//! On a three-node Kafka cluster of the test's own (`wxstream_tests::KafkaCluster`: each node
//! broker and KRaft controller), every topic with 3 replicas and `min.insync.replicas` 2, all
//! five stages as separate processes, two workers each for decrypt and sink:
//! - kill -9 of the broker that leads the most raw and clean partitions, mid-run, restarted
//!   30 s later: nothing lost, nothing duplicated where a user looks, every file stored, no
//!   stage restarted by hand.

use std::time::{Duration, Instant};

use wxstream_tests::e2e::Pipeline;
use wxstream_tests::pipeline::drop_database;
use wxstream_tests::{KafkaCluster, WxProcess, python, run_ok_text};

const CORPS: usize = 3;
const PER_CORP: u64 = 10_000;

/// How many partitions of `topics` each broker (by node id) leads now.
fn leaderships(brokers: &str, topics: &[String]) -> Vec<(i64, usize)> {
    let script = "import sys, json, collections\n\
        from confluent_kafka.admin import AdminClient\n\
        admin = AdminClient({'bootstrap.servers': sys.argv[1]})\n\
        meta = admin.list_topics(timeout=30)\n\
        led = collections.Counter(p.leader for t in sys.argv[2:] for p in meta.topics[t].partitions.values())\n\
        print(json.dumps(sorted(led.items())))\n";
    let text = run_ok_text(
        std::process::Command::new(python())
            .args(["-c", script, brokers])
            .args(topics),
        "reading the partitions' leaders",
    );
    serde_json::from_str(&text).expect("leaders")
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_leading_the_most_partitions_killed_mid_run_loses_nothing() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut cluster = KafkaCluster::start_in(dir.path()).await;
    let media = wxstream_tests::e2e::small_media();
    let pipeline = Pipeline::start_with_media(
        "clusterkill",
        &cluster.brokers(),
        CORPS,
        PER_CORP,
        media,
        |topics| topics.iter_mut().for_each(|t| t.replicate(3)),
    )
    .await;
    let mut stages: Vec<WxProcess> = Vec::new();
    for stage in pipeline.stages() {
        stages.push(pipeline.start_stage(stage, "-a"));
        if matches!(stage, "decrypt" | "sink") {
            stages.push(pipeline.start_stage(stage, "-b"));
        }
    }
    pipeline.wait_for_clean(5_000, 300, &stages[1]).await;

    let prefix = &pipeline.names.prefix;
    let topics = [
        format!("{prefix}wxstream.raw"),
        format!("{prefix}wxstream.clean"),
    ];
    let led = leaderships(&cluster.brokers(), &topics);
    let (leader, partitions) = led
        .iter()
        .copied()
        .max_by_key(|(_, n)| *n)
        .expect("leaders");
    eprintln!("leaderships of raw and clean by node: {led:?}; killing node {leader}");
    let index = usize::try_from(leader - 1).expect("node id");
    let (expected, _) = pipeline.expected();
    let stall = tokio::spawn(longest_stall(pipeline.reader(), expected.len()));
    let killed_at = Instant::now();
    let mut node = cluster.nodes.remove(index);
    let node = tokio::task::spawn_blocking(move || {
        node.kill9();
        std::thread::sleep(Duration::from_secs(30));
        node.restart();
        node
    })
    .await
    .expect("join");
    eprintln!(
        "node {leader} (leading {partitions} partitions) killed with -9 and restarted after {:?}",
        killed_at.elapsed()
    );
    let refs: Vec<&WxProcess> = stages.iter().collect();
    let tally = pipeline.assert_reconciled(300, &refs).await;
    eprintln!(
        "the clean topic stood still for at most {:?} after the kill",
        stall.await.expect("stall")
    );
    let media = pipeline
        .assert_media_reconciled_with(300, &refs, false)
        .await;
    eprintln!(
        "reconciled {:?} after the kill: {tally:?}\nmedia: {media:?}",
        killed_at.elapsed()
    );
    assert!(media.items > 0, "the feed carries media: {media:?}");
    for process in stages.iter_mut() {
        assert!(
            process.is_running(),
            "a stage exited instead of riding out the broker's loss:\n{}",
            process.log_tail()
        );
    }
    drop(stages);
    drop((node, cluster));
    drop_database(&pipeline.names.database).await;
}
