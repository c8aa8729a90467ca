//! Daily digests of what the archive holds: for one corp and one UTC day (by `msgtime`), a
//! SHA-256 over its messages in msgid order. Written to the audit log once the day is complete
//! (`wxstream digest run`), recomputed by `wxstream verify`.
//!
//! A message's part of the digest is what WeCom sent and decryption made of it, not where or when
//! it was stored: msgid, msgtime, action, msgtype, sender, receivers, roomid, conversation_id,
//! is_external, text, payload, extra, recalled_msgid, publickey_ver and seq, as one JSON array
//! per message followed by a newline. Replays (which may come from other offsets) and the recall
//! mark a later recall sets (`recalled_by`) leave it unchanged.

use sha2::Digest;
use sqlx::Row;

use crate::store::{MessageStore, text, within};

/// Milliseconds in a UTC day.
pub const DAY_MS: i64 = 86_400_000;

/// A day's digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DayDigest {
    pub messages: u64,
    /// Lower-case hex.
    pub sha256: String,
}

impl MessageStore {
    /// The corps that have messages.
    pub async fn corps(&self) -> Result<Vec<String>, sqlx::Error> {
        let rows = within(
            self.timeout(),
            sqlx::query("SELECT DISTINCT corp_id FROM messages ORDER BY corp_id")
                .fetch_all(self.pool()),
        )
        .await?;
        rows.iter().map(|r| Ok(text(r.try_get(0)?))).collect()
    }

    /// The first day (days since the epoch, UTC) at or after `from_day` and before `to_day` on
    /// which `corp` has a message.
    pub async fn next_day_with_messages(
        &self,
        corp: &str,
        from_day: i64,
        to_day: i64,
    ) -> Result<Option<i64>, sqlx::Error> {
        let first: Option<i64> = within(
            self.timeout(),
            sqlx::query_scalar(
                "SELECT MIN(msgtime) FROM messages WHERE corp_id = ? AND msgtime >= ? AND msgtime < ?",
            )
            .bind(corp)
            .bind(from_day.saturating_mul(DAY_MS))
            .bind(to_day.saturating_mul(DAY_MS))
            .fetch_one(self.pool()),
        )
        .await?;
        Ok(first.map(|ms| ms.div_euclid(DAY_MS)))
    }

    /// The digest of `corp`'s messages of `day` (days since the epoch, UTC).
    pub async fn day_digest(&self, corp: &str, day: i64) -> Result<DayDigest, sqlx::Error> {
        let rows = within(
            self.timeout(),
            sqlx::query(
                "SELECT msgid, msgtime, action, msgtype, sender, receivers, roomid, conversation_id, \
                 is_external, text, payload, extra, recalled_msgid, publickey_ver, seq \
                 FROM messages WHERE corp_id = ? AND msgtime >= ? AND msgtime < ? ORDER BY msgid, msgtime",
            )
            .bind(corp)
            .bind(day * DAY_MS)
            .bind((day + 1) * DAY_MS)
            .fetch_all(self.pool()),
        )
        .await?;
        let mut hasher = sha2::Sha256::new();
        for r in &rows {
            let opt = |i: usize| -> Result<Option<String>, sqlx::Error> {
                Ok(r.try_get::<Option<Vec<u8>>, _>(i)?.map(text))
            };
            let line = serde_json::json!([
                text(r.try_get(0)?),
                r.try_get::<i64, _>(1)?,
                text(r.try_get(2)?),
                text(r.try_get(3)?),
                text(r.try_get(4)?),
                text(r.try_get(5)?),
                text(r.try_get(6)?),
                text(r.try_get(7)?),
                r.try_get::<bool, _>(8)?,
                opt(9)?,
                text(r.try_get(10)?),
                opt(11)?,
                opt(12)?,
                r.try_get::<Option<i32>, _>(13)?,
                r.try_get::<Option<i64>, _>(14)?,
            ]);
            hasher.update(line.to_string().as_bytes());
            hasher.update(b"\n");
        }
        Ok(DayDigest {
            messages: rows.len() as u64,
            sha256: hex::encode(hasher.finalize()),
        })
    }
}
