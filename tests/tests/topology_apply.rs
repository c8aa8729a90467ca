//! `topology apply` and `topology check` against the local broker.

use std::process::Command;

use wx_kafka::{KafkaConfig, TopicAdmin};
use wx_topology::TopicAction;
use wxstream_tests::{brokers, repo_root, repo_topology, unique, wxstream_bin};

#[tokio::test]
async fn apply_creates_every_declared_topic_and_a_second_run_changes_nothing() {
    let prefix = format!("{}.", unique("apply"));
    let topology = repo_topology(&prefix);
    let admin = TopicAdmin::new(&KafkaConfig::new(brokers())).expect("admin client");

    let first = admin.apply(&topology.topics).await.expect("first apply");
    let mut created = first.created.clone();
    created.sort();
    let mut declared: Vec<String> = topology.topics.iter().map(|t| t.name.clone()).collect();
    declared.sort();
    assert_eq!(created, declared, "the first apply creates every topic");

    // The broker now has each topic with the declared partitions and configs.
    let names: Vec<&str> = topology.topics.iter().map(|t| t.name.as_str()).collect();
    let (observed, configs_compared) = admin.observe(&names).await.expect("observe");
    assert!(configs_compared, "the local broker describes topic configs");
    for spec in &topology.topics {
        let actual = observed
            .get(&spec.name)
            .unwrap_or_else(|| panic!("{} missing", spec.name));
        assert_eq!(actual.partitions, spec.partitions, "{}", spec.name);
        for (key, value) in spec.kafka_configs() {
            assert_eq!(
                actual.configs.get(&key),
                Some(&value),
                "{} config {key}",
                spec.name
            );
        }
    }

    let second = admin.apply(&topology.topics).await.expect("second apply");
    assert!(
        second.created.is_empty(),
        "second apply created {:?}",
        second.created
    );
    assert!(second.in_sync(), "{:?}", second.actions);

    // The binary agrees: check exits 0, apply reports everything in sync.
    let check = Command::new(wxstream_bin())
        .args([
            "--brokers",
            &brokers(),
            "--topic-prefix",
            &prefix,
            "topology",
            "check",
        ])
        .current_dir(repo_root())
        .output()
        .expect("run wxstream");
    let stdout = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success(),
        "check failed: {stdout}{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert_eq!(
        stdout.matches("in sync").count(),
        declared.len(),
        "{stdout}"
    );
}

#[tokio::test]
async fn check_exits_non_zero_on_drift_and_apply_does_not_repair_it() {
    let prefix = format!("{}.", unique("drift"));
    let topology = repo_topology(&prefix);
    let admin = TopicAdmin::new(&KafkaConfig::new(brokers())).expect("admin client");

    // Someone created the raw topic by hand with too few partitions and the wrong policy.
    let mut wrong = topology.topics[0].clone();
    wrong.partitions = 2;
    wrong.cleanup_policy = wx_topology::CleanupPolicy::Compact;
    admin
        .apply(&[wrong.clone()])
        .await
        .expect("create the wrong topic");

    let run = |args: &[&str]| {
        Command::new(wxstream_bin())
            .args(["--brokers", &brokers(), "--topic-prefix", &prefix])
            .args(args)
            .current_dir(repo_root())
            .output()
            .expect("run wxstream")
    };
    let check = run(&["topology", "check"]);
    let stdout = String::from_utf8_lossy(&check.stdout);
    assert_eq!(check.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(&format!("DRIFT     {}", wrong.name)),
        "{stdout}"
    );
    assert!(
        stdout.contains("partitions: declared 6, broker has 2"),
        "{stdout}"
    );
    assert!(
        stdout.contains("cleanup.policy: declared delete, broker has compact"),
        "{stdout}"
    );
    assert!(stdout.contains("MISSING"), "{stdout}");

    let apply = run(&["topology", "apply"]);
    let stdout = String::from_utf8_lossy(&apply.stdout);
    assert_eq!(
        apply.status.code(),
        Some(2),
        "apply exits 2 while drift remains: {stdout}"
    );
    assert_eq!(
        stdout.matches("created").count(),
        topology.topics.len() - 1,
        "{stdout}"
    );

    // Nothing was destroyed or altered: the hand-made topic is as it was.
    let report = admin.check(&topology.topics).await.expect("check");
    match &report.actions[0] {
        TopicAction::Drift { name, .. } => assert_eq!(name, &wrong.name),
        other => panic!("expected drift on {}, got {other:?}", wrong.name),
    }
    assert_eq!(
        report
            .actions
            .iter()
            .filter(|a| matches!(a, TopicAction::InSync { .. }))
            .count(),
        topology.topics.len() - 1
    );
}

