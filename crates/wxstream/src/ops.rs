//! The operations surface of `wxstream run`, on one port (`metrics_listen`):
//! - `GET /metrics`: Prometheus exposition of every stage in the process;
//! - `GET /livez` (liveness) and `GET /readyz` (readiness: every hosted connector reaches its
//!   broker and stores and has joined its group), 200 or 503 with the reasons;
//! - Apache Kafka Connect's REST API (`ops/openapi.yaml`), same paths, documents, status codes
//!   and error shape: `GET /`, `GET /connectors` (`expand` repeated), `GET /connectors/{name}`,
//!   `.../config`, `.../status`, `.../tasks`, `.../tasks/{id}/status`, `.../topics`,
//!   `PUT .../topics/reset`, `PUT .../pause`, `.../resume`, `.../stop`, `POST .../restart`
//!   (`includeTasks`, `onlyFailed`), `POST .../tasks/{id}/restart`, `GET`/`PATCH`/`DELETE
//!   .../offsets` (changes only on a STOPPED connector), `GET /connector-plugins`,
//!   `GET`/`PUT /admin/loggers`. Connector documents live in files: creating, changing or
//!   deleting one answers 405 saying so.
//!
//! Errors are Connect's shape: `{"error_code": 404, "message": "..."}`, unknown routes and
//! methods too.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::{Value, json};
use wx_kafka::KafkaConfig;
use wx_runtime::AlterError;

use crate::auth::Credentials;
use crate::connectors::{Connector, Target, TransitionError};
use crate::herder::Herder;

/// What the operations surface shows of one hosted connector.
trait Shows {
    fn not_ready(&self, shown: Shown) -> Vec<String>;
    fn task_status(&self, herder: &Herder, id: usize, shown: Shown) -> Option<Value>;
    fn status(&self, herder: &Herder, shown: Shown) -> Value;
    fn info(&self, herder: &Herder) -> Value;
    fn tasks(&self, herder: &Herder) -> Value;
    fn task_ids(&self, herder: &Herder) -> Vec<Value>;
}

impl Shows for Connector {
    /// Why the connector is not ready (empty when it is). With `Shown::Causes` as the stages
    /// gave them; with `Shown::Components`, what an open route shows, only what is failing:
    /// a store's own error text may name hosts, users and databases.
    fn not_ready(&self, shown: Shown) -> Vec<String> {
        let health = self.health();
        let mut reasons: Vec<String> = match shown {
            Shown::Causes => health.failures().into_values().collect(),
            Shown::Components => health
                .failures()
                .into_keys()
                .map(|component| format!("{component} is failing{WITH_TOKEN}"))
                .collect(),
        };
        match self.state_name() {
            // Stopped by an operator: not a failure, and nothing to wait for.
            "STOPPED" => return Vec::new(),
            "FAILED" => {
                let stop = health.stop_reason().unwrap_or_default();
                reasons.push(match shown {
                    Shown::Causes => format!("stopped: {stop}"),
                    Shown::Components => format!("stopped{WITH_TOKEN}"),
                });
                return reasons;
            }
            _ => {}
        }
        reasons.extend(
            self.control()
                .not_ready()
                .into_iter()
                .map(|reason| shown.reason(reason)),
        );
        reasons
    }

    /// Connect's status of task `id` (`id`, `state`, `worker_id`, `trace` when it failed,
    /// `version`): this worker's with wxstream's additions (`assigned_partitions` or `corps`,
    /// `last_error`, `last_error_at`), another worker's as it wrote it in the control topic.
    /// The error texts only when `shown` says so. None: no such task.
    fn task_status(&self, herder: &Herder, id: usize, shown: Shown) -> Option<Value> {
        let record = herder.tasks(self).into_iter().nth(id)?;
        let text = |error: String| match shown {
            Shown::Causes => error,
            Shown::Components => format!("an error{WITH_TOKEN}"),
        };
        let mut task = json!({
            "id": id, "state": record.state, "worker_id": record.worker_id, "version": VERSION,
        });
        if let Some(trace) = record.trace {
            task["trace"] = json!(text(trace));
        }
        if record.worker_id != herder.worker_id() {
            return Some(task);
        }
        if let Some((at, error)) = self.health().last_error() {
            task["last_error"] = json!(text(error));
            task["last_error_at"] = json!(at);
        }
        let (field, work) = self.control().work();
        task[field] = work;
        Some(task)
    }

