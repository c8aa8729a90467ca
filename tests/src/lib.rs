//! Helpers for wxstream's end-to-end tests: where the local stack is, unique names per test, and
//! the path of the built `wxstream` binary.
//!
//! Every test that needs a service FAILS with a message saying how to start it; none skips.

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
    stack_setting("WXSTACK_BROKERS")
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

/// A name no other test (or earlier run) uses: `<stem>-<pid>-<millis>-<n>`.
pub fn unique(stem: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    format!(
        "{stem}-{}-{millis}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

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

/// The repository's topology with every topic prefixed for this test.
pub fn repo_topology(prefix: &str) -> wx_topology::Topology {
    wx_topology::load_dir(&repo_root().join("topology"))
        .unwrap_or_else(|e| panic!("{e}"))
        .with_topic_prefix(prefix)
}
