//! Helpers for wxstream's end-to-end tests: where the local stack is, unique names per test, and
//! the path of the built `wxstream` binary.
//!
//! Every test that needs a service FAILS with a message saying how to start it; none skips.

pub mod connect;
pub mod e2e;
pub mod kube;
pub mod media;
pub mod pipeline;
pub mod stores;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn state_env_file() -> PathBuf {
    match std::env::var_os("WXSTACK_STATE_DIR") {
        Some(dir) => PathBuf::from(dir).join("env"),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
            .join(".local/state/wxstream/env"),
    }
}

/// A setting of the local stack: the environment variable if set, else the value
/// `scripts/stack up` wrote to its env file. Panics with a way out when neither exists.
pub fn stack_setting(name: &str) -> String {
    if let Ok(value) = std::env::var(name) {
        return value;
    }
    let file = state_env_file();
    let text = std::fs::read_to_string(&file).unwrap_or_default();
    let prefix = format!("export {name}=");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix).map(str::to_string))
        .unwrap_or_else(|| {
            panic!(
                "{name} is not set and {} does not name it: start the local stack with `scripts/stack up` (or run `scripts/test`)",
                file.display()
            )
        })
}

/// Kafka bootstrap servers of the local stack.
pub fn brokers() -> String {
    stores::brokers()
}

/// The Python interpreter of the stack's venv (fastavro, confluent-kafka).
pub fn python() -> PathBuf {
    let path = PathBuf::from(stack_setting("WXSTACK_PYTHON"));
    assert!(
        path.exists(),
        "{} does not exist: run `scripts/stack up` to create the venv",
        path.display()
    );
    path
}

/// What every name a test gives starts with: its topics `wxtest-*`, databases `wxtest_*` and
/// indices `wxtest-*`. `scripts/test` prunes what earlier runs left (`scripts/stack prune
/// wxtest`), so the stack's broker does not grow by a run's topics each time.
pub const TEST_STEM: &str = "wxtest";