    /// Connect's status document: every live worker's task (none while STOPPED), with
    /// wxstream's additions: `ready`, `not_ready_because`, `notes` (of this worker).
    fn status(&self, herder: &Herder, shown: Shown) -> Value {
        let tasks: Vec<Value> = (0..herder.tasks(self).len())
            .filter_map(|id| self.task_status(herder, id, shown))
            .collect();
        let not_ready = self.not_ready(shown);
        json!({
            "name": self.name,
            "connector": {
                "state": self.state_name(), "worker_id": herder.worker_id(), "version": VERSION,
            },
            "tasks": tasks,
            "type": self.kind.as_str(),
            "ready": not_ready.is_empty(),
            "not_ready_because": not_ready,
            "notes": self.control().notes(),
        })
    }

    fn info(&self, herder: &Herder) -> Value {
        json!({
            "name": self.name,
            "config": self.config,
            "tasks": self.task_ids(herder),
            "type": self.kind.as_str(),
        })
    }

    /// Connect's task configurations (none while STOPPED).
    fn tasks(&self, herder: &Herder) -> Value {
        Value::Array(
            self.task_ids(herder)
                .into_iter()
                .map(|id| json!({ "id": id, "config": self.config }))
                .collect(),
        )
    }

    /// The connector's tasks as Connect names them: one per live worker, none while STOPPED.
    fn task_ids(&self, herder: &Herder) -> Vec<Value> {
        (0..herder.tasks(self).len())
            .map(|task| json!({ "connector": self.name, "task": task }))
            .collect()
    }
}

/// The version every state and plugin document carries (Connect 4.1's `version`).
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// What the open routes (readiness, status) may show of why something fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shown {
    /// The causes as the stages gave them: with credentials, or when none are configured.
    Causes,
    /// Only which component fails: a store's or broker's error text (hosts, users, database
    /// names) is infrastructure detail (`../shared/reviews/audit-2026-12.md` X4).
    Components,
}

/// Where an open route leaves a cause out.
const WITH_TOKEN: &str = " (the cause is shown with the operations token)";

impl Shown {
    /// What a request may be shown.
    async fn to(ops: &Ops, headers: &axum::http::HeaderMap) -> Shown {
        if ops.credentials.admits(headers).await {
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

/// What the operations endpoint serves and with what.
pub struct Hosted {
    pub connectors: Vec<Arc<Connector>>,
    pub metrics: Option<PrometheusHandle>,
    pub credentials: Credentials,
    pub kafka: KafkaConfig,
    pub herder: Arc<Herder>,
    /// Where changes are audited (none: not audited, said at start).
    pub auditor: Option<Arc<crate::audit::Auditor>>,
}

struct Ops {
    /// Where changes are audited.
    auditor: Option<Arc<crate::audit::Auditor>>,
    /// The token and users the routes that need credentials take (none: open, which the
    /// process allows on a loopback address only).
    credentials: Credentials,
    /// Offsets reads and changes in flight (at most one).
    offsets_calls: Arc<tokio::sync::Semaphore>,
    connectors: Vec<Arc<Connector>>,
    metrics: Option<PrometheusHandle>,
    kafka: KafkaConfig,
    /// The connectors' state shared with the other workers (and this worker's id).
    herder: Arc<Herder>,
    /// The Kafka cluster's id, once asked.
    cluster_id: tokio::sync::OnceCell<String>,
}

type Shared = Arc<Ops>;

/// An answer in Connect's error shape.
pub fn error(code: StatusCode, message: String) -> Response {
    (
        code,
        Json(json!({ "error_code": code.as_u16(), "message": message })),
    )
        .into_response()
}

/// A refusal in Connect's error shape.
#[derive(Debug)]
struct Refused(StatusCode, String);

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        error(self.0, self.1)
    }
}

fn find(ops: &Ops, name: &str) -> Result<Arc<Connector>, Refused> {
    ops.connectors
        .iter()
        .find(|c| c.name == name)
        .cloned()
        .ok_or_else(|| Refused(StatusCode::NOT_FOUND, format!("Connector {name} not found")))
}

/// The answer to a change of a connector's document: they live in files.
async fn in_files() -> Response {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        "wxstream's connectors are configured in files (topology/connectors/*.yaml, a ConfigMap on Kubernetes): change the file and roll the workers; pause, resume, stop, restart and offsets are changed here".into(),
    )
}

