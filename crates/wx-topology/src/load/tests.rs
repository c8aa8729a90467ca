use super::*;
use crate::model::{CleanupPolicy, ConnectorClass, Retention};
use crate::plan::{Drift, ObservedTopic, TopicAction, plan};
use std::collections::BTreeMap;
use std::time::Duration;

const TOPICS: &str = r#"
defaults:
  partitions: 4
topics:
  - name: wxstream.raw
    retention: 7d
    cleanup_policy: delete
    purpose: encrypted batches
  - name: wxstream.clean
    partitions: 12
    retention: 30d
    cleanup_policy: delete
    purpose: clean messages
    configs:
      max.message.bytes: "2097152"
  - name: wxstream.dead-letter
    retention: forever
    cleanup_policy: delete
    purpose: parked records
  - name: wxstream.stats
    retention: forever
    cleanup_policy: compact
    purpose: window counts
"#;

const DECRYPT: &str = r#"
name: decrypt
connector.class: wxstream.decrypt
tasks.max: 2
topics: [wxstream.raw]
output.topics: [wxstream.clean]
errors.tolerance: all
errors.deadletterqueue.topic.name: wxstream.dead-letter
settings:
  key_dir: /etc/wxstream/keys
"#;

fn topics_path() -> PathBuf {
    PathBuf::from("topology/topics.yaml")
}

fn connector(text: &str) -> Vec<(PathBuf, String)> {
    vec![(
        PathBuf::from("topology/connectors/decrypt.yaml"),
        text.to_string(),
    )]
}

fn load_err(topics: &str, connectors: &[(PathBuf, String)]) -> TopologyError {
    load_str(&topics_path(), topics, connectors).expect_err("must be rejected")
}

#[test]
fn a_valid_topology_resolves_defaults() {
    let t = load_str(&topics_path(), TOPICS, &connector(DECRYPT)).expect("valid");
    let raw = t.topic("wxstream.raw").expect("raw");
    assert_eq!(raw.partitions, 4);
    assert_eq!(raw.replication, 1);
    assert_eq!(
        raw.retention,
        Retention::For(Duration::from_secs(7 * 86_400))
    );
    assert_eq!(raw.retention.to_string(), "7d");
    assert_eq!(Retention::For(Duration::from_secs(7_200)).to_string(), "2h");
    assert_eq!(
        Retention::For(Duration::from_secs(90)).to_string(),
        "1m 30s"
    );
    assert_eq!(Retention::Forever.to_string(), "forever");
    assert_eq!(t.topic("wxstream.clean").expect("clean").partitions, 12);
    let stats = t.topic("wxstream.stats").expect("stats");
    assert_eq!(stats.cleanup_policy, CleanupPolicy::Compact);
    assert_eq!(stats.kafka_configs()["retention.ms"], "-1");
    let clean = t.topic("wxstream.clean").expect("clean").kafka_configs();
    assert_eq!(clean["max.message.bytes"], "2097152");
    assert_eq!(clean["retention.ms"], (30u64 * 86_400_000).to_string());
    let d = t.connector("decrypt").expect("decrypt");
    assert_eq!(d.class, ConnectorClass::Decrypt);
    assert_eq!(d.settings["key_dir"], "/etc/wxstream/keys");
}

#[test]
fn the_repository_topology_is_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../topology");
    let t = load_dir(&dir).unwrap_or_else(|e| panic!("{e}"));
    for name in ["raw", "clean", "dead-letter", "stats", "ingest-checkpoints"] {
        assert!(
            t.topic(&format!("wxstream.{name}")).is_some(),
            "wxstream.{name} is not declared"
        );
    }
    for class in [
        ConnectorClass::Ingest,
        ConnectorClass::Decrypt,
        ConnectorClass::Sink,
        ConnectorClass::Stats,
        ConnectorClass::Media,
    ] {
        assert!(
            t.connectors.iter().any(|c| c.class == class),
            "no connector of class {class:?}"
        );
    }
}

