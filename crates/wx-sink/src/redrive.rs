//! Redrive of the sink's dead letters: a parked clean record (a row MySQL refused as data, a
//! document the search endpoint refused, one too large) is written again into both stores once
//! its cause is fixed (a column widened, a mapping changed, a limit raised).
//!
//! For each selected letter: the original decodes as the clean message, MySQL upserts it, the
//! search endpoint `create`s it (a version conflict counts as written), and only then is the
//! key tombstoned. A record a store refuses again stays parked under the same key (`attempts` +
//! 1, the first failure time kept). A store that is unwell (any error not about the data) stops
//! the redrive with that error: nothing is tombstoned that is not in both stores, and nothing is
//! parked for a store's outage. Writes are idempotent by msgid, so a crash repeats safely.

use std::time::Duration;

use wx_codec::{ChatMessage, DeadLetter};
use wx_runtime::letters::RedriveSummary;
use wx_runtime::{Parker, Replayed, StageContext};

use crate::search::{Failure, SearchError, SearchIndex, document, index_for};
use crate::triage::ItemVerdict;
use crate::worker::CLEAN_RECORD;
use crate::{BuildError, SinkSettings};
use wx_mysql::{MessageStore, refuses_rows};

/// A store failed for a reason that is not the record's: the redrive stops.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("MySQL is failing: {0}")]
    Mysql(String),
    #[error("the search endpoint is failing: {0}")]
    Search(String),
}

/// The sink's stores and dead-letter topic, for replaying letters.
#[derive(Debug)]
pub struct Replay {
    store: MessageStore,
    search: SearchIndex,
    parker: Parker,
}

/// How one letter's replay ended.
enum Settled {
    Moved,
    Again(String, String),
}

impl Replay {
    /// Connects both stores as the sink does (no consumer group is joined).
    pub async fn connect(
        settings: &SinkSettings,
        context: &StageContext,
    ) -> Result<Replay, BuildError> {
        let (store, search) = crate::connect_stores(settings, context).await?;
        let producer = context.producer(Duration::from_secs(30))?;
        Ok(Replay {
            store,
            search,
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
                Ok(match self.write(&message).await? {
                    Settled::Moved => Replayed::Moved,
                    Settled::Again(class, cause) => Replayed::Again { class, cause },
                })
            })
            .await
    }

    /// MySQL, then the search endpoint.
    async fn write(&self, message: &ChatMessage) -> Result<Settled, ReplayError> {
        let shown = |e: &dyn std::fmt::Display| wx_runtime::settings::redact_urls(&e.to_string());
        match self.store.write(std::slice::from_ref(message)).await {
            Ok(()) => {}
            Err(e) if refuses_rows(&e) => {
                return Ok(Settled::Again("store_rejected".into(), shown(&e)));
            }
            Err(e) => return Err(ReplayError::Mysql(shown(&e))),
        }
        let doc = (
            index_for(self.search.prefix(), message.msgtime),
            document(message, wx_codec::now_ms()),
        );
        match self.search.bulk_create(std::slice::from_ref(&doc)).await {
            Ok(verdicts) => match verdicts.into_iter().next() {
                Some(ItemVerdict::Written) => Ok(Settled::Moved),
                Some(ItemVerdict::Refused { status, reason }) => Ok(Settled::Again(
                    "mapping".into(),
                    format!("{status}: {reason}"),
                )),
                Some(ItemVerdict::Retry { status, reason }) => {
                    Err(ReplayError::Search(format!("{status}: {reason}")))
                }
                None => Err(ReplayError::Search("an empty bulk reply".into())),
            },
            Err(e @ SearchError::Status { .. }) if e.failure() != Failure::Store => Ok(
                Settled::Again(e.failure().parked_class().into(), e.to_string()),
            ),
            Err(e) => Err(ReplayError::Search(e.to_string())),
        }
    }
}
