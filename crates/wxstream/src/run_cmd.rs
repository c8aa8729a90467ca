//! `wxstream run [--only STAGE]`: launches the configured stages (every one through the stage
//! contract of `wx_runtime`) in this process, serves the operations endpoint (`ops`: metrics,
//! health, Connect-style REST) on `metrics_listen`, and supervises the stages until SIGTERM or
//! SIGINT, then drains and stops each within a bounded time.
//!
//! A stage that stops with an error stays FAILED, as a Kafka Connect task does: its cause is in
//! `/readyz` (503) and the connector's status, `wxstream_stage_up` is 0 and an alert fires; the
//! other stages keep running and the process does not exit (nor spin) until it is told to (the
//! exit code is then 1). `POST /connectors/{name}/restart` builds the stage again in the
//! process; past `failed_liveness_after`, `/livez` fails so Kubernetes restarts the pod.

use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;
use wx_codec::Codec;
use wx_runtime::{StageContext, StageSettings};
use wx_topology::{ConnectorClass, ConnectorSpec, Topology};

use crate::auth::Credentials;
use crate::config::WorkerConfig;
use crate::connectors::Connector;
use crate::herder::Herder;
use crate::ops;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Run only this stage (one image serves every Kubernetes Deployment).
    #[arg(long, value_parser = crate::stages::name_parser())]
    only: Option<String>,
}

/// `metrics_listen` as an address (empty: no operations endpoint).
fn ops_address(config: &WorkerConfig) -> anyhow::Result<Option<std::net::SocketAddr>> {
    if config.metrics_listen.is_empty() {
        return Ok(None);
    }
    let address = config.metrics_listen.parse().with_context(|| {
        format!(
            "metrics_listen `{}` is not an address",
            config.metrics_listen
        )
    })?;
    Ok(Some(address))
}

pub async fn run(config: &WorkerConfig, args: RunArgs) -> anyhow::Result<i32> {
    let listen = ops_address(config)?;
    // Checked before anything starts: a misconfigured endpoint stops the process visibly.
    let credentials = listen
        .map(|address| ops_credentials(config, address))
        .transpose()?;
    let metrics = listen.map(|_| install_metrics()).transpose()?;
    let topology = config.topology()?;
    let codec = config.codec().await?;
    let shutdown = CancellationToken::new();
    tokio::spawn(shutdown_signal(shutdown.clone()));
    // The control topic is read first: each stage starts in the state an operator left it in
    // (PAUSED or STOPPED through any worker, before this one started).
    let herder = Herder::start(
        &config.kafka,
        &config.topic_prefix,
        worker_id(listen),
        shutdown.clone(),
    )
    .await?;
    let mut hosted = Vec::new();
    for stage in &crate::stages::STAGES {
        // `--only STAGE` runs that stage (its connector must exist); otherwise every stage
        // whose connector the topology configures.
        let wanted = match &args.only {
            Some(only) => only == stage.name,
            None => topology.connectors.iter().any(|c| c.class == stage.class),
        };
        if wanted {
            let connector = connector_of(&topology, stage.class)?;
            // The stage's own shutdown, so that it can be stopped and built again alone.
            let stop = shutdown.child_token();
            let launched = (stage.launch)(
                &config.topic_prefix,
                connector,
                &config.kafka,
                codec.clone(),
                stop.clone(),
            )
            .await?;
            hosted.push((launched, stage.launch, stop));
        }
    }
    anyhow::ensure!(
        !hosted.is_empty(),
        "the topology configures no connector this command runs"
    );
    crate::connectors::describe_metrics();
    let connectors: Vec<Arc<Connector>> = hosted
        .into_iter()
        .map(|(launched, launcher, stop)| {
            let target = herder.target(&launched.connector.name);
            Connector::start(
                launched,
                launcher,
                &config.topic_prefix,
                &config.kafka,
                codec.clone(),
                shutdown.clone(),
                stop,
                target,
            )
        })
        .collect::<Result<_, _>>()?;
    herder.attach(connectors.clone(), shutdown.clone());
    if let (Some(address), Some(credentials)) = (listen, credentials) {
        serve_ops(
            address,
            connectors.clone(),
            metrics,
            credentials,
            config,
            herder,
            shutdown.clone(),
        )
        .await?;
    }
    Ok(wait(connectors, shutdown).await)
}

