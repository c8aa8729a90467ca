//! The Helm chart (`k8s/wxstream`), the one source of the cluster deployment:
//! - `helm lint` and `helm template` of the production example and the demo values, every
//!   object valid against a current Kubernetes release's schemas (and KEDA's and the Prometheus
//!   operator's) with kubeconform in strict mode, and kube-score with nothing critical left
//!   unexplained;
//! - what a cluster relies on, read from the rendered objects (no service links, restricted
//!   security contexts, probes, a disruption budget per stage, the topology hook, replicated
//!   topics with `min.insync.replicas`, only the callback port open);
//! - the rendered demo release started as its pods would be (`wxstream_tests::kube`): every
//!   Deployment and Job as a local process with exactly its Kubernetes environment, service
//!   links included, against the local stack, until 3 corps x 2,000 simulated messages
//!   reconcile;
//! - a process with every service link of the release and a stray `WXSTREAM_FOO` runs.
//!
//! The tools (helm, kubeconform, kube-score, the schemas) come from `scripts/deploy-tools`,
//! which `scripts/test` runs.

use std::path::PathBuf;
use std::time::Duration;

use serde_yaml_ng::Value;
use wxstream_tests::kube::{Cluster, Release, helm_template, helm_template_text, local_pods};
use wxstream_tests::{repo_root, stack_setting, unique, wxstream_bin};

fn tool(setting: &str) -> PathBuf {
    let path = PathBuf::from(stack_setting(setting));
    assert!(
        path.exists(),
        "{} ({setting}) is missing: `scripts/deploy-tools install` installs it (scripts/test runs it)",
        path.display()
    );
    path
}

fn helm() -> PathBuf {
    tool("WXSTACK_HELM")
}

const PRODUCTION: &[&str] = &["-f", "k8s/wxstream/values-production.yaml"];
const DEMO: &[&str] = &["-f", "k8s/wxstream/values-demo.yaml"];

