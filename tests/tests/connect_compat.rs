//! wxstream's REST API against a real Apache Kafka Connect 4.1 worker (distributed mode, from
//! Kafka's own jars: `scripts/stack connect-worker`) on the local broker: the same sequence of
//! requests goes to Connect's stock FileStreamSink connector and to wxstream's sink stage, both
//! reading the same topic, and every answer must have Connect's status code and Connect's JSON
//! structure (field names and types, not values). wxstream's additions are the fields listed in
//! [`ADDED`] (README, "Operated like Kafka Connect"); any other difference fails the test.

use std::collections::BTreeMap;

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use wxstream_tests::connect::ConnectWorker;
use wxstream_tests::pipeline::{Names, clean_messages, drop_database, write_sink_connector};
use wxstream_tests::{WxProcess, free_port, now_ms, produce_clean, wait_until, wx_args};

/// The fields wxstream adds to Connect's documents (README, "Operated like Kafka Connect",
/// says what each holds): `worker_id` and `brokers` in `GET /`; `ready`, `not_ready_because`
/// and `notes` in a connector's status; `assigned_partitions`, `last_error` and
/// `last_error_at` in a task's.
const ADDED: [&str; 8] = [
    "worker_id",
    "brokers",
    "ready",
    "not_ready_because",
    "notes",
    "assigned_partitions",
    "last_error",
    "last_error_at",
];

async fn call(method: Method, url: &str, body: Option<Value>) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .request(method.clone(), url)
        .timeout(Duration::from_secs(60));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let reply = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = reply.status().as_u16();
    let text = reply.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// One side of the comparison: a REST base and the connector's name there.
struct Side<'a> {
    base: &'a str,
    name: &'a str,
}

impl Side<'_> {
    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path.replace("{n}", self.name))
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        call(method, &self.url(path), body).await
    }

    /// [`Side::call`], again (for up to 30 s) while Connect answers that the request can be
    /// retried: its stop is asynchronous, and an offsets change right after it finds the sink's
    /// consumer still in its group.
    async fn call_retried(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let answer = self.call(method.clone(), path, body.clone()).await;
            let retry = answer.0 == 500
                && answer.1["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("can be safely retried"));
            if !retry || std::time::Instant::now() > deadline {
                return answer;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Waits (up to 60 s) until the connector's state (and its tasks') is `state`; the last
    /// status seen when it never is.
    async fn wait_state(&self, state: &str) -> Result<(), Value> {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let (_, status) = self.call(Method::GET, "/connectors/{n}/status", None).await;
            let tasks_agree = status["tasks"]
                .as_array()
                .is_some_and(|t| t.iter().all(|t| t["state"] == state));
            if status["connector"]["state"] == state && tasks_agree {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                return Err(status);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// The structure of a JSON value: objects by field, arrays by their first element, scalars by
/// type. Keys that are names (connectors, loggers, a connector's config keys: each connector
/// class has its own) are replaced by `*`.
fn shape(value: &Value, named_keys: bool) -> Value {
    match value {
        Value::Object(map) if named_keys => {
            json!({ "*": map.values().next().map_or(Value::Null, |v| shape(v, false)) })
        }
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), shape(v, k == "config")))
                .collect(),
        ),
        Value::Array(items) => json!([items.first().map_or(json!("empty"), |v| shape(v, false))]),
        Value::Null => json!("null"),
        Value::Bool(_) => json!("boolean"),
        Value::Number(_) => json!("number"),
        Value::String(_) => json!("string"),
    }
}

/// Where `ours` differs from Connect's structure `theirs`, at `at`: a field missing or of
/// another type, or a field added that [`ADDED`] does not list.
fn differences(theirs: &Value, ours: &Value, at: &str, out: &mut Vec<String>) {
    match (theirs, ours) {
        (Value::Object(t), Value::Object(o)) => {
            for (key, value) in t {
                match o.get(key) {
                    Some(mine) => differences(value, mine, &format!("{at}/{key}"), out),
                    None => out.push(format!("{at}/{key}: missing")),
                }
            }
            for key in o.keys().filter(|k| !t.contains_key(*k)) {
                if !ADDED.contains(&key.as_str()) {
                    out.push(format!("{at}/{key}: not in Connect's document"));
                }
            }
        }
        (Value::Array(t), Value::Array(o)) => {
            if let (Some(t), Some(o)) = (t.first(), o.first()) {
                differences(t, o, &format!("{at}/*"), out);
            }
        }
        // An empty array on one side says nothing of its elements.
        (t, o) if t != o && t != "empty" && o != "empty" => {
            out.push(format!("{at}: Connect has {t}, wxstream {o}"));
        }
        _ => {}
    }
}