/// Connect's worker id, unique among the workers: the host's name (`HOSTNAME`, else the
/// kernel's) and the port of the REST API; without one, the process id instead.
fn worker_id(listen: Option<std::net::SocketAddr>) -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
        })
        .unwrap_or_else(|| "127.0.0.1".into());
    match listen {
        Some(address) => format!("{host}:{}", address.port()),
        None => format!("{host}:pid-{}", std::process::id()),
    }
}

/// Waits for shutdown, then for every stage to drain (bounded); 1 if any stage failed. A
/// failed stage keeps the process up (FAILED, shown, restartable over REST) until then.
async fn wait(connectors: Vec<Arc<Connector>>, shutdown: CancellationToken) -> i32 {
    let mut failed = false;
    let stages = async {
        shutdown.cancelled().await;
        for connector in &connectors {
            failed |= !connector.join().await;
        }
    };
    // Draining is bounded: past this, exit anyway (what is not committed is repeated later).
    let overdue = async {
        shutdown.cancelled().await;
        tokio::time::sleep(SHUTDOWN_BOUND).await;
    };
    tokio::select! {
        () = stages => {
            tracing::info!(failed, "Every stage stopped.");
            i32::from(failed)
        }
        () = overdue => {
            tracing::error!(bound = ?SHUTDOWN_BOUND, "Stages did not stop in time after the shutdown request; exiting.");
            1
        }
    }
}

/// How long the stages may take to drain and commit after SIGTERM (Kubernetes' grace period in
/// k8s/ is 60 s).
const SHUTDOWN_BOUND: std::time::Duration = std::time::Duration::from_secs(45);

/// The shortest operations token accepted: a guessable one guards nothing.
const OPS_TOKEN_MIN_CHARS: usize = 16;

/// The operations endpoint's credentials (`ops_token`, `ops_users`): required (a configuration
/// error otherwise, stopping the process visibly) when the endpoint listens beyond the loopback
/// interface; a token never shorter than [`OPS_TOKEN_MIN_CHARS`], users only with bcrypt hashes.
/// No value is ever shown.
fn ops_credentials(
    config: &WorkerConfig,
    address: std::net::SocketAddr,
) -> anyhow::Result<Credentials> {
    let token = config
        .ops_token
        .as_ref()
        .map(|reference| {
            let token = reference
                .resolve()
                .context("ops_token (the operations endpoint's bearer token)")?;
            let chars = token.expose().chars().count();
            if chars < OPS_TOKEN_MIN_CHARS {
                anyhow::bail!(
                    "ops_token has {chars} characters; use at least {OPS_TOKEN_MIN_CHARS} (e.g. openssl rand -hex 32)"
                );
            }
            Ok(token)
        })
        .transpose()?;
    let users = config
        .ops_users
        .as_ref()
        .map(|reference| {
            reference
                .resolve()
                .context("ops_users (the operations endpoint's Basic users, htpasswd lines)")
        })
        .transpose()?;
    let credentials = Credentials::new(token, users.as_ref())?;
    if credentials.is_empty() && !address.ip().is_loopback() {
        anyhow::bail!(
            "metrics_listen {address} is reachable from other hosts: set ops_token (a secret reference, e.g. WXSTREAM_OPS_TOKEN__ENV=WX_OPS_TOKEN) or ops_users (htpasswd lines with bcrypt hashes, e.g. WXSTREAM_OPS_USERS__FILE=/etc/wxstream/htpasswd) so changes, connector documents and reads from other hosts require them, or listen on 127.0.0.1"
        );
    }
    Ok(credentials)
}

