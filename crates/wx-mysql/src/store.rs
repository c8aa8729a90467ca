//! MySQL (and MariaDB): versioned migrations, monthly partitions created ahead, and batched
//! idempotent writes.
//!
//! One transaction per batch: multi-row upserts of the messages (keyed by corp, msgid and msgtime,
//! so a replay overwrites a row with the same content and two corps never share one), the recalls, the recall marks (applied both
//! ways, so a recall that arrives before its message still marks it), and the rooms and members
//! with first-seen / last-active moved only forward (`LEAST` / `GREATEST`).

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;
use std::time::Duration;

use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions};
use sqlx::{ConnectOptions, Connection, Executor, MySql, QueryBuilder, Row};
use wx_codec::ChatMessage;

use wx_codec::months::Month;

/// Rows per INSERT statement (well under the 65,535 placeholders of one statement).
const ROWS_PER_STATEMENT: usize = 500;

/// MySQL (and MariaDB) error numbers that are about the rows written, whatever the server's
/// state: a value the column refuses (1048 null, 1264 out of range, 1265 truncated, 1292 bad
/// datetime, 1366/1367 bad string, 1406 too long, 3140 invalid JSON, 4025 a CHECK constraint).
const ROW_REFUSED: [u16; 9] = [1048, 1264, 1265, 1292, 1366, 1367, 1406, 3140, 4025];

/// Whether an error is about the rows written (park them, one by one) rather than the store
/// (retry with backoff, paused and shown as failing, parking nothing). Only the value errors of
/// [`ROW_REFUSED`] are the data's fault: credentials, permissions (1044, 1045, 1142), a missing
/// table or database (1146, 1049), a full table or disk (1114, 1021), a read-only server (1036,
/// 1290), lost connections, deadlocks and every error this list does not know are the store's,
/// because parking good rows while the store is misconfigured would move them out of it for good.
pub fn refuses_rows(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db
            .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
            .is_some_and(|e| ROW_REFUSED.contains(&e.number())),
        _ => false,
    }
}

/// A binary-collated column's text (sqlx hands `utf8mb4_bin` columns over as bytes).
pub(crate) fn text(bytes: Vec<u8>) -> String {
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The message store.
#[derive(Debug, Clone)]
pub struct MessageStore {
    pool: MySqlPool,
    database: String,
    timeout: Duration,
}

/// `call` with a deadline: a server that does not answer within `timeout` (a frozen process, a
/// blackholed connection, a lock held) is an I/O error, which every classifier here reads as
/// the store's fault, never the rows'.
pub(crate) async fn within<T>(
    timeout: Duration,
    call: impl Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, sqlx::Error> {
    tokio::time::timeout(timeout, call)
        .await
        .unwrap_or_else(|_| {
            Err(sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("MySQL did not answer within {timeout:?}"),
            )))
        })
}

/// Applies the migrations under a named lock, so sink workers that start together (two pods of
/// one Deployment) apply them once: the others wait, then find nothing to do. sqlx's own lock
/// asks MySQL for an infinite wait (`GET_LOCK(name, -1)`) without checking the answer, and
/// MariaDB grants no lock for a negative timeout, so a second worker used to find the first's
/// migration half done and stop with "migration 1 is partially applied".
/// The lock is held on one connection while the migrator runs on another of the pool (a
/// `&mut` connection would make the future `Send` only for concrete lifetimes, which the stage
/// contract's `impl Future + Send` cannot use).
async fn migrate(pool: &sqlx::MySqlPool, database: &str) -> Result<(), sqlx::Error> {
    const WAIT_SECONDS: i64 = 120;
    let mut conn = pool.acquire().await?;
    let name = named_lock(
        &mut conn,
        &format!("wxstream-migrate-{database}"),
        WAIT_SECONDS,
        "another worker",
    )
    .await?;
    let mut migrator = sqlx::migrate!("./migrations");
    migrator.set_locking(false);
    let applied = migrator
        .run(pool)
        .await
        .map_err(|e| sqlx::Error::Migrate(Box::new(e)));
    release_lock(&mut conn, &name).await?;
    applied
}

