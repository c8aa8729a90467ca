//! A rendered Helm release run as local processes, the way Kubernetes would run its pods: each
//! Deployment's and Job's container gets exactly the command, arguments and environment
//! Kubernetes would give it (`env`, `envFrom`, the downward-API fields, the service-link
//! variables of every Service of the release, the cluster's `KUBERNETES_*` ones), and its
//! ConfigMap, Secret, projected and emptyDir volumes are written to a folder of its own at their
//! mount paths. What a cluster would resolve by name is mapped to this machine:
//! - a Service's `name:port` (and its `.namespace.svc[.cluster.local]` forms) to the local port
//!   of the pod behind it;
//! - a container's own `0.0.0.0:<containerPort>` to a free port of 127.0.0.1 (every pod here
//!   shares one network namespace);
//! - the outside services' addresses (`kafka:9092`, ...) to the local stack's, by a table the
//!   test gives;
//! - a mount path (`/etc/wxstream/topology`) to its folder, in arguments, variables and the
//!   mounted files themselves.
//!
//! Those mappings are the only differences from a cluster, and each is a plain text
//! replacement a test can read in the pod's `pod.json`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::Deserialize;
use serde_yaml_ng::Value;

/// The objects `helm template` rendered.
#[derive(Debug, Clone)]
pub struct Release {
    pub namespace: String,
    pub objects: Vec<Value>,
}

/// The text `helm template NAME k8s/wxstream --namespace NAMESPACE ARGS...` renders; panics with
/// helm's error.
pub fn helm_template_text(helm: &Path, name: &str, namespace: &str, args: &[&str]) -> String {
    crate::run_ok_text(
        std::process::Command::new(helm)
            .args(["template", name, "k8s/wxstream", "--namespace", namespace])
            .args(args)
            .current_dir(crate::repo_root()),
        &format!("helm template {args:?}"),
    )
}

/// [`helm_template_text`], its documents parsed.
pub fn helm_template(helm: &Path, name: &str, namespace: &str, args: &[&str]) -> Release {
    let text = helm_template_text(helm, name, namespace, args);
    let objects = serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).expect("rendered YAML"))
        .filter(|v| !v.is_null())
        .collect();
    Release {
        namespace: namespace.to_string(),
        objects,
    }
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

fn seq(v: &Value) -> &[Value] {
    v.as_sequence().map(Vec::as_slice).unwrap_or_default()
}

impl Release {
    /// The objects of one kind.
    pub fn of_kind(&self, kind: &str) -> Vec<&Value> {
        self.objects
            .iter()
            .filter(|o| s(&o["kind"]) == kind)
            .collect()
    }

    /// One object by kind and name; panics when absent.
    pub fn get(&self, kind: &str, name: &str) -> &Value {
        self.of_kind(kind)
            .into_iter()
            .find(|o| s(&o["metadata"]["name"]) == name)
            .unwrap_or_else(|| panic!("the release has no {kind} {name}"))
    }

    /// A ConfigMap's or Secret's data, decoded (`data` is base64 for a Secret, `stringData` is
    /// plain and wins, as the API server merges them).
    pub fn data(&self, kind: &str, name: &str) -> BTreeMap<String, Vec<u8>> {
        let object = self.get(kind, name);
        let mut out = BTreeMap::new();
        let secret = kind == "Secret";
        for (field, encoded) in [
            ("data", secret),
            ("binaryData", true),
            ("stringData", false),
        ] {
            if let Some(map) = object[field].as_mapping() {
                for (k, v) in map {
                    let text = s(v);
                    let bytes = if encoded {
                        base64::engine::general_purpose::STANDARD
                            .decode(text)
                            .unwrap_or_else(|e| panic!("{kind} {name}: {field} is not base64: {e}"))
                    } else {
                        text.as_bytes().to_vec()
                    };
                    out.insert(s(k).to_string(), bytes);
                }
            }
        }
        out
    }

