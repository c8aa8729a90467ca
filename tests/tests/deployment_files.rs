//! docker-compose.yml and the Prometheus config are validated offline (no Docker engine here):
//! `docker-compose config` must accept the file, and the rendered result must have the services,
//! healthchecks and start ordering users rely on.

use std::process::Command;

use serde_yaml_ng::Value;
use wxstream_tests::repo_root;

fn tool_output(program: &str, args: &[&str]) -> std::process::Output {
    Command::new(program)
        .args(args)
        .current_dir(repo_root())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {program} ({e}): `scripts/stack up` installs it from Debian's packages"
            )
        })
}

fn rendered_compose() -> Value {
    let out = tool_output(
        "docker-compose",
        &["-f", "docker-compose.yml", "--profile", "stages", "config"],
    );
    assert!(
        out.status.success(),
        "docker-compose config rejected the file: {}",
        String::from_utf8_lossy(&out.stderr)
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
        "kafka",
        "mysql",
        "elasticsearch",
        "prometheus",
        "grafana",
        "ingest",
        "decrypt",
        "sink",
        "stats",
    ] {
        let test = &services[name]["healthcheck"]["test"];
        assert!(
            test.is_sequence() || test.is_string(),
            "service {name} has no healthcheck"
        );
    }
    for stage in ["ingest", "decrypt", "sink", "stats"] {
        let service = &services[stage];
        assert_eq!(service["image"].as_str(), Some("wxstream:dev"), "{stage}");
        let command: Vec<&str> = service["command"]
            .as_sequence()
            .expect("command list")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(command, ["run", "--only", stage]);
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
        healthy_dependency(&services["topology"], "kafka").as_deref(),
        Some("service_healthy")
    );
    let mysql_args = serde_yaml_ng::to_string(&services["mysql"]["command"]).expect("yaml");
    assert!(
        mysql_args.contains("--character-set-server=utf8mb4"),
        "{mysql_args}"
    );
    assert!(
        services["mysql"]["image"]
            .as_str()
            .is_some_and(|i| i.starts_with("mysql:8.0"))
    );
    assert!(
        services["elasticsearch"]["image"]
            .as_str()
            .is_some_and(|i| i.contains("elasticsearch:8."))
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
fn prometheus_config_is_valid() {
    let out = tool_output(
        "promtool",
        &["check", "config", "ops/prometheus/prometheus.yml"],
    );
    assert!(
        out.status.success(),
        "promtool rejected ops/prometheus/prometheus.yml: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