/// Takes MySQL's named lock `name` (its first 64 characters) on `conn`, waiting `seconds` at
/// most (an error naming `holder` when another holds it that long); the name locked.
pub(crate) async fn named_lock(
    conn: &mut sqlx::MySqlConnection,
    name: &str,
    seconds: i64,
    holder: &str,
) -> Result<String, sqlx::Error> {
    let name: String = name.chars().take(64).collect();
    let granted: Option<i64> = sqlx::query_scalar("SELECT GET_LOCK(?, ?)")
        .bind(&name)
        .bind(seconds)
        .fetch_one(&mut *conn)
        .await?;
    if granted != Some(1) {
        return Err(sqlx::Error::Protocol(format!(
            "{holder} held the lock {name} for {seconds} s"
        )));
    }
    Ok(name)
}

/// Releases the named lock [`named_lock`] took.
pub(crate) async fn release_lock(
    conn: &mut sqlx::MySqlConnection,
    name: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("DO RELEASE_LOCK(?)")
        .bind(name)
        .execute(conn)
        .await
        .map(|_| ())
}

impl MessageStore {
    /// Creates the database if needed (utf8mb4), connects a pool and applies the migrations;
    /// every later call has `timeout` as its deadline (connecting and migrating have theirs:
    /// `timeout` each step, the migration lock's wait besides).
    pub async fn connect(
        url: &str,
        database: &str,
        timeout: Duration,
    ) -> Result<MessageStore, sqlx::Error> {
        within(timeout * 2 + Duration::from_secs(120), async {
            Self::connect_untimed(url, database, timeout).await
        })
        .await
    }

