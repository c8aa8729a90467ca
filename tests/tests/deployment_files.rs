//! docker-compose.yml and the Prometheus config are validated offline (no Docker engine here):
//! `docker-compose config` must accept the file, and the rendered result must have the services,
//! healthchecks and start ordering users rely on.

use std::process::Command;

use serde::Deserialize;
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
    let out = tool_output("promtool", &["check", "rules", "ops/prometheus/alerts.yml"]);
    assert!(
        out.status.success(),
        "promtool rejected ops/prometheus/alerts.yml: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
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

#[test]
fn kubernetes_manifests_run_every_stage_with_probes_on_the_operations_port() {
    let dir = repo_root().join("k8s");
    let kustomization: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(dir.join("kustomization.yaml")).expect("kustomization"),
    )
    .expect("kustomization YAML");
    let literals = serde_yaml_ng::to_string(&kustomization["configMapGenerator"]).expect("yaml");
    assert!(
        literals.contains("WXSTREAM_METRICS_LISTEN=0.0.0.0:8080"),
        "{literals}"
    );
    let mut documents = Vec::new();
    for resource in kustomization["resources"].as_sequence().expect("resources") {
        let file = dir.join(resource.as_str().expect("a file"));
        let text =
            std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        for document in serde_yaml_ng::Deserializer::from_str(&text) {
            documents.push(Value::deserialize(document).expect("a YAML document"));
        }
    }
    assert!(documents.iter().any(|d| d["kind"] == "Job"
        && d["spec"]["template"]["spec"]["containers"][0]["args"]
            == serde_yaml_ng::from_str::<Value>("[topology, apply]").expect("yaml")));
    for stage in ["ingest", "decrypt", "sink", "stats", "media"] {
        let deployment = documents
            .iter()
            .find(|d| {
                d["kind"] == "Deployment"
                    && d["metadata"]["name"] == format!("wxstream-{stage}").as_str()
            })
            .unwrap_or_else(|| panic!("no Deployment for {stage}"));
        let container = &deployment["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(strings(&container["args"]), ["run", "--only", stage]);
        assert_eq!(
            container["livenessProbe"]["httpGet"]["path"], "/livez",
            "{stage}"
        );
        assert_eq!(
            container["readinessProbe"]["httpGet"]["path"], "/readyz",
            "{stage}"
        );
        assert_eq!(container["ports"][0]["containerPort"], 8080, "{stage}");
        assert_eq!(
            container["envFrom"][0]["configMapRef"]["name"], "wxstream-config",
            "{stage}"
        );
        assert!(
            documents.iter().any(|d| d["kind"] == "Service"
                && d["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]),
            "{stage} has a Service for its operations port"
        );
    }
}

#[test]
fn the_operations_api_description_is_valid_openapi() {
    let out = Command::new(wxstream_tests::python())
        .args(["-m", "openapi_spec_validator", "ops/openapi.yaml"])
        .current_dir(repo_root())
        .output()
        .expect("run openapi-spec-validator (scripts/stack up installs it in the venv)");
    assert!(
        out.status.success(),
        "ops/openapi.yaml is not valid OpenAPI: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
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
