//! The sink's target contract, on the local broker, MariaDB and the search server: a third,
//! in-memory target (an adapter of this test only, registered by name) is added to the sink by
//! configuration alone (`targets: [mysql, search, {memory: ...}]`). The sink writes every record
//! to all three; while the third is unwell nothing is committed (though MySQL and search already
//! have every record), readiness names it, and nothing is parked; once it is back the offsets
//! are committed, and the one record it refuses as such is parked with its class.
//!
//! The target's two failure classes are the test's own, known to no file of the repository:
//! the store's fault (`memory`, unwell) and the record's (`memory_refused`). Each reaches
//! readiness, the metric labels and the redrive selector without any other edit, and the sink's
//! redrive replays the refused record through the same targets once the third takes it.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use wx_codec::{ChatMessage, Codec};
use wx_kafka::KafkaConfig;
use wx_runtime::target::{Target, TargetFuture, Verdict};
use wx_sink::{BuildError, SinkSettings, TargetBuild};
use wxstream_tests::e2e::Reader;
use wxstream_tests::pipeline::{Names, clean_messages, doc_count, drop_database, row_count};
use wxstream_tests::{brokers, now_ms, produce_clean, repo_topology, stack_setting};

/// The test's adapter: keeps what it is given; unwell while `unwell`; refuses one msgid.
#[derive(Debug, Default)]
struct Memory {
    written: Mutex<BTreeSet<String>>,
    unwell: AtomicBool,
    refuse: Mutex<String>,
}

const REFUSED_CLASS: &str = "memory_refused";

impl Target for Memory {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn write<'a>(&'a self, batch: &'a [ChatMessage]) -> TargetFuture<'a, Vec<Verdict>> {
        Box::pin(async move {
            if self.unwell.load(Ordering::SeqCst) {
                return Verdict::all_unwell(batch.len(), "the memory target is switched off");
            }
            let refuse = self.refuse.lock().expect("lock").clone();
            let mut written = self.written.lock().expect("lock");
            batch
                .iter()
                .map(|m| {
                    if m.msgid == refuse {
                        Verdict::Refused {
                            class: REFUSED_CLASS,
                            cause: "the memory target refuses this msgid".into(),
                        }
                    } else {
                        written.insert(m.msgid.clone());
                        Verdict::Written
                    }
                })
                .collect()
        })
    }
}

fn memory() -> &'static Arc<Memory> {
    static MEMORY: OnceLock<Arc<Memory>> = OnceLock::new();
    MEMORY.get_or_init(|| {
        Arc::new(Memory {
            unwell: AtomicBool::new(true),
            ..Memory::default()
        })
    })
}

/// The factory `targets` reaches by the name `memory`; its option `refuse` names a msgid.
fn memory_target<'a>(
    build: &'a TargetBuild<'a>,
) -> TargetFuture<'a, Result<Arc<dyn Target>, BuildError>> {
    Box::pin(async move {
        let target = memory().clone();
        *target.refuse.lock().expect("lock") =
            build.options["refuse"].as_str().unwrap_or("").to_string();
        Ok(target as Arc<dyn Target>)
    })
}

/// Sum of the group's committed offsets over the topic's partitions.
async fn committed(group: &str, topic: &str) -> i64 {
    let (config, group, topic) = (
        KafkaConfig::new(brokers()),
        group.to_string(),
        topic.to_string(),
    );
    tokio::task::spawn_blocking(move || {
        wx_kafka::committed_offsets(&config, &group, &topic).expect("committed offsets")
    })
    .await
    .expect("committed")
    .into_iter()
    .filter_map(|(_, o)| o)
    .sum()
}