fn run(program: &PathBuf, args: &[&str], stdin: Option<&[u8]>) -> (bool, String) {
    let mut child = std::process::Command::new(program)
        .args(args)
        .current_dir(repo_root())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    {
        let mut input = child.stdin.take().expect("stdin");
        if let Some(bytes) = stdin {
            std::io::Write::write_all(&mut input, bytes).expect("stdin");
        }
    }
    let out = child.wait_with_output().expect("wait");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// kubeconform's schema locations: the Kubernetes API's and the CRDs' strict schemas
/// (`scripts/deploy-tools`). A kind with no schema is an error, never skipped.
fn schema_locations() -> (String, String) {
    let at = |setting: &str| {
        format!(
            "{}/{{{{ .ResourceKind }}}}{{{{ .KindSuffix }}}}.json",
            tool(setting).display()
        )
    };
    (at("WXSTACK_K8S_SCHEMAS"), at("WXSTACK_CRD_SCHEMAS"))
}

fn rendered_text(values: &[&str]) -> Vec<u8> {
    let version = stack_setting("WXSTACK_K8S_VERSION");
    let mut args = vec!["--kube-version", version.as_str()];
    args.extend_from_slice(values);
    helm_template_text(&helm(), "wxstream", "wxstream", &args).into_bytes()
}

#[test]
fn the_chart_lints_and_renders_valid_objects_for_production_and_demo_values() {
    for values in [PRODUCTION, DEMO] {
        let mut args = vec!["lint", "k8s/wxstream", "--strict"];
        args.extend_from_slice(values);
        let (ok, out) = run(&helm(), &args, None);
        assert!(ok, "helm lint {values:?}:\n{out}");

        // Strict: unknown fields are errors, so a misspelt key fails here and not in a cluster.
        let rendered = rendered_text(values);
        let (schemas, crds) = schema_locations();
        let (ok, out) = run(
            &tool("WXSTACK_KUBECONFORM"),
            &[
                "-strict",
                "-summary",
                "-schema-location",
                &schemas,
                "-schema-location",
                &crds,
                "-",
            ],
            Some(&rendered),
        );
        assert!(ok, "kubeconform -strict {values:?}:\n{out}");
        assert!(
            out.contains("Invalid: 0, Errors: 0, Skipped: 0"),
            "kubeconform checked every object {values:?}:\n{out}"
        );
    }
    // The schemas are strict indeed: a misspelt pod field is refused.
    let broken = String::from_utf8(rendered_text(DEMO))
        .expect("utf-8")
        .replacen("enableServiceLinks: false", "enableServiceLink: false", 1);
    let (schemas, crds) = schema_locations();
    let (ok, out) = run(
        &tool("WXSTACK_KUBECONFORM"),
        &[
            "-strict",
            "-schema-location",
            &schemas,
            "-schema-location",
            &crds,
            "-",
        ],
        Some(broken.as_bytes()),
    );
    assert!(!ok, "kubeconform accepted an unknown pod field:\n{out}");
}

/// kube-score's critical findings the chart keeps, each with its reason.
const EXPLAINED: &[(&str, &str)] = &[
    (
        "CPU limit is not set",
        "decrypt is CPU-bound: a CPU limit throttles it (CFS quota) below what its request \
         reserves, and the other stages only ever burst briefly; requests size them, memory \
         and ephemeral storage are limited",
    ),
    (
        "ImagePullPolicy is not set to Always",
        "the image is pinned by tag or digest (image.digest), so IfNotPresent pulls exactly \
         what Always would, without a registry round trip at every start; image.pullPolicy \
         sets Always for mutable tags",
    ),
];

#[test]
fn kube_score_finds_nothing_critical_unexplained() {
    for values in [PRODUCTION, DEMO] {
        let rendered = rendered_text(values);
        let (_, out) = run(
            &tool("WXSTACK_KUBE_SCORE"),
            &["score", "--output-format", "ci", "-"],
            Some(&rendered),
        );
        // Its warnings are explained in README.md ("Kubernetes: the Helm chart"); its critical
        // findings are only those of EXPLAINED.
        let critical: Vec<&str> = out
            .lines()
            .filter(|l| l.starts_with("[CRITICAL]"))
            .filter(|l| !EXPLAINED.iter().any(|(finding, _)| l.ends_with(finding)))
            .collect();
        assert!(
            critical.is_empty(),
            "kube-score {values:?}: critical findings without a reason in EXPLAINED:\n{}",
            critical.join("\n")
        );
        assert!(
            out.lines().any(|l| l.starts_with("[OK]")),
            "kube-score scored nothing:\n{out}"
        );
    }
}

fn containers(release: &Release) -> Vec<(String, &Value, &Value)> {
    release
        .workloads()
        .into_iter()
        .flat_map(|w| {
            let spec = &w["spec"]["template"]["spec"];
            spec["containers"]
                .as_sequence()
                .expect("containers")
                .iter()
                .map(move |c| {
                    (
                        w["metadata"]["name"].as_str().unwrap_or("").to_string(),
                        spec,
                        c,
                    )
                })
        })
        .collect()
}

#[test]
fn the_rendered_release_is_what_a_cluster_needs() {
    let release = helm_template(&helm(), "wxstream", "wxstream", PRODUCTION);
    for (name, spec, c) in containers(&release) {
        assert_eq!(spec["enableServiceLinks"].as_bool(), Some(false), "{name}");
        assert_eq!(
            spec["automountServiceAccountToken"].as_bool(),
            Some(false),
            "{name}"
        );
        let sc = &c["securityContext"];
        assert_eq!(sc["runAsNonRoot"].as_bool(), Some(true), "{name}");
        assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true), "{name}");
        assert_eq!(
            sc["allowPrivilegeEscalation"].as_bool(),
            Some(false),
            "{name}"
        );
        assert_eq!(
            sc["capabilities"]["drop"][0].as_str(),
            Some("ALL"),
            "{name}"
        );
        assert!(c["resources"]["requests"]["memory"].is_string(), "{name}");
    }
    let stages = ["ingest", "decrypt", "sink", "stats", "media"];
    for stage in stages {
        let d = release.get("Deployment", &format!("wxstream-{stage}"));
        let c = &d["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(
            c["livenessProbe"]["httpGet"]["path"].as_str(),
            Some("/livez")
        );
        assert_eq!(
            c["readinessProbe"]["httpGet"]["path"].as_str(),
            Some("/readyz")
        );
        let args: Vec<&str> = c["args"]
            .as_sequence()
            .expect("args")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(&args[args.len() - 3..], ["run", "--only", stage]);
        release.get("PodDisruptionBudget", &format!("wxstream-{stage}"));
        release.get("Service", &format!("wxstream-{stage}"));
    }
    for stage in ["decrypt", "sink"] {
        let scaled = release.get("ScaledObject", &format!("wxstream-{stage}"));
        assert_eq!(
            scaled["spec"]["triggers"][0]["type"].as_str(),
            Some("kafka")
        );
        assert!(
            release.get("Deployment", &format!("wxstream-{stage}"))["spec"]["replicas"].is_null(),
            "KEDA owns {stage}'s replicas"
        );
    }
    // Decrypt is sized by the scale plan: a core a pod.
    assert_eq!(
        release.get("Deployment", "wxstream-decrypt")["spec"]["template"]["spec"]["containers"][0]
            ["resources"]["requests"]["cpu"]
            .as_str(),
        Some("1")
    );
    let job = release.get("Job", "wxstream-topology");
    assert_eq!(
        job["metadata"]["annotations"]["helm.sh/hook"].as_str(),
        Some("pre-install,pre-upgrade")
    );
    // The topology is the production one: replicated topics, min.insync.replicas, the SDK.
    let topology = release.data("ConfigMap", "wxstream-topology");
    let text = |k: &str| String::from_utf8(topology[k].clone()).expect("utf-8");
    let topics: Value = serde_yaml_ng::from_str(&text("topics.yaml")).expect("topics.yaml");
    assert_eq!(topics["defaults"]["replication"].as_u64(), Some(3));
    for topic in topics["topics"].as_sequence().expect("topics") {
        assert_eq!(
            topic["configs"]["min.insync.replicas"].as_str(),
            Some("2"),
            "{:?}",
            topic["name"]
        );
    }
    assert_eq!(
        topics["topics"][0]["partitions"].as_u64(),
        Some(12),
        "raw: 12 partitions"
    );
    for stage in ["ingest", "media"] {
        let connector: Value =
            serde_yaml_ng::from_str(&text(&format!("{stage}.yaml"))).expect("yaml");
        assert_eq!(
            connector["settings"]["client"].as_str(),
            Some("sdk"),
            "{stage}"
        );
        assert!(
            !text(&format!("{stage}.yaml")).contains("simulator"),
            "{stage}"
        );
    }
    // The SASL password is a reference to an environment variable fed from a Secret, never a
    // value in a ConfigMap.
    let worker: Value = serde_yaml_ng::from_str(&text("worker.yaml")).expect("worker.yaml");
    assert_eq!(
        worker["kafka"]["properties"]["sasl.password"]["env"].as_str(),
        Some("WX_KAFKA_SASL_PASSWORD")
    );
    let job_env = &job["spec"]["template"]["spec"]["containers"][0]["env"];
    let deployments = stages.map(|stage| {
        let d = release.get("Deployment", &format!("wxstream-{stage}"));
        (
            stage,
            &d["spec"]["template"]["spec"]["containers"][0]["env"],
        )
    });
    for (stage, env) in deployments.into_iter().chain([("topology job", job_env)]) {
        let env = env.as_sequence().expect("env");
        let password = env
            .iter()
            .find(|e| e["name"].as_str() == Some("WX_KAFKA_SASL_PASSWORD"))
            .unwrap_or_else(|| panic!("{stage} has the SASL password"));
        assert_eq!(
            password["valueFrom"]["secretKeyRef"]["name"].as_str(),
            Some("wxstream-kafka"),
            "{stage}"
        );
    }
    let decrypt: Value = serde_yaml_ng::from_str(&text("decrypt.yaml")).expect("yaml");
    assert_eq!(decrypt["settings"]["cipher"].as_str(), Some("sdk"));
    // The topology is valid for wxstream itself.
    let dir = tempfile::tempdir().expect("dir");
    std::fs::create_dir_all(dir.path().join("connectors")).expect("dir");
    std::fs::write(dir.path().join("topics.yaml"), text("topics.yaml")).expect("write");
    for stage in stages {
        std::fs::write(
            dir.path().join(format!("connectors/{stage}.yaml")),
            text(&format!("{stage}.yaml")),
        )
        .expect("write");
    }
    wx_topology::load_dir(dir.path()).unwrap_or_else(|e| panic!("the chart's topology: {e}"));
    // Only the callback port is open to every source.
    let open: Vec<&Value> = release
        .of_kind("NetworkPolicy")
        .into_iter()
        .flat_map(|p| p["spec"]["ingress"].as_sequence().expect("ingress"))
        .filter(|rule| rule["from"].is_null())
        .collect();
    assert_eq!(open.len(), 1, "{open:?}");
    assert_eq!(open[0]["ports"][0]["port"].as_u64(), Some(8481));
    // The alert rules are ops/prometheus/alerts.yml's.
    let rules = release.of_kind("PrometheusRule");
    let alerts: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(repo_root().join("ops/prometheus/alerts.yml")).expect("alerts"),
    )
    .expect("alerts.yml");
    assert_eq!(rules[0]["spec"]["groups"], alerts["groups"]);
}

