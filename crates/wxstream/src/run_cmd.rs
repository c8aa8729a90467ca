//! `wxstream run [--only STAGE]`: runs the configured stages in this process until SIGTERM or
//! SIGINT, then drains and stops each within a bounded time. Serves the operations endpoint
//! (`ops`: metrics, health, Connect-style REST) on `metrics_listen`.

use anyhow::Context;
use clap::{Args, ValueEnum};
use tokio_util::sync::CancellationToken;
use wx_decrypt::{DecryptSettings, DecryptStage, Topics};
use wx_ingest::{CallbackReceiver, IngestSettings, IngestWorker};
use wx_topology::ConnectorClass;

use std::sync::Arc;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use wx_kafka::StageHealth;

use crate::config::WorkerConfig;
use crate::ops::{self, Control, Hosted};

/// The stages `run` hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Stage {
    Ingest,
    Decrypt,
    Sink,
    Stats,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Run only this stage (one image serves every Kubernetes Deployment).
    #[arg(long)]
    only: Option<Stage>,
}

async fn shutdown_signal(token: CancellationToken) {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
    tracing::info!("Shutdown requested; draining.");
    token.cancel();
}

/// Installs the Prometheus recorder (histogram buckets for `_seconds` and `_items`) and keeps
/// it tidy; the ops router renders it on `/metrics`.
fn install_metrics() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Suffix("_seconds".into()),
            &[
                0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0,
            ],
        )
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Suffix("_items".into()),
                &[1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0],
            )
        })
        .context("histogram buckets")?
        .install_recorder()
        .context("installing the metrics recorder")?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

/// The stages this process hosts: their tasks, and what the operations surface sees of them.
struct Stages {
    tasks: tokio::task::JoinSet<anyhow::Result<()>>,
    hosted: Vec<Hosted>,
    shutdown: CancellationToken,
}

impl Stages {
    /// Runs a task of a stage, recording how it ended in the stage's health (a connector's
    /// FAILED state).
    fn spawn<F>(&mut self, health: Arc<StageHealth>, what: &'static str, run: F)
    where
        F: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        self.tasks.spawn(async move {
            let result = run.await.context(what);
            if let Err(e) = &result {
                health.stopped(format!("{e:#}"));
            }
            result
        });
    }

    /// Registers a connector with the operations surface and starts its stage; `run` gets the
    /// shutdown token.
    fn start<F, Fut>(&mut self, hosted: Hosted, what: &'static str, run: F)
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        tracing::info!(connector = %hosted.name, stage = what, "Stage started.");
        let health = hosted.health.clone();
        self.hosted.push(hosted);
        let task = run(self.shutdown.clone());
        self.spawn(health, what, task);
    }
}

