//! Registry mode against a real schema registry (Apicurio Registry 3.3 from the local stack,
//! standing in for Confluent Schema Registry through its Confluent-compatible API): the whole
//! pipeline writes with the registry's ids, and
//! - every subject is named after its topic (`<topic>-value`) and holds the schema as written:
//!   the registry gives back `logicalType`, `doc` and the rest (it was `canonical_form()`, which
//!   strips them);
//! - a clean record written with another version of the schema (a field added with a default,
//!   registered by "another build") is stored by the sink: ids read are resolved;
//! - a third-party reader (Python confluent-kafka's `AvroDeserializer` with its
//!   `SchemaRegistryClient`, nothing from `schemas/`) decodes the clean topic (every msgid MySQL
//!   holds) and the stats topic (`docs/bi/read_stats.py --registry`: every minute equals MySQL's
//!   `COUNT(DISTINCT msgid)`).

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::{Duration, Instant};

use apache_avro::Schema;
use apache_avro::types::Value as Avro;
use serde_json::{Value, json};
use sqlx::Row;
use wx_codec::{ChatMessage, RecordKind};
use wxstream_tests::e2e::Pipeline;
use wxstream_tests::pipeline::{
    clean_messages, drop_database, minute_totals, mysql, mysql_truth, read_stats_py, row_count,
};
use wxstream_tests::{
    brokers, now_ms, produce_values, python, repo_root, run_ok_text, stack_setting, wait_until,
};

fn registry() -> String {
    stack_setting("WXSTACK_REGISTRY_URL")
}

async fn registry_get(path: &str) -> Value {
    let url = format!("{}{path}", registry());
    let reply = reqwest::get(&url).await.expect("registry");
    assert!(reply.status().is_success(), "GET {url}: {}", reply.status());
    reply.json().await.expect("json")
}

/// "Another build" registers the next version of the clean schema under `subject` (a field
/// `tenant` with the default "main"): its id and schema.
async fn register_next_clean_version(subject: &str) -> (u32, Schema) {
    let mut v2: Value = serde_json::from_str(RecordKind::ChatMessage.schema_text()).expect("v2");
    v2["fields"]
        .as_array_mut()
        .expect("fields")
        .push(json!({"name": "tenant", "type": "string", "default": "main"}));
    let reply: Value = reqwest::Client::new()
        .post(format!("{}/subjects/{subject}/versions", registry()))
        .header("content-type", "application/vnd.schemaregistry.v1+json")
        .body(json!({"schema": v2.to_string()}).to_string())
        .send()
        .await
        .expect("register v2")
        .json()
        .await
        .expect("id");
    let id = u32::try_from(reply["id"].as_u64().expect("id")).expect("u32");
    (id, Schema::parse_str(&v2.to_string()).expect("v2 schema"))
}

/// `message` as that build writes it: `tenant` "acme", framed with `id`.
fn written_with_next_version(message: &ChatMessage, id: u32, v2: &Schema) -> Vec<u8> {
    let mut value = apache_avro::to_value(message).expect("value");
    let Avro::Record(fields) = &mut value else {
        panic!("record")
    };
    fields.push(("tenant".into(), Avro::String("acme".into())));
    let mut framed = vec![0];
    framed.extend(id.to_be_bytes());
    framed.extend(
        apache_avro::to_avro_datum(v2, value.resolve(v2).expect("v2 value")).expect("datum"),
    );
    framed
}