/// Who may call a route ([`access`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Anyone who reaches the port: probes, metrics, what the worker runs.
    Open,
    /// Reads of status and offsets: open to a client on the loopback interface, else with
    /// credentials.
    Read,
    /// Every change, connector documents, loggers: with credentials.
    Change,
}

/// The access a route needs (one table for the whole API). Offsets reads ask the broker, so
/// they are not for anyone who can reach the port (`../shared/reviews/audit-2026-12.md` X1).
fn access(method: &axum::http::Method, path: &str) -> Access {
    let read = *method == axum::http::Method::GET;
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segments.as_slice() {
        [""] | ["metrics" | "livez" | "readyz" | "connector-plugins"] if read => Access::Open,
        ["connectors", _, "topics"] if read => Access::Open,
        ["connectors"] if read => Access::Read,
        ["connectors", _, "status" | "offsets"] if read => Access::Read,
        ["connectors", _, "tasks", _, "status"] if read => Access::Read,
        _ => Access::Change,
    }
}

/// The operations router over the connectors this process hosts. With credentials configured
/// (`ops_token`, `ops_users`), the routes that change a connector, show its document or its
/// loggers require them (`Authorization: Bearer <token>` or Basic), and reads of status and
/// offsets require them from beyond the loopback interface; probes, metrics and the plugins stay
/// open ([`access`]). One offsets read or change runs at a time (429 for another meanwhile).
/// Unknown routes and methods answer in Connect's error shape.
pub fn router(hosted: Hosted, failed_liveness_after: std::time::Duration) -> axum::Router {
    let state: Shared = Arc::new(Ops {
        offsets_calls: Arc::new(tokio::sync::Semaphore::new(1)),
        credentials: hosted.credentials,
        connectors: hosted.connectors,
        metrics: hosted.metrics,
        kafka: hosted.kafka,
        herder: hosted.herder,
        auditor: hosted.auditor,
        cluster_id: tokio::sync::OnceCell::new(),
    });
    axum::Router::new()
        .route("/", get(root))
        .route("/metrics", get(render_metrics))
        .route(
            "/livez",
            get(move |State(ops): State<Shared>| livez(ops, failed_liveness_after)),
        )
        .route("/readyz", get(readyz))
        .route("/connector-plugins", get(plugins))
        .route("/connectors", get(list).post(in_files))
        .route("/connectors/{name}", get(info).delete(in_files))
        .route(
            "/connectors/{name}/config",
            get(config).put(in_files).patch(in_files),
        )
        .route("/connectors/{name}/status", get(status))
        .route("/connectors/{name}/tasks", get(tasks))
        .route("/connectors/{name}/tasks/{task}/status", get(task_status))
        .route(
            "/connectors/{name}/tasks/{task}/restart",
            post(restart_task),
        )
        .route("/connectors/{name}/topics", get(topics))
        .route("/connectors/{name}/topics/reset", put(reset_topics))
        .route("/connectors/{name}/pause", put(pause))
        .route("/connectors/{name}/resume", put(resume))
        .route("/connectors/{name}/stop", put(stop))
        .route("/connectors/{name}/restart", post(restart))
        .route(
            "/connectors/{name}/offsets",
            get(offsets).patch(alter_offsets).delete(reset_offsets),
        )
        .route("/admin/loggers", get(crate::loggers::list))
        .route(
            "/admin/loggers/{logger}",
            get(crate::loggers::level).put(crate::loggers::set_level),
        )
        .fallback(|| async { error(StatusCode::NOT_FOUND, "HTTP 404 Not Found".into()) })
        .method_not_allowed_fallback(|| async {
            error(
                StatusCode::METHOD_NOT_ALLOWED,
                "HTTP 405 Method Not Allowed".into(),
            )
        })
        .layer(axum::middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

/// Lets a request through when [`access`] allows it: open routes always, reads from the
/// loopback interface, anything with credentials. A change (any method but GET of a
/// [`Access::Change`] route) is audited once answered: who, the route and its body, the status.
async fn guard(
    State(ops): State<Shared>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let peer = request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|info| info.0);
    let loopback = peer.is_some_and(|peer| peer.ip().is_loopback());
    let access = access(request.method(), request.uri().path());
    let principal = match access {
        Access::Open => None,
        Access::Read if loopback => None,
        Access::Read | Access::Change => match ops.credentials.principal(request.headers()).await {
            Some(principal) => Some(principal),
            None => return unauthorized(&ops),
        },
    };
    let audited = access == Access::Change && request.method() != axum::http::Method::GET;
    match (&ops.auditor, principal) {
        (Some(auditor), Some(principal)) if audited => {
            audit_change(auditor.clone(), principal, peer, request, next).await
        }
        _ => next.run(request).await,
    }
}

/// The largest request body a change takes (an offsets document is a few KiB).
const CHANGE_BODY_LIMIT: usize = 1 << 20;

/// How long a change's answer waits for its audit entry; the entry is written on after it.
const AUDIT_ANSWER_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs a change and appends it to the audit log. The answer says `X-Wxstream-Audit: entry N`
/// once written, `pending` when the entry is still being written after [`AUDIT_ANSWER_WAIT`]
/// (MySQL slow or away: it goes on within its deadlines), `failed` when it could not be (the
/// error is logged and counted in `wxstream_audit_failures_total`). A change is never refused
/// for want of its entry: what was done cannot be undone, and an operator must be able to pause
/// a stage while MySQL is away.
async fn audit_change(
    auditor: Arc<crate::audit::Auditor>,
    principal: String,
    peer: Option<std::net::SocketAddr>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let (parts, body) = request.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, CHANGE_BODY_LIMIT).await else {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("a change's body is at most {CHANGE_BODY_LIMIT} bytes"),
        );
    };
    let body = match serde_json::from_slice::<Value>(&bytes) {
        Ok(json) => json,
        Err(_) if bytes.is_empty() => Value::Null,
        Err(_) => json!(String::from_utf8_lossy(&bytes)),
    };
    let arguments = json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "body": body,
        "peer": peer.map(|p| p.to_string()),
    });
    let action = action_name(&parts.method, parts.uri.path());
    let mut response = next
        .run(axum::extract::Request::from_parts(parts, bytes.into()))
        .await;
    let status = response.status();
    let entry = wx_mysql::audit::AuditAction {
        principal,
        action,
        arguments,
        counts: json!({"status": status.as_u16()}),
        outcome: if status.is_success() {
            "ok".into()
        } else {
            format!("refused: {status}")
        },
    };
    let written = tokio::spawn(async move { auditor.record(entry).await });
    let header = match tokio::time::timeout(AUDIT_ANSWER_WAIT, written).await {
        Ok(Ok(Ok(written))) => format!("entry {}", written.seq),
        Ok(_) => "failed".into(),
        Err(_) => "pending".into(),
    };
    if let Ok(value) = axum::http::HeaderValue::from_str(&header) {
        response.headers_mut().insert("x-wxstream-audit", value);
    }
    response
}

