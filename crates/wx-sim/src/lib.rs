//! A WeCom chat archive simulator, faithful to ../shared/domain/wecom.md, because nobody can test
//! an archive pipeline against the real service from here.
//!
//! # Layout
//! - `generate`: the deterministic (seeded) message generator with faults and ground truth.
//! - `keys`: the RSA key pairs by publickey_ver.
//! - `feed`: encrypts generated messages into GetChatData items (RSA for the random key, the
//!   documented stand-in cipher of `wx_crypto::SimulatorCipher` for the message).
//! - `callback`: signed, encrypted callbacks (WXBizMsgCrypt) sent to a URL with WeCom-like
//!   retries: `msgaudit_notify` and app text messages.
//! - `server`: the HTTP service: GetChatData with the exclusive seq cursor, limit <= 1000, a
//!   per-corp rate limit, the retention window, transient errors, slow replies and duplicated
//!   items on re-pull; GetMediaData in 512 KB chunks; the ground truth.
//!
//! # Invariants
//! Deterministic for a seed: the same spec gives the same msgids, payloads and faults (RSA
//! ciphertexts differ, PKCS#1 v1.5 padding is random). Every fault it injects is recorded in the
//! ground truth with its expected outcome. It never logs plaintext.

pub mod callback;
pub mod feed;
pub mod generate;
pub mod keys;
pub mod server;

pub use callback::{CallbackConfig, CallbackSender, Delivery};
pub use feed::{ChatDataItem, CorpFeed};
pub use generate::{
    FaultRates, FeedSpec, ItemFault, MediaRef, MediaSizes, MediaSpec, Truth, file_fraction,
    generate, media_bytes, media_md5, media_range,
};
pub use keys::SimKeys;
pub use server::{PullRecord, ServerConfig, Simulator, errcode};