/// A container's environment entry by name.
fn env_entry<'a>(container: &'a Value, name: &str) -> Option<&'a Value> {
    container["env"]
        .as_sequence()
        .expect("env")
        .iter()
        .find(|e| e["name"].as_str() == Some(name))
}

/// A rendered connector's `settings` block, as the stage receives it.
fn connector_settings(
    release: &Release,
    stage: &str,
) -> serde_json::Map<String, serde_json::Value> {
    let topology = release.data("ConfigMap", "wxstream-topology");
    let text = String::from_utf8(topology[&format!("{stage}.yaml")].clone()).expect("utf-8");
    let connector: serde_json::Value = serde_yaml_ng::from_str(&text).expect("connector");
    connector["settings"]
        .as_object()
        .unwrap_or_else(|| panic!("{stage}.yaml has settings"))
        .clone()
}

const TLS_DIR: &str = "/etc/wxstream/tls";

#[test]
fn the_production_values_verify_every_connection_against_the_mounted_ca() {
    let release = helm_template(&helm(), "wxstream", "wxstream", PRODUCTION);
    // The CA Secret is mounted read-only at /etc/wxstream/tls in every Deployment and the Job.
    let workloads = release.workloads();
    assert_eq!(workloads.len(), 6, "five stages and the topology Job");
    for w in workloads {
        let name = format!(
            "{}/{}",
            w["kind"].as_str().unwrap_or(""),
            w["metadata"]["name"].as_str().unwrap_or("")
        );
        let spec = &w["spec"]["template"]["spec"];
        let mount = spec["containers"][0]["volumeMounts"]
            .as_sequence()
            .expect("volumeMounts")
            .iter()
            .find(|m| m["mountPath"].as_str() == Some(TLS_DIR))
            .unwrap_or_else(|| panic!("{name} mounts no CA at {TLS_DIR}"));
        assert_eq!(mount["readOnly"].as_bool(), Some(true), "{name}");
        let volume = spec["volumes"]
            .as_sequence()
            .expect("volumes")
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap_or_else(|| panic!("{name}: no volume {:?}", mount["name"]));
        assert_eq!(
            volume["secret"]["secretName"].as_str(),
            Some("wxstream-tls-ca"),
            "{name}"
        );
    }
    // Kafka's CA is one of its files.
    let topology = release.data("ConfigMap", "wxstream-topology");
    let worker: Value =
        serde_yaml_ng::from_str(std::str::from_utf8(&topology["worker.yaml"]).expect("utf-8"))
            .expect("worker.yaml");
    assert_eq!(
        worker["kafka"]["properties"]["ssl.ca.location"].as_str(),
        Some("/etc/wxstream/tls/kafka-ca.pem")
    );
    // The sink: two HTTPS nodes, the CA file, the API key by reference to a variable that only
    // the sink's pods get, from the Secret.
    let sink = connector_settings(&release, "sink");
    assert_eq!(
        sink["elasticsearch_api_key"],
        serde_json::json!({"env": "WX_ELASTICSEARCH_API_KEY"})
    );
    assert_eq!(
        sink["elasticsearch_ca_file"].as_str(),
        Some("/etc/wxstream/tls/es-ca.pem")
    );
    assert!(sink.get("elasticsearch_username").is_none(), "{sink:?}");
    assert!(sink.get("elasticsearch_password").is_none(), "{sink:?}");
    let parsed = <wx_sink::SinkSettings as wx_runtime::StageSettings>::parse(&sink)
        .unwrap_or_else(|e| panic!("the chart's sink settings: {e}"));
    assert_eq!(
        parsed.elasticsearch_ca_file.as_deref(),
        Some(std::path::Path::new("/etc/wxstream/tls/es-ca.pem"))
    );
    assert!(parsed.elasticsearch_api_key.is_some());
    for stage in ["ingest", "decrypt", "sink", "stats", "media"] {
        let d = release.get("Deployment", &format!("wxstream-{stage}"));
        let c = &d["spec"]["template"]["spec"]["containers"][0];
        let key = env_entry(c, "WX_ELASTICSEARCH_API_KEY");
        assert!(
            env_entry(c, "WX_ELASTICSEARCH_PASSWORD").is_none(),
            "{stage}"
        );
        if stage == "sink" {
            let key = key.expect("the sink has the API key");
            assert_eq!(
                key["valueFrom"]["secretKeyRef"]["name"].as_str(),
                Some("wxstream-stores")
            );
            assert_eq!(
                key["valueFrom"]["secretKeyRef"]["key"].as_str(),
                Some("elasticsearch-api-key")
            );
            assert!(key["value"].is_null(), "never a value");
            let url = env_entry(c, "WX_ELASTICSEARCH_URL").expect("url")["value"]
                .as_str()
                .expect("a plain URL");
            assert_eq!(url.split(',').count(), 2, "two nodes: {url}");
            assert!(url.split(',').all(|u| u.starts_with("https://")), "{url}");
        } else {
            assert!(key.is_none(), "only the sink gets the API key, not {stage}");
        }
    }
    let job = release.get("Job", "wxstream-topology");
    let job_container = &job["spec"]["template"]["spec"]["containers"][0];
    assert!(env_entry(job_container, "WX_ELASTICSEARCH_API_KEY").is_none());
    // The media stage trusts the S3 endpoint's CA.
    let media = connector_settings(&release, "media");
    assert_eq!(
        media["s3"]["ca_file"].as_str(),
        Some("/etc/wxstream/tls/s3-ca.pem")
    );
    let parsed = <wx_media::MediaSettings as wx_runtime::StageSettings>::parse(&media)
        .unwrap_or_else(|e| panic!("the chart's media settings: {e}"));
    assert_eq!(
        parsed.s3.ca_file.as_deref(),
        Some(std::path::Path::new("/etc/wxstream/tls/s3-ca.pem"))
    );

    // A user and password instead of the API key: the password, by reference, to the sink only.
    let mut args = PRODUCTION.to_vec();
    args.extend([
        "--set",
        "elasticsearch.apiKeySecret.name=",
        "--set",
        "elasticsearch.username=wxstream",
        "--set",
        "elasticsearch.passwordSecret.name=wxstream-es",
    ]);
    let release = helm_template(&helm(), "wxstream", "wxstream", &args);
    let sink = connector_settings(&release, "sink");
    assert_eq!(sink["elasticsearch_username"].as_str(), Some("wxstream"));
    assert_eq!(
        sink["elasticsearch_password"],
        serde_json::json!({"env": "WX_ELASTICSEARCH_PASSWORD"})
    );
    assert!(sink.get("elasticsearch_api_key").is_none(), "{sink:?}");
    <wx_sink::SinkSettings as wx_runtime::StageSettings>::parse(&sink)
        .unwrap_or_else(|e| panic!("the chart's sink settings with a user: {e}"));
    for stage in ["ingest", "decrypt", "sink", "stats", "media"] {
        let d = release.get("Deployment", &format!("wxstream-{stage}"));
        let c = &d["spec"]["template"]["spec"]["containers"][0];
        let password = env_entry(c, "WX_ELASTICSEARCH_PASSWORD");
        assert!(
            env_entry(c, "WX_ELASTICSEARCH_API_KEY").is_none(),
            "{stage}"
        );
        if stage == "sink" {
            let from = &password.expect("the sink has the password")["valueFrom"]["secretKeyRef"];
            assert_eq!(from["name"].as_str(), Some("wxstream-es"));
            assert_eq!(from["key"].as_str(), Some("elasticsearch-password"));
        } else {
            assert!(
                password.is_none(),
                "only the sink gets the password, not {stage}"
            );
        }
    }
}

