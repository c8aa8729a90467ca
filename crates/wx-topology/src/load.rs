//! Reading and validating a topology directory:
//!
//! ```text
//! topology/
//!   topics.yaml            the topics (TopicsFile)
//!   connectors/*.yaml      one ConnectorSpec per file
//! ```

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use crate::model::{ConnectorSpec, ErrorTolerance, TopicSpec, TopicsFile, Topology};

/// A topology that cannot be used, with the file, the field and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct TopologyError {
    pub file: PathBuf,
    /// Dotted path of the offending field (`topics[2].partitions`); empty for the whole file.
    pub field: String,
    pub reason: String,
}

impl fmt::Display for TopologyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}: {}", self.file.display(), self.reason)
        } else {
            write!(
                f,
                "{}: field `{}`: {}",
                self.file.display(),
                self.field,
                self.reason
            )
        }
    }
}

pub(crate) fn error(
    file: &Path,
    field: impl Into<String>,
    reason: impl Into<String>,
) -> TopologyError {
    TopologyError {
        file: file.to_path_buf(),
        field: field.into(),
        reason: reason.into(),
    }
}

fn parse<T: DeserializeOwned>(file: &Path, text: &str) -> Result<T, TopologyError> {
    let de = serde_yaml_ng::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        let field = if field == "." { String::new() } else { field };
        // serde_yaml repeats the path at the start of its message; say it once.
        let reason = e.into_inner().to_string();
        let reason = reason
            .strip_prefix(&format!("{field}: "))
            .map(str::to_string)
            .unwrap_or(reason);
        error(file, field, reason)
    })
}

/// Loads and validates `dir/topics.yaml` and `dir/connectors/*.yaml`.
pub fn load_dir(dir: &Path) -> Result<Topology, TopologyError> {
    let topics_path = dir.join("topics.yaml");
    let read = |path: &Path| {
        std::fs::read_to_string(path).map_err(|e| error(path, "", format!("cannot read: {e}")))
    };
    let topics_text = read(&topics_path)?;
    let connectors_dir = dir.join("connectors");
    let mut connector_files: Vec<PathBuf> = match std::fs::read_dir(&connectors_dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(error(&connectors_dir, "", format!("cannot read: {e}"))),
    };
    connector_files.sort();
    let mut connectors = Vec::new();
    for path in connector_files {
        let text = read(&path)?;
        connectors.push((path, text));
    }
    load_str(&topics_path, &topics_text, &connectors)
}

/// Validates a topology given as texts; `topics_file` and each connector path are only used in
/// error messages.
pub fn load_str(
    topics_file: &Path,
    topics_text: &str,
    connectors: &[(PathBuf, String)],
) -> Result<Topology, TopologyError> {
    let doc: TopicsFile = parse(topics_file, topics_text)?;
    check_positive(topics_file, "defaults.partitions", doc.defaults.partitions)?;
    check_positive(
        topics_file,
        "defaults.replication",
        doc.defaults.replication,
    )?;
    let mut topics = Vec::new();
    let mut names = BTreeSet::new();
    for (i, t) in doc.topics.into_iter().enumerate() {
        let at = |field: &str| format!("topics[{i}].{field}");
        check_topic_name(topics_file, &at("name"), &t.name)?;
        if !names.insert(t.name.clone()) {
            return Err(error(
                topics_file,
                at("name"),
                format!("topic `{}` is declared twice", t.name),
            ));
        }
        let partitions = t.partitions.unwrap_or(doc.defaults.partitions);
        let replication = t.replication.unwrap_or(doc.defaults.replication);
        check_positive(topics_file, &at("partitions"), partitions)?;
        check_positive(topics_file, &at("replication"), replication)?;
        if t.purpose.trim().is_empty() {
            return Err(error(
                topics_file,
                at("purpose"),
                "say what the topic is for",
            ));
        }
        for key in t.configs.keys() {
            if matches!(key.as_str(), "cleanup.policy" | "retention.ms") {
                return Err(error(
                    topics_file,
                    at(&format!("configs.{key}")),
                    "set this with `cleanup_policy` / `retention`, not in `configs`",
                ));
            }
            if key.is_empty() || !key.chars().all(|c| c.is_ascii_lowercase() || c == '.') {
                return Err(error(
                    topics_file,
                    at(&format!("configs.{key}")),
                    "not a Kafka topic config name (lowercase words joined by dots)",
                ));
            }
        }
        let topic = TopicSpec {
            name: t.name,
            partitions,
            replication,
            retention: t.retention,
            cleanup_policy: t.cleanup_policy,
            purpose: t.purpose,
            configs: t.configs,
        };
        if let Some(problem) = topic.durability_problem() {
            return Err(error(
                topics_file,
                at("configs.min.insync.replicas"),
                problem,
            ));
        }
        topics.push(topic);
    }

    let mut specs: Vec<ConnectorSpec> = Vec::new();
    for (path, text) in connectors {
        let mut spec: ConnectorSpec = parse(path, text)?;
        for (key, value) in spec.settings.iter_mut() {
            expand_env(value, &|name| std::env::var(name).ok())
                .map_err(|reason| error(path, format!("settings.{key}"), reason))?;
        }
        validate_connector(path, &spec, &names)?;
        if specs.iter().any(|s| s.name == spec.name) {
            return Err(error(
                path,
                "name",
                format!("connector `{}` is defined in another file too", spec.name),
            ));
        }
        specs.push(spec);
    }
    Ok(Topology {
        topics,
        connectors: specs,
    })
}

