//! The media stage's handler on the runtime's consumer loop: each clean record with media gets
//! a task (at most `max_concurrent_downloads` at once) that archives its items one by one, parks
//! the ones that cannot be had in one letter, and only then finishes the record's offset.
//! Records without media are finished at once. While every download slot stays busy (large
//! files) the consumer is paused, and the records not yet dispatched go back to the runtime's
//! loop, which offers them again after it has committed and heard of any rebalance: a long
//! wait for a slot never stalls commits, and a revoked partition's records are never started.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use wx_codec::{ChatMessage, DeadLetter};
use wx_kafka::{Consumed, Finisher, TopicPartition};
use wx_runtime::{
    Batching, Clock, Handler, Parker, Stage, StageConsumer, StageControl, StageError,
};

use crate::archive::{Archiver, ParkedItem};
use crate::metrics as m;

/// How long every download slot may be busy before the consumer is paused.
const PAUSE_AFTER: Duration = Duration::from_secs(2);
/// How long one `handle` may wait for slots before it hands the rest of its batch back to the
/// loop (which commits and hears of rebalances before it offers them again).
const HAND_BACK_AFTER: Duration = Duration::from_millis(500);
/// One wait for a slot (polling the paused consumer, or for the semaphore).
const POLL_WHILE_BUSY: Duration = Duration::from_millis(200);

/// One media worker (a consumer-group member).
pub struct MediaWorker {
    pub(crate) consumer: StageConsumer,
    pub(crate) dispatcher: Dispatcher,
}

impl std::fmt::Debug for MediaWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaWorker")
            .field("bucket", &self.dispatcher.archiver.store.bucket())
            .finish_non_exhaustive()
    }
}

/// Hands records with media to download tasks.
pub(crate) struct Dispatcher {
    pub(crate) archiver: Arc<Archiver>,
    pub(crate) parker: Parker,
    pub(crate) clock: Clock,
    pub(crate) slots: Arc<Semaphore>,
    pub(crate) tasks: JoinSet<()>,
    pub(crate) finisher: Option<Finisher>,
    /// A task's fatal error (a letter that cannot be encoded): the stage stops with it.
    pub(crate) failed: Arc<Mutex<Option<StageError>>>,
    /// A child of the stage's shutdown token (the archiver's too): downloads stop at their
    /// next chunk, their records unfinished.
    pub(crate) shutdown: CancellationToken,
    /// Each clean partition's stop (a child of `shutdown`) for the current assignment:
    /// cancelled when the assignment changes, so the downloads of its records stop and whoever
    /// gets them again resumes each file from its checkpoint, instead of two downloading one
    /// file.
    pub(crate) partitions: HashMap<i32, CancellationToken>,
    /// Since when every slot has been busy (none free at the last look).
    pub(crate) busy_since: Option<Instant>,
}

impl Stage for MediaWorker {
    fn control(&self) -> Arc<dyn StageControl> {
        Arc::new(self.consumer.control())
    }

    async fn run(self, shutdown: CancellationToken) -> Result<(), StageError> {
        let MediaWorker {
            consumer,
            mut dispatcher,
        } = self;
        dispatcher.finisher = Some(consumer.finisher());
        consumer
            .run(
                dispatcher,
                Batching {
                    max: 100,
                    linger: Duration::ZERO,
                },
                shutdown,
            )
            .await
    }
}