pub async fn run(config: &WorkerConfig, args: RunArgs) -> anyhow::Result<i32> {
    let listen: Option<std::net::SocketAddr> = if config.metrics_listen.is_empty() {
        None
    } else {
        Some(config.metrics_listen.parse().with_context(|| {
            format!(
                "metrics_listen `{}` is not an address",
                config.metrics_listen
            )
        })?)
    };
    let metrics = listen.map(|_| install_metrics()).transpose()?;
    let topology = config.topology()?;
    let codec = config.codec().await?;
    let shutdown = CancellationToken::new();
    tokio::spawn(shutdown_signal(shutdown.clone()));
    let mut stages = Stages {
        tasks: tokio::task::JoinSet::new(),
        hosted: Vec::new(),
        shutdown: shutdown.clone(),
    };
    // `--only STAGE` runs that stage (its connector must exist); otherwise every stage whose
    // connector the topology configures.
    let configured = |class: ConnectorClass| topology.connectors.iter().any(|c| c.class == class);
    let wanted = |stage: Stage, class: ConnectorClass| match args.only {
        Some(only) => only == stage,
        None => configured(class),
    };

    if wanted(Stage::Ingest, ConnectorClass::Ingest) {
        wx_ingest::describe_metrics();
        let connector = connector_of(&topology, ConnectorClass::Ingest)?;
        let [raw, checkpoints] = connector.output_topics.as_slice() else {
            anyhow::bail!(
                "connector {}: output.topics must be [raw topic, checkpoint topic]",
                connector.name
            );
        };
        let settings = IngestSettings::from_settings(&connector.settings)
            .map_err(|e| anyhow::anyhow!("connector {}: {e}", connector.name))?;
        let listen = settings.callback_listen;
        let worker = IngestWorker::build(
            settings.clone(),
            &config.kafka,
            codec.clone(),
            raw,
            checkpoints,
        )
        .with_context(|| format!("connector {}", connector.name))?;
        let control = worker.control();
        let health = control.health.clone();
        if let Some(addr) = listen {
            let receiver = CallbackReceiver::build(
                &settings,
                worker.producer(),
                codec.clone(),
                raw,
                worker.wakers(),
            )?;
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen for callbacks on {addr}"))?;
            tracing::info!(address = %addr, "Callback receiver listening.");
            let stop = shutdown.clone();
            stages.spawn(health.clone(), "callback receiver", async move {
                Ok(receiver
                    .serve(listener, async move { stop.cancelled().await })
                    .await?)
            });
        }
        stages.start(
            Hosted::new(
                connector,
                "source",
                checkpoints,
                Control::Ingest(control),
                health,
            ),
            "ingest worker",
            |stop| async move { Ok(worker.run(stop).await?) },
        );
    }

    if wanted(Stage::Decrypt, ConnectorClass::Decrypt) {
        wx_decrypt::metrics::describe();
        let (connector, settings, topics) = decrypt_connector(&topology)?;
        let raw = topics.raw.clone();
        let stage = DecryptStage::build(&settings, &config.kafka, codec.clone(), topics)
            .with_context(|| format!("connector {}", connector.name))?;
        let control = Control::Consumer(stage.control());
        stages.start(
            Hosted::new(connector, "sink", &raw, control, Default::default()),
            "decrypt processor",
            |stop| async move { Ok(stage.run(stop).await?) },
        );
    }

    if wanted(Stage::Sink, ConnectorClass::Sink) {
        wx_sink::metrics::describe();
        let connector = connector_of(&topology, ConnectorClass::Sink)?;
        let (Some(clean), Some(dead_letter)) = (
            connector.topics.first(),
            connector.dead_letter_topic.as_ref(),
        ) else {
            anyhow::bail!(
                "connector {}: needs topics [clean] and errors.deadletterqueue.topic.name",
                connector.name
            );
        };
        let settings = wx_sink::SinkSettings::from_settings(&connector.settings)
            .map_err(|e| anyhow::anyhow!("connector {}: {e}", connector.name))?;
        let worker = wx_sink::build(&settings, &config.kafka, codec.clone(), clean, dead_letter)
            .await
            .with_context(|| format!("connector {}", connector.name))?;
        let (control, health) = worker.control();
        stages.start(
            Hosted::new(connector, "sink", clean, Control::Consumer(control), health),
            "sink worker",
            |stop| async move { Ok(worker.run(stop).await?) },
        );
    }

    if wanted(Stage::Stats, ConnectorClass::Stats) {
        wx_stats::stage::metric::describe();
        let connector = connector_of(&topology, ConnectorClass::Stats)?;
        let (Some(clean), [stats, checkpoints], Some(dead_letter)) = (
            connector.topics.first(),
            connector.output_topics.as_slice(),
            connector.dead_letter_topic.as_ref(),
        ) else {
            anyhow::bail!(
                "connector {}: needs topics [clean], output.topics [stats topic, checkpoint topic] and errors.deadletterqueue.topic.name",
                connector.name
            );
        };
        let settings = wx_stats::StatsSettings::from_settings(&connector.settings)
            .map_err(|e| anyhow::anyhow!("connector {}: {e}", connector.name))?;
        let stage = wx_stats::StatsStage::build(
            &settings,
            &config.kafka,
            codec.clone(),
            clean,
            stats,
            checkpoints,
            dead_letter,
        )
        .map_err(|e| anyhow::anyhow!("connector {}: {e}", connector.name))?;
        let control = Control::Consumer(stage.control());
        stages.start(
            Hosted::new(connector, "sink", clean, control, Default::default()),
            "stats stage",
            |stop| async move { Ok(stage.run(stop).await?) },
        );
    }

    let Stages {
        mut tasks, hosted, ..
    } = stages;
    if hosted.is_empty() {
        anyhow::bail!("the topology configures no connector this command runs");
    }
    if let Some(addr) = listen {
        let worker_id = format!(
            "{}:{}",
            std::env::var("HOSTNAME").unwrap_or_else(|_| "127.0.0.1".into()),
            addr.port()
        );
        let app = ops::router(hosted, metrics, config.kafka.clone(), worker_id);
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot serve the operations endpoint on {addr}"))?;
        tracing::info!(address = %addr, "Operations endpoint (metrics, health, REST) listening.");
        let stop = shutdown.clone();
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
            {
                tracing::error!(error = %e, "The operations endpoint failed.");
            }
        });
    }

    let stages = async {
        let mut code = 0;
        while let Some(result) = tasks.join_next().await {
            match result {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::error!(error = %format!("{e:#}"), "A stage failed.");
                    code = 1;
                    shutdown.cancel();
                }
                Err(e) => {
                    tracing::error!(error = %e, "A stage panicked.");
                    code = 1;
                    shutdown.cancel();
                }
            }
        }
        code
    };
    // Draining is bounded: past this, exit anyway (what is not committed is repeated later).
    let overdue = async {
        shutdown.cancelled().await;
        tokio::time::sleep(SHUTDOWN_BOUND).await;
    };
    tokio::select! {
        code = stages => {
            tracing::info!(code, "Every stage stopped.");
            Ok(code)
        }
        () = overdue => {
            tracing::error!(bound = ?SHUTDOWN_BOUND, "Stages did not stop in time after the shutdown request; exiting.");
            Ok(1)
        }
    }
}

