//! Rust mirrors of the schemas in `schemas/`. Field names and order follow the `.avsc` files
//! exactly; a round-trip test in `lib.rs` fails when the two drift apart.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::RecordKind;

/// A record type with an Avro schema in `schemas/`.
pub trait AvroRecord: Serialize + for<'de> Deserialize<'de> + Clone {
    /// Which schema the type is written with.
    const KIND: RecordKind;

    /// The record as it is written: itself, unless its kind bounds its size (a dead letter
    /// keeps a bounded prefix of what failed, so it always fits its topic).
    fn bounded(&self) -> std::borrow::Cow<'_, Self> {
        std::borrow::Cow::Borrowed(self)
    }

    /// The record read straight from a datum written with this build's own schema of its
    /// kind, where the kind has such a reader (None: the generic path).
    fn decode_direct(_datum: &[u8]) -> Option<Result<Self, String>> {
        None
    }
}

/// Which source produced a raw batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SourceKind {
    /// A page of GetChatData.
    Archive,
    /// One signed, encrypted HTTP callback.
    Callback,
}

/// One chatdata item exactly as GetChatData returned it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncryptedItem {
    pub seq: i64,
    pub msgid: String,
    pub publickey_ver: i32,
    pub encrypt_random_key: String,
    pub encrypt_chat_msg: String,
}

/// A callback request as received, still encrypted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallbackEnvelope {
    pub method: String,
    pub content_type: String,
    pub query: BTreeMap<String, String>,
    #[serde(with = "apache_avro::serde_avro_bytes")]
    pub body: Vec<u8>,
}

/// The value of a record on the raw topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RawBatch {
    pub corp_id: String,
    pub source: SourceKind,
    pub seq_from: Option<i64>,
    pub seq_to: Option<i64>,
    pub fetched_at: i64,
    pub items: Vec<EncryptedItem>,
    pub callback: Option<CallbackEnvelope>,
}

impl AvroRecord for RawBatch {
    const KIND: RecordKind = RecordKind::RawBatch;
}

/// Where a clean message came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceCoordinates {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub seq: Option<i64>,
}

/// The value of a record on the clean topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub msgid: String,
    pub corp_id: String,
    pub action: String,
    pub from: String,
    pub tolist: Vec<String>,
    pub roomid: String,
    pub msgtime: i64,
    pub msgtype: String,
    pub payload_json: String,
    pub extra_json: Option<String>,
    pub text: Option<String>,
    pub recalled_msgid: Option<String>,
    pub conversation_id: String,
    pub is_external: bool,
    pub publickey_ver: Option<i32>,
    pub source: SourceCoordinates,
    pub decrypted_at: i64,
}

impl AvroRecord for ChatMessage {
    const KIND: RecordKind = RecordKind::ChatMessage;

    fn decode_direct(datum: &[u8]) -> Option<Result<Self, String>> {
        Some(crate::direct::chat_message(datum))
    }
}

/// A message's identity across the pipeline: `<corp>/<msgid>`. A msgid is unique only within
/// its corp (callback msgids such as `callback:agent:1000002:<MsgId>` repeat across corps, since
/// AgentIDs like 1000002 are common to every corp), so every store and key that names a message
/// names it by this: the search document's `_id`, MySQL's primary key (corp_id, msgid, msgtime),
/// the dead-letter key and the stats windows (keyed by corp).
pub fn message_identity(corp_id: &str, msgid: &str) -> String {
    format!("{corp_id}/{msgid}")
}

impl ChatMessage {
    /// [`message_identity`] of this message.
    pub fn identity(&self) -> String {
        message_identity(&self.corp_id, &self.msgid)
    }

    /// The media items the message carries ([`crate::media::media_items`]).
    pub fn media_items(&self) -> Vec<crate::media::MediaItem> {
        crate::media::media_items(&self.msgtype, &self.payload_json)
    }

    /// The object key of its media item `item` ([`crate::media::media_object_key`]).
    pub fn media_key(&self, item: u32) -> String {
        crate::media::media_object_key(&self.corp_id, self.msgtime, &self.msgid, item)
    }

    /// The clean topic's key: `<corp>/<conversation_id>`, so a conversation's messages stay in
    /// order on one partition and two corps' conversations of the same id are not one key.
    pub fn partition_key(&self) -> String {
        format!("{}/{}", self.corp_id, self.conversation_id)
    }
}

/// The value of a record on the dead-letter topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    #[serde(with = "apache_avro::serde_avro_bytes")]
    pub original: Vec<u8>,
    pub original_format: String,
    pub error_class: String,
    pub error_message: String,
    pub stage: String,
    pub corp_id: Option<String>,
    pub msgid: Option<String>,
    pub key_version: Option<i32>,
    pub source_topic: String,
    pub source_partition: i32,
    pub source_offset: i64,
    pub seq: Option<i64>,
    pub first_failed_at: i64,
    pub last_failed_at: i64,
    pub attempts: i32,
}

impl AvroRecord for DeadLetter {
    const KIND: RecordKind = RecordKind::DeadLetter;

