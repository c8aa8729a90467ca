//! `wxstream run [--only STAGE]`: runs the configured stages in this process until SIGTERM or
//! SIGINT, then drains and stops each within a bounded time.

use std::sync::Arc;

use anyhow::Context;
use clap::{Args, ValueEnum};
use tokio_util::sync::CancellationToken;
use wx_ingest::{CallbackReceiver, IngestSettings, IngestWorker};
use wx_topology::ConnectorClass;

use crate::config::WorkerConfig;

/// The stages `run` can host today (the others are planned; see ARCHITECTURE.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Stage {
    Ingest,
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
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(addr)
            .install()
            .with_context(|| format!("cannot serve metrics on {addr}"))?;
    }
    let topology = config.topology()?;
    let codec = Arc::new(wx_codec::Codec::fixed()?);
    let shutdown = CancellationToken::new();
    tokio::spawn(shutdown_signal(shutdown.clone()));
    let mut tasks = tokio::task::JoinSet::new();
    let wanted = |stage: Stage| args.only.is_none_or(|only| only == stage);

    if wanted(Stage::Ingest) {
        wx_ingest::describe_metrics();
        let connector = topology
            .connectors
            .iter()
            .find(|c| c.class == ConnectorClass::Ingest)
            .context("no connector of class wxstream.ingest in the topology")?;
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
