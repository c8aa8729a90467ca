//! The sink against the local broker, MariaDB and the search server: clean messages (decrypted
//! from the simulator's feed in this process) end as exactly one row and one document per msgid
//! across a kill -9 of the sink; a replay of the whole topic changes no count and regresses no
//! row; recalls mark their message whatever the order; a document that breaks the mapping is
//! parked with the item's error while the partition keeps flowing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use sqlx::Row;
use wx_codec::{ChatMessage, Codec, DeadLetter};
use wx_kafka::KafkaConfig;
use wxstream_tests::pipeline::{
    Names, clean_messages, doc_count, drop_database, mysql, row_count, write_sink_connector,
};
use wxstream_tests::{
    WxProcess, brokers, now_ms, produce_clean, read_records, stack_setting, wx_args,
};

fn sink_process(dir: &Path, prefix: &str, log: &Path, group: Option<&str>) -> WxProcess {
    let args = wx_args(dir, prefix, &["run", "--only", "sink"]);
    if let Some(group) = group {
        // A second group replays the topic from offset 0 into the same stores.
        let sink = dir.join("connectors/sink.yaml");
        let yaml = std::fs::read_to_string(&sink).expect("read");
        let yaml: Vec<String> = yaml
            .lines()
            .map(|l| {
                if l.starts_with("  group_id:") {
                    format!("  group_id: {group}")
                } else {
                    l.to_string()
                }
            })
            .collect();
        std::fs::write(&sink, yaml.join("\n") + "\n").expect("write");
    }
    WxProcess::start(&args, log)
}

/// Every row's content, for "no row regresses".
async fn snapshot(database: &str) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let pool = mysql(database).await;
    sqlx::query("SELECT msgid, CONCAT_WS('|', msgtime, msgtype, sender, receivers, conversation_id, COALESCE(text, ''), payload, COALESCE(recalled_by, ''), ingested_at) FROM messages")
        .fetch_all(&pool)
        .await
        .expect("rows")
        .iter()
        .map(|r| (r.get::<Vec<u8>, _>(0), r.get::<Vec<u8>, _>(1)))
        .collect()
}