/// How long the stages may take to drain and commit after SIGTERM (Kubernetes' grace period in
/// k8s/ is 60 s).
const SHUTDOWN_BOUND: std::time::Duration = std::time::Duration::from_secs(45);

/// The topology's connector of `class`.
pub fn connector_of(
    topology: &wx_topology::Topology,
    class: ConnectorClass,
) -> anyhow::Result<&wx_topology::ConnectorSpec> {
    topology
        .connectors
        .iter()
        .find(|c| c.class == class)
        .with_context(|| {
            let name = format!("{class:?}").to_lowercase();
            format!("no connector of class wxstream.{name} in the topology")
        })
}

/// The decrypt connector of the topology, its settings and its topics.
pub fn decrypt_connector(
    topology: &wx_topology::Topology,
) -> anyhow::Result<(&wx_topology::ConnectorSpec, DecryptSettings, Topics)> {
    let connector = connector_of(topology, ConnectorClass::Decrypt)?;
    let (Some(raw), Some(clean), Some(dead_letter)) = (
        connector.topics.first(),
        connector.output_topics.first(),
        connector.dead_letter_topic.as_ref(),
    ) else {
        anyhow::bail!(
            "connector {}: needs topics [raw], output.topics [clean] and errors.deadletterqueue.topic.name",
            connector.name
        );
    };
    let settings = DecryptSettings::from_settings(&connector.settings)
        .map_err(|e| anyhow::anyhow!("connector {}: {e}", connector.name))?;
    let topics = Topics {
        raw: raw.clone(),
        clean: clean.clone(),
        dead_letter: dead_letter.clone(),
    };
    Ok((connector, settings, topics))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The repository's connector documents parse with their stages' settings types.
    #[test]
    fn the_repository_topology_is_valid_for_every_stage_that_runs() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../topology");
        let topology = wx_topology::load_dir(&dir).expect("topology");
        let (_, settings, topics) = decrypt_connector(&topology).expect("decrypt connector");
        assert_eq!(topics.raw, "wxstream.raw");
        assert_eq!(topics.dead_letter, "wxstream.dead-letter");
        assert_eq!(settings.callbacks.len(), 3);
        let ingest = connector_of(&topology, ConnectorClass::Ingest).expect("ingest connector");
        IngestSettings::from_settings(&ingest.settings).expect("ingest settings");
        let sink = connector_of(&topology, ConnectorClass::Sink).expect("sink connector");
        wx_sink::SinkSettings::from_settings(&sink.settings).expect("sink settings");
        let stats = connector_of(&topology, ConnectorClass::Stats).expect("stats connector");
        wx_stats::StatsSettings::from_settings(&stats.settings).expect("stats settings");
    }
}