    /// The workloads (Deployments and Jobs) with their pod templates, Jobs first in hook-weight
    /// order (the order Helm runs pre-install hooks in).
    pub fn workloads(&self) -> Vec<&Value> {
        let mut jobs = self.of_kind("Job");
        jobs.sort_by_key(|j| {
            s(&j["metadata"]["annotations"]["helm.sh/hook-weight"])
                .parse::<i64>()
                .unwrap_or(0)
        });
        jobs.into_iter().chain(self.of_kind("Deployment")).collect()
    }

    /// The service-link variables Kubernetes gives a pod for every Service of the release
    /// (whatever the pod's `enableServiceLinks` says: a process must run with them), plus the
    /// cluster's own `kubernetes` Service. Cluster IPs are made up (10.96.0.x).
    pub fn service_links(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut services: Vec<(String, Vec<(String, u16)>)> =
            vec![("kubernetes".into(), vec![("https".into(), 443)])];
        for svc in self.of_kind("Service") {
            let ports = seq(&svc["spec"]["ports"])
                .iter()
                .map(|p| {
                    (
                        s(&p["name"]).to_string(),
                        p["port"].as_u64().unwrap_or(0) as u16,
                    )
                })
                .collect();
            services.push((s(&svc["metadata"]["name"]).to_string(), ports));
        }
        for (i, (name, ports)) in services.iter().enumerate() {
            let ip = format!("10.96.0.{}", i + 1);
            let base = name.to_uppercase().replace('-', "_");
            let Some((_, first)) = ports.first() else {
                continue;
            };
            out.push((format!("{base}_SERVICE_HOST"), ip.clone()));
            out.push((format!("{base}_SERVICE_PORT"), first.to_string()));
            out.push((format!("{base}_PORT"), format!("tcp://{ip}:{first}")));
            for (port_name, port) in ports {
                if !port_name.is_empty() {
                    out.push((
                        format!(
                            "{base}_SERVICE_PORT_{}",
                            port_name.to_uppercase().replace('-', "_")
                        ),
                        port.to_string(),
                    ));
                }
                let p = format!("{base}_PORT_{port}_TCP");
                out.push((p.clone(), format!("tcp://{ip}:{port}")));
                out.push((format!("{p}_PROTO"), "tcp".into()));
                out.push((format!("{p}_PORT"), port.to_string()));
                out.push((format!("{p}_ADDR"), ip.clone()));
            }
        }
        out
    }
}

/// One container of a rendered pod, ready to run here.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LocalPod {
    /// `<kind>/<name>`.
    pub workload: String,
    pub kind: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// The pod's folder: its volumes under `root/`, its working directory, its log.
    pub dir: PathBuf,
    pub workdir: PathBuf,
    /// containerPort -> local port.
    pub ports: BTreeMap<u16, u16>,
}

/// Replacements applied, longest first, to a pod's arguments, variables and mounted files.
#[derive(Debug, Default, Clone)]
pub struct Mapping {
    pairs: Vec<(String, String)>,
}

impl Mapping {
    pub fn add(&mut self, from: impl Into<String>, to: impl Into<String>) {
        self.pairs.push((from.into(), to.into()));
    }

    pub fn apply(&self, text: &str) -> String {
        let mut pairs: Vec<&(String, String)> = self.pairs.iter().collect();
        pairs.sort_by_key(|(from, _)| std::cmp::Reverse(from.len()));
        // One pass over the text, so a replacement is never replaced again.
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        let name_char = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.';
        'outer: while !rest.is_empty() {
            // A host:port or path starts where a name cannot go on either.
            let starts = out.chars().next_back().is_none_or(|c| !name_char(c));
            for (from, to) in pairs.iter().filter(|_| starts) {
                if rest.starts_with(from.as_str()) {
                    let after = &rest[from.len()..];
                    // A host:port or path ends where a name cannot go on.
                    let boundary = after.chars().next().is_none_or(|c| !name_char(c));
                    if boundary {
                        out.push_str(to);
                        rest = after;
                        continue 'outer;
                    }
                }
            }
            let c = rest.chars().next().expect("non-empty");
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
        out
    }
}

