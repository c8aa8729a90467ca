//! The media stage's handler on the runtime's consumer loop: each clean record with media gets
//! a task (at most `max_concurrent_downloads` at once) that archives its items one by one, parks
//! the ones that cannot be had in one letter, and only then finishes the record's offset.
//! Records without media are finished at once. While every download slot stays busy (large
//! files) the consumer is paused and polled (so the member stays in its group); what arrives
//! meanwhile waits.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
    /// Each clean partition's stop (a child of `shutdown`): cancelled when the partition is
    /// revoked, so its downloads stop and its next owner resumes them from their checkpoints
    /// instead of both downloading one file.
    pub(crate) partitions: HashMap<i32, CancellationToken>,
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
    /// [`PAUSE_AFTER`] (large files) the consumer is paused and polled until one frees, so the
    /// member stays in its group. (Pausing at once would cost a refetch per record: librdkafka
    /// drops a paused partition's fetched records.) None on shutdown.
    async fn slot(
        &mut self,
        consumer: &StageConsumer,
    ) -> Result<Option<tokio::sync::OwnedSemaphorePermit>, StageError> {
        let waited = tokio::select! {
            _ = self.shutdown.cancelled() => return Ok(None),
            slot = tokio::time::timeout(PAUSE_AFTER, self.slots.clone().acquire_owned()) => slot,
        };
        if let Ok(Ok(slot)) = waited {
            return Ok(Some(slot));
        }
        let slot = loop {
            if let Ok(slot) = self.slots.clone().try_acquire_owned() {
                break slot;
            }
            consumer.hold(true);
            if !consumer
                .back_off(Duration::from_millis(200), &self.shutdown)
                .await?
            {
                return Ok(None);
            }
            self.reap()?;
        };
        consumer.hold(false);
        Ok(Some(slot))
    }
}

impl Handler for Dispatcher {
    async fn handle(
        &mut self,
        batch: Vec<Consumed>,
        consumer: &StageConsumer,
    ) -> Result<(), StageError> {
        for record in batch {
            self.reap()?;
            metrics::counter!(m::RECORDS_CONSUMED, "partition" => record.partition.to_string())
                .increment(1);
            let Some(message) = self
                .parker
                .clean_message(&record, self.clock.now_ms())
                .await?
            else {
                // A tombstone, or parked as undecodable.
                consumer.finish(&record.ticket);
                continue;
            };
            let items = message.media_items();
            if items.is_empty() {
                consumer.finish(&record.ticket);
                continue;
            }
            let Some(slot) = self.slot(consumer).await? else {
                return Ok(());
            };
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

    async fn before_commit(&mut self, _consumer: &StageConsumer) -> Result<(), StageError> {
        self.reap()
    }

    /// The downloads of partitions no longer assigned stop (the consumer has already waited
    /// `drain_timeout` for them); their records are repeated by the new owner, which resumes
    /// each file from its checkpoint.
    fn assigned(&mut self, partitions: &BTreeSet<TopicPartition>) {
        self.partitions.retain(|partition, stop| {
            let kept = partitions.iter().any(|(_, owned)| owned == partition);
            if !kept {
                stop.cancel();
            }
            kept
        });
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