/// The audit log's name of a change: `connector.pause`, `task.restart`, `offsets.alter`, ...
fn action_name(method: &axum::http::Method, path: &str) -> String {
    use axum::http::Method;
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method, segments.as_slice()) {
        (_, ["connectors", _, "tasks", _, "restart"]) => "task.restart".into(),
        (&Method::PATCH, ["connectors", _, "offsets"]) => "offsets.alter".into(),
        (&Method::DELETE, ["connectors", _, "offsets"]) => "offsets.reset".into(),
        (
            _,
            [
                "connectors",
                _,
                verb @ ("pause" | "resume" | "stop" | "restart"),
            ],
        ) => {
            format!("connector.{verb}")
        }
        (&Method::PUT, ["admin", "loggers", _]) => "logger.set".into(),
        _ => format!("{method} {path}"),
    }
}

fn unauthorized(ops: &Ops) -> Response {
    let mut response = error(
        StatusCode::UNAUTHORIZED,
        "this route requires credentials: Authorization: Bearer <ops_token>, or Basic with a user of ops_users".into(),
    );
    response.headers_mut().insert(
        axum::http::header::WWW_AUTHENTICATE,
        axum::http::HeaderValue::from_static(ops.credentials.challenges()),
    );
    response
}

/// Connect's server info, with wxstream's `worker_id` and `brokers`.
async fn root(State(ops): State<Shared>) -> Json<Value> {
    let kafka = ops.kafka.clone();
    let cluster = ops
        .cluster_id
        .get_or_try_init(|| async move {
            tokio::task::spawn_blocking(move || wx_kafka::cluster_id(&kafka).ok_or(()))
                .await
                .unwrap_or(Err(()))
        })
        .await
        .ok()
        .cloned();
    Json(json!({
        "version": VERSION,
        "commit": option_env!("WXSTREAM_COMMIT").unwrap_or("unknown"),
        "kafka_cluster_id": cluster,
        "worker_id": ops.herder.worker_id(),
        "brokers": ops.kafka.brokers,
    }))
}