/// What a pod needs from the test: the outside addresses and the binary its image runs.
#[derive(Debug, Clone)]
pub struct Cluster {
    /// `host:port` of a service outside the release -> `127.0.0.1:port` of the local stack.
    pub external: Vec<(String, String)>,
    /// The image's WORKDIR (`/app`) holds copies of these repository folders (the Dockerfile's
    /// COPY lines).
    pub image_files: Vec<&'static str>,
}

fn labels_match(selector: &Value, labels: &Value) -> bool {
    selector
        .as_mapping()
        .is_some_and(|m| !m.is_empty() && m.iter().all(|(k, v)| labels[s(k)] == *v))
}

/// Prepares every Deployment's and Job's (single) container of `release` under `root`.
pub fn local_pods(
    release: &Release,
    cluster: &Cluster,
    root: &Path,
    extra_env: &[(&str, &str)],
) -> Vec<LocalPod> {
    let workloads = release.workloads();
    // Each pod's container ports get local ports first: Services point at them.
    let mut ports: Vec<BTreeMap<u16, u16>> = Vec::new();
    for w in &workloads {
        let mut map = BTreeMap::new();
        for c in seq(&w["spec"]["template"]["spec"]["containers"]) {
            for p in seq(&c["ports"]) {
                let cp = p["containerPort"].as_u64().expect("containerPort") as u16;
                map.insert(cp, crate::free_port());
            }
        }
        ports.push(map);
    }
    let mut global = Mapping::default();
    for (from, to) in &cluster.external {
        global.add(from.clone(), to.clone());
    }
    for svc in release.of_kind("Service") {
        let name = s(&svc["metadata"]["name"]);
        let Some(i) = workloads.iter().position(|w| {
            labels_match(
                &svc["spec"]["selector"],
                &w["spec"]["template"]["metadata"]["labels"],
            )
        }) else {
            panic!("Service {name} selects no pod of the release");
        };
        let container = &seq(&workloads[i]["spec"]["template"]["spec"]["containers"])[0];
        for p in seq(&svc["spec"]["ports"]) {
            let port = p["port"].as_u64().expect("port");
            let target = &p["targetPort"];
            let cp = match target.as_u64() {
                Some(n) => n as u16,
                None => seq(&container["ports"])
                    .iter()
                    .find(|cp| cp["name"] == *target)
                    .and_then(|cp| cp["containerPort"].as_u64())
                    .unwrap_or_else(|| panic!("Service {name}: no container port named {target:?}"))
                    as u16,
            };
            let local = ports[i][&cp];
            for host in [
                name.to_string(),
                format!("{name}.{}", release.namespace),
                format!("{name}.{}.svc", release.namespace),
                format!("{name}.{}.svc.cluster.local", release.namespace),
            ] {
                global.add(format!("{host}:{port}"), format!("127.0.0.1:{local}"));
            }
        }
    }
    let links = release.service_links();
    let mut pods = Vec::new();
    for (i, w) in workloads.iter().enumerate() {
        let kind = s(&w["kind"]).to_string();
        let name = s(&w["metadata"]["name"]).to_string();
        let spec = &w["spec"]["template"]["spec"];
        let containers = seq(&spec["containers"]);
        assert_eq!(containers.len(), 1, "{kind}/{name}: one container a pod");
        let container = &containers[0];
        let pod_name = format!("{name}-7d9f8b6c5-x2k4q");
        let dir = root.join(format!("{}-{name}", kind.to_lowercase()));
        let volumes_root = dir.join("root");
        std::fs::create_dir_all(&volumes_root).expect("pod dir");
        // The pod's own mapping: its listen addresses, then its mount paths, then the cluster's.
        let mut mapping = global.clone();
        for (cp, local) in &ports[i] {
            mapping.add(format!("0.0.0.0:{cp}"), format!("127.0.0.1:{local}"));
        }
        let mounts: Vec<(String, String)> = seq(&container["volumeMounts"])
            .iter()
            .map(|m| (s(&m["name"]).to_string(), s(&m["mountPath"]).to_string()))
            .collect();
        for (_, path) in &mounts {
            let local = volumes_root.join(path.trim_start_matches('/'));
            mapping.add(path.clone(), local.display().to_string());
        }
        // The volumes' files, mapped like everything else.
        for (volume_name, path) in &mounts {
            let volume = seq(&spec["volumes"])
                .iter()
                .find(|v| s(&v["name"]) == volume_name)
                .unwrap_or_else(|| panic!("{name}: no volume {volume_name}"));
            let at = volumes_root.join(path.trim_start_matches('/'));
            std::fs::create_dir_all(&at).expect("mount dir");
            for (file, bytes) in volume_files(release, volume) {
                let target = at.join(&file);
                std::fs::create_dir_all(target.parent().expect("parent")).expect("dir");
                let bytes = match String::from_utf8(bytes) {
                    Ok(text) => mapping.apply(&text).into_bytes(),
                    Err(e) => e.into_bytes(),
                };
                std::fs::write(&target, bytes).expect("volume file");
            }
        }
        // The working directory: the image's WORKDIR with what the Dockerfile copies there.
        let workdir_in_image = s(&container["workingDir"]);
        let workdir = volumes_root.join(if workdir_in_image.is_empty() {
            "app"
        } else {
            workdir_in_image.trim_start_matches('/')
        });
        std::fs::create_dir_all(&workdir).expect("workdir");
        for folder in &cluster.image_files {
            copy_dir(&crate::repo_root().join(folder), &workdir.join(folder));
        }
        // The environment, in Kubernetes' order: the image's, the service links, envFrom, env.
        let mut env: Vec<(String, String)> = vec![
            ("PATH".into(), std::env::var("PATH").unwrap_or_default()),
            ("HOSTNAME".into(), pod_name.clone()),
            (
                "HOME".into(),
                volumes_root.join("home").display().to_string(),
            ),
        ];
        env.extend(links.iter().cloned());
        for from in seq(&container["envFrom"]) {
            let prefix = s(&from["prefix"]).to_string();
            let (kind, name) = if !from["configMapRef"].is_null() {
                ("ConfigMap", s(&from["configMapRef"]["name"]))
            } else {
                ("Secret", s(&from["secretRef"]["name"]))
            };
            for (k, v) in release.data(kind, name) {
                env.push((format!("{prefix}{k}"), String::from_utf8(v).expect("utf-8")));
            }
        }
        for var in seq(&container["env"]) {
            let key = s(&var["name"]).to_string();
            let value = if let Some(v) = var["value"].as_str() {
                expand(v, &env)
            } else {
                let from = &var["valueFrom"];
                if !from["secretKeyRef"].is_null() {
                    key_ref(release, "Secret", &from["secretKeyRef"])
                } else if !from["configMapKeyRef"].is_null() {
                    key_ref(release, "ConfigMap", &from["configMapKeyRef"])
                } else if !from["fieldRef"].is_null() {
                    match s(&from["fieldRef"]["fieldPath"]) {
                        "metadata.name" => pod_name.clone(),
                        "metadata.namespace" => release.namespace.clone(),
                        "status.podIP" | "status.hostIP" => "127.0.0.1".into(),
                        "spec.nodeName" => "node-1".into(),
                        "spec.serviceAccountName" => s(&spec["serviceAccountName"]).to_string(),
                        other => panic!("{name}: fieldRef {other} is not supported here"),
                    }
                } else {
                    panic!("{name}: env {key} has a source this runner does not know: {from:?}")
                }
            };
            env.retain(|(k, _)| *k != key);
            env.push((key, value));
        }
        for (k, v) in extra_env {
            env.push(((*k).to_string(), (*v).to_string()));
        }
        let env = env
            .into_iter()
            .map(|(k, v)| {
                let v = if k == "PATH" || k == "HOME" {
                    v
                } else {
                    mapping.apply(&v)
                };
                (k, v)
            })
            .collect();
        // The image's entrypoint is `wxstream`; `command` would replace it.
        let mut args: Vec<String> = seq(&container["command"])
            .iter()
            .map(|a| s(a).to_string())
            .collect();
        if args.is_empty() {
            args.push("wxstream".into());
        }
        args.extend(seq(&container["args"]).iter().map(|a| mapping.apply(s(a))));
        assert_eq!(args[0], "wxstream", "{name}: the image runs wxstream");
        args.remove(0);
        let pod = LocalPod {
            workload: format!("{kind}/{name}"),
            kind,
            args,
            env,
            dir: dir.clone(),
            workdir,
            ports: ports[i].clone(),
        };
        std::fs::write(
            dir.join("pod.json"),
            serde_json::to_vec_pretty(&pod).expect("json"),
        )
        .expect("pod.json");
        pods.push(pod);
    }
    pods
}

