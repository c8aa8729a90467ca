//! docker-compose.yml and the Prometheus config are validated offline (no Docker engine here):
//! compose-go, the loader `docker compose config` uses (`scripts/deploy-tools` builds it), must
//! accept the file, and the loaded model must have the services, healthchecks, start ordering and
//! volumes users rely on. The Helm chart has its own tests (helm_chart.rs).

use std::process::Command;

use serde_yaml_ng::Value;
use wxstream_tests::repo_root;

/// Runs a validator in the repository; fails unless it accepts (`scripts/stack up` installs
/// each from Debian's packages or its venv).
fn accepted(command: &mut Command, what: &str) -> std::process::Output {
    wxstream_tests::run_ok(command.current_dir(repo_root()), what)
}

fn rendered_compose() -> Value {
    let loader = wxstream_tests::stack_setting("WXSTACK_COMPOSE_CHECK");
    let out = accepted(
        Command::new(&loader).args(["-f", "docker-compose.yml", "--profile", "stages"]),
        "compose-go's check of docker-compose.yml",
    );
    serde_yaml_ng::from_slice(&out.stdout).expect("rendered compose is YAML")
}

fn healthy_dependency(service: &Value, on: &str) -> Option<String> {
    service["depends_on"][on]["condition"]
        .as_str()
        .map(str::to_string)
}

#[test]
fn compose_file_renders_with_every_service_healthcheck_and_ordering() {
    let compose = rendered_compose();
    let services = &compose["services"];
    for name in [
        "simulator",
        "kafka",
        "mysql",
        "elasticsearch",
        "prometheus",
        "grafana",
        "ingest",
        "decrypt",
        "sink",
        "stats",
        "minio",
        "media",
    ] {
        let test = &services[name]["healthcheck"]["test"];
        assert!(
            test.is_sequence() || test.is_string(),
            "service {name} has no healthcheck"
        );
    }
    for stage in ["ingest", "decrypt", "sink", "stats", "media"] {
        let service = &services[stage];
        assert_eq!(service["image"].as_str(), Some("wxstream:dev"), "{stage}");
        assert_eq!(strings(&service["command"]), ["run", "--only", stage]);
        let probe = serde_yaml_ng::to_string(&service["healthcheck"]["test"]).expect("yaml");
        assert!(
            probe.contains("http://localhost:8080/readyz"),
            "{stage}'s healthcheck asks the readiness endpoint: {probe}"
        );
        assert_eq!(
            service["environment"]["WXSTREAM_METRICS_LISTEN"].as_str(),
            Some("0.0.0.0:8080"),
            "{stage} serves its operations endpoint where Prometheus and the healthcheck look"
        );
        assert_eq!(
            healthy_dependency(service, "topology").as_deref(),
            Some("service_completed_successfully"),
            "{stage} starts after the topics exist"
        );
    }
    for store in ["mysql", "elasticsearch"] {
        assert_eq!(
            healthy_dependency(&services["sink"], store).as_deref(),
            Some("service_healthy"),
            "the sink waits for {store}"
        );
    }
    assert_eq!(
        healthy_dependency(&services["media"], "minio-bucket").as_deref(),
        Some("service_completed_successfully"),
        "the media stage starts once its bucket exists"
    );
    assert_eq!(
        healthy_dependency(&services["topology"], "kafka").as_deref(),
        Some("service_healthy")
    );
    let mysql_args = serde_yaml_ng::to_string(&services["mysql"]["command"]).expect("yaml");
    assert!(
        mysql_args.contains("--character-set-server=utf8mb4"),
        "{mysql_args}"
    );
    // Maintained releases: MySQL's 8.4 LTS (8.0 reached its end of life), Elasticsearch's last
    // 8.x minor.
    assert_eq!(services["mysql"]["image"].as_str(), Some("mysql:8.4"));
    assert!(
        services["elasticsearch"]["image"]
            .as_str()
            .is_some_and(|i| i.contains("elasticsearch:8.19."))
    );
    assert_eq!(
        services["elasticsearch"]["environment"]["xpack.security.enabled"].as_str(),
        Some("false")
    );
    assert!(
        services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"]
            .as_str()
            .is_some_and(|r| r.contains("controller")),
        "Kafka runs in KRaft mode"
    );
}

