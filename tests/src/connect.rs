//! A real Apache Kafka Connect worker for the tests (`scripts/stack connect-worker`): the
//! differential test of the REST API and the BI test's JDBC sink.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::{free_port, stack_setting};

/// A Kafka Connect worker (`scripts/stack connect-worker`), killed when dropped (its SIGTERM
/// can hang in Jetty's shutdown).
#[derive(Debug)]
pub struct ConnectWorker {
    child: std::process::Child,
    pub log: PathBuf,
    pub base: String,
    /// Its name: its group is `connect-<name>`, its topics `connect-<name>-*`.
    name: String,
}

impl ConnectWorker {
    /// A worker of its own group and topics (named after the test's topic prefix).
    pub async fn start(dir: &Path, name: &str) -> ConnectWorker {
        let port = free_port();
        let log = dir.join("connect.log");
        let file = std::fs::File::create(&log).expect("log");
        let child = std::process::Command::new(stack_setting("WXSTACK_SCRIPT"))
            .args([
                "connect-worker",
                &dir.join(name).display().to_string(),
                &port.to_string(),
                &crate::brokers(),
            ])
            .stdout(file.try_clone().expect("log"))
            .stderr(file)
            .spawn()
            .expect("scripts/stack connect-worker");
        let worker = ConnectWorker {
            child,
            log,
            base: format!("http://127.0.0.1:{port}"),
            name: name.to_string(),
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while reqwest::get(format!("{}/connectors", worker.base))
            .await
            .map_or(true, |r| r.status() != 200)
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the Connect worker did not answer within 120 s:\n{}",
                std::fs::read_to_string(&worker.log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        worker
    }
}

impl Drop for ConnectWorker {
    /// Kills the worker and deletes its internal topics (best effort).
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for topic in ["configs", "offsets", "status"] {
            let _ = std::process::Command::new(stack_setting("WXSTACK_SCRIPT"))
                .args(["delete-topic", &format!("connect-{}-{topic}", self.name)])
                .output();
        }
    }
}
