//! What retention and erasure delete from MySQL: a selection of one corp's messages (minus what a
//! legal hold covers) walked in bounded batches, their media rows, and whole monthly partitions
//! when every row in one is selected.

use sqlx::{MySql, QueryBuilder, Row};

use crate::holds::{Hold, held_condition};
use crate::store::{MessageStore, text, within};

/// A message's key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct MessageKey {
    pub corp_id: String,
    pub msgid: String,
    pub msgtime: i64,
}

/// A value bound into a selection's condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bind {
    Text(String),
    Int(i64),
}

/// Some of one corp's messages: `condition` over `messages`' columns, with its values in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    pub corp: String,
    pub condition: String,
    pub binds: Vec<Bind>,
}

impl Selection {
    /// `corp`'s messages sent before `before_ms` (retention).
    pub fn before(corp: &str, before_ms: i64) -> Selection {
        Selection {
            corp: corp.into(),
            condition: "msgtime < ?".into(),
            binds: vec![Bind::Int(before_ms)],
        }
    }

    /// Every message `user` of `corp` sent, and every message of a 1:1 conversation they were
    /// in (erasure). Group messages others sent stay, even when they quote or mention the user.
    pub fn person(corp: &str, user: &str) -> Selection {
        Selection {
            corp: corp.into(),
            condition: "sender = ? OR (roomid = '' AND JSON_CONTAINS(receivers, JSON_QUOTE(?)))"
                .into(),
            binds: vec![Bind::Text(user.into()), Bind::Text(user.into())],
        }
    }

    /// Every message `user` of `corp` sent or received, groups included (an export's custodian).
    pub fn custodian(corp: &str, user: &str) -> Selection {
        Selection {
            corp: corp.into(),
            condition: "sender = ? OR JSON_CONTAINS(receivers, JSON_QUOTE(?))".into(),
            binds: vec![Bind::Text(user.into()), Bind::Text(user.into())],
        }
    }

    /// Every message of one conversation of `corp`.
    pub fn conversation(corp: &str, conversation: &str) -> Selection {
        Selection {
            corp: corp.into(),
            condition: "conversation_id = ?".into(),
            binds: vec![Bind::Text(conversation.into())],
        }
    }

    /// Pushes `corp_id = ? AND (condition) AND NOT (held)` onto `q`.
    fn push_where(&self, q: &mut QueryBuilder<'_, MySql>, holds: &[Hold]) {
        q.push(" WHERE corp_id = ").push_bind(self.corp.clone());
        push_condition(q, " AND (", &self.condition, &self.binds);
        let (held, values) = held_condition(holds);
        let values: Vec<Bind> = values.into_iter().map(Bind::Text).collect();
        push_condition(q, ") AND NOT (", &held, &values);
        q.push(")");
    }
}

/// Pushes `prefix` and `condition` with each `?` bound to the next of `binds`.
fn push_condition(q: &mut QueryBuilder<'_, MySql>, prefix: &str, condition: &str, binds: &[Bind]) {
    q.push(prefix);
    let mut values = binds.iter();
    let mut parts = condition.split('?').peekable();
    while let Some(part) = parts.next() {
        q.push(part);
        if parts.peek().is_some() {
            match values.next() {
                Some(Bind::Text(t)) => q.push_bind(t.clone()),
                Some(Bind::Int(i)) => q.push_bind(*i),
                None => q.push("NULL"),
            };
        }
    }
}

/// A monthly partition and the upper bound of its `msgtime` (none: the catch-all `p_future`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    pub name: String,
    pub less_than: Option<i64>,
}

/// A message as an export shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchivedMessage {
    pub msgid: String,
    pub msgtime: i64,
    pub action: String,
    pub msgtype: String,
    pub sender: String,
    pub receivers: Vec<String>,
    pub roomid: String,
    pub conversation_id: String,
    pub text: Option<String>,
    pub recalled: bool,
}

