//! The redrive contract every stage that parks implements: its letters, selected from the
//! dead-letter topic by stage, class, corp, key version and time (`letters`), are replayed in
//! this process; each ends moved (its key tombstoned once what replaces it is acknowledged),
//! parked again under the same key (`attempts` + 1), or untouched (a dry run, an interruption);
//! the outcomes are counted by class in a [`RedriveSummary`]. A store or broker that fails
//! stops the redrive with a [`RedriveError`]: nothing is parked for an outage.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use wx_codec::DeadLetter;

use crate::context::{DEAD_LETTER, StageContext};
use crate::letters::{Parked, RedriveFilter, RedriveSummary, parked};

/// A store or broker failed for a reason that is not the records': the redrive stopped there
/// (the letters not yet replayed are untouched).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RedriveError(pub String);

/// A boxed future of a redrive.
pub type RedriveFuture<'a> =
    Pin<Box<dyn Future<Output = Result<RedriveSummary, RedriveError>> + Send + 'a>>;

/// What a redrive is asked to do: replay `selected` (key, letter), or with `dry_run` only say
/// what would happen; `progress` is told how many are done.
pub struct RedriveRequest<'a> {
    pub selected: Vec<(String, DeadLetter)>,
    pub dry_run: bool,
    pub progress: &'a (dyn Fn(u64) + Sync),
}

impl std::fmt::Debug for RedriveRequest<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedriveRequest")
            .field("selected", &self.selected.len())
            .field("dry_run", &self.dry_run)
            .finish_non_exhaustive()
    }
}

/// A stage's replay of its own letters (built by `StageSettings::redrive`).
pub trait Redrive: Send + Sync {
    /// Where a moved record goes, for the summary's last line ("the topic wxstream.clean").
    fn destination(&self) -> String;

    /// Carries out `request`.
    fn redrive<'a>(&'a self, request: RedriveRequest<'a>) -> RedriveFuture<'a>;
}

/// What a redrive starts from: every letter parked now on the context's dead-letter topic (read
/// to its end within `timeout`), and those of the context's stage that `filter` selects. The
/// selector knows no class by name: a class a stage or target parks under is selectable as soon
/// as it is parked.
pub async fn select(
    context: &StageContext,
    filter: &RedriveFilter,
    timeout: Duration,
) -> Result<(Parked, Vec<(String, DeadLetter)>), RedriveError> {
    let kafka = context.kafka.clone();
    let topic = context.topic(DEAD_LETTER).to_string();
    let records =
        tokio::task::spawn_blocking(move || wx_kafka::read_topic(&kafka, &topic, timeout))
            .await
            .map_err(|e| RedriveError(format!("reading the dead-letter topic: {e}")))?
            .map_err(|e| RedriveError(format!("reading {}: {e}", context.topic(DEAD_LETTER))))?;
    // Letters written with registry ids this process has not seen yet: resolved first (a
    // registry that cannot answer stops the redrive visibly; nothing is counted unreadable).
    for value in records.iter().filter_map(|r| r.value.as_deref()) {
        context
            .codec
            .prepare(value)
            .await
            .map_err(|e| RedriveError(format!("resolving a letter's schema id: {e}")))?;
    }
    let parked = parked(&context.codec, &records);
    let selected = parked
        .letters
        .iter()
        .filter(|(_, d)| filter.matches(context.stage, d))
        .cloned()
        .collect();
    Ok((parked, selected))
}