#[test]
fn without_tls_values_nothing_is_mounted_or_set() {
    let release = helm_template(&helm(), "wxstream", "wxstream", DEMO);
    for (name, spec, c) in containers(&release) {
        let mounts = c["volumeMounts"].as_sequence().expect("volumeMounts");
        assert!(
            !mounts
                .iter()
                .any(|m| m["mountPath"].as_str() == Some(TLS_DIR)),
            "{name}"
        );
        assert!(
            !spec["volumes"]
                .as_sequence()
                .expect("volumes")
                .iter()
                .any(|v| v["name"].as_str() == Some("tls-ca")),
            "{name}"
        );
        assert!(env_entry(c, "WX_ELASTICSEARCH_API_KEY").is_none(), "{name}");
        assert!(
            env_entry(c, "WX_ELASTICSEARCH_PASSWORD").is_none(),
            "{name}"
        );
    }
    let sink = connector_settings(&release, "sink");
    for field in [
        "elasticsearch_ca_file",
        "elasticsearch_username",
        "elasticsearch_password",
        "elasticsearch_api_key",
    ] {
        assert!(sink.get(field).is_none(), "{field}: {sink:?}");
    }
    let media = connector_settings(&release, "media");
    assert!(media["s3"].get("ca_file").is_none(), "{media:?}");
}