/// Each bad input and the (file, field, reason) it must be reported with.
#[test]
fn bad_files_name_the_file_the_field_and_the_reason() {
    let decrypt_file = "topology/connectors/decrypt.yaml";
    let topics_file = "topology/topics.yaml";
    let cases: Vec<(&str, String, String, &str, &str, &str)> = vec![
        // (case, topics.yaml, decrypt.yaml, file, field, words in the reason)
        (
            "unknown topic field",
            TOPICS.replace(
                "    purpose: clean messages",
                "    purpose: x\n    partitons: 3",
            ),
            DECRYPT.into(),
            topics_file,
            "topics[1].partitons",
            "unknown field `partitons`",
        ),
        (
            "zero partitions",
            TOPICS.replace("partitions: 12", "partitions: 0"),
            DECRYPT.into(),
            topics_file,
            "topics[1].partitions",
            "at least 1",
        ),
        (
            "partitions not a number",
            TOPICS.replace("partitions: 12", "partitions: many"),
            DECRYPT.into(),
            topics_file,
            "topics[1].partitions",
            "invalid type",
        ),
        (
            "bad retention",
            TOPICS.replace("retention: 30d", "retention: a month"),
            DECRYPT.into(),
            topics_file,
            "topics[1].retention",
            "not a duration",
        ),
        (
            "bad cleanup policy",
            TOPICS.replace("cleanup_policy: compact", "cleanup_policy: shred"),
            DECRYPT.into(),
            topics_file,
            "topics[3].cleanup_policy",
            "unknown variant `shred`",
        ),
        (
            "illegal topic name",
            TOPICS.replace("name: wxstream.stats", "name: wx/stats"),
            DECRYPT.into(),
            topics_file,
            "topics[3].name",
            "not a legal Kafka topic name",
        ),
        (
            "duplicate topic",
            TOPICS.replace("name: wxstream.stats", "name: wxstream.raw"),
            DECRYPT.into(),
            topics_file,
            "topics[3].name",
            "declared twice",
        ),
        (
            "retention in configs",
            TOPICS.replace("max.message.bytes", "retention.ms"),
            DECRYPT.into(),
            topics_file,
            "topics[1].configs.retention.ms",
            "`retention`",
        ),
        (
            "unknown connector field",
            TOPICS.into(),
            format!("{DECRYPT}colour: blue\n"),
            decrypt_file,
            "colour",
            "unknown field `colour`",
        ),
        (
            "unknown class",
            TOPICS.into(),
            DECRYPT.replace("wxstream.decrypt", "wxstream.shred"),
            decrypt_file,
            "connector.class",
            "unknown variant `wxstream.shred`",
        ),
        (
            "zero tasks",
            TOPICS.into(),
            DECRYPT.replace("tasks.max: 2", "tasks.max: 0"),
            decrypt_file,
            "tasks.max",
            "between 1 and 1024",
        ),
        (
            "undeclared input topic",
            TOPICS.into(),
            DECRYPT.replace("topics: [wxstream.raw]", "topics: [wxstream.rw]"),
            decrypt_file,
            "topics",
            "`wxstream.rw` is not declared",
        ),
        (
            "tolerance all without a dead-letter topic",
            TOPICS.into(),
            DECRYPT.replace(
                "errors.deadletterqueue.topic.name: wxstream.dead-letter\n",
                "",
            ),
            decrypt_file,
            "errors.deadletterqueue.topic.name",
            "never dropped",
        ),
        (
            "bad tolerance",
            TOPICS.into(),
            DECRYPT.replace("errors.tolerance: all", "errors.tolerance: some"),
            decrypt_file,
            "errors.tolerance",
            "unknown variant `some`",
        ),
        (
            "not yaml",
            TOPICS.into(),
            "\"unterminated".into(),
            decrypt_file,
            "",
            "",
        ),
    ];
    for (case, topics, decrypt, file, field, reason) in cases {
        let err = load_err(&topics, &connector(&decrypt));
        assert_eq!(err.file, PathBuf::from(file), "{case}: {err}");
        assert_eq!(err.field, field, "{case}: {err}");
        assert!(err.reason.contains(reason), "{case}: {err}");
        let shown = err.to_string();
        assert!(shown.starts_with(file), "{case}: {shown}");
        if !field.is_empty() {
            assert!(
                shown.contains(&format!("field `{field}`")),
                "{case}: {shown}"
            );
        }
    }
}

