//! The stats stage against the local broker and MariaDB:
//! - 20,000 simulated messages with duplicates and out-of-order events (within the grace, within
//!   the lateness, and beyond it): the latest 1-minute record of every group equals MySQL's
//!   `COUNT(DISTINCT msgid)` for that group and minute (minus the events parked as `late`),
//!   across two kill -9 of the stats stage, one of them during its replay; a Python reader using
//!   only schemas/ sees the same counts.
//! - With no new input, the last windows close within window size + grace + 5 s; the JSON
//!   format reads back in Python as well.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use wx_codec::{ChatMessage, DeadLetter, GroupWindowCount, SourceCoordinates};
use wxstream_tests::pipeline::{
    Names, clean_messages, drop_database, minute_totals, mysql_truth, read_stats_py, row_count,
    write_sink_connector, write_stats_connector,
};
use wxstream_tests::{
    WxProcess, brokers, now_ms, produce_clean, read_records, repo_root, wait_until, wx_args,
};

const MIN: i64 = 60_000;

fn stage(dir: &std::path::Path, prefix: &str, only: &str, log: &std::path::Path) -> WxProcess {
    WxProcess::start(&wx_args(dir, prefix, &["run", "--only", only]), log)
}

/// Messages at the end of the production order sent as a live feed after the last restart.
const LIVE_TAIL: usize = 4_000;

/// The latest record of every 1-minute window key, as a compacted topic keeps it (Avro).
fn latest_avro(prefix: &str) -> BTreeMap<String, GroupWindowCount> {
    read_records::<GroupWindowCount>(&brokers(), &format!("{prefix}wxstream.stats"))
        .into_iter()
        .filter(|(_, r)| r.window_size_ms == MIN)
        .collect()
}

