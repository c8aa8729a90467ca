//! The connectors `wxstream run` hosts, each one stage that an operator can pause, stop, resume
//! and restart in the running process: what Kafka Connect's herder does for the tasks of one
//! worker. A stage that ended with an error stays FAILED (its cause shown) until
//! `POST /connectors/{name}/restart` builds it again, or until `/livez` has failed for
//! `failed_liveness_after` and Kubernetes restarts the process.
//!
//! States, as Connect names them: RUNNING, PAUSED (the stage is built and a member of its group
//! but takes no new work), STOPPED (the stage's task has ended cleanly, drained and committed,
//! and it has left its group, so its offsets can be changed), FAILED (the task ended with an
//! error), RESTARTING (being stopped or built again).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio_util::sync::CancellationToken;
use wx_codec::Codec;
use wx_kafka::KafkaConfig;
use wx_runtime::settings::redact_urls;
use wx_runtime::{ConnectorKind, Launched, Launcher, StageControl, StageHealth};
use wx_topology::ConnectorSpec;

/// What the operator asked a connector to be (Connect's target state).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Started,
    Paused,
    Stopped,
}

/// How to build the connector's stage again (a restart, a resume after a stop).
struct Relaunch {
    launcher: Launcher,
    pipeline: String,
    spec: ConnectorSpec,
    kafka: KafkaConfig,
    codec: Arc<Codec>,
    /// The process's shutdown: each build's own token is a child of it.
    process: CancellationToken,
}

/// The build running now (or the last one, once it ended).
struct Current {
    control: Arc<dyn StageControl>,
    health: Arc<StageHealth>,
    /// Ends this build's task (drains and commits) without ending the process.
    stop: CancellationToken,
    /// The task, until it has been awaited (stop, restart, shutdown).
    task: Option<tokio::task::JoinHandle<bool>>,
}

struct State {
    target: Target,
    current: Current,
    /// A stop or a restart is under way.
    transition: bool,
}

/// One hosted connector.
pub struct Connector {
    pub name: String,
    pub kind: ConnectorKind,
    /// The connector document as Connect shows a config: string values, no secret values.
    pub config: BTreeMap<String, String>,
    /// The topic whose offsets `GET .../offsets` reports: the input topic (consumer stages),
    /// or the checkpoint topic (ingest).
    pub offsets_topic: String,
    /// Every topic the stage reads or writes (`GET .../topics`).
    pub topics: Vec<String>,
    relaunch: Relaunch,
    state: Mutex<State>,
    /// One stop, resume or restart at a time.
    transitions: tokio::sync::Mutex<()>,
}

