//! The ingest connector against the local broker and the simulator: no gap after any number of
//! kill -9, two workers sharing corps with takeover, and the callback receiver.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use rand::Rng;
use wx_kafka::partition_for_key;
use wx_sim::{CorpFeed, FaultRates, FeedSpec, ServerConfig, SimKeys, Simulator};
use wxstream_tests::{
    WxProcess, add_callbacks_to_every_corp, brokers, free_port, now_ms, raw_seqs,
    write_ingest_topology,
};

/// Starts the simulator in this test process; returns its URL.
async fn serve(sim: Simulator) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(sim.serve(listener, std::future::pending()));
    url
}

fn feeds(
    corps: &[String],
    messages: u64,
    start_ms: i64,
    spacing_ms: i64,
    keys: &SimKeys,
) -> Vec<(CorpFeed, String)> {
    corps
        .iter()
        .enumerate()
        .map(|(i, corp)| {
            let spec = FeedSpec {
                corp_id: corp.clone(),
                seed: 100 + i as u64,
                messages,
                start_ms,
                spacing_ms,
                key_versions: vec![1, 2],
                withheld_key_version: 99,
                faults: FaultRates::default(),
                media: Default::default(),
            };
            (
                CorpFeed::build(&spec, keys).expect("feed"),
                format!("secret-{corp}"),
            )
        })
        .collect()
}

fn run_args<'a>(topology: &'a Path, prefix: &'a str, brokers: &'a str) -> Vec<String> {
    vec![
        "--brokers".into(),
        brokers.into(),
        "--topology".into(),
        topology.display().to_string(),
        "--topic-prefix".into(),
        prefix.into(),
        "run".into(),
        "--only".into(),
        "ingest".into(),
    ]
}

/// Writes an ingest topology for `corps` (secrets as `feeds` makes them) pulling from the
/// simulator at `url`, and returns the directory and the `wxstream` arguments that run it.
fn ingest_setup(
    url: &str,
    corps: &[String],
    extra: &str,
    prefix: &str,
) -> (tempfile::TempDir, Vec<String>) {
    let dir = tempfile::tempdir().expect("tmp");
    let secrets: Vec<(String, String)> = corps
        .iter()
        .map(|c| (c.clone(), format!("secret-{c}")))
        .collect();
    write_ingest_topology(dir.path(), url, &secrets, extra);
    let args = run_args(dir.path(), prefix, &brokers());
    (dir, args)
}

fn start(args: &[String], log: &Path) -> WxProcess {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    WxProcess::start(&refs, log)
}

/// One corp's feed of `messages` (a message every 100 ms from an hour ago), served by a
/// simulator with `config` and pulled by one ingest process with `extra` settings into the
/// topics of `prefix`.
struct OneCorp {
    sim: Simulator,
    process: WxProcess,
    raw_topic: String,
    _dir: tempfile::TempDir,
}

