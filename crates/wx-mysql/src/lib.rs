//! The MySQL adapter (MySQL 8 and MariaDB), for every stage that writes MySQL: the sink's message
//! store and the media stage's `media` table, one migration history (`migrations/`) applied by
//! whichever starts first. Stages depend on this crate, never on each other.
//!
//! # Layout
//! - `store`: connection, migrations under a named lock, monthly partitions created ahead,
//!   batched idempotent upserts of messages, recalls, rooms and members.
//! - `target`: the message store as the sink's `mysql` target (`wx_runtime::target`).
//! - `media`: the `media` table (migration 3): the media stage's checkpoints and records.
//! - `audit`: the `audit_log` table (migration 4): operator actions, append-only, hash-chained.
//! - `digest`: a corp's day of messages as one SHA-256 (the audit log's daily digests).
//! - `holds`: the `holds` table (migration 5): legal holds, and the condition that spares them.
//! - `purge`: what retention and erasure delete: selections walked in batches, media rows,
//!   whole partitions.
//! - here: the settings check every user of a database name shares.

pub mod audit;
pub mod digest;
pub mod holds;
pub mod media;
pub mod purge;
pub mod store;
pub mod target;

use wx_runtime::settings::SettingsError;

/// The error of the MySQL calls (sqlx's), for crates that call this one's store.
pub use sqlx::Error as MysqlError;
pub use store::{MessageStore, refuses_rows};
pub use target::MysqlTarget;

/// A database name wxstream creates and connects to: letters, digits and `_` only (it is written
/// into `CREATE DATABASE`).
pub fn check_database(stage: &str, database: &str) -> Result<(), SettingsError> {
    if database.is_empty()
        || !database
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return Err(SettingsError::new(
            stage,
            "database",
            "letters, digits and _ only",
        ));
    }
    Ok(())
}
