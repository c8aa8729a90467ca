//! The redrive contract every stage that parks implements: its letters, selected from the
//! dead-letter topic by stage, class, corp, key version and time (`letters`), are replayed in
//! this process; each ends moved (its key tombstoned once what replaces it is acknowledged),
//! parked again under the same key (`attempts` + 1), or untouched (a dry run, an interruption);
//! the outcomes are counted by class in a [`RedriveSummary`]. A store or broker that fails
//! stops the redrive with a [`RedriveError`]: nothing is parked for an outage.

use std::future::Future;
use std::pin::Pin;

use wx_codec::DeadLetter;

use crate::letters::RedriveSummary;

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
