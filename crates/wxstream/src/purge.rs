//! Deleting selected messages from every store that holds them, for retention (and erasure):
//! the archive's MySQL rows, their search documents, their media objects and rows, and the
//! dead letters of those messages. A selection is walked in bounded batches; each batch's
//! dependents go first and its MySQL rows last, so a run that stops half way is finished by the
//! next (every step is idempotent). Whole monthly partitions and indices whose every message is
//! selected are dropped at the end instead of deleted row by row.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::Context;
use serde_json::{Value, json};
use wx_kafka::{KafkaConfig, Producer};
use wx_mysql::MessageStore;
use wx_mysql::holds::Hold;
use wx_mysql::purge::{MessageKey, Selection};
use wx_runtime::StageSettings;
use wx_s3::ObjectStore;
use wx_search::SearchIndex;
use wx_sink::SinkSettings;
use wx_topology::ConnectorClass;

use crate::config::WorkerConfig;

/// Messages per batch: one SELECT, one bulk delete, one DELETE by primary key.
const BATCH: usize = 500;

/// The stores of the archive, from the topology's sink (MySQL, search, dead-letter topic) and
/// media (bucket) connectors.
pub struct Archive {
    pub mysql: MessageStore,
    pub search: SearchIndex,
    /// None when the topology has no media connector (no media archived).
    pub bucket: Option<ObjectStore>,
    pub kafka: KafkaConfig,
    pub dead_letter_topic: String,
    producer: Producer,
    codec: std::sync::Arc<wx_codec::Codec>,
}

impl Archive {
    pub async fn connect(config: &WorkerConfig, mysql: MessageStore) -> anyhow::Result<Archive> {
        let topology = config.topology()?;
        let sink = crate::run_cmd::connector_of(&topology, ConnectorClass::Sink)?;
        let settings = SinkSettings::parse(&sink.settings)
            .with_context(|| format!("connector {}", sink.name))?;
        let search = SearchIndex::new(
            &settings.search_endpoint()?,
            &settings.index_prefix,
            settings.store_timeout,
        )?;
        let bucket = match topology
            .connectors
            .iter()
            .find(|c| c.class == ConnectorClass::Media)
        {
            Some(media) => {
                let settings = wx_media::MediaSettings::parse(&media.settings)
                    .with_context(|| format!("connector {}", media.name))?;
                Some(wx_media::connect_store(&settings).await?)
            }
            None => None,
        };
        let dead_letter_topic = sink
            .dead_letter_topic
            .clone()
            .unwrap_or_else(|| format!("{}wxstream.dead-letter", config.topic_prefix));
        Ok(Archive {
            mysql,
            search,
            bucket,
            kafka: config.kafka.clone(),
            dead_letter_topic,
            producer: Producer::new(&config.kafka, "wxstream-purge", settings.store_timeout)?,
            codec: config.codec().await?,
        })
    }

    /// The live dead letters, by record key.
    pub async fn dead_letters(
        &self,
        timeout: Duration,
    ) -> anyhow::Result<BTreeMap<String, wx_codec::DeadLetter>> {
        let (kafka, topic) = (self.kafka.clone(), self.dead_letter_topic.clone());
        let records =
            tokio::task::spawn_blocking(move || wx_kafka::read_topic(&kafka, &topic, timeout))
                .await??;
        Ok(wx_runtime::letters::parked(&self.codec, &records)
            .letters
            .into_iter()
            .collect())
    }

    /// Tombstones the letters of `keys`; how many.
    pub async fn tombstone(&self, keys: &[String]) -> anyhow::Result<u64> {
        for key in keys {
            self.producer
                .send_tombstone(&self.dead_letter_topic, key.as_bytes())
                .await?;
        }
        Ok(keys.len() as u64)
    }
}

/// What a purge deleted (or, in a dry run, would delete), per store.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    pub mysql_messages: u64,
    pub mysql_partitions_dropped: u64,
    pub mysql_media_rows: u64,
    pub search_documents: u64,
    pub search_indices_deleted: u64,
    pub media_objects: u64,
    pub dead_letters: u64,
    pub held_back: u64,
}

impl Counts {
    pub fn json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &Counts) {
        self.mysql_messages += other.mysql_messages;
        self.mysql_partitions_dropped += other.mysql_partitions_dropped;
        self.mysql_media_rows += other.mysql_media_rows;
        self.search_documents += other.search_documents;
        self.search_indices_deleted += other.search_indices_deleted;
        self.media_objects += other.media_objects;
        self.dead_letters += other.dead_letters;
        self.held_back += other.held_back;
    }

    /// The table printed at the end of a run.
    pub fn print(&self, dry_run: bool) {
        let verb = if dry_run { "would delete" } else { "deleted" };
        println!("{:<34} {:>10}", format!("store ({verb})"), "count");
        for (store, n) in [
            ("mysql messages", self.mysql_messages),
            ("mysql partitions dropped", self.mysql_partitions_dropped),
            ("mysql media rows", self.mysql_media_rows),
            ("search documents", self.search_documents),
            ("search indices deleted", self.search_indices_deleted),
            ("media objects", self.media_objects),
            ("dead letters (tombstoned)", self.dead_letters),
            ("held back by legal holds", self.held_back),
        ] {
            println!("{store:<34} {n:>10}");
        }
    }
}

