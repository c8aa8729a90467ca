//! The decrypt processor against the local broker, fed by the real ingest stage from the
//! simulator: 20,001 messages with every fault kind reconcile exactly with the ground truth
//! across a kill -9 of the processor; a key added to the key directory is picked up without a
//! restart; redrive moves exactly the dead letters of that key version, and a second redrive
//! moves nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use wx_codec::{ChatMessage, Codec, DeadLetter, EncryptedItem, RawBatch, SourceKind};
use wx_kafka::{KafkaConfig, Producer};
use wx_sim::{CorpFeed, FaultRates, FeedSpec, ServerConfig, SimKeys, Simulator, Truth};
use wxstream_tests::{
    WxProcess, brokers, now_ms, read_records, serve_simulator, sim_feeds, sim_secrets,
    write_decrypt_connector, write_ingest_topology, wx_args,
};

const CORPS: usize = 3;
const PER_CORP: u64 = 6_667;

fn start(args: &[String], log: &Path, metrics: &str) -> WxProcess {
    WxProcess::start_with(args, log, metrics)
}

/// The clean messages and the current dead letters (latest per key, tombstones applied).
fn outputs(prefix: &str) -> (Vec<ChatMessage>, BTreeMap<String, DeadLetter>) {
    let clean: Vec<ChatMessage> =
        read_records::<ChatMessage>(&brokers(), &format!("{prefix}wxstream.clean"))
            .into_iter()
            .map(|(_, m)| m)
            .collect();
    (
        clean,
        wxstream_tests::e2e::Reader::new(&brokers(), prefix).letters(),
    )
}

async fn outputs_async(prefix: &str) -> (Vec<ChatMessage>, BTreeMap<String, DeadLetter>) {
    let prefix = prefix.to_string();
    tokio::task::spawn_blocking(move || outputs(&prefix))
        .await
        .expect("join")
}

