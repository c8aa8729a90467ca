//! The sink stage's handler on the runtime's consumer loop, one loop over its targets: for
//! each batch, each target in turn gets the records every earlier target wrote; a record a
//! target refuses is parked (and goes no further); records a target could not write because it
//! is unwell are sent again with capped backoff while the consumer is paused (no unbounded
//! buffering); only then are the records' offsets finished. Between retries it keeps polling
//! the paused consumer, so an outage longer than `max.poll.interval.ms` does not take the worker
//! out of its group, and it resumes by itself when the store is back.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use wx_codec::ChatMessage;
use wx_kafka::{Consumed, Producer};
use wx_runtime::target::{Target, Verdict, checked};
use wx_runtime::{
    Backoff, Batching, Clock, Handler, Parker, Stage, StageConsumer, StageContext, StageControl,
    StageError, StageHealth,
};

use crate::SinkSettings;
use crate::metrics as m;

/// One sink worker (a consumer-group member) and what it writes to.
pub struct SinkWorker {
    consumer: StageConsumer,
    writer: Writer,
}

/// Writes batches to every target.
struct Writer {
    targets: Vec<Arc<dyn Target>>,
    parker: Parker,
    health: Arc<StageHealth>,
    clock: Clock,
    batch_max: usize,
    batch_linger: Duration,
    backoff_cap: Duration,
    /// Set by `run`: a retry of a failing store gives up on shutdown.
    shutdown: CancellationToken,
}

impl std::fmt::Debug for SinkWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let targets: Vec<&str> = self.writer.targets.iter().map(|t| t.name()).collect();
        f.debug_struct("SinkWorker")
            .field("targets", &targets)
            .finish_non_exhaustive()
    }
}

impl SinkWorker {
    pub(crate) fn new(
        settings: &SinkSettings,
        context: &StageContext,
        targets: Vec<Arc<dyn Target>>,
        consumer: StageConsumer,
        producer: Producer,
    ) -> SinkWorker {
        SinkWorker {
            consumer,
            writer: Writer {
                targets,
                parker: context.parker(producer, wx_runtime::CLEAN_RECORD),
                health: context.health.clone(),
                clock: context.clock,
                batch_max: settings.batch_max,
                batch_linger: settings.batch_linger,
                backoff_cap: settings.backoff_cap,
                shutdown: CancellationToken::new(),
            },
        }
    }
}

impl Stage for SinkWorker {
    fn control(&self) -> Arc<dyn StageControl> {
        Arc::new(self.consumer.control())
    }

    async fn run(self, shutdown: CancellationToken) -> Result<(), StageError> {
        let SinkWorker {
            consumer,
            mut writer,
        } = self;
        writer.shutdown = shutdown.clone();
        let batching = Batching {
            max: writer.batch_max,
            linger: writer.batch_linger,
        };
        let stop_maintaining = shutdown.child_token();
        let maintenance: Vec<_> = writer
            .targets
            .iter()
            .filter_map(|target| {
                let (what, interval) = target.maintenance()?;
                Some(tokio::spawn(maintain(
                    target.clone(),
                    what,
                    interval,
                    writer.health.clone(),
                    writer.clock,
                    stop_maintaining.clone(),
                )))
            })
            .collect();
        let result = consumer.run(writer, batching, shutdown).await;
        stop_maintaining.cancel();
        for task in maintenance {
            let _ = task.await;
        }
        result
    }
}

/// Runs a target's upkeep every `interval` while the sink runs; a failure is shown in health
/// under `what` and tried again next time.
async fn maintain(
    target: Arc<dyn Target>,
    what: &'static str,
    interval: Duration,
    health: Arc<StageHealth>,
    clock: Clock,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // the first is immediate; building the target has just done it
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        match target.maintain(clock.now_ms()).await {
            Ok(note) => {
                health.recovered(what);
                if let Some(note) = note {
                    tracing::info!(store = target.name(), "{note}");
                }
            }
            Err(e) => {
                tracing::warn!(store = target.name(), error = %e, "A store's upkeep failed; trying again later.");
                health.failing(what, &e);
            }
        }
    }
}

