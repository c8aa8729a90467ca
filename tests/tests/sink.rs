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
    let dir = tempfile::tempdir().expect("tmp");
    let (db_proxy, search_proxy) = wxstream_tests::pipeline::write_sink_connector_behind_proxies(
        dir.path(),
        &database,
        &index,
    )
    .await;
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

/// The current dead letters of the sink stage.
async fn sink_letters(prefix: &str) -> Vec<DeadLetter> {
    let reader = wxstream_tests::e2e::Reader::new(&brokers(), prefix);
    tokio::task::spawn_blocking(move || reader.parked())
        .await
        .expect("letters")
        .into_iter()
        .filter(|d| d.stage == "sink")
        .collect()
}

/// `/readyz` of the process's operations endpoint, as text.
async fn readiness(addr: &str) -> String {
    match reqwest::get(format!("http://{addr}/readyz")).await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(e) => e.to_string(),
    }
}

/// Holds `seconds` while a store is broken, checking that nothing is written to it meanwhile,
/// that `/readyz` names it, and that nothing is parked.
async fn while_broken(prefix: &str, addr: &str, store: &str, seconds: u64, process: &WxProcess) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut named = false;
    while Instant::now() < deadline {
        named |= readiness(addr).await.contains(store);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        named,
        "/readyz never named {store}:\n{}",
        process.log_tail()
    );
    assert_eq!(
        sink_letters(prefix).await.len(),
        0,
        "a broken {store} parked records:\n{}",
        process.log_tail()
    );
}

/// A sink with its operations endpoint on `addr`, 1,500 clean messages of `corp` to write, the
/// first 500 of them written: the start of each test that then breaks a store.
struct Broken {
    names: Names,
    messages: Vec<ChatMessage>,
    _dir: tempfile::TempDir,
    addr: String,
    sink: WxProcess,
    clean_topic: String,
}