impl MessageStore {
    /// The messages of `selection` with `msgtime` in `[from_ms, to_ms)`, in time order.
    pub async fn selected_messages(
        &self,
        selection: &Selection,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<ArchivedMessage>, sqlx::Error> {
        let mut q = QueryBuilder::<MySql>::new(
            "SELECT msgid, msgtime, action, msgtype, sender, receivers, roomid, conversation_id, \
             text, recalled_by IS NOT NULL FROM messages",
        );
        selection.push_where(&mut q, &[]);
        q.push(" AND msgtime >= ")
            .push_bind(from_ms)
            .push(" AND msgtime < ")
            .push_bind(to_ms)
            .push(" ORDER BY msgtime, msgid");
        let rows = within(self.timeout(), q.build().fetch_all(self.pool())).await?;
        rows.iter()
            .map(|r| {
                let receivers = text(r.try_get(5)?);
                Ok(ArchivedMessage {
                    msgid: text(r.try_get(0)?),
                    msgtime: r.try_get(1)?,
                    action: text(r.try_get(2)?),
                    msgtype: text(r.try_get(3)?),
                    sender: text(r.try_get(4)?),
                    receivers: serde_json::from_str(&receivers).unwrap_or_default(),
                    roomid: text(r.try_get(6)?),
                    conversation_id: text(r.try_get(7)?),
                    text: r.try_get::<Option<Vec<u8>>, _>(8)?.map(text),
                    recalled: r.try_get::<i64, _>(9)? != 0,
                })
            })
            .collect()
    }

    /// The next `limit` keys of `selection` after `after` (in msgtime, msgid order) that no hold
    /// of `holds` covers.
    pub async fn selected_keys(
        &self,
        selection: &Selection,
        holds: &[Hold],
        after: Option<&MessageKey>,
        limit: usize,
    ) -> Result<Vec<MessageKey>, sqlx::Error> {
        let mut q = QueryBuilder::<MySql>::new("SELECT msgid, msgtime FROM messages");
        selection.push_where(&mut q, holds);
        if let Some(after) = after {
            q.push(" AND (msgtime > ")
                .push_bind(after.msgtime)
                .push(" OR (msgtime = ")
                .push_bind(after.msgtime)
                .push(" AND msgid > ")
                .push_bind(after.msgid.clone())
                .push("))");
        }
        q.push(" ORDER BY msgtime, msgid LIMIT ")
            .push_bind(i64::try_from(limit).unwrap_or(i64::MAX));
        let rows = within(self.timeout(), q.build().fetch_all(self.pool())).await?;
        rows.iter()
            .map(|r| {
                Ok(MessageKey {
                    corp_id: selection.corp.clone(),
                    msgid: text(r.try_get(0)?),
                    msgtime: r.try_get(1)?,
                })
            })
            .collect()
    }

    /// The messages of `selection` a hold of `holds` keeps (what retention or erasure spares).
    pub async fn held_back(
        &self,
        selection: &Selection,
        holds: &[Hold],
    ) -> Result<u64, sqlx::Error> {
        let (held, values) = held_condition(holds);
        let mut q = QueryBuilder::<MySql>::new("SELECT COUNT(*) FROM messages WHERE corp_id = ");
        q.push_bind(selection.corp.clone());
        push_condition(&mut q, " AND (", &selection.condition, &selection.binds);
        let values: Vec<Bind> = values.into_iter().map(Bind::Text).collect();
        push_condition(&mut q, ") AND (", &held, &values);
        q.push(")");
        let n: i64 = within(
            self.timeout(),
            q.build_query_scalar().fetch_one(self.pool()),
        )
        .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// The media objects of `keys` (their rows in `media`): (msgid, object key), stored or not.
    pub async fn media_objects(
        &self,
        keys: &[MessageKey],
    ) -> Result<Vec<(String, String)>, sqlx::Error> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut q = QueryBuilder::<MySql>::new(
            "SELECT msgid, object_key FROM media WHERE (corp_id, msgid) IN ",
        );
        q.push_tuples(keys, |mut b, k| {
            b.push_bind(k.corp_id.clone()).push_bind(k.msgid.clone());
        });
        let rows = within(self.timeout(), q.build().fetch_all(self.pool())).await?;
        rows.iter()
            .map(|r| Ok((text(r.try_get(0)?), text(r.try_get(1)?))))
            .collect()
    }

    /// Deletes the `media` rows of `keys`; how many.
    pub async fn delete_media_rows(&self, keys: &[MessageKey]) -> Result<u64, sqlx::Error> {
        if keys.is_empty() {
            return Ok(0);
        }
        let mut q = QueryBuilder::<MySql>::new("DELETE FROM media WHERE (corp_id, msgid) IN ");
        q.push_tuples(keys, |mut b, k| {
            b.push_bind(k.corp_id.clone()).push_bind(k.msgid.clone());
        });
        Ok(within(self.timeout(), q.build().execute(self.pool()))
            .await?
            .rows_affected())
    }

    /// Deletes the messages of `keys` (one short statement by primary key); how many.
    pub async fn delete_messages(&self, keys: &[MessageKey]) -> Result<u64, sqlx::Error> {
        if keys.is_empty() {
            return Ok(0);
        }
        let mut q =
            QueryBuilder::<MySql>::new("DELETE FROM messages WHERE (corp_id, msgid, msgtime) IN ");
        q.push_tuples(keys, |mut b, k| {
            b.push_bind(k.corp_id.clone())
                .push_bind(k.msgid.clone())
                .push_bind(k.msgtime);
        });
        Ok(within(self.timeout(), q.build().execute(self.pool()))
            .await?
            .rows_affected())
    }

    /// The partitions of `messages`, lowest first.
    pub async fn partitions(&self) -> Result<Vec<Partition>, sqlx::Error> {
        let rows = within(
            self.timeout(),
            sqlx::query(
                "SELECT PARTITION_NAME, PARTITION_DESCRIPTION FROM information_schema.PARTITIONS \
                 WHERE TABLE_SCHEMA = ? AND TABLE_NAME = 'messages' AND PARTITION_NAME IS NOT NULL \
                 ORDER BY PARTITION_ORDINAL_POSITION",
            )
            .bind(self.database())
            .fetch_all(self.pool()),
        )
        .await?;
        rows.iter()
            .map(|r| {
                let name = text(r.try_get(0)?);
                let bound: Option<Vec<u8>> = r.try_get(1)?;
                Ok(Partition {
                    name,
                    less_than: bound.and_then(|b| text(b).parse().ok()),
                })
            })
            .collect()
    }

    /// Each corp's newest message with `msgtime` in `[from, to)` (`from` none: unbounded), and
    /// whether a hold of `holds` covers any of them.
    pub async fn range_contents(
        &self,
        from: Option<i64>,
        to: i64,
        holds: &[Hold],
    ) -> Result<(Vec<(String, i64)>, bool), sqlx::Error> {
        let from = from.unwrap_or(i64::MIN);
        let newest = within(
            self.timeout(),
            sqlx::query(
                "SELECT corp_id, MAX(msgtime) FROM messages WHERE msgtime >= ? AND msgtime < ? \
                 GROUP BY corp_id",
            )
            .bind(from)
            .bind(to)
            .fetch_all(self.pool()),
        )
        .await?
        .iter()
        .map(|r| Ok((text(r.try_get(0)?), r.try_get(1)?)))
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
        let (held, values) = held_condition(holds);
        let mut q = QueryBuilder::<MySql>::new(
            "SELECT COUNT(*) FROM (SELECT 1 FROM messages WHERE msgtime >= ",
        );
        q.push_bind(from).push(" AND msgtime < ").push_bind(to);
        let values: Vec<Bind> = values.into_iter().map(Bind::Text).collect();
        push_condition(&mut q, " AND (", &held, &values);
        q.push(") LIMIT 1) AS h");
        let any_held: i64 = within(
            self.timeout(),
            q.build_query_scalar().fetch_one(self.pool()),
        )
        .await?;
        Ok((newest, any_held > 0))
    }

    /// Deletes `user`'s room memberships in `corp`; how many.
    pub async fn delete_memberships(&self, corp: &str, user: &str) -> Result<u64, sqlx::Error> {
        Ok(within(
            self.timeout(),
            sqlx::query("DELETE FROM room_members WHERE corp_id = ? AND member = ?")
                .bind(corp)
                .bind(user)
                .execute(self.pool()),
        )
        .await?
        .rows_affected())
    }

    /// `user`'s room memberships in `corp`.
    pub async fn count_memberships(&self, corp: &str, user: &str) -> Result<u64, sqlx::Error> {
        let n: i64 = within(
            self.timeout(),
            sqlx::query_scalar(
                "SELECT COUNT(*) FROM room_members WHERE corp_id = ? AND member = ?",
            )
            .bind(corp)
            .bind(user)
            .fetch_one(self.pool()),
        )
        .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Drops partition `name` of `messages` (its rows gone at once, without a long delete).
    pub async fn drop_partition(&self, name: &str) -> Result<(), sqlx::Error> {
        within(
            self.timeout(),
            sqlx::query(&format!(
                "ALTER TABLE messages DROP PARTITION `{}`",
                name.replace('`', "")
            ))
            .execute(self.pool()),
        )
        .await
        .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_selection_binds_its_values_then_the_holds_in_order() {
        let hold = Hold {
            id: 1,
            corp_id: "wwa".into(),
            scope: crate::holds::HoldScope::User,
            subject: "zhangsan".into(),
            reason: "r".into(),
            set_by: "os:a".into(),
            set_at_ms: 0,
            released: None,
        };
        let mut q = QueryBuilder::<MySql>::new("SELECT 1 FROM messages");
        Selection::before("wwa", 42).push_where(&mut q, &[hold]);
        let sql = q.sql().to_string();
        assert_eq!(
            sql,
            "SELECT 1 FROM messages WHERE corp_id = ? AND (msgtime < ?) AND NOT (((corp_id = ? AND (sender = ? OR JSON_CONTAINS(receivers, JSON_QUOTE(?))))))"
        );
        let mut q = QueryBuilder::<MySql>::new("SELECT 1 FROM messages");
        Selection::before("wwa", 42).push_where(&mut q, &[]);
        assert!(
            q.sql().ends_with("AND (msgtime < ?) AND NOT (FALSE)"),
            "{}",
            q.sql()
        );
    }
}