fn msgids(clean: &[ChatMessage]) -> BTreeSet<String> {
    clean.iter().map(|m| m.msgid.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decrypt_reconciles_with_the_ground_truth_across_kill_9_and_redrive_moves_the_added_key() {
    let prefix = wxstream_tests::fresh_topics("decrypt").await;

    // The simulator: 3 corps, every fault kind, duplicates and transient errors.
    let keys = SimKeys::generate(&[1, 2, 99]).expect("keys");
    let dir = tempfile::tempdir().expect("tmp");
    let key_dir = dir.path().join("keys");
    keys.write_private(&key_dir, |v| v != 99).expect("keys");
    let corps: Vec<String> = (0..CORPS).map(|i| format!("wwdec{i}")).collect();
    let feeds = sim_feeds(
        &keys,
        &corps,
        500,
        PER_CORP,
        (now_ms() - 3_600_000, 100),
        FaultRates {
            corrupt_ciphertext: 0.01,
            unknown_key_version: 0.01,
            invalid_json: 0.01,
            control_chars: 0.02,
        },
    );
    let withheld_items: Vec<EncryptedItem> = feeds[0]
        .0
        .items
        .iter()
        .filter(|i| i.publickey_ver == 99)
        .map(wx_sim::ChatDataItem::encrypted_item)
        .collect();
    let sim = Simulator::new(
        ServerConfig {
            calls_per_minute: 1200,
            transient_error_rate: 0.05,
            duplicate_rate: 0.1,
            ..ServerConfig::default()
        },
        feeds,
    );
    let url = serve_simulator(&sim).await;

    let secrets = sim_secrets(&corps);
    write_ingest_topology(
        dir.path(),
        &url,
        &secrets,
        "  page_limit: 500\n  calls_per_minute: 1200\n  poll_interval: 1s\n",
    );
    write_decrypt_connector(
        dir.path(),
        &key_dir,
        &format!(
            "  session_timeout: 6s\n  key_reload_interval: 1s\n  commit_interval: 500ms\n  group_id: {prefix}decrypt\n"
        ),
    );
    let ingest_args = wx_args(dir.path(), &prefix, &["run", "--only", "ingest"]);
    let decrypt_args = wx_args(dir.path(), &prefix, &["run", "--only", "decrypt"]);
    let mut ingest = start(&ingest_args, &dir.path().join("ingest.log"), "");
    let decrypt_log = dir.path().join("decrypt.log");

    // kill -9 the processor once it has written part of the clean topic.
    let mut first = start(&decrypt_args, &decrypt_log, "");
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let (clean, _) = outputs_async(&prefix).await;
        if clean.len() > 4_000 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no decrypt progress:\n{}",
            first.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    first.kill9();
    eprintln!("killed the processor with kill -9 mid-run");
    let metrics = format!("127.0.0.1:{}", wxstream_tests::free_port());
    let processor = start(&decrypt_args, &decrypt_log, &metrics);

    // Everything served ends clean or parked, exactly.
    let truth: Vec<Truth> = sim.truth().into_iter().flat_map(|c| c.messages).collect();
    assert_eq!(truth.len(), CORPS * PER_CORP as usize);
    let poison: BTreeMap<&str, &Truth> = truth
        .iter()
        .filter(|t| t.poison)
        .map(|t| (t.msgid.as_str(), t))
        .collect();
    let expected_clean: BTreeSet<String> = truth
        .iter()
        .filter(|t| !t.poison)
        .map(|t| t.msgid.clone())
        .collect();
    let kinds: BTreeSet<String> = poison.values().map(|t| format!("{:?}", t.fault)).collect();
    assert_eq!(kinds.len(), 3, "every poison kind is injected: {kinds:?}");
    let deadline = Instant::now() + Duration::from_secs(420);
    let (clean, parked) = loop {
        let (clean, parked) = outputs_async(&prefix).await;
        let ids = msgids(&clean);
        if ids.len() >= expected_clean.len() && parked.len() >= poison.len() {
            break (clean, parked);
        }
        assert!(
            Instant::now() < deadline,
            "incomplete after 420 s: {} of {} clean, {} of {} parked\n{}",
            ids.len(),
            expected_clean.len(),
            parked.len(),
            poison.len(),
            processor.log_tail()
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    let by_msgid: BTreeMap<&str, &Truth> = truth.iter().map(|t| (t.msgid.as_str(), t)).collect();
    assert_eq!(
        msgids(&clean),
        expected_clean,
        "clean = served - poison, exactly"
    );
    for m in &clean {
        let t = by_msgid[m.msgid.as_str()];
        assert_eq!(
            (
                m.corp_id.as_str(),
                m.msgtype.as_str(),
                m.conversation_id.as_str(),
                m.msgtime
            ),
            (
                t.corp_id.as_str(),
                t.msgtype.as_str(),
                t.group.as_str(),
                t.msgtime
            ),
            "{}",
            m.msgid
        );
    }
    let parked_ids: BTreeSet<&str> = parked.values().filter_map(|d| d.msgid.as_deref()).collect();
    assert_eq!(
        parked_ids,
        poison.keys().copied().collect(),
        "dead letters = poison, exactly"
    );
    for d in parked.values() {
        let t = poison[d.msgid.as_deref().expect("msgid")];
        let ok = match format!("{:?}", t.fault).as_str() {
            "Some(UnknownKeyVersion)" => {
                d.error_class == "unknown_key_version" && d.key_version == Some(99)
            }
            "Some(InvalidJson)" => d.error_class == "invalid_json",
            _ => {
                ["bad_padding", "bad_ciphertext", "invalid_json"].contains(&d.error_class.as_str())
            }
        };
        assert!(ok, "{:?} parked as {}", t.fault, d.error_class);
        assert_eq!(d.original_format, "archive-item-json");
        assert!(!d.original.is_empty() && d.seq == Some(t.seq as i64));
    }

    // From here on the raw topic only gets what this test writes (an idle puller would keep
    // re-serving the simulator's duplicate of its cursor item).
    ingest.terminate(Duration::from_secs(30));

    // The processor's counters reconcile per partition once it is idle.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = wxstream_tests::metrics_text(&metrics).await;
        let s = wxstream_tests::samples(&text);
        let sum = |prefix: &str, partition: i32| -> f64 {
            let label = format!("partition=\"{partition}\"");
            s.iter()
                .filter(|(k, _)| k.starts_with(prefix) && k.contains(&label))
                .map(|(_, v)| v)
                .sum()
        };
        let balanced = (0..6).all(|p| {
            sum("wxstream_decrypt_items_consumed_total", p)
                == sum("wxstream_decrypt_items_produced_total", p)
                    + sum("wxstream_decrypt_items_dead_lettered_total", p)
                    + sum("wxstream_decrypt_items_filtered_total", p)
        });
        if balanced && text.contains("wxstream_decrypt_items_consumed_total") {
            wxstream_tests::assert_promtool_accepts(&text);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "counters never reconciled:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Key rotation without a restart: add version 99; the running processor reloads it and
    // decrypts new records of that version.
    keys.write_private(&key_dir, |v| v == 99)
        .expect("add key 99");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&decrypt_log)
        .unwrap_or_default()
        .contains("Key rings reloaded.")
    {
        assert!(
            Instant::now() < deadline,
            "the key ring was not reloaded:\n{}",
            processor.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let codec = Codec::fixed().expect("codec");
    let producer = Producer::new(
        &KafkaConfig::new(brokers()),
        "decrypt-test",
        Duration::from_secs(30),
    )
    .expect("producer");
    let batch = RawBatch {
        corp_id: corps[0].clone(),
        source: SourceKind::Archive,
        seq_from: None,
        seq_to: None,
        fetched_at: now_ms(),
        items: withheld_items.clone(),
        callback: None,
    };
    producer
        .send(
            &format!("{prefix}wxstream.raw"),
            None,
            corps[0].as_bytes(),
            &codec.encode(&batch).expect("encode"),
        )
        .await
        .expect("send");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ids = msgids(&outputs_async(&prefix).await.0);
        if withheld_items.iter().all(|i| ids.contains(&i.msgid)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "version-99 records were not decrypted after the reload:\n{}",
            processor.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Redrive: a dry run writes nothing; the real one moves exactly the version-99 letters.
    let withheld: BTreeSet<String> = poison
        .values()
        .filter(|t| t.key_version == 99)
        .map(|t| t.msgid.clone())
        .collect();
    let redrive = wx_args(
        dir.path(),
        &prefix,
        &["redrive", "--class", "unknown_key_version"],
    );
    let mut dry = redrive.clone();
    dry.push("--dry-run".into());
    let (before, _) = outputs_async(&prefix).await;
    let out = wxstream_tests::run_wxstream(&dry, &dir.path().join("redrive-dry.log"));
    assert!(
        out.contains(&format!("dry run: {} moved", withheld.len())),
        "{out}"
    );
    let (after_dry, parked_after_dry) = outputs_async(&prefix).await;
    let after_dry_ids = msgids(&after_dry);
    assert_eq!(msgids(&before), after_dry_ids, "a dry run writes nothing");
    assert!(
        withheld.iter().any(|m| !after_dry_ids.contains(m)),
        "the other corps' version-99 messages are still only parked"
    );
    assert_eq!(parked_after_dry.len(), poison.len());

    let out = wxstream_tests::run_wxstream(&redrive, &dir.path().join("redrive.log"));
    assert!(
        out.contains(&format!("redrive: {} moved", withheld.len())),
        "{out}"
    );
    let (clean, parked) = outputs_async(&prefix).await;
    let mut expected = expected_clean.clone();
    expected.extend(withheld.iter().cloned());
    assert_eq!(
        msgids(&clean),
        expected,
        "clean now includes exactly the redriven version-99 messages"
    );
    let still: BTreeSet<&str> = parked.values().filter_map(|d| d.msgid.as_deref()).collect();
    let expected_still: BTreeSet<&str> = poison
        .keys()
        .copied()
        .filter(|m| !withheld.contains(*m))
        .collect();
    assert_eq!(still, expected_still, "only the other poison stays parked");
    assert!(
        parked
            .values()
            .all(|d| d.error_class != "unknown_key_version")
    );

    // Idempotent: a second redrive selects nothing and writes nothing.
    let out = wxstream_tests::run_wxstream(&redrive, &dir.path().join("redrive-2.log"));
    assert!(out.contains("redrive: 0 moved"), "{out}");
    let (again, _) = outputs_async(&prefix).await;
    assert_eq!(again.len(), clean.len(), "a second redrive adds nothing");

    // A redrive of the rest keeps them parked with attempts + 1.
    let rest = wx_args(dir.path(), &prefix, &["redrive"]);
    let out = wxstream_tests::run_wxstream(&rest, &dir.path().join("redrive-3.log"));
    assert!(
        out.contains(&format!("{} still parked", expected_still.len())),
        "{out}"
    );
    let (_, parked) = outputs_async(&prefix).await;
    assert!(
        parked.values().all(|d| d.attempts == 2),
        "failed again: attempts + 1"
    );

    // SIGTERM drains, commits and exits 0.
    let mut processor = processor;
    let status = tokio::task::spawn_blocking(move || processor.terminate(Duration::from_secs(30)))
        .await
        .expect("join");
    assert!(
        status.is_some_and(|s| s.success()),
        "SIGTERM must stop decrypt cleanly: {status:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_processor_joining_and_the_first_leaving_lose_nothing() {
    let prefix = wxstream_tests::fresh_topics("decrypt-rebalance").await;
    let keys = SimKeys::generate(&[1]).expect("keys");
    let dir = tempfile::tempdir().expect("tmp");
    let key_dir = dir.path().join("keys");
    keys.write_private(&key_dir, |_| true).expect("keys");
    let spec = FeedSpec {
        corp_id: "wwreb".into(),
        seed: 9,
        messages: 12_000,
        start_ms: now_ms() - 3_600_000,
        spacing_ms: 100,
        key_versions: vec![1],
        withheld_key_version: 99,
        faults: FaultRates::default(),
        media: Default::default(),
    };
    let feed = CorpFeed::build(&spec, &keys).expect("feed");
    let expected: BTreeSet<String> = feed.truth.iter().map(|t| t.msgid.clone()).collect();
    // Pages of 100 spread over every raw partition.
    let codec = Codec::fixed().expect("codec");
    let producer = Producer::new(
        &KafkaConfig::new(brokers()),
        "rebalance-test",
        Duration::from_secs(30),
    )
    .expect("producer");
    let raw = format!("{prefix}wxstream.raw");
    for (i, start) in (0..feed.items.len()).step_by(100).enumerate() {
        let batch = feed.raw_batch(start..(start + 100).min(feed.items.len()));
        producer
            .send(
                &raw,
                Some(i as i32 % 6),
                b"wwreb",
                &codec.encode(&batch).expect("encode"),
            )
            .await
            .expect("send");
    }
    write_ingest_topology(dir.path(), "http://127.0.0.1:1", &[], "");
    write_decrypt_connector(
        dir.path(),
        &key_dir,
        &format!("  session_timeout: 6s\n  commit_interval: 500ms\n  group_id: {prefix}decrypt\n"),
    );
    let decrypt_args = wx_args(dir.path(), &prefix, &["run", "--only", "decrypt"]);
    let (log_a, log_b) = (dir.path().join("a.log"), dir.path().join("b.log"));
    let mut first = start(&decrypt_args, &log_a, "");
    let deadline = Instant::now() + Duration::from_secs(120);
    while outputs_async(&prefix).await.0.is_empty() {
        assert!(
            Instant::now() < deadline,
            "no progress:\n{}",
            first.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A second member joins: the first drains, commits and gives up partitions.
    let second = start(&decrypt_args, &log_b, "");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&log_b)
        .unwrap_or_default()
        .contains("Partitions assigned")
    {
        assert!(
            Instant::now() < deadline,
            "the second member got nothing:\n{}",
            second.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Then the first leaves gracefully: the second takes everything over.
    let status = tokio::task::spawn_blocking(move || first.terminate(Duration::from_secs(30)))
        .await
        .expect("join");
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let ids = msgids(&outputs_async(&prefix).await.0);
        if ids.len() >= expected.len() {
            assert_eq!(
                ids, expected,
                "every message once the dust settles, nothing else"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} after the rebalances:\n{}",
            ids.len(),
            expected.len(),
            second.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let a = std::fs::read_to_string(&log_a).unwrap_or_default();
    assert!(
        a.contains("Partitions revoked after draining."),
        "the first member drained on revocation:\n{a}"
    );
}
