//! Log levels changed at run time, as Kafka Connect's `/admin/loggers` does: the process's
//! `tracing` filter is reloadable, starting from `log.filter` (or `RUST_LOG`), and a
//! `PUT /admin/loggers/{target}` with `{"level": "DEBUG"}` sets that target's level (and its
//! children's, as Connect sets a logger's descendants) in this worker. Logger names are
//! `tracing` targets (`wx_kafka`, `wx_kafka::consumer`); `root` is the default level.
//! Connect's level names are taken (OFF, FATAL, ERROR, WARN, INFO, DEBUG, TRACE, ALL) and
//! shown upper-case; FATAL counts as ERROR and ALL as TRACE, the nearest `tracing` levels.

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};

use axum::Json;
use axum::extract::{Path, Query};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::reload::Handle;

use crate::ops::error;

/// The reloadable filter and what was set through it.
struct Loggers {
    reload: Handle<EnvFilter, tracing_subscriber::Registry>,
    levels: BTreeMap<String, Level>,
    /// Directives the API does not model (span or field filters): kept as they were.
    others: Vec<String>,
}

#[derive(Debug, Clone)]
struct Level {
    name: &'static str,
    /// UTC ms of the change through the API (None: as the process started).
    modified: Option<i64>,
}

static LOGGERS: OnceLock<Mutex<Loggers>> = OnceLock::new();

/// The root logger's name, Connect's.
const ROOT: &str = "root";

/// Connect's level names, with the `tracing` level each stands for.
const LEVELS: [(&str, &str); 8] = [
    ("OFF", "off"),
    ("FATAL", "error"),
    ("ERROR", "error"),
    ("WARN", "warn"),
    ("INFO", "info"),
    ("DEBUG", "debug"),
    ("TRACE", "trace"),
    ("ALL", "trace"),
];

fn connect_level(level: &str) -> Option<&'static str> {
    LEVELS
        .iter()
        .find(|(connect, tracing)| connect.eq_ignore_ascii_case(level) || *tracing == level)
        .map(|(connect, _)| *connect)
}

fn tracing_level(connect: &str) -> &'static str {
    LEVELS
        .iter()
        .find(|(name, _)| *name == connect)
        .map_or("info", |(_, tracing)| tracing)
}

/// Keeps the process's reloadable filter, started from `directives` (an `EnvFilter` string).
pub fn install(reload: Handle<EnvFilter, tracing_subscriber::Registry>, directives: &str) {
    let mut levels = BTreeMap::new();
    let mut others = Vec::new();
    for directive in directives
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
    {
        let (target, level) = match directive.rsplit_once('=') {
            Some((target, level)) => (target, level),
            None => (ROOT, directive),
        };
        match connect_level(level) {
            Some(name) if !target.contains(['[', '{']) => {
                levels.insert(
                    target.to_string(),
                    Level {
                        name,
                        modified: None,
                    },
                );
            }
            _ => others.push(directive.to_string()),
        }
    }
    levels.entry(ROOT.into()).or_insert(Level {
        name: "ERROR",
        modified: None,
    });
    let _ = LOGGERS.set(Mutex::new(Loggers {
        reload,
        levels,
        others,
    }));
}

fn loggers() -> Option<std::sync::MutexGuard<'static, Loggers>> {
    LOGGERS
        .get()
        .map(|l| l.lock().unwrap_or_else(|p| p.into_inner()))
}

fn shown(level: &Level) -> Value {
    json!({ "level": level.name, "last_modified": level.modified })
}

/// `GET /admin/loggers`: every logger with a level of its own, by name.
pub async fn list() -> Response {
    let Some(loggers) = loggers() else {
        return Json(json!({})).into_response();
    };
    Json(Value::Object(
        loggers
            .levels
            .iter()
            .map(|(name, level)| (name.clone(), shown(level)))
            .collect(),
    ))
    .into_response()
}

/// `GET /admin/loggers/{name}`.
pub async fn level(Path(name): Path<String>) -> Response {
    match loggers().as_ref().and_then(|l| l.levels.get(&name)) {
        Some(level) => Json(shown(level)).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("Logger {name} not found.")),
    }
}