    /// Keeps at most [`DeadLetter::MAX_ORIGINAL_BYTES`] of the original, so a letter always
    /// fits the dead-letter topic's `max.message.bytes` (1 MiB in `topology/topics.yaml`), even
    /// for a raw record of up to 8 MiB: a letter that did not fit would be refused by the broker
    /// for ever and stall its partition. A cut letter says so in `original_format`
    /// (`<format>-prefix`) and in its message; the whole record stays at its source coordinates.
    fn bounded(&self) -> std::borrow::Cow<'_, Self> {
        if self.original.len() <= Self::MAX_ORIGINAL_BYTES {
            return std::borrow::Cow::Borrowed(self);
        }
        let mut cut = self.clone();
        cut.original.truncate(Self::MAX_ORIGINAL_BYTES);
        cut.original_format = format!("{}-prefix", self.original_format);
        cut.error_message = format!(
            "{} (the original has {} bytes; its first {} are kept here, the whole record stays at {}/{}/{})",
            self.error_message,
            self.original.len(),
            Self::MAX_ORIGINAL_BYTES,
            self.source_topic,
            self.source_partition,
            self.source_offset
        );
        std::borrow::Cow::Owned(cut)
    }
}

/// Where a parked record was read: its topic, partition and offset, plus the archive item's
/// seq when one item of a raw batch is parked on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParkedFrom<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub seq: Option<i64>,
}

impl DeadLetter {
    /// The most of the original bytes a letter carries (see [`AvroRecord::bounded`]).
    pub const MAX_ORIGINAL_BYTES: usize = 768 * 1024;

    /// The one constructor every stage parks with: what failed (`original`, read back as
    /// `original_format`), where it was read, and why (`class`, a bounded label, and a message
    /// without content). The identity fields are empty until [`DeadLetter::about`] fills them.
    pub fn new(
        stage: &str,
        from: ParkedFrom<'_>,
        original: Vec<u8>,
        original_format: &str,
        class: &str,
        message: impl Into<String>,
        now_ms: i64,
    ) -> DeadLetter {
        DeadLetter {
            original,
            original_format: original_format.to_string(),
            error_class: class.to_string(),
            error_message: message.into(),
            stage: stage.to_string(),
            corp_id: None,
            msgid: None,
            key_version: None,
            source_topic: from.topic.to_string(),
            source_partition: from.partition,
            source_offset: from.offset,
            seq: from.seq,
            first_failed_at: now_ms,
            last_failed_at: now_ms,
            attempts: 1,
        }
    }

    /// The same letter naming the message it is about (which also makes its key
    /// `<stage>:<corp>/<msgid>`).
    pub fn about(mut self, corp_id: &str, msgid: Option<&str>, key_version: Option<i32>) -> Self {
        self.corp_id = Some(corp_id.to_string());
        self.msgid = msgid.map(str::to_string);
        self.key_version = key_version;
        self
    }

    /// The same letter naming a clean message (a later stage parking what it cannot store or
    /// count).
    pub fn about_message(self, message: &crate::ChatMessage) -> Self {
        let seq = message.source.seq.or(self.seq);
        DeadLetter {
            seq,
            ..self.about(
                &message.corp_id,
                Some(&message.msgid),
                message.publickey_ver,
            )
        }
    }

    /// This letter failing again on a replay: the new failure's cause, the first failure time
    /// kept, `attempts` + 1.
    pub fn failed_again(&self, again: DeadLetter, now_ms: i64) -> DeadLetter {
        DeadLetter {
            first_failed_at: self.first_failed_at,
            last_failed_at: now_ms,
            attempts: self.attempts.saturating_add(1),
            ..again
        }
    }

    /// [`message_identity`] of the message the letter is about (None when it names none).
    pub fn identity(&self) -> Option<String> {
        Some(message_identity(
            self.corp_id.as_deref()?,
            self.msgid.as_deref()?,
        ))
    }

    /// The compaction key of a dead letter, one rule for every stage: what was parked, unique
    /// per record, so compaction of the dead-letter topic never merges two parked records.
    /// `<stage>:<corp>/<msgid>` when both are known (a replay parks the same message under the
    /// same key, and redrive's tombstone clears it), else the source coordinates
    /// `<stage>:<topic>/<partition>/<offset>` plus `/<seq>` when an archive item is parked on
    /// its own (the items of one raw record share its offset).
    pub fn key(&self) -> String {
        match (self.identity(), self.seq) {
            (Some(identity), _) => format!("{}:{identity}", self.stage),
            (None, Some(seq)) => format!(
                "{}:{}/{}/{}/{seq}",
                self.stage, self.source_topic, self.source_partition, self.source_offset
            ),
            _ => format!(
                "{}:{}/{}/{}",
                self.stage, self.source_topic, self.source_partition, self.source_offset
            ),
        }
    }
}

/// The value of a record on the stats topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupWindowCount {
    pub corp_id: String,
    pub group_id: String,
    pub group_kind: String,
    pub window_size_ms: i64,
    pub window_start: i64,
    pub window_end: i64,
    pub total: i64,
    pub by_msgtype: BTreeMap<String, i64>,
    /// `final` in the schema (a reserved word in Rust).
    #[serde(rename = "final")]
    pub is_final: bool,
    pub revision: i32,
    pub emitted_at: i64,
}

impl AvroRecord for GroupWindowCount {
    const KIND: RecordKind = RecordKind::GroupWindowCount;
}

impl GroupWindowCount {
    /// The compaction key on the stats topic: `corp/group/size_ms/start`.
    pub fn key(&self) -> String {
        format!(
            "{}/{}/{}/{}",
            self.corp_id, self.group_id, self.window_size_ms, self.window_start
        )
    }
}
