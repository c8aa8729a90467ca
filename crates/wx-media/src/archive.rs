//! One media item from WeCom to the bucket: streamed, resumable, verified, idempotent.
//!
//! ```text
//! another task on the same item? -> wait for it (a message delivered twice is downloaded once)
//! row parked?                  -> already parked (its letter was written)
//! object there with its MD5?   -> already stored (row written if missing)
//! checkpoint in the row?       -> resume: upload id, parts, index buffer and MD5 state
//! else                         -> begin (attempt + 1)
//! loop: GetMediaData chunk (per-corp rate limit, retried) -> MD5 state, part buffer
//!       part buffer >= part_size -> UploadPart (Content-MD5) -> checkpoint the row
//! end:  MD5 = md5sum?  no  -> abort the upload, download again (bounded), then park media_md5
//!                      yes -> last part + CompleteMultipartUpload (or one PUT) -> row stored
//! ```
//!
//! Failures are classed: GetMediaData's transient errors, rate limiting and refusals, and every
//! object-store or MySQL failure are retried with capped backoff (shown in health, counted,
//! nothing parked); only a file WeCom says is gone (10010 expired, 10005 bad id, 10000 a bad
//! index) or whose MD5 never matches is parked. A resumed download whose upload or index buffer
//! no longer works begins again from zero.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use md5::Digest as _;
use md5::digest::common::hazmat::{SerializableState, SerializedState};
use tokio_util::sync::CancellationToken;
use wx_codec::ChatMessage;
use wx_codec::media::MediaItem;
use wx_mysql::MessageStore;
use wx_mysql::media::{MediaCheckpoint, MediaRowKey, MediaState};
use wx_runtime::StageHealth;
use wx_runtime::settings::redact_urls;
use wx_s3::Bytes;
use wx_wecom::{MediaChunk, MediaClient, MediaError};

use crate::flow::{self, Begin, Ended, Next, Tries};
use crate::metrics as m;
use wx_runtime::Backoff;
use wx_s3::{ObjectStore, StoreError};

/// Room for one GetMediaData chunk (512 KB) beyond a part in the part buffer.
const CHUNK_ROOM: usize = 1024 * 1024;

/// WeCom says the file is gone for good (expired, deleted).
pub const MEDIA_EXPIRED: &str = "media_expired";
/// WeCom refuses the file as such (not a passing error).
pub const MEDIA_UNAVAILABLE: &str = "media_unavailable";
/// The file's MD5 never matched `md5sum`, however many times it was downloaded.
pub const MEDIA_MD5: &str = "media_md5";
/// The message's corp has no media client configured.
pub const MEDIA_NO_CORP: &str = "media_no_corp";
/// A callback's file (a `MediaId`, fetched with `media/get` within 3 days) of a corp with no
/// `callback_secret`: parked with the message, so it is kept and replayable, never dropped.
pub const MEDIA_CALLBACK: &str = "media_callback";

/// MySQL refuses the item's row (a value its column cannot take, e.g. a msgid over 191
/// characters): the sink's class for the same fault.
pub use wx_mysql::target::STORE_REJECTED;

/// Every class a media item is parked with.
pub const PARK_CLASSES: [&str; 6] = [
    MEDIA_EXPIRED,
    MEDIA_UNAVAILABLE,
    MEDIA_MD5,
    MEDIA_NO_CORP,
    MEDIA_CALLBACK,
    STORE_REJECTED,
];

/// What became of one media item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemOutcome {
    Stored {
        size: u64,
        resumed: bool,
    },
    AlreadyStored,
    /// Parked by an earlier delivery of its record (the letter is on the topic already).
    AlreadyParked,
    Parked {
        class: &'static str,
        cause: String,
    },
}

/// A media item that could not be had, with why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParkedItem {
    pub item: MediaItem,
    pub class: &'static str,
    pub cause: String,
}

