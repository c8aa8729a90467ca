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

use wx_codec::ChatMessage;
use wx_runtime::target::{Target, Verdict, checked};
use wx_runtime::{Parker, Replayed, StageContext};

use crate::{BuildError, SinkSettings};
use wx_runtime::CLEAN_RECORD;

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

    /// Every target in turn; a target that is unwell stops the redrive.
    async fn write(&self, message: &ChatMessage) -> Result<Replayed, RedriveError> {
        for target in &self.targets {
            let batch = std::slice::from_ref(message);
            let mut verdicts = checked(target.as_ref(), 1, target.write(batch).await);
            match verdicts.swap_remove(0) {
                Verdict::Written => {}
                Verdict::Refused { class, cause } => {
                    return Ok(Replayed::Again {
                        class: class.into(),
                        cause,
                    });
                }
                Verdict::Unwell { cause } => {
                    return Err(RedriveError(format!(
                        "the {} target is failing: {cause}",
                        target.name()
                    )));
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

    /// See the module docs.
    fn redrive<'a>(&'a self, r: RedriveRequest<'a>) -> RedriveFuture<'a> {
        Box::pin(self.parker.replay_clean_letters(
            r.selected,
            r.dry_run,
            r.progress,
            move |message| async move { self.write(&message).await },
        ))
    }
}
