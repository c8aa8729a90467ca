//! The operations surface of `wxstream run` against the local stack:
//! - pausing a connector over the Connect-style REST API stops its consumption (lag grows, the
//!   committed offsets and the stores stand still) and resuming catches up; status, offsets,
//!   health and errors answer in Connect's shapes;
//! - the whole topology (media too) in one process on the simulator's feed: every stage's metrics pass
//!   `promtool check metrics`, every metric the alert rules and the dashboard use exists, the
//!   JSON logs hold neither message text nor key material, and SIGTERM drains and exits 0.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::Value;
use wx_kafka::KafkaConfig;
use wx_sim::{FaultRates, ServerConfig, SimKeys, Simulator};
use wxstream_tests::pipeline::{
    Names, clean_messages, drop_database, row_count, write_sink_connector, write_stats_connector,
};
use wxstream_tests::{
    WxProcess, assert_promtool_accepts, brokers, free_port, metrics_text, now_ms, produce_clean,
    repo_root, serve_simulator, sim_feeds, sim_secrets, wait_until, write_decrypt_connector,
    write_ingest_topology, wx_args,
};

async fn get(addr: &str, path: &str) -> (u16, Value) {
    let reply = reqwest::get(format!("http://{addr}{path}"))
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let status = reply.status().as_u16();
    (status, reply.json().await.unwrap_or(Value::Null))
}