async fn wait_for_counts(
    database: &str,
    index: &str,
    expected: usize,
    process: &WxProcess,
    secs: u64,
) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let (rows, docs) = (row_count(database).await, doc_count(index).await);
        if rows as usize == expected && docs as usize == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "after {secs} s: {rows} rows, {docs} documents, expected {expected}\n{}",
            process.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_and_documents_equal_distinct_msgids_across_kill_9_replay_and_a_mapping_error() {
    let Names {
        prefix,
        database,
        index,
    } = Names::create("sink", "wxs").await;
    let messages = clean_messages("wwsink", 6_000, now_ms() - 86_400_000, 1_000);
    let distinct: BTreeSet<&str> = messages.iter().map(|m| m.msgid.as_str()).collect();
    // Recalls whose message comes later in the feed: processed first, they must still mark it.
    let position: BTreeMap<&str, usize> = messages
        .iter()
        .enumerate()
        .map(|(i, m)| (m.msgid.as_str(), i))
        .collect();
    let recall_first: Vec<(&str, &str)> = messages
        .iter()
        .enumerate()
        .filter_map(|(i, m)| {
            let pre = m.recalled_msgid.as_deref()?;
            (position.get(pre).is_some_and(|&j| j > i)).then_some((pre, m.msgid.as_str()))
        })
        .collect();
    assert!(
        !recall_first.is_empty(),
        "the feed has recalls before their message"
    );

    // Every message once, then 500 duplicates (at-least-once upstream).
    let codec = Codec::fixed().expect("codec");
    let clean_topic = format!("{prefix}wxstream.clean");
    produce_clean(
        &clean_topic,
        messages.iter().chain(messages.iter().take(500)),
    )
    .await;

    let dir = tempfile::tempdir().expect("tmp");
    write_sink_connector(dir.path(), &database, &index, None);
    let log = dir.path().join("sink.log");
    let mut first = sink_process(dir.path(), &prefix, &log, None);
    let deadline = Instant::now() + Duration::from_secs(120);
    while row_count(&database).await < 1_500 {
        assert!(
            Instant::now() < deadline,
            "no sink progress:\n{}",
            first.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    first.kill9();
    eprintln!(
        "killed the sink with kill -9 at {} rows",
        row_count(&database).await
    );
    let sink = sink_process(dir.path(), &prefix, &log, None);
    wait_for_counts(&database, &index, distinct.len(), &sink, 240).await;

    // Recalls mark their message, whichever came first; text round-trips byte for byte.
    let pool = mysql(&database).await;
    for (recalled, recall) in &recall_first {
        // utf8mb4_bin columns arrive as bytes.
        let by: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT recalled_by FROM messages WHERE msgid = ?")
                .bind(*recalled)
                .fetch_one(&pool)
                .await
                .expect("recalled row");
        // Two recalls may name one message; either marks it.
        let namers: Vec<&[u8]> = messages
            .iter()
            .filter(|m| m.recalled_msgid.as_deref() == Some(*recalled))
            .map(|m| m.msgid.as_bytes())
            .collect();
        assert!(namers.contains(&recall.as_bytes()));
        assert!(
            by.as_deref().is_some_and(|b| namers.contains(&b)),
            "{recalled} recalled before it arrived is marked"
        );
    }
    let texts: BTreeMap<Vec<u8>, Option<Vec<u8>>> = sqlx::query("SELECT msgid, text FROM messages")
        .fetch_all(&pool)
        .await
        .expect("texts")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let with_emoji = messages
        .iter()
        .filter(|m| {
            m.text
                .as_deref()
                .is_some_and(|t| t.chars().any(|c| c as u32 > 0xFFFF))
        })
        .count();
    assert!(with_emoji > 0, "the feed has emoji");
    for m in &messages {
        assert_eq!(
            texts[m.msgid.as_bytes()].as_deref(),
            m.text.as_deref().map(str::as_bytes),
            "{} text round-trips byte for byte",
            m.msgid
        );
    }
    let rooms: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM rooms")
        .fetch_one(&pool)
        .await
        .expect("rooms");
    assert!(rooms > 0);
    let bad: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM room_members WHERE first_seen > last_active")
            .fetch_one(&pool)
            .await
            .expect("members");
    assert_eq!(bad, 0);

    // A replay of the whole topic by another group changes no count and regresses no row.
    let before = snapshot(&database).await;
    drop(sink);
    let replay = sink_process(dir.path(), &prefix, &log, Some(&format!("{prefix}replay")));
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        // The replaying group is done once its committed offsets reach the topic's end.
        let ends = wx_kafka::end_offsets(&KafkaConfig::new(brokers()), &clean_topic).expect("ends");
        let total: i64 = ends.iter().map(|(_, o)| o).sum();
        if replay_done(&prefix, total).await {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the replay did not finish:\n{}",
            replay.log_tail()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(snapshot(&database).await, before, "a replay changes no row");
    assert_eq!(
        doc_count(&index).await as usize,
        distinct.len(),
        "a replay adds no document"
    );

    // An operator's index for January 2001 maps msgtype as a number: that month's document is
    // refused; it is parked with the item's error and the partition keeps flowing.
    let es = stack_setting("WXSTACK_ES_URL");
    let reply = reqwest::Client::new()
        .put(format!("{es}/{index}-2001.01"))
        .json(&serde_json::json!({"mappings": {"properties": {"msgtype": {"type": "long"}}}}))
        .send()
        .await
        .expect("create index");
    assert!(reply.status().is_success(), "{:?}", reply.text().await);
    let mut broken = messages[0].clone();
    broken.msgid = format!("{}-2001", broken.msgid);
    broken.msgtime = 978_400_000_000; // 2001-01-02
    let mut after = messages[1].clone();
    after.msgid = format!("{}-after", after.msgid);
    after.conversation_id = broken.conversation_id.clone();
    produce_clean(&clean_topic, [&broken, &after]).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let parked: Vec<DeadLetter> =
            read_records::<DeadLetter>(&brokers(), &format!("{prefix}wxstream.dead-letter"))
                .into_iter()
                .map(|(_, d)| d)
                .filter(|d| d.msgid.as_deref() == Some(broken.msgid.as_str()))
                .collect();
        let flowed = doc_count(&index).await as usize == distinct.len() + 1;
        if let (Some(d), true) = (parked.first(), flowed) {
            assert_eq!(d.stage, "sink");
            assert_eq!(d.error_class, "mapping");
            assert!(
                d.error_message.contains("mapper_parsing_exception"),
                "{}",
                d.error_message
            );
            let back: ChatMessage = codec
                .decode(&d.original)
                .expect("the original clean record");
            assert_eq!(back.msgid, broken.msgid);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the refused document was not parked or the partition stalled:\n{}",
            replay.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    drop_database(&database).await;
}

/// True once the replay group's committed offsets cover `total` records.
async fn replay_done(prefix: &str, total: i64) -> bool {
    let (b, group, topic) = (
        brokers(),
        format!("{prefix}replay"),
        format!("{prefix}wxstream.clean"),
    );
    tokio::task::spawn_blocking(move || {
        wx_kafka::committed_total(&KafkaConfig::new(b), &group, &topic).unwrap_or(0) >= total
    })
    .await
    .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mysql_outage_and_search_429_503_end_with_rows_equal_documents_equal_msgids() {
    let Names {
        prefix,
        database,
        index,
    } = Names::create("sink-outage", "wxo").await;
    let messages = clean_messages("wwout", 3_000, now_ms() - 86_400_000, 1_000);
    let distinct: BTreeSet<&str> = messages.iter().map(|m| m.msgid.as_str()).collect();

    // The sink reaches MariaDB and the search server only through proxies this test controls.
    let mysql_url = stack_setting("WXSTACK_MYSQL_URL");
    let (scheme_user, host) = mysql_url
        .rsplit_once('@')
        .expect("user@host in WXSTACK_MYSQL_URL");
    let db_proxy = wxstream_tests::TcpProxy::start(host.trim_end_matches('/').to_string()).await;
    let search_proxy =
        wxstream_tests::FaultyHttpProxy::start(stack_setting("WXSTACK_ES_URL")).await;
    let dir = tempfile::tempdir().expect("tmp");
    let secret = dir.path().join("mysql-url");
    std::fs::write(&secret, format!("{scheme_user}@{}", db_proxy.addr)).expect("secret");
    write_sink_connector(
        dir.path(),
        &database,
        &index,
        Some((
            &format!("{{file: {}}}", secret.display()),
            &search_proxy.url,
        )),
    );
    // A 10 s poll interval, well under the 30 s outage: a worker that stopped polling while it
    // retried would be deemed stuck, leave its group and rejoin.
    let connector = dir.path().join("connectors/sink.yaml");
    let yaml = std::fs::read_to_string(&connector).expect("sink.yaml");
    std::fs::write(&connector, format!("{yaml}  max_poll_interval: 10s\n")).expect("sink.yaml");
    let log = dir.path().join("sink.log");
    let sink = sink_process(dir.path(), &prefix, &log, None);

    let clean_topic = format!("{prefix}wxstream.clean");
    produce_clean(&clean_topic, &messages[..1_000]).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    while row_count(&database).await < 500 {
        assert!(
            Instant::now() < deadline,
            "no sink progress:\n{}",
            sink.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // MariaDB unreachable for 30 seconds while records keep arriving.
    db_proxy.set_down(true);
    eprintln!("MySQL down at {} rows", row_count(&database).await);
    produce_clean(&clean_topic, &messages[1_000..2_000]).await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    db_proxy.set_down(false);
    eprintln!("MySQL back");
    wait_for_counts(&database, &index, 2_000, &sink, 120).await;

    // The search endpoint answers 429 and 503 to every bulk request for 15 seconds.
    search_proxy.set_faulty(true);
    produce_clean(&clean_topic, &messages[2_000..]).await;
    tokio::time::sleep(Duration::from_secs(15)).await;
    search_proxy.set_faulty(false);
    let refused = search_proxy
        .refused
        .load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        refused >= 2,
        "the sink kept trying during the fault ({refused} bulk requests refused)"
    );
    wait_for_counts(&database, &index, distinct.len(), &sink, 120).await;
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        text.contains("MySQL is failing; pausing consumption"),
        "the outage paused consumption:\n{}",
        sink.log_tail()
    );
    // It stayed in its group throughout: assigned once, never revoked, no poll-interval
    // timeout from librdkafka.
    assert_eq!(
        (
            text.matches("Partitions assigned").count(),
            text.matches("Partitions revoked").count(),
            text.contains("maximum poll interval"),
        ),
        (1, 0, false),
        "the worker left its group during the outage:\n{}",
        sink.log_tail()
    );
    drop_database(&database).await;
}