/// `$(VAR)` references to earlier variables, as Kubernetes expands them.
fn expand(value: &str, env: &[(String, String)]) -> String {
    let mut out = value.to_string();
    for (k, v) in env {
        out = out.replace(&format!("$({k})"), v);
    }
    out
}

fn key_ref(release: &Release, kind: &str, r: &Value) -> String {
    let data = release.data(kind, s(&r["name"]));
    let bytes = data
        .get(s(&r["key"]))
        .unwrap_or_else(|| panic!("{kind} {} has no key {}", s(&r["name"]), s(&r["key"])));
    String::from_utf8(bytes.clone()).expect("utf-8")
}

/// The files (path under the mount, bytes) a volume shows.
fn volume_files(release: &Release, volume: &Value) -> Vec<(String, Vec<u8>)> {
    if let Some(files) = source_files(release, volume, "secretName") {
        files
    } else if !volume["projected"].is_null() {
        seq(&volume["projected"]["sources"])
            .iter()
            .flat_map(|source| {
                source_files(release, source, "name").unwrap_or_else(|| {
                    panic!("a projected source this runner does not know: {source:?}")
                })
            })
            .collect()
    } else if !volume["emptyDir"].is_null() {
        Vec::new()
    } else {
        panic!("a volume this runner does not know: {volume:?}")
    }
}