/// The JSON lines a Python script printed.
fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_registry_keeps_the_schemas_whole_resolves_every_version_and_serves_a_third_party_reader()
 {
    let mut pipeline = Pipeline::start("registry", &brokers(), 2, 400).await;
    pipeline.set_env("WXSTREAM_SCHEMA_REGISTRY_URL", &registry());
    let processes: Vec<_> = pipeline
        .stages()
        .iter()
        .map(|s| pipeline.start_stage(s, ""))
        .collect();
    let prefix = pipeline.names.prefix.clone();
    let database = pipeline.names.database.clone();
    let (expected, _poison) = pipeline.expected();
    wait_until(
        "the sink stores every message",
        240,
        &processes[2],
        || async { row_count(&database).await >= expected.len() as i64 },
    )
    .await;

    // Subjects by topic, each holding this build's schema as written (the registry serialises
    // it again, compactly: compared as JSON).
    let kinds = [
        ("wxstream.raw", RecordKind::RawBatch),
        ("wxstream.clean", RecordKind::ChatMessage),
        ("wxstream.dead-letter", RecordKind::DeadLetter),
        ("wxstream.stats", RecordKind::GroupWindowCount),
    ];
    for (topic, kind) in kinds {
        let latest =
            registry_get(&format!("/subjects/{prefix}{topic}-value/versions/latest")).await;
        let text = latest["schema"].as_str().expect("schema text");
        let registered: Value = serde_json::from_str(text).expect("schema json");
        let written: Value = serde_json::from_str(kind.schema_text()).expect("schema json");
        assert_eq!(
            registered, written,
            "{topic}: the registry holds another schema"
        );
    }
    let stats = registry_get(&format!(
        "/subjects/{prefix}wxstream.stats-value/versions/latest"
    ))
    .await;
    let text = stats["schema"].as_str().expect("text");
    assert!(
        text.contains("\"logicalType\":\"timestamp-millis\""),
        "{text}"
    );

    // "Another build" registers the next version of the clean schema and writes with it.
    let clean_subject = format!("{prefix}wxstream.clean-value");
    let (v2_id, v2_schema) = register_next_clean_version(&clean_subject).await;
    let v1_id = u32::try_from(
        registry_get(&format!("/subjects/{clean_subject}/versions/1")).await["id"]
            .as_u64()
            .expect("v1 id"),
    )
    .expect("u32");
    assert_ne!(v1_id, v2_id);
    let message = clean_messages("wwreg", 1, now_ms() - 30_000, 50).remove(0);
    let framed = written_with_next_version(&message, v2_id, &v2_schema);
    produce_values(
        &format!("{prefix}wxstream.clean"),
        [(message.partition_key(), framed)],
    )
    .await;
    let want_rows = expected.len() as i64 + 1;
    wait_until(
        "the sink stores the v2 record",
        120,
        &processes[2],
        || async { row_count(&database).await >= want_rows },
    )
    .await;
    let pool = mysql(&database).await;
    let stored: i64 = sqlx::query("SELECT COUNT(*) FROM messages WHERE msgid = ?")
        .bind(&message.msgid)
        .fetch_one(&pool)
        .await
        .expect("count")
        .get(0);
    assert_eq!(stored, 1, "the record written with v2 is stored");

    // The clean topic, decoded in Python with the registry alone: every msgid MySQL holds, in
    // both versions' ids.
    let out = run_ok_text(
        Command::new(python())
            .arg(repo_root().join("tests/python/read_with_registry.py"))
            .args([&brokers(), &format!("{prefix}wxstream.clean"), &registry()]),
        "read_with_registry.py",
    );
    let records = json_lines(&out);
    let ids: BTreeSet<u64> = records
        .iter()
        .map(|r| r["schema_id"].as_u64().expect("id"))
        .collect();
    assert_eq!(ids, BTreeSet::from([u64::from(v1_id), u64::from(v2_id)]));
    let decoded: BTreeSet<String> = records
        .iter()
        .map(|r| r["value"]["msgid"].as_str().expect("msgid").to_string())
        .collect();
    let in_mysql: BTreeSet<String> = sqlx::query("SELECT msgid FROM messages")
        .fetch_all(&pool)
        .await
        .expect("msgids")
        .iter()
        .map(|r| String::from_utf8(r.get::<Vec<u8>, _>(0)).expect("utf-8"))
        .collect();
    assert_eq!(decoded, in_mysql);
    let the_v2 = records
        .iter()
        .find(|r| r["value"]["msgid"] == message.msgid.as_str())
        .expect("the v2 record");
    assert_eq!(the_v2["value"]["tenant"], "acme");

    // The stats topic through the BI reader with the registry (no schemas/ at all): each
    // 1-minute window equals MySQL's count, once the last windows closed.
    let truth: BTreeMap<String, i64> = mysql_truth(&database)
        .await
        .into_iter()
        .map(|(k, by_type)| (k, by_type.values().sum()))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let records = read_stats_py(
            &format!("{prefix}wxstream.stats"),
            &["--registry", &registry(), "--schemas", "/nonexistent"],
        );
        let minutes = minute_totals(&records);
        if minutes == truth {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} minutes equal MySQL's counts through the registry",
            truth
                .iter()
                .filter(|(k, v)| minutes.get(*k) == Some(v))
                .count(),
            truth.len()
        );
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    drop(processes);
    drop_database(&database).await;
}