/// A request of the sequence: method, path (`{n}`: the connector), body, the state both
/// connectors are waited for before it, whether the answer's keys are names.
type Step<'a> = (Method, &'a str, Option<Value>, Option<&'a str>, bool);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rest_api_answers_as_a_real_kafka_connect_worker_does() {
    let Names {
        prefix,
        database,
        index,
    } = Names::create("connect-diff", "wxcd").await;
    let clean = format!("{prefix}wxstream.clean");
    produce_clean(
        &clean,
        &clean_messages("wwcd", 300, now_ms() - 86_400_000, 1_000),
    )
    .await;
    let dir = tempfile::tempdir().expect("tmp");

    // Connect: a FileStreamSink reading the topic wxstream's sink reads.
    let worker = ConnectWorker::start(dir.path(), prefix.trim_end_matches(['.', '-', '_'])).await;
    let connect = Side {
        base: &worker.base,
        name: "file-sink",
    };
    let created = call(
        Method::POST,
        &format!("{}/connectors", worker.base),
        Some(json!({
            "name": "file-sink",
            "config": {
                "connector.class": "org.apache.kafka.connect.file.FileStreamSinkConnector",
                "tasks.max": "1",
                "topics": clean,
                "file": dir.path().join("sink.txt").display().to_string(),
                "key.converter": "org.apache.kafka.connect.converters.ByteArrayConverter",
                "value.converter": "org.apache.kafka.connect.converters.ByteArrayConverter",
            },
        })),
    )
    .await;
    assert_eq!(created.0, 201, "{}", created.1);

    // wxstream: its sink stage.
    write_sink_connector(dir.path(), &database, &index, None);
    let addr = format!("127.0.0.1:{}", free_port());
    let process = WxProcess::start_with(
        &wx_args(dir.path(), &prefix, &["run"]),
        &dir.path().join("sink.log"),
        &addr,
    );
    let base = format!("http://{addr}");
    let ours = Side {
        base: &base,
        name: "sink",
    };
    wait_until("the wxstream sink ready", 60, &process, || async {
        reqwest::get(format!("{base}/readyz"))
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    connect
        .wait_state("RUNNING")
        .await
        .expect("the FileStreamSink running");
    // Both have committed offsets before the sequence starts.
    for side in [&connect, &ours] {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while side
            .call(Method::GET, "/connectors/{n}/offsets", None)
            .await
            .1["offsets"]
            .as_array()
            .is_none_or(Vec::is_empty)
        {
            assert!(
                std::time::Instant::now() < deadline,
                "{} committed nothing",
                side.name
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    let rewind = json!({ "offsets": [{
        "partition": { "kafka_topic": clean, "kafka_partition": 0 },
        "offset": { "kafka_offset": 0 },
    }]});
    let sequence: Vec<Step> = vec![
        (Method::GET, "/", None, None, false),
        (
            Method::GET,
            "/connectors?expand=status&expand=info",
            None,
            None,
            true,
        ),
        (Method::GET, "/connectors?expand=bogus", None, None, true),
        (Method::GET, "/connectors/{n}", None, None, false),
        (Method::GET, "/connectors/{n}/config", None, None, true),
        (Method::GET, "/connectors/{n}/status", None, None, false),
        (Method::GET, "/connectors/{n}/tasks", None, None, false),
        (
            Method::GET,
            "/connectors/{n}/tasks/0/status",
            None,
            None,
            false,
        ),
        (
            Method::GET,
            "/connectors/{n}/tasks/7/status",
            None,
            None,
            false,
        ),
        (
            Method::GET,
            "/connectors/{n}/tasks/abc/status",
            None,
            None,
            false,
        ),
        (Method::GET, "/connectors/{n}/topics", None, None, true),
        (
            Method::PUT,
            "/connectors/{n}/topics/reset",
            None,
            None,
            false,
        ),
        (Method::PUT, "/connectors/{n}/pause", None, None, false),
        (
            Method::GET,
            "/connectors/{n}/status",
            None,
            Some("PAUSED"),
            false,
        ),
        (Method::PUT, "/connectors/{n}/resume", None, None, false),
        (
            Method::GET,
            "/connectors/{n}/status",
            None,
            Some("RUNNING"),
            false,
        ),
        (Method::GET, "/connectors/{n}/offsets", None, None, false),
        (
            Method::PATCH,
            "/connectors/{n}/offsets",
            Some(rewind.clone()),
            None,
            false,
        ),
        (Method::PUT, "/connectors/{n}/stop", None, None, false),
        (
            Method::GET,
            "/connectors/{n}/status",
            None,
            Some("STOPPED"),
            false,
        ),
        (Method::GET, "/connectors/{n}/tasks", None, None, false),
        (Method::GET, "/connectors/{n}", None, None, false),
        (Method::GET, "/connectors/{n}/offsets", None, None, false),
        (
            Method::PATCH,
            "/connectors/{n}/offsets",
            Some(rewind),
            None,
            false,
        ),
        (
            Method::PATCH,
            "/connectors/{n}/offsets",
            Some(json!({ "offsets": [] })),
            None,
            false,
        ),
        (
            Method::PATCH,
            "/connectors/{n}/offsets",
            Some(
                json!({ "offsets": [{ "partition": { "foo": 1 }, "offset": { "kafka_offset": 0 } }] }),
            ),
            None,
            false,
        ),
        (Method::DELETE, "/connectors/{n}/offsets", None, None, false),
        (Method::GET, "/connectors/{n}/offsets", None, None, false),
        (Method::PUT, "/connectors/{n}/resume", None, None, false),
        (
            Method::GET,
            "/connectors/{n}/status",
            None,
            Some("RUNNING"),
            false,
        ),
        (
            Method::POST,
            "/connectors/{n}/restart?onlyFailed=true",
            None,
            None,
            false,
        ),
        (
            Method::POST,
            "/connectors/{n}/restart?includeTasks=true&onlyFailed=true",
            None,
            None,
            false,
        ),
        (
            Method::POST,
            "/connectors/{n}/restart",
            None,
            Some("RUNNING"),
            false,
        ),
        (
            Method::POST,
            "/connectors/{n}/tasks/0/restart",
            None,
            Some("RUNNING"),
            false,
        ),
        (
            Method::POST,
            "/connectors/{n}/tasks/9/restart",
            None,
            Some("RUNNING"),
            false,
        ),
        (Method::GET, "/connectors/nope", None, None, false),
        (Method::GET, "/connectors/nope/status", None, None, false),
        (Method::PUT, "/connectors/nope/pause", None, None, false),
        (Method::PUT, "/connectors/nope/stop", None, None, false),
        (Method::POST, "/connectors/nope/restart", None, None, false),
        (Method::GET, "/connectors/nope/offsets", None, None, false),
        (Method::GET, "/connectors/nope/topics", None, None, true),
        (Method::DELETE, "/connectors", None, None, false),
        (Method::POST, "/connectors/{n}/status", None, None, false),
        (Method::GET, "/nothing/here", None, None, false),
        (Method::GET, "/connector-plugins", None, None, false),
        (Method::GET, "/admin/loggers", None, None, true),
        (
            Method::GET,
            "/admin/loggers/no.such.logger",
            None,
            None,
            false,
        ),
        (
            Method::PUT,
            "/admin/loggers/root",
            Some(json!({ "level": "NOPE" })),
            None,
            false,
        ),
        (
            Method::PUT,
            "/admin/loggers/root",
            Some(json!({})),
            None,
            false,
        ),
        (
            Method::PUT,
            "/admin/loggers/wxstream.probe",
            Some(json!({ "level": "INFO" })),
            None,
            false,
        ),
    ];
    let mut report = Vec::new();
    let mut transcript = BTreeMap::new();
    for (step, (method, path, body, wait_for, named)) in sequence.into_iter().enumerate() {
        if let Some(state) = wait_for {
            for side in [&connect, &ours] {
                if let Err(status) = side.wait_state(state).await {
                    report.push(format!(
                        "{step:>2}: {} never became {state}: {status}",
                        side.name
                    ));
                }
            }
        }
        let theirs = connect
            .call_retried(method.clone(), path, body.clone())
            .await;
        let mine = ours.call(method.clone(), path, body).await;
        let what = format!("{step:>2} {method} {path}");
        if theirs.0 != mine.0 {
            report.push(format!(
                "{what}: Connect answers {}, wxstream {} ({})",
                theirs.0, mine.0, mine.1
            ));
        }
        let mut differs = Vec::new();
        differences(
            &shape(&theirs.1, named),
            &shape(&mine.1, named),
            "",
            &mut differs,
        );
        report.extend(differs.into_iter().map(|d| format!("{what}: {d}")));
        transcript.insert(what, (theirs, mine));
    }
    assert!(
        report.is_empty(),
        "wxstream's answers differ from Kafka Connect's:\n{}\n\nthe answers (Connect, wxstream):\n{:#?}",
        report.join("\n"),
        transcript
    );
    drop(worker);
    drop(process);
    drop_database(&database).await;
}
