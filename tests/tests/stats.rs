//! The stats stage against the local broker: 1-minute windows of distinct msgids per group,
//! from clean messages with duplicates, are exact, and the last windows close on wall-clock time
//! once the input stops. (The kill -9 variant is the next step of issue 7: tansu 0.6.0 left a
//! restarted member with no partitions while the killed one was still in the group.)

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use wx_codec::{ChatMessage, GroupWindowCount, SourceCoordinates};
use wx_kafka::{KafkaConfig, TopicAdmin};
use wxstream_tests::{WxProcess, brokers, now_ms, read_records, repo_topology, unique};

const MIN: i64 = 60_000;

fn message(i: usize, start: i64) -> ChatMessage {
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
        msgtime: start + i as i64 * 700,
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

/// The latest record of every 1-minute window key.
fn latest(prefix: &str) -> BTreeMap<String, GroupWindowCount> {
    read_records::<GroupWindowCount>(&brokers(), &format!("{prefix}wxstream.stats"))
        .into_iter()
        .filter(|(_, r)| r.window_size_ms == MIN)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn window_counts_are_exact_and_idle_windows_close() {
    let prefix = format!("{}.", unique("stats"));
    TopicAdmin::new(&KafkaConfig::new(brokers()))
        .expect("admin")
        .apply(&repo_topology(&prefix).topics)
        .await
        .expect("apply topics");
    // 900 messages over ~10 minutes that ended a minute ago, then 300 duplicates.
    let start = (now_ms() - 12 * MIN) / MIN * MIN;
    let messages: Vec<ChatMessage> = (0..900).map(|i| message(i, start)).collect();
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
    wxstream_tests::produce_clean(&clean, messages.iter().chain(messages.iter().step_by(3))).await;

    let dir = tempfile::tempdir().expect("tmp");
    let b = brokers();
    // The repository's topology with a group of this test's own.
    let topology_dir = dir.path().join("topology");
    std::fs::create_dir_all(topology_dir.join("connectors")).expect("mkdir");
    let repo = wxstream_tests::repo_root().join("topology");
    std::fs::copy(repo.join("topics.yaml"), topology_dir.join("topics.yaml")).expect("topics");
    let stats = std::fs::read_to_string(repo.join("connectors/stats.yaml")).expect("stats.yaml");
    std::fs::write(
        topology_dir.join("connectors/stats.yaml"),
        format!("{stats}  group_id: {prefix}stats\n"),
    )
    .expect("write stats.yaml");
    let topology = topology_dir.display().to_string();
    let args = [
        "--brokers",
        &b,
        "--topology",
        &topology,
        "--topic-prefix",
        &prefix,
        "run",
        "--only",
        "stats",
    ];
    let log = dir.path().join("stats.log");
    let stage = WxProcess::start(&args, &log);
    // Every 1-minute window closes (the last ones on wall-clock time: within 1 min + 10 s grace
    // + 5 s of the input stopping) with exactly its distinct msgids.
    let deadline = Instant::now() + Duration::from_secs(75 + 60);
    loop {
        let got = latest(&prefix);
        if got.len() >= expected.len() {
            for (key, ids) in &expected {
                let record = &got[key];
                assert_eq!(record.total as usize, ids.len(), "{key}");
                assert!(record.is_final, "{key}");
                assert_eq!(
                    record.by_msgtype.values().sum::<i64>(),
                    record.total,
                    "{key}"
                );
            }
            assert_eq!(got.len(), expected.len(), "no window that should not exist");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} windows closed:\n{}",
            got.len(),
            expected.len(),
            stage.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