async fn until<F, Fut>(what: &str, seconds: u64, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while !check().await {
        assert!(Instant::now() < deadline, "{what} within {seconds} s");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_third_target_added_by_configuration_gets_every_record_before_any_commit() {
    wx_sink::register_target("memory", memory_target);
    let scrape = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .expect("the test's metrics recorder");
    let names = Names::create("sinktg", "sinktg").await;
    let messages = clean_messages("wwtargets", 40, now_ms() - 3_600_000, 1_000);
    let refused = messages[17].msgid.clone();
    let mut connector = repo_topology(&names.prefix)
        .connectors
        .into_iter()
        .find(|c| c.class == <SinkSettings as wx_runtime::StageSettings>::CLASS)
        .expect("the repository's sink connector");
    let group = format!("{}_sink", names.database);
    connector.settings = serde_yaml_ng::from_str(&format!(
        "mysql_url: {{env: WX_MYSQL_URL}}\nelasticsearch_url: {}\ndatabase: {}\nindex_prefix: {}\nindex_shards: 2\nindex_replicas: 0\nbatch_linger: 50ms\nbackoff_cap: 1s\ngroup_id: {group}\ncommit_interval: 200ms\ntargets: [mysql, search, {{memory: {{refuse: {refused}}}}}]\n",
        stack_setting("WXSTACK_ES_URL"),
        names.database,
        names.index,
    ))
    .expect("settings");
    let clean = connector.topics[0].clone();
    produce_clean(&clean, &messages).await;

    let shutdown = CancellationToken::new();
    let launched = wx_runtime::launch::<SinkSettings>(
        "",
        &connector,
        &KafkaConfig::new(brokers()),
        Arc::new(Codec::fixed().expect("codec")),
        shutdown.clone(),
    )
    .await
    .expect("the sink builds with three targets");
    let health = launched.health.clone();
    let task = tokio::spawn(launched.task);

    // MySQL and search take every record; the third does not, so nothing is committed.
    until("every row and document written", 90, || async {
        row_count(&names.database).await == 40 && doc_count(&names.index).await == 40
    })
    .await;
    // Each monthly index is laid out as configured.
    let settings: serde_json::Value = reqwest::get(format!(
        "{}/{}-*/_settings",
        stack_setting("WXSTACK_ES_URL"),
        names.index
    ))
    .await
    .expect("index settings")
    .json()
    .await
    .expect("json");
    let layouts: BTreeSet<(String, String)> = settings
        .as_object()
        .expect("indices")
        .values()
        .map(|i| {
            let index = &i["settings"]["index"];
            (
                index["number_of_shards"]
                    .as_str()
                    .unwrap_or("?")
                    .to_string(),
                index["number_of_replicas"]
                    .as_str()
                    .unwrap_or("?")
                    .to_string(),
            )
        })
        .collect();
    assert_eq!(
        layouts,
        BTreeSet::from([("2".to_string(), "0".to_string())]),
        "index_shards and index_replicas: {settings}"
    );
    until("readiness names the unwell target", 30, || async {
        health.failures().contains_key("memory")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        committed(&group, &clean).await,
        0,
        "nothing is committed while a target has not written the records"
    );
    assert!(memory().written.lock().expect("lock").is_empty());

    memory().unwell.store(false, Ordering::SeqCst);
    until(
        "every offset committed once the third target has them",
        90,
        || async { committed(&group, &clean).await == 40 },
    )
    .await;
    assert!(!health.failures().contains_key("memory"), "recovered");
    let written = memory().written.lock().expect("lock").clone();
    let expected: BTreeSet<String> = messages
        .iter()
        .map(|m| m.msgid.clone())
        .filter(|id| *id != refused)
        .collect();
    assert_eq!(
        written, expected,
        "the third target has every record but the refused one"
    );

    let reader = Reader::new(&brokers(), &names.prefix);
    let letters = tokio::task::spawn_blocking(move || reader.letters())
        .await
        .expect("letters");
    let parked: Vec<_> = letters.values().filter(|d| d.stage == "sink").collect();
    assert_eq!(
        parked.len(),
        1,
        "only the refused record is parked: {parked:?}"
    );
    assert_eq!(parked[0].error_class, REFUSED_CLASS);
    assert_eq!(parked[0].msgid.as_deref(), Some(refused.as_str()));

    // The metric labels name both of the test's classes.
    let text = scrape.render();
    let labelled = |name: &str, label: &str| {
        wxstream_tests::samples(&text)
            .into_iter()
            .filter(|(k, _)| k.starts_with(&format!("{name}{{")) && k.contains(label))
            .map(|(_, v)| v)
            .sum::<f64>()
    };
    assert_eq!(
        labelled(
            "wxstream_sink_dead_lettered_total",
            &format!("class=\"{REFUSED_CLASS}\"")
        ),
        1.0,
        "the parked record counted under its class:\n{text}"
    );
    assert!(
        labelled("wxstream_sink_retries_total", "store=\"memory\"") >= 1.0,
        "the unwell target's retries counted under its name:\n{text}"
    );
    assert_eq!(
        labelled("wxstream_sink_records_written_total", "partition="),
        39.0,
        "the third target's writes counted:\n{text}"
    );

    shutdown.cancel();
    let ended = tokio::time::timeout(Duration::from_secs(40), task)
        .await
        .expect("stops")
        .expect("no panic");
    assert!(ended.is_ok(), "a clean stop: {ended:?}");

    // The redrive selector takes the new class by name; the sink's redrive writes the record to
    // every target, the third included, once it takes it, and the letter is gone.
    let codec = Arc::new(Codec::fixed().expect("codec"));
    let (redrive, context) =
        wx_runtime::redriver::<SinkSettings>("", &connector, &KafkaConfig::new(brokers()), codec)
            .await
            .expect("the sink's redrive connects")
            .expect("the sink has a redrive");
    let filter = wx_runtime::letters::RedriveFilter {
        classes: vec![REFUSED_CLASS.to_string()],
        ..Default::default()
    };
    let read = Duration::from_secs(60);
    let (_, selected) = wx_runtime::redrive::select(&context, &filter, read)
        .await
        .expect("select");
    assert_eq!(selected.len(), 1, "the selector finds the new class");
    assert_eq!(selected[0].1.msgid.as_deref(), Some(refused.as_str()));
    memory().refuse.lock().expect("lock").clear();
    let summary = redrive
        .redrive(wx_runtime::redrive::RedriveRequest {
            selected,
            dry_run: false,
            progress: &|_| {},
        })
        .await
        .expect("redrive");
    assert_eq!(summary.count("moved"), 1, "{summary:?}");
    assert!(
        memory().written.lock().expect("lock").contains(&refused),
        "the redriven record reached the third target"
    );
    let (_, left) = wx_runtime::redrive::select(&context, &filter, read)
        .await
        .expect("select again");
    assert!(left.is_empty(), "the letter is tombstoned: {left:?}");
    drop_database(&names.database).await;
}