#[test]
fn a_source_may_not_consume_and_connector_names_are_unique() {
    let ingest = r#"
name: ingest
connector.class: wxstream.ingest
tasks.max: 1
topics: [wxstream.raw]
output.topics: [wxstream.raw]
errors.tolerance: none
"#;
    let err = load_err(
        TOPICS,
        &[(PathBuf::from("c/ingest.yaml"), ingest.to_string())],
    );
    assert_eq!(
        (err.field.as_str(), err.file.clone()),
        ("topics", "c/ingest.yaml".into())
    );
    let twice = vec![
        (PathBuf::from("c/a.yaml"), DECRYPT.to_string()),
        (PathBuf::from("c/b.yaml"), DECRYPT.to_string()),
    ];
    let err = load_err(TOPICS, &twice);
    assert_eq!(err.file, PathBuf::from("c/b.yaml"));
    assert!(err.reason.contains("another file"), "{err}");
}

#[test]
fn load_dir_reads_files_and_reports_missing_ones() {
    let dir = tempfile::tempdir().expect("tmp");
    let err = load_dir(dir.path()).expect_err("no topics.yaml");
    assert!(err.reason.contains("cannot read"), "{err}");
    std::fs::write(dir.path().join("topics.yaml"), TOPICS).expect("write");
    std::fs::create_dir(dir.path().join("connectors")).expect("mkdir");
    std::fs::write(dir.path().join("connectors/decrypt.yaml"), DECRYPT).expect("write");
    std::fs::write(dir.path().join("connectors/README.txt"), "ignored").expect("write");
    let t = load_dir(dir.path()).expect("valid dir");
    assert_eq!(t.connectors.len(), 1);
}

#[test]
fn a_prefix_renames_topics_and_every_reference() {
    let t = load_str(&topics_path(), TOPICS, &connector(DECRYPT)).expect("valid");
    let p = t.with_topic_prefix("t42.");
    assert!(p.topic("t42.wxstream.raw").is_some());
    assert!(p.topic("wxstream.raw").is_none());
    let d = p.connector("decrypt").expect("decrypt");
    assert_eq!(d.topics, vec!["t42.wxstream.raw"]);
    assert_eq!(d.output_topics, vec!["t42.wxstream.clean"]);
    assert_eq!(
        d.dead_letter_topic.as_deref(),
        Some("t42.wxstream.dead-letter")
    );
}

#[test]
fn plan_creates_missing_topics_and_reports_drift() {
    let t = load_str(&topics_path(), TOPICS, &[]).expect("valid");
    let mut observed = BTreeMap::new();
    let in_sync = |spec: &TopicSpec| ObservedTopic {
        partitions: spec.partitions,
        replication: spec.replication,
        configs: spec.kafka_configs(),
    };
    observed.insert("wxstream.raw".to_string(), in_sync(&t.topics[0]));
    let mut clean = in_sync(&t.topics[1]);
    clean.partitions = 6;
    clean
        .configs
        .insert("cleanup.policy".into(), "compact".into());
    observed.insert("wxstream.clean".to_string(), clean);
    // A broker that reports no configs at all: only partitions and replication are compared.
    let mut stats = in_sync(&t.topics[3]);
    stats.configs.clear();
    observed.insert("wxstream.stats".to_string(), stats);

    let actions = plan(&t.topics, &observed);
    assert_eq!(
        actions[0],
        TopicAction::InSync {
            name: "wxstream.raw".into()
        }
    );
    assert_eq!(
        actions[1],
        TopicAction::Drift {
            name: "wxstream.clean".into(),
            drift: vec![
                Drift::Partitions {
                    declared: 12,
                    actual: 6
                },
                Drift::Config {
                    key: "cleanup.policy".into(),
                    declared: "delete".into(),
                    actual: "compact".into()
                },
            ]
        }
    );
    assert!(
        matches!(&actions[2], TopicAction::Create { topic } if topic.name == "wxstream.dead-letter")
    );
    assert!(matches!(&actions[3], TopicAction::InSync { .. }));
}