impl Handler for Writer {
    async fn handle(
        &mut self,
        batch: Vec<Consumed>,
        consumer: &StageConsumer,
    ) -> Result<(), StageError> {
        if !self.write_batch(&batch, consumer).await? {
            // Shutdown while a store was failing: these records stay unfinished and are
            // repeated by the next owner.
            return Ok(());
        }
        for record in &batch {
            consumer.finish(&record.ticket);
        }
        Ok(())
    }

    async fn stop(self) -> Result<(), StageError> {
        Ok(())
    }
}

impl Writer {
    /// Writes a batch to every target; Ok(false) when shutdown interrupted a retry.
    async fn write_batch(
        &self,
        batch: &[Consumed],
        consumer: &StageConsumer,
    ) -> Result<bool, StageError> {
        let mut records: Vec<&Consumed> = Vec::with_capacity(batch.len());
        let mut messages: Vec<ChatMessage> = Vec::with_capacity(batch.len());
        for record in batch {
            metrics::counter!(m::RECORDS_CONSUMED, "partition" => record.partition.to_string())
                .increment(1);
            if let Some(message) = self
                .parker
                .clean_message(record, self.clock.now_ms(), consumer)
                .await?
            {
                records.push(record);
                messages.push(message);
            }
        }
        for target in &self.targets {
            let Some(kept) = self
                .write_target(target.as_ref(), &records, messages, consumer)
                .await?
            else {
                return Ok(false);
            };
            (records, messages) = kept;
        }
        consumer.hold(false);
        Ok(true)
    }

    /// Writes `messages` to `target` until each is written or parked, retrying what the store
    /// could not take (consumption paused meanwhile). Returns the records written, in order, for
    /// the next target (None on shutdown).
    async fn write_target<'a>(
        &self,
        target: &dyn Target,
        records: &[&'a Consumed],
        messages: Vec<ChatMessage>,
        consumer: &StageConsumer,
    ) -> Result<Option<(Vec<&'a Consumed>, Vec<ChatMessage>)>, StageError> {
        let name = target.name();
        let written_metric = format!("wxstream_sink_{}_written_total", target.unit());
        let mut done: Vec<Option<bool>> = vec![None; messages.len()];
        let mut pending: Vec<usize> = (0..messages.len()).collect();
        let mut backoff = Backoff::new(Duration::from_millis(200), self.backoff_cap);
        while !pending.is_empty() {
            let batch: Vec<ChatMessage> = pending.iter().map(|&i| messages[i].clone()).collect();
            let started = Instant::now();
            let verdicts = checked(target, batch.len(), target.write(&batch).await);
            metrics::histogram!(m::BATCH_SECONDS, "store" => name)
                .record(started.elapsed().as_secs_f64());
            let mut again = Vec::new();
            let mut unwell = None;
            for (&i, verdict) in pending.iter().zip(verdicts) {
                let record = records[i];
                match verdict {
                    Verdict::Written => {
                        metrics::counter!(written_metric.clone(), "partition" => record.partition.to_string()).increment(1);
                        done[i] = Some(true);
                    }
                    Verdict::Refused { class, cause } => {
                        let letter = self
                            .parker
                            .letter(record, class, cause, self.clock.now_ms())
                            .about_message(&messages[i]);
                        self.parker.park_counted(&letter).await?;
                        done[i] = Some(false);
                    }
                    Verdict::Unwell { cause } => {
                        again.push(i);
                        unwell = Some(cause);
                    }
                }
            }
            pending = again;
            let Some(cause) = unwell else {
                self.health.recovered(name);
                break;
            };
            metrics::counter!(m::RETRIES, "store" => name).increment(1);
            self.health.failing(name, &cause);
            if consumer.hold(true) {
                tracing::warn!(store = name, error = %cause, "{} is failing; pausing consumption and retrying.", target.label());
            }
            if !consumer
                .back_off(backoff.next_delay(), &self.shutdown)
                .await?
            {
                return Ok(None);
            }
        }
        let mut kept = (Vec::new(), Vec::new());
        for ((record, message), written) in records.iter().zip(messages).zip(done) {
            if written == Some(true) {
                kept.0.push(*record);
                kept.1.push(message);
            }
        }
        Ok(Some(kept))
    }
}