    async fn connect_untimed(
        url: &str,
        database: &str,
        timeout: Duration,
    ) -> Result<MessageStore, sqlx::Error> {
        let server = MySqlConnectOptions::from_str(url)?.charset("utf8mb4");
        let mut admin = server.clone().connect().await?;
        admin
            .execute(
                format!(
                    "CREATE DATABASE IF NOT EXISTS `{}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin",
                    database.replace('`', "")
                )
                .as_str(),
            )
            .await?;
        admin.close().await?;
        let pool = MySqlPoolOptions::new()
            // Strict for every table, whatever the server's default: a value a column cannot
            // hold is an error (the row is parked with its cause), never a warning and a
            // silently truncated row.
            .after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute(
                        "SET SESSION sql_mode = CONCAT_WS(',', NULLIF(@@SESSION.sql_mode, ''), 'STRICT_ALL_TABLES')",
                    )
                    .await
                    .map(|_| ())
                })
            })
            .max_connections(4)
            .acquire_timeout(timeout.min(Duration::from_secs(5)))
            .connect_with(server.database(database))
            .await?;
        migrate(&pool, database).await?;
        Ok(MessageStore {
            pool,
            database: database.to_string(),
            timeout,
        })
    }

    /// The session's `sql_mode`, as every connection of the pool has it.
    pub async fn session_sql_mode(&self) -> Result<String, sqlx::Error> {
        within(
            self.timeout,
            sqlx::query_scalar("SELECT @@SESSION.sql_mode").fetch_one(&self.pool),
        )
        .await
    }

    /// The deadline of each call.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub fn database(&self) -> &str {
        &self.database
    }

    pub(crate) fn pool(&self) -> &MySqlPool {
        &self.pool
    }

    /// Creates the monthly partitions from the month before `now_ms` to `ahead` months after it
    /// (each split off the catch-all `p_future`). Returns the partitions created.
    pub async fn ensure_partitions(
        &self,
        now_ms: i64,
        ahead: u32,
    ) -> Result<Vec<String>, sqlx::Error> {
        within(self.timeout, self.ensure_partitions_untimed(now_ms, ahead)).await
    }

    async fn ensure_partitions_untimed(
        &self,
        now_ms: i64,
        ahead: u32,
    ) -> Result<Vec<String>, sqlx::Error> {
        let existing: BTreeSet<String> = sqlx::query(
            "SELECT PARTITION_NAME FROM information_schema.PARTITIONS \
             WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'messages' AND PARTITION_NAME IS NOT NULL",
        )
        .fetch_all(&self.pool)
        .await?
        .iter()
        .filter_map(|r| r.try_get::<String, _>(0).ok())
        .collect();
        let newest = existing.iter().filter(|p| *p != "p_future").max().cloned();
        let mut month = Month::of_ms(now_ms).prev();
        let last = (0..ahead).fold(Month::of_ms(now_ms), |m, _| m.next());
        let mut created = Vec::new();
        while month <= last {
            let name = month.partition_name();
            // Only after the newest existing one: RANGE partitions must increase.
            if newest.as_ref().is_none_or(|n| name > *n) {
                let sql = format!(
                    "ALTER TABLE messages REORGANIZE PARTITION p_future INTO \
                     (PARTITION {name} VALUES LESS THAN ({}), PARTITION p_future VALUES LESS THAN MAXVALUE)",
                    month.next().start_ms()
                );
                match self.pool.execute(sql.as_str()).await {
                    Ok(_) => created.push(name),
                    // Another worker created it first.
                    Err(sqlx::Error::Database(db))
                        if db.message().contains("Duplicate partition")
                            || db.message().contains("must be strictly increasing") => {}
                    Err(e) => return Err(e),
                }
            }
            month = month.next();
        }
        Ok(created)
    }

    /// Writes a batch in one transaction (module docs), within the store's deadline.
    pub async fn write(&self, batch: &[ChatMessage]) -> Result<(), sqlx::Error> {
        if batch.is_empty() {
            return Ok(());
        }
        within(self.timeout, self.write_untimed(batch)).await
    }

    async fn write_untimed(&self, batch: &[ChatMessage]) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        for rows in batch.chunks(ROWS_PER_STATEMENT) {
            upsert_messages(rows).build().execute(&mut *tx).await?;
        }
        let recalls: Vec<&ChatMessage> = batch
            .iter()
            .filter(|m| m.recalled_msgid.is_some())
            .collect();
        for rows in recalls.chunks(ROWS_PER_STATEMENT) {
            let mut q = QueryBuilder::<MySql>::new(
                "INSERT INTO recalls (corp_id, recalled_msgid, recall_msgid, recalled_at) ",
            );
            q.push_values(rows, |mut b, m| {
                b.push_bind(&m.corp_id)
                    .push_bind(m.recalled_msgid.as_deref().unwrap_or_default())
                    .push_bind(&m.msgid)
                    .push_bind(m.msgtime);
            });
            // The first recall of a message stays (a replay repeats it); not `INSERT IGNORE`,
            // which would turn a value the column refuses into a warning.
            q.push(" ON DUPLICATE KEY UPDATE recall_msgid = recall_msgid");
            q.build().execute(&mut *tx).await?;
        }
        // Mark recalled messages, whichever of the two arrived first.
        let ids: BTreeSet<&str> = batch
            .iter()
            .map(|m| m.msgid.as_str())
            .chain(batch.iter().filter_map(|m| m.recalled_msgid.as_deref()))
            .collect();
        let ids: Vec<&str> = ids.into_iter().collect();
        for chunk in ids.chunks(ROWS_PER_STATEMENT) {
            let mut q = QueryBuilder::<MySql>::new(
                "UPDATE messages m JOIN recalls r ON r.corp_id = m.corp_id AND r.recalled_msgid = m.msgid \
                 SET m.recalled_by = r.recall_msgid WHERE m.recalled_by IS NULL AND m.msgid IN (",
            );
            let mut list = q.separated(", ");
            for id in chunk {
                list.push_bind(*id);
            }
            q.push(")");
            q.build().execute(&mut *tx).await?;
        }
        write_rooms(&mut tx, batch).await?;
        tx.commit().await
    }

    /// When each archive message was written: (corp_id, msgid, seq, `ingested_at` in ms), for
    /// the pipeline benchmark's pull-to-stored latency.
    pub async fn stored_at(&self) -> Result<Vec<(String, String, i64, i64)>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT corp_id, msgid, seq, CAST(UNIX_TIMESTAMP(ingested_at) * 1000 AS SIGNED) \
             FROM messages WHERE seq IS NOT NULL",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    text(r.try_get(0)?),
                    text(r.try_get(1)?),
                    r.try_get(2)?,
                    r.try_get(3)?,
                ))
            })
            .collect()
    }

    /// Rows in `table` (a name from this crate or a benchmark, never user input).
    pub async fn count_rows(&self, table: &str) -> Result<i64, sqlx::Error> {
        within(
            self.timeout,
            sqlx::query_scalar(&format!("SELECT COUNT(*) FROM `{table}`")).fetch_one(&self.pool),
        )
        .await
    }

    /// An empty table shaped like `messages` (the benchmark's bulk-load ceiling).
    pub async fn create_like_messages(&self, table: &str) -> Result<(), sqlx::Error> {
        self.pool
            .execute(format!("CREATE TABLE `{table}` LIKE messages").as_str())
            .await
            .map(|_| ())
    }
}

