//! One raw record in, its outcomes out: a clean message, a dead letter with its cause, or a
//! filtered item (a callback event, which is not a message). Synchronous and CPU-bound; the
//! processor runs it on every core. Nothing here does I/O or logs content.

use std::collections::HashMap;
use std::sync::Arc;

use rayon::prelude::*;
use wx_codec::{
    CallbackEnvelope, ChatMessage, Codec, DeadLetter, EncryptedItem, ParkedFrom, RawBatch,
    SourceCoordinates, SourceKind,
};
use wx_crypto::{ArchiveCipher, CallbackCrypt, Envelope, KeyRingError};

use crate::callback_msg::{self, CallbackOutcome};
pub use crate::failure::Failure;
use crate::keys::ReloadingKeys;
use crate::normalise::{self, Normalised};

/// How a dead letter's `original` bytes are to be read back.
pub mod original_format {
    /// One GetChatData item as JSON (`seq, msgid, publickey_ver, encrypt_random_key,
    /// encrypt_chat_msg`), exactly the shape WeCom serves.
    pub const ARCHIVE_ITEM: &str = "archive-item-json";
    /// A whole raw-topic record value (a framed Avro RawBatch, or bytes that failed to decode
    /// as one).
    pub const RAW_RECORD: &str = "raw-record";
}

/// Where a raw record was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawSource {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// What became of one item.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Clean(ChatMessage),
    Dead(DeadLetter),
    /// Not a message (e.g. a callback event); counted, not forwarded.
    Filtered {
        reason: &'static str,
    },
}

impl Outcome {
    /// The item's msgid, when one is known.
    pub fn msgid(&self) -> Option<&str> {
        match self {
            Outcome::Clean(m) => Some(&m.msgid),
            Outcome::Dead(d) => d.msgid.as_deref(),
            Outcome::Filtered { .. } => None,
        }
    }
}

/// Decrypts and normalises raw records.
pub struct Decryptor {
    keys: Arc<ReloadingKeys>,
    cipher: Arc<dyn ArchiveCipher>,
    callbacks: HashMap<String, CallbackCrypt>,
    codec: Arc<Codec>,
}

impl std::fmt::Debug for Decryptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decryptor")
            .field("keys", &self.keys.current().versions())
            .field("callback_corps", &self.callbacks.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

fn item_json(item: &EncryptedItem) -> Vec<u8> {
    serde_json::json!({
        "seq": item.seq,
        "msgid": item.msgid,
        "publickey_ver": item.publickey_ver,
        "encrypt_random_key": item.encrypt_random_key,
        "encrypt_chat_msg": item.encrypt_chat_msg,
    })
    .to_string()
    .into_bytes()
}

fn message(
    n: Normalised,
    corp_id: &str,
    publickey_ver: Option<i32>,
    source: SourceCoordinates,
    now_ms: i64,
) -> ChatMessage {
    ChatMessage {
        msgid: n.msgid,
        corp_id: corp_id.to_string(),
        action: n.action,
        from: n.from,
        tolist: n.tolist,
        roomid: n.roomid,
        msgtime: n.msgtime,
        msgtype: n.msgtype,
        payload_json: n.payload_json,
        extra_json: n.extra_json,
        text: n.text,
        recalled_msgid: n.recalled_msgid,
        conversation_id: n.conversation_id,
        is_external: n.is_external,
        publickey_ver,
        source,
        decrypted_at: now_ms,
    }
}

/// What a dead letter needs besides its failure.
struct Parked<'a> {
    original: Vec<u8>,
    format: &'static str,
    corp_id: Option<&'a str>,
    msgid: Option<&'a str>,
    key_version: Option<i32>,
    seq: Option<i64>,
}

fn dead_letter(
    parked: Parked<'_>,
    failure: Failure,
    source: &RawSource,
    now_ms: i64,
) -> DeadLetter {
    let letter = DeadLetter::new(
        crate::STAGE,
        ParkedFrom {
            topic: &source.topic,
            partition: source.partition,
            offset: source.offset,
            seq: parked.seq,
        },
        parked.original,
        parked.format,
        failure.class,
        failure.message,
        now_ms,
    );
    match parked.corp_id {
        Some(corp) => letter.about(corp, parked.msgid, parked.key_version),
        None => letter,
    }
}

