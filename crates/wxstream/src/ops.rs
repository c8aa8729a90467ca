//! The operations surface of `wxstream run`, on one port (`metrics_listen`):
//! - `GET /metrics`: Prometheus exposition of every stage in the process;
//! - `GET /livez` (liveness) and `GET /readyz` (readiness: every hosted connector reaches its
//!   broker and stores and has joined its group), 200 or 503 with the reasons;
//! - a REST API shaped like Kafka Connect's (`ops/openapi.yaml`): `GET /`, `GET /connectors`
//!   (`?expand=status|info`), `GET /connectors/{name}`, `.../config`, `.../status`,
//!   `.../tasks/{id}/status`, `PUT .../pause`, `PUT .../resume`, `GET .../offsets`.
//!
//! Errors are Connect's shape: `{"error_code": 404, "message": "..."}`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::{Value, json};
use wx_kafka::KafkaConfig;
use wx_runtime::settings::{Secret, redact_urls};
use wx_runtime::{Launched, StageControl, StageHealth};

/// One connector this process hosts.
#[derive(Debug, Clone)]
pub struct Hosted {
    pub name: String,
    /// Connect's `type`: `source` or `sink`.
    pub kind: &'static str,
    /// The connector document as Connect shows a config: string values.
    pub config: BTreeMap<String, String>,
    /// The topic whose offsets `GET .../offsets` reports: the input topic (consumer stages),
    /// or the checkpoint topic (ingest).
    pub offsets_topic: String,
    pub control: Arc<dyn StageControl>,
    pub health: Arc<StageHealth>,
}

impl Hosted {
    /// What the operations surface keeps of a launched stage.
    pub fn new(launched: &Launched) -> Hosted {
        Hosted {
            name: launched.connector.name.clone(),
            kind: launched.kind.as_str(),
            config: connect_config(&launched.connector),
            offsets_topic: launched.offsets_topic.clone(),
            control: launched.control.clone(),
            health: launched.health.clone(),
        }
    }

    /// Why the connector is not ready (empty when it is). With `Shown::Causes` as the stages
    /// gave them; with `Shown::Components`, what an open route shows, only what is failing:
    /// a store's own error text may name hosts, users and databases.
    fn not_ready(&self, shown: Shown) -> Vec<String> {
        let failures = self.health.failures();
        let mut reasons: Vec<String> = match shown {
            Shown::Causes => failures.into_values().collect(),
            Shown::Components => failures
                .into_keys()
                .map(|component| format!("{component} is failing{WITH_TOKEN}"))
                .collect(),
        };
        if let Some(stop) = self.health.stop_reason() {
            reasons.push(match shown {
                Shown::Causes => format!("stopped: {stop}"),
                Shown::Components => format!("stopped{WITH_TOKEN}"),
            });
            return reasons;
        }
        reasons.extend(
            self.control
                .not_ready()
                .into_iter()
                .map(|reason| shown.reason(reason)),
        );
        reasons
    }

    fn state(&self) -> &'static str {
        if self.health.stop_reason().is_some() {
            "FAILED"
        } else if self.control.is_paused() {
            "PAUSED"
        } else {
            "RUNNING"
        }
    }

    /// Connect's status document, with wxstream's additions (`ready`, `failing`,
    /// `assigned_partitions` or `corps`, `last_error_at`); the last error's text (`trace`) and
    /// the causes only when `shown` says so.
    fn status(&self, worker_id: &str, shown: Shown) -> Value {
        let state = self.state();
        let mut task = json!({ "id": 0, "state": state, "worker_id": worker_id });
        if let Some((at, error)) = self.health.last_error() {
            task["trace"] = json!(match shown {
                Shown::Causes => error,
                Shown::Components => format!("an error{WITH_TOKEN}"),
            });
            task["last_error_at"] = json!(at);
        }
        let (field, work) = self.control.work();
        task[field] = work;
        let not_ready = self.not_ready(shown);
        json!({
            "name": self.name,
            "connector": { "state": state, "worker_id": worker_id },
            "tasks": [task],
            "type": self.kind,
            "ready": not_ready.is_empty(),
            "not_ready_because": not_ready,
            "notes": self.control.notes(),
        })
    }

    fn info(&self) -> Value {
        json!({
            "name": self.name,
            "config": self.config,
            "tasks": [{ "connector": self.name, "task": 0 }],
            "type": self.kind,
        })
    }
}

/// What the open routes (readiness, status) may show of why something fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shown {
    /// The causes as the stages gave them: with the operations token, or when none is set.
    Causes,
    /// Only which component fails: a store's or broker's error text (hosts, users, database
    /// names) is infrastructure detail (`../shared/reviews/audit-2026-12.md` X4).
    Components,
}

/// Where an open route leaves a cause out.
const WITH_TOKEN: &str = " (the cause is shown with the operations token)";

impl Shown {
    /// What a request may be shown.
    fn to(ops: &Ops, headers: &axum::http::HeaderMap) -> Shown {
        if authorized(ops, headers) {
            Shown::Causes
        } else {
            Shown::Components
        }
    }

