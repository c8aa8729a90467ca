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

use tokio_util::sync::CancellationToken;
use wx_codec::ChatMessage;
use wx_runtime::redrive::{Redrive, RedriveFuture, RedriveRequest};
use wx_runtime::{Parker, Replayed, StageContext};

use crate::archive::{Archiver, ParkedItem};
use crate::{BuildError, MediaSettings};
use wx_runtime::CLEAN_RECORD;

/// The media stage's stores, clients and dead-letter topic, for replaying letters.
pub struct Replay {
    archiver: Archiver,
    parker: Parker,
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
        })
    }

    /// Every item of the message again, its parked rows cleared first. None when stopped.
    async fn replay(&self, message: &ChatMessage) -> Option<Vec<ParkedItem>> {
        let items = message.media_items();
        self.archiver.unpark(message, &items).await?;
        self.archiver.archive_all(message, &items).await
    }
}

impl Redrive for Replay {
    fn destination(&self) -> String {
        format!("the bucket {}", self.archiver.store.bucket())
    }

    /// See the module docs; stops early (the rest untouched) when `stop` is cancelled.
    fn redrive<'a>(&'a self, r: RedriveRequest<'a>) -> RedriveFuture<'a> {
        Box::pin(self.parker.replay_clean_letters(
            r.selected,
            r.dry_run,
            r.progress,
            move |message| async move {
                let Some(parked) = self.replay(&message).await else {
                    return Ok(Replayed::Stopped);
                };
                Ok(match ParkedItem::letter_cause(&parked) {
                    None => Replayed::Moved,
                    Some((class, cause)) => {
                        if self.archiver.mark_parked(&message, &parked).await.is_none() {
                            return Ok(Replayed::Stopped);
                        }
                        Replayed::Again {
                            class: class.to_string(),
                            cause,
                        }
                    }
                })
            },
        ))
    }
}