impl Decryptor {
    pub fn new(
        keys: Arc<ReloadingKeys>,
        cipher: Arc<dyn ArchiveCipher>,
        callbacks: HashMap<String, CallbackCrypt>,
        codec: Arc<Codec>,
    ) -> Decryptor {
        Decryptor {
            keys,
            cipher,
            callbacks,
            codec,
        }
    }

    /// A decryptor for the simulator's stand-in scheme with the private keys of one shared
    /// directory and no callback credentials (benchmarks, and tests that decrypt a feed in
    /// process).
    pub fn simulator(
        shared_dir: &std::path::Path,
        codec: Arc<Codec>,
    ) -> Result<Decryptor, KeyRingError> {
        let keys = ReloadingKeys::load(crate::keys::KeySource {
            shared_dir: shared_dir.to_path_buf(),
            corp_dirs: Default::default(),
        })?;
        Ok(Decryptor::new(
            Arc::new(keys),
            Arc::new(wx_crypto::SimulatorCipher),
            HashMap::new(),
            codec,
        ))
    }

    pub fn keys(&self) -> &Arc<ReloadingKeys> {
        &self.keys
    }

    /// Decrypts and normalises one archive item.
    pub fn decrypt_item(&self, corp_id: &str, item: &EncryptedItem) -> Result<Normalised, Failure> {
        let version = u32::try_from(item.publickey_ver).map_err(|_| {
            Failure::new(
                crate::failure::UNKNOWN_KEY_VERSION,
                "publickey_ver is negative",
            )
        })?;
        let rings = self.keys.current();
        let random_key = rings
            .for_corp(corp_id)
            .decrypt_random_key(version, &item.encrypt_random_key)?;
        let plaintext = self.cipher.decrypt(&random_key, &item.encrypt_chat_msg)?;
        Ok(normalise::normalise(&plaintext, Some(&item.msgid))?)
    }

    fn archive_item(
        &self,
        corp_id: &str,
        item: &EncryptedItem,
        source: &RawSource,
        now_ms: i64,
    ) -> Outcome {
        let coordinates = SourceCoordinates {
            topic: source.topic.clone(),
            partition: source.partition,
            offset: source.offset,
            seq: Some(item.seq),
        };
        match self.decrypt_item(corp_id, item) {
            Ok(n) => Outcome::Clean(message(
                n,
                corp_id,
                Some(item.publickey_ver),
                coordinates,
                now_ms,
            )),
            Err(failure) => Outcome::Dead(dead_letter(
                Parked {
                    original: item_json(item),
                    format: original_format::ARCHIVE_ITEM,
                    corp_id: Some(corp_id),
                    msgid: Some(&item.msgid),
                    key_version: Some(item.publickey_ver),
                    seq: Some(item.seq),
                },
                failure,
                source,
                now_ms,
            )),
        }
    }

    fn callback(
        &self,
        corp_id: &str,
        envelope: &CallbackEnvelope,
        value: &[u8],
        source: &RawSource,
        now_ms: i64,
    ) -> Outcome {
        let result = self.decrypt_callback(corp_id, envelope);
        let coordinates = SourceCoordinates {
            topic: source.topic.clone(),
            partition: source.partition,
            offset: source.offset,
            seq: None,
        };
        match result {
            Ok(CallbackOutcome::Message(n)) => {
                Outcome::Clean(message(*n, corp_id, None, coordinates, now_ms))
            }
            Ok(CallbackOutcome::Event) => Outcome::Filtered {
                reason: "callback_event",
            },
            Err(failure) => Outcome::Dead(dead_letter(
                Parked {
                    original: value.to_vec(),
                    format: original_format::RAW_RECORD,
                    corp_id: Some(corp_id),
                    msgid: None,
                    key_version: None,
                    seq: None,
                },
                failure,
                source,
                now_ms,
            )),
        }
    }

