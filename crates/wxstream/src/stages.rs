//! The one list of the stages this binary hosts, in start order: what `wxstream run` launches
//! (`--only` takes its names) and what `wxstream redrive --stage` replays, each entry made from
//! the stage's settings type alone.

use wx_decrypt::DecryptSettings;
use wx_ingest::IngestSettings;
use wx_media::MediaSettings;
use wx_runtime::{ConnectorKind, Launcher, Redriver, StageSettings, launch, redriver};
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
}

const fn entry<S: StageSettings>() -> StageEntry {
    StageEntry {
        name: S::NAME,
        class: S::CLASS,
        kind: S::KIND,
        launch: launch::<S>,
        redrive: redriver::<S>,
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