    /// A stage's readiness reason, written `<what>` or `<what>: <cause>`; the cause only when
    /// causes are shown.
    fn reason(self, reason: String) -> String {
        match (self, reason.split_once(": ")) {
            (Shown::Components, Some((what, _))) => format!("{what}{WITH_TOKEN}"),
            _ => reason,
        }
    }
}

/// Connect shows a connector's config as a flat map of strings; nested settings are JSON text.
/// Secrets are references (`{env: NAME}`), never values, so the document is safe to show.
fn connect_config(connector: &wx_topology::ConnectorSpec) -> BTreeMap<String, String> {
    let mut config = BTreeMap::new();
    config.insert("name".into(), connector.name.clone());
    config.insert(
        "connector.class".into(),
        format!(
            "wxstream.{}",
            format!("{:?}", connector.class).to_lowercase()
        ),
    );
    config.insert("tasks.max".into(), "1".into());
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

struct Ops {
    /// The bearer token of the protected routes (none: open, on a loopback address only).
    token: Option<Secret>,
    /// Offsets reads in flight (at most one).
    offsets_reads: tokio::sync::Semaphore,
    hosted: Vec<Hosted>,
    metrics: Option<PrometheusHandle>,
    kafka: KafkaConfig,
    worker_id: String,
}

type Shared = Arc<Ops>;

fn error(code: StatusCode, message: String) -> Response {
    (
        code,
        Json(json!({ "error_code": code.as_u16(), "message": message })),
    )
        .into_response()
}

fn find<'a>(ops: &'a Ops, name: &str) -> Option<&'a Hosted> {
    ops.hosted.iter().find(|h| h.name == name)
}

fn not_found(name: &str) -> Response {
    error(StatusCode::NOT_FOUND, format!("Connector {name} not found"))
}

/// The operations router over the connectors this process hosts. With a `token`, the routes
/// that change a connector, show its document or ask the broker (pause, resume, info, config,
/// `?expand=info`, offsets) require `Authorization: Bearer <token>`; probes, metrics and status
/// stay open. One offsets read runs at a time (429 for another meanwhile).
pub fn router(
    hosted: Vec<Hosted>,
    metrics: Option<PrometheusHandle>,
    token: Option<Secret>,
    kafka: KafkaConfig,
    worker_id: String,
) -> axum::Router {
    let state: Shared = Arc::new(Ops {
        offsets_reads: tokio::sync::Semaphore::new(1),
        token,
        hosted,
        metrics,
        kafka,
        worker_id,
    });
    let protected = axum::Router::new()
        .route("/connectors/{name}", get(info))
        .route("/connectors/{name}/config", get(config))
        .route("/connectors/{name}/pause", put(pause))
        .route("/connectors/{name}/resume", put(resume))
        // Reading offsets asks the broker (and, for ingest, reads the checkpoint topic): not for
        // anyone who can reach the port (`../shared/reviews/audit-2026-12.md` X1).
        .route("/connectors/{name}/offsets", get(offsets))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_token,
        ));
    axum::Router::new()
        .route("/", get(root))
        .route("/metrics", get(render_metrics))
        .route(
            "/livez",
            get(|| async { Json(json!({ "status": "alive" })) }),
        )
        .route("/readyz", get(readyz))
        .route("/connectors", get(list))
        .route("/connectors/{name}/status", get(status))
        .route("/connectors/{name}/tasks/{task}/status", get(task_status))
        .merge(protected)
        .with_state(state)
}

/// Whether a request carries the operations token (always, when none is configured). The
/// comparison takes the same time wherever the first difference is.
fn authorized(ops: &Ops, headers: &axum::http::HeaderMap) -> bool {
    let Some(token) = &ops.token else {
        return true;
    };
    let offered = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .as_bytes();
    let expected = token.expose().as_bytes();
    offered.len() == expected.len()
        && offered
            .iter()
            .zip(expected)
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0
}

fn unauthorized() -> Response {
    let mut response = error(
        StatusCode::UNAUTHORIZED,
        "this route requires the operations token (Authorization: Bearer ...)".into(),
    );
    response.headers_mut().insert(
        axum::http::header::WWW_AUTHENTICATE,
        axum::http::HeaderValue::from_static("Bearer"),
    );
    response
}

async fn require_token(
    State(ops): State<Shared>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if authorized(&ops, request.headers()) {
        next.run(request).await
    } else {
        unauthorized()
    }
}

async fn root(State(ops): State<Shared>) -> Json<Value> {
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "commit": option_env!("WXSTREAM_COMMIT").unwrap_or("unknown"),
        "worker_id": ops.worker_id,
        "brokers": ops.kafka.brokers,
    }))
}

async fn render_metrics(State(ops): State<Shared>) -> Response {
    match &ops.metrics {
        Some(handle) => (
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            handle.render(),
        )
            .into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            "metrics are recorded elsewhere in this process".into(),
        ),
    }
}