/// Every setting named like a secret in `doc` (at `path`), with its value.
fn secret_like<'a>(doc: &'a Value, path: String, out: &mut Vec<(String, &'a Value)>) {
    const SECRET: &[&str] = &[
        "password",
        "secret",
        "token",
        "api_key",
        "aes_key",
        "access_key",
        "mysql_url",
    ];
    match doc {
        Value::Mapping(map) => {
            for (k, v) in map {
                let key = k.as_str().unwrap_or_default();
                let at = format!("{path}.{key}");
                if SECRET.iter().any(|s| key.to_lowercase().contains(s)) {
                    out.push((at.clone(), v));
                }
                secret_like(v, at, out);
            }
        }
        Value::Sequence(items) => {
            for (i, v) in items.iter().enumerate() {
                secret_like(v, format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn no_configmap_holds_a_secret_value() {
    for values in [PRODUCTION, DEMO] {
        let release = helm_template(&helm(), "wxstream", "wxstream", values);
        let mut checked = 0;
        for cm in release.of_kind("ConfigMap") {
            let name = cm["metadata"]["name"].as_str().expect("name");
            for (key, bytes) in release.data("ConfigMap", name) {
                let text = String::from_utf8(bytes).expect("utf-8");
                // No URL carries credentials (scheme://user:password@host).
                for word in text.split_whitespace() {
                    if let Some((_, rest)) = word.split_once("://") {
                        let authority = rest.split('/').next().unwrap_or(rest);
                        assert!(
                            !authority.contains('@'),
                            "{values:?} ConfigMap {name} {key}: a URL with credentials: {word}"
                        );
                    }
                }
                if !key.ends_with(".yaml") {
                    continue;
                }
                let doc: Value = serde_yaml_ng::from_str(&text).expect("yaml");
                let mut secrets = Vec::new();
                secret_like(&doc, key.clone(), &mut secrets);
                for (at, value) in secrets {
                    // A mapping of secrets (callback: {token, encoding_aes_key}) is walked into;
                    // each leaf is a reference, {env: NAME} or {file: PATH}, never text.
                    if let Some(map) = value.as_mapping()
                        && !(map.len() == 1
                            && (map.contains_key("env") || map.contains_key("file")))
                    {
                        assert!(
                            map.values().all(Value::is_mapping),
                            "{values:?} ConfigMap {name}: {at} is not a reference: {value:?}"
                        );
                        continue;
                    }
                    let reference = value.as_mapping().unwrap_or_else(|| {
                        panic!("{values:?} ConfigMap {name}: {at} is a value, not a reference")
                    });
                    let target = reference
                        .get("env")
                        .or_else(|| reference.get("file"))
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    assert!(
                        !target.is_empty(),
                        "{values:?} ConfigMap {name}: {at}: {value:?}"
                    );
                    checked += 1;
                }
            }
        }
        assert!(
            checked >= 10,
            "{values:?}: {checked} secret settings checked"
        );
    }
}

#[test]
fn an_api_key_with_a_user_fails_rendering_with_a_clear_message() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["--set", "elasticsearch.username=wxstream"],
            "elasticsearch: an API key (apiKeySecret) or a user and password (username, passwordSecret), not both",
        ),
        (
            &[
                "--set",
                "elasticsearch.apiKeySecret.name=",
                "--set",
                "elasticsearch.username=wxstream",
            ],
            "elasticsearch.username: the password's Secret (elasticsearch.passwordSecret.name) is required",
        ),
        (
            &[
                "--set",
                "elasticsearch.apiKeySecret.name=",
                "--set",
                "elasticsearch.passwordSecret.name=wxstream-es",
            ],
            "elasticsearch.passwordSecret: the user (elasticsearch.username) is required",
        ),
    ];
    for (sets, message) in cases {
        let mut args = vec![
            "template",
            "wxstream",
            "k8s/wxstream",
            "--namespace",
            "wxstream",
        ];
        args.extend_from_slice(PRODUCTION);
        args.extend_from_slice(sets);
        let (ok, out) = run(&helm(), &args, None);
        assert!(!ok, "helm template {sets:?} rendered:\n{out}");
        assert!(out.contains(message), "helm template {sets:?}:\n{out}");
    }
}

/// The local stack's address of a URL or `host:port` setting.
fn host_port(setting: &str) -> String {
    let value = stack_setting(setting);
    let rest = value.rsplit("://").next().unwrap_or(&value);
    let rest = rest.rsplit('@').next().unwrap_or(rest);
    rest.split('/').next().unwrap_or(rest).to_string()
}

#[test]
fn a_process_with_every_service_link_and_a_stray_variable_runs() {
    let release = helm_template(&helm(), "wxstream", "wxstream", DEMO);
    let mut links = release.service_links();
    assert!(
        links.iter().any(|(k, _)| k == "WXSTREAM_SINK_PORT"),
        "the release has a Service wxstream-sink: {links:?}"
    );
    links.push(("WXSTREAM_FOO".into(), "unrelated".into()));
    let out = std::process::Command::new(wxstream_bin())
        .arg("schemas")
        .envs(links.iter().map(|(k, v)| (k, v)))
        .current_dir(repo_root())
        .output()
        .expect("wxstream");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "wxstream schemas with service links: {stderr}"
    );
    assert!(
        stderr.contains("WXSTREAM_FOO") && stderr.contains("WXSTREAM_SINK_PORT"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("tcp://10.96"),
        "values are never logged: {stderr}"
    );
    // The configuration form stays strict: topology_apply.rs
    // `configuration_from_the_environment_is_strict`.
}

#[tokio::test(flavor = "multi_thread")]
async fn the_rendered_demo_release_runs_as_its_pods_would_and_reconciles() {
    let stem = unique("helm");
    let prefix = format!("{stem}.");
    let database = stem.replace('-', "_");
    let index = format!("{stem}-messages");
    let key_prefix = format!("{stem}/");
    let sets = [
        format!("topicPrefix={prefix}"),
        format!("mysql.database={database}"),
        format!("elasticsearch.indexPrefix={index}"),
        "s3.bucket=wxtest".to_string(),
        format!("s3.keyPrefix={key_prefix}"),
        "simulator.messages=2000".to_string(),
    ];
    let mut args: Vec<&str> = DEMO.to_vec();
    for set in &sets {
        args.extend(["--set", set.as_str()]);
    }
    let release = helm_template(&helm(), "wxstream", "wxstream", &args);
    let dir = tempfile::tempdir().expect("dir");
    let cluster = Cluster {
        external: vec![
            ("kafka:9092".into(), host_port("WXSTACK_BROKERS")),
            ("mysql:3306".into(), host_port("WXSTACK_MYSQL_URL")),
            ("elasticsearch:9200".into(), host_port("WXSTACK_ES_URL")),
            ("minio:9000".into(), host_port("WX_S3_ENDPOINT")),
        ],
        image_files: vec!["topology", "schemas"],
    };
    let pods = local_pods(
        &release,
        &cluster,
        dir.path(),
        &[("WXSTREAM_FOO", "unrelated")],
    );
    let names: Vec<&str> = pods.iter().map(|p| p.workload.as_str()).collect();
    assert_eq!(
        names,
        [
            "Job/wxstream-topology",
            "Deployment/wxstream-ingest",
            "Deployment/wxstream-decrypt",
            "Deployment/wxstream-sink",
            "Deployment/wxstream-stats",
            "Deployment/wxstream-media",
            "Deployment/wxstream-simulator",
        ]
    );
    let bin = wxstream_bin();
    // The hook first, to its end, as Helm runs it.
    for pod in pods.iter().filter(|p| p.kind == "Job") {
        let mut job = pod.start(&bin);
        let status = job.wait_exit(Duration::from_secs(120));
        assert!(
            status.is_some_and(|s| s.success()),
            "{} did not succeed ({status:?}):\n{}",
            pod.workload,
            job.log_tail()
        );
    }
    let mut running: Vec<_> = pods
        .iter()
        .filter(|p| p.kind == "Deployment")
        .map(|p| (p, p.start(&bin)))
        .collect();
    let sim = pods
        .iter()
        .find(|p| p.workload == "Deployment/wxstream-simulator")
        .expect("simulator");
    // The simulator generates its feeds first (the demo's 4096-bit keys make that slower).
    let health = format!("http://{}/sim/health", sim.addr(8480));
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    while reqwest::get(&health)
        .await
        .map(|r| r.status().is_success())
        .ok()
        != Some(true)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the simulator did not answer within 180 s:\n{}",
            running[running.len() - 1].1.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let reconcile = tokio::task::spawn_blocking({
        let sim_url = format!("http://{}", sim.addr(8480));
        let args = vec![
            repo_root()
                .join("scripts/reconcile.py")
                .display()
                .to_string(),
            "--prefix".into(),
            prefix.clone(),
            "--brokers".into(),
            stack_setting("WXSTACK_BROKERS"),
            "--sim-url".into(),
            sim_url,
            "--database".into(),
            database.clone(),
            "--index-url".into(),
            format!("{}/{index}", stack_setting("WXSTACK_ES_URL")),
            "--s3-endpoint".into(),
            stack_setting("WX_S3_ENDPOINT"),
            "--bucket".into(),
            "wxtest".into(),
            "--key-prefix".into(),
            key_prefix.clone(),
            "--wait".into(),
            "300".into(),
        ];
        move || {
            std::process::Command::new(wxstream_tests::python())
                .args(&args)
                .env("WX_S3_ACCESS_KEY_ID", stack_setting("WX_S3_ACCESS_KEY_ID"))
                .env(
                    "WX_S3_SECRET_ACCESS_KEY",
                    stack_setting("WX_S3_SECRET_ACCESS_KEY"),
                )
                .current_dir(repo_root())
                .output()
                .expect("reconcile.py")
        }
    })
    .await
    .expect("join");
    let report = String::from_utf8_lossy(&reconcile.stdout).into_owned();
    let mut tails = Vec::new();
    for (pod, process) in &mut running {
        let alive = process.is_running();
        tails.push(format!(
            "--- {} ({}):\n{}",
            pod.workload,
            if alive { "running" } else { "EXITED" },
            process.log_tail()
        ));
    }
    let ok = reconcile.status.success() && report.contains("RECONCILED:");
    if !ok {
        let kept = dir.keep();
        panic!(
            "the rendered release did not reconcile (pods in {}):\n{report}\n{}\n{}",
            kept.display(),
            String::from_utf8_lossy(&reconcile.stderr),
            tails.join("\n")
        );
    }
    // Every stage is still up and ready, and said which variables it ignored.
    for (pod, process) in &mut running {
        assert!(
            process.is_running(),
            "{} exited:\n{}",
            pod.workload,
            process.log_tail()
        );
        if pod.workload != "Deployment/wxstream-simulator" {
            let ready = reqwest::get(format!("http://{}/readyz", pod.addr(8080)))
                .await
                .expect("readyz");
            assert!(ready.status().is_success(), "{} not ready", pod.workload);
            let log = std::fs::read_to_string(&process.log).expect("log");
            assert!(log.contains("WXSTREAM_FOO"), "{}: {log}", pod.workload);
        }
    }
    eprintln!("{report}");
}