async fn one_corp(
    corp: &str,
    config: ServerConfig,
    messages: u64,
    extra: &str,
    prefix: &str,
) -> OneCorp {
    let keys = SimKeys::generate(&[1, 2, 99]).expect("keys");
    let corps = vec![corp.to_string()];
    let sim = Simulator::new(
        config,
        feeds(&corps, messages, now_ms() - 3_600_000, 100, &keys),
    );
    let url = serve(sim.clone()).await;
    let (dir, args) = ingest_setup(&url, &corps, extra, prefix);
    OneCorp {
        sim,
        process: start(&args, &dir.path().join("ingest.log")),
        raw_topic: format!("{prefix}wxstream.raw"),
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_moments_leaves_no_gap_in_the_raw_topic() {
    let prefix = wxstream_tests::fresh_topics("ingest-kill").await;
    let keys = SimKeys::generate(&[1, 2, 99]).expect("keys");
    let corps: Vec<String> = (0..3).map(|i| format!("wwkill{i}")).collect();
    // 3 x 6,667 = 20,001 messages, all available at once.
    let config = ServerConfig {
        calls_per_minute: 1200,
        transient_error_rate: 0.05,
        duplicate_rate: 0.1,
        ..ServerConfig::default()
    };
    let sim = Simulator::new(
        config,
        feeds(&corps, 6_667, now_ms() - 3_600_000, 100, &keys),
    );
    let url = serve(sim.clone()).await;
    let (dir, args) = ingest_setup(
        &url,
        &corps,
        "  page_limit: 50\n  calls_per_minute: 1200\n  poll_interval: 1s\n  session_timeout: 6s\n  backoff_cap: 2s\n",
        &prefix,
    );
    let log = dir.path().join("ingest.log");
    let raw_topic = format!("{prefix}wxstream.raw");

    let count = || {
        let (b, t) = (brokers(), raw_topic.clone());
        tokio::task::spawn_blocking(move || {
            raw_seqs(&b, &t).values().map(BTreeSet::len).sum::<usize>()
        })
    };
    let mut before = 0;
    for round in 0..4 {
        if before >= 20_001 {
            break;
        }
        let mut process = start(&args, &log);
        // Kill while it is pulling: once progress shows, at a random moment within a second.
        let deadline = Instant::now() + Duration::from_secs(60);
        while count().await.expect("join") <= before {
            assert!(
                Instant::now() < deadline,
                "no progress after restart #{round}:\n{}",
                process.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let wait = rand::thread_rng().gen_range(0..1_000);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        process.kill9();
        before = count().await.expect("join");
        eprintln!(
            "kill -9 #{round} {wait} ms after progress resumed: {before} distinct seqs in the raw topic"
        );
    }
    let metrics_addr = format!("127.0.0.1:{}", wxstream_tests::free_port());
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut last = WxProcess::start_with(&refs, &log, &metrics_addr);
    let deadline = Instant::now() + Duration::from_secs(180);
    let expected: BTreeSet<u64> = (1..=6_667).collect();
    loop {
        let seqs = tokio::task::spawn_blocking({
            let (b, t) = (brokers(), raw_topic.clone());
            move || raw_seqs(&b, &t)
        })
        .await
        .expect("join");
        if corps.iter().all(|c| seqs.get(c) == Some(&expected)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "raw topic incomplete after 180 s: {:?}\n{}",
            corps
                .iter()
                .map(|c| (c, seqs.get(c).map_or(0, BTreeSet::len)))
                .collect::<Vec<_>>(),
            last.log_tail()
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    // Every seq the simulator ever served is in the raw topic: no gap, whatever the kills hit.
    let seqs = raw_seqs(&brokers(), &raw_topic);
    for truth in sim.truth() {
        let stored = &seqs[&truth.corp_id];
        let missing: Vec<u64> = truth
            .served_seqs
            .iter()
            .filter(|s| !stored.contains(s))
            .copied()
            .collect();
        assert!(
            missing.is_empty(),
            "{}: served but not stored: {missing:?}",
            truth.corp_id
        );
    }
    // The metrics tell the same story (once the last worker owns every corp again), in a valid
    // Prometheus exposition.
    let cursor_of = |scrape: &str, corp: &str| {
        let label = format!("corp=\"{corp}\"");
        scrape
            .lines()
            .find(|l| l.starts_with("wxstream_ingest_cursor_seq") && l.contains(&label))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let scrape = loop {
        let scrape = wxstream_tests::metrics_text(&metrics_addr).await;
        if corps.iter().all(|c| cursor_of(&scrape, c) == Some(6_667.0)) {
            break scrape;
        }
        assert!(
            Instant::now() < deadline,
            "cursor gauges never reached 6667:\n{scrape}\n{}",
            last.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    for name in ["wxstream_ingest_pulls_total", "wxstream_ingest_owned_corps"] {
        assert!(scrape.contains(name), "{name} missing from the scrape");
    }
    wxstream_tests::assert_promtool_accepts(&scrape);
    // A graceful stop drains and exits 0.
    let status = tokio::task::spawn_blocking(move || last.terminate(Duration::from_secs(30)))
        .await
        .expect("join");
    assert!(
        status.is_some_and(|s| s.success()),
        "SIGTERM must stop ingest cleanly: {status:?}"
    );
}

/// Corp ids whose checkpoints land in distinct partitions 0..n of a 6-partition topic.
fn one_corp_per_partition(n: i32) -> Vec<String> {
    let mut by_partition: BTreeMap<i32, String> = BTreeMap::new();
    for i in 0.. {
        let corp = format!("wwtake{i}");
        by_partition
            .entry(partition_for_key(corp.as_bytes(), 6))
            .or_insert(corp);
        if by_partition.len() as i32 == n {
            break;
        }
    }
    by_partition.into_values().collect()
}

/// The corps a worker pulls now, from its log: started and not released since.
fn started_corps(log: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut owned = BTreeSet::new();
    for line in text.lines() {
        let Some(corp) = line
            .split("corp=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
        else {
            continue;
        };
        if line.contains("Puller started.") {
            owned.insert(corp.to_string());
        } else if line.contains("Released the corp.") {
            owned.remove(corp);
        }
    }
    owned
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_share_the_corps_and_one_takes_over_within_30_seconds() {
    let prefix = wxstream_tests::fresh_topics("ingest-two").await;
    let keys = SimKeys::generate(&[1, 2, 99]).expect("keys");
    let corps = one_corp_per_partition(6);
    // Rate mode: 10 messages per second per corp keep arriving for 150 s.
    let sim = Simulator::new(
        ServerConfig {
            calls_per_minute: 6000,
            ..ServerConfig::default()
        },
        feeds(&corps, 1_500, now_ms(), 100, &keys),
    );
    let url = serve(sim.clone()).await;
    let (dir, args) = ingest_setup(
        &url,
        &corps,
        "  page_limit: 100\n  poll_interval: 1s\n  session_timeout: 6s\n",
        &prefix,
    );
    let (log_a, log_b) = (dir.path().join("a.log"), dir.path().join("b.log"));
    let mut a = start(&args, &log_a);
    let mut b = start(&args, &log_b);

    // Wait until the group has settled with both workers owning corps.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (owned_a, owned_b) = loop {
        let (sa, sb) = (started_corps(&log_a), started_corps(&log_b));
        let all: BTreeSet<String> = sa.union(&sb).cloned().collect();
        if !sa.is_empty() && !sb.is_empty() && all.len() == corps.len() && sa.is_disjoint(&sb) {
            tokio::time::sleep(Duration::from_secs(3)).await;
            // Ownership after the last rebalance: a corp started most recently by a worker.
            break (started_corps(&log_a), started_corps(&log_b));
        }
        assert!(
            Instant::now() < deadline,
            "workers did not share the corps:\nA: {sa:?}\nB: {sb:?}\n{}\n{}",
            a.log_tail(),
            b.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    eprintln!("A pulls {owned_a:?}, B pulls {owned_b:?}");

    let raw_topic = format!("{prefix}wxstream.raw");
    let max_seqs = |seqs: &BTreeMap<String, BTreeSet<u64>>| -> BTreeMap<String, u64> {
        corps
            .iter()
            .map(|c| {
                (
                    c.clone(),
                    seqs.get(c).and_then(|s| s.last().copied()).unwrap_or(0),
                )
            })
            .collect()
    };
    a.kill9();
    let killed_at = Instant::now();
    let b_log_at_kill = std::fs::read_to_string(&log_b).unwrap_or_default().len();
    let at_kill = max_seqs(&raw_seqs(&brokers(), &raw_topic));
    // Every corp, A's included, must move forward again within 30 s.
    let mut progressed: BTreeMap<String, Duration> = BTreeMap::new();
    while progressed.len() < corps.len() && killed_at.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = max_seqs(&raw_seqs(&brokers(), &raw_topic));
        for (corp, seq) in now {
            if seq > at_kill[&corp] + 10 {
                progressed.entry(corp).or_insert(killed_at.elapsed());
            }
        }
    }
    assert_eq!(
        progressed.len(),
        corps.len(),
        "corps not taken over within 30 s: {:?}\n{}",
        corps
            .iter()
            .filter(|c| !progressed.contains_key(*c))
            .collect::<Vec<_>>(),
        b.log_tail()
    );
    eprintln!("progress after the kill: {progressed:?}");
    // B took over each of A's corps: it started their pullers after the kill. (Which corps B
    // holds at one instant churns while the group and the adoption settle; that it took them
    // over, and that they progressed, is the promise.)
    let b_log = std::fs::read_to_string(&log_b).unwrap_or_default();
    let started_after_kill: BTreeSet<&str> = b_log[b_log_at_kill..]
        .lines()
        .filter(|l| l.contains("Puller started."))
        .filter_map(|l| l.split("corp=").nth(1)?.split_whitespace().next())
        .collect();
    for corp in &owned_a {
        assert!(
            started_after_kill.contains(corp.as_str()),
            "B never took over {corp}; B started {started_after_kill:?} after the kill"
        );
    }
    b.terminate(Duration::from_secs(30));
    // No corp was ever pulled by both workers at once: A's corps changed hands once at the kill
    // (and any corp perhaps once more while the group first settled).
    wxstream_tests::e2e::assert_exclusive_pulls(&sim.pulls(), 3);
    // No gap for any corp: 1..=max is all there.
    for (corp, seqs) in raw_seqs(&brokers(), &raw_topic) {
        let max = *seqs.last().expect("some");
        assert_eq!(seqs.len() as u64, max, "{corp}: gap in 1..={max}");
    }
}

/// One GetChatData item that cannot be read (`publickey_ver` a string) used to fail its whole
/// page, pulled again for ever. It is parked on the dead-letter topic (class `malformed_item`,
/// with the item as sent, its corp, seq and msgid, and a cause without values), and the cursor
/// moves past it: every other item reaches the raw topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_getchatdata_item_is_parked_and_the_cursor_moves_past_it() {
    let prefix = wxstream_tests::fresh_topics("ingest-malformed").await;
    let config = ServerConfig {
        calls_per_minute: 6000,
        malformed_item_rate: 0.01,
        ..ServerConfig::default()
    };
    let run = one_corp(
        "wwmal0",
        config,
        2_000,
        "  page_limit: 100\n  calls_per_minute: 6000\n  poll_interval: 1s\n",
        &prefix,
    )
    .await;
    let malformed: BTreeSet<u64> = (1..=2_000).filter(|s| run.sim.is_malformed(*s)).collect();
    assert!(malformed.len() >= 5, "the feed has malformed items");
    let reader = wxstream_tests::e2e::Reader::new(&brokers(), &prefix);
    let deadline = Instant::now() + Duration::from_secs(120);
    let (stored, letters) = loop {
        let (b, t, r) = (brokers(), run.raw_topic.clone(), reader.clone());
        let (seqs, letters) = tokio::task::spawn_blocking(move || (raw_seqs(&b, &t), r.parked()))
            .await
            .expect("join");
        let stored = seqs.get("wwmal0").cloned().unwrap_or_default();
        let parked: BTreeSet<u64> = letters
            .iter()
            .filter_map(|d| u64::try_from(d.seq?).ok())
            .collect();
        if stored.len() + parked.len() >= 2_000 {
            break (stored, letters);
        }
        assert!(
            Instant::now() < deadline,
            "after 120 s: {} seqs stored, {} parked of 2000\n{}",
            stored.len(),
            parked.len(),
            run.process.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let all: BTreeSet<u64> = (1..=2_000).collect();
    assert_eq!(
        stored,
        all.difference(&malformed).copied().collect(),
        "every readable item is in the raw topic"
    );
    let mut parked = BTreeSet::new();
    for letter in &letters {
        assert_eq!(
            (
                letter.stage.as_str(),
                letter.error_class.as_str(),
                letter.corp_id.as_deref()
            ),
            ("ingest", "malformed_item", Some("wwmal0"))
        );
        assert_eq!(letter.original_format, "getchatdata-item-json");
        let item: serde_json::Value =
            serde_json::from_slice(&letter.original).expect("the item as sent");
        assert_eq!(item["publickey_ver"], "v?");
        assert_eq!(item["msgid"].as_str(), letter.msgid.as_deref());
        assert!(
            letter.error_message.contains("expected i64") && !letter.error_message.contains("v?"),
            "the cause names the type, not the value: {}",
            letter.error_message
        );
        parked.insert(u64::try_from(letter.seq.expect("seq")).expect("seq"));
    }
    assert_eq!(parked, malformed, "exactly the malformed items are parked");
}

/// A GetChatData page larger than the raw topic takes (its `max.message.bytes` is 64 KiB here;
/// 1,000 items make about 1 MB) is written as several raw batches that fit, in order, and the
/// cursor is checkpointed after the last: every seq reaches the raw topic
/// (`../shared/reviews/audit-2026-12.md` L1: the page was retried for ever, the cursor never
/// moved, and the corp's data was lost after WeCom's retention).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_larger_than_the_raw_topic_takes_is_split_into_batches_that_fit() {
    let prefix = format!("{}.", wxstream_tests::unique("ingest-split"));
    let mut topics = wxstream_tests::repo_topology(&prefix).topics;
    wxstream_tests::limit_message_bytes(&mut topics, "wxstream.raw", 65_536);
    wx_kafka::TopicAdmin::new(&wx_kafka::KafkaConfig::new(brokers()))
        .expect("admin")
        .apply(&topics)
        .await
        .expect("topics");
    let config = ServerConfig {
        calls_per_minute: 6000,
        ..ServerConfig::default()
    };
    let run = one_corp(
        "wwsplit",
        config,
        2_000,
        "  page_limit: 1000\n  calls_per_minute: 6000\n  poll_interval: 1s\n",
        &prefix,
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (b, t) = (brokers(), run.raw_topic.clone());
        // The records and the seqs they hold from one read (two reads let a batch written in
        // between count in the seqs and not in the records).
        let (stored, records) = tokio::task::spawn_blocking(move || {
            let records =
                wx_kafka::read_topic(&wx_kafka::KafkaConfig::new(&b), &t, Duration::from_secs(60))
                    .expect("raw");
            let codec = wx_codec::Codec::fixed().expect("codec");
            let seqs: BTreeSet<i64> = records
                .iter()
                .filter_map(|r| codec.decode::<wx_codec::RawBatch>(r.value.as_deref()?).ok())
                .flat_map(|b| b.items.into_iter().map(|i| i.seq))
                .collect();
            (seqs.len(), records.len())
        })
        .await
        .expect("join");
        if stored >= 2_000 {
            assert!(
                records >= 4,
                "two pages of 1,000 items took more than one batch each: {records} records"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after 120 s: {stored} of 2000 seqs in {records} raw records\n{}",
            run.process.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The checkpoint moved to the last seq.
    wxstream_tests::wait_until(
        "the cursor checkpointed at 2000",
        60,
        &run.process,
        || async {
            let (b, t) = (brokers(), format!("{prefix}wxstream.ingest-checkpoints"));
            tokio::task::spawn_blocking(move || {
                let kafka = wx_kafka::KafkaConfig::new(&b);
                let all: Vec<i32> =
                    (0..wx_kafka::partition_count(&kafka, &t).unwrap_or(1)).collect();
                wx_ingest::read_checkpoints(&kafka, &t, &all)
                    .map(|c| c.get("wwsplit").copied() == Some(2_000))
                    .unwrap_or(false)
            })
            .await
            .unwrap_or(false)
        },
    )
    .await;
}

/// A page whose only new item cannot be read and carries no readable seq cannot move the
/// cursor (`../shared/reviews/audit-2026-12.md` M5: the page was parked, written as an empty
/// batch and pulled again at the rate limit, for ever). The item is parked once, the puller waits
/// at its poll interval as on an empty page, and every readable item is in the raw topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_that_cannot_move_the_cursor_is_not_pulled_again_at_the_rate_limit() {
    let prefix = wxstream_tests::fresh_topics("ingest-stuck").await;
    let config = ServerConfig {
        calls_per_minute: 6000,
        malformed_item_rate: 0.02,
        malformed_without_seq: true,
        ..ServerConfig::default()
    };
    // The feed ends on a malformed item, so the last page holds it alone.
    let probe = Simulator::new(config.clone(), Vec::new());
    let last = (200..2_000)
        .find(|s| probe.is_malformed(*s))
        .expect("a malformed seq");
    let run = one_corp(
        "wwstuck0",
        config,
        last,
        "  page_limit: 100\n  calls_per_minute: 6000\n  poll_interval: 2s\n",
        &prefix,
    )
    .await;
    let readable: BTreeSet<u64> = (1..=last).filter(|s| !run.sim.is_malformed(*s)).collect();
    wxstream_tests::wait_until(
        "every readable item in the raw topic",
        120,
        &run.process,
        || {
            let (b, t, want) = (brokers(), run.raw_topic.clone(), readable.clone());
            async move {
                tokio::task::spawn_blocking(move || {
                    raw_seqs(&b, &t)
                        .get("wwstuck0")
                        .cloned()
                        .unwrap_or_default()
                        == want
                })
                .await
                .unwrap_or(false)
            }
        },
    )
    .await;
    // Now only the unreadable last item is new: count the calls over 10 s.
    let before = run.sim.pulls().len();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let calls = run.sim.pulls().len() - before;
    assert!(
        calls <= 8,
        "{calls} GetChatData calls in 10 s at a 2 s poll interval: the stuck page is pulled again at the rate limit\n{}",
        run.process.log_tail()
    );
    assert!(
        run.process
            .log_tail()
            .contains("no readable seq past the cursor")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_msgaudit_notify_received_by_one_worker_wakes_the_corps_puller_in_another() {
    // Audit M12: behind a Service, WeCom's msgaudit_notify reaches any worker, seldom the one
    // that owns the corp. Two workers with a callback listener each and a poll interval of
    // 5 minutes: a notify sent to the worker that does not pull the corp must get it pulled
    // within seconds.
    let prefix = wxstream_tests::fresh_topics("ingest-wake").await;
    let keys = SimKeys::generate(&[1, 2, 99]).expect("keys");
    let corp = "wwwake0".to_string();
    let sim = Simulator::new(
        ServerConfig::default(),
        feeds(
            std::slice::from_ref(&corp),
            50,
            now_ms() - 3_600_000,
            100,
            &keys,
        ),
    );
    let url = serve(sim.clone()).await;
    let mut workers = Vec::new();
    for i in 0..2 {
        let port = free_port();
        let (dir, args) = ingest_setup(
            &url,
            std::slice::from_ref(&corp),
            &format!(
                "  poll_interval: 5m\n  session_timeout: 6s\n  callback_listen: 127.0.0.1:{port}\n"
            ),
            &prefix,
        );
        add_callbacks_to_every_corp(dir.path());
        let log = dir.path().join("ingest.log");
        let process = start(&args, &log);
        workers.push((dir, process, log, port));
        // The first owns the corp alone before the second joins.
        if i == 0 {
            let (_, first, log, _) = &workers[0];
            wxstream_tests::wait_until("the first worker pulls", 120, first, || async {
                started_corps(log).contains(&corp)
            })
            .await;
        }
    }
    // Settled: one worker pulls the corp, the other nothing, and no pull for 5 s.
    let deadline = Instant::now() + Duration::from_secs(120);
    let owner = loop {
        let owners: Vec<usize> = (0..2)
            .filter(|i| started_corps(&workers[*i].2).contains(&corp))
            .collect();
        let before = sim.pulls().len();
        tokio::time::sleep(Duration::from_secs(5)).await;
        let second_joined = std::fs::read_to_string(&workers[1].2)
            .unwrap_or_default()
            .contains("Assigned partitions.");
        if owners.len() == 1 && second_joined && sim.pulls().len() == before {
            break owners[0];
        }
        assert!(
            Instant::now() < deadline,
            "no settled owner: {owners:?}\n{}",
            workers[1].1.log_tail()
        );
    };
    let other = 1 - owner;
    let before = sim.pulls().len();
    let sender = wx_sim::CallbackSender::new(wx_sim::CallbackConfig {
        url: format!("http://127.0.0.1:{}/callback/{{corp}}", workers[other].3),
        token: wxstream_tests::CALLBACK_TOKEN.into(),
        encoding_aes_key: wxstream_tests::CALLBACK_KEY.into(),
        attempts: 3,
        retry_ms: 500,
        json: false,
    })
    .expect("sender");
    let sent = Instant::now();
    let delivery = sender.msgaudit_notify(&corp).await;
    assert!(
        delivery.delivered && delivery.reply == "success",
        "the notify was taken: {delivery:?}"
    );
    wxstream_tests::wait_until(
        &format!(
            "worker {owner}, which owns {corp}, pulls after the notify worker {other} received"
        ),
        20,
        &workers[owner].1,
        || async { sim.pulls().len() > before },
    )
    .await;
    eprintln!(
        "worker {owner} pulled {:?} after the notify sent to worker {other}",
        sent.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_losing_many_corps_stops_their_pullers_together_within_the_release_timeout() {
    // A worker hands its corps over only once their pullers have stopped, and a revocation
    // waits for that at most 35 s (the release timeout); past it the next owner may overlap.
    // A puller finishes its current call first, and is aborted after 30 s. Every GetChatData
    // call here hangs for 100 s, so each of the six pullers takes the whole 30 s: stopped one
    // after another they would take three minutes; together, about 30 s.
    let prefix = wxstream_tests::fresh_topics("ingest-stop").await;
    let keys = SimKeys::generate(&[1, 2, 99]).expect("keys");
    let corps = one_corp_per_partition(6);
    let sim = Simulator::new(
        ServerConfig {
            slow_reply_rate: 1.0,
            slow_reply_ms: 100_000,
            ..ServerConfig::default()
        },
        feeds(&corps, 10, now_ms() - 60_000, 100, &keys),
    );
    let url = serve(sim.clone()).await;
    let (dir, args) = ingest_setup(
        &url,
        &corps,
        "  request_timeout: 120s\n  session_timeout: 6s\n",
        &prefix,
    );
    let (log_a, log_b) = (dir.path().join("a.log"), dir.path().join("b.log"));
    let a = start(&args, &log_a);
    wxstream_tests::wait_until("the first worker pulls every corp", 120, &a, || async {
        started_corps(&log_a).len() == corps.len()
    })
    .await;
    // Every puller of the first worker is now inside a call that will not end by itself.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let joined = Instant::now();
    let b = start(&args, &log_b);
    wxstream_tests::wait_until("the first worker releases its corps", 60, &a, || async {
        std::fs::read_to_string(&log_a)
            .unwrap_or_default()
            .contains("Partitions revoked and released.")
    })
    .await;
    let text = std::fs::read_to_string(&log_a).unwrap_or_default();
    let aborted = text.matches("did not stop in time and was aborted").count();
    eprintln!(
        "released {:?} after the second worker started; {aborted} pullers aborted",
        joined.elapsed()
    );
    assert!(
        !text.contains("did not release its partitions in time"),
        "the hand-over outlasted the release timeout:\n{}",
        a.log_tail()
    );
    drop((a, b));
}