async fn readyz(State(ops): State<Shared>, headers: axum::http::HeaderMap) -> Response {
    let shown = Shown::to(&ops, &headers);
    let not_ready: BTreeMap<&str, Vec<String>> = ops
        .hosted
        .iter()
        .map(|h| (h.name.as_str(), h.not_ready(shown)))
        .filter(|(_, reasons)| !reasons.is_empty())
        .collect();
    if not_ready.is_empty() {
        Json(json!({ "status": "ready" })).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "not ready", "connectors": not_ready })),
        )
            .into_response()
    }
}

#[derive(Debug, serde::Deserialize)]
struct ListQuery {
    expand: Option<String>,
}

async fn list(
    State(ops): State<Shared>,
    headers: axum::http::HeaderMap,
    Query(query): Query<ListQuery>,
) -> Response {
    if query.expand.as_deref() == Some("info") && !authorized(&ops, &headers) {
        return unauthorized();
    }
    let shown = Shown::to(&ops, &headers);
    list_connectors(&ops, query, shown).into_response()
}

fn list_connectors(ops: &Ops, query: ListQuery, shown: Shown) -> Json<Value> {
    match query.expand.as_deref() {
        Some(expand @ ("status" | "info")) => Json(Value::Object(
            ops.hosted
                .iter()
                .map(|h| {
                    let body = if expand == "status" {
                        h.status(&ops.worker_id, shown)
                    } else {
                        h.info()
                    };
                    (h.name.clone(), json!({ expand: body }))
                })
                .collect(),
        )),
        _ => Json(json!(
            ops.hosted
                .iter()
                .map(|h| h.name.clone())
                .collect::<Vec<_>>()
        )),
    }
}

async fn info(State(ops): State<Shared>, Path(name): Path<String>) -> Response {
    match find(&ops, &name) {
        Some(h) => Json(h.info()).into_response(),
        None => not_found(&name),
    }
}

async fn config(State(ops): State<Shared>, Path(name): Path<String>) -> Response {
    match find(&ops, &name) {
        Some(h) => Json(json!(h.config)).into_response(),
        None => not_found(&name),
    }
}

async fn status(
    State(ops): State<Shared>,
    headers: axum::http::HeaderMap,
    Path(name): Path<String>,
) -> Response {
    match find(&ops, &name) {
        Some(h) => Json(h.status(&ops.worker_id, Shown::to(&ops, &headers))).into_response(),
        None => not_found(&name),
    }
}

async fn task_status(
    State(ops): State<Shared>,
    headers: axum::http::HeaderMap,
    Path((name, task)): Path<(String, u32)>,
) -> Response {
    match find(&ops, &name) {
        Some(_) if task != 0 => error(
            StatusCode::NOT_FOUND,
            format!(
                "Task {name}-{task} not found (wxstream runs one task per connector per process)"
            ),
        ),
        Some(h) => Json(h.status(&ops.worker_id, Shown::to(&ops, &headers))["tasks"][0].clone())
            .into_response(),
        None => not_found(&name),
    }
}

async fn set_paused(ops: Shared, name: String, paused: bool) -> Response {
    let Some(h) = find(&ops, &name) else {
        return not_found(&name);
    };
    let result = if paused {
        h.control.pause()
    } else {
        h.control.resume()
    };
    match result {
        Ok(()) => {
            tracing::info!(connector = %name, paused, "Connector paused or resumed over REST.");
            StatusCode::ACCEPTED.into_response()
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn pause(State(ops): State<Shared>, Path(name): Path<String>) -> Response {
    set_paused(ops, name, true).await
}

async fn resume(State(ops): State<Shared>, Path(name): Path<String>) -> Response {
    set_paused(ops, name, false).await
}

/// Connect's offsets document: for consumer stages the group's committed offset of every
/// partition of the input topic, for ingest each corp's checkpointed archive seq.
async fn offsets(State(ops): State<Shared>, Path(name): Path<String>) -> Response {
    let Some(h) = find(&ops, &name).cloned() else {
        return not_found(&name);
    };
    // One read at a time, whoever asks: each creates a Kafka client on the blocking pool the
    // stages use too.
    let Ok(_one) = ops.offsets_reads.try_acquire() else {
        return error(
            StatusCode::TOO_MANY_REQUESTS,
            "an offsets read is in progress; try again".into(),
        );
    };
    let kafka = ops.kafka.clone();
    let read = tokio::task::spawn_blocking(move || {
        h.control
            .offsets(&kafka, &h.offsets_topic)
            .map_err(|e| e.to_string())
    })
    .await;
    match read {
        Ok(Ok(offsets)) => Json(json!({ "offsets": offsets })).into_response(),
        Ok(Err(e)) => error(StatusCode::SERVICE_UNAVAILABLE, e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_open_route_shows_what_is_not_ready_and_never_why() {
        let reason = "not a member of consumer group g (joining or rebalancing): \
            GroupCoordinator: broker-3.internal:9092: Disconnected"
            .to_string();
        assert_eq!(
            Shown::Components.reason(reason.clone()),
            format!("not a member of consumer group g (joining or rebalancing){WITH_TOKEN}")
        );
        assert_eq!(Shown::Causes.reason(reason.clone()), reason);
        let plain = "no broker connection reported yet".to_string();
        assert_eq!(Shown::Components.reason(plain.clone()), plain);
    }
}