/// Alive unless a hosted stage has stayed FAILED longer than `failed_after` (nobody restarted
/// it over REST: the process restart Kubernetes then makes is the restart).
async fn livez(ops: Shared, failed_after: std::time::Duration) -> Response {
    let now = wx_codec::now_ms();
    let limit = i64::try_from(failed_after.as_millis()).unwrap_or(i64::MAX);
    let failed: Vec<String> = ops
        .connectors
        .iter()
        .filter(|c| c.failed_since().is_some_and(|at| now - at > limit))
        .map(|c| c.name.clone())
        .collect();
    if failed.is_empty() {
        Json(json!({ "status": "alive" })).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "status": "failed",
                "message": format!("FAILED for more than {}: {}", humantime::format_duration(failed_after), failed.join(", ")),
            })),
        )
            .into_response()
    }
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
    let shown = Shown::to(&ops, &headers).await;
    let not_ready: BTreeMap<&str, Vec<String>> = ops
        .connectors
        .iter()
        .map(|c| (c.name.as_str(), c.not_ready(shown)))
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

/// `GET /connectors`, with `expand` repeated as Connect takes it (`?expand=status&expand=info`);
/// an `expand` value Connect does not know is ignored, as Connect does.
async fn list(
    State(ops): State<Shared>,
    headers: axum::http::HeaderMap,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Response {
    let expand: BTreeSet<String> = query
        .iter()
        .flat_map(|q| form_urlencoded::parse(q.as_bytes()))
        .filter(|(key, _)| key == "expand")
        .map(|(_, value)| value.into_owned())
        .collect();
    let (status, info) = (expand.contains("status"), expand.contains("info"));
    if info && !ops.credentials.admits(&headers).await {
        return unauthorized(&ops);
    }
    if expand.is_empty() {
        return Json(json!(
            ops.connectors
                .iter()
                .map(|c| c.name.clone())
                .collect::<Vec<_>>()
        ))
        .into_response();
    }
    let shown = Shown::to(&ops, &headers).await;
    Json(Value::Object(
        ops.connectors
            .iter()
            .map(|c| {
                let mut body = serde_json::Map::new();
                if status {
                    body.insert("status".into(), c.status(&ops.herder, shown));
                }
                if info {
                    body.insert("info".into(), c.info(&ops.herder));
                }
                (c.name.clone(), Value::Object(body))
            })
            .collect(),
    ))
    .into_response()
}

async fn info(State(ops): State<Shared>, Path(name): Path<String>) -> Response {
    match find(&ops, &name) {
        Ok(c) => Json(c.info(&ops.herder)).into_response(),
        Err(missing) => missing.into_response(),
    }
}

async fn config(State(ops): State<Shared>, Path(name): Path<String>) -> Response {
    match find(&ops, &name) {
        Ok(c) => Json(json!(c.config)).into_response(),
        Err(missing) => missing.into_response(),
    }
}

async fn tasks(State(ops): State<Shared>, Path(name): Path<String>) -> Response {
    match find(&ops, &name) {
        Ok(c) => Json(c.tasks(&ops.herder)).into_response(),
        Err(missing) => missing.into_response(),
    }
}

async fn status(
    State(ops): State<Shared>,
    headers: axum::http::HeaderMap,
    Path(name): Path<String>,
) -> Response {
    match find(&ops, &name) {
        Ok(c) => Json(c.status(&ops.herder, Shown::to(&ops, &headers).await)).into_response(),
        Err(_) => error(
            StatusCode::NOT_FOUND,
            format!("No status found for connector {name}"),
        ),
    }
}

/// The connector's task `task` (its place among the live workers' tasks), as Connect finds
/// it: a task id that is not a number is an unknown route (404), as it is for Connect.
fn find_task(ops: &Ops, name: &str, task: &str) -> Result<(Arc<Connector>, usize), Refused> {
    let unknown = || {
        Refused(
            StatusCode::NOT_FOUND,
            format!("No status found for task {name}-{task}"),
        )
    };
    let Ok(id) = task.parse::<usize>() else {
        return Err(Refused(StatusCode::NOT_FOUND, "HTTP 404 Not Found".into()));
    };
    let connector = find(ops, name).map_err(|_| unknown())?;
    if id >= ops.herder.tasks(&connector).len() {
        return Err(unknown());
    }
    Ok((connector, id))
}

async fn task_status(
    State(ops): State<Shared>,
    headers: axum::http::HeaderMap,
    Path((name, task)): Path<(String, String)>,
) -> Response {
    let shown = Shown::to(&ops, &headers).await;
    match find_task(&ops, &name, &task) {
        Ok((c, id)) => match c.task_status(&ops.herder, id, shown) {
            Some(status) => Json(status).into_response(),
            None => error(
                StatusCode::NOT_FOUND,
                format!("No status found for task {name}-{task}"),
            ),
        },
        Err(missing) => missing.into_response(),
    }
}

/// The topics the connector reads and writes (wxstream's are fixed by its document, so there
/// is nothing to track or reset; an unknown connector has none, as in Connect).
async fn topics(State(ops): State<Shared>, Path(name): Path<String>) -> Response {
    let topics = find(&ops, &name)
        .map(|c| c.topics.clone())
        .unwrap_or_default();
    Json(json!({ name: { "topics": topics } })).into_response()
}

async fn reset_topics() -> StatusCode {
    StatusCode::ACCEPTED
}

/// The stage classes this binary runs, as Connect lists its connector plugins.
async fn plugins() -> Json<Value> {
    Json(Value::Array(
        crate::stages::STAGES
            .iter()
            .map(|stage| {
                json!({
                    "class": stage.class.name(),
                    "type": stage.kind.as_str(),
                    "version": VERSION,
                })
            })
            .collect(),
    ))
}

/// The answer to a stop, resume or restart that did not complete.
fn transition_failed(name: &str, e: &TransitionError) -> Response {
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("connector {name}: {e}"),
    )
}