#[test]
fn cleanup_policy_lists_compare_as_sets() {
    let t = load_str(
        &topics_path(),
        &TOPICS.replace("cleanup_policy: compact", "cleanup_policy: compact_delete"),
        &[],
    )
    .expect("valid");
    let spec = &t.topics[3];
    let mut observed = BTreeMap::new();
    let mut configs = spec.kafka_configs();
    configs.insert("cleanup.policy".into(), "delete, compact".into());
    observed.insert(
        spec.name.clone(),
        ObservedTopic {
            partitions: spec.partitions,
            replication: spec.replication,
            configs,
        },
    );
    assert!(matches!(
        plan(std::slice::from_ref(spec), &observed)[0],
        TopicAction::InSync { .. }
    ));
}

#[test]
fn env_references_in_settings_expand_with_defaults_and_name_what_is_missing() {
    let env = |name: &str| (name == "HOST").then(|| "es:9200".to_string());
    let mut value = serde_json::json!({
        "url": "http://${env:HOST}/x",
        "fallback": "${env:PORT:-8080}",
        "nested": ["${env:HOST}${env:HOST}", {"k": "plain"}],
        "secret": {"env": "NOT_EXPANDED"},
        "n": 3
    });
    expand_env(&mut value, &env).expect("expands");
    assert_eq!(
        value,
        serde_json::json!({
            "url": "http://es:9200/x",
            "fallback": "8080",
            "nested": ["es:9200es:9200", {"k": "plain"}],
            "secret": {"env": "NOT_EXPANDED"},
            "n": 3
        })
    );
    let mut missing = serde_json::json!("${env:NOPE}");
    let e = expand_env(&mut missing, &env).expect_err("unset without default");
    assert!(e.contains("NOPE"), "{e}");
    let mut open = serde_json::json!("${env:HOST");
    assert!(expand_env(&mut open, &env).is_err());
}

#[test]
fn a_topic_of_three_replicas_must_say_how_many_acknowledge_a_write() {
    let three = TOPICS.replace("  partitions: 4\n", "  partitions: 4\n  replication: 3\n");
    let e = load_err(&three, &[]).to_string();
    assert!(
        e.contains("topics[0].configs.min.insync.replicas") && e.contains("one broker"),
        "{e}"
    );
    let one = three.replace(
        "    purpose: encrypted batches\n",
        "    purpose: encrypted batches\n    configs:\n      min.insync.replicas: \"1\"\n",
    );
    assert!(load_err(&one, &[]).to_string().contains("at least 2"));
    let four = TOPICS.replace(
        "    purpose: encrypted batches\n",
        "    purpose: encrypted batches\n    configs:\n      min.insync.replicas: \"4\"\n",
    );
    assert!(
        load_err(&four, &[])
            .to_string()
            .contains("no write could be acknowledged")
    );

    // `--replication 3` gives every topic its min.insync.replicas; a declared one is kept.
    let mut t = load_str(&topics_path(), TOPICS, &[]).expect("valid");
    for topic in &mut t.topics {
        topic.replicate(3);
        assert_eq!(
            topic.configs[crate::MIN_INSYNC_REPLICAS],
            "2",
            "{}",
            topic.name
        );
        assert_eq!(topic.durability_problem(), None);
    }
    let mut single = t.topics[0].clone();
    single.configs.clear();
    single.replicate(1);
    assert_eq!(
        single.durability_problem(),
        None,
        "one replica: the broker's default"
    );
    assert!(!single.configs.contains_key(crate::MIN_INSYNC_REPLICAS));
}
