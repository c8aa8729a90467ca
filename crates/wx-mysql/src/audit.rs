//! The `audit_log` table (migration 4): operator actions, append-only, hash-chained.
//!
//! Each entry carries the SHA-256 of the entry before it, and its own SHA-256 over its canonical
//! form ([`AuditEntry::canonical`]): editing, removing or inserting one row breaks the chain at
//! that row, which [`verify_chain`] names. Appends are serialised across processes by a named
//! lock, so the chain never forks. The table's triggers refuse UPDATE and DELETE.

use std::time::Duration;

use sha2::Digest;
use sqlx::Row;

use crate::store::{MessageStore, named_lock, release_lock, text, within};

/// The `prev_sha256` of the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// How long an append waits for another process's append (the named lock).
const LOCK_WAIT_SECONDS: i64 = 30;

/// What an operator did, before it is numbered and chained.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AuditAction {
    /// Who: the authenticated principal of a REST call, or `os:<user>` for a CLI command.
    pub principal: String,
    /// What, e.g. `redrive`, `connector.pause`, `hold.add`, `retention.run`.
    pub action: String,
    /// The arguments, as given (a JSON object).
    pub arguments: serde_json::Value,
    /// What it changed, per store (a JSON object of counts; empty when it changed nothing).
    pub counts: serde_json::Value,
    /// `ok`, or the error it ended with.
    pub outcome: String,
}

/// One entry of the chain, as stored in the table and on the audit topic.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AuditEntry {
    pub seq: i64,
    pub at_ms: i64,
    pub principal: String,
    pub action: String,
    /// The arguments' JSON text, exactly as hashed.
    pub arguments: String,
    /// The counts' JSON text, exactly as hashed.
    pub counts: String,
    pub outcome: String,
    pub prev_sha256: String,
    pub sha256: String,
}

impl AuditEntry {
    /// The entry following `prev` (`None`: the first), with its hash.
    pub fn next(prev: Option<(i64, &str)>, at_ms: i64, action: &AuditAction) -> AuditEntry {
        let (seq, prev_sha256) = match prev {
            Some((seq, sha)) => (seq + 1, sha.to_string()),
            None => (1, GENESIS.to_string()),
        };
        let mut entry = AuditEntry {
            seq,
            at_ms,
            principal: action.principal.clone(),
            action: action.action.clone(),
            arguments: action.arguments.to_string(),
            counts: action.counts.to_string(),
            outcome: action.outcome.clone(),
            prev_sha256,
            sha256: String::new(),
        };
        entry.sha256 = entry.digest();
        entry
    }

    /// The bytes hashed: a JSON array of every field but `sha256`, in a fixed order (JSON
    /// strings are escaped, so no two entries share a canonical form).
    pub fn canonical(&self) -> Vec<u8> {
        serde_json::to_vec(&(
            self.seq,
            self.at_ms,
            &self.principal,
            &self.action,
            &self.arguments,
            &self.counts,
            &self.outcome,
            &self.prev_sha256,
        ))
        .unwrap_or_default()
    }

    /// SHA-256 of [`AuditEntry::canonical`], lower-case hex.
    pub fn digest(&self) -> String {
        hex::encode(sha2::Sha256::digest(self.canonical()))
    }
}

/// The first broken link of a chain, or where an entry differs from its copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokenLink {
    /// The entry's sequence number (the one expected, when one is missing).
    pub seq: i64,
    pub reason: String,
}

impl std::fmt::Display for BrokenLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "entry {}: {}", self.seq, self.reason)
    }
}