async fn serve_ops(
    address: std::net::SocketAddr,
    connectors: Vec<Arc<Connector>>,
    metrics: Option<PrometheusHandle>,
    credentials: Credentials,
    config: &WorkerConfig,
    herder: Arc<Herder>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // Changes over REST are audited in the archive's MySQL and the audit topic.
    let auditor = match crate::audit::Auditor::of(config) {
        Ok(Some(auditor)) => Some(Arc::new(auditor)),
        Ok(None) => {
            tracing::warn!(
                "The topology has no sink connector, so no archive database: changes over REST are not audited."
            );
            None
        }
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "The archive database could not be configured: changes over REST are not audited.");
            None
        }
    };
    let app = ops::router(
        ops::Hosted {
            connectors,
            metrics,
            credentials,
            kafka: config.kafka.clone(),
            herder,
            auditor,
        },
        config.failed_liveness_after,
    );
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot serve the operations endpoint on {address}"))?;
    tracing::info!(%address, "Operations endpoint (metrics, health, REST) listening.");
    tokio::spawn(async move {
        // The peer's address decides what a request without credentials may read.
        let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
        {
            tracing::error!(error = %e, "The operations endpoint failed.");
        }
    });
    Ok(())
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

/// The topology's connector of `class`.
pub fn connector_of(topology: &Topology, class: ConnectorClass) -> anyhow::Result<&ConnectorSpec> {
    topology
        .connectors
        .iter()
        .find(|c| c.class == class)
        .with_context(|| format!("no connector of class {} in the topology", class.name()))
}

/// A stage's settings and context outside `run` (benchmarks), from the topology's connector of
/// its class.
pub fn stage_context<S: StageSettings>(
    topology: &Topology,
    config: &WorkerConfig,
    codec: Arc<Codec>,
) -> anyhow::Result<(S, StageContext)> {
    let connector = connector_of(topology, S::CLASS)?;
    Ok(wx_runtime::prepare::<S>(
        &config.topic_prefix,
        connector,
        &config.kafka,
        codec,
        CancellationToken::new(),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use wx_decrypt::DecryptSettings;
    use wx_ingest::IngestSettings;
    use wx_sink::SinkSettings;
    use wx_stats::StatsSettings;

    /// The repository's connector documents parse with their stages' settings types, and their
    /// topics fill every role.
    #[test]
    fn the_repository_topology_is_valid_for_every_stage_that_runs() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../topology");
        let topology = wx_topology::load_dir(&dir).expect("topology");
        let config = WorkerConfig::load(None).expect("default config");
        let codec = Arc::new(Codec::fixed().expect("codec"));
        let (decrypt, context) =
            stage_context::<DecryptSettings>(&topology, &config, codec.clone()).expect("decrypt");
        assert_eq!(context.topic("raw"), "wxstream.raw");
        assert_eq!(
            context.topic(wx_runtime::DEAD_LETTER),
            "wxstream.dead-letter"
        );
        assert_eq!(decrypt.callbacks.len(), 3);
        let (_, context) =
            stage_context::<IngestSettings>(&topology, &config, codec.clone()).expect("ingest");
        assert_eq!(context.topic("checkpoints"), "wxstream.ingest-checkpoints");
        stage_context::<SinkSettings>(&topology, &config, codec.clone()).expect("sink");
        let (_, context) =
            stage_context::<StatsSettings>(&topology, &config, codec).expect("stats");
        assert_eq!(context.topic("stats"), "wxstream.stats");
        let kinds = [
            IngestSettings::KIND,
            DecryptSettings::KIND,
            SinkSettings::KIND,
            StatsSettings::KIND,
        ]
        .map(wx_runtime::ConnectorKind::as_str);
        assert_eq!(kinds, ["source", "sink", "sink", "sink"]);
    }
}