/// A name no other test (or earlier run) uses: `wxtest-<stem>-<pid>-<millis>-<n>`.
pub fn unique(stem: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    format!(
        "{TEST_STEM}-{stem}-{}-{millis}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Milliseconds since the Unix epoch (the workspace's one wall clock).
pub use wx_codec::now_ms;

/// The `wxstream` binary built in this workspace's target directory.
pub fn wxstream_bin() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"));
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let bin = target.join(profile).join("wxstream");
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build -p wxstream` (scripts/test does)",
        bin.display()
    );
    bin
}

/// Sets the size limit (`max.message.bytes`) of the topics whose name ends with `suffix`.
pub fn limit_message_bytes(topics: &mut [wx_topology::TopicSpec], suffix: &str, bytes: u32) {
    for topic in topics.iter_mut().filter(|t| t.name.ends_with(suffix)) {
        topic
            .configs
            .insert("max.message.bytes".into(), bytes.to_string());
    }
}

/// The repository's topology with every topic prefixed for this test.
pub fn repo_topology(prefix: &str) -> wx_topology::Topology {
    wx_topology::load_dir(&repo_root().join("topology"))
        .unwrap_or_else(|e| panic!("{e}"))
        .with_topic_prefix(prefix)
}

/// An Apache Kafka node of a test's own (`scripts/stack kafka-node`), for tests that stop,
/// freeze or crash the broker without disturbing the tests that share the stack's broker. Its
/// data lives in a directory of the test's, so a restart finds its topics, offsets and commit
/// metadata again. Killed with SIGKILL when dropped.
#[derive(Debug)]
pub struct KafkaNode {
    child: std::process::Child,
    dir: PathBuf,
    pub port: u16,
    controller_port: u16,
    /// In a cluster: (node id, the voters, the cluster id).
    member: Option<(u32, String, String)>,
}

impl KafkaNode {
    /// Starts a node with its data in `dir` on free ports and waits until it answers.
    /// [`KafkaNode::start`] from async code (on the blocking pool).
    pub async fn start_in(dir: &Path) -> KafkaNode {
        let dir = dir.to_path_buf();
        tokio::task::spawn_blocking(move || KafkaNode::start(&dir))
            .await
            .expect("join")
    }

    pub fn start(dir: &Path) -> KafkaNode {
        let node = KafkaNode::launch(dir, free_port(), free_port(), None);
        node.wait_ready();
        node
    }

    /// A node's process, not yet waited for.
    fn launch(
        dir: &Path,
        port: u16,
        controller_port: u16,
        member: Option<(u32, String, String)>,
    ) -> KafkaNode {
        KafkaNode {
            child: KafkaNode::spawn(dir, port, controller_port, member.as_ref()),
            dir: dir.to_path_buf(),
            port,
            controller_port,
            member,
        }
    }

    fn spawn(
        dir: &Path,
        port: u16,
        controller_port: u16,
        member: Option<&(u32, String, String)>,
    ) -> std::process::Child {
        std::fs::create_dir_all(dir).expect("node dir");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("node.log"))
            .expect("node log");
        let mut command = std::process::Command::new(stack_setting("WXSTACK_SCRIPT"));
        command
            .args([
                "kafka-node",
                &dir.join("node").display().to_string(),
                &port.to_string(),
                &controller_port.to_string(),
            ])
            .env("WXSTACK_KAFKA_HEAP", "384m");
        if let Some((id, voters, cluster)) = member {
            command
                .env("WXSTACK_KAFKA_NODE_ID", id.to_string())
                .env("WXSTACK_KAFKA_VOTERS", voters)
                .env("WXSTACK_KAFKA_CLUSTER_ID", cluster);
        }
        command
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start a Kafka node with scripts/stack kafka-node")
    }

    /// Its bootstrap address.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Waits (up to 90 s) until the node answers a metadata request.
    pub fn wait_ready(&self) {
        let config = wx_kafka::KafkaConfig::new(self.brokers());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
        while wx_kafka::ping(&config, std::time::Duration::from_secs(2)).is_err() {
            if std::time::Instant::now() >= deadline {
                // The log's end in the message: the node's directory goes with the test's.
                let log = std::fs::read_to_string(self.dir.join("node.log")).unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                let tail = &lines[lines.len().saturating_sub(40)..];
                panic!(
                    "the Kafka node on port {} (controller {}) did not answer within 90 s; the end of its log:\n{}",
                    self.port,
                    self.controller_port,
                    tail.join("\n")
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(250));
        }
    }

    /// kill -9 of the broker process.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Freezes the broker (SIGSTOP): connections stay open and nothing answers.
    pub fn freeze(&self) {
        self.signal("STOP");
    }

    fn signal(&self, signal: &str) {
        let ok = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{signal} of the Kafka node failed");
    }

    /// Lets a frozen broker ([`KafkaNode::freeze`]) go on (SIGCONT).
    pub fn thaw(&self) {
        self.signal("CONT");
    }

    /// Starts the node again on the same data and ports (after [`KafkaNode::kill9`]) and waits
    /// until it answers.
    pub fn restart(&mut self) {
        self.kill9();
        self.start_again();
    }

    /// Stops the broker with SIGTERM (a controlled shutdown: it hands its leaderships over)
    /// and waits for it to exit.
    pub fn terminate(&mut self) {
        self.signal("TERM");
        let _ = self.child.wait();
    }

    /// Starts it again after [`KafkaNode::terminate`] or [`KafkaNode::kill9`] (same data and
    /// ports) and waits until it answers.
    pub fn start_again(&mut self) {
        self.child = KafkaNode::spawn(
            &self.dir,
            self.port,
            self.controller_port,
            self.member.as_ref(),
        );
        self.wait_ready();
    }
}

/// Three Apache Kafka nodes of a test's own, each broker and KRaft controller
/// (`scripts/stack kafka-node` with a cluster's membership), on free ports of 127.0.0.1 with
/// their data in directories of the test's; internal topics have 3 replicas, 2 in sync.
#[derive(Debug)]
pub struct KafkaCluster {
    pub nodes: Vec<KafkaNode>,
}

impl KafkaCluster {
    /// Starts the nodes (in `dir/node-<id>`) and waits until each answers.
    pub async fn start_in(dir: &Path) -> KafkaCluster {
        let dir = dir.to_path_buf();
        tokio::task::spawn_blocking(move || {
            let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
            let voters = ports
                .iter()
                .enumerate()
                .map(|(i, (_, c))| format!("{}@127.0.0.1:{c}", i + 1))
                .collect::<Vec<_>>()
                .join(",");
            // A random id as Kafka's `Uuid.randomUuid` makes them: never one starting with '-',
            // which command lines take for an option (`scripts/stack` passes `--cluster-id=`
            // too; one cluster in 64 failed to format before).
            let cluster = loop {
                use base64::Engine as _;
                let id = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .encode(rand::random::<[u8; 16]>());
                if !id.starts_with('-') {
                    break id;
                }
            };
            let nodes: Vec<KafkaNode> = ports
                .iter()
                .enumerate()
                .map(|(i, (port, cport))| {
                    let id = u32::try_from(i + 1).expect("id");
                    KafkaNode::launch(
                        &dir.join(format!("node-{id}")),
                        *port,
                        *cport,
                        Some((id, voters.clone(), cluster.clone())),
                    )
                })
                .collect();
            for node in &nodes {
                node.wait_ready();
            }
            KafkaCluster { nodes }
        })
        .await
        .expect("join")
    }

    /// The bootstrap addresses of every node.
    pub fn brokers(&self) -> String {
        self.nodes
            .iter()
            .map(KafkaNode::brokers)
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl Drop for KafkaNode {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The arguments of `wxstream` against the local broker with a topology directory and a topic
/// prefix, then `rest` (e.g. `run --only sink`).
pub fn wx_args(topology: &Path, prefix: &str, rest: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = vec![
        "--brokers".into(),
        brokers(),
        "--topology".into(),
        topology.display().to_string(),
        "--topic-prefix".into(),
        prefix.into(),
    ];
    out.extend(rest.iter().map(|s| s.to_string()));
    out
}

/// Creates the repository's topics under `prefix` on the local broker.
/// A fresh topic prefix for `stem` (`wxtest-<stem>-...`, see [`unique`]), with the
/// repository's topics created under it.
pub async fn fresh_topics(stem: &str) -> String {
    let prefix = format!("{}.", unique(stem));
    apply_repo_topics(&prefix).await;
    prefix
}

pub async fn apply_repo_topics(prefix: &str) {
    wx_kafka::TopicAdmin::new(&stores::kafka_config(&brokers()))
        .expect("admin")
        .apply(&repo_topology(prefix).topics)
        .await
        .expect("apply topics");
}

/// Polls `check` every 500 ms until it holds; fails after `seconds` with `what` and the
/// process's log tail.
/// A process's `/readyz` on `listen` (`host:port`): its status and its JSON body, or None while
/// nothing answers.
pub async fn readyz(listen: &str) -> Option<(u16, serde_json::Value)> {
    let reply = reqwest::Client::new()
        .get(format!("http://{listen}/readyz"))
        .timeout(std::time::Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    let status = reply.status().as_u16();
    Some((status, reply.json().await.unwrap_or_default()))
}

pub async fn wait_until<F, Fut>(what: &str, seconds: u64, process: &WxProcess, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    while !check().await {
        assert!(
            std::time::Instant::now() < deadline,
            "{what} within {seconds} s:\n{}",
            process.log_tail()
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// Simulated corps' feeds (every msgtype, the given fault rates), one per corp id, with the
/// secret `secret-<corp>`.
pub fn sim_feeds(
    keys: &wx_sim::SimKeys,
    corps: &[String],
    seed: u64,
    messages: u64,
    times: (i64, i64),
    faults: wx_sim::FaultRates,
) -> Vec<(wx_sim::CorpFeed, String)> {
    sim_feeds_with_media(
        keys,
        corps,
        seed,
        messages,
        times,
        faults,
        &wx_sim::MediaSpec::default(),
    )
}

/// As [`sim_feeds`], with media of `media`'s sizes and faults.
pub fn sim_feeds_with_media(
    keys: &wx_sim::SimKeys,
    corps: &[String],
    seed: u64,
    messages: u64,
    (start_ms, spacing_ms): (i64, i64),
    faults: wx_sim::FaultRates,
    media: &wx_sim::MediaSpec,
) -> Vec<(wx_sim::CorpFeed, String)> {
    corps
        .iter()
        .enumerate()
        .map(|(i, corp)| {
            let spec = wx_sim::FeedSpec {
                corp_id: corp.clone(),
                seed: seed + i as u64,
                messages,
                start_ms,
                spacing_ms,
                key_versions: keys.versions().into_iter().filter(|v| *v != 99).collect(),
                withheld_key_version: 99,
                faults,
                media: media.clone(),
            };
            (
                wx_sim::CorpFeed::build(&spec, keys).expect("feed"),
                format!("secret-{corp}"),
            )
        })
        .collect()
}

/// Serves `sim` on a free local port until the test ends; returns its URL.
pub async fn serve_simulator(sim: &wx_sim::Simulator) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(sim.clone().serve(listener, std::future::pending()));
    url
}

/// The (corp, secret) pairs of [`sim_feeds`]' corps, for [`write_ingest_topology`].
pub fn sim_secrets(corps: &[String]) -> Vec<(String, String)> {
    corps
        .iter()
        .map(|c| (c.clone(), format!("secret-{c}")))
        .collect()
}

/// A free TCP port on 127.0.0.1.
///
/// Chosen below Linux's ephemeral range (32768 and up): a port the kernel hands out for `:0` is
/// also what it hands the next outgoing connection, so a server started on it a moment later
/// can find it taken by one of the many Kafka connections tests open in parallel.
/// A port is handed out once per test process: two stages started a moment apart must not both
/// get the one that was free when each asked (seen: a stage of the frozen-store test failed to
/// listen, and the test read another stage's `/readyz`).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    for _ in 0..1000 {
        let port = rand::Rng::gen_range(&mut rand::thread_rng(), 20_000..32_000);
        if !given.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.insert(port);
            return port;
        }
    }
    panic!("no free port in 20000-32000")
}

/// How long [`run_ok`] lets a command run: every command the tests run this way (a Python
/// reader, helm, a shell tool) ends within seconds.
const RUN_OK_DEADLINE: std::time::Duration = std::time::Duration::from_secs(180);

/// Runs `command` to its end; fails (quoting `what`, its standard output and error) unless it
/// succeeds within [`RUN_OK_DEADLINE`]; its output.
pub fn run_ok(command: &mut std::process::Command, what: &str) -> std::process::Output {
    run_ok_within(command, what, RUN_OK_DEADLINE)
}

/// [`run_ok`] with its deadline given. A command past its deadline gets SIGABRT first
/// (`PYTHONFAULTHANDLER` is set, so a Python program prints where each of its threads waits),
/// then SIGKILL, and the failure quotes what it printed: a hung reader fails with its cause
/// instead of holding the test until nextest ends it.
pub fn run_ok_within(
    command: &mut std::process::Command,
    what: &str,
    deadline: std::time::Duration,
) -> std::process::Output {
    use std::io::Read;
    use std::process::Stdio;
    let mut child = command
        .env("PYTHONFAULTHANDLER", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what} could not start: {e}"));
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("piped")));
    let stderr = drain(Box::new(child.stderr.take().expect("piped")));
    let given = deadline;
    let deadline = std::time::Instant::now() + given;
    let mut overdue = false;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if std::time::Instant::now() >= deadline && !overdue {
            overdue = true;
            let _ = std::process::Command::new("kill")
                .args(["-ABRT", &child.id().to_string()])
                .status();
            std::thread::sleep(std::time::Duration::from_secs(3));
            let _ = child.kill();
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let out = std::process::Output {
        status,
        stdout: stdout.join().expect("stdout"),
        stderr: stderr.join().expect("stderr"),
    };
    assert!(
        out.status.success() && !overdue,
        "{what} failed ({}{}):\n{}\n{}",
        out.status,
        if overdue {
            format!(", still running after {given:?}")
        } else {
            String::new()
        },
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// [`run_ok`]'s standard output as text.
pub fn run_ok_text(command: &mut std::process::Command, what: &str) -> String {
    String::from_utf8(run_ok(command, what).stdout).expect("utf-8 output")
}

/// Runs a one-shot `wxstream ARGS` command (e.g. `redrive`) in the repository to its end,
/// writing its standard error to `log`; fails unless it succeeds; its standard output.
pub fn run_wxstream<S: AsRef<std::ffi::OsStr>>(args: &[S], log: &Path) -> String {
    let (code, stdout) = run_wxstream_status(args, log);
    assert_eq!(
        code,
        0,
        "wxstream failed:\n{stdout}\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
    stdout
}

/// Runs `wxstream ARGS` in the repository, its standard error to `log`; its exit code (-1 when
/// killed by a signal) and standard output.
pub fn run_wxstream_status<S: AsRef<std::ffi::OsStr>>(args: &[S], log: &Path) -> (i32, String) {
    let out = std::process::Command::new(wxstream_bin())
        .args(args)
        .current_dir(repo_root())
        .output()
        .expect("run wxstream");
    std::fs::write(log, &out.stderr).expect("log");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Reading a Prometheus scrape (`metric_sum`, `samples`): the runtime's, shared with the
/// benchmarks.
pub use wx_runtime::scrape::{metric_sum, samples};

/// A `wxstream` child process; killed with SIGKILL when dropped.
#[derive(Debug)]
pub struct WxProcess {
    child: std::process::Child,
    pub log: PathBuf,
}

impl WxProcess {
    /// Starts `wxstream ARGS` in the repository, logging to `log`, metrics endpoint off.
    pub fn start<S: AsRef<std::ffi::OsStr>>(args: &[S], log: &Path) -> WxProcess {
        WxProcess::start_with(args, log, "")
    }

    /// As `start`, with the operations endpoint (metrics, health, REST) on `metrics_listen`
    /// (empty: off).
    pub fn start_with<S: AsRef<std::ffi::OsStr>>(
        args: &[S],
        log: &Path,
        metrics_listen: &str,
    ) -> WxProcess {
        WxProcess::start_env(args, log, metrics_listen, &[])
    }

    /// As `start_with`, with extra environment variables.
    pub fn start_env<S: AsRef<std::ffi::OsStr>>(
        args: &[S],
        log: &Path,
        metrics_listen: &str,
        env: &[(&str, &str)],
    ) -> WxProcess {
        WxProcess::spawn(
            std::process::Command::new(wxstream_bin())
                .args(args)
                .env("WXSTREAM_METRICS_LISTEN", metrics_listen)
                .env("RUST_LOG", "info")
                .envs(env.iter().copied())
                .current_dir(repo_root()),
            log,
        )
    }

    /// Starts `command` with its output appended to `log`.
    pub fn spawn(command: &mut std::process::Command, log: &Path) -> WxProcess {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("log file");
        let child = command
            .stdout(file.try_clone().expect("log"))
            .stderr(file)
            .spawn()
            .expect("start wxstream");
        WxProcess {
            child,
            log: log.to_path_buf(),
        }
    }

    /// kill -9.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then the exit status (SIGKILL after `grace`).
    pub fn terminate(&mut self, grace: std::time::Duration) -> Option<std::process::ExitStatus> {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + grace;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        self.kill9();
        None
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits up to `timeout` for the process to exit by itself; its status, or None.
    pub fn wait_exit(&mut self, timeout: std::time::Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        None
    }

    /// Whether the process is still running (it has not exited or been killed).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The last lines of the process's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for WxProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Writes a topology directory for an ingest test: the repository's topics.yaml and an ingest
/// connector pulling `corps` (id, secret) from the simulator at `sim_url`, with extra settings
/// lines appended (YAML, two-space indented under `settings:`).
pub fn write_ingest_topology(dir: &Path, sim_url: &str, corps: &[(String, String)], extra: &str) {
    std::fs::create_dir_all(dir.join("connectors")).expect("mkdir");
    std::fs::create_dir_all(dir.join("secrets")).expect("mkdir");
    std::fs::copy(
        repo_root().join("topology/topics.yaml"),
        dir.join("topics.yaml"),
    )
    .expect("copy topics");
    let mut yaml = format!(
        "name: ingest\nconnector.class: wxstream.ingest\ntasks.max: 4\noutput.topics: [wxstream.raw, wxstream.ingest-checkpoints]\nerrors.tolerance: all\nerrors.deadletterqueue.topic.name: wxstream.dead-letter\nsettings:\n  client: simulator\n  simulator_url: {sim_url}\n{extra}  corps:\n"
    );
    for (corp, secret) in corps {
        let file = dir.join("secrets").join(corp);
        std::fs::write(&file, secret).expect("secret");
        yaml.push_str(&format!(
            "    - corp_id: {corp}\n      secret: {{file: {}}}\n",
            file.display()
        ));
    }
    std::fs::write(dir.join("connectors/ingest.yaml"), yaml).expect("connector");
}

/// The callback token and EncodingAESKey of the tests' corps (Tencent's documented example key).
pub const CALLBACK_TOKEN: &str = "QDG6eK";
pub const CALLBACK_KEY: &str = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C";

/// The callback credentials ([`CALLBACK_TOKEN`], [`CALLBACK_KEY`]) as secret references
/// (`token: ...` and `encoding_aes_key: ...` lines indented by `indent`), written as secret files
/// in `dir`.
pub fn callback_secret_lines(dir: &Path, indent: &str) -> String {
    for (name, value) in [("token", CALLBACK_TOKEN), ("key", CALLBACK_KEY)] {
        std::fs::write(dir.join(name), value).expect("secret file");
    }
    format!(
        "{indent}token: {{file: {}}}\n{indent}encoding_aes_key: {{file: {}}}\n",
        dir.join("token").display(),
        dir.join("key").display()
    )
}

/// The `callback:` block of a corp entry in `dir`'s ingest.yaml ([`callback_secret_lines`]).
pub fn callback_credentials(dir: &Path) -> String {
    format!(
        "      callback:\n{}",
        callback_secret_lines(dir, "        ")
    )
}

/// Gives every corp of the ingest connector in `dir` ([`write_ingest_topology`]) callback
/// credentials besides its archive secret.
pub fn add_callbacks_to_every_corp(dir: &Path) {
    let file = dir.join("connectors/ingest.yaml");
    let block = callback_credentials(dir);
    let yaml: String = std::fs::read_to_string(&file)
        .expect("ingest.yaml")
        .lines()
        .map(|l| {
            if l.starts_with("      secret: ") {
                format!("{l}\n{block}")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(&file, yaml).expect("ingest.yaml");
}

/// Every archive seq in the raw topic, by corp (duplicates collapsed).
pub fn raw_seqs(
    brokers: &str,
    raw_topic: &str,
) -> std::collections::BTreeMap<String, std::collections::BTreeSet<u64>> {
    let config = stores::kafka_config(brokers);
    let records = wx_kafka::read_topic(&config, raw_topic, std::time::Duration::from_secs(60))
        .expect("read raw");
    let codec = wx_codec::Codec::fixed().expect("codec");
    let mut out: std::collections::BTreeMap<String, std::collections::BTreeSet<u64>> =
        Default::default();
    for record in records {
        let batch: wx_codec::RawBatch = codec
            .decode(&record.value.expect("value"))
            .expect("a raw batch");
        let seqs = out.entry(batch.corp_id.clone()).or_default();
        for item in batch.items {
            seqs.insert(u64::try_from(item.seq).expect("seq"));
        }
    }
    out
}

/// Adds a decrypt connector to a topology directory written by [`write_ingest_topology`]:
/// keys from `key_dir`, extra settings lines appended (two-space indented).
pub fn write_decrypt_connector(dir: &Path, key_dir: &Path, extra: &str) {
    let yaml = format!(
        "name: decrypt\nconnector.class: wxstream.decrypt\ntasks.max: 2\ntopics: [wxstream.raw]\noutput.topics: [wxstream.clean]\nerrors.tolerance: all\nerrors.deadletterqueue.topic.name: wxstream.dead-letter\nsettings:\n  key_dir: {}\n{extra}",
        key_dir.display()
    );
    std::fs::write(dir.join("connectors/decrypt.yaml"), yaml).expect("connector");
}

/// Every record of `topic`, decoded as `T` (tombstones and other kinds skipped), with its key.
pub fn read_records<T: wx_codec::AvroRecord>(brokers: &str, topic: &str) -> Vec<(String, T)> {
    let config = stores::kafka_config(brokers);
    // A test that restarts the broker reads while it comes back: a failed read is tried again
    // for up to 2 minutes.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let records = loop {
        match wx_kafka::read_topic(&config, topic, std::time::Duration::from_secs(120)) {
            Ok(records) => break records,
            Err(e) if std::time::Instant::now() < deadline => {
                eprintln!("reading {topic} failed ({e}); trying again");
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
            Err(e) => panic!("read topic {topic}: {e}"),
        }
    };
    let codec = wx_codec::Codec::fixed().expect("codec");
    records
        .into_iter()
        .filter_map(|r| {
            let key = String::from_utf8_lossy(r.key.as_deref().unwrap_or_default()).into_owned();
            let value = codec.decode::<T>(r.value.as_deref()?).ok()?;
            Some((key, value))
        })
        .collect()
}

/// The text of a Prometheus endpoint's `/metrics` (empty when it does not answer).
pub async fn metrics_text(addr: &str) -> String {
    match reqwest::get(format!("http://{addr}/metrics")).await {
        Ok(reply) => reply.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// Fails unless `promtool check metrics` accepts the exposition.
pub fn assert_promtool_accepts(scrape: &str) {
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (scripts/stack up installs Debian's prometheus package)");
    std::io::Write::write_all(promtool.stdin.as_mut().expect("stdin"), scrape.as_bytes())
        .expect("write");
    let checked = promtool.wait_with_output().expect("promtool");
    assert!(
        checked.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
}

/// A TCP proxy that can be taken down (every connection cut, new ones refused) and brought
/// back: a store outage without touching the store itself.
#[derive(Debug)]
pub struct TcpProxy {
    pub addr: std::net::SocketAddr,
    down: std::sync::Arc<std::sync::atomic::AtomicBool>,
    cut: tokio::sync::watch::Sender<u64>,
}

impl TcpProxy {
    /// Listens on a free local port and forwards to `upstream`.
    pub async fn start(upstream: String) -> TcpProxy {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let addr = listener.local_addr().expect("addr");
        let down = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (cut, _) = tokio::sync::watch::channel(0u64);
        let (is_down, cuts) = (down.clone(), cut.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if is_down.load(Ordering::SeqCst) {
                    continue; // dropped: the connection is refused
                }
                let upstream = upstream.clone();
                let mut cut = cuts.subscribe();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        TcpProxy { addr, down, cut }
    }

    /// Cuts every open connection and refuses new ones (`true`), or accepts again (`false`).
    pub fn set_down(&self, down: bool) {
        self.down.store(down, std::sync::atomic::Ordering::SeqCst);
        if down {
            self.cut.send_modify(|n| *n += 1);
        }
    }
}

/// An HTTP proxy in front of the search server that answers bulk requests with 429 and 503
/// (alternately) while `faulty` is set, and forwards everything else.
#[derive(Debug)]
pub struct FaultyHttpProxy {
    pub url: String,
    faulty: std::sync::Arc<std::sync::atomic::AtomicBool>,
    pub refused: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl FaultyHttpProxy {
    pub async fn start(upstream: String) -> FaultyHttpProxy {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let faulty = std::sync::Arc::new(AtomicBool::new(false));
        let refused = std::sync::Arc::new(AtomicU64::new(0));
        let (flag, count) = (faulty.clone(), refused.clone());
        let http = reqwest::Client::new();
        let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
            let (flag, count, http, upstream) =
                (flag.clone(), count.clone(), http.clone(), upstream.clone());
            async move {
                use axum::response::IntoResponse;
                let (parts, body) = request.into_parts();
                let path = parts
                    .uri
                    .path_and_query()
                    .map_or("/".to_string(), |p| p.to_string());
                if flag.load(Ordering::SeqCst) && path.contains("_bulk") {
                    let n = count.fetch_add(1, Ordering::SeqCst);
                    let status = if n % 2 == 0 { 429 } else { 503 };
                    return (
                        axum::http::StatusCode::from_u16(status).expect("status"),
                        "{\"error\":\"injected\",\"status\":429}",
                    )
                        .into_response();
                }
                let bytes = axum::body::to_bytes(body, 64 << 20)
                    .await
                    .unwrap_or_default();
                let mut forward = http.request(parts.method.clone(), format!("{upstream}{path}"));
                if let Some(ct) = parts.headers.get("content-type") {
                    forward = forward.header("content-type", ct.as_bytes());
                }
                match forward.body(bytes).send().await {
                    Ok(reply) => {
                        let status = axum::http::StatusCode::from_u16(reply.status().as_u16())
                            .unwrap_or(axum::http::StatusCode::BAD_GATEWAY);
                        let body = reply.bytes().await.unwrap_or_default();
                        (status, [("content-type", "application/json")], body).into_response()
                    }
                    Err(_) => axum::http::StatusCode::BAD_GATEWAY.into_response(),
                }
            }
        });
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FaultyHttpProxy {
            url,
            faulty,
            refused,
        }
    }

    pub fn set_faulty(&self, faulty: bool) {
        self.faulty
            .store(faulty, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Produces clean messages to `topic` as the decrypt stage does (key = corp/conversation id), in
/// order, every one acknowledged before returning.
pub async fn produce_clean<'a>(
    topic: &str,
    messages: impl IntoIterator<Item = &'a wx_codec::ChatMessage>,
) {
    let codec = wx_codec::Codec::fixed().expect("codec");
    let records: Vec<(String, Vec<u8>)> = messages
        .into_iter()
        .map(|m| (m.partition_key(), codec.encode(m).expect("encode")))
        .collect();
    produce_values(topic, records).await;
}

/// Produces `(key, value)` records to `topic` in order, every one acknowledged before returning.
pub async fn produce_values(topic: &str, records: impl IntoIterator<Item = (String, Vec<u8>)>) {
    let producer = wx_kafka::Producer::new(
        &stores::kafka_config(&brokers()),
        "wxstream-tests",
        std::time::Duration::from_secs(30),
    )
    .expect("producer");
    let mut pending = Vec::new();
    for (key, value) in records {
        pending.push(
            producer
                .enqueue(topic, key.as_bytes(), &value)
                .expect("enqueue"),
        );
        if pending.len() >= 1_000 {
            for p in pending.drain(..) {
                p.acknowledged().await.expect("acknowledged");
            }
        }
    }
    for p in pending {
        p.acknowledged().await.expect("acknowledged");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_past_its_deadline_fails_with_where_it_waited() {
        let program = "import sys, time\nprint('started', flush=True)\ntime.sleep(60)\n";
        let started = std::time::Instant::now();
        let failure = std::panic::catch_unwind(|| {
            run_ok_within(
                std::process::Command::new("python3").args(["-c", program]),
                "a sleeper",
                std::time::Duration::from_secs(2),
            )
        })
        .expect_err("a command past its deadline fails");
        let message = failure
            .downcast_ref::<String>()
            .cloned()
            .unwrap_or_default();
        assert!(started.elapsed() < std::time::Duration::from_secs(30));
        assert!(message.contains("a sleeper failed"), "{message}");
        assert!(message.contains("still running after 2s"), "{message}");
        assert!(message.contains("started"), "{message}");
        // Python's faulthandler names the line it was waiting on.
        assert!(message.contains("line 3"), "{message}");
    }

    #[test]
    fn a_command_that_ends_in_time_gives_its_output() {
        let out = run_ok_within(
            std::process::Command::new("sh").args(["-c", "echo out; echo err >&2"]),
            "echo",
            std::time::Duration::from_secs(30),
        );
        assert_eq!(out.stdout, b"out\n");
        assert_eq!(out.stderr, b"err\n");
    }
}