/// Checks `entries` (in `seq` order) form one chain from the genesis: numbered 1, 2, 3 ...,
/// each hash its content's, each `prev_sha256` the hash before it. Returns the first broken link.
pub fn verify_chain(entries: &[AuditEntry]) -> Result<(), BrokenLink> {
    let mut prev = GENESIS.to_string();
    for (i, entry) in entries.iter().enumerate() {
        let expected_seq = i as i64 + 1;
        let broken = |reason: String| BrokenLink {
            seq: expected_seq,
            reason,
        };
        if entry.seq != expected_seq {
            return Err(broken(format!(
                "missing: the next entry stored is {} (removed or renumbered)",
                entry.seq
            )));
        }
        if entry.digest() != entry.sha256 {
            return Err(broken(format!(
                "its content does not hash to its sha256 {} (edited)",
                entry.sha256
            )));
        }
        if entry.prev_sha256 != prev {
            return Err(broken(format!(
                "its prev_sha256 {} is not the previous entry's sha256 {prev} (an entry before it was replaced)",
                entry.prev_sha256
            )));
        }
        prev = entry.sha256.clone();
    }
    Ok(())
}

/// Compares the table's entries with a copy (the audit topic's), each by `seq`: an entry of one
/// missing from the other, or differing, is the first broken link. A tail the table lost (rows
/// removed at the end leave a valid chain) shows here.
pub fn compare_copies(table: &[AuditEntry], copy: &[AuditEntry]) -> Result<(), BrokenLink> {
    let by_seq: std::collections::BTreeMap<i64, &AuditEntry> =
        copy.iter().map(|e| (e.seq, e)).collect();
    for entry in table {
        match by_seq.get(&entry.seq) {
            None => {
                return Err(BrokenLink {
                    seq: entry.seq,
                    reason: "it is in the table but not on the audit topic".into(),
                });
            }
            Some(other) if *other != entry => {
                return Err(BrokenLink {
                    seq: entry.seq,
                    reason: format!(
                        "the table's row (sha256 {}) differs from the topic's copy (sha256 {})",
                        entry.sha256, other.sha256
                    ),
                });
            }
            Some(_) => {}
        }
    }
    let last = table.last().map_or(0, |e| e.seq);
    match by_seq.range(last + 1..).next() {
        Some((&seq, _)) => Err(BrokenLink {
            seq,
            reason: "it is on the audit topic but not in the table (removed from the table)".into(),
        }),
        None => Ok(()),
    }
}

impl MessageStore {
    /// Appends `action` to the chain (under a named lock, so concurrent appends from any process
    /// chain one after the other) and returns the entry written.
    pub async fn audit_append(
        &self,
        action: &AuditAction,
        at_ms: i64,
    ) -> Result<AuditEntry, sqlx::Error> {
        within(
            self.timeout() + Duration::from_secs(LOCK_WAIT_SECONDS as u64),
            self.audit_append_untimed(action, at_ms),
        )
        .await
    }

