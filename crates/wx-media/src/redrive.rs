//! Redrive of the media stage's dead letters (`wxstream redrive --stage media`): a message whose
//! files could not be had (expired, a bad sdkfileid, an MD5 that never matched, a corp without
//! credentials) is tried again once the cause is fixed (WeCom serves the file again, the corp is
//! configured).
//!
//! For each selected letter: the original decodes as the clean message; the rows of its parked
//! items are removed; every item is archived as the stage does (an item already stored is not
//! downloaded again); when all are stored the key is tombstoned, otherwise the letter is written
//! again under the same key (`attempts` + 1, the first failure time kept) and the rows say
//! `parked` again. A store or WeCom outage is waited out with backoff (as in the stage), never
//! parked; interrupt the command to stop.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use wx_codec::{ChatMessage, Codec, DeadLetter};
use wx_runtime::letters::RedriveSummary;
use wx_runtime::{Parker, StageContext};

use crate::archive::{Archiver, ParkedItem};
use crate::worker::CLEAN_RECORD;
use crate::{BuildError, MediaSettings};

/// The media stage's stores, clients and dead-letter topic, for replaying letters.
pub struct Replay {
    archiver: Archiver,
    parker: Parker,
    codec: Arc<Codec>,
}

impl std::fmt::Debug for Replay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replay")
            .field("bucket", &self.archiver.store.bucket())
            .finish_non_exhaustive()
    }
}

impl Replay {
    /// Connects as the stage does (no consumer group is joined); `stop` interrupts a replay.
    pub async fn connect(
        settings: &MediaSettings,
        context: &StageContext,
        stop: CancellationToken,
    ) -> Result<Replay, BuildError> {
        let archiver = crate::archiver(settings, context, stop).await?;
        let producer = context.producer(std::time::Duration::from_secs(30))?;
        Ok(Replay {
            archiver,
            parker: context.parker(producer, CLEAN_RECORD),
            codec: context.codec.clone(),
        })
    }

    /// Replays `selected` (see the module docs); `progress` is told how many are done. Stops
    /// early (the rest untouched) when `stop` is cancelled.
    pub async fn redrive(
        &self,
        selected: Vec<(String, DeadLetter)>,
        dry_run: bool,
        progress: &(dyn Fn(u64) + Sync),
    ) -> RedriveSummary {
        let mut summary = RedriveSummary::default();
        for (done, (key, dead)) in selected.into_iter().enumerate() {
            let outcome = match self.codec.decode::<ChatMessage>(&dead.original) {
                Err(_) if dry_run => "would_fail:undecodable".to_string(),
                Err(e) => {
                    self.parker
                        .park_again(&key, &dead, "undecodable", e.to_string())
                        .await;
                    "failed_again:undecodable".to_string()
                }
                Ok(_) if dry_run => "would_move".to_string(),
                Ok(message) => match self.replay(&message).await {
                    None => break,
                    Some(parked) => match ParkedItem::letter_cause(&parked) {
                        None => {
                            self.parker.tombstone(&key).await;
                            "moved".to_string()
                        }
                        Some((class, cause)) => {
                            self.parker.park_again(&key, &dead, class, cause).await;
                            if self.archiver.mark_parked(&message, &parked).await.is_none() {
                                break;
                            }
                            format!("failed_again:{class}")
                        }
                    },
                },
            };
            *summary
                .rows
                .entry((dead.error_class.clone(), outcome))
                .or_default() += 1;
            progress(done as u64 + 1);
        }
        summary
    }

    /// Every item of the message again, its parked rows cleared first. None when stopped.
    async fn replay(&self, message: &ChatMessage) -> Option<Vec<ParkedItem>> {
        let items = message.media_items();
        self.archiver.unpark(message, &items).await?;
        self.archiver.archive_all(message, &items).await
    }
}