async fn change(ops: Shared, name: String, what: &'static str, code: StatusCode) -> Response {
    let connector = match find(&ops, &name) {
        Ok(c) => c,
        Err(_) => return error(StatusCode::NOT_FOUND, format!("Unknown connector {name}")),
    };
    let target = match what {
        "pause" => Target::Paused,
        "resume" => Target::Started,
        _ => Target::Stopped,
    };
    // Every worker obeys the control topic's record; this one also at once, so that its
    // answer and the status that follows agree.
    if let Err(e) = ops.herder.set_target(&name, target).await {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "connector {name}: the target state could not be written to the control topic: {e}"
            ),
        );
    }
    match connector.set_target(target).await {
        Ok(()) => {
            tracing::info!(connector = %name, what, "Connector changed over REST.");
            code.into_response()
        }
        Err(e) => transition_failed(&name, &e),
    }
}

async fn pause(State(ops): State<Shared>, Path(name): Path<String>) -> Response {
    change(ops, name, "pause", StatusCode::ACCEPTED).await
}

async fn resume(State(ops): State<Shared>, Path(name): Path<String>) -> Response {
    change(ops, name, "resume", StatusCode::ACCEPTED).await
}

async fn stop(State(ops): State<Shared>, Path(name): Path<String>) -> Response {
    change(ops, name, "stop", StatusCode::NO_CONTENT).await
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct RestartQuery {
    #[serde(default)]
    include_tasks: bool,
    #[serde(default)]
    only_failed: bool,
}

/// Connect's restart: with neither flag, the connector restarted now (204); with either, the
/// plan (202, the instances to restart shown RESTARTING) and the restart under way. A
/// connector's task is its stage, so restarting one restarts the other.
async fn restart(
    State(ops): State<Shared>,
    headers: axum::http::HeaderMap,
    Path(name): Path<String>,
    Query(query): Query<RestartQuery>,
) -> Response {
    let Ok(connector) = find(&ops, &name) else {
        return error(StatusCode::NOT_FOUND, format!("Unknown connector: {name}"));
    };
    let everywhere = |done_here| {
        let (ops, name) = (ops.clone(), name.clone());
        async move {
            ops.herder
                .request_restart(&name, query.only_failed, None, done_here)
                .await
        }
    };
    if !query.include_tasks && !query.only_failed {
        // This worker's task now; the other workers' as they read the request.
        if let Err(e) = connector.restart(false).await {
            return transition_failed(&name, &e);
        }
        return match everywhere(true).await {
            Ok(()) => StatusCode::NO_CONTENT.into_response(),
            Err(e) => not_written(&name, &e),
        };
    }
    let mut plan = connector.status(&ops.herder, Shown::to(&ops, &headers).await);
    if !query.only_failed || connector.state_name() == "FAILED" {
        plan["connector"]["state"] = json!("RESTARTING");
    }
    if query.include_tasks
        && let Some(tasks) = plan["tasks"].as_array_mut()
    {
        for task in tasks
            .iter_mut()
            .filter(|t| !query.only_failed || t["state"] == "FAILED")
        {
            task["state"] = json!("RESTARTING");
        }
    }
    if let Err(e) = everywhere(false).await {
        return not_written(&name, &e);
    }
    (StatusCode::ACCEPTED, Json(plan)).into_response()
}

/// The answer when the control topic could not be written.
fn not_written(name: &str, e: &wx_kafka::KafkaError) -> Response {
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("connector {name}: the request could not be written to the control topic: {e}"),
    )
}

