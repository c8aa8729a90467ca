//! The stats topic read by the BI tool docs/bi.md describes, for real: the demo-size pipeline
//! (3 corps x 20,000 simulated messages) writes its stats, the stats stage is killed with kill -9
//! once windows are out and started again, and a real Apache Kafka Connect worker
//! (`scripts/stack connect-worker`) runs Debezium's JDBC sink connector with the exact
//! configuration of docs/bi.md into the table of docs/bi/window_counts.sql. That table, read with
//! plain SQL, must equal MySQL's `COUNT(DISTINCT msgid)` per corp, group and minute (switch
//! records excluded); docs/bi.md's dashboard queries run on it; `read_stats.py` reads the same
//! totals. Twice: the stats as `connect_json` (Connect's JSON converter, no registry), and as
//! Avro through the local stack's schema registry (Apicurio's Avro converter in Connect).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value;
use sqlx::Row;
use wxstream_tests::connect::ConnectWorker;
use wxstream_tests::e2e::Pipeline;
use wxstream_tests::pipeline::{
    drop_database, minute_totals, mysql, mysql_truth, read_stats_py, row_count,
};
use wxstream_tests::{brokers, repo_root, stack_setting, wait_until};

/// The fenced block after `marker` in docs/bi.md (its first line is the fence).
fn doc_block(marker: &str) -> String {
    let doc = std::fs::read_to_string(repo_root().join("docs/bi.md")).expect("docs/bi.md");
    let after = &doc[doc
        .find(marker)
        .unwrap_or_else(|| panic!("{marker} in docs/bi.md"))..];
    let start = after.find("```").expect("a fenced block");
    let body = &after[start..];
    let body = &body[body.find('\n').expect("fence line") + 1..];
    body[..body.find("```").expect("closing fence")].to_string()
}

/// How the stats reach Connect.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Path {
    /// `format: connect_json`, Connect's JSON converter.
    ConnectJson,
    /// `format: avro` with the schema registry, Apicurio's Avro converter.
    AvroRegistry,
}

/// docs/bi.md's connector, with this test's name, topic and database (and for Avro, docs/bi.md's
/// converter lines with the local registry).
fn connector(name: &str, topic: &str, database: &str, path: Path) -> Value {
    let mut connector: Value =
        serde_json::from_str(&doc_block("<!-- bi-jdbc-connector")).expect("connector JSON");
    connector["name"] = name.into();
    let config = connector["config"].as_object_mut().expect("config");
    if path == Path::AvroRegistry {
        let converter: Value = serde_json::from_str(&doc_block("<!-- bi-jdbc-avro-converter"))
            .expect("converter JSON");
        config.remove("value.converter.schemas.enable");
        for (key, value) in converter.as_object().expect("object") {
            config.insert(key.clone(), value.clone());
        }
        // The registry's own API, beside its Confluent-compatible one.
        let api =
            stack_setting("WXSTACK_REGISTRY_URL").replace("/apis/ccompat/v7", "/apis/registry/v2");
        config.insert("value.converter.apicurio.registry.url".into(), api.into());
    }
    config.insert("topics".into(), topic.into());
    config.insert(
        "connection.url".into(),
        format!("jdbc:mariadb://127.0.0.1:3306/{database}").into(),
    );
    config.insert("connection.username".into(), "wxstream".into());
    config.insert("connection.password".into(), "wxstream".into());
    connector
}

/// The JDBC sink's table read with plain SQL: the total of every 1-minute window, shares of a
/// window summed, keyed `corp/group/60000/<minute start ms>` like [`mysql_truth`].
async fn table_minutes(database: &str) -> BTreeMap<String, i64> {
    let pool = mysql(database).await;
    sqlx::query(
        "SELECT corp_id, group_id,
                CAST(TIMESTAMPDIFF(SECOND, '1970-01-01', window_start) * 1000 AS SIGNED),
                CAST(SUM(total) AS SIGNED)
         FROM stats_window_counts WHERE window_size_ms = 60000 AND `final`
         GROUP BY corp_id, group_id, window_start",
    )
    .fetch_all(&pool)
    .await
    .expect("the JDBC sink's table")
    .iter()
    .map(|r| {
        let text = |i: usize| String::from_utf8(r.get::<Vec<u8>, _>(i)).expect("utf-8");
        let start: i64 = r.get(2);
        (format!("{}/{}/60000/{start}", text(0), text(1)), r.get(3))
    })
    .collect()
}

