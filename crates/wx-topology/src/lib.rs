//! The declarative topology under `topology/`: the topics the pipeline needs and one Kafka
//! Connect-style document per stage.
//!
//! # Layout
//! - `model`: the document types, exactly as written in YAML (unknown fields rejected).
//! - `load`: reads a topology directory and validates it; every error names the file, the field
//!   and the reason.
//! - `plan`: compares declared topics with what a broker reports and says what to create and
//!   what has drifted. Pure: the Kafka calls live in `wx-kafka`.
//! - `retention`: `retention.yaml`, the archive's retention per corp, and the check that the
//!   topics holding messages do not outlast it.
//!
//! # Invariants
//! This crate does no I/O beyond reading the topology files and knows nothing of Kafka clients.
//! A stage's `settings` block is an open mapping here; the stage that owns it validates it
//! (see ARCHITECTURE.md).

mod load;
mod model;
mod plan;
mod retention;

pub use load::{TopologyError, expand_env, load_dir, load_str};
pub use model::{
    CleanupPolicy, ConnectorClass, ConnectorSpec, ErrorTolerance, MIN_INSYNC_REPLICAS, Retention,
    TopicDefaults, TopicSpec, TopicsFile, Topology,
};
pub use plan::{Drift, ObservedTopic, TopicAction, plan};
pub use retention::{RetentionPolicy, load_retention};
