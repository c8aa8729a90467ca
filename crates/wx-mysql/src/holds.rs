//! The `holds` table (migration 5): legal holds, and the SQL condition that keeps held messages
//! out of retention's and erasure's deletes.

use sqlx::Row;

use crate::store::{MessageStore, text, within};

/// What a hold covers within its corp.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HoldScope {
    /// Every message of the corp.
    Corp,
    /// Every message the user sent or received.
    User,
    /// Every message of one conversation.
    Conversation,
}

impl HoldScope {
    pub fn name(self) -> &'static str {
        match self {
            HoldScope::Corp => "corp",
            HoldScope::User => "user",
            HoldScope::Conversation => "conversation",
        }
    }

    fn of(name: &str) -> Option<HoldScope> {
        [HoldScope::Corp, HoldScope::User, HoldScope::Conversation]
            .into_iter()
            .find(|s| s.name() == name)
    }
}

/// A legal hold.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Hold {
    pub id: i64,
    pub corp_id: String,
    pub scope: HoldScope,
    /// The user id or conversation id (empty for a corp hold).
    pub subject: String,
    pub reason: String,
    pub set_by: String,
    pub set_at_ms: i64,
    /// Who released it, when and why (none while it holds).
    pub released: Option<(String, i64, String)>,
}

impl Hold {
    /// Whether the hold covers a message of `corp` sent by `sender` to `receivers` in
    /// `conversation`.
    pub fn covers(
        &self,
        corp: &str,
        sender: &str,
        receivers: &[String],
        conversation: &str,
    ) -> bool {
        self.released.is_none()
            && self.corp_id == corp
            && match self.scope {
                HoldScope::Corp => true,
                HoldScope::User => sender == self.subject || receivers.contains(&self.subject),
                HoldScope::Conversation => conversation == self.subject,
            }
    }
}

/// The SQL condition (over `messages`' columns) true for a message one of `holds` covers, with
/// its values to bind in order; `FALSE` when there are none.
pub fn held_condition(holds: &[Hold]) -> (String, Vec<String>) {
    let mut terms = Vec::new();
    let mut binds = Vec::new();
    for hold in holds.iter().filter(|h| h.released.is_none()) {
        match hold.scope {
            HoldScope::Corp => {
                terms.push("(corp_id = ?)".to_string());
                binds.push(hold.corp_id.clone());
            }
            HoldScope::User => {
                terms.push(
                    "(corp_id = ? AND (sender = ? OR JSON_CONTAINS(receivers, JSON_QUOTE(?))))"
                        .to_string(),
                );
                binds.extend([
                    hold.corp_id.clone(),
                    hold.subject.clone(),
                    hold.subject.clone(),
                ]);
            }
            HoldScope::Conversation => {
                terms.push("(corp_id = ? AND conversation_id = ?)".to_string());
                binds.extend([hold.corp_id.clone(), hold.subject.clone()]);
            }
        }
    }
    if terms.is_empty() {
        ("FALSE".into(), binds)
    } else {
        (format!("({})", terms.join(" OR ")), binds)
    }
}

impl MessageStore {
    /// Sets a hold; its id.
    pub async fn hold_add(
        &self,
        corp: &str,
        scope: HoldScope,
        subject: &str,
        reason: &str,
        by: &str,
        at_ms: i64,
    ) -> Result<i64, sqlx::Error> {
        let done = within(
            self.timeout(),
            sqlx::query(
                "INSERT INTO holds (corp_id, scope, subject, reason, set_by, set_at_ms) \
                 VALUES (?, ?, ?, ?, ?, ?)",
            )
            .bind(corp)
            .bind(scope.name())
            .bind(subject)
            .bind(reason)
            .bind(by)
            .bind(at_ms)
            .execute(self.pool()),
        )
        .await?;
        i64::try_from(done.last_insert_id())
            .map_err(|_| sqlx::Error::Protocol("a hold id beyond i64".into()))
    }