fn upsert_messages(rows: &[ChatMessage]) -> QueryBuilder<'_, MySql> {
    let mut q = QueryBuilder::<MySql>::new(
        "INSERT INTO messages (msgid, msgtime, corp_id, action, msgtype, sender, receivers, roomid, \
         conversation_id, is_external, text, payload, extra, recalled_msgid, publickey_ver, \
         source_topic, source_partition, source_offset, seq, decrypted_at) ",
    );
    q.push_values(rows, |mut b, m| {
        b.push_bind(&m.msgid)
            .push_bind(m.msgtime)
            .push_bind(&m.corp_id)
            .push_bind(&m.action)
            .push_bind(&m.msgtype)
            .push_bind(&m.from)
            .push_bind(serde_json::to_string(&m.tolist).unwrap_or_else(|_| "[]".into()))
            .push_bind(&m.roomid)
            .push_bind(&m.conversation_id)
            .push_bind(m.is_external)
            .push_bind(&m.text)
            .push_bind(&m.payload_json)
            .push_bind(&m.extra_json)
            .push_bind(&m.recalled_msgid)
            .push_bind(m.publickey_ver)
            .push_bind(&m.source.topic)
            .push_bind(m.source.partition)
            .push_bind(m.source.offset)
            .push_bind(m.source.seq)
            .push_bind(m.decrypted_at);
    });
    // A replay carries the same content; ingested_at and recalled_by are never moved back.
    q.push(
        " ON DUPLICATE KEY UPDATE action = VALUES(action), \
         msgtype = VALUES(msgtype), sender = VALUES(sender), receivers = VALUES(receivers), \
         roomid = VALUES(roomid), conversation_id = VALUES(conversation_id), \
         is_external = VALUES(is_external), text = VALUES(text), payload = VALUES(payload), \
         extra = VALUES(extra), recalled_msgid = VALUES(recalled_msgid), \
         publickey_ver = VALUES(publickey_ver)",
    );
    q
}

async fn write_rooms(
    tx: &mut sqlx::Transaction<'_, MySql>,
    batch: &[ChatMessage],
) -> Result<(), sqlx::Error> {
    // (corp, room) -> (first, last); (corp, room, member) -> (first, last). Sorted, so
    // concurrent workers lock rows in the same order.
    let mut rooms: BTreeMap<(&str, &str), (i64, i64)> = BTreeMap::new();
    let mut members: BTreeMap<(&str, &str, &str), (i64, i64)> = BTreeMap::new();
    for m in batch.iter().filter(|m| !m.roomid.is_empty()) {
        let span = |e: &mut (i64, i64)| {
            e.0 = e.0.min(m.msgtime);
            e.1 = e.1.max(m.msgtime);
        };
        span(
            rooms
                .entry((&m.corp_id, &m.roomid))
                .or_insert((m.msgtime, m.msgtime)),
        );
        for member in std::iter::once(&m.from).chain(&m.tolist) {
            span(
                members
                    .entry((&m.corp_id, &m.roomid, member))
                    .or_insert((m.msgtime, m.msgtime)),
            );
        }
    }
    let rooms: Vec<_> = rooms.into_iter().collect();
    for chunk in rooms.chunks(ROWS_PER_STATEMENT) {
        let mut q = QueryBuilder::<MySql>::new(
            "INSERT INTO rooms (corp_id, roomid, first_seen, last_active) ",
        );
        q.push_values(chunk, |mut b, ((corp, room), (first, last))| {
            b.push_bind(*corp)
                .push_bind(*room)
                .push_bind(*first)
                .push_bind(*last);
        });
        q.push(" ON DUPLICATE KEY UPDATE first_seen = LEAST(first_seen, VALUES(first_seen)), last_active = GREATEST(last_active, VALUES(last_active))");
        q.build().execute(&mut **tx).await?;
    }
    let members: Vec<_> = members.into_iter().collect();
    for chunk in members.chunks(ROWS_PER_STATEMENT) {
        let mut q = QueryBuilder::<MySql>::new(
            "INSERT INTO room_members (corp_id, roomid, member, first_seen, last_active) ",
        );
        q.push_values(chunk, |mut b, ((corp, room, member), (first, last))| {
            b.push_bind(*corp)
                .push_bind(*room)
                .push_bind(*member)
                .push_bind(*first)
                .push_bind(*last);
        });
        q.push(" ON DUPLICATE KEY UPDATE first_seen = LEAST(first_seen, VALUES(first_seen)), last_active = GREATEST(last_active, VALUES(last_active))");
        q.build().execute(&mut **tx).await?;
    }
    Ok(())
}