/// Restarts task `task`: this worker's now, another's through the control topic.
async fn restart_task(
    State(ops): State<Shared>,
    Path((name, task)): Path<(String, String)>,
) -> Response {
    let (connector, id) = match find_task(&ops, &name, &task) {
        Ok(found) => found,
        Err(_) if find(&ops, &name).is_err() => {
            return error(StatusCode::NOT_FOUND, format!("Unknown connector: {name}"));
        }
        Err(_) => {
            return error(
                StatusCode::NOT_FOUND,
                format!("Unknown task: {name}-{task}"),
            );
        }
    };
    // The task list may have changed since `find_task`: a task gone is not restarted.
    let Some(worker) = ops
        .herder
        .tasks(&connector)
        .into_iter()
        .nth(id)
        .map(|t| t.worker_id)
    else {
        return error(
            StatusCode::NOT_FOUND,
            format!("Unknown task: {name}-{task}"),
        );
    };
    if worker != ops.herder.worker_id() {
        return match ops
            .herder
            .request_restart(&name, false, Some(worker), false)
            .await
        {
            Ok(()) => StatusCode::NO_CONTENT.into_response(),
            Err(e) => not_written(&name, &e),
        };
    }
    match connector.restart(false).await {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => transition_failed(&name, &e),
    }
}

/// Runs an offsets call on the blocking pool, one at a time whoever asks (each creates a
/// Kafka client on the pool the stages use too); the turn is held by the call itself, so a
/// client that goes away does not free it before the call ends.
async fn one_offsets_call<T: Send + 'static>(
    ops: &Ops,
    call: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Response> {
    let Ok(turn) = ops.offsets_calls.clone().try_acquire_owned() else {
        return Err(busy());
    };
    tokio::task::spawn_blocking(move || {
        let _turn = turn;
        call()
    })
    .await
    .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

fn busy() -> Response {
    error(
        StatusCode::TOO_MANY_REQUESTS,
        "an offsets read or change is in progress; try again".into(),
    )
}

/// Connect's offsets document: for consumer stages the group's committed offset of every
/// partition of the input topic, for ingest each corp's checkpointed archive seq.
async fn offsets(State(ops): State<Shared>, Path(name): Path<String>) -> Response {
    let connector = match find(&ops, &name) {
        Ok(c) => c,
        Err(missing) => return missing.into_response(),
    };
    let (kafka, control) = (ops.kafka.clone(), connector.control());
    let read = one_offsets_call(&ops, move || {
        control
            .offsets(&kafka, &connector.offsets_topic)
            .map_err(|e| e.to_string())
    })
    .await;
    match read {
        Ok(Ok(offsets)) => Json(json!({ "offsets": offsets })).into_response(),
        Ok(Err(e)) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("Failed to retrieve the offsets of connector {name}: {e}"),
        ),
        Err(busy) => busy,
    }
}

/// Connect's refusal of an offsets change on a connector that is not STOPPED.
fn not_stopped(name: &str) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        format!(
            "Connectors must be in the STOPPED state before their offsets can be modified. This can be done for the specified connector by issuing a 'PUT' request to the '/connectors/{name}/stop' endpoint"
        ),
    )
}

/// Which offsets change.
#[derive(Debug, Clone, Copy)]
enum Change {
    Alter,
    Reset,
}