    /// Releases hold `id`; whether it held until now (false: unknown or already released).
    pub async fn hold_release(
        &self,
        id: i64,
        reason: &str,
        by: &str,
        at_ms: i64,
    ) -> Result<bool, sqlx::Error> {
        let done = within(
            self.timeout(),
            sqlx::query(
                "UPDATE holds SET released_by = ?, released_at_ms = ?, release_reason = ? \
                 WHERE id = ? AND released_at_ms IS NULL",
            )
            .bind(by)
            .bind(at_ms)
            .bind(reason)
            .bind(id)
            .execute(self.pool()),
        )
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// The holds (only those still holding unless `all`), oldest first.
    pub async fn holds(&self, all: bool) -> Result<Vec<Hold>, sqlx::Error> {
        let rows = within(
            self.timeout(),
            sqlx::query(if all {
                "SELECT id, corp_id, scope, subject, reason, set_by, set_at_ms, released_by, \
                 released_at_ms, release_reason FROM holds ORDER BY id"
            } else {
                "SELECT id, corp_id, scope, subject, reason, set_by, set_at_ms, released_by, \
                 released_at_ms, release_reason FROM holds WHERE released_at_ms IS NULL ORDER BY id"
            })
            .fetch_all(self.pool()),
        )
        .await?;
        rows.iter()
            .map(|r| {
                let scope = text(r.try_get(2)?);
                let released_at: Option<i64> = r.try_get(8)?;
                let opt = |i: usize| -> Result<String, sqlx::Error> {
                    Ok(r.try_get::<Option<Vec<u8>>, _>(i)?
                        .map(text)
                        .unwrap_or_default())
                };
                Ok(Hold {
                    id: r.try_get(0)?,
                    corp_id: text(r.try_get(1)?),
                    scope: HoldScope::of(&scope).ok_or_else(|| {
                        sqlx::Error::Protocol(format!("hold scope {scope} is not known"))
                    })?,
                    subject: text(r.try_get(3)?),
                    reason: text(r.try_get(4)?),
                    set_by: text(r.try_get(5)?),
                    set_at_ms: r.try_get(6)?,
                    released: match released_at {
                        Some(at) => Some((opt(7)?, at, opt(9)?)),
                        None => None,
                    },
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hold(scope: HoldScope, subject: &str) -> Hold {
        Hold {
            id: 1,
            corp_id: "wwa".into(),
            scope,
            subject: subject.into(),
            reason: "case 7".into(),
            set_by: "os:alice".into(),
            set_at_ms: 0,
            released: None,
        }
    }

    #[test]
    fn each_scope_covers_what_it_says_and_a_released_hold_nothing() {
        let to = |r: &[&str]| r.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let user = hold(HoldScope::User, "zhangsan");
        assert!(user.covers("wwa", "zhangsan", &to(&["lisi"]), "c1"));
        assert!(user.covers("wwa", "lisi", &to(&["zhangsan"]), "c1"));
        assert!(!user.covers("wwa", "lisi", &to(&["wangwu"]), "c1"));
        assert!(!user.covers("wwb", "zhangsan", &to(&[]), "c1"));
        let conversation = hold(HoldScope::Conversation, "room-9");
        assert!(conversation.covers("wwa", "x", &to(&[]), "room-9"));
        assert!(!conversation.covers("wwa", "x", &to(&[]), "room-8"));
        assert!(hold(HoldScope::Corp, "").covers("wwa", "x", &to(&[]), "y"));
        let mut released = hold(HoldScope::Corp, "");
        released.released = Some(("os:bob".into(), 1, "closed".into()));
        assert!(!released.covers("wwa", "x", &to(&[]), "y"));
        let (sql, binds) = held_condition(&[user, conversation, released]);
        assert_eq!(sql.matches('?').count(), binds.len());
        assert_eq!(binds, ["wwa", "zhangsan", "zhangsan", "wwa", "room-9"]);
        assert_eq!(held_condition(&[]).0, "FALSE");
    }
}
