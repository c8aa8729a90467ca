//! The one list of the stages this binary hosts, in start order: what `wxstream run` launches
//! (`--only` takes its names) and what `wxstream redrive --stage` replays, each entry made from
//! the stage's settings type alone.

use std::collections::HashMap;
use wx_decrypt::DecryptSettings;
use wx_ingest::IngestSettings;
use wx_media::MediaSettings;

use wx_codec::RecordKind;
use wx_runtime::{ConnectorKind, Launcher, Redriver, StageSettings, TopicRoles, launch, redriver};
use wx_sink::SinkSettings;
use wx_stats::StatsSettings;
use wx_topology::ConnectorClass;

/// One hosted stage.
#[derive(Clone, Copy)]
pub struct StageEntry {
    /// `wxstream run --only <name>`, `wxstream redrive --stage <name>`.
    pub name: &'static str,
    /// The connector class whose document configures it.
    pub class: ConnectorClass,
    /// Its Connect `type`.
    pub kind: ConnectorKind,
    pub launch: Launcher,
    /// Connects its redrive (None for a stage that has none).
    pub redrive: Redriver,
    /// The roles of its connector's topics.
    pub topics: TopicRoles,
}

const fn entry<S: StageSettings>() -> StageEntry {
    StageEntry {
        name: S::NAME,
        class: S::CLASS,
        kind: S::KIND,
        launch: launch::<S>,
        redrive: redriver::<S>,
        topics: S::TOPICS,
    }
}

/// Every stage, in start order.
pub const STAGES: [StageEntry; 5] = [
    entry::<IngestSettings>(),
    entry::<DecryptSettings>(),
    entry::<SinkSettings>(),
    entry::<StatsSettings>(),
    entry::<MediaSettings>(),
];

/// The stage called `name`.
pub fn by_name(name: &str) -> Option<&'static StageEntry> {
    STAGES.iter().find(|s| s.name == name)
}

/// The topic each record kind is written to, as the topology's connectors name them (the raw,
/// clean and stats roles, the dead-letter topic), else the repository's name with `prefix`: the
/// subjects of TopicNameStrategy.
pub fn record_topics(
    topology: &wx_topology::Topology,
    prefix: &str,
) -> HashMap<RecordKind, String> {
    let mut topics: HashMap<RecordKind, String> = [
        (RecordKind::RawBatch, "wxstream.raw"),
        (RecordKind::ChatMessage, "wxstream.clean"),
        (RecordKind::DeadLetter, "wxstream.dead-letter"),
        (RecordKind::GroupWindowCount, "wxstream.stats"),
    ]
    .into_iter()
    .map(|(kind, topic)| (kind, format!("{prefix}{topic}")))
    .collect();
    for stage in &STAGES {
        for connector in topology
            .connectors
            .iter()
            .filter(|c| c.class == stage.class)
        {
            let roles = stage.topics.inputs.iter().zip(&connector.topics);
            let roles = roles.chain(stage.topics.outputs.iter().zip(&connector.output_topics));
            for (role, topic) in roles {
                let kind = match *role {
                    "raw" => RecordKind::RawBatch,
                    "clean" => RecordKind::ChatMessage,
                    "stats" => RecordKind::GroupWindowCount,
                    _ => continue,
                };
                topics.insert(kind, topic.clone());
            }
            if let Some(topic) = &connector.dead_letter_topic
                && stage.topics.dead_letter
            {
                topics.insert(RecordKind::DeadLetter, topic.clone());
            }
        }
    }
    topics
}

/// Parses a stage name on the command line (its help lists the names).
pub fn name_parser() -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new(STAGES.map(|s| s.name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_stage_and_class_is_listed_once() {
        let names: std::collections::BTreeSet<_> = STAGES.iter().map(|s| s.name).collect();
        assert_eq!(names.len(), STAGES.len());
        let classes: std::collections::BTreeSet<_> =
            STAGES.iter().map(|s| format!("{:?}", s.class)).collect();
        assert_eq!(classes.len(), STAGES.len());
        assert!(by_name("sink").is_some() && by_name("nope").is_none());
    }
}