/// Changes a connector's offsets as Connect does: only while it is STOPPED on this worker and
/// has no task left on any other (the control topic's status records), with no stop, resume
/// or restart of it meanwhile, one offsets call at a time.
async fn change_offsets(
    ops: Shared,
    name: String,
    change: Change,
    entries: Vec<Value>,
) -> Response {
    let connector = match find(&ops, &name) {
        Ok(c) => c,
        Err(missing) => return missing.into_response(),
    };
    let running: Vec<String> = ops
        .herder
        .tasks(&connector)
        .into_iter()
        .map(|t| t.worker_id)
        .collect();
    if !running.is_empty() {
        if connector.state_name() != "STOPPED" {
            return not_stopped(&name);
        }
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "connector {name} still has tasks on workers {}: stop it (a stop through any worker stops every worker) and retry once they show no task",
                running.join(", ")
            ),
        );
    }
    let Ok(turn) = ops.offsets_calls.clone().try_acquire_owned() else {
        return busy();
    };
    let (kafka, topic) = (ops.kafka.clone(), connector.offsets_topic.clone());
    let changed = connector
        .while_stopped(move |control| {
            let _turn = turn;
            match change {
                Change::Alter => control.alter_offsets(&kafka, &topic, &entries),
                Change::Reset => control.reset_offsets(&kafka, &topic),
            }
        })
        .await;
    let (done, verb) = match change {
        Change::Alter => ("altered", "alter"),
        Change::Reset => ("reset", "reset"),
    };
    match changed {
        Ok(Ok(())) => {
            tracing::info!(connector = %name, done, "Connector offsets changed over REST.");
            Json(json!({
                "message": format!("The offsets for this connector have been {done} successfully")
            }))
            .into_response()
        }
        Ok(Err(AlterError::Invalid(message))) => error(StatusCode::BAD_REQUEST, message),
        Ok(Err(e)) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("Failed to {verb} the offsets of connector {name}: {e}"),
        ),
        Err(None) => not_stopped(&name),
        Err(Some(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn alter_offsets(
    State(ops): State<Shared>,
    Path(name): Path<String>,
    body: Option<Json<Value>>,
) -> Response {
    if let Err(missing) = find(&ops, &name) {
        return missing.into_response();
    }
    let entries = body
        .and_then(|Json(body)| body.get("offsets").and_then(Value::as_array).cloned())
        .unwrap_or_default();
    if entries.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "Partitions / offsets need to be provided for an alter offsets request".into(),
        );
    }
    change_offsets(ops, name, Change::Alter, entries).await
}

async fn reset_offsets(State(ops): State<Shared>, Path(name): Path<String>) -> Response {
    change_offsets(ops, name, Change::Reset, Vec::new()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_change_has_its_audit_name() {
        use axum::http::Method;
        for (method, path, expected) in [
            (Method::PUT, "/connectors/decrypt/pause", "connector.pause"),
            (Method::PUT, "/connectors/sink/resume", "connector.resume"),
            (Method::PUT, "/connectors/sink/stop", "connector.stop"),
            (
                Method::POST,
                "/connectors/sink/restart",
                "connector.restart",
            ),
            (
                Method::POST,
                "/connectors/sink/tasks/0/restart",
                "task.restart",
            ),
            (Method::PATCH, "/connectors/sink/offsets", "offsets.alter"),
            (Method::DELETE, "/connectors/sink/offsets", "offsets.reset"),
            (Method::PUT, "/admin/loggers/wx_sink", "logger.set"),
            (Method::POST, "/connectors", "POST /connectors"),
        ] {
            assert_eq!(action_name(&method, path), expected, "{method} {path}");
        }
    }

    #[test]
    fn every_route_has_its_access() {
        use axum::http::Method;
        for (method, path, expected) in [
            (Method::GET, "/", Access::Open),
            (Method::GET, "/readyz", Access::Open),
            (Method::GET, "/metrics", Access::Open),
            (Method::GET, "/connector-plugins", Access::Open),
            (Method::GET, "/connectors/sink/topics", Access::Open),
            (Method::GET, "/connectors", Access::Read),
            (Method::GET, "/connectors/sink/status", Access::Read),
            (Method::GET, "/connectors/sink/tasks/0/status", Access::Read),
            (Method::GET, "/connectors/sink/offsets", Access::Read),
            (Method::GET, "/connectors/sink", Access::Change),
            (Method::GET, "/connectors/sink/config", Access::Change),
            (Method::GET, "/connectors/sink/tasks", Access::Change),
            (Method::GET, "/admin/loggers", Access::Change),
            (Method::PATCH, "/connectors/sink/offsets", Access::Change),
            (Method::PUT, "/connectors/sink/pause", Access::Change),
            (Method::POST, "/connectors/sink/restart", Access::Change),
            (Method::PUT, "/connectors/sink/topics/reset", Access::Change),
            (Method::DELETE, "/connectors", Access::Change),
        ] {
            assert_eq!(access(&method, path), expected, "{method} {path}");
        }
    }

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