/// Why a stop, resume or restart did not complete.
#[derive(Debug, thiserror::Error)]
pub enum TransitionError {
    #[error("the stage did not stop within {0:?}; it is still draining")]
    StopTimeout(Duration),
    #[error("the stage could not be built again: {0}")]
    Build(String),
    #[error("{0}")]
    Kafka(#[from] wx_kafka::KafkaError),
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Connector {
    /// Hosts a launched stage in the target state the control topic holds for it: its task
    /// started (paused before it fetches anything, when PAUSED), or not at all (STOPPED: the
    /// build is released, so it holds no group membership).
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        launched: Launched,
        launcher: Launcher,
        pipeline: &str,
        kafka: &KafkaConfig,
        codec: Arc<Codec>,
        process: CancellationToken,
        stop: CancellationToken,
        target: Target,
    ) -> Result<Arc<Connector>, TransitionError> {
        let connector = Arc::new(Connector {
            name: launched.connector.name.clone(),
            kind: launched.kind,
            config: connect_config(&launched.connector),
            offsets_topic: launched.offsets_topic.clone(),
            topics: launched.topics.clone(),
            relaunch: Relaunch {
                launcher,
                pipeline: pipeline.to_string(),
                spec: launched.connector.clone(),
                kafka: kafka.clone(),
                codec,
                process,
            },
            state: Mutex::new(State {
                target,
                current: Current {
                    control: launched.control.clone(),
                    health: launched.health.clone(),
                    stop: stop.clone(),
                    task: None,
                },
                transition: false,
            }),
            transitions: tokio::sync::Mutex::new(()),
        });
        match target {
            Target::Stopped => {
                stop.cancel();
                connector.stopped_gauge().set(1.0);
                let released = launched.control.released();
                drop(launched);
                if let Some(released) = released {
                    connector.state().current.control = released;
                }
                tracing::info!(connector = %connector.name, "Stage left STOPPED, as the control topic says.");
            }
            Target::Paused => {
                launched.control.pause()?;
                connector.state().current.task = Some(supervise(launched));
            }
            Target::Started => connector.state().current.task = Some(supervise(launched)),
        }
        Ok(connector)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The running build's control.
    pub fn control(&self) -> Arc<dyn StageControl> {
        self.state().current.control.clone()
    }

    /// The running build's health.
    pub fn health(&self) -> Arc<StageHealth> {
        self.state().current.health.clone()
    }

    pub fn target(&self) -> Target {
        self.state().target
    }

    /// Connect's state name.
    pub fn state_name(&self) -> &'static str {
        let state = self.state();
        if state.transition {
            "RESTARTING"
        } else if state.target == Target::Stopped && state.current.task.is_none() {
            "STOPPED"
        } else if state.current.health.stop_reason().is_some() {
            "FAILED"
        } else if state.current.control.is_paused() {
            "PAUSED"
        } else {
            "RUNNING"
        }
    }

    /// Since when (UTC ms) the stage has been FAILED.
    pub fn failed_since(&self) -> Option<i64> {
        let state = self.state();
        if state.transition || (state.target == Target::Stopped && state.current.task.is_none()) {
            // Restarting, or stopped by an operator (who may be changing its offsets).
            return None;
        }
        state.current.health.stopped_at()
    }

    /// Pauses the stage (a stopped one is built again, paused, as Connect does).
    pub async fn pause(&self) -> Result<(), TransitionError> {
        let _one = self.transitions.lock().await;
        let stopped = self.target() == Target::Stopped;
        self.state().target = Target::Paused;
        if stopped {
            self.build().await?;
        }
        self.control().pause()?;
        Ok(())
    }

    /// Resumes a paused stage; builds a stopped one again.
    pub async fn resume(&self) -> Result<(), TransitionError> {
        let _one = self.transitions.lock().await;
        let stopped = self.target() == Target::Stopped;
        self.state().target = Target::Started;
        if stopped {
            self.build().await?;
        }
        self.control().resume()?;
        Ok(())
    }

    /// Runs `change` (a blocking offsets change) while the connector is STOPPED and no stop,
    /// resume or restart can begin; refused (`Err(None)`) when it is not STOPPED.
    pub async fn while_stopped<T: Send + 'static>(
        &self,
        change: impl FnOnce(Arc<dyn StageControl>) -> T + Send + 'static,
    ) -> Result<T, Option<tokio::task::JoinError>> {
        let _one = self.transitions.lock().await;
        if self.state_name() != "STOPPED" {
            return Err(None);
        }
        let control = self.control();
        tokio::task::spawn_blocking(move || change(control))
            .await
            .map_err(Some)
    }

    /// Ends the stage's task (it drains and commits, and leaves its group); it stays STOPPED,
    /// across restarts of the stage's build, until resumed.
    pub async fn stop(&self) -> Result<(), TransitionError> {
        let _one = self.transitions.lock().await;
        self.state().target = Target::Stopped;
        self.stopped_gauge().set(1.0);
        self.end_task().await
    }

    fn stopped_gauge(&self) -> metrics::Gauge {
        metrics::gauge!("wxstream_connector_stopped", "connector" => self.name.clone())
    }

    /// Pauses, resumes or stops the connector as `target` says.
    pub async fn set_target(&self, target: Target) -> Result<(), TransitionError> {
        match target {
            Target::Started => self.resume().await,
            Target::Paused => self.pause().await,
            Target::Stopped => self.stop().await,
        }
    }

    /// Builds the stage again (`only_failed`: only when it is FAILED). Returns whether it was
    /// restarted. Keeps the target state: a paused connector comes back paused, a stopped one
    /// stays stopped.
    pub async fn restart(&self, only_failed: bool) -> Result<bool, TransitionError> {
        let _one = self.transitions.lock().await;
        let failed = self.health().stop_reason().is_some();
        if (only_failed && !failed) || self.target() == Target::Stopped {
            return Ok(false);
        }
        self.end_task().await?;
        // A paused connector's new build is paused before its task starts (`build`).
        self.build().await?;
        Ok(true)
    }

    /// Waits for the task to end after the process's shutdown; false if it failed (now or
    /// before).
    pub async fn join(&self) -> bool {
        let task = self.state().current.task.take();
        let ended_well = match task {
            Some(task) => task.await.unwrap_or(false),
            None => true,
        };
        ended_well && self.health().stop_reason().is_none()
    }