/// The files of a ConfigMap or Secret source (a volume, or one source of a projected volume,
/// where a Secret's name is in `secret_name`), or None for another kind of source.
fn source_files(
    release: &Release,
    source: &Value,
    secret_name: &str,
) -> Option<Vec<(String, Vec<u8>)>> {
    let (kind, source, name) = if !source["configMap"].is_null() {
        ("ConfigMap", &source["configMap"], "name")
    } else if !source["secret"].is_null() {
        ("Secret", &source["secret"], secret_name)
    } else {
        return None;
    };
    let name = s(&source[name]);
    let data = release.data(kind, name);
    Some(match source["items"].as_sequence() {
        Some(items) => items
            .iter()
            .map(|i| {
                let key = s(&i["key"]);
                let bytes = data
                    .get(key)
                    .unwrap_or_else(|| panic!("{kind} {name} has no key {key}"))
                    .clone();
                (s(&i["path"]).to_string(), bytes)
            })
            .collect(),
        None => data.into_iter().collect(),
    })
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("dir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

impl LocalPod {
    /// Starts the pod's process: only its own environment, its working directory, its log.
    pub fn start(&self, binary: &Path) -> crate::WxProcess {
        let log = self.dir.join("log");
        crate::WxProcess::spawn(
            std::process::Command::new(binary)
                .args(&self.args)
                .env_clear()
                .envs(self.env.iter().map(|(k, v)| (k, v)))
                .current_dir(&self.workdir),
            &log,
        )
    }

    /// The local address of a container port.
    pub fn addr(&self, container_port: u16) -> String {
        format!("127.0.0.1:{}", self.ports[&container_port])
    }
}
