//! Every running stage probes the leaders of its topics' partitions now and then
//! ([`wx_kafka::LeaderProbe`]) and shows those that do not answer in its readiness
//! ([`LEADERS`]) and in `wxstream_<stage>_kafka_leaders_unavailable`: a stage waiting on a
//! broker says so even when it has nothing to send or fetch (two of three brokers down, the
//! cluster's metadata frozen).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use wx_kafka::{KafkaConfig, LeaderProbe};

use crate::health::{LEADERS, StageHealth};

/// How often the leaders are probed.
const INTERVAL: Duration = Duration::from_secs(10);

/// How long each probe request may take.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Probes until `shutdown`.
pub(crate) async fn watch(
    kafka: KafkaConfig,
    topics: Vec<String>,
    health: Arc<StageHealth>,
    prefix: String,
    shutdown: CancellationToken,
) {
    let name = format!("{prefix}_kafka_leaders_unavailable");
    metrics::describe_gauge!(
        name.clone(),
        "Leaders of the stage's topics' partitions that do not answer (1 when no broker does), probed every 10 s."
    );
    let gauge = metrics::gauge!(name);
    let probe = match LeaderProbe::new(&kafka, topics) {
        Ok(probe) => Arc::new(probe),
        Err(e) => {
            tracing::warn!(error = %e, "The leader probe could not be made; readiness will not show unanswering leaders.");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(INTERVAL) => {}
        }
        let asked = probe.clone();
        let Ok(answer) = tokio::task::spawn_blocking(move || asked.unavailable(TIMEOUT)).await
        else {
            return;
        };
        match answer {
            Ok(unavailable) if unavailable.is_empty() => {
                gauge.set(0.0);
                health.recovered(LEADERS);
            }
            Ok(unavailable) => {
                gauge.set(unavailable.len() as f64);
                let text: Vec<String> = unavailable.iter().map(ToString::to_string).collect();
                health.failing(LEADERS, text.join("; "));
            }
            Err(e) => {
                gauge.set(1.0);
                health.failing(LEADERS, e);
            }
        }
    }
}