/// A TCP relay to the stack's registry that can be cut (open connections closed, new ones
/// closed at once) and mended.
struct Relay {
    proxy: wxstream_tests::TcpProxy,
}

impl Relay {
    async fn start() -> Relay {
        let upstream = reqwest::Url::parse(&registry()).expect("registry URL");
        let target = format!(
            "{}:{}",
            upstream.host_str().expect("host"),
            upstream.port_or_known_default().expect("port")
        );
        Relay {
            proxy: wxstream_tests::TcpProxy::start(target).await,
        }
    }

    fn url(&self) -> String {
        let path = reqwest::Url::parse(&registry())
            .expect("URL")
            .path()
            .to_string();
        format!("http://127.0.0.1:{}{path}", self.proxy.addr.port())
    }

    /// Closed: every open connection cut (a pooled one must not outlive the cut) and new ones
    /// refused.
    fn set_open(&self, open: bool) {
        self.proxy.set_down(!open);
    }
}

/// A registry that cannot answer is the store being unwell, not the record being bad: a record
/// of an id the sink has not met waits (shown in `/readyz`, nothing parked) and is stored once
/// the registry answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_whose_schema_the_registry_cannot_give_now_waits_and_is_never_parked() {
    let names = wxstream_tests::pipeline::Names::create("regdown", "wxrd").await;
    let relay = Relay::start().await;
    let dir = tempfile::tempdir().expect("tmp");
    wxstream_tests::pipeline::write_sink_connector(dir.path(), &names.database, &names.index, None);
    let listen = format!("127.0.0.1:{}", wxstream_tests::free_port());
    let relay_url = relay.url();
    let sink = wxstream_tests::WxProcess::start_env(
        &wxstream_tests::wx_args(dir.path(), &names.prefix, &["run", "--only", "sink"]),
        &dir.path().join("sink.log"),
        &listen,
        &[("WXSTREAM_SCHEMA_REGISTRY_URL", relay_url.as_str())],
    );
    wait_until("the sink is ready", 120, &sink, || async {
        matches!(wxstream_tests::readyz(&listen).await, Some((200, _)))
    })
    .await;

    // A second version of the clean schema, registered by "another build"; the relay cut.
    let clean_subject = format!("{}wxstream.clean-value", names.prefix);
    let (v2_id, v2_schema) = register_next_clean_version(&clean_subject).await;
    relay.set_open(false);
    let message = clean_messages("wwregdown", 1, now_ms() - 30_000, 50).remove(0);
    let framed = written_with_next_version(&message, v2_id, &v2_schema);
    produce_values(
        &format!("{}wxstream.clean", names.prefix),
        [(message.partition_key(), framed)],
    )
    .await;

    // Not ready, naming the registry; nothing parked, nothing stored.
    wait_until("the sink to say it waits on the registry", 60, &sink, || async {
        matches!(
            wxstream_tests::readyz(&listen).await,
            Some((status, body)) if status != 200 && body.to_string().contains("schema_registry")
        )
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let letters = {
        let kafka = wxstream_tests::stores::kafka_config(&brokers());
        let topic = format!("{}wxstream.dead-letter", names.prefix);
        tokio::task::spawn_blocking(move || {
            wx_kafka::read_topic(&kafka, &topic, Duration::from_secs(30)).expect("letters")
        })
        .await
        .expect("join")
    };
    assert!(letters.is_empty(), "{} records parked", letters.len());
    assert_eq!(row_count(&names.database).await, 0);

    // The registry answers again: stored, ready, still nothing parked.
    relay.set_open(true);
    wait_until("the record stored", 90, &sink, || async {
        row_count(&names.database).await == 1
    })
    .await;
    wait_until("the sink ready again", 60, &sink, || async {
        matches!(wxstream_tests::readyz(&listen).await, Some((200, _)))
    })
    .await;
    let metrics = wxstream_tests::metrics_text(&listen).await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("wxstream_schema_registry_errors_total") && !l.ends_with(" 0")),
        "no registry errors counted"
    );
    drop(sink);
    drop_database(&names.database).await;
}
