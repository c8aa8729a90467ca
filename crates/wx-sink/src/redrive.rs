//! Redrive of the sink's dead letters: a parked clean record (a row MySQL refused as data, a
//! document the search endpoint refused, one too large) is written again into every target, in
//! order, once its cause is fixed (a column widened, a mapping changed, a limit raised).
//!
//! For each selected letter: the original decodes as the clean message, each target writes it
//! (the same targets, built the same way, as the sink's), and only then is the key tombstoned. A
//! record a target refuses again stays parked under the same key (`attempts` + 1, the first
//! failure time kept). A target that is unwell stops the redrive with its error: nothing is
//! tombstoned that is not in every target, and nothing is parked for a store's outage. Writes
//! are idempotent by msgid, so a crash repeats safely.

use std::sync::Arc;
use std::time::Duration;
use wx_runtime::redrive::{Redrive, RedriveError, RedriveFuture, RedriveRequest};

use wx_codec::{ChatMessage, DeadLetter};
use wx_runtime::letters::RedriveSummary;
use wx_runtime::target::{Target, Verdict, checked};
use wx_runtime::{Parker, Replayed, StageContext};

use crate::{BuildError, SinkSettings};
use wx_runtime::CLEAN_RECORD;

/// A target failed for a reason that is not the record's: the redrive stops.
#[derive(Debug, thiserror::Error)]
#[error("the {store} target is failing: {cause}")]
pub struct ReplayError {
    pub store: &'static str,
    pub cause: String,
}

/// The sink's targets and dead-letter topic, for replaying letters.
pub struct Replay {
    targets: Vec<Arc<dyn Target>>,
    parker: Parker,
}

impl std::fmt::Debug for Replay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let targets: Vec<&str> = self.targets.iter().map(|t| t.name()).collect();
        f.debug_struct("Replay")
            .field("targets", &targets)
            .finish_non_exhaustive()
    }
}

impl Replay {
    /// Builds the targets as the sink does (no consumer group is joined).
    pub async fn connect(
        settings: &SinkSettings,
        context: &StageContext,
    ) -> Result<Replay, BuildError> {
        let targets = crate::targets::build(settings, context).await?;
        let producer = context.producer(Duration::from_secs(30))?;
        Ok(Replay {
            targets,
            parker: context.parker(producer, CLEAN_RECORD),
        })
    }

    /// Replays `selected` (see the module docs); `progress` is told how many are done.
    pub async fn redrive(
        &self,
        selected: Vec<(String, DeadLetter)>,
        dry_run: bool,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<RedriveSummary, ReplayError> {
        self.parker
            .replay_clean_letters(selected, dry_run, progress, |message| async move {
                self.write(&message).await
            })
            .await
    }

    /// Every target in turn.
    async fn write(&self, message: &ChatMessage) -> Result<Replayed, ReplayError> {
        for target in &self.targets {
            let batch = std::slice::from_ref(message);
            let verdicts = checked(target.as_ref(), 1, target.write(batch).await);
            // `checked` gives exactly one verdict.
            match verdicts.into_iter().next() {
                Some(Verdict::Written) => {}
                Some(Verdict::Refused { class, cause }) => {
                    return Ok(Replayed::Again {
                        class: class.into(),
                        cause,
                    });
                }
                Some(Verdict::Unwell { cause }) => {
                    return Err(ReplayError {
                        store: target.name(),
                        cause,
                    });
                }
                None => {
                    return Err(ReplayError {
                        store: target.name(),
                        cause: "no verdict".into(),
                    });
                }
            }
        }
        Ok(Replayed::Moved)
    }
}

impl Redrive for Replay {
    fn destination(&self) -> String {
        let names: Vec<&str> = self.targets.iter().map(|t| t.name()).collect();
        format!("the targets {}", names.join(", "))
    }

    fn redrive<'a>(&'a self, r: RedriveRequest<'a>) -> RedriveFuture<'a> {
        Box::pin(async move {
            Replay::redrive(self, r.selected, r.dry_run, r.progress)
                .await
                .map_err(|e| RedriveError(e.to_string()))
        })
    }
}