#[test]
fn prometheus_and_grafana_are_provisioned_with_the_rules_and_dashboards() {
    let compose = rendered_compose();
    let mounts = |service: &str| -> Vec<String> {
        compose["services"][service]["volumes"]
            .as_sequence()
            .expect("volumes")
            .iter()
            .map(|v| match v.as_str() {
                // Short syntax: `source:target[:mode]`.
                Some(short) => short.split(':').nth(1).unwrap_or_default().to_string(),
                None => v["target"].as_str().unwrap_or_default().to_string(),
            })
            .collect()
    };
    assert!(mounts("prometheus").contains(&"/etc/prometheus/alerts.yml".to_string()));
    let grafana = mounts("grafana");
    for file in ["wxstream.json", "wxstream-bi-stats.json"] {
        assert!(
            grafana.contains(&format!("/var/lib/grafana/dashboards/{file}")),
            "{grafana:?}"
        );
    }
    for file in [
        "ops/grafana/dashboards/wxstream.json",
        "docs/bi/grafana-stats.json",
    ] {
        let text = std::fs::read_to_string(repo_root().join(file)).expect("dashboard");
        let dashboard: serde_json::Value = serde_json::from_str(&text).expect("dashboard JSON");
        assert!(
            dashboard["panels"]
                .as_array()
                .is_some_and(|p| !p.is_empty()),
            "{file} has panels"
        );
    }
}

#[test]
fn alert_rules_pass_promtool() {
    let out = accepted(
        Command::new("promtool").args(["check", "rules", "ops/prometheus/alerts.yml"]),
        "promtool's check of ops/prometheus/alerts.yml",
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let rules =
        std::fs::read_to_string(wxstream_tests::repo_root().join("ops/prometheus/alerts.yml"))
            .expect("alerts.yml")
            .matches("- alert:")
            .count();
    assert!(rules >= 8, "every alert is in the file ({rules})");
    assert!(
        text.contains(&format!("SUCCESS: {rules} rules found")),
        "promtool read every rule of the file: {text}"
    );
}

#[test]
fn prometheus_config_is_valid() {
    accepted(
        Command::new("promtool").args(["check", "config", "ops/prometheus/prometheus.yml"]),
        "promtool's check of ops/prometheus/prometheus.yml",
    );
}

/// The target of a service's volume mount of `volume` (long or short syntax).
fn volume_target(service: &Value, volume: &str) -> Option<String> {
    service["volumes"]
        .as_sequence()?
        .iter()
        .find_map(|v| match v.as_str() {
            Some(short) => {
                let mut parts = short.split(':');
                (parts.next() == Some(volume)).then(|| parts.next().unwrap_or_default().to_string())
            }
            None => (v["source"].as_str() == Some(volume))
                .then(|| v["target"].as_str().unwrap_or_default().to_string()),
        })
}

#[test]
fn every_engine_keeps_its_data_in_a_declared_volume() {
    let compose = rendered_compose();
    let services = &compose["services"];
    // Kafka writes where KAFKA_LOG_DIRS says (the image's default is /tmp in the container).
    let kafka = &services["kafka"];
    let target = volume_target(kafka, "kafka-data").expect("kafka mounts kafka-data");
    let log_dirs = kafka["environment"]["KAFKA_LOG_DIRS"]
        .as_str()
        .expect("KAFKA_LOG_DIRS is set");
    for dir in log_dirs.split(',') {
        assert!(
            dir.starts_with(&format!("{}/", target.trim_end_matches('/'))) || dir == target,
            "Kafka's log dir {dir} is outside its volume {target}"
        );
    }
    let cluster_id = kafka["environment"]["CLUSTER_ID"]
        .as_str()
        .expect("CLUSTER_ID");
    assert_eq!(cluster_id.len(), 22, "a base64 UUID: {cluster_id}");
    for (service, volume, data) in [
        ("mysql", "mysql-data", "/var/lib/mysql"),
        ("elasticsearch", "es-data", "/usr/share/elasticsearch/data"),
        ("minio", "minio-data", "/data"),
    ] {
        assert_eq!(
            volume_target(&services[service], volume).as_deref(),
            Some(data),
            "{service}"
        );
    }
    for volume in ["kafka-data", "mysql-data", "es-data", "minio-data"] {
        assert!(
            compose["volumes"][volume].is_mapping() || compose["volumes"][volume].is_null(),
            "{volume} is declared"
        );
        assert!(
            compose["volumes"]
                .as_mapping()
                .expect("volumes")
                .contains_key(volume),
            "{volume} is declared"
        );
    }
}

#[test]
fn the_operations_api_description_is_valid_openapi() {
    accepted(
        Command::new(wxstream_tests::python()).args([
            "-m",
            "openapi_spec_validator",
            "ops/openapi.yaml",
        ]),
        "openapi-spec-validator's check of ops/openapi.yaml",
    );
}

/// A YAML list of strings (a command or container args).
fn strings(list: &Value) -> Vec<&str> {
    list.as_sequence()
        .expect("a list")
        .iter()
        .filter_map(Value::as_str)
        .collect()
}