#[test]
fn an_unreachable_broker_is_a_clear_error() {
    let out = Command::new(wxstream_bin())
        .args(["--brokers", "127.0.0.1:1", "topology", "check"])
        .env("WXSTREAM_KAFKA__REQUEST_TIMEOUT_MS", "2000")
        .current_dir(repo_root())
        .output()
        .expect("run wxstream");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("did not answer a metadata request"),
        "{stderr}"
    );
    assert!(stderr.contains("scripts/stack up"), "{stderr}");
}

#[test]
fn configuration_from_the_environment_is_strict() {
    let out = Command::new(wxstream_bin())
        .args(["topology", "show"])
        .env("WXSTREAM_KAFKA__BROKRS", "typo:9092")
        .current_dir(repo_root())
        .output()
        .expect("run wxstream");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a misspelt variable must not be ignored"
    );
    assert!(stderr.contains("invalid configuration"), "{stderr}");
    assert!(stderr.to_lowercase().contains("brokrs"), "{stderr}");
}

#[test]
fn a_bad_topology_file_is_reported_with_file_field_and_reason() {
    let dir = tempfile::tempdir().expect("tmp");
    let src = repo_root().join("topology");
    std::fs::create_dir(dir.path().join("connectors")).expect("mkdir");
    std::fs::copy(src.join("topics.yaml"), dir.path().join("topics.yaml")).expect("copy");
    let sink = std::fs::read_to_string(src.join("connectors/sink.yaml")).expect("read");
    std::fs::write(
        dir.path().join("connectors/sink.yaml"),
        sink.replace("tasks.max: 2", "tasks.max: -1"),
    )
    .expect("write");
    let out = Command::new(wxstream_bin())
        .args(["topology", "show", "--topology"])
        .arg(dir.path())
        .output()
        .expect("run wxstream");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("connectors/sink.yaml: field `tasks.max`:"),
        "{stderr}"
    );
    assert!(stderr.contains("expected u32"), "{stderr}");
}

#[test]
fn topology_check_refuses_three_replicas_without_min_insync_replicas() {
    let dir = tempfile::tempdir().expect("tmp");
    let src = repo_root().join("topology");
    std::fs::create_dir(dir.path().join("connectors")).expect("mkdir");
    for entry in std::fs::read_dir(src.join("connectors")).expect("connectors") {
        let path = entry.expect("entry").path();
        std::fs::copy(
            &path,
            dir.path()
                .join("connectors")
                .join(path.file_name().expect("name")),
        )
        .expect("copy");
    }
    let topics = std::fs::read_to_string(src.join("topics.yaml")).expect("topics.yaml");
    let three = topics.replace("  replication: 1\n", "  replication: 3\n");
    assert_ne!(three, topics, "the defaults declare replication");
    std::fs::write(dir.path().join("topics.yaml"), &three).expect("write");
    let refused = Command::new(wxstream_bin())
        .args(["topology", "check", "--topology"])
        .arg(dir.path())
        .current_dir(repo_root())
        .output()
        .expect("run wxstream");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success()
            && stderr.contains("min.insync.replicas")
            && stderr.contains("one broker"),
        "check accepted 3 replicas without min.insync.replicas: {stderr}"
    );
}

/// `topology check` fails while a topic that holds messages (retention.yaml's `kafka_topics`)
/// keeps them longer than the shortest corp retention, and passes once the retention allows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_fails_while_a_topic_outlasts_the_shortest_corp_retention() {
    let prefix = format!("{}.", unique("outlast"));
    let dir = tempfile::tempdir().expect("tmp");
    let topology = repo_root().join("topology");
    std::fs::copy(topology.join("topics.yaml"), dir.path().join("topics.yaml")).expect("copy");
    let run = |args: &[&str]| {
        Command::new(wxstream_bin())
            .args([
                "--brokers",
                &brokers(),
                "--topic-prefix",
                &prefix,
                "--topology",
            ])
            .arg(dir.path())
            .args(args)
            .current_dir(repo_root())
            .output()
            .expect("run wxstream")
    };
    let retention = |corp: &str| {
        std::fs::write(
            dir.path().join("retention.yaml"),
            format!("default: 365d\ncorps:\n  wwshort: {corp}\nkafka_topics: [wxstream.raw, wxstream.clean]\n"),
        )
        .expect("retention.yaml")
    };
    retention("3d");
    assert_eq!(run(&["topology", "apply"]).status.code(), Some(0));
    let check = run(&["topology", "check"]);
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert_eq!(check.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "retention: topic {prefix}wxstream.raw keeps messages for 7d, longer than the shortest corp retention 3d"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{prefix}wxstream.clean keeps messages for 14d")),
        "{stderr}"
    );
    retention("30d");
    let check = run(&["topology", "check"]);
    assert_eq!(
        check.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
}
