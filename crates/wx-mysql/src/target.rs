//! The message store as a sink target (`wx_runtime::target`): a batch in one transaction; a
//! batch the database refuses as data is written row by row, so only the rows it refuses are the
//! record's fault; every other error is the store's. Monthly partitions are kept ahead while the
//! sink runs.

use std::time::Duration;

use wx_codec::ChatMessage;
use wx_runtime::settings::redact_urls;
use wx_runtime::target::{Target, TargetFuture, Verdict};

use crate::store::{MessageStore, refuses_rows};

/// The dead-letter class of a row the database refuses as data.
pub const STORE_REJECTED: &str = "store_rejected";

/// The dead-letter class of a row larger than the server takes in one statement
/// (`max_allowed_packet`), even alone (the runtime's, shared by every stage).
pub use wx_runtime::TOO_LARGE;

/// The message store as the sink's `mysql` target.
#[derive(Debug, Clone)]
pub struct MysqlTarget {
    store: MessageStore,
    partitions_ahead: u32,
    maintenance_interval: Duration,
}

/// What an error says of the rows it was about (secrets never quoted).
fn verdict(e: &sqlx::Error) -> Verdict {
    let cause = redact_urls(&e.to_string());
    if refuses_rows(e) {
        Verdict::Refused {
            class: STORE_REJECTED,
            cause,
        }
    } else {
        Verdict::Unwell { cause }
    }
}

impl MysqlTarget {
    /// `store` with `partitions_ahead` monthly partitions created now and then every
    /// `maintenance_interval`; returns the partitions created now too.
    pub async fn prepare(
        store: MessageStore,
        now_ms: i64,
        partitions_ahead: u32,
        maintenance_interval: Duration,
    ) -> Result<(MysqlTarget, Vec<String>), sqlx::Error> {
        let created = store.ensure_partitions(now_ms, partitions_ahead).await?;
        let target = MysqlTarget {
            store,
            partitions_ahead,
            maintenance_interval,
        };
        Ok((target, created))
    }

    async fn write_all(&self, batch: &[ChatMessage]) -> Vec<Verdict> {
        match self.store.write(batch).await {
            Ok(()) => vec![Verdict::Written; batch.len()],
            Err(e) if too_large(&e) => self.write_halves(batch, &e).await,
            Err(e) if !refuses_rows(&e) || batch.len() == 1 => vec![verdict(&e); batch.len()],
            Err(_) => {
                // One row refuses its values: find it (them) by writing row by row.
                let mut verdicts = Vec::with_capacity(batch.len());
                for message in batch {
                    verdicts.push(
                        match self.store.write(std::slice::from_ref(message)).await {
                            Ok(()) => Verdict::Written,
                            Err(e) => verdict(&e),
                        },
                    );
                }
                verdicts
            }
        }
    }
}

/// Whether the server refused a statement as larger than its `max_allowed_packet` (1153; MySQL
/// and MariaDB close the connection after it, so a statement cut off mid-write reads the same).
fn too_large(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db
            .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
            .is_some_and(|e| e.number() == 1153),
        sqlx::Error::Io(io) => matches!(
            io.kind(),
            std::io::ErrorKind::BrokenPipe
                | std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::UnexpectedEof
        ),
        _ => false,
    }
}

impl MysqlTarget {
    /// A batch too large for one statement: each half on its own, down to single rows; a row
    /// too large alone is refused as [`TOO_LARGE`]. A half that fails otherwise (the store is
    /// unwell) ends the split: the rest waits for the retry.
    fn write_halves<'a>(
        &'a self,
        batch: &'a [ChatMessage],
        e: &'a sqlx::Error,
    ) -> TargetFuture<'a, Vec<Verdict>> {
        Box::pin(async move {
            if batch.len() == 1 {
                return match e {
                    sqlx::Error::Database(_) => vec![Verdict::Refused {
                        class: TOO_LARGE,
                        cause: redact_urls(&e.to_string()),
                    }],
                    // A connection cut on one row may be an outage: not the row's fault.
                    _ => vec![verdict(e)],
                };
            }
            let (first, second) = batch.split_at(batch.len() / 2);
            let mut verdicts = self.write_all_boxed(first).await;
            if verdicts.iter().any(|v| matches!(v, Verdict::Unwell { .. })) {
                let unwell = verdicts
                    .iter()
                    .find(|v| matches!(v, Verdict::Unwell { .. }))
                    .cloned()
                    .unwrap_or_else(|| verdict(e));
                verdicts.extend(std::iter::repeat_n(unwell, second.len()));
                return verdicts;
            }
            verdicts.extend(self.write_all_boxed(second).await);
            verdicts
        })
    }

    fn write_all_boxed<'a>(&'a self, batch: &'a [ChatMessage]) -> TargetFuture<'a, Vec<Verdict>> {
        Box::pin(self.write_all(batch))
    }
}

impl Target for MysqlTarget {
    fn name(&self) -> &'static str {
        "mysql"
    }

    fn label(&self) -> &'static str {
        "MySQL"
    }

    fn unit(&self) -> &'static str {
        "rows"
    }

    fn write<'a>(&'a self, batch: &'a [ChatMessage]) -> TargetFuture<'a, Vec<Verdict>> {
        Box::pin(self.write_all(batch))
    }

    fn maintenance(&self) -> Option<(&'static str, Duration)> {
        Some(("mysql partitions", self.maintenance_interval))
    }

    fn maintain(&self, now_ms: i64) -> TargetFuture<'_, Result<Option<String>, String>> {
        Box::pin(async move {
            match self
                .store
                .ensure_partitions(now_ms, self.partitions_ahead)
                .await
            {
                Ok(created) if created.is_empty() => Ok(None),
                Ok(created) => Ok(Some(format!(
                    "monthly partitions created ahead: {created:?}"
                ))),
                Err(e) => Err(redact_urls(&e.to_string())),
            }
        })
    }
}