    fn decrypt_callback(
        &self,
        corp_id: &str,
        envelope: &CallbackEnvelope,
    ) -> Result<CallbackOutcome, Failure> {
        let crypt = self.callbacks.get(corp_id).ok_or_else(|| {
            Failure::new(
                "no_credentials",
                format!("no callback credentials for corp {corp_id} in the decrypt settings"),
            )
        })?;
        let parsed = if envelope.content_type.contains("json") {
            Envelope::from_json(&envelope.body)
        } else {
            Envelope::from_xml(&envelope.body)
        }
        .map_err(|e| Failure::new("callback_envelope", e))?;
        let query = |name: &str| envelope.query.get(name).map_or("", String::as_str);
        let plaintext = crypt
            .decrypt_message(
                query("msg_signature"),
                query("timestamp"),
                query("nonce"),
                &parsed,
            )
            .map_err(|e| {
                let class = match e {
                    wx_crypto::CallbackError::BadSignature => "callback_signature",
                    _ => "callback_decrypt",
                };
                Failure::new(class, e)
            })?;
        callback_msg::normalise(&plaintext, corp_id)
    }

    /// Every outcome of one raw-topic record, in item order. Archive items are decrypted in
    /// parallel on the rayon pool.
    pub fn process_record(
        &self,
        value: Option<&[u8]>,
        source: &RawSource,
        now_ms: i64,
    ) -> Vec<Outcome> {
        let Some(value) = value else {
            return vec![Outcome::Filtered {
                reason: "tombstone",
            }];
        };
        let batch: RawBatch = match self.codec.decode(value) {
            Ok(batch) => batch,
            Err(e) => {
                return vec![Outcome::Dead(dead_letter(
                    Parked {
                        original: value.to_vec(),
                        format: original_format::RAW_RECORD,
                        corp_id: None,
                        msgid: None,
                        key_version: None,
                        seq: None,
                    },
                    Failure::new(wx_runtime::UNDECODABLE, e),
                    source,
                    now_ms,
                ))];
            }
        };
        match (batch.source, &batch.callback) {
            (SourceKind::Callback, Some(envelope)) => {
                vec![self.callback(&batch.corp_id, envelope, value, source, now_ms)]
            }
            (SourceKind::Callback, None) => vec![Outcome::Dead(dead_letter(
                Parked {
                    original: value.to_vec(),
                    format: original_format::RAW_RECORD,
                    corp_id: Some(&batch.corp_id),
                    msgid: None,
                    key_version: None,
                    seq: None,
                },
                Failure::new("missing_field", "a callback batch without its envelope"),
                source,
                now_ms,
            ))],
            (SourceKind::Archive, _) => batch
                .items
                .par_iter()
                .with_min_len(8)
                .map(|item| self.archive_item(&batch.corp_id, item, source, now_ms))
                .collect(),
        }
    }

    /// Replays a dead letter of this stage through decryption. A failure again gives a dead
    /// letter with the same identity, `attempts` + 1 and the first failure time kept.
    pub fn redrive(&self, dead: &DeadLetter, now_ms: i64) -> Vec<Outcome> {
        let source = RawSource {
            topic: dead.source_topic.clone(),
            partition: dead.source_partition,
            offset: dead.source_offset,
        };
        let outcomes = match dead.original_format.as_str() {
            original_format::ARCHIVE_ITEM => {
                match serde_json::from_slice::<EncryptedItem>(&dead.original) {
                    Ok(item) => {
                        let corp = dead.corp_id.clone().unwrap_or_default();
                        vec![self.archive_item(&corp, &item, &source, now_ms)]
                    }
                    Err(e) => vec![Outcome::Dead(DeadLetter {
                        error_class: wx_runtime::UNDECODABLE.into(),
                        error_message: format!("the parked archive item is not valid: {e}"),
                        ..dead.clone()
                    })],
                }
            }
            // A clean message the clean topic refused as too large: written again as it was
            // decrypted (once the topic's limit is raised).
            wx_runtime::CLEAN_RECORD => match self.codec.decode::<ChatMessage>(&dead.original) {
                Ok(message) => vec![Outcome::Clean(message)],
                Err(e) => vec![Outcome::Dead(DeadLetter {
                    error_class: wx_runtime::UNDECODABLE.into(),
                    error_message: format!("the parked clean record does not decode: {e}"),
                    ..dead.clone()
                })],
            },
            _ => self.process_record(Some(&dead.original), &source, now_ms),
        };
        outcomes
            .into_iter()
            .map(|o| match o {
                Outcome::Dead(again) => Outcome::Dead(dead.failed_again(again, now_ms)),
                other => other,
            })
            .collect()
    }
}