async fn truth_minutes(database: &str) -> BTreeMap<String, i64> {
    mysql_truth(database)
        .await
        .into_iter()
        .map(|(k, by_type)| (k, by_type.values().sum()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_connect_jdbc_sink_fills_a_table_equal_to_mysqls_counts_across_a_kill_9_of_stats() {
    bi_through_connect("bijdbc", Path::ConnectJson).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_with_avro_through_the_schema_registry_and_its_connect_converter() {
    bi_through_connect("biavro", Path::AvroRegistry).await;
}

async fn bi_through_connect(stem: &str, path: Path) {
    let mut pipeline = Pipeline::start(stem, &brokers(), 3, 20_000).await;
    match path {
        Path::ConnectJson => pipeline.set_stats_format("connect_json"),
        Path::AvroRegistry => pipeline.set_env(
            "WXSTREAM_SCHEMA_REGISTRY_URL",
            &stack_setting("WXSTACK_REGISTRY_URL"),
        ),
    }
    let prefix = pipeline.names.prefix.clone();
    let database = pipeline.names.database.clone();
    let stats_topic = format!("{prefix}wxstream.stats");
    let mut processes: BTreeMap<&str, _> = pipeline
        .stages()
        .into_iter()
        .map(|s| (s, pipeline.start_stage(s, "")))
        .collect();

    // kill -9 of the stats stage once windows are out, and a new one.
    let kafka = wxstream_tests::stores::kafka_config(&brokers());
    wait_until("stats windows emitted", 300, &processes["stats"], || {
        let (kafka, topic) = (kafka.clone(), stats_topic.clone());
        async move {
            tokio::task::spawn_blocking(move || {
                wx_kafka::read_topic(&kafka, &topic, Duration::from_secs(30))
                    .map(|records| records.len())
                    .unwrap_or(0)
            })
            .await
            .expect("join")
                >= 50
        }
    })
    .await;
    processes.get_mut("stats").expect("stats").kill9();
    eprintln!("killed the stats stage with kill -9");
    processes.insert("stats", pipeline.start_stage("stats", ""));

    // The BI table and the connector of docs/bi.md on a real Connect worker.
    let (expected, _) = pipeline.expected();
    wait_until(
        "the sink stores every message",
        600,
        &processes["sink"],
        || async { row_count(&database).await >= expected.len() as i64 },
    )
    .await;
    let pool = mysql(&database).await;
    let ddl = std::fs::read_to_string(repo_root().join("docs/bi/window_counts.sql")).expect("sql");
    let ddl: String = ddl
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n");
    for statement in ddl.split(';').filter(|s| !s.trim().is_empty()) {
        sqlx::query(statement).execute(&pool).await.expect("BI DDL");
    }
    let worker_dir = pipeline.dir().join("connect");
    std::fs::create_dir_all(&worker_dir).expect("dir");
    let worker = ConnectWorker::start(&worker_dir, prefix.trim_end_matches('.')).await;
    let name = "wxstream-stats-to-mysql";
    let created = reqwest::Client::new()
        .post(format!("{}/connectors", worker.base))
        .json(&connector(name, &stats_topic, &database, path))
        .send()
        .await
        .expect("create the connector");
    assert_eq!(
        created.status(),
        201,
        "{}",
        created.text().await.unwrap_or_default()
    );

    // The table equals MySQL's counts, every minute of every group of every corp.
    let truth = truth_minutes(&database).await;
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let table = table_minutes(&database).await;
        if table == truth {
            break;
        }
        let status: Value = reqwest::get(format!("{}/connectors/{name}/status", worker.base))
            .await
            .expect("status")
            .json()
            .await
            .unwrap_or(Value::Null);
        assert!(
            Instant::now() < deadline,
            "{} of {} minutes in the JDBC sink's table equal MySQL's counts ({} rows there); connector {status}\n{}",
            truth
                .iter()
                .filter(|(k, v)| table.get(*k) == Some(v))
                .count(),
            truth.len(),
            table.len(),
            std::fs::read_to_string(&worker.log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    eprintln!(
        "{} minutes in the JDBC sink's table equal MySQL's counts",
        truth.len()
    );

    // docs/bi.md's dashboard queries run on that table and answer; the last one, messages per
    // corp and day, with MySQL's counts.
    let queries: String = doc_block("4. Read the views")
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n");
    let queries: Vec<String> = queries
        .split(';')
        .filter(|q| !q.trim().is_empty())
        .map(|q| q.replace("'ww...'", "'wwe0'"))
        .collect();
    assert_eq!(queries.len(), 3, "docs/bi.md's queries: {queries:?}");
    for query in &queries {
        let rows = sqlx::query(query)
            .fetch_all(&pool)
            .await
            .unwrap_or_else(|e| panic!("{query}: {e}"));
        assert!(!rows.is_empty(), "no rows: {query}");
    }
    let per_day: BTreeMap<(String, i64), i64> = sqlx::query(&format!(
        "SELECT corp_id, CAST(TIMESTAMPDIFF(DAY, '1970-01-01', day_utc) AS SIGNED),
                CAST(messages AS SIGNED) FROM ({}) q",
        queries[2]
    ))
    .fetch_all(&pool)
    .await
    .expect("per corp and day")
    .iter()
    .map(|r| {
        let corp = String::from_utf8(r.get::<Vec<u8>, _>(0)).expect("utf-8");
        ((corp, r.get::<i64, _>(1)), r.get::<i64, _>(2))
    })
    .collect();
    let mut want: BTreeMap<(String, i64), i64> = BTreeMap::new();
    for (key, total) in &truth {
        let parts: Vec<&str> = key.split('/').collect();
        let minute: i64 = parts[parts.len() - 1].parse().expect("minute");
        *want
            .entry((parts[0].to_string(), minute.div_euclid(86_400_000)))
            .or_default() += total;
    }
    assert_eq!(per_day, want);

    // The Python reader of docs/bi reads the same totals in this format.
    let registry = stack_setting("WXSTACK_REGISTRY_URL");
    let args = match path {
        Path::ConnectJson => ["--format", "connect_json"],
        Path::AvroRegistry => ["--registry", registry.as_str()],
    };
    let read = minute_totals(&read_stats_py(&stats_topic, &args));
    assert_eq!(read, truth);
    drop(worker);
    drop(processes);
    drop_database(&database).await;
}
