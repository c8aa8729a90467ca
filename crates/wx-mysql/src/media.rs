//! The `media` table (migration 3): one row per media item, the media stage's checkpoint while
//! its download runs and the record of where the object is once stored (or why it is parked).
//! The media stage writes it; the schema is the one migration history of this adapter.

use sqlx::Row;

use crate::store::{MessageStore, text, within};

/// Which media item a row is about, and what is known of it before it is downloaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaRowKey {
    pub corp_id: String,
    pub msgid: String,
    pub item: u32,
    pub msgtime: i64,
    pub kind: String,
    pub object_key: String,
    pub content_type: String,
    /// The size WeCom states, if any.
    pub size: Option<u64>,
}

/// Where a running download is: what is durably in the multipart upload, and where to
/// continue. Written when the upload begins ([`MediaCheckpoint::begun`]) and after each part is
/// stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaCheckpoint {
    pub upload_id: String,
    /// Part numbers and ETags stored so far, in order.
    pub parts: Vec<(i32, String)>,
    /// The GetMediaData index buffer to continue from.
    pub next_index: String,
    /// The MD5 state of the bytes in `parts`.
    pub hasher: Vec<u8>,
    pub bytes_done: u64,
}

impl MediaCheckpoint {
    /// The checkpoint of a multipart upload just begun, before its first part is stored: it
    /// names the upload and nothing to resume from (no MD5 state), so a download that finds it
    /// after a crash aborts that upload and begins again. Without it a crash between
    /// `CreateMultipartUpload` and the first part's checkpoint left an upload no row named and
    /// nothing aborted (`../shared/reviews/audit-2026-12.md` M6).
    pub fn begun(upload_id: &str) -> MediaCheckpoint {
        MediaCheckpoint {
            upload_id: upload_id.to_string(),
            parts: Vec::new(),
            next_index: String::new(),
            hasher: Vec::new(),
            bytes_done: 0,
        }
    }
}

/// A row's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaState {
    /// No row: never begun.
    Absent,
    /// Begun `attempts` times; `checkpoint` when a multipart upload is under way.
    Downloading {
        attempts: u32,
        checkpoint: Option<MediaCheckpoint>,
    },
    Stored {
        size: u64,
        md5: String,
    },
    Parked {
        cause: String,
    },
}

/// One row, as tests and the demo's reconciliation read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaRow {
    pub corp_id: String,
    pub msgid: String,
    pub item: u32,
    pub object_key: String,
    pub status: String,
    pub size: Option<u64>,
    pub md5: Option<String>,
    pub cause: Option<String>,
    pub content_type: String,
    pub attempts: u32,
}

fn opt_text(bytes: Option<Vec<u8>>) -> Option<String> {
    bytes.map(text)
}

/// A column's length limit, cut at a character boundary (a cause is for people; the letter
/// on the dead-letter topic has it whole).
fn bounded(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The query with the row's own columns bound, in the order every INSERT below names them:
/// corp_id, msgid, item, msgtime, kind, object_key, content_type.
fn bind_row<'q>(
    query: sqlx::query::Query<'q, sqlx::MySql, sqlx::mysql::MySqlArguments>,
    key: &'q MediaRowKey,
) -> sqlx::query::Query<'q, sqlx::MySql, sqlx::mysql::MySqlArguments> {
    query
        .bind(&key.corp_id)
        .bind(&key.msgid)
        .bind(key.item)
        .bind(key.msgtime)
        .bind(&key.kind)
        .bind(&key.object_key)
        .bind(&key.content_type)
}