/// Whole ranges of `msgtime` every message of which is selected: partitions to drop and months
/// whose search index to delete, decided before the walk.
#[derive(Debug, Default)]
pub struct Wholes {
    /// (partition name, lower bound, upper bound).
    pub partitions: Vec<(String, Option<i64>, i64)>,
    /// (index name, month start, month end).
    pub indices: Vec<(String, i64, i64)>,
}

impl Wholes {
    fn in_partition(&self, msgtime: i64) -> bool {
        self.partitions
            .iter()
            .any(|(_, from, to)| from.is_none_or(|f| msgtime >= f) && msgtime < *to)
    }

    fn in_index(&self, msgtime: i64) -> bool {
        self.indices
            .iter()
            .any(|(_, from, to)| msgtime >= *from && msgtime < *to)
    }

    /// The partitions and monthly indices all of whose messages `selected(corp, newest)` selects
    /// and no hold covers.
    pub async fn find(
        archive: &Archive,
        holds: &[Hold],
        selected: &(dyn Fn(&str, i64) -> bool + Sync),
    ) -> anyhow::Result<Wholes> {
        let whole = |contents: &(Vec<(String, i64)>, bool)| all_selected(contents, selected);
        let mut wholes = Wholes::default();
        let mut from = None;
        for p in archive.mysql.partitions().await? {
            let Some(to) = p.less_than else { break };
            if whole(&archive.mysql.range_contents(from, to, holds).await?) {
                wholes.partitions.push((p.name, from, to));
            }
            from = Some(to);
        }
        let prefix = archive.search.prefix().to_string();
        for (index, _) in archive.search.monthly_indices().await? {
            let Some(month) = index
                .strip_prefix(&format!("{prefix}-"))
                .and_then(parse_month)
            else {
                continue;
            };
            let (start, end) = (month.start_ms(), month.next().start_ms());
            if whole(
                &archive
                    .mysql
                    .range_contents(Some(start), end, holds)
                    .await?,
            ) {
                wholes.indices.push((index, start, end));
            }
        }
        Ok(wholes)
    }
}

/// Whether a range's contents (each corp's newest message, whether a hold covers any) are all
/// selected by `selected(corp, newest)` and unheld.
fn all_selected(
    (newest, held): &(Vec<(String, i64)>, bool),
    selected: &(dyn Fn(&str, i64) -> bool + Sync),
) -> bool {
    !held && newest.iter().all(|(corp, at)| selected(corp, *at))
}

/// `YYYY.MM` as a month.
fn parse_month(suffix: &str) -> Option<wx_codec::months::Month> {
    let (year, month) = suffix.split_once('.')?;
    let month: u32 = month.parse().ok()?;
    (1..=12)
        .contains(&month)
        .then_some(wx_codec::months::Month {
            year: year.parse().ok()?,
            month,
        })
}

/// Deletes (unless `dry_run`) every message of `selection` no hold covers, with its search
/// document, media and dead letters (`letters`: the live letters, keyed; those of a deleted
/// message's msgid are tombstoned and removed from it). Rows in `wholes`' partitions and
/// documents in its indices are left for [`finish`]. `progress` is told each batch's size.
pub async fn purge(
    archive: &Archive,
    selection: &Selection,
    holds: &[Hold],
    wholes: &Wholes,
    letters: &mut BTreeMap<String, wx_codec::DeadLetter>,
    dry_run: bool,
    progress: &(dyn Fn(u64) + Sync),
) -> anyhow::Result<Counts> {
    let mut counts = Counts {
        held_back: archive.mysql.held_back(selection, holds).await?,
        ..Counts::default()
    };
    let mut after: Option<MessageKey> = None;
    loop {
        let keys = archive
            .mysql
            .selected_keys(selection, holds, after.as_ref(), BATCH)
            .await?;
        let Some(last) = keys.last() else { break };
        after = Some(last.clone());
        let batch = purge_batch(archive, &keys, wholes, letters, dry_run).await?;
        counts.add(&batch);
        progress(keys.len() as u64);
    }
    Ok(counts)
}