    /// Stops the current build's task and waits for it (bounded).
    async fn end_task(&self) -> Result<(), TransitionError> {
        let task = {
            let mut state = self.state();
            state.current.stop.cancel();
            state.current.task.take()
        };
        let Some(mut task) = task else {
            return Ok(());
        };
        self.state().transition = true;
        let ended = tokio::time::timeout(STOP_BOUND, &mut task).await;
        self.state().transition = false;
        match ended {
            Ok(_) => {
                // Nothing of the ended build may keep a Kafka client (its group membership);
                // the last one is closed (leaving the group, a blocking call) off the async
                // threads and outside the state's lock.
                let old = {
                    let mut state = self.state();
                    let released = state.current.control.released();
                    released.map(|released| std::mem::replace(&mut state.current.control, released))
                };
                if let Some(old) = old {
                    let _ = tokio::task::spawn_blocking(move || drop(old)).await;
                }
                tracing::info!(connector = %self.name, "Stage stopped.");
                Ok(())
            }
            Err(_) => {
                // Still draining: kept, so a later stop or the shutdown waits for it again.
                self.state().current.task = Some(task);
                Err(TransitionError::StopTimeout(STOP_BOUND))
            }
        }
    }

    /// Builds the stage again and starts its task, paused first when the target is PAUSED (it
    /// fetches nothing before); a build that fails leaves it FAILED with the cause.
    async fn build(&self) -> Result<(), TransitionError> {
        let relaunch = &self.relaunch;
        let stop = relaunch.process.child_token();
        self.state().transition = true;
        let built = (relaunch.launcher)(
            &relaunch.pipeline,
            &relaunch.spec,
            &relaunch.kafka,
            relaunch.codec.clone(),
            stop.clone(),
        )
        .await;
        let mut state = self.state();
        state.transition = false;
        match built {
            Ok(launched) => {
                if state.target == Target::Paused {
                    launched.control.pause()?;
                }
                state.current = Current {
                    control: launched.control.clone(),
                    health: launched.health.clone(),
                    stop,
                    task: None,
                };
                state.current.task = Some(supervise(launched));
                if state.target == Target::Stopped {
                    state.target = Target::Started;
                }
                drop(state);
                self.stopped_gauge().set(0.0);
                Ok(())
            }
            Err(e) => {
                let cause = e.to_string();
                state
                    .current
                    .health
                    .stopped(format!("restart failed: {cause}"));
                Err(TransitionError::Build(cause))
            }
        }
    }
}

/// How long a stop or restart waits for the stage to drain and commit (as the shutdown does).
pub const STOP_BOUND: Duration = Duration::from_secs(45);

/// Starts a built stage's task; a task that ends with an error marks its stage FAILED (health,
/// `wxstream_stage_up` 0, one error line). True when it ended cleanly.
fn supervise(stage: Launched) -> tokio::task::JoinHandle<bool> {
    let up = metrics::gauge!("wxstream_stage_up", "connector" => stage.connector.name.clone());
    up.set(1.0);
    tracing::info!(connector = %stage.connector.name, stage = stage.stage, "Stage started.");
    let (connector, health) = (stage.connector.name, stage.health);
    let task = stage.task;
    tokio::spawn(async move {
        // A panic is caught here too, so it is shown like any other failure.
        let ended = tokio::spawn(task).await;
        let failure = match ended {
            Ok(Ok(())) => return true,
            Ok(Err(e)) => format!("{e}"),
            Err(e) => format!("the stage's task panicked: {e}"),
        };
        up.set(0.0);
        health.stopped(&failure);
        tracing::error!(connector = %connector, error = %failure, "A stage failed; it stays FAILED until POST /connectors/{connector}/restart or a restart of the process.");
        false
    })
}

/// Describes the metrics of the hosted connectors.
pub fn describe_metrics() {
    metrics::describe_gauge!(
        "wxstream_stage_up",
        "1 while a hosted stage runs, 0 once it stopped with an error (FAILED) until it is restarted, by connector."
    );
    metrics::describe_gauge!(
        "wxstream_connector_stopped",
        "1 while an operator has the connector STOPPED on this worker (PUT /connectors/{name}/stop), by connector."
    );
}

/// Connect shows a connector's config as a flat map of strings; nested settings are JSON text.
/// Secrets are references (`{env: NAME}`), never values, so the document is safe to show.
fn connect_config(connector: &ConnectorSpec) -> BTreeMap<String, String> {
    let mut config = BTreeMap::new();
    config.insert("name".into(), connector.name.clone());
    config.insert("connector.class".into(), connector.class.name().into());
    config.insert("tasks.max".into(), connector.tasks_max.to_string());
    config.insert(
        "errors.tolerance".into(),
        format!("{:?}", connector.errors_tolerance).to_lowercase(),
    );
    if !connector.topics.is_empty() {
        config.insert("topics".into(), connector.topics.join(","));
    }
    if !connector.output_topics.is_empty() {
        config.insert("output.topics".into(), connector.output_topics.join(","));
    }
    if let Some(dlq) = &connector.dead_letter_topic {
        config.insert("errors.deadletterqueue.topic.name".into(), dlq.clone());
    }
    for (key, value) in &connector.settings {
        let text = match value {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        // A URL setting may carry credentials (`http://user:pass@host`): never shown.
        config.insert(key.clone(), redact_urls(&text));
    }
    config
}