impl Broken {
    async fn start(stem: &str, db_stem: &str, corp: &str) -> Broken {
        let names = Names::create(stem, db_stem).await;
        let messages = clean_messages(corp, 1_500, now_ms() - 86_400_000, 1_000);
        let dir = tempfile::tempdir().expect("tmp");
        write_sink_connector(dir.path(), &names.database, &names.index, None);
        let addr = format!("127.0.0.1:{}", wxstream_tests::free_port());
        let args = wx_args(dir.path(), &names.prefix, &["run", "--only", "sink"]);
        let sink = WxProcess::start_with(&args, &dir.path().join("sink.log"), &addr);
        let clean_topic = format!("{}wxstream.clean", names.prefix);
        produce_clean(&clean_topic, &messages[..500]).await;
        wait_for_counts(&names.database, &names.index, 500, &sink, 120).await;
        Broken {
            names,
            messages,
            _dir: dir,
            addr,
            sink,
            clean_topic,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_table_and_an_index_write_block_pause_the_sink_and_park_nothing() {
    let Broken {
        names: Names {
            prefix,
            database,
            index,
        },
        messages,
        _dir,
        addr,
        sink,
        clean_topic,
    } = Broken::start("sink-infra", "wxs", "wwinfra").await;

    // MySQL: the table is gone (an operator's mistake, a failed migration): error 1146, which
    // says nothing about the rows. The sink must wait for it, not park them.
    let pool = mysql(&database).await;
    sqlx::query("RENAME TABLE messages TO messages_away")
        .execute(&pool)
        .await
        .expect("rename");
    produce_clean(&clean_topic, &messages[500..1_000]).await;
    while_broken(&prefix, &addr, "mysql", 10, &sink).await;
    sqlx::query("RENAME TABLE messages_away TO messages")
        .execute(&pool)
        .await
        .expect("rename back");
    wait_for_counts(&database, &index, 1_000, &sink, 120).await;

    // Search: the indices are write-blocked (disk watermark, maintenance): 403 per item.
    let es = stack_setting("WXSTACK_ES_URL");
    let http = reqwest::Client::new();
    let block = |value: serde_json::Value| {
        http.put(format!("{es}/{index}*/_settings"))
            .json(&serde_json::json!({ "index.blocks.write": value }))
            .send()
    };
    assert!(
        block(true.into())
            .await
            .expect("block")
            .status()
            .is_success()
    );
    produce_clean(&clean_topic, &messages[1_000..]).await;
    while_broken(&prefix, &addr, "search", 10, &sink).await;
    assert!(
        block(serde_json::Value::Null)
            .await
            .expect("unblock")
            .status()
            .is_success()
    );
    wait_for_counts(&database, &index, 1_500, &sink, 120).await;
    assert_eq!(sink_letters(&prefix).await.len(), 0, "nothing was parked");
    drop_database(&database).await;
}

/// Cluster states that answer 400 for every document are the store's, not the documents':
/// an index closed (by ILM, curator or an operator) that a late or replayed message is for, and
/// a default pipeline that does not exist. The sink pauses and parks nothing until each is
/// fixed (`../shared/reviews/audit-2026-12.md` L6).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_index_and_a_missing_pipeline_pause_the_sink_and_park_nothing() {
    let Broken {
        names: Names {
            prefix,
            database,
            index,
        },
        messages,
        _dir,
        addr,
        sink,
        clean_topic,
    } = Broken::start("sink-closed", "wxc", "wwclosed").await;
    let es = stack_setting("WXSTACK_ES_URL");
    let http = reqwest::Client::new();
    let indices = format!("{es}/{index}-*");
    let answered = |r: reqwest::Result<reqwest::Response>, what: &str| {
        let r = r.unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(r.status().is_success(), "{what}: {}", r.status());
    };

    // The month's index closed: every item answers 400 index_closed_exception.
    answered(http.post(format!("{indices}/_close")).send().await, "close");
    produce_clean(&clean_topic, &messages[500..1_000]).await;
    while_broken(&prefix, &addr, "search", 10, &sink).await;
    answered(http.post(format!("{indices}/_open")).send().await, "open");
    wait_for_counts(&database, &index, 1_000, &sink, 120).await;

    // A default pipeline that does not exist: 400 illegal_argument_exception per item.
    let pipeline = |value: serde_json::Value| {
        http.put(format!("{indices}/_settings"))
            .json(&serde_json::json!({ "index.default_pipeline": value }))
            .send()
    };
    answered(
        pipeline("wxstream-missing".into()).await,
        "set the pipeline",
    );
    produce_clean(&clean_topic, &messages[1_000..]).await;
    while_broken(&prefix, &addr, "search", 10, &sink).await;
    answered(
        pipeline(serde_json::Value::Null).await,
        "unset the pipeline",
    );
    wait_for_counts(&database, &index, 1_500, &sink, 120).await;
    assert_eq!(sink_letters(&prefix).await.len(), 0, "nothing was parked");
    drop_database(&database).await;
}

/// The newest monthly partition of the messages table (`p_future` aside).
async fn newest_partition(pool: &sqlx::MySqlPool) -> Option<String> {
    sqlx::query_scalar(
        "SELECT MAX(PARTITION_NAME) FROM information_schema.PARTITIONS \
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'messages' AND PARTITION_NAME <> 'p_future'",
    )
    .fetch_one(pool)
    .await
    .expect("partitions")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monthly_partitions_are_kept_ahead_while_the_sink_runs() {
    let Names {
        prefix,
        database,
        index,
    } = Names::create("sink-months", "wxs").await;
    let dir = tempfile::tempdir().expect("tmp");
    write_sink_connector(dir.path(), &database, &index, None);
    let connector = dir.path().join("connectors/sink.yaml");
    let yaml = std::fs::read_to_string(&connector).expect("sink.yaml");
    std::fs::write(
        &connector,
        format!("{yaml}  partition_maintenance_interval: 1s\n"),
    )
    .expect("sink.yaml");
    let sink = sink_process(dir.path(), &prefix, &dir.path().join("sink.log"), None);
    let messages = clean_messages("wwmonths", 10, now_ms() - 60_000, 1_000);
    produce_clean(&format!("{prefix}wxstream.clean"), &messages).await;
    wait_for_counts(&database, &index, 10, &sink, 120).await;

    // The newest partition goes (as months pass, the newest falls behind the same way): the
    // running sink must create it again, not only a sink that restarts.
    let pool = mysql(&database).await;
    let newest = newest_partition(&pool).await.expect("a monthly partition");
    sqlx::query(&format!("ALTER TABLE messages DROP PARTITION {newest}"))
        .execute(&pool)
        .await
        .expect("drop partition");
    assert_ne!(newest_partition(&pool).await.as_ref(), Some(&newest));
    let deadline = Instant::now() + Duration::from_secs(30);
    while newest_partition(&pool).await.as_ref() != Some(&newest) {
        assert!(
            Instant::now() < deadline,
            "{newest} was not created again while the sink ran:\n{}",
            sink.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    drop_database(&database).await;
}

/// `wxstream redrive --stage sink ...` in the test's topology; its standard output.
fn redrive(dir: &Path, prefix: &str, rest: &[&str]) -> String {
    let mut args = vec!["redrive", "--stage", "sink"];
    args.extend_from_slice(rest);
    wxstream_tests::run_wxstream(&wx_args(dir, prefix, &args), &dir.join("redrive.log"))
}

/// Records the sink parked (here: rows MySQL refused as data, their cause since fixed) are
/// written into both stores by `wxstream redrive --stage sink`, then tombstoned; a dry run
/// writes nothing, and a second redrive finds nothing left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_sink_records_are_replayed_into_both_stores() {
    let Names {
        prefix,
        database,
        index,
    } = Names::create("sink-redrive", "wxs").await;
    let dir = tempfile::tempdir().expect("tmp");
    write_sink_connector(dir.path(), &database, &index, None);
    let messages = clean_messages("wwredrive", 3, now_ms() - 86_400_000, 1_000);
    let codec = Codec::fixed().expect("codec");
    let clean_topic = format!("{prefix}wxstream.clean");
    let producer = wx_kafka::Producer::new(
        &KafkaConfig::new(brokers()),
        "sink-test",
        Duration::from_secs(30),
    )
    .expect("producer");
    for (offset, m) in (0i64..).zip(&messages) {
        let letter = DeadLetter::new(
            "sink",
            wx_codec::ParkedFrom {
                topic: &clean_topic,
                partition: 0,
                offset,
                seq: None,
            },
            codec.encode(m).expect("encode"),
            "clean-record",
            "store_rejected",
            "1406: Data too long for column",
            now_ms(),
        )
        .about_message(m);
        producer
            .send(
                &format!("{prefix}wxstream.dead-letter"),
                None,
                letter.key().as_bytes(),
                &codec.encode(&letter).expect("encode"),
            )
            .await
            .expect("park");
    }
    let (dir_path, p) = (dir.path().to_path_buf(), prefix.clone());
    let dry = tokio::task::spawn_blocking(move || redrive(&dir_path, &p, &["--dry-run"]))
        .await
        .expect("dry run");
    assert!(dry.contains("dry run: 3 moved"), "{dry}");
    assert_eq!(row_count(&database).await, 0, "a dry run writes nothing");

    let (dir_path, p) = (dir.path().to_path_buf(), prefix.clone());
    let done = tokio::task::spawn_blocking(move || redrive(&dir_path, &p, &[]))
        .await
        .expect("redrive");
    assert!(done.contains("redrive: 3 moved"), "{done}");
    assert_eq!(row_count(&database).await, 3);
    assert_eq!(doc_count(&index).await, 3);
    let reader = wxstream_tests::e2e::Reader::new(&brokers(), &prefix);
    let left = tokio::task::spawn_blocking(move || reader.parked())
        .await
        .expect("letters");
    assert!(
        left.iter().all(|d| d.stage != "sink"),
        "the moved letters are tombstoned: {left:?}"
    );
    let (dir_path, p) = (dir.path().to_path_buf(), prefix.clone());
    let again = tokio::task::spawn_blocking(move || redrive(&dir_path, &p, &[]))
        .await
        .expect("redrive again");
    assert!(again.contains("redrive: 0 moved"), "{again}");
    drop_database(&database).await;
}

/// Upgrading: monthly indices that an earlier template created (strict, without `ingested_at`)
/// take the documents of this version once the sink has started (`ensure_template` puts the
/// fields added since into their mappings); without that, a strict mapping refuses them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn indices_of_an_earlier_template_take_documents_with_the_fields_added_since() {
    let index = wxstream_tests::unique("upgrade-idx").to_lowercase();
    let url = stack_setting("WXSTACK_ES_URL");
    let http = reqwest::Client::new();
    // The earlier template: this version's without the fields added since.
    let mut earlier = wx_search::template(&index, wx_search::Layout::default());
    let properties = earlier["template"]["mappings"]["properties"]
        .as_object_mut()
        .expect("properties");
    assert!(properties.remove("ingested_at").is_some());
    let reply = http
        .put(format!("{url}/_index_template/{index}"))
        .json(&earlier)
        .send()
        .await
        .expect("template");
    assert!(
        reply.status().is_success(),
        "{}",
        reply.text().await.unwrap_or_default()
    );
    let message = clean_messages("wwupgrade", 1, now_ms(), 1_000).remove(0);
    let monthly = wx_search::index_for(&index, message.msgtime);
    let reply = http
        .put(format!("{url}/{monthly}"))
        .send()
        .await
        .expect("create the monthly index");
    assert!(
        reply.status().is_success(),
        "{}",
        reply.text().await.unwrap_or_default()
    );
    let search = wx_search::SearchIndex::new(
        &wx_search::Endpoint::url(&url),
        &index,
        wx_runtime::settings::default_store_timeout(),
    )
    .expect("search");
    let doc = wx_search::IndexedDoc::new(monthly.clone(), &message, now_ms());
    let refused = search
        .bulk_create(std::slice::from_ref(&doc))
        .await
        .expect("bulk");
    // The earlier strict mapping refuses the new field: the index's fault, not the
    // document's, so the sink retries it rather than parking it.
    assert!(
        matches!(
            refused[0],
            wx_search::ItemVerdict::Retry { status: 400, .. }
        ),
        "the earlier strict mapping refuses the new field as the store's fault: {refused:?}"
    );
    search.ensure_template().await.expect("ensure the template");
    let written = search
        .bulk_create(std::slice::from_ref(&doc))
        .await
        .expect("bulk");
    assert!(
        matches!(written[0], wx_search::ItemVerdict::Written),
        "after ensure_template: {written:?}"
    );
    assert_eq!(search.count().await.expect("count"), 1);
    let _ = http.delete(format!("{url}/{monthly}")).send().await;
    let _ = http
        .delete(format!("{url}/_index_template/{index}"))
        .send()
        .await;
}

/// Every connection of the message store is strict for every table, whatever the server's
/// default (MariaDB's and MySQL's are strict for transactional tables only, and managed servers
/// often are not strict at all): a value a column cannot hold is an error that parks its row,
/// never a warning and a truncated row (`../shared/reviews/audit-2026-12.md` M11).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_message_store_writes_in_strict_mode_whatever_the_server_default() {
    let database = wxstream_tests::unique("wxstrict").replace(['-', '.'], "_");
    let store = wx_mysql::MessageStore::connect(
        &stack_setting("WXSTACK_MYSQL_URL"),
        &database,
        wx_runtime::settings::default_store_timeout(),
    )
    .await
    .expect("MariaDB");
    for _ in 0..6 {
        // Every connection of the pool, not only the first.
        let mode = store.session_sql_mode().await.expect("sql_mode");
        assert!(
            mode.split(',').any(|m| m == "STRICT_ALL_TABLES"),
            "the session is not strict for every table: {mode}"
        );
    }
    drop_database(&database).await;
}