/// The latest record of every key, as the Python reader of docs/bi (confluent-kafka + fastavro,
/// only schemas/) prints them.
fn read_in_python(prefix: &str, format: &str) -> Vec<serde_json::Value> {
    let schemas = repo_root().join("schemas").display().to_string();
    read_stats_py(
        &format!("{prefix}wxstream.stats"),
        &["--format", format, "--schemas", &schemas],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minute_counts_equal_mysql_count_distinct_across_kill_9_and_read_outside_rust() {
    let Names {
        prefix,
        database,
        index,
    } = Names::create("stats20k", "wxs").await;
    // 20,000 messages over ~17 minutes that ended ~1 minute ago.
    let messages = clean_messages("wwstats", 20_000, now_ms() - 18 * MIN, 50);
    let n = messages.len();
    // Production order: adjacent swaps (disorder within the grace); every 97th message two
    // minutes of event time later (a correction of a closed window); every 499th of the first
    // half at the very end (beyond the 3-minute lateness: parked as late); every 10th of the
    // rest again 200 positions later (duplicates).
    let mut order: Vec<usize> = (0..n).collect();
    for i in (0..n - 1).step_by(10) {
        order.swap(i, i + 1);
    }
    let late: BTreeSet<usize> = (0..n / 2).step_by(499).skip(1).collect();
    let corrected: BTreeSet<usize> = (0..n - 2_400)
        .step_by(97)
        .filter(|i| !late.contains(i))
        .collect();
    let mut slots: Vec<Vec<usize>> = vec![Vec::new(); n + 1];
    for (pos, &i) in order.iter().enumerate() {
        if late.contains(&i) {
            slots[n].push(i);
        } else if corrected.contains(&i) {
            slots[(pos + 2_400).min(n)].push(i);
        } else {
            slots[pos].push(i);
            if i % 10 == 3 {
                slots[(pos + 200).min(n)].push(i);
            }
        }
    }
    let sequence: Vec<&ChatMessage> = slots.iter().flatten().map(|&i| &messages[i]).collect();
    let late_ids: BTreeSet<&str> = late
        .iter()
        .filter(|&&i| messages[i].action != "switch")
        .map(|&i| messages[i].msgid.as_str())
        .collect();
    let distinct: BTreeSet<&str> = messages.iter().map(|m| m.msgid.as_str()).collect();
    let clean = format!("{prefix}wxstream.clean");

    let dir = tempfile::tempdir().expect("tmp");
    write_sink_connector(dir.path(), &database, &index, None);
    write_stats_connector(
        dir.path(),
        &format!("  lateness: 3m\n  session_timeout: 6s\n  group_id: {prefix}stats\n"),
    );
    let sink = stage(dir.path(), &prefix, "sink", &dir.path().join("sink.log"));
    let stats_log = dir.path().join("stats.log");
    let mut stats = stage(dir.path(), &prefix, "stats", &stats_log);

    // The first half, then kill -9 once windows are being emitted.
    let half = sequence.len() / 2;
    produce_clean(&clean, sequence[..half].iter().copied()).await;
    wait_until("20 windows emitted", 120, &stats, || async {
        latest_avro(&prefix).len() >= 20
    })
    .await;
    stats.kill9();
    eprintln!(
        "killed the stats stage with kill -9 after {} windows",
        latest_avro(&prefix).len()
    );
    // Most of the rest while the stage is down (a backlog the restarted stage catches up on);
    // the last part as a live feed, below.
    let live = sequence.len() - LIVE_TAIL;
    produce_clean(&clean, sequence[half..live].iter().copied()).await;
    // Again during the restarted stage's replay: as soon as it has its partitions.
    let logged = std::fs::read_to_string(&stats_log)
        .unwrap_or_default()
        .len();
    let mut stats = stage(dir.path(), &prefix, "stats", &stats_log);
    wait_until(
        "the restarted stage gets its partitions",
        60,
        &stats,
        || async {
            std::fs::read_to_string(&stats_log)
                .unwrap_or_default()
                .get(logged..)
                .is_some_and(|new| new.contains("Partitions assigned"))
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stats.kill9();
    eprintln!("killed the stats stage with kill -9 during its replay");
    let stats = stage(dir.path(), &prefix, "stats", &stats_log);
    // The tail as a live feed: 30 s of event time per chunk, more than a commit interval (when
    // windows close) apart, so windows close between chunks and the events two minutes behind
    // correct closed ones. (A backlog read within one tick counts them before its windows
    // close: no correction, however the stage is built.)
    for chunk in sequence[live..].chunks(600) {
        produce_clean(&clean, chunk.iter().copied()).await;
        tokio::time::sleep(Duration::from_millis(1_500)).await;
    }

    // The sink stores every msgid; every window closes with MySQL's count minus the parked.
    wait_until("the sink stores every message", 300, &sink, || async {
        row_count(&database).await >= distinct.len() as i64
    })
    .await;
    let truth = mysql_truth(&database).await;
    assert_eq!(
        truth.values().flat_map(|t| t.values()).sum::<i64>(),
        messages.iter().filter(|m| m.action != "switch").count() as i64
    );
    let parked = |prefix: &str| -> BTreeSet<String> {
        read_records::<DeadLetter>(&brokers(), &format!("{prefix}wxstream.dead-letter"))
            .into_iter()
            .filter(|(_, d)| d.stage == "stats")
            .map(|(_, d)| {
                assert_eq!(d.error_class, "late");
                d.msgid.expect("a parked late event names its msgid")
            })
            .collect()
    };
    // MySQL's counts per window and msgtype, minus the events parked as late.
    let by_id: BTreeMap<&str, &ChatMessage> =
        messages.iter().map(|m| (m.msgid.as_str(), m)).collect();
    let expected = |parked: &BTreeSet<String>| -> BTreeMap<String, BTreeMap<String, i64>> {
        let mut expected = truth.clone();
        for id in parked {
            let m = by_id[id.as_str()];
            let group = if m.roomid.is_empty() {
                &m.conversation_id
            } else {
                &m.roomid
            };
            let minute = m.msgtime.div_euclid(MIN) * MIN;
            let key = format!("{}/{group}/{MIN}/{minute}", m.corp_id);
            if let Some(by_type) = expected.get_mut(&key) {
                *by_type.entry(m.msgtype.clone()).or_default() -= 1;
                by_type.retain(|_, c| *c > 0);
            }
        }
        expected.retain(|_, by_type| !by_type.is_empty());
        expected
    };
    let deadline = Instant::now() + Duration::from_secs(240);
    let (got, parked) = loop {
        let got = latest_avro(&prefix);
        let parked = parked(&prefix);
        let finals: BTreeMap<String, BTreeMap<String, i64>> = got
            .iter()
            .filter(|(_, r)| r.is_final && r.by_msgtype.values().sum::<i64>() == r.total)
            .map(|(k, r)| (k.clone(), r.by_msgtype.clone()))
            .collect();
        let want = expected(&parked);
        if finals == want {
            break (got, parked);
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} windows final and equal to MySQL; {} parked:\n{}",
            finals
                .iter()
                .filter(|(k, v)| want.get(*k) == Some(v))
                .count(),
            want.len(),
            parked.len(),
            stats.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(1_000)).await;
    };
    eprintln!(
        "{} windows equal MySQL's counts; {} late events parked",
        got.len(),
        parked.len()
    );
    // Exactly the events sent beyond the lateness were parked.
    let parked: BTreeSet<&str> = parked.iter().map(String::as_str).collect();
    assert_eq!(parked, late_ids);
    // The live tail's corrections are the latest records of their windows (no restart since).
    let corrections = got.values().filter(|r| r.revision > 0).count();
    assert!(
        corrections > 0,
        "out-of-order events corrected closed windows"
    );

    // A reader outside Rust sees the same latest counts, with only schemas/ (the BI table a
    // real JDBC sink fills is tests/tests/bi_jdbc.rs).
    let records = read_in_python(&prefix, "avro");
    let rust_totals: BTreeMap<String, i64> =
        got.iter().map(|(k, r)| (k.clone(), r.total)).collect();
    let python_totals = minute_totals(&records);
    let differ: Vec<String> = rust_totals
        .keys()
        .chain(python_totals.keys())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .filter(|k| rust_totals.get(*k) != python_totals.get(*k))
        .take(10)
        .map(|k| {
            format!(
                "{k}: Rust {:?}, Python {:?}",
                rust_totals.get(k),
                python_totals.get(k)
            )
        })
        .collect();
    assert!(
        differ.is_empty(),
        "{} windows in Rust, {} in Python; the first that differ:\n{}",
        rust_totals.len(),
        python_totals.len(),
        differ.join("\n")
    );
    drop_database(&database).await;
}

fn message(i: usize, start: i64, spacing: i64) -> ChatMessage {
    let room = !i.is_multiple_of(3);
    let group = if room {
        format!("wr{}", i % 4)
    } else {
        "single:a:b".to_string()
    };
    ChatMessage {
        msgid: format!(
            "{}_{}",
            10_000_000_000_000_000_000u64 + i as u64,
            start / 1000
        ),
        corp_id: "wwstats".into(),
        action: if i.is_multiple_of(17) {
            "recall"
        } else {
            "send"
        }
        .into(),
        from: "a".into(),
        tolist: vec!["b".into()],
        roomid: if room { group.clone() } else { String::new() },
        msgtime: start + i as i64 * spacing,
        msgtype: if i.is_multiple_of(17) {
            "revoke"
        } else {
            "text"
        }
        .into(),
        payload_json: "{}".into(),
        extra_json: None,
        text: None,
        recalled_msgid: None,
        conversation_id: group,
        is_external: false,
        publickey_ver: Some(1),
        source: SourceCoordinates {
            topic: "raw".into(),
            partition: 0,
            offset: i as i64,
            seq: None,
        },
        decrypted_at: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_windows_close_within_size_plus_grace_plus_5_s_and_json_reads_in_python() {
    let prefix = wxstream_tests::fresh_topics("stats").await;
    let dir = tempfile::tempdir().expect("tmp");
    write_stats_connector(
        dir.path(),
        &format!("  format: json\n  group_id: {prefix}stats\n"),
    );
    let stats = stage(dir.path(), &prefix, "stats", &dir.path().join("stats.log"));
    // 600 messages over the last ~5 minutes, the last one "now", then 200 duplicates; then no
    // input at all.
    let start = now_ms() - 5 * MIN;
    let spacing = (now_ms() - start) / 599;
    let messages: Vec<ChatMessage> = (0..600).map(|i| message(i, start, spacing)).collect();
    let mut expected: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
    for m in &messages {
        let window = m.msgtime.div_euclid(MIN) * MIN;
        expected
            .entry(format!(
                "{}/{}/{MIN}/{window}",
                m.corp_id, m.conversation_id
            ))
            .or_default()
            .insert(&m.msgid);
    }
    let clean = format!("{prefix}wxstream.clean");
    produce_clean(&clean, messages.iter().chain(messages.iter().step_by(3))).await;
    let stopped = Instant::now();
    let stopped_ms = now_ms();
    // Every 1-minute window is final with exactly its distinct msgids within 1 min + 10 s grace
    // + 5 s of the input stopping (the last ones close on wall-clock time). The bound is checked
    // on the records' own `emitted_at`, so the time the Python reader takes to start and read is
    // not counted; polling itself may take longer.
    let (records, totals) = loop {
        let records = read_in_python(&prefix, "json");
        let totals = minute_totals(&records);
        if totals.len() >= expected.len() {
            break (records, totals);
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(150),
            "{} of {} windows closed {:?} after the input stopped:\n{}",
            totals.len(),
            expected.len(),
            stopped.elapsed(),
            stats.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let last_emitted = records
        .iter()
        .filter(|r| r["window_size_ms"] == MIN)
        .inspect(|r| assert_eq!(r["final"], true, "only final records are emitted: {r}"))
        .map(|r| r["emitted_at"].as_i64().expect("emitted_at"))
        .max()
        .expect("records");
    eprintln!(
        "all {} windows closed {} ms after the input stopped (seen after {:?})",
        totals.len(),
        last_emitted - stopped_ms,
        stopped.elapsed()
    );
    assert!(
        last_emitted - stopped_ms <= (60 + 10 + 5) * 1000,
        "the last window closed {} ms after the input stopped",
        last_emitted - stopped_ms
    );
    let expected: BTreeMap<String, i64> = expected
        .into_iter()
        .map(|(k, ids)| (k, ids.len() as i64))
        .collect();
    assert_eq!(totals, expected);
}

/// One message of `corp` in room `room` at `msgtime`.
fn in_room(corp: &str, room: &str, msgid: String, msgtime: i64) -> ChatMessage {
    ChatMessage {
        msgid,
        corp_id: corp.into(),
        roomid: room.into(),
        conversation_id: room.into(),
        msgtime,
        ..message(1, msgtime, 0)
    }
}

/// The audit's L5 on the real broker: corp A sends ten messages and goes quiet while corp B
/// keeps every clean partition busy. A's windows go after their lateness of idle time, so the
/// committed offset of A's partition passes A's records (before, it stayed at A's first record
/// for as long as A was quiet, holding every later record of B and the restart's replay); A's
/// count is final and exact, and an event for A's dropped window is parked as late instead of
/// starting a partial count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_corp_no_longer_holds_its_partitions_committed_offset() {
    let prefix = wxstream_tests::fresh_topics("statsquiet").await;
    let dir = tempfile::tempdir().expect("tmp");
    let group = format!("{prefix}stats");
    write_stats_connector(
        dir.path(),
        &format!("  format: json\n  group_id: {group}\n  commit_interval: 1s\n"),
    );
    let file = dir.path().join("connectors/stats.yaml");
    let yaml = std::fs::read_to_string(&file)
        .expect("stats.yaml")
        .replace("windows: [1m, 1h]", "windows: [1m]")
        .replace("grace: 10s", "grace: 1s")
        .replace("lateness: 10m ", "lateness: 5s ");
    assert!(yaml.contains("lateness: 5s "), "{yaml}");
    std::fs::write(&file, yaml).expect("write stats.yaml");
    let stats = stage(dir.path(), &prefix, "stats", &dir.path().join("stats.log"));
    let clean = format!("{prefix}wxstream.clean");
    let config = wx_kafka::KafkaConfig::new(brokers());

    // A: ten messages in one room, in the minute before now; then nothing.
    let a_time = now_ms() - 20_000;
    let a: Vec<ChatMessage> = (0..10)
        .map(|i| in_room("wwquietA", "wrA", format!("qa{i}_{a_time}"), a_time + i))
        .collect();
    produce_clean(&clean, &a).await;
    let (a_partition, a_last) = {
        let (config, clean) = (config.clone(), clean.clone());
        let records = tokio::task::spawn_blocking(move || {
            wx_kafka::read_topic(&config, &clean, Duration::from_secs(30)).expect("read clean")
        })
        .await
        .expect("read");
        assert_eq!(records.len(), 10);
        (
            records[0].partition,
            records.iter().map(|r| r.offset).max().expect("offsets"),
        )
    };

    // B: a message every 100 ms in each of 48 rooms, spread over every partition, now.
    let busy = tokio_util::sync::CancellationToken::new();
    let producer = {
        let (busy, clean) = (busy.clone(), clean.clone());
        tokio::spawn(async move {
            let mut i = 0u64;
            while !busy.is_cancelled() {
                let t = now_ms();
                let batch: Vec<ChatMessage> = (0..48)
                    .map(|room| {
                        in_room(
                            "wwbusyB",
                            &format!("wrB{room}"),
                            format!("qb{i}_{room}_{t}"),
                            t,
                        )
                    })
                    .collect();
                produce_clean(&clean, &batch).await;
                i += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    // A's window ends within 40 s; with 1 s grace and 5 s lateness of idle time it goes, and
    // the committed offset of A's partition moves past A's records while B keeps writing.
    let passed = {
        let (config, group, clean) = (config.clone(), group.clone(), clean.clone());
        move || {
            let (config, group, clean) = (config.clone(), group.clone(), clean.clone());
            async move {
                tokio::task::spawn_blocking(move || {
                    wx_kafka::committed_offsets(&config, &group, &clean).expect("committed")
                })
                .await
                .expect("committed")
                .into_iter()
                .find(|(p, _)| *p == a_partition)
                .and_then(|(_, o)| o)
                .is_some_and(|o| o > a_last)
            }
        }
    };
    wait_until(
        "the committed offset of the quiet corp's partition passes its records",
        150,
        &stats,
        passed,
    )
    .await;

    // A's count is final and exact. (That an event for a dropped window is then parked as
    // late, never a partial count, is the window store's unit test's.)
    busy.cancel();
    producer.await.expect("producer");
    let window = a_time.div_euclid(MIN) * MIN;
    let a_counts: Vec<i64> = read_in_python(&prefix, "json")
        .iter()
        .filter(|r| r["corp_id"] == "wwquietA" && r["window_start"] == window)
        .map(|r| r["total"].as_i64().expect("total"))
        .collect();
    assert_eq!(
        a_counts,
        [10],
        "A's window: one final count of its ten messages"
    );
}
