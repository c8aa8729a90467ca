//! `wxstream run [--only STAGE]`: runs the configured stages in this process until SIGTERM or
//! SIGINT, then drains and stops each within a bounded time.

use anyhow::Context;
use clap::{Args, ValueEnum};
use tokio_util::sync::CancellationToken;
use wx_decrypt::{DecryptSettings, DecryptStage, Topics};
use wx_ingest::{CallbackReceiver, IngestSettings, IngestWorker};
use wx_topology::ConnectorClass;

use crate::config::WorkerConfig;

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

pub async fn run(config: &WorkerConfig, args: RunArgs) -> anyhow::Result<i32> {
    if !config.metrics_listen.is_empty() {
        let addr: std::net::SocketAddr = config.metrics_listen.parse().with_context(|| {
            format!(
                "metrics_listen `{}` is not an address",
                config.metrics_listen
            )
        })?;
        use metrics_exporter_prometheus::Matcher;
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(addr)
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
            .install()
            .with_context(|| format!("cannot serve metrics on {addr}"))?;
    }
    let topology = config.topology()?;
    let codec = config.codec().await?;
    let shutdown = CancellationToken::new();
    tokio::spawn(shutdown_signal(shutdown.clone()));
    let mut tasks = tokio::task::JoinSet::new();
    let wanted = |stage: Stage| args.only.is_none_or(|only| only == stage);

    if wanted(Stage::Ingest) {
        wx_ingest::describe_metrics();
        let connector = connector_of(&topology, ConnectorClass::Ingest)?;
        let [raw, checkpoints, workers] = connector.output_topics.as_slice() else {
            anyhow::bail!(
                "connector {}: output.topics must be [raw topic, checkpoint topic, workers topic]",
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
            workers,
        )
        .with_context(|| format!("connector {}", connector.name))?;
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
            tasks.spawn(async move {
                receiver
                    .serve(listener, async move { stop.cancelled().await })
                    .await
                    .context("callback receiver")
            });
        }
        let stop = shutdown.clone();
        tasks.spawn(async move { worker.run(stop).await.context("ingest worker") });
        tracing::info!(connector = %connector.name, "Ingest started.");
    }

    if wanted(Stage::Decrypt) {
        wx_decrypt::metrics::describe();
        let (connector, settings, topics) = decrypt_connector(&topology)?;
        let stage = DecryptStage::build(&settings, &config.kafka, codec.clone(), topics)
            .with_context(|| format!("connector {}", connector.name))?;
        let stop = shutdown.clone();
        tasks.spawn(async move { stage.run(stop).await.context("decrypt processor") });
        tracing::info!(connector = %connector.name, "Decrypt started.");
    }

    if wanted(Stage::Sink) {
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
        let stop = shutdown.clone();
        tasks.spawn(async move { worker.run(stop).await.context("sink worker") });
        tracing::info!(connector = %connector.name, "Sink started.");
    }

    if wanted(Stage::Stats) {
        wx_stats::stage::metric::describe();
        let connector = connector_of(&topology, ConnectorClass::Stats)?;
        let (Some(clean), Some(stats), Some(dead_letter)) = (
            connector.topics.first(),
            connector.output_topics.first(),
            connector.dead_letter_topic.as_ref(),
        ) else {
            anyhow::bail!(
                "connector {}: needs topics [clean], output.topics [stats] and errors.deadletterqueue.topic.name",
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
            dead_letter,
        )
        .map_err(|e| anyhow::anyhow!("connector {}: {e}", connector.name))?;
        let stop = shutdown.clone();
        tasks.spawn(async move { stage.run(stop).await.context("stats stage") });
        tracing::info!(connector = %connector.name, "Stats started.");
    }

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
    Ok(code)
}

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