async fn put(addr: &str, path: &str) -> u16 {
    reqwest::Client::new()
        .put(format!("http://{addr}{path}"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("PUT {path}: {e}"))
        .status()
        .as_u16()
}

/// The sum of the committed offsets `GET /connectors/{name}/offsets` reports.
async fn committed(addr: &str, name: &str) -> i64 {
    let (status, body) = get(addr, &format!("/connectors/{name}/offsets")).await;
    assert_eq!(status, 200, "{body}");
    body["offsets"]
        .as_array()
        .expect("offsets")
        .iter()
        .map(|o| o["offset"]["kafka_offset"].as_i64().expect("kafka_offset"))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pausing_over_rest_stops_consumption_and_resuming_catches_up() {
    let Names {
        prefix,
        database,
        index,
    } = Names::create("ops-pause", "wxs").await;
    let messages = clean_messages("wwops", 1_200, now_ms() - 86_400_000, 1_000);
    let (first, second) = messages.split_at(600);
    let clean = format!("{prefix}wxstream.clean");
    produce_clean(&clean, first).await;

    let dir = tempfile::tempdir().expect("tmp");
    write_sink_connector(dir.path(), &database, &index, None);
    let addr = format!("127.0.0.1:{}", free_port());
    let args = wx_args(dir.path(), &prefix, &["run"]);
    let mut sink = WxProcess::start_with(&args, &dir.path().join("sink.log"), &addr);

    // Ready once it reaches the broker and the stores and has joined its group.
    wait_until("/readyz answers 200", 60, &sink, || async {
        reqwest::get(format!("http://{addr}/readyz"))
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    assert_eq!(get(&addr, "/livez").await.0, 200);
    let (_, names) = get(&addr, "/connectors").await;
    assert_eq!(
        names,
        serde_json::json!(["sink"]),
        "`run` hosts the configured stages"
    );
    let (_, info) = get(&addr, "/connectors/sink").await;
    assert_eq!(info["type"], "sink");
    assert_eq!(info["config"]["connector.class"], "wxstream.sink");
    assert_eq!(info["config"]["topics"], format!("{prefix}wxstream.clean"));
    // Every GET path the OpenAPI description documents answers, for this connector.
    let api: serde_yaml_ng::Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(repo_root().join("ops/openapi.yaml")).expect("openapi.yaml"),
    )
    .expect("openapi YAML");
    let paths = api["paths"].as_mapping().expect("paths");
    assert!(paths.len() >= 10, "the description covers the API");
    for (path, item) in paths {
        let path = path.as_str().expect("path");
        if item.get("get").is_none() {
            continue;
        }
        let concrete = path
            .replace("{name}", "sink")
            .replace("{task}", "0")
            .replace("{logger}", "root");
        let reply = reqwest::get(format!("http://{addr}{concrete}"))
            .await
            .expect("GET");
        assert_eq!(reply.status().as_u16(), 200, "GET {concrete}");
    }
    let (status, missing) = get(&addr, "/connectors/nope/status").await;
    assert_eq!(status, 404);
    assert_eq!(missing["error_code"], 404);
    // Connect's list: `expand` repeated, an unknown one ignored; unknown routes and methods
    // in Connect's error shape.
    let (_, both) = get(&addr, "/connectors?expand=status&expand=info").await;
    assert_eq!(both["sink"]["status"]["name"], "sink", "{both}");
    assert_eq!(both["sink"]["info"]["type"], "sink", "{both}");
    assert_eq!(
        get(&addr, "/connectors?expand=bogus").await,
        (200, serde_json::json!({ "sink": {} }))
    );
    let (status, body) = get(&addr, "/no/such/route").await;
    assert_eq!(
        (status, body["error_code"].clone()),
        (404, serde_json::json!(404))
    );
    let (status, body) = send(reqwest::Method::DELETE, &addr, "/connectors", None).await;
    assert_eq!(
        (status, body["error_code"].clone()),
        (405, serde_json::json!(405))
    );
    wait_until("the first 600 committed", 90, &sink, || async {
        committed(&addr, "sink").await == 600
    })
    .await;
    let (_, st) = get(&addr, "/connectors/sink/status").await;
    assert_eq!(st["connector"]["state"], "RUNNING");
    assert_eq!(st["tasks"][0]["state"], "RUNNING");
    assert_eq!(
        st["tasks"][0]["assigned_partitions"]
            .as_array()
            .map(Vec::len),
        Some(12),
        "{st}"
    );
    assert_eq!(st["ready"], true);

    // Paused: new records are not consumed; lag grows; nothing is committed or stored.
    assert_eq!(put(&addr, "/connectors/sink/pause").await, 202);
    let (_, st) = get(&addr, "/connectors/sink/status").await;
    assert_eq!(st["connector"]["state"], "PAUSED");
    assert_eq!(
        get(&addr, "/readyz").await.0,
        200,
        "a paused connector is still ready"
    );
    produce_clean(&clean, second).await;
    wait_until(
        "the lag metric shows the 600 new records",
        30,
        &sink,
        || async {
            wxstream_tests::metric_sum(
                &metrics_text(&addr).await,
                "wxstream_sink_consumer_lag_records",
            ) >= 600.0
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        committed(&addr, "sink").await,
        600,
        "nothing consumed while paused"
    );
    assert_eq!(row_count(&database).await, 600);

    // Resumed: it catches up.
    assert_eq!(put(&addr, "/connectors/sink/resume").await, 202);
    assert_eq!(
        get(&addr, "/connectors/sink/status").await.1["connector"]["state"],
        "RUNNING"
    );
    wait_until("everything committed after resume", 90, &sink, || async {
        committed(&addr, "sink").await == 1_200
    })
    .await;
    assert_eq!(row_count(&database).await, 1_200);
    wait_until("the lag metric back to 0", 30, &sink, || async {
        wxstream_tests::metric_sum(
            &metrics_text(&addr).await,
            "wxstream_sink_consumer_lag_records",
        ) == 0.0
    })
    .await;
    let scrape = metrics_text(&addr).await;
    assert_promtool_accepts(&scrape);

    stop_rewind_and_resume(&addr, &sink, &clean, &database).await;
    assert_eq!(
        sink.terminate(Duration::from_secs(30)).map(|s| s.success()),
        Some(true),
        "SIGTERM drains and exits 0"
    );
    drop_database(&database).await;
}

async fn send(
    method: reqwest::Method,
    addr: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = reqwest::Client::new().request(method, format!("http://{addr}{path}"));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let reply = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    let status = reply.status().as_u16();
    (status, reply.json().await.unwrap_or(Value::Null))
}

/// Connect's stop and offsets (KIP-875) on the sink of 1,200 committed messages: offsets change
/// only once STOPPED; a stopped stage leaves its group, so its offsets can be moved back (one
/// partition to 0) and the group deleted; resumed, it reads again from there and the stores
/// stay exact (upserts).
async fn stop_rewind_and_resume(addr: &str, sink: &WxProcess, clean: &str, database: &str) {
    use reqwest::Method;
    let to_zero = serde_json::json!({ "offsets": [{
        "partition": { "kafka_topic": clean, "kafka_partition": 0 },
        "offset": { "kafka_offset": 0 },
    }]});
    let (status, body) = send(
        Method::PATCH,
        addr,
        "/connectors/sink/offsets",
        Some(to_zero.clone()),
    )
    .await;
    assert_eq!(status, 400, "offsets change only once stopped: {body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("STOPPED"),
        "{body}"
    );
    assert_eq!(
        send(Method::PUT, addr, "/connectors/sink/stop", None)
            .await
            .0,
        204
    );
    let (_, st) = get(addr, "/connectors/sink/status").await;
    assert_eq!(st["connector"]["state"], "STOPPED", "{st}");
    assert_eq!(
        st["tasks"],
        serde_json::json!([]),
        "a stopped connector has no task"
    );
    assert_eq!(
        get(addr, "/connectors/sink/tasks").await.1,
        serde_json::json!([])
    );
    assert_eq!(
        get(addr, "/readyz").await.0,
        200,
        "stopped by an operator is not a failure"
    );
    let (status, body) = send(
        Method::PATCH,
        addr,
        "/connectors/sink/offsets",
        Some(serde_json::json!({ "offsets": [{ "partition": { "kafka_topic": "elsewhere", "kafka_partition": 0 }, "offset": null }] })),
    )
    .await;
    assert_eq!(status, 400, "another topic is refused: {body}");
    let (status, body) = send(
        Method::PATCH,
        addr,
        "/connectors/sink/offsets",
        Some(to_zero),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (_, offsets) = get(addr, "/connectors/sink/offsets").await;
    let first = offsets["offsets"]
        .as_array()
        .expect("offsets")
        .iter()
        .find(|o| o["partition"]["kafka_partition"] == 0)
        .map(|o| o["offset"]["kafka_offset"].clone());
    assert_eq!(first, Some(serde_json::json!(0)), "{offsets}");
    let rewound = committed(addr, "sink").await;
    assert!(rewound < 1_200, "partition 0 moved back: {rewound}");

    resume_and_catch_up(addr, sink, database, "the rewind").await;

    // DELETE forgets the group: stopped again, its offsets are gone; resumed, it reads the
    // topic again from the start.
    assert_eq!(
        send(Method::PUT, addr, "/connectors/sink/stop", None)
            .await
            .0,
        204
    );
    let (status, body) = send(Method::DELETE, addr, "/connectors/sink/offsets", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        committed(addr, "sink").await,
        0,
        "the group's offsets are gone"
    );
    resume_and_catch_up(addr, sink, database, "the reset").await;
}

/// Resumes the stopped sink and waits until it has committed all 1,200 messages again, read
/// again and stored once.
async fn resume_and_catch_up(addr: &str, sink: &WxProcess, database: &str, after: &str) {
    let resumed = send(reqwest::Method::PUT, addr, "/connectors/sink/resume", None).await;
    assert_eq!(resumed.0, 202, "{}", resumed.1);
    wait_until(
        &format!("everything committed again after {after}"),
        90,
        sink,
        || async { committed(addr, "sink").await == 1_200 },
    )
    .await;
    assert_eq!(row_count(database).await, 1_200, "read again, stored once");
}

/// Metric names an expression or query text refers to (`wxstream_*`, without the histogram
/// suffixes).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("wxstream_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        // Stage and metric names, not prefixes like `wxstream_decrypt` in prose.
        if base.matches('_').count() >= 2 {
            names.insert(base.to_string());
        }
        rest = &tail[end..];
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_topology_in_one_process_exports_valid_metrics_and_logs_no_secrets() {
    let Names {
        prefix,
        database,
        index,
    } = Names::create("ops-all", "wxs").await;
    // The simulator: 2 corps, every msgtype, every kind of poison (version 99's key withheld).
    let keys = SimKeys::generate(&[1, 99]).expect("keys");
    let dir = tempfile::tempdir().expect("tmp");
    let key_dir = dir.path().join("keys");
    keys.write_private(&key_dir, |v| v != 99).expect("keys");
    let corps: Vec<String> = (0..2).map(|i| format!("wwall{i}")).collect();
    let feeds = sim_feeds(
        &keys,
        &corps,
        900,
        1_500,
        (now_ms() - 30 * 60_000, 500),
        FaultRates {
            corrupt_ciphertext: 0.01,
            unknown_key_version: 0.01,
            invalid_json: 0.01,
            control_chars: 0.01,
        },
    );
    let sim = Simulator::new(
        ServerConfig {
            // Often enough that the error metrics exist by the time the test reads them.
            transient_error_rate: 0.3,
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
        "  page_limit: 500\n  poll_interval: 1s\n",
    );
    write_decrypt_connector(
        dir.path(),
        &key_dir,
        &format!("  group_id: {prefix}decrypt\n"),
    );
    // The sink reaches MariaDB and the search server through proxies, to fail them mid-run.
    let (db_proxy, search_proxy) = wxstream_tests::pipeline::write_sink_connector_behind_proxies(
        dir.path(),
        &database,
        &index,
    )
    .await;
    write_stats_connector(dir.path(), &format!("  group_id: {prefix}stats\n"));
    wxstream_tests::media::write_media_connector(
        dir.path(),
        &url,
        &secrets,
        &database,
        &format!("{prefix}/"),
        "",
    );

    let addr = format!("127.0.0.1:{}", free_port());
    let b = brokers();
    let args = wx_args(dir.path(), &prefix, &["run"]);
    let log = dir.path().join("run.log");
    // JSON logs at debug level for wxstream's own crates: the most it ever writes.
    let mut run = WxProcess::start_env(
        &args,
        &log,
        &addr,
        &[
            ("WXSTREAM_LOG__FORMAT", "json"),
            (
                "RUST_LOG",
                "info,wx_ingest=debug,wx_decrypt=debug,wx_sink=debug,wx_stats=debug,wx_media=debug,wxstream=debug",
            ),
        ],
    );
    let truth: Vec<wx_sim::Truth> = sim.truth().into_iter().flat_map(|c| c.messages).collect();
    let good: BTreeSet<&str> = truth
        .iter()
        .filter(|t| !t.poison)
        .map(|t| t.msgid.as_str())
        .collect();
    // The stores fail for a while, so their error paths log too: MariaDB unreachable, then the
    // search endpoint answering 429 and 503.
    wait_until("rows stored", 300, &run, || async {
        row_count(&database).await >= 200
    })
    .await;
    db_proxy.set_down(true);
    tokio::time::sleep(Duration::from_secs(5)).await;
    db_proxy.set_down(false);
    search_proxy.set_faulty(true);
    tokio::time::sleep(Duration::from_secs(5)).await;
    search_proxy.set_faulty(false);
    wait_until("every good message stored", 300, &run, || async {
        row_count(&database).await >= good.len() as i64
    })
    .await;
    wait_until("windows emitted", 120, &run, || async {
        wxstream_tests::metric_sum(
            &metrics_text(&addr).await,
            "wxstream_stats_records_emitted_total",
        ) > 0.0
    })
    .await;
    // Two bad records on the clean topic, so the failure paths export their metrics too: one
    // that does not decode (the sink parks it) and one three hours late (stats parks it).
    let clean_topic = format!("{prefix}wxstream.clean");
    let mut late: wx_codec::ChatMessage =
        wxstream_tests::read_records::<wx_codec::ChatMessage>(&b, &clean_topic)
            .into_iter()
            .map(|(_, m)| m)
            .find(|m| m.action == "send")
            .expect("a clean message");
    late.msgid = format!("{}-late", late.msgid);
    late.msgtime -= 3 * 3_600_000;
    produce_clean(&clean_topic, [&late]).await;
    wx_kafka::Producer::new(
        &KafkaConfig::new(brokers()),
        "wxstream-tests",
        Duration::from_secs(30),
    )
    .expect("producer")
    .send(&clean_topic, None, b"garbage", b"not a framed record")
    .await
    .expect("send garbage");
    // A forced codec failure on a record that carries message text: a real clean record, framed
    // and with its schema id, cut in the middle of its text. The sink and stats fail to decode
    // it, log that and park it; the text must appear in neither the logs nor the causes.
    let victim = wxstream_tests::read_records::<wx_codec::ChatMessage>(&b, &clean_topic)
        .into_iter()
        .map(|(_, m)| m)
        .find(|m| m.text.as_ref().is_some_and(|t| t.chars().count() >= 12))
        .expect("a clean message with text");
    let victim_text = victim.text.clone().expect("text");
    let encoded = wx_codec::Codec::fixed()
        .expect("codec")
        .encode(&victim)
        .expect("encode");
    let at = encoded
        .windows(victim_text.len())
        .position(|w| w == victim_text.as_bytes())
        .expect("the text is in the record");
    let cut = &encoded[..at + victim_text.len() / 2];
    wx_kafka::Producer::new(
        &KafkaConfig::new(brokers()),
        "wxstream-tests",
        Duration::from_secs(30),
    )
    .expect("producer")
    .send(&clean_topic, None, victim.partition_key().as_bytes(), cut)
    .await
    .expect("send the cut record");
    wait_until("the bad records parked", 60, &run, || async {
        let scrape = metrics_text(&addr).await;
        wxstream_tests::metric_sum(&scrape, "wxstream_stats_late_events_total") >= 1.0
            && wxstream_tests::metric_sum(&scrape, "wxstream_sink_dead_lettered_total") >= 2.0
            && wxstream_tests::metric_sum(&scrape, "wxstream_ingest_errors_total") >= 1.0
    })
    .await;
    wait_until("ready", 30, &run, || async {
        get(&addr, "/readyz").await.0 == 200
    })
    .await;

    // One scrape with every stage's metrics, accepted by promtool.
    let scrape = metrics_text(&addr).await;
    assert_promtool_accepts(&scrape);
    let exported: BTreeSet<String> = metric_names(&scrape);
    for stage in ["ingest", "decrypt", "sink", "stats", "media"] {
        assert!(
            exported
                .iter()
                .any(|n| n.starts_with(&format!("wxstream_{stage}_"))),
            "{stage} exports metrics"
        );
        let (status, body) = get(&addr, &format!("/connectors/{stage}/status")).await;
        assert_eq!(
            (status, &body["connector"]["state"]),
            (200, &Value::from("RUNNING")),
            "{body}"
        );
    }
    let (_, offsets) = get(&addr, "/connectors/ingest/offsets").await;
    let seqs: BTreeMap<String, i64> = offsets["offsets"]
        .as_array()
        .expect("ingest offsets")
        .iter()
        .map(|o| {
            (
                o["partition"]["corp_id"]
                    .as_str()
                    .expect("corp")
                    .to_string(),
                o["offset"]["seq"].as_i64().expect("seq"),
            )
        })
        .collect();
    assert_eq!(seqs.keys().cloned().collect::<Vec<_>>(), corps);
    // Every metric the alert rules and the dashboard use is one the stages export.
    for file in [
        "ops/prometheus/alerts.yml",
        "ops/grafana/dashboards/wxstream.json",
    ] {
        let text = std::fs::read_to_string(repo_root().join(file)).expect("file");
        let used = metric_names(&text);
        assert!(!used.is_empty(), "{file} uses wxstream metrics");
        let unknown: Vec<&String> = used.difference(&exported).collect();
        assert!(
            unknown.is_empty(),
            "{file} uses metrics nobody exports: {unknown:?}"
        );
    }

    assert_eq!(
        run.terminate(Duration::from_secs(60)).map(|s| s.success()),
        Some(true),
        "SIGTERM drains every stage and exits 0"
    );

    // The logs: JSON, one object per line, with neither message text nor key material.
    let text = std::fs::read_to_string(&log).expect("log");
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() > 20, "the run logged its events");
    for line in &lines {
        let event: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(
            event["level"].is_string() && event["fields"].is_object(),
            "{line}"
        );
    }
    let mut forbidden: Vec<String> = secrets.iter().map(|(_, s)| s.clone()).collect();
    for entry in std::fs::read_dir(&key_dir).expect("keys") {
        let pem = std::fs::read_to_string(entry.expect("key").path()).expect("pem");
        forbidden.extend(
            pem.lines()
                .filter(|l| !l.starts_with("-----") && l.len() > 20)
                .map(str::to_string),
        );
    }
    let clean: Vec<wx_codec::ChatMessage> = wxstream_tests::read_records::<wx_codec::ChatMessage>(
        &b,
        &format!("{prefix}wxstream.clean"),
    )
    .into_iter()
    .map(|(_, m)| m)
    .collect();
    let texts: BTreeSet<String> = clean
        .iter()
        .filter_map(|m| m.text.clone())
        .filter(|t| t.chars().count() >= 6)
        .collect();
    assert!(texts.len() > 100, "the feed has message texts to look for");
    forbidden.extend(texts);
    // The cut record's text, whole and the half that is in the record.
    forbidden.push(victim_text.clone());
    let half = String::from_utf8_lossy(&victim_text.as_bytes()[..victim_text.len() / 2])
        .trim_end_matches('\u{fffd}')
        .to_string();
    if half.chars().count() >= 6 {
        forbidden.push(half);
    }
    let letters = tokio::task::spawn_blocking({
        let (b, prefix) = (b.clone(), prefix.clone());
        move || wxstream_tests::e2e::Reader::new(&b, &prefix).parked()
    })
    .await
    .expect("letters");
    let causes: Vec<&str> = letters
        .iter()
        .filter(|d| d.error_class == "undecodable")
        .map(|d| d.error_message.as_str())
        .collect();
    assert!(causes.len() >= 2, "the cut record was parked: {causes:?}");
    assert!(
        causes
            .iter()
            .all(|c| !c.contains(victim_text.chars().take(4).collect::<String>().as_str())),
        "a decode cause carries the text: {causes:?}"
    );
    let leaks: Vec<&String> = forbidden
        .iter()
        .filter(|f| text.contains(f.as_str()))
        .collect();
    assert!(
        leaks.is_empty(),
        "{} secrets or message texts appear in the logs, e.g. {:?}",
        leaks.len(),
        leaks.first()
    );
    drop_database(&database).await;
}

/// Listening beyond the loopback interface needs the operations token; with it, pause, resume
/// and the connector documents require it while probes, metrics and status stay open; and a URL
/// setting's credentials are never shown (nor logged).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operations_endpoint_beyond_loopback_requires_a_token_and_never_shows_credentials() {
    let Names {
        prefix,
        database,
        index,
    } = Names::create("ops-auth", "wxs").await;
    let dir = tempfile::tempdir().expect("tmp");
    let search =
        wxstream_tests::stack_setting("WXSTACK_ES_URL").replace("://", "://elastic:hunter2@");
    write_sink_connector(
        dir.path(),
        &database,
        &index,
        Some(("{env: WXSTACK_MYSQL_URL}", &search)),
    );
    let args = wx_args(dir.path(), &prefix, &["run", "--only", "sink"]);
    let port = free_port();
    let everywhere = format!("0.0.0.0:{port}");

    let mut refused = WxProcess::start_with(&args, &dir.path().join("refused.log"), &everywhere);
    let status = refused
        .wait_exit(Duration::from_secs(60))
        .expect("a worker reachable from other hosts without a token stops");
    assert!(!status.success());
    assert!(
        refused.log_tail().contains("ops_token"),
        "{}",
        refused.log_tail()
    );

    // A token too short to guard anything stops the worker too, without showing it.
    let mut short = WxProcess::start_env(
        &args,
        &dir.path().join("short.log"),
        &everywhere,
        &[
            ("WXSTREAM_OPS_TOKEN__ENV", "WX_TEST_OPS_TOKEN"),
            ("WX_TEST_OPS_TOKEN", "letmein"),
        ],
    );
    let status = short
        .wait_exit(Duration::from_secs(60))
        .expect("a worker with a 7-character token stops");
    assert!(!status.success());
    assert!(
        short
            .log_tail()
            .contains("ops_token has 7 characters; use at least 16")
            && !short.log_tail().contains("letmein"),
        "{}",
        short.log_tail()
    );

    // Users as Connect's tools authenticate: htpasswd lines, bcrypt only.
    let mut md5_users = WxProcess::start_env(
        &args,
        &dir.path().join("md5.log"),
        &everywhere,
        &[
            ("WXSTREAM_OPS_USERS__ENV", "WX_TEST_OPS_USERS"),
            (
                "WX_TEST_OPS_USERS",
                "alice:$apr1$x3Zr8pUw$e1Yyc5h1Tq0Yq7w9qg0pA/",
            ),
        ],
    );
    let status = md5_users
        .wait_exit(Duration::from_secs(60))
        .expect("a worker with an MD5 htpasswd line stops");
    assert!(!status.success());
    assert!(
        md5_users
            .log_tail()
            .contains("line 1 (user alice): not a bcrypt hash")
            && !md5_users.log_tail().contains("e1Yyc5h1"),
        "{}",
        md5_users.log_tail()
    );

    let token = "s3cret-ops-token";
    let users = format!(
        "# operators\nalice:{}\n",
        bcrypt::hash("alice-password", 4).expect("bcrypt")
    );
    let sink = WxProcess::start_env(
        &args,
        &dir.path().join("sink.log"),
        &everywhere,
        &[
            ("WXSTREAM_OPS_TOKEN__ENV", "WX_TEST_OPS_TOKEN"),
            ("WX_TEST_OPS_TOKEN", token),
            ("WXSTREAM_OPS_USERS__ENV", "WX_TEST_OPS_USERS"),
            ("WX_TEST_OPS_USERS", &users),
        ],
    );
    let addr = format!("127.0.0.1:{port}");
    wait_until("/readyz answers 200 without a token", 60, &sink, || async {
        reqwest::get(format!("http://{addr}/readyz"))
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    let http = reqwest::Client::new();
    let call = |method: reqwest::Method, path: &str, bearer: Option<&str>| {
        let mut request = http.request(method, format!("http://{addr}{path}"));
        if let Some(b) = bearer {
            request = request.bearer_auth(b);
        }
        request.send()
    };
    use reqwest::Method;
    for path in [
        "/metrics",
        "/livez",
        "/connectors",
        "/connectors/sink/status",
        "/connectors/sink/offsets",
    ] {
        let status = call(Method::GET, path, None).await.expect(path).status();
        assert_eq!(status, 200, "{path} stays open on the loopback interface");
    }
    // From another host (this machine's own non-loopback address), reads of status and
    // offsets need credentials too; probes and metrics stay open.
    let outside = format!("{}:{port}", non_loopback_address());
    for (path, expected) in [
        ("/metrics", 200),
        ("/readyz", 200),
        ("/connectors", 401),
        ("/connectors/sink/status", 401),
        ("/connectors/sink/offsets", 401),
    ] {
        let status = http
            .get(format!("http://{outside}{path}"))
            .send()
            .await
            .expect(path)
            .status();
        assert_eq!(status, expected, "{path} from {outside}");
    }
    let with_token = http
        .get(format!("http://{outside}/connectors/sink/status"))
        .bearer_auth(token)
        .send()
        .await
        .expect("status");
    assert_eq!(with_token.status(), 200, "from another host with the token");
    for (method, path) in [
        (Method::PUT, "/connectors/sink/pause"),
        (Method::PUT, "/connectors/sink/resume"),
        (Method::PUT, "/connectors/sink/stop"),
        (Method::POST, "/connectors/sink/restart"),
        (Method::GET, "/connectors/sink"),
        (Method::GET, "/connectors/sink/config"),
        (Method::PATCH, "/connectors/sink/offsets"),
        (Method::GET, "/admin/loggers"),
        (Method::GET, "/connectors?expand=info"),
    ] {
        for bearer in [None, Some("wrong-token-of-equal-len")] {
            let status = call(method.clone(), path, bearer)
                .await
                .expect(path)
                .status();
            assert_eq!(status, 401, "{method} {path} with {bearer:?}");
        }
    }
    let paused = call(Method::PUT, "/connectors/sink/pause", Some(token))
        .await
        .expect("pause");
    assert_eq!(paused.status(), 202);
    // Basic auth, as kcctl and Connect UIs send it.
    for (password, expected) in [("wrong-password", 401), ("alice-password", 202)] {
        let status = http
            .put(format!("http://{addr}/connectors/sink/pause"))
            .basic_auth("alice", Some(password))
            .send()
            .await
            .expect("pause")
            .status();
        assert_eq!(status, expected, "Basic alice:{password}");
    }
    let resumed = call(Method::PUT, "/connectors/sink/resume", Some(token))
        .await
        .expect("resume");
    assert_eq!(resumed.status(), 202);
    let config = call(Method::GET, "/connectors/sink/config", Some(token))
        .await
        .expect("config");
    assert_eq!(config.status(), 200);
    // Offsets with the token; many at once cannot multiply the Kafka clients: one read runs,
    // the others are told to come back (`../shared/reviews/audit-2026-12.md` X1).
    let mut reads = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let request = http
            .get(format!("http://{addr}/connectors/sink/offsets"))
            .bearer_auth(token);
        reads.spawn(async move { request.send().await.expect("offsets").status().as_u16() });
    }
    let statuses: Vec<u16> = reads.join_all().await;
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429) && statuses.contains(&429),
        "one offsets read at a time: {statuses:?}"
    );
    let config = config.text().await.expect("body");
    assert!(
        config.contains("://***@") && !config.contains("hunter2"),
        "the search URL's credentials are redacted: {config}"
    );

    // A store failing with its own error text (MySQL names the database): the open routes
    // say which store fails, the token shows why (audit X4).
    drop_database(&database).await;
    let messages = clean_messages("wwopsauth", 5, now_ms(), 1_000);
    produce_clean(&format!("{prefix}wxstream.clean"), &messages).await;
    let failing = |bearer: Option<&'static str>| {
        let call = &call;
        async move {
            let mut texts = Vec::new();
            for path in [
                "/readyz",
                "/connectors/sink/status",
                "/connectors?expand=status",
            ] {
                let response = call(Method::GET, path, bearer).await.expect(path);
                texts.push(response.text().await.expect("body"));
            }
            texts
        }
    };
    wait_until(
        "the open /readyz names the failing store",
        90,
        &sink,
        || async { failing(None).await[0].contains("mysql is failing") },
    )
    .await;
    for (text, path) in failing(None)
        .await
        .iter()
        .zip(["/readyz", "status", "expand=status"])
    {
        assert!(
            text.contains("mysql is failing (the cause is shown with the operations token)")
                && !text.contains(&database),
            "without the token {path} names the store, not its error: {text}"
        );
    }
    for (text, path) in
        failing(Some(token))
            .await
            .iter()
            .zip(["/readyz", "status", "expand=status"])
    {
        assert!(
            text.contains(&database),
            "with the token {path} shows MySQL's error: {text}"
        );
    }
    drop(sink);
    for log in ["sink.log", "refused.log"] {
        let text = std::fs::read_to_string(dir.path().join(log)).expect("log");
        assert!(!text.contains("hunter2"), "{log} shows a URL's password");
    }
}

/// This machine's address on a non-loopback interface (a request to it comes from "another
/// host" as the operations endpoint sees it).
fn non_loopback_address() -> std::net::IpAddr {
    // No packet is sent: connecting a UDP socket only picks the interface a route leads out of
    // (documentation and private addresses, whichever this machine has a route to).
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").expect("udp");
    let routed = ["203.0.113.1:9", "192.0.2.1:9", "10.0.0.1:9", "172.16.0.1:9"]
        .iter()
        .any(|target| socket.connect(target).is_ok());
    assert!(routed, "this test needs a route off the machine");
    let ip = socket.local_addr().expect("local address").ip();
    assert!(
        !ip.is_loopback() && !ip.is_unspecified(),
        "this test needs a non-loopback interface; found only {ip}"
    );
    ip
}

/// The connector's state on the worker at `addr`.
async fn state_on(addr: &str) -> Value {
    get(addr, "/connectors/sink/status").await.1["connector"]["state"].clone()
}

/// Two sink workers (one consumer group) started on the same topology, each ready.
async fn two_workers(dir: &std::path::Path, prefix: &str, round: u32) -> [(WxProcess, String); 2] {
    let args = wx_args(dir, prefix, &["run"]);
    let start = |name: &str| {
        let addr = format!("127.0.0.1:{}", free_port());
        let log = dir.join(format!("{name}-{round}.log"));
        (WxProcess::start_with(&args, &log, &addr), addr)
    };
    let workers = [start("a"), start("b")];
    for (process, addr) in &workers {
        wait_until("a worker ready", 90, process, || async {
            reqwest::get(format!("http://{addr}/readyz"))
                .await
                .is_ok_and(|r| r.status() == 200)
        })
        .await;
    }
    workers
}

/// Kafka Connect's pause reaches every worker of a connector and lasts: two sink workers share
/// the control topic; a pause through A stops B's consumption too and outlasts a restart of
/// both; a resume through B starts both again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_through_one_worker_stops_every_worker_and_outlasts_their_restarts() {
    let Names {
        prefix,
        database,
        index,
    } = Names::create("ops-two", "wxt2").await;
    let messages = clean_messages("wwtwo", 1_200, now_ms() - 86_400_000, 1_000);
    let (first, second) = messages.split_at(600);
    let clean = format!("{prefix}wxstream.clean");
    produce_clean(&clean, first).await;
    let dir = tempfile::tempdir().expect("tmp");
    write_sink_connector(dir.path(), &database, &index, None);

    let [(a, addr_a), (b, addr_b)] = two_workers(dir.path(), &prefix, 1).await;
    wait_until("the first 600 committed", 90, &a, || async {
        committed(&addr_a, "sink").await == 600
    })
    .await;
    // Either worker's status shows the connector's two tasks, one per worker.
    wait_until("both workers' tasks in A's status", 30, &a, || async {
        let (_, st) = get(&addr_a, "/connectors/sink/status").await;
        let workers: BTreeSet<String> = st["tasks"]
            .as_array()
            .map(|t| {
                t.iter()
                    .filter_map(|t| t["worker_id"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        workers.len() == 2
    })
    .await;

    assert_eq!(put(&addr_a, "/connectors/sink/pause").await, 202);
    wait_until("B paused by A's pause", 15, &b, || async {
        state_on(&addr_b).await == "PAUSED"
    })
    .await;
    produce_clean(&clean, second).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        committed(&addr_b, "sink").await,
        600,
        "neither worker consumes while paused"
    );

    // Both restarted: still paused, nothing consumed.
    for mut worker in [a, b] {
        assert!(
            worker.terminate(Duration::from_secs(30)).is_some(),
            "a worker exits on SIGTERM"
        );
    }
    let [(a, addr_a), (b, addr_b)] = two_workers(dir.path(), &prefix, 2).await;
    assert_eq!(
        state_on(&addr_a).await,
        "PAUSED",
        "the pause outlasts a restart"
    );
    assert_eq!(
        state_on(&addr_b).await,
        "PAUSED",
        "the pause outlasts a restart"
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        committed(&addr_a, "sink").await,
        600,
        "still nothing consumed"
    );
    assert_eq!(row_count(&database).await, 600);

    // Resumed through B: both run, and everything is consumed.
    assert_eq!(put(&addr_b, "/connectors/sink/resume").await, 202);
    wait_until("A resumed by B's resume", 15, &a, || async {
        state_on(&addr_a).await == "RUNNING"
    })
    .await;
    wait_until("everything committed after the resume", 90, &b, || async {
        committed(&addr_b, "sink").await == 1_200
    })
    .await;
    assert_eq!(row_count(&database).await, 1_200);
    drop((a, b));
    drop_database(&database).await;
}