/// Kafka Connect's environment config provider in connector settings: `${env:NAME}` in a
/// string is replaced by the variable's value, `${env:NAME:-default}` falls back to `default`
/// when it is unset. One document then serves a laptop, docker-compose and Kubernetes. (Secrets
/// stay references, `{env: NAME}`, resolved only where they are used.)
pub fn expand_env(
    value: &mut serde_json::Value,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<(), String> {
    match value {
        serde_json::Value::String(text) => {
            let mut out = String::new();
            let mut rest = text.as_str();
            while let Some(start) = rest.find("${env:") {
                out.push_str(&rest[..start]);
                let after = &rest[start + 6..];
                let end = after
                    .find('}')
                    .ok_or_else(|| format!("`{text}`: `${{env:` without a closing `}}`"))?;
                let (name, default) = match after[..end].split_once(":-") {
                    Some((name, default)) => (name, Some(default)),
                    None => (&after[..end], None),
                };
                match (lookup(name), default) {
                    (Some(v), _) => out.push_str(&v),
                    (None, Some(d)) => out.push_str(d),
                    (None, None) => {
                        return Err(format!(
                            "environment variable {name} is not set (write `${{env:{name}:-default}}` for a fallback)"
                        ));
                    }
                }
                rest = &after[end + 1..];
            }
            out.push_str(rest);
            *text = out;
        }
        serde_json::Value::Array(items) => {
            for item in items {
                expand_env(item, lookup)?;
            }
        }
        serde_json::Value::Object(map) => {
            for item in map.values_mut() {
                expand_env(item, lookup)?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn check_positive(file: &Path, field: &str, value: i32) -> Result<(), TopologyError> {
    if value < 1 {
        return Err(error(
            file,
            field,
            format!("must be at least 1 (got {value})"),
        ));
    }
    Ok(())
}

/// Kafka's rule for topic names: 1 to 249 of `[a-zA-Z0-9._-]`, not `.` or `..`.
fn check_topic_name(file: &Path, field: &str, name: &str) -> Result<(), TopologyError> {
    let legal = !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if legal {
        Ok(())
    } else {
        Err(error(
            file,
            field,
            format!("`{name}` is not a legal Kafka topic name (1-249 of a-z A-Z 0-9 . _ -)"),
        ))
    }
}

fn validate_connector(
    file: &Path,
    spec: &ConnectorSpec,
    declared: &BTreeSet<String>,
) -> Result<(), TopologyError> {
    let name_ok = !spec.name.is_empty()
        && spec
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !name_ok {
        return Err(error(
            file,
            "name",
            format!("`{}` must be non-empty a-z A-Z 0-9 . _ -", spec.name),
        ));
    }
    if !(1..=1024).contains(&spec.tasks_max) {
        return Err(error(
            file,
            "tasks.max",
            format!("must be between 1 and 1024 (got {})", spec.tasks_max),
        ));
    }
    if spec.class.is_source() && !spec.topics.is_empty() {
        return Err(error(
            file,
            "topics",
            "a source connector (wxstream.ingest) consumes no topic; use `output.topics`",
        ));
    }
    if !spec.class.is_source() && spec.topics.is_empty() {
        return Err(error(
            file,
            "topics",
            "this connector must consume at least one topic",
        ));
    }
    if !spec.class.is_sink() && spec.output_topics.is_empty() {
        return Err(error(
            file,
            "output.topics",
            "this connector must produce to at least one topic",
        ));
    }
    let references = spec
        .topics
        .iter()
        .map(|t| ("topics", t))
        .chain(spec.output_topics.iter().map(|t| ("output.topics", t)))
        .chain(
            spec.dead_letter_topic
                .iter()
                .map(|t| ("errors.deadletterqueue.topic.name", t)),
        );
    for (field, topic) in references {
        if !declared.contains(topic) {
            return Err(error(
                file,
                field,
                format!("topic `{topic}` is not declared in topics.yaml"),
            ));
        }
    }
    if spec.errors_tolerance == ErrorTolerance::All && spec.dead_letter_topic.is_none() {
        return Err(error(
            file,
            "errors.deadletterqueue.topic.name",
            "required with `errors.tolerance: all`: bad records must be parked, never dropped",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