#[derive(Debug, serde::Deserialize)]
pub struct Scope {
    scope: Option<String>,
}

/// `PUT /admin/loggers/{name}` with `{"level": ...}`: sets the level of `name` and of every
/// logger under it in this worker; answers their names. `scope=cluster` (every worker) is
/// refused: this worker cannot reach the others' filters.
pub async fn set_level(
    Path(name): Path<String>,
    Query(scope): Query<Scope>,
    body: Option<Json<Value>>,
) -> Response {
    let Some(level) = body
        .as_ref()
        .and_then(|Json(b)| b.get("level"))
        .and_then(Value::as_str)
        .map(str::to_string)
    else {
        return error(
            StatusCode::BAD_REQUEST,
            "Desired 'level' parameter was not specified in request.".into(),
        );
    };
    let Some(connect) = connect_level(&level) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("invalid log level '{level}'."),
        );
    };
    if scope.scope.as_deref() == Some("cluster") {
        return error(
            StatusCode::BAD_REQUEST,
            "scope=cluster is not supported: set the level on each worker (scope=worker), or change log.filter in the workers' configuration".into(),
        );
    }
    // A `tracing` target (`wx_kafka::consumer`, `librdkafka`, dotted names too): nothing that
    // would read as more of a filter directive (`=`, `,`, spans, spaces).
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.:-".contains(c));
    if !valid {
        return error(
            StatusCode::NOT_FOUND,
            format!(
                "Logger {name} not found: a logger is a tracing target such as wx_kafka::consumer, or root"
            ),
        );
    }
    let Some(mut loggers) = loggers() else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the log filter is not reloadable in this process".into(),
        );
    };
    let now = wx_codec::now_ms();
    let mut levels = loggers.levels.clone();
    let mut changed: Vec<String> = levels
        .keys()
        .filter(|known| *known == &name || is_under(known, &name))
        .cloned()
        .collect();
    if !changed.contains(&name) {
        changed.push(name.clone());
        changed.sort();
    }
    for logger in &changed {
        levels.insert(
            logger.clone(),
            Level {
                name: connect,
                modified: Some(now),
            },
        );
    }
    // Kept only once the filter built from them is in force.
    let filter = filter_of(&levels, &loggers.others);
    match EnvFilter::try_new(&filter).map(|f| loggers.reload.reload(f)) {
        Ok(Ok(())) => {
            loggers.levels = levels;
            tracing::info!(logger = %name, level = connect, "Log level changed over REST.");
            Json(json!(changed)).into_response()
        }
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => error(
            StatusCode::NOT_FOUND,
            format!("invalid logger name '{name}': {e}"),
        ),
    }
}

/// Whether logger `known` is a descendant of `name` (`tracing` targets nest with `::`).
fn is_under(known: &str, name: &str) -> bool {
    name == ROOT
        || known
            .strip_prefix(name)
            .is_some_and(|rest| rest.starts_with("::"))
}

/// The `EnvFilter` directives of `levels`, then the directives the API does not model.
fn filter_of(levels: &BTreeMap<String, Level>, others: &[String]) -> String {
    let mut directives: Vec<String> = levels
        .iter()
        .map(|(target, level)| {
            let level = tracing_level(level.name);
            if target == ROOT {
                level.to_string()
            } else {
                format!("{target}={level}")
            }
        })
        .collect();
    directives.extend(others.iter().cloned());
    directives.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_level_names_map_to_tracing_levels_and_back() {
        assert_eq!(connect_level("debug"), Some("DEBUG"));
        assert_eq!(connect_level("Warn"), Some("WARN"));
        assert_eq!(connect_level("NOPE"), None);
        assert_eq!(tracing_level("FATAL"), "error");
        assert_eq!(tracing_level("ALL"), "trace");
        assert!(is_under("wx_kafka::consumer", "wx_kafka"));
        assert!(!is_under("wx_kafkaesque", "wx_kafka"));
        assert!(is_under("anything", ROOT));
    }
}
