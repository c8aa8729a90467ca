//! The media stage on the real stack (Kafka, MariaDB, OpenSearch, the S3 server):
//! - 2,000 messages with media of every kind through all five stages: every file the simulator
//!   serves is in the bucket with its MD5, every expired one parked with its cause, nothing
//!   stored or downloaded twice, no unfinished multipart upload left;
//! - kill -9 of the media stage in the middle of a 50 MB file: the download resumes from its
//!   last stored part (the simulator's chunk log shows no second start from 0);
//! - the object store unreachable: the stage retries and parks nothing, then stores everything.

use std::time::{Duration, Instant};

use wx_codec::ChatMessage;
use wx_mysql::media::MediaState;
use wx_sim::{MediaRef, MediaSizes, MediaSpec, ServerConfig};
use wxstream_tests::e2e::Pipeline;
use wxstream_tests::media::{
    file_message, media_letters_at_least, media_stage_storing, media_table, media_topology,
    one_slot, simulator_with, test_bucket, wait_stored,
};
use wxstream_tests::pipeline::Names;
use wxstream_tests::{TcpProxy, WxProcess, brokers, now_ms, produce_clean, stack_setting, wx_args};

/// Documents of an index (alias) matching a query string.
async fn count_docs(index: &str, query: &str) -> u64 {
    let url = format!("{}/{index}/_count", stack_setting("WXSTACK_ES_URL"));
    let reply: serde_json::Value = reqwest::Client::new()
        .get(url)
        .query(&[("q", query)])
        .send()
        .await
        .expect("search")
        .json()
        .await
        .expect("json");
    reply["count"].as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_media_item_of_two_thousand_messages_is_stored_once_with_its_md5_or_parked_as_expired()
 {
    let media = MediaSpec {
        sizes: MediaSizes::Realistic,
        // Up to 7 MB: some files take two 5 MiB parts, the run stays a few hundred MB.
        max_bytes: 7 << 20,
        expired_rate: 0.03,
    };
    let pipeline = Pipeline::start_with_media("media", &brokers(), 2, 1_000, media, |_| {}).await;
    let (_processes, tally, media) = pipeline.run_until_reconciled(420).await;
    println!("messages: {tally:?}\nmedia: {media:?}");
    assert!(media.items > 200, "the feed carries media: {media:?}");
    assert!(media.expired > 0, "some files are expired: {media:?}");
    assert!(
        media.md5_redownloads > 0,
        "some MD5 faults were healed: {media:?}"
    );
    assert!(
        media.multipart_objects > 0,
        "some files took a multipart upload: {media:?}"
    );
    // The search documents say which messages carry media.
    let with_media = pipeline
        .reader()
        .clean_messages()
        .iter()
        .filter(|m| !m.media_items().is_empty())
        .count() as u64;
    assert_eq!(
        count_docs(&pipeline.names.index, "has_media:true").await,
        with_media
    );
    assert!(count_docs(&pipeline.names.index, "_exists_:file_name AND file_size:>0").await > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_media_stage_killed_in_the_middle_of_a_50_mb_file_resumes_from_its_last_part() {
    let names = Names::create("mediakill", "wxmk").await;
    let corp = "wwmk0";
    let file = MediaRef::file("CtsResumeFiftyMegabytes", 50 << 20);
    // Every chunk a little slow, so the kill lands mid-file.
    let (sim, url) = simulator_with(
        corp,
        std::slice::from_ref(&file),
        ServerConfig {
            media_slow_chunk_rate: 1.0,
            media_slow_chunk_ms: 40,
            ..ServerConfig::default()
        },
    )
    .await;
    let (dir, key_prefix) = media_topology(&names, &url, corp, "  max_concurrent_downloads: 1\n");
    let message = file_message(corp, &file);
    produce_clean(&format!("{}wxstream.clean", names.prefix), [&message]).await;
    let args = wx_args(dir.path(), &names.prefix, &["run", "--only", "media"]);
    let log = dir.path().join("media.log");
    let mut stage = WxProcess::start(&args, &log);

    // Wait for a checkpoint of at least three parts, then kill -9.
    let table = media_table(&names.database).await;
    let state = || table.media_state(corp, &message.msgid, 0);
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        if let Ok(MediaState::Downloading {
            checkpoint: Some(cp),
            ..
        }) = state().await
            && cp.parts.len() >= 3
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no checkpoint of 3 parts within 240 s:\n{}",
            stage.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stage.kill9();
    let Ok(MediaState::Downloading {
        checkpoint: Some(at_kill),
        attempts,
    }) = state().await
    else {
        panic!("the download was still under way at the kill")
    };
    assert_eq!(attempts, 1);
    assert!(at_kill.bytes_done < file.size as u64, "killed mid-file");
    let served_before = sim.chunk_log(corp).len();

    let mut stage = WxProcess::start(&args, &log);
    wait_stored(&table, &message, &file, &stage, 300).await;
    stage.terminate(Duration::from_secs(20));
    let log_of_chunks = sim.chunk_log(corp);
    let starts = log_of_chunks.iter().filter(|(_, o)| *o == 0).count();
    assert_eq!(
        starts, 1,
        "the file was downloaded from its first chunk once"
    );
    let resumed_at = log_of_chunks[served_before].1 as u64;
    assert_eq!(
        resumed_at, at_kill.bytes_done,
        "the restart asked for the chunk after the last stored part"
    );
    // At most the part in progress at the kill was fetched twice.
    let chunks = (file.size as u64).div_ceil(512 * 1024) as usize;
    assert!(
        log_of_chunks.len() <= chunks + 5 * 2 + 1,
        "{} chunks fetched for a file of {chunks}",
        log_of_chunks.len()
    );
    let bucket = test_bucket();
    let key = format!("{key_prefix}{}", message.media_key(0));
    let (md5, size) = bucket.md5_of(&key).await.expect("read back");
    assert_eq!((md5, size), (file.md5.clone(), file.size as u64));
    assert_eq!(
        bucket.list_objects(&key_prefix).await.expect("list").len(),
        1
    );
    assert!(
        bucket
            .list_uploads(&key_prefix)
            .await
            .expect("uploads")
            .is_empty(),
        "no unfinished upload is left"
    );
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(text.contains("Resuming a media download from its last stored part."));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_object_store_is_waited_out_and_nothing_is_parked() {
    let names = Names::create("mediaoutage", "wxmo").await;
    let corp = "wwmo0";
    let files: Vec<MediaRef> = (0..4)
        .map(|i| MediaRef::file(&format!("CtsOutage{i}"), 300_000 + i * 1_000_000))
        .collect();
    let (_sim, url) = simulator_with(corp, &files, ServerConfig::default()).await;
    let (dir, key_prefix) = media_topology(&names, &url, corp, "");
    // The stage reaches the S3 server only through a proxy the test takes down.
    let endpoint = stack_setting("WX_S3_ENDPOINT");
    let proxy = TcpProxy::start(endpoint.trim_start_matches("http://").to_string()).await;
    let yaml = dir.path().join("connectors/media.yaml");
    let text = std::fs::read_to_string(&yaml)
        .expect("yaml")
        .replace(&endpoint, &format!("http://{}", proxy.addr));
    std::fs::write(&yaml, text).expect("yaml");
    let args = wx_args(dir.path(), &names.prefix, &["run", "--only", "media"]);
    let metrics = format!("127.0.0.1:{}", wxstream_tests::free_port());
    let stage = WxProcess::start_with(&args, &dir.path().join("media.log"), &metrics);
    // Up, then the store goes away before any message arrives.
    let table = media_table(&names.database).await;
    wxstream_tests::wait_until("the media stage is ready", 120, &stage, || async {
        reqwest::get(format!("http://{metrics}/readyz"))
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
    proxy.set_down(true);
    let messages: Vec<ChatMessage> = files.iter().map(|f| file_message(corp, f)).collect();
    produce_clean(&format!("{}wxstream.clean", names.prefix), &messages).await;
    // The stage says the store is failing and keeps the records.
    wxstream_tests::wait_until("readiness names the store", 120, &stage, || async {
        match reqwest::get(format!("http://{metrics}/readyz")).await {
            Ok(r) => {
                !r.status().is_success() && r.text().await.unwrap_or_default().contains("store")
            }
            Err(_) => false,
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rows = table.media_rows().await.expect("rows");
    assert!(
        rows.iter()
            .all(|r| r.status != "parked" && r.status != "stored"),
        "nothing stored or parked while the store is away: {rows:?}"
    );
    proxy.set_down(false);
    wxstream_tests::wait_until("every file stored", 180, &stage, || async {
        let rows = table.media_rows().await.unwrap_or_default();
        rows.len() == files.len() && rows.iter().all(|r| r.status == "stored")
    })
    .await;
    let scrape = wxstream_tests::metrics_text(&metrics).await;
    assert!(
        scrape
            .lines()
            .any(|l| l.starts_with("wxstream_media_retries_total{what=\"store\"}")),
        "store retries are counted:\n{scrape}"
    );
    let bucket = test_bucket();
    for (file, message) in files.iter().zip(&messages) {
        let key = format!("{key_prefix}{}", message.media_key(0));
        let (md5, _) = bucket.md5_of(&key).await.expect("read back");
        assert_eq!(md5, file.md5);
    }
    assert!(
        bucket
            .list_uploads(&key_prefix)
            .await
            .expect("uploads")
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_file_parked_is_stored_by_redrive_once_wecom_serves_it_again() {
    let names = Names::create("mediaredrive", "wxmr").await;
    let corp = "wwmr0";
    let good = MediaRef::file("CtsRedriveGood", 700_000);
    // Over one part: the replay goes through a multipart upload.
    let expired = MediaRef {
        expired: true,
        ..MediaRef::file("CtsRedriveExpired", 6_000_000)
    };
    let (sim, url) = simulator_with(
        corp,
        &[good.clone(), expired.clone()],
        ServerConfig::default(),
    )
    .await;
    let (dir, key_prefix) = media_topology(&names, &url, corp, "");
    let messages = [file_message(corp, &good), file_message(corp, &expired)];
    produce_clean(&format!("{}wxstream.clean", names.prefix), &messages).await;
    let args = wx_args(dir.path(), &names.prefix, &["run", "--only", "media"]);
    let mut stage = WxProcess::start(&args, &dir.path().join("media.log"));
    let table = media_table(&names.database).await;
    let status = |rows: &[wx_mysql::media::MediaRow], msgid: &str| {
        rows.iter()
            .find(|r| r.msgid == msgid)
            .map(|r| r.status.clone())
            .unwrap_or_default()
    };
    wxstream_tests::wait_until("one file stored, one parked", 120, &stage, || async {
        let rows = table.media_rows().await.unwrap_or_default();
        status(&rows, &messages[0].msgid) == "stored"
            && status(&rows, &messages[1].msgid) == "parked"
    })
    .await;
    stage.terminate(Duration::from_secs(20));
    let reader = wxstream_tests::e2e::Reader::new(&brokers(), &names.prefix);
    let media_letters = |reader: &wxstream_tests::e2e::Reader| {
        reader
            .letters()
            .into_values()
            .filter(|l| l.stage == "media")
            .collect::<Vec<_>>()
    };
    let letters = tokio::task::block_in_place(|| media_letters(&reader));
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(
        letters[0].msgid.as_deref(),
        Some(messages[1].msgid.as_str())
    );
    assert_eq!(letters[0].error_class, "media_expired");

    // A dry run writes nothing; while WeCom still says expired, a redrive parks it again.
    let redrive = |extra: &[&str]| {
        let mut rest = vec!["redrive", "--stage", "media"];
        rest.extend_from_slice(extra);
        wxstream_tests::run_wxstream(
            &wx_args(dir.path(), &names.prefix, &rest),
            &dir.path().join("redrive.log"),
        )
    };
    let dry = tokio::task::block_in_place(|| redrive(&["--dry-run"]));
    assert!(dry.contains("would_move"), "{dry}");
    let again = tokio::task::block_in_place(|| redrive(&[]));
    assert!(again.contains("failed_again:media_expired"), "{again}");
    let letters = tokio::task::block_in_place(|| media_letters(&reader));
    assert_eq!((letters.len(), letters[0].attempts), (1, 2), "{letters:?}");

    // The cause fixed: the replay stores the file and clears the letter; a second moves nothing.
    assert!(sim.revive_media(corp, &expired.sdkfileid));
    let moved = tokio::task::block_in_place(|| redrive(&[]));
    assert!(moved.contains("1 moved"), "{moved}");
    let rows = table.media_rows().await.expect("rows");
    assert_eq!(status(&rows, &messages[1].msgid), "stored", "{rows:?}");
    let key = format!("{key_prefix}{}", messages[1].media_key(0));
    let (md5, size) = test_bucket().md5_of(&key).await.expect("read back");
    assert_eq!((md5, size), (expired.md5.clone(), expired.size as u64));
    assert!(tokio::task::block_in_place(|| media_letters(&reader)).is_empty());
    let none = tokio::task::block_in_place(|| redrive(&[]));
    assert!(none.contains("0 moved"), "{none}");
    assert!(
        test_bucket()
            .list_uploads(&key_prefix)
            .await
            .expect("uploads")
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebalance_stops_every_download_it_revokes_and_no_file_is_started_twice() {
    // Audit S5 and D2: a second member joins while the first has every download slot busy and
    // more records waiting for one. The protocol is eager, so every partition is revoked, and
    // each record comes back from its committed offset, to its old owner or the new one. Each
    // running download must stop and be resumed from its checkpoint by whoever gets its record,
    // and no record received before the rebalance may be started: nothing runs on beside a
    // second download of the same file (a partition given back to the same member included).
    const SLOTS: usize = 6;
    let names = Names::create("mediareb", "wxmr").await;
    let corp = "wwmr0";
    let files: Vec<MediaRef> = (0..12)
        .map(|i| MediaRef::file(&format!("CtsRebalance{i:02}"), 30 << 20))
        .collect();
    // 60 chunks of 512 KiB at 400 ms each: about 24 s a file, its first 5 MiB part in 4 s.
    let (sim, url) = simulator_with(
        corp,
        &files,
        ServerConfig {
            media_slow_chunk_rate: 1.0,
            media_slow_chunk_ms: 400,
            ..ServerConfig::default()
        },
    )
    .await;
    let (dir, _key_prefix) = media_topology(
        &names,
        &url,
        corp,
        &format!("  max_concurrent_downloads: {SLOTS}\n  drain_timeout: 1s\n"),
    );
    // One conversation each, so the files spread over the clean topic's partitions.
    let messages: Vec<ChatMessage> = files
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let mut m = file_message(corp, f);
            m.conversation_id = format!("wmRebalanceRoom{i:02}");
            m
        })
        .collect();
    produce_clean(&format!("{}wxstream.clean", names.prefix), &messages).await;
    let args = wx_args(dir.path(), &names.prefix, &["run", "--only", "media"]);
    let first = WxProcess::start(&args, &dir.path().join("media-1.log"));

    // Every slot busy with a file that has a stored part, the other six records waiting,
    // before the second member joins.
    let table = media_table(&names.database).await;
    wxstream_tests::wait_until(
        "every slot's file has a stored part",
        180,
        &first,
        || async {
            let mut under_way = 0;
            for m in &messages {
                if let Ok(MediaState::Downloading {
                    checkpoint: Some(cp),
                    ..
                }) = table.media_state(corp, &m.msgid, 0).await
                    && !cp.parts.is_empty()
                {
                    under_way += 1;
                }
            }
            under_way == SLOTS
        },
    )
    .await;
    let second_log = dir.path().join("media-2.log");
    let second = WxProcess::start(&args, &second_log);
    for (m, f) in messages.iter().zip(&files) {
        wait_stored(&table, m, f, &second, 300).await;
    }
    let assigned = std::fs::read_to_string(&second_log).unwrap_or_default();
    assert!(
        assigned.contains("Partitions assigned."),
        "the second member joined the group:\n{}",
        second.log_tail()
    );
    // Each file from its first chunk once, and each chunk at most twice: a download stopped
    // by the rebalance is resumed from its last stored part, so only the part in progress is
    // fetched again (two parts allowed, should the group rebalance twice). Two downloads of one
    // file side by side fetch most of it twice.
    let log = sim.chunk_log(corp);
    let chunks = (30usize << 20).div_ceil(512 * 1024);
    let part_chunks = (5usize << 20).div_ceil(512 * 1024);
    let fetched: Vec<(String, usize, usize)> = files
        .iter()
        .map(|f| {
            let of_file: Vec<usize> = log
                .iter()
                .filter(|(id, _)| *id == f.sdkfileid)
                .map(|(_, offset)| *offset)
                .collect();
            let starts = of_file.iter().filter(|o| **o == 0).count();
            (f.sdkfileid.clone(), starts, of_file.len())
        })
        .collect();
    eprintln!("(sdkfileid, starts, chunks fetched of {chunks}): {fetched:?}");
    let wrong: Vec<&(String, usize, usize)> = fetched
        .iter()
        .filter(|(_, starts, fetched)| *starts != 1 || *fetched > chunks + 2 * part_chunks + 2)
        .collect();
    assert!(
        wrong.is_empty(),
        "files started more than once or fetched side by side (sdkfileid, starts, chunks fetched of {chunks}): {wrong:?}"
    );
    drop((first, second));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_media_row_mysql_refuses_is_parked_and_holds_no_download_slot() {
    // Audit M7: MySQL refusing an item's row (a msgid over the table's 191 characters: error
    // 1406 in strict mode) is the item's fault, which no retry cures. Before, the write was
    // retried for ever, holding the only download slot: nothing after it was stored. It must
    // be parked `store_rejected`, its upload aborted, and the next file stored.
    let corp = "wwmw0";
    let small = MediaRef::file("CtsRowSmall", 1 << 20);
    let large = MediaRef::file("CtsRowLarge", 6 << 20);
    let fine = MediaRef::file("CtsRowFine", 1 << 20);
    let files = [small.clone(), large.clone(), fine.clone()];
    let (names, _sim, dir, key_prefix) = one_slot("mediarow", "wxmw", corp, &files).await;
    let long = |file: &MediaRef| {
        let mut m = file_message(corp, file);
        m.msgid = format!("{}{}", "x".repeat(200), m.msgid);
        m
    };
    // Single part (the row written once stored) and multipart (the row begun before the
    // first part), then a file whose row fits; one conversation, so in this order.
    let messages = [long(&small), long(&large), file_message(corp, &fine)];
    let stage = media_stage_storing(&names, dir.path(), &messages, (&messages[2], &fine)).await;
    let letters = media_letters_at_least(&names.prefix, 2, 60, &stage).await;
    for m in &messages[..2] {
        let letter = letters
            .iter()
            .find(|l| l.msgid.as_deref() == Some(m.msgid.as_str()))
            .unwrap_or_else(|| panic!("no letter for the long msgid: {letters:?}"));
        assert_eq!(letter.error_class, "store_rejected", "{letter:?}");
        assert!(
            letter.error_message.contains("1406")
                || letter.error_message.to_lowercase().contains("too long"),
            "{}",
            letter.error_message
        );
    }
    assert_eq!(letters.len(), 2, "nothing else parked: {letters:?}");
    assert!(
        test_bucket()
            .list_uploads(&key_prefix)
            .await
            .expect("uploads")
            .is_empty(),
        "no unfinished upload is left"
    );
    drop(stage);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callbacks_files_are_fetched_with_media_get_or_parked_with_their_cause() {
    // Audit L8: a callback's media is a MediaId (WeCom's media/get, valid 3 days), never an
    // sdkfileid. Before, such an item was not seen at all: no row, no object, no letter, a
    // silent loss for a callbacks-only corp. Now the file is fetched with media/get under the
    // token of the corp's callback app, in ranged chunks (7 MiB: multipart, checkpointed), and
    // stored like any other; a MediaId WeCom no longer serves is parked `media_expired`.
    let corp = "wwmc0";
    let image = MediaRef::file("CtsCallbackImage", 7 << 20);
    let fine = MediaRef::file("CtsCallbackFine", 1 << 20);
    let (names, sim, dir, key_prefix) =
        one_slot("mediacb", "wxmc", corp, &[image.clone(), fine.clone()]).await;
    let callback = |n: u32, msgtype: &str, media_id: &str| {
        let mut m = file_message(corp, &fine);
        m.msgid = format!("callback:agent:1000002:{}{n}", now_ms());
        m.msgtype = msgtype.into();
        m.payload_json = serde_json::json!({
            "ToUserName": corp, "FromUserName": "zhangsan", "CreateTime": "1476422779",
            "MsgType": msgtype, "PicUrl": "http://mmbiz.qpic.cn/p.jpg", "MediaId": media_id,
            "Format": "amr", "MsgId": format!("145645372{n}"), "AgentID": "1000002",
        })
        .to_string();
        m
    };
    let messages = [
        callback(1, "image", &image.sdkfileid),
        callback(2, "voice", "MEDIA_ID_PAST_ITS_3_DAYS"),
        file_message(corp, &fine),
    ];
    let stage = media_stage_storing(&names, dir.path(), &messages, (&messages[2], &fine)).await;
    let table = media_table(&names.database).await;
    wait_stored(&table, &messages[0], &image, &stage, 60).await;
    let letters = media_letters_at_least(&names.prefix, 1, 60, &stage).await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].error_class, "media_expired");
    assert_eq!(
        letters[0].msgid.as_deref(),
        Some(messages[1].msgid.as_str())
    );
    assert!(
        letters[0].error_message.contains("40007"),
        "{}",
        letters[0].error_message
    );
    let object = test_bucket()
        .head(&format!("{key_prefix}{}", messages[0].media_key(0)))
        .await
        .expect("HEAD")
        .expect("the callback's image is in the bucket");
    assert_eq!(object.size, image.size as u64);
    // Every chunk of the image asked for once, under one token.
    let chunks = sim
        .chunk_log(corp)
        .iter()
        .filter(|(id, _)| *id == image.sdkfileid)
        .count();
    assert_eq!(chunks, (7usize << 20).div_ceil(512 * 1024));
    assert_eq!(
        sim.tokens_issued(),
        1,
        "the access token is kept between calls"
    );
    drop(stage);
}

/// The media/get client against the simulator over HTTP: a file read in ranged chunks under
/// one access token; a token WeCom no longer accepts (40014) fails one call as a passing error
/// and the next call fetches a new one; an unknown MediaId is gone (40007).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_get_keeps_its_token_and_renews_it_when_wecom_refuses_it() {
    use md5::Digest as _;
    use wx_wecom::{MediaClient, MediaError, MediaGetClient};
    let corp = "wwmg0";
    let file = MediaRef::file("CtsMediaGet", 1300 * 1024);
    let (sim, url) =
        simulator_with(corp, std::slice::from_ref(&file), ServerConfig::default()).await;
    let client = MediaGetClient::new(
        &url,
        corp,
        &format!("secret-{corp}"),
        Duration::from_secs(10),
    );
    let mut index = String::new();
    let mut bytes = Vec::new();
    let mut calls = 0;
    loop {
        calls += 1;
        if calls == 2 {
            sim.invalidate_tokens();
            let refused = client
                .get_media_chunk(&file.sdkfileid, &index)
                .await
                .expect_err("the invalidated token is refused");
            assert!(
                matches!(refused, MediaError::Transient { code: 40014, .. }),
                "{refused:?}"
            );
        }
        let chunk = client
            .get_media_chunk(&file.sdkfileid, &index)
            .await
            .expect("chunk");
        bytes.extend_from_slice(&chunk.data);
        index = chunk.out_index;
        if chunk.is_finish {
            break;
        }
    }
    assert_eq!(calls, 3, "1300 KiB in chunks of 512 KiB");
    assert_eq!(bytes.len(), file.size);
    assert_eq!(hex::encode(md5::Md5::digest(&bytes)), file.md5);
    assert_eq!(
        sim.tokens_issued(),
        2,
        "one token, renewed once after it was refused"
    );
    let gone = client
        .get_media_chunk("MEDIA_ID_NEVER_ISSUED", "")
        .await
        .expect_err("unknown");
    assert!(
        matches!(gone, MediaError::Gone { code: 40007, .. }),
        "{gone:?}"
    );
    let wrong = MediaGetClient::new(&url, corp, "not-the-secret", Duration::from_secs(10))
        .get_media_chunk(&file.sdkfileid, "")
        .await
        .expect_err("wrong secret");
    assert!(
        matches!(wrong, MediaError::Refused { code: 40001, .. }),
        "{wrong:?}"
    );
}