impl ParkedItem {
    /// The class and cause of the letter for a record whose `parked` items could not be had
    /// (the first item's class; every item's cause): None when nothing is parked.
    pub fn letter_cause(parked: &[ParkedItem]) -> Option<(&'static str, String)> {
        let first = parked.first()?;
        let cause = parked
            .iter()
            .map(|p| {
                format!(
                    "item {} ({}): {}: {}",
                    p.item.item, p.item.kind, p.class, p.cause
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        Some((first.class, cause))
    }
}

/// How one download attempt ended.
enum Attempt {
    Done {
        size: u64,
        md5: String,
    },
    Md5Mismatch {
        got: String,
    },
    Gone(MediaError),
    /// The multipart upload or the index buffer of a resumed download no longer works.
    Restart(String),
    /// MySQL refuses the item's row, or the object store its object (no upload is left
    /// behind).
    Refused(String),
}

impl Attempt {
    /// An object-store call's refusal: the object's own (parked) or the upload's (begun again).
    fn store_failed(e: StoreError) -> Attempt {
        let text = redact_urls(&e.to_string());
        match e {
            StoreError::Refused(_) => Attempt::Refused(text),
            _ => Attempt::Restart(text),
        }
    }

    /// What the flow's decision needs of it.
    fn ended(&self) -> Ended {
        match self {
            Attempt::Done { .. } => Ended::Done,
            Attempt::Md5Mismatch { .. } => Ended::Md5Mismatch,
            Attempt::Gone(e) => Ended::Gone { code: e.code() },
            Attempt::Restart(_) => Ended::UploadBroke,
            Attempt::Refused(_) => Ended::Refused,
        }
    }

    /// The cause a parked item's letter gives.
    fn cause(self, tries: Tries, want_md5: &str) -> String {
        match self {
            Attempt::Done { .. } => String::new(),
            Attempt::Md5Mismatch { got } => format!(
                "MD5 {got} of the downloaded bytes is not md5sum {want_md5} after {} downloads",
                tries.downloads
            ),
            Attempt::Gone(e) => e.to_string(),
            Attempt::Restart(why) => format!(
                "the object store broke the upload {} times; last: {why}",
                tries.restarts + 1
            ),
            Attempt::Refused(cause) => cause,
        }
    }
}

/// Where a download is.
struct Progress {
    hasher: md5::Md5,
    index: String,
    parts: Vec<(i32, String)>,
    upload_id: Option<String>,
    bytes: u64,
    resumed: bool,
}

impl Progress {
    fn fresh() -> Progress {
        Progress {
            hasher: md5::Md5::new(),
            index: String::new(),
            parts: Vec::new(),
            upload_id: None,
            bytes: 0,
            resumed: false,
        }
    }

    /// From a checkpoint; None when its MD5 state does not read (then begin again).
    fn resumed(checkpoint: MediaCheckpoint) -> Option<Progress> {
        let state = SerializedState::<md5::Md5>::try_from(checkpoint.hasher.as_slice()).ok()?;
        Some(Progress {
            hasher: md5::Md5::deserialize(&state).ok()?,
            index: checkpoint.next_index,
            parts: checkpoint.parts,
            upload_id: Some(checkpoint.upload_id),
            bytes: checkpoint.bytes_done,
            resumed: true,
        })
    }
}

/// What every download shares. Cheap to clone: a task's copy carries the token that stops it
/// ([`Archiver::with_stop`]).
#[derive(Clone)]
pub(crate) struct Archiver {
    pub(crate) store: ObjectStore,
    pub(crate) table: MessageStore,
    clients: HashMap<String, Arc<dyn MediaClient>>,
    /// `media/get`, for callbacks' files (corps with a `callback_secret`).
    callback_clients: HashMap<String, Arc<dyn MediaClient>>,
    limiters: Arc<HashMap<String, DefaultDirectRateLimiter>>,
    key_prefix: String,
    part_size: usize,
    md5_attempts: u32,
    backoff_cap: Duration,
    health: Arc<StageHealth>,
    shutdown: CancellationToken,
    /// The items being archived by this stage, by object key.
    in_progress: Arc<InProgress>,
}

/// The items being archived by this stage, by object key: WeCom delivers some messages twice
/// (both copies can be in flight at once, on the same partition), and a second task on an item
/// waits for the first instead of downloading it beside it; it then finds the object stored.
/// When the first parked the item, the second asks WeCom again and parks it again (the row
/// says parked only once the first's letter is written, after its turn): a second letter, never
/// a second download of a file that was had.
#[derive(Debug, Default)]
pub(crate) struct InProgress(std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>);

/// A task's turn on an item (see [`InProgress`]); the next task's turn begins when it drops.
#[derive(Debug)]
pub(crate) struct ItemTurn {
    set: Arc<InProgress>,
    key: String,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl InProgress {
    /// Waits until no other task of this stage archives `key`.
    pub(crate) async fn enter(self: &Arc<Self>, key: &str) -> ItemTurn {
        let lock = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.to_string())
            .or_default()
            .clone();
        ItemTurn {
            set: self.clone(),
            key: key.to_string(),
            guard: Some(lock.lock_owned().await),
        }
    }

    /// Items with a task on them or waiting.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

impl Drop for ItemTurn {
    fn drop(&mut self) {
        let mut items = self.set.0.lock().unwrap_or_else(|p| p.into_inner());
        drop(self.guard.take());
        // Entrants clone the lock under the map's lock, so no task waits on it once the map's
        // is its only reference.
        if items
            .get(&self.key)
            .is_some_and(|l| Arc::strong_count(l) == 1)
        {
            items.remove(&self.key);
        }
    }
}

/// What [`Archiver::new`] is built from.
pub(crate) struct ArchiverParts {
    pub store: ObjectStore,
    pub table: MessageStore,
    pub clients: HashMap<String, Arc<dyn MediaClient>>,
    pub callback_clients: HashMap<String, Arc<dyn MediaClient>>,
    pub calls_per_minute: u32,
    pub key_prefix: String,
    pub part_size: usize,
    pub md5_attempts: u32,
    pub backoff_cap: Duration,
    pub health: Arc<StageHealth>,
    pub shutdown: CancellationToken,
}

impl Archiver {
    pub(crate) fn new(parts: ArchiverParts) -> Archiver {
        let quota =
            Quota::per_minute(NonZeroU32::new(parts.calls_per_minute).unwrap_or(NonZeroU32::MIN));
        let limiters = parts
            .clients
            .keys()
            .map(|corp| (corp.clone(), RateLimiter::direct(quota)))
            .collect();
        Archiver {
            store: parts.store,
            table: parts.table,
            clients: parts.clients,
            callback_clients: parts.callback_clients,
            limiters: Arc::new(limiters),
            key_prefix: parts.key_prefix,
            part_size: parts.part_size,
            md5_attempts: parts.md5_attempts,
            backoff_cap: parts.backoff_cap,
            health: parts.health,
            shutdown: parts.shutdown,
            in_progress: Arc::default(),
        }
    }

    /// The same archiver, stopped by `stop` instead (a child of its own token: a partition's
    /// downloads stop when the partition is revoked, all of them on shutdown).
    pub(crate) fn with_stop(&self, stop: CancellationToken) -> Archiver {
        Archiver {
            shutdown: stop,
            ..self.clone()
        }
    }

    /// A token that stops what it is given to, and is stopped with this archiver.
    pub(crate) fn child_stop(&self) -> CancellationToken {
        self.shutdown.child_token()
    }

    /// The object key of a message's item.
    pub(crate) fn key_of(&self, message: &ChatMessage, item: u32) -> String {
        format!("{}{}", self.key_prefix, message.media_key(item))
    }

    /// The row of a message's item.
    pub(crate) fn row_of(&self, message: &ChatMessage, item: &MediaItem) -> MediaRowKey {
        MediaRowKey {
            corp_id: message.corp_id.clone(),
            msgid: message.msgid.clone(),
            item: item.item,
            msgtime: message.msgtime,
            kind: item.kind.clone(),
            object_key: self.key_of(message, item.item),
            content_type: item.content_type().to_string(),
            size: item.size,
        }
    }

    /// Waits `delay` unless shutdown comes first (false then).
    async fn pause(&self, delay: Duration) -> bool {
        tokio::select! {
            _ = self.shutdown.cancelled() => false,
            _ = tokio::time::sleep(delay) => true,
        }
    }

    /// Retries `op` on every error (a failing store: shown, counted, nothing parked) with
    /// capped backoff. None on shutdown.
    pub(crate) async fn retry<T, E, F, Fut>(&self, what: &'static str, mut op: F) -> Option<T>
    where
        E: std::fmt::Display,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut backoff = Backoff::new(Duration::from_millis(200), self.backoff_cap);
        loop {
            match op().await {
                Ok(value) => {
                    self.health.recovered(what);
                    return Some(value);
                }
                Err(e) => {
                    let e = redact_urls(&e.to_string());
                    metrics::counter!(m::RETRIES, "what" => what).increment(1);
                    let delay = backoff.next_delay();
                    tracing::warn!(store = what, error = %e, retry_in = ?delay, "A media store call failed; retrying.");
                    self.health.failing(what, &e);
                    if !self.pause(delay).await {
                        return None;
                    }
                }
            }
        }
    }

    /// Retries an object-store call while the store is unavailable; other refusals are
    /// returned. None on shutdown.
    async fn store_call<T, F, Fut>(&self, mut op: F) -> Option<Result<T, StoreError>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        self.retry("store", || {
            let call = op();
            async move {
                match call.await {
                    Err(StoreError::Unavailable(e)) => Err(e),
                    other => Ok(other),
                }
            }
        })
        .await
    }

    /// A write of one item's row: retried while MySQL is unwell (shown, counted, nothing
    /// parked); Err(cause) when MySQL refuses the row itself (`refuses_rows`: a value its
    /// column cannot take), which no retry cures. None on shutdown.
    async fn row_write<F, Fut>(&self, mut op: F) -> Option<Result<(), String>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<(), wx_mysql::MysqlError>>,
    {
        self.retry("mysql", || {
            let call = op();
            async move {
                match call.await {
                    Err(e) if wx_mysql::refuses_rows(&e) => Ok(Err(redact_urls(&e.to_string()))),
                    other => other.map(Ok),
                }
            }
        })
        .await
    }

    /// One GetMediaData chunk, under the corp's rate limit; transient errors, rate limiting
    /// and refusals retried. Err only for a file that is gone. None on shutdown.
    async fn chunk(
        &self,
        corp: &str,
        client: &dyn MediaClient,
        sdkfileid: &str,
        index: &str,
    ) -> Option<Result<MediaChunk, MediaError>> {
        let mut backoff = Backoff::new(Duration::from_millis(200), self.backoff_cap);
        loop {
            if let Some(limiter) = self.limiters.get(corp) {
                tokio::select! {
                    _ = self.shutdown.cancelled() => return None,
                    _ = limiter.until_ready() => {}
                }
            }
            let result = tokio::select! {
                _ = self.shutdown.cancelled() => return None,
                result = client.get_media_chunk(sdkfileid, index) => result,
            };
            match result {
                Ok(chunk) => {
                    metrics::counter!(m::CHUNKS).increment(1);
                    self.health.recovered("wecom");
                    return Some(Ok(chunk));
                }
                Err(e @ MediaError::Gone { .. }) => return Some(Err(e)),
                Err(e) => {
                    metrics::counter!(m::RETRIES, "what" => "wecom").increment(1);
                    let delay = backoff.next_delay();
                    tracing::warn!(corp, code = e.code(), error = %e, retry_in = ?delay, "GetMediaData failed; retrying.");
                    self.health.failing("wecom", &e);
                    if !self.pause(delay).await {
                        return None;
                    }
                }
            }
        }
    }

    /// Archives one media item of `message`. None when shutdown interrupted it (its record
    /// stays unfinished; the checkpoint lets the next owner resume).
    pub(crate) async fn archive(
        &self,
        message: &ChatMessage,
        item: &MediaItem,
    ) -> Option<ItemOutcome> {
        let (clients, no_client) = match item.callback_media_id {
            Some(_) => (&self.callback_clients, MEDIA_CALLBACK),
            None => (&self.clients, MEDIA_NO_CORP),
        };
        let Some(client) = clients.get(&message.corp_id) else {
            return Some(ItemOutcome::Parked {
                class: no_client,
                cause: match no_client {
                    MEDIA_CALLBACK => format!(
                        "a callback's file is a MediaId, fetched with media/get under the token of the app receiving corp {}'s callbacks, which has no `callback_secret` (settings.corps); the letter keeps the message for a redrive within the file's 3 days",
                        message.corp_id
                    ),
                    _ => format!(
                        "corp {} is not configured for media (settings.corps)",
                        message.corp_id
                    ),
                },
            });
        };
        let row = self.row_of(message, item);
        let _turn = tokio::select! {
            _ = self.shutdown.cancelled() => return None,
            turn = self.in_progress.enter(&row.object_key) => turn,
        };
        let state = self
            .retry("mysql", || {
                self.table.media_state(&row.corp_id, &row.msgid, row.item)
            })
            .await?;
        if matches!(state, MediaState::Parked { .. }) {
            return Some(ItemOutcome::AlreadyParked);
        }
        // Idempotent: an object already stored with the right MD5 is not downloaded again.
        let stored = matches!(state, MediaState::Stored { .. });
        if self.already_stored(&row, item, stored).await? {
            return Some(ItemOutcome::AlreadyStored);
        }
        let (downloads, mut checkpoint) = match state {
            MediaState::Downloading {
                attempts,
                checkpoint,
            } => (attempts, checkpoint),
            _ => (0, None),
        };
        let mut tries = Tries {
            downloads,
            restarts: 0,
            resumed: false,
            md5_attempts: self.md5_attempts,
        };
        let started = Instant::now();
        loop {
            let checkpoint = checkpoint.take();
            let readable = checkpoint.as_ref().map(|cp| Progress::resumed(cp.clone()));
            let progress = match (
                flow::begin(readable.as_ref().map(Option::is_some)),
                readable,
            ) {
                (Begin::Resume, Some(Some(progress))) => {
                    metrics::counter!(m::RESUMED).increment(1);
                    tracing::info!(
                        bytes = progress.bytes,
                        parts = progress.parts.len(),
                        "Resuming a media download from its last stored part."
                    );
                    progress
                }
                (begin, _) => {
                    if begin == Begin::AbortThenFresh {
                        // A checkpoint that does not read: its upload goes, the file begins again.
                        let upload_id = checkpoint.map(|cp| cp.upload_id);
                        self.abort(&row.object_key, upload_id.as_deref()).await?;
                    }
                    // The row is written when the first part is (a file of one part needs no
                    // checkpoint: one write of its row once stored).
                    tries.downloads += 1;
                    Progress::fresh()
                }
            };
            tries.resumed = progress.resumed;
            metrics::gauge!(m::IN_FLIGHT).increment(1.0);
            let attempt = self
                .download(&message.corp_id, client.as_ref(), item, &row, progress)
                .await;
            metrics::gauge!(m::IN_FLIGHT).decrement(1.0);
            let attempt = attempt?;
            match flow::after(attempt.ended(), tries) {
                Next::Record => {
                    let Attempt::Done { size, md5 } = attempt else {
                        unreachable!("only a finished download is recorded");
                    };
                    if let Err(cause) = self
                        .row_write(|| self.table.media_stored(&row, size, &md5))
                        .await?
                    {
                        return Some(ItemOutcome::Parked {
                            class: STORE_REJECTED,
                            cause,
                        });
                    }
                    metrics::counter!(m::BYTES_STORED).increment(size);
                    metrics::counter!(m::OBJECTS_STORED).increment(1);
                    metrics::histogram!(m::DOWNLOAD_SECONDS)
                        .record(started.elapsed().as_secs_f64());
                    return Some(ItemOutcome::Stored {
                        size,
                        resumed: tries.resumed,
                    });
                }
                Next::Park(class) => {
                    let want = item.md5sum.as_deref().unwrap_or_default();
                    return Some(ItemOutcome::Parked {
                        class,
                        cause: attempt.cause(tries, want),
                    });
                }
                Next::Again => match attempt {
                    Attempt::Md5Mismatch { .. } => {
                        metrics::counter!(m::MD5_RETRIES).increment(1);
                        tracing::warn!(
                            attempts = tries.downloads,
                            "A media file's MD5 did not match md5sum; downloading it again."
                        );
                    }
                    Attempt::Gone(e) => {
                        tracing::warn!(error = %e, "A resumed media download was refused; beginning it again.");
                    }
                    _ => {}
                },
                Next::LookThenAgain => {
                    if self.already_stored(&row, item, false).await? {
                        return Some(ItemOutcome::AlreadyStored);
                    }
                    tries.restarts += 1;
                    if let Attempt::Restart(why) = attempt {
                        tracing::warn!(reason = %why, "A media download's upload broke; beginning it again.");
                    }
                }
            }
        }
    }

    /// Archives every item of `message`, in order; returns the ones that could not be had
    /// (their letter and rows are the caller's). None on shutdown.
    pub(crate) async fn archive_all(
        &self,
        message: &ChatMessage,
        items: &[MediaItem],
    ) -> Option<Vec<ParkedItem>> {
        let mut parked = Vec::new();
        for item in items {
            let outcome = self.archive(message, item).await?;
            let label = match &outcome {
                ItemOutcome::Stored { .. } => "stored",
                ItemOutcome::AlreadyStored => "already_stored",
                ItemOutcome::AlreadyParked | ItemOutcome::Parked { .. } => "parked",
            };
            metrics::counter!(m::ITEMS, "outcome" => label).increment(1);
            if let ItemOutcome::Parked { class, cause } = outcome {
                parked.push(ParkedItem {
                    item: item.clone(),
                    class,
                    cause,
                });
            }
        }
        Some(parked)
    }

    /// Writes the rows of `parked` items as parked (once their letter is on the topic), and
    /// counts them. None on shutdown.
    pub(crate) async fn mark_parked(
        &self,
        message: &ChatMessage,
        parked: &[ParkedItem],
    ) -> Option<()> {
        for p in parked {
            metrics::counter!(m::DEAD_LETTERED, "class" => p.class).increment(1);
            let row = self.row_of(message, &p.item);
            let text = format!("{}: {}", p.class, p.cause);
            if let Err(cause) = self
                .row_write(|| self.table.media_parked(&row, &text))
                .await?
            {
                // The letter is on the topic already: it is the record of this item.
                tracing::error!(class = p.class, error = %cause, "MySQL refuses a parked media item's row; its letter stands for it.");
            }
        }
        Some(())
    }

    /// Makes a message's parked items downloadable again (redrive): their rows are removed, so
    /// the next [`Archiver::archive_all`] tries them. None on shutdown.
    pub(crate) async fn unpark(&self, message: &ChatMessage, items: &[MediaItem]) -> Option<()> {
        for item in items {
            let row = self.row_of(message, item);
            self.retry("mysql", || self.table.media_unpark(&row))
                .await?;
        }
        Some(())
    }

    /// Whether the item's object is in the bucket with the MD5 WeCom states (with none stated:
    /// whether its row already says `stored`); the row is written `stored` if it does not say so
    /// yet. None on shutdown.
    async fn already_stored(
        &self,
        row: &MediaRowKey,
        item: &MediaItem,
        row_says_stored: bool,
    ) -> Option<bool> {
        let existing = match self.store_call(|| self.store.head(&row.object_key)).await? {
            Ok(existing) => existing,
            Err(e) => {
                tracing::warn!(error = %e, "HEAD of a media object was refused; downloading it.");
                None
            }
        };
        let Some(existing) = existing else {
            return Some(false);
        };
        let verified = match (&item.md5sum, &existing.md5) {
            (Some(want), Some(have)) => want == have,
            (None, _) => row_says_stored,
            _ => false,
        };
        if verified && !row_says_stored {
            let md5 = existing.md5.clone().unwrap_or_default();
            if let Err(cause) = self
                .row_write(|| self.table.media_stored(row, existing.size, &md5))
                .await?
            {
                // The object is stored and verified; only its row cannot say so.
                tracing::error!(error = %cause, "MySQL refuses a stored media item's row; the object stands.");
            }
        }
        Some(verified)
    }

    /// Aborts an upload (retried while the store is unavailable), so no incomplete upload is
    /// left behind. None on shutdown.
    async fn abort(&self, key: &str, upload_id: Option<&str>) -> Option<()> {
        if let Some(id) = upload_id
            && let Err(e) = self.store_call(|| self.store.abort_upload(key, id)).await?
        {
            tracing::warn!(error = %e, "Aborting a multipart upload was refused.");
        }
        Some(())
    }

    /// One download attempt from `progress` to the end of the file. None on shutdown.
    async fn download(
        &self,
        corp: &str,
        client: &dyn MediaClient,
        item: &MediaItem,
        row: &MediaRowKey,
        mut progress: Progress,
    ) -> Option<Attempt> {
        let key = row.object_key.as_str();
        let want = item.md5sum.as_deref().unwrap_or_default();
        // Room for the file as stated (at most a part) and one chunk: a small file does not
        // reserve a whole part.
        let stated = item
            .size
            .and_then(|s| usize::try_from(s).ok())
            .unwrap_or(self.part_size);
        let mut buffer: Vec<u8> = Vec::with_capacity(stated.min(self.part_size) + CHUNK_ROOM);
        let mut idle_chunks = 0u32;
        loop {
            let chunk = match self
                .chunk(corp, client, item.file_id(), &progress.index)
                .await?
            {
                Ok(chunk) => chunk,
                Err(e) => {
                    self.abort(key, progress.upload_id.as_deref()).await?;
                    return Some(Attempt::Gone(e));
                }
            };
            progress.hasher.update(&chunk.data);
            progress.bytes += chunk.data.len() as u64;
            idle_chunks = if chunk.data.is_empty() {
                idle_chunks + 1
            } else {
                0
            };
            buffer.extend_from_slice(&chunk.data);
            progress.index = chunk.out_index;
            if chunk.is_finish {
                break;
            }
            if idle_chunks > 20 {
                self.abort(key, progress.upload_id.as_deref()).await?;
                return Some(Attempt::Gone(MediaError::Gone {
                    code: 10000,
                    message: "GetMediaData returned empty chunks without finishing".into(),
                }));
            }
            if buffer.len() >= self.part_size {
                let body =
                    std::mem::replace(&mut buffer, Vec::with_capacity(self.part_size + CHUNK_ROOM));
                if let Err(halt) = self.store_part(row, want, &mut progress, body).await? {
                    return Some(halt);
                }
                let checkpoint = MediaCheckpoint {
                    upload_id: progress.upload_id.clone().unwrap_or_default(),
                    parts: progress.parts.clone(),
                    next_index: progress.index.clone(),
                    hasher: progress.hasher.serialize().to_vec(),
                    bytes_done: progress.bytes,
                };
                if let Err(cause) = self
                    .row_write(|| self.table.media_checkpoint(row, &checkpoint))
                    .await?
                {
                    self.abort(key, progress.upload_id.as_deref()).await?;
                    return Some(Attempt::Refused(cause));
                }
            }
        }
        let digest = progress.hasher.clone().finalize();
        let md5 = hex::encode(digest);
        if !want.is_empty() && md5 != want {
            self.abort(key, progress.upload_id.as_deref()).await?;
            return Some(Attempt::Md5Mismatch { got: md5 });
        }
        let size = progress.bytes;
        match progress.upload_id.clone() {
            None => {
                let body = Bytes::from(buffer);
                let put = self
                    .store_call(|| {
                        self.store
                            .put(key, body.clone(), &row.content_type, &md5, &digest)
                    })
                    .await?;
                if let Err(e) = put {
                    return Some(Attempt::store_failed(e));
                }
            }
            Some(upload_id) => {
                if (!buffer.is_empty() || progress.parts.is_empty())
                    && let Err(halt) = self.store_part(row, want, &mut progress, buffer).await?
                {
                    return Some(halt);
                }
                let parts = progress.parts.clone();
                let completed = self
                    .store_call(|| self.store.complete_upload(key, &upload_id, &parts))
                    .await?;
                if let Err(e) = completed {
                    self.abort(key, Some(&upload_id)).await?;
                    return Some(Attempt::store_failed(e));
                }
            }
        }
        Some(Attempt::Done { size, md5 })
    }

    /// Uploads `body` as the next part (beginning the multipart upload if none is under way).
    /// Err with how the attempt ends when the upload is gone (`Restart`) or MySQL refuses the
    /// row (`Refused`); None on shutdown.
    async fn store_part(
        &self,
        row: &MediaRowKey,
        want: &str,
        progress: &mut Progress,
        body: Vec<u8>,
    ) -> Option<Result<(), Attempt>> {
        let key = row.object_key.as_str();
        let upload_id = match progress.upload_id.clone() {
            Some(id) => id,
            None => {
                // The row becomes this download's checkpoint from its first part on.
                if let Err(cause) = self.row_write(|| self.table.media_begin(row)).await? {
                    return Some(Err(Attempt::Refused(cause)));
                }
                let begun = self
                    .store_call(|| self.store.begin_upload(key, &row.content_type, want))
                    .await?;
                let id = match begun {
                    Ok(id) => id,
                    Err(e) => return Some(Err(Attempt::store_failed(e))),
                };
                // Named in the row before any part goes, so a crash from here on leaves no
                // upload that nothing aborts.
                let named = MediaCheckpoint::begun(&id);
                if let Err(cause) = self
                    .row_write(|| self.table.media_checkpoint(row, &named))
                    .await?
                {
                    self.abort(key, Some(&id)).await?;
                    return Some(Err(Attempt::Refused(cause)));
                }
                progress.upload_id = Some(id.clone());
                id
            }
        };
        let body = Bytes::from(body);
        let number = i32::try_from(progress.parts.len() + 1).unwrap_or(i32::MAX);
        let mut sends = 0;
        loop {
            sends += 1;
            let stored = self
                .store_call(|| {
                    self.store
                        .upload_part(key, &upload_id, number, body.clone())
                })
                .await?;
            match stored {
                Ok(etag) => {
                    progress.parts.push((number, etag));
                    return Some(Ok(()));
                }
                // Damaged on the way: the part alone goes again, a few times.
                Err(StoreError::BadDigest(e)) if sends < flow::PART_SENDS => {
                    metrics::counter!(m::RETRIES, "what" => "part_digest").increment(1);
                    tracing::warn!(error = %redact_urls(&e), part = number, "The object store refused a part as damaged; sending it again.");
                }
                Err(e) => {
                    self.abort(key, Some(&upload_id)).await?;
                    return Some(Err(Attempt::store_failed(e)));
                }
            }
        }
    }
}

/// The stage's unavoidable work per byte, measured on this machine (`wxstream bench media`'s
/// floor): MD5 over `total_bytes` in the stage's chunks (GetMediaData's 512 KB) and one copy of
/// each chunk into a part buffer, on one thread. CPU seconds per GiB (the thread is busy
/// throughout, so its wall time is its CPU time).
pub fn md5_and_copy_seconds_per_gib(total_bytes: usize) -> f64 {
    const CHUNK: usize = 512 * 1024;
    let chunk: Vec<u8> = (0..CHUNK).map(|i| (i * 31 % 251) as u8).collect();
    let mut part = Vec::with_capacity(8 * 1024 * 1024);
    let mut md5 = md5::Md5::new();
    let start = std::time::Instant::now();
    let mut done = 0;
    while done < total_bytes {
        md5.update(&chunk);
        if part.len() + CHUNK > part.capacity() {
            part.clear();
        }
        part.extend_from_slice(&chunk);
        std::hint::black_box(&part);
        done += CHUNK;
    }
    std::hint::black_box(md5.finalize());
    start.elapsed().as_secs_f64() / (done as f64 / (1024.0 * 1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two tasks on one item take turns (the second begins when the first's turn ends), tasks
    /// on other items do not wait, and nothing is left behind.
    #[tokio::test]
    async fn tasks_on_one_item_take_turns_and_others_do_not_wait() {
        let set = Arc::new(InProgress::default());
        let first = set.enter("corp/a/0").await;
        let other = tokio::time::timeout(Duration::from_secs(1), set.enter("corp/b/0"))
            .await
            .expect("another item does not wait");
        let waiting = tokio::spawn({
            let set = set.clone();
            async move { set.enter("corp/a/0").await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiting.is_finished(), "the second task on an item waits");
        drop(first);
        let second = tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("its turn comes when the first's ends")
            .expect("join");
        assert_eq!(set.len(), 2);
        drop((second, other));
        assert_eq!(set.len(), 0, "no item is kept once every turn ended");
    }
}