impl MessageStore {
    /// The state of one media item.
    pub async fn media_state(
        &self,
        corp_id: &str,
        msgid: &str,
        item: u32,
    ) -> Result<MediaState, sqlx::Error> {
        let row = within(
            self.timeout(),
            sqlx::query(
                "SELECT status, attempts, size, md5, cause, upload_id, parts, next_index, hasher, \
             bytes_done FROM media WHERE corp_id = ? AND msgid = ? AND item = ?",
            )
            .bind(corp_id)
            .bind(msgid)
            .bind(item)
            .fetch_optional(self.pool()),
        )
        .await?;
        let Some(row) = row else {
            return Ok(MediaState::Absent);
        };
        let status = text(row.try_get(0)?);
        Ok(match status.as_str() {
            "stored" => MediaState::Stored {
                size: u64::try_from(row.try_get::<Option<i64>, _>(2)?.unwrap_or(0)).unwrap_or(0),
                md5: opt_text(row.try_get(3)?).unwrap_or_default(),
            },
            "parked" => MediaState::Parked {
                cause: opt_text(row.try_get(4)?).unwrap_or_default(),
            },
            _ => {
                let upload_id = opt_text(row.try_get(5)?);
                let parts: Option<String> = opt_text(row.try_get(6)?);
                let checkpoint = match (upload_id, parts) {
                    (Some(upload_id), Some(parts)) => Some(match serde_json::from_str(&parts) {
                        Ok(parts) => MediaCheckpoint {
                            upload_id,
                            parts,
                            next_index: opt_text(row.try_get(7)?).unwrap_or_default(),
                            hasher: row.try_get::<Option<Vec<u8>>, _>(8)?.unwrap_or_default(),
                            bytes_done: u64::try_from(row.try_get::<i64, _>(9)?).unwrap_or(0),
                        },
                        // A checkpoint whose parts do not read cannot be resumed: its upload is
                        // aborted and the file begins again (as after a crash before its first
                        // part), rather than the row being read again for ever.
                        Err(e) => {
                            tracing::warn!(error = %e, "A media checkpoint's parts do not read; the file begins again.");
                            MediaCheckpoint::begun(&upload_id)
                        }
                    }),
                    _ => None,
                };
                MediaState::Downloading {
                    attempts: u32::try_from(row.try_get::<i32, _>(1)?).unwrap_or(0),
                    checkpoint,
                }
            }
        })
    }

    /// Records that a download of the item begins (from zero: any earlier checkpoint is
    /// cleared, and the attempt counted).
    pub async fn media_begin(&self, key: &MediaRowKey) -> Result<(), sqlx::Error> {
        within(
            self.timeout(),
            bind_row(
            sqlx::query(
                "INSERT INTO media (corp_id, msgid, item, msgtime, kind, object_key, content_type, \
                 size, status, attempts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'downloading', 1) \
                 ON DUPLICATE KEY UPDATE status = 'downloading', attempts = attempts + 1, \
                 upload_id = NULL, parts = NULL, next_index = NULL, hasher = NULL, bytes_done = 0, \
                 cause = NULL, md5 = NULL, stored_at = NULL",
            ),
            key,
        )
        .bind(key.size.and_then(|s| i64::try_from(s).ok()))
        .execute(self.pool()),
        )
        .await?;
        Ok(())
    }

    /// Writes a running download's checkpoint (after a part is stored).
    pub async fn media_checkpoint(
        &self,
        key: &MediaRowKey,
        checkpoint: &MediaCheckpoint,
    ) -> Result<(), sqlx::Error> {
        let parts = serde_json::to_string(&checkpoint.parts)
            .map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
        within(
            self.timeout(),
            sqlx::query(
                "UPDATE media SET upload_id = ?, parts = ?, next_index = ?, hasher = ?, \
             bytes_done = ? WHERE corp_id = ? AND msgid = ? AND item = ?",
            )
            .bind(&checkpoint.upload_id)
            .bind(parts)
            .bind(&checkpoint.next_index)
            .bind(&checkpoint.hasher)
            .bind(i64::try_from(checkpoint.bytes_done).unwrap_or(i64::MAX))
            .bind(&key.corp_id)
            .bind(&key.msgid)
            .bind(key.item)
            .execute(self.pool()),
        )
        .await?;
        Ok(())
    }