impl Dispatcher {
    fn take_failure(&self) -> Option<StageError> {
        self.failed.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Collects finished tasks; a task that panicked stops the stage.
    fn reap(&mut self) -> Result<(), StageError> {
        while let Some(done) = self.tasks.try_join_next() {
            if let Err(e) = done
                && e.is_panic()
            {
                tracing::error!(error = %e, "A media task panicked; stopping the stage.");
                return Err(StageError::Panicked {
                    what: "a media download",
                });
            }
        }
        match self.take_failure() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// A download slot. Waiting a moment for one is cheap; once every slot has been busy for
    /// [`PAUSE_AFTER`] (large files) the consumer is paused and polled meanwhile (the member
    /// stays in its group). (Pausing at once would cost a refetch per record: librdkafka drops
    /// a paused partition's fetched records.) [`Slot::Busy`] once the handler has waited
    /// [`HAND_BACK_AFTER`] since `handling` began: the batch goes back to the loop.
    async fn slot(
        &mut self,
        consumer: &StageConsumer,
        handling: Instant,
    ) -> Result<Slot, StageError> {
        loop {
            if let Ok(slot) = self.slots.clone().try_acquire_owned() {
                self.slot_freed(consumer);
                return Ok(Slot::Free(slot));
            }
            if self.busy_since.get_or_insert_with(Instant::now).elapsed() >= PAUSE_AFTER {
                consumer.hold(true);
            }
            if handling.elapsed() >= HAND_BACK_AFTER {
                return Ok(Slot::Busy);
            }
            if consumer.is_held() {
                if !consumer.back_off(POLL_WHILE_BUSY, &self.shutdown).await? {
                    return Ok(Slot::Shutdown);
                }
                self.reap()?;
            } else {
                let waited = tokio::select! {
                    _ = self.shutdown.cancelled() => return Ok(Slot::Shutdown),
                    slot = tokio::time::timeout(POLL_WHILE_BUSY, self.slots.clone().acquire_owned()) => slot,
                };
                if let Ok(Ok(slot)) = waited {
                    self.slot_freed(consumer);
                    return Ok(Slot::Free(slot));
                }
            }
        }
    }
}

impl Dispatcher {
    /// A slot is free again: the busy spell ends and fetching resumes (a no-op when it was
    /// not paused).
    fn slot_freed(&mut self, consumer: &StageConsumer) {
        self.busy_since = None;
        consumer.hold(false);
    }
}

/// What [`Dispatcher::slot`] got.
enum Slot {
    Free(tokio::sync::OwnedSemaphorePermit),
    /// Every slot still busy: hand the rest of the batch back.
    Busy,
    Shutdown,
}

impl Handler for Dispatcher {
    async fn handle(
        &mut self,
        batch: Vec<Consumed>,
        consumer: &StageConsumer,
    ) -> Result<(), StageError> {
        let handling = Instant::now();
        let mut records = batch.into_iter();
        while let Some(record) = records.next() {
            self.reap()?;
            let Some(message) = self
                .parker
                .clean_message(&record, self.clock.now_ms(), consumer)
                .await?
            else {
                // A tombstone, or parked as undecodable.
                count_consumed(&record);
                consumer.finish(&record.ticket);
                continue;
            };
            let items = message.media_items();
            if items.is_empty() {
                count_consumed(&record);
                consumer.finish(&record.ticket);
                continue;
            }
            let slot = match self.slot(consumer, handling).await? {
                Slot::Free(slot) => slot,
                Slot::Busy => {
                    consumer.carry_back(std::iter::once(record).chain(records));
                    return Ok(());
                }
                Slot::Shutdown => return Ok(()),
            };
            // The wait polled the consumer: a rebalance may have revoked the record's partition
            // meanwhile (its next owner downloads it).
            if !consumer.is_live(&record.ticket) {
                continue;
            }
            count_consumed(&record);
            let stop = self
                .partitions
                .entry(record.partition)
                .or_insert_with(|| self.archiver.child_stop())
                .clone();
            let archiver = self.archiver.with_stop(stop);
            let parker = self.parker.clone();
            let clock = self.clock;
            let failed = self.failed.clone();
            let Some(finisher) = self.finisher.clone() else {
                return Err(StageError::Panicked {
                    what: "the media dispatcher (no finisher)",
                });
            };
            self.tasks.spawn(async move {
                let _slot = slot;
                match archive_record(&archiver, &parker, clock, &record, &message, items).await {
                    Ok(true) => {
                        finisher.finish(&record.ticket);
                    }
                    Ok(false) => {}
                    Err(e) => {
                        *failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                    }
                }
            });
        }
        Ok(())
    }

    /// Also lifts the pause once a slot is free with no record waiting for it: after a
    /// rebalance the records that were waiting are dropped as stale, and only fetching again
    /// brings them back.
    async fn before_commit(&mut self, consumer: &StageConsumer) -> Result<(), StageError> {
        self.reap()?;
        if consumer.is_held() && self.slots.available_permits() > 0 {
            self.slot_freed(consumer);
        }
        Ok(())
    }

    /// Every running download stops: the group's protocol is eager, so any change revoked
    /// every partition first and no record received before it can be finished here any more
    /// (a partition given back to this member included). Each is delivered again from the
    /// committed offset, here or to another member, which resumes the file from its
    /// checkpoint; the consumer has already waited `drain_timeout` for downloads to finish.
    fn assigned(&mut self, _partitions: &BTreeSet<TopicPartition>) {
        for (_, stop) in self.partitions.drain() {
            stop.cancel();
        }
    }

    async fn stop(mut self) -> Result<(), StageError> {
        // Downloads stop at their next chunk; their records stay unfinished and resume from
        // their checkpoints under the next owner.
        self.shutdown.cancel();
        while let Some(done) = self.tasks.join_next().await {
            if let Err(e) = done {
                tracing::warn!(error = %e, "A media task ended abnormally during shutdown.");
            }
        }
        match self.take_failure() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Counts a record taken: finished at once or handed to a download.
fn count_consumed(record: &Consumed) {
    metrics::counter!(m::RECORDS_CONSUMED, "partition" => record.partition.to_string())
        .increment(1);
}

/// Archives every media item of one record; parks the ones that cannot be had (one letter for
/// the record, each item's cause in it; the rows say `parked`). Ok(true) when the record may be
/// finished, Ok(false) on shutdown.
async fn archive_record(
    archiver: &Archiver,
    parker: &Parker,
    clock: Clock,
    record: &Consumed,
    message: &ChatMessage,
    items: Vec<wx_codec::media::MediaItem>,
) -> Result<bool, StageError> {
    let Some(parked) = archiver.archive_all(message, &items).await else {
        return Ok(false);
    };
    let Some((class, cause)) = ParkedItem::letter_cause(&parked) else {
        return Ok(true);
    };
    let letter: DeadLetter = parker
        .letter(record, class, cause, clock.now_ms())
        .about_message(message);
    parker.park(&letter).await?;
    Ok(archiver.mark_parked(message, &parked).await.is_some())
}
