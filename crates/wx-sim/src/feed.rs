//! Generated messages, encrypted as GetChatData serves them.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use wx_crypto::SimulatorCipher;

use crate::generate::{FeedSpec, ItemFault, MediaRef, Truth, generate};
use crate::keys::SimKeys;

/// One `chatdata` item of a GetChatData reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatDataItem {
    pub seq: u64,
    pub msgid: String,
    pub publickey_ver: u32,
    pub encrypt_random_key: String,
    pub encrypt_chat_msg: String,
}

/// A corp's whole feed: items in seq order, their ground truth, and the media they reference.
#[derive(Debug, Clone)]
pub struct CorpFeed {
    pub corp_id: String,
    pub items: Vec<ChatDataItem>,
    pub truth: Vec<Truth>,
    pub media: Vec<MediaRef>,
}

#[derive(Debug, thiserror::Error)]
#[error("no simulator key for publickey_ver {0}")]
pub struct MissingKey(pub u32);

impl CorpFeed {
    /// Generates and encrypts the feed of `spec` with `keys`.
    pub fn build(spec: &FeedSpec, keys: &SimKeys) -> Result<CorpFeed, MissingKey> {
        let (plain, media) = generate(spec);
        let mut rng = ChaCha8Rng::seed_from_u64(spec.seed ^ 0x5eed_cafe);
        let mut items = Vec::with_capacity(plain.len());
        let mut truth = Vec::with_capacity(plain.len());
        for p in plain {
            const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
            let random_key: Vec<u8> = (0..32)
                .map(|_| CHARS[rng.gen_range(0..CHARS.len())])
                .collect();
            let version = p.truth.key_version;
            let encrypt_random_key = keys
                .encrypt_random_key(version, &random_key)
                .ok_or(MissingKey(version))?;
            let encrypt_chat_msg = if p.truth.fault == Some(ItemFault::CorruptCiphertext) {
                let len = (p.plaintext.len() / 16 + 1) * 16;
                let mut junk = vec![0u8; len];
                rng.fill(&mut junk[..]);
                BASE64.encode(junk)
            } else {
                SimulatorCipher.encrypt(&random_key, &p.plaintext)
            };
            items.push(ChatDataItem {
                seq: p.truth.seq,
                msgid: p.truth.msgid.clone(),
                publickey_ver: version,
                encrypt_random_key,
                encrypt_chat_msg,
            });
            truth.push(p.truth);
        }
        Ok(CorpFeed {
            corp_id: spec.corp_id.clone(),
            items,
            truth,
            media,
        })
    }
}

impl ChatDataItem {
    /// The item as the ingest stage stores it in a raw batch.
    pub fn encrypted_item(&self) -> wx_codec::EncryptedItem {
        wx_codec::EncryptedItem {
            seq: i64::try_from(self.seq).unwrap_or(i64::MAX),
            msgid: self.msgid.clone(),
            publickey_ver: i32::try_from(self.publickey_ver).unwrap_or(i32::MAX),
            encrypt_random_key: self.encrypt_random_key.clone(),
            encrypt_chat_msg: self.encrypt_chat_msg.clone(),
        }
    }
}

impl CorpFeed {
    /// Items `range` as one archive raw batch, as the ingest stage would write a page (tests
    /// and benchmarks that start at the decrypt stage).
    pub fn raw_batch(&self, range: std::ops::Range<usize>) -> wx_codec::RawBatch {
        let items = &self.items[range];
        wx_codec::RawBatch {
            corp_id: self.corp_id.clone(),
            source: wx_codec::SourceKind::Archive,
            seq_from: items.first().map(|i| i64::try_from(i.seq).unwrap_or(0) - 1),
            seq_to: items.last().map(|i| i64::try_from(i.seq).unwrap_or(0)),
            fetched_at: 0,
            items: items.iter().map(ChatDataItem::encrypted_item).collect(),
            callback: None,
        }
    }
}