async fn purge_batch(
    archive: &Archive,
    keys: &[MessageKey],
    wholes: &Wholes,
    letters: &mut BTreeMap<String, wx_codec::DeadLetter>,
    dry_run: bool,
) -> anyhow::Result<Counts> {
    let mut counts = Counts::default();
    // Media: the objects, then their rows.
    let objects = archive.mysql.media_objects(keys).await?;
    if let Some(bucket) = &archive.bucket {
        for (_, object_key) in &objects {
            if !dry_run {
                bucket
                    .delete(object_key)
                    .await
                    .with_context(|| format!("deleting media object {object_key}"))?;
            }
            counts.media_objects += 1;
        }
    }
    counts.mysql_media_rows = if dry_run {
        objects.len() as u64
    } else {
        archive.mysql.delete_media_rows(keys).await?
    };
    // Search documents (`<corp>/<msgid>` in the message's monthly index), except those whose
    // whole index goes at the end.
    let docs: Vec<(String, String)> = keys
        .iter()
        .filter(|k| !wholes.in_index(k.msgtime))
        .map(|k| {
            (
                wx_search::index_for(archive.search.prefix(), k.msgtime),
                wx_codec::message_identity(&k.corp_id, &k.msgid),
            )
        })
        .collect();
    counts.search_documents = if dry_run {
        docs.len() as u64
    } else {
        archive.search.delete_docs(&docs).await?
    };
    // Dead letters of these messages.
    let msgids: BTreeSet<(&str, &str)> = keys
        .iter()
        .map(|k| (k.corp_id.as_str(), k.msgid.as_str()))
        .collect();
    let dead: Vec<String> = letters
        .iter()
        .filter(|(_, l)| match (&l.corp_id, &l.msgid) {
            (Some(corp), Some(msgid)) => msgids.contains(&(corp.as_str(), msgid.as_str())),
            _ => false,
        })
        .map(|(key, _)| key.clone())
        .collect();
    counts.dead_letters = if dry_run {
        dead.len() as u64
    } else {
        archive.tombstone(&dead).await?
    };
    for key in &dead {
        letters.remove(key);
    }
    // The rows last, except those whose whole partition goes at the end.
    let rows: Vec<MessageKey> = keys
        .iter()
        .filter(|k| !wholes.in_partition(k.msgtime))
        .cloned()
        .collect();
    counts.mysql_messages = (keys.len() - rows.len()) as u64
        + if dry_run {
            rows.len() as u64
        } else {
            archive.mysql.delete_messages(&rows).await?
        };
    Ok(counts)
}

/// Drops `wholes`' partitions and deletes its indices (unless `dry_run`), each checked again
/// first. A month that gained a message to keep since the run began keeps its index, and the
/// documents `query` selects are deleted from it instead (a partition that did keeps its rows:
/// the next run finds and deletes the expired ones). What went.
pub async fn finish(
    archive: &Archive,
    holds: &[Hold],
    wholes: &Wholes,
    selected: &(dyn Fn(&str, i64) -> bool + Sync),
    query: &Value,
    dry_run: bool,
) -> anyhow::Result<Counts> {
    let mut counts = Counts::default();
    let still_whole = |contents: (Vec<(String, i64)>, bool)| all_selected(&contents, selected);
    for (index, start, end) in &wholes.indices {
        if dry_run {
            counts.search_indices_deleted += 1;
        } else if still_whole(
            archive
                .mysql
                .range_contents(Some(*start), *end, holds)
                .await?,
        ) {
            archive.search.delete_index(index).await?;
            counts.search_indices_deleted += 1;
        } else {
            tracing::warn!(index = %index, "A monthly index to delete gained messages to keep since the run began; kept, its selected documents deleted by query.");
            counts.search_documents += archive.search.delete_by_query(index, query.clone()).await?;
        }
    }
    for (name, from, to) in &wholes.partitions {
        if dry_run {
            counts.mysql_partitions_dropped += 1;
            continue;
        }
        if still_whole(archive.mysql.range_contents(*from, *to, holds).await?) {
            archive.mysql.drop_partition(name).await?;
            counts.mysql_partitions_dropped += 1;
        } else {
            tracing::warn!(partition = %name, "A partition to drop gained rows to keep since the run began; kept (the next run deletes its expired rows).");
        }
    }
    Ok(counts)
}

/// The search query of held documents' exclusions: one `must_not` clause per hold.
pub fn held_clauses(holds: &[Hold]) -> Vec<Value> {
    use wx_mysql::holds::HoldScope;
    holds
        .iter()
        .filter(|h| h.released.is_none())
        .map(|h| {
            let corp = json!({"term": {"corp_id": h.corp_id}});
            match h.scope {
                HoldScope::Corp => corp,
                HoldScope::User => json!({"bool": {"filter": [corp], "should": [
                    {"term": {"from": h.subject}}, {"term": {"tolist": h.subject}}
                ], "minimum_should_match": 1}}),
                HoldScope::Conversation => json!({"bool": {"filter": [
                    corp, {"term": {"conversation_id": h.subject}}
                ]}}),
            }
        })
        .collect()
}

/// The counts of several purges, as one JSON object, with the per-corp figures.
pub fn summary(total: &Counts, per_corp: &BTreeMap<String, Counts>) -> Value {
    json!({
        "total": total.json(),
        "corps": per_corp.iter().map(|(c, n)| (c.clone(), n.json())).collect::<serde_json::Map<_, _>>(),
    })
}