    async fn audit_append_untimed(
        &self,
        action: &AuditAction,
        at_ms: i64,
    ) -> Result<AuditEntry, sqlx::Error> {
        let mut conn = self.pool().acquire().await?;
        let name = named_lock(
            &mut conn,
            &format!("wxstream-audit-{}", self.database()),
            LOCK_WAIT_SECONDS,
            "another process appending to the audit log",
        )
        .await?;
        let appended = async {
            let last = sqlx::query("SELECT seq, sha256 FROM audit_log ORDER BY seq DESC LIMIT 1")
                .fetch_optional(&mut *conn)
                .await?;
            let last = match last {
                Some(row) => Some((row.try_get::<i64, _>(0)?, text(row.try_get(1)?))),
                None => None,
            };
            let entry = AuditEntry::next(
                last.as_ref().map(|(seq, sha)| (*seq, sha.as_str())),
                at_ms,
                action,
            );
            sqlx::query(
                "INSERT INTO audit_log (seq, at_ms, principal, action, arguments, counts, outcome, \
                 prev_sha256, sha256) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(entry.seq)
            .bind(entry.at_ms)
            .bind(&entry.principal)
            .bind(&entry.action)
            .bind(&entry.arguments)
            .bind(&entry.counts)
            .bind(&entry.outcome)
            .bind(&entry.prev_sha256)
            .bind(&entry.sha256)
            .execute(&mut *conn)
            .await?;
            Ok::<_, sqlx::Error>(entry)
        }
        .await;
        let released = release_lock(&mut conn, &name).await;
        let entry = appended?;
        released?;
        Ok(entry)
    }

    /// Every entry, in `seq` order.
    pub async fn audit_entries(&self) -> Result<Vec<AuditEntry>, sqlx::Error> {
        let rows = within(
            self.timeout(),
            sqlx::query(
                "SELECT seq, at_ms, principal, action, arguments, counts, outcome, prev_sha256, \
                 sha256 FROM audit_log ORDER BY seq",
            )
            .fetch_all(self.pool()),
        )
        .await?;
        rows.iter()
            .map(|r| {
                Ok(AuditEntry {
                    seq: r.try_get(0)?,
                    at_ms: r.try_get(1)?,
                    principal: text(r.try_get(2)?),
                    action: text(r.try_get(3)?),
                    arguments: text(r.try_get(4)?),
                    counts: text(r.try_get(5)?),
                    outcome: text(r.try_get(6)?),
                    prev_sha256: text(r.try_get(7)?),
                    sha256: text(r.try_get(8)?),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn action(what: &str) -> AuditAction {
        AuditAction {
            principal: "os:alice".into(),
            action: what.into(),
            arguments: serde_json::json!({"corp": "wwcorp", "user": "张三"}),
            counts: serde_json::json!({"mysql": 3}),
            outcome: "ok".into(),
        }
    }

    fn chain(n: usize) -> Vec<AuditEntry> {
        let mut entries: Vec<AuditEntry> = Vec::new();
        for i in 0..n {
            let prev = entries.last().map(|e| (e.seq, e.sha256.as_str()));
            let next = AuditEntry::next(prev, 1_000 + i as i64, &action(&format!("a{i}")));
            entries.push(next);
        }
        entries
    }

    #[test]
    fn a_chain_verifies_and_each_kind_of_tampering_is_named_at_its_entry() {
        let good = chain(5);
        assert_eq!(good[0].prev_sha256, GENESIS);
        assert_eq!(verify_chain(&good), Ok(()));

        let mut edited = good.clone();
        edited[2].counts = r#"{"mysql":0}"#.into();
        let broken = verify_chain(&edited).unwrap_err();
        assert_eq!(broken.seq, 3);
        assert!(broken.reason.contains("edited"), "{broken}");

        // Edited and re-hashed: the next entry's link breaks.
        edited[2].sha256 = edited[2].digest();
        let broken = verify_chain(&edited).unwrap_err();
        assert_eq!(broken.seq, 4);
        assert!(broken.reason.contains("prev_sha256"), "{broken}");

        let mut removed = good.clone();
        removed.remove(1);
        let broken = verify_chain(&removed).unwrap_err();
        assert_eq!(broken.seq, 2);
        assert!(broken.reason.contains("missing"), "{broken}");
    }

    #[test]
    fn the_copies_disagree_where_the_table_lost_its_tail_or_a_row_differs() {
        let good = chain(4);
        assert_eq!(compare_copies(&good, &good), Ok(()));
        // The tail removed from the table: still a valid chain, but not the topic's.
        assert_eq!(verify_chain(&good[..3]), Ok(()));
        assert_eq!(compare_copies(&good[..3], &good).unwrap_err().seq, 4);
        let mut edited = good.clone();
        edited[1].principal = "os:mallory".into();
        edited[1].sha256 = edited[1].digest();
        assert_eq!(compare_copies(&edited, &good).unwrap_err().seq, 2);
        assert_eq!(compare_copies(&good, &good[..2]).unwrap_err().seq, 3);
    }

    #[test]
    fn the_canonical_form_separates_fields_whatever_they_hold() {
        let mut a = AuditEntry::next(None, 1, &action("x"));
        let mut b = a.clone();
        a.principal = "os:a\",\"b".into();
        b.principal = "os:a".into();
        b.action = "b\",\"x".into();
        assert_ne!(a.canonical(), b.canonical());
        assert_ne!(a.digest(), b.digest());
    }
}