    /// Records the item as stored (idempotent: a row may already say so).
    pub async fn media_stored(
        &self,
        key: &MediaRowKey,
        size: u64,
        md5: &str,
    ) -> Result<(), sqlx::Error> {
        within(
            self.timeout(),
            bind_row(
            sqlx::query(
                "INSERT INTO media (corp_id, msgid, item, msgtime, kind, object_key, content_type, \
                 size, md5, status, stored_at) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'stored', CURRENT_TIMESTAMP(3)) \
                 ON DUPLICATE KEY UPDATE status = 'stored', size = VALUES(size), md5 = VALUES(md5), \
                 object_key = VALUES(object_key), cause = NULL, upload_id = NULL, parts = NULL, \
                 next_index = NULL, hasher = NULL, \
                 stored_at = COALESCE(stored_at, CURRENT_TIMESTAMP(3))",
            ),
            key,
        )
        .bind(i64::try_from(size).unwrap_or(i64::MAX))
        .bind(md5)
        .execute(self.pool()),
        )
        .await?;
        Ok(())
    }

    /// Records the item as parked with its cause (its reference is on the dead-letter topic).
    pub async fn media_parked(&self, key: &MediaRowKey, cause: &str) -> Result<(), sqlx::Error> {
        within(
            self.timeout(),
            bind_row(
            sqlx::query(
                "INSERT INTO media (corp_id, msgid, item, msgtime, kind, object_key, content_type, \
                 size, status, cause) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'parked', ?) \
                 ON DUPLICATE KEY UPDATE status = 'parked', cause = VALUES(cause), \
                 upload_id = NULL, parts = NULL, next_index = NULL, hasher = NULL",
            ),
            key,
        )
        .bind(key.size.and_then(|s| i64::try_from(s).ok()))
        .bind(bounded(cause, 1024))
        .execute(self.pool()),
        )
        .await?;
        Ok(())
    }

    /// Removes the row of a parked item, so it is downloaded again (redrive). A row in any
    /// other state is left alone.
    pub async fn media_unpark(&self, key: &MediaRowKey) -> Result<(), sqlx::Error> {
        within(
            self.timeout(),
            sqlx::query(
            "DELETE FROM media WHERE corp_id = ? AND msgid = ? AND item = ? AND status = 'parked'",
        )
        .bind(&key.corp_id)
        .bind(&key.msgid)
        .bind(key.item)
        .execute(self.pool()),
        )
        .await?;
        Ok(())
    }

    /// Every media row (tests, the demo's reconciliation, `bench media`).
    pub async fn media_rows(&self) -> Result<Vec<MediaRow>, sqlx::Error> {
        self.media_rows_where(None).await
    }

    /// The rows of `corp`'s media.
    pub async fn media_rows_of(&self, corp: &str) -> Result<Vec<MediaRow>, sqlx::Error> {
        self.media_rows_where(Some(corp)).await
    }

    async fn media_rows_where(&self, corp: Option<&str>) -> Result<Vec<MediaRow>, sqlx::Error> {
        let rows = within(
            self.timeout(),
            sqlx::query(
                "SELECT corp_id, msgid, item, object_key, status, size, md5, cause, content_type, \
             attempts FROM media WHERE ? IS NULL OR corp_id = ?",
            )
            .bind(corp)
            .bind(corp)
            .fetch_all(self.pool()),
        )
        .await?;
        rows.iter()
            .map(|r| {
                Ok(MediaRow {
                    corp_id: text(r.try_get(0)?),
                    msgid: text(r.try_get(1)?),
                    item: r.try_get(2)?,
                    object_key: text(r.try_get(3)?),
                    status: text(r.try_get(4)?),
                    size: r
                        .try_get::<Option<i64>, _>(5)?
                        .and_then(|s| u64::try_from(s).ok()),
                    md5: opt_text(r.try_get(6)?),
                    cause: opt_text(r.try_get(7)?),
                    content_type: text(r.try_get(8)?),
                    attempts: u32::try_from(r.try_get::<i32, _>(9)?).unwrap_or(0),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn causes_are_cut_at_a_character_boundary() {
        assert_eq!(super::bounded("数据过期", 4), "数");
        assert_eq!(super::bounded("ok", 10), "ok");
    }
}
