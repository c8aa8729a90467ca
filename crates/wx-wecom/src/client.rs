//! The archive client: GetChatData behind one trait with two implementations, the vendor SDK by
//! FFI and the project's simulator over HTTP.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use wx_codec::EncryptedItem;
use wx_finance_sdk::FinanceSdk;

/// Why a pull failed, classified for the puller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PullError {
    /// Network, parse or system failure (10001-10003), or a transport error: retry with backoff.
    #[error("transient failure {code}: {message}")]
    Transient { code: i64, message: String },
    /// The corp's call rate was exceeded (45009): wait and retry.
    #[error("rate limited by WeCom (45009)")]
    RateLimited,
    /// Anything else (bad credentials, IP not allowed, ...): an operator must act; the puller
    /// keeps retrying slowly so it recovers once fixed.
    #[error("WeCom refused the call: {code} {message}")]
    Refused { code: i64, message: String },
}

impl PullError {
    pub fn code(&self) -> i64 {
        match self {
            PullError::Transient { code, .. } | PullError::Refused { code, .. } => *code,
            PullError::RateLimited => 45009,
        }
    }
}

/// One GetChatData page.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Page {
    pub items: Vec<EncryptedItem>,
    /// Items of the page that are not chatdata items (a field missing or of the wrong type):
    /// the puller parks each and moves its cursor past them, rather than failing the page.
    pub malformed: Vec<MalformedItem>,
    /// Bytes of the reply, for metrics.
    pub bytes: usize,
}

impl Page {
    /// The largest seq the page names (its items' and its malformed items').
    pub fn max_seq(&self) -> Option<u64> {
        let items = self.items.iter().map(|i| u64::try_from(i.seq).unwrap_or(0));
        items
            .chain(self.malformed.iter().filter_map(|m| m.seq))
            .max()
    }
}

/// A `chatdata` item that cannot be read, kept whole for its dead letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MalformedItem {
    /// The item's seq, when it has a readable one.
    pub seq: Option<u64>,
    /// The item's msgid, when it has a readable one.
    pub msgid: Option<String>,
    /// The item as WeCom sent it (JSON; encrypted fields only, never plaintext).
    pub json: Vec<u8>,
    /// Why it cannot be read (the parser's error: a field and a type, never a value).
    pub cause: String,
}

/// The future a client returns.
pub type PullFuture<'a> = Pin<Box<dyn Future<Output = Result<Page, PullError>> + Send + 'a>>;

/// GetChatData for one corp.
pub trait ArchiveClient: Send + Sync {
    /// Items after the exclusive cursor `seq`, at most `limit`.
    fn get_chat_data(&self, seq: u64, limit: u32) -> PullFuture<'_>;
}

pub use wx_finance_sdk::MediaChunk;

/// Why a GetMediaData call failed, classified for the media stage.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MediaError {
    /// Network, parse or system failure (10001-10003), or a transport error: retry with backoff.
    #[error("transient failure {code}: {message}")]
    Transient { code: i64, message: String },
    /// The corp's call rate was exceeded (45009): wait and retry.
    #[error("rate limited by WeCom (45009)")]
    RateLimited,
    /// The file cannot be had: expired (10010), a bad sdkfileid (10005) or a bad index (10000).
    /// Park the reference with this cause.
    #[error("media unavailable {code}: {message}")]
    Gone { code: i64, message: String },
    /// Anything else (bad credentials, IP not allowed, ...): an operator must act; retried
    /// slowly, nothing parked.
    #[error("WeCom refused the call: {code} {message}")]
    Refused { code: i64, message: String },
}

impl MediaError {
    /// Classifies a WeCom / SDK error code.
    pub fn from_code(code: i64, message: String) -> MediaError {
        match code {
            10001..=10003 => MediaError::Transient { code, message },
            45009 => MediaError::RateLimited,
            10000 | 10005 | 10010 => MediaError::Gone { code, message },
            _ => MediaError::Refused { code, message },
        }
    }

    pub fn code(&self) -> i64 {
        match self {
            MediaError::Transient { code, .. }
            | MediaError::Gone { code, .. }
            | MediaError::Refused { code, .. } => *code,
            MediaError::RateLimited => 45009,
        }
    }
}

/// The future a media client returns.
pub type MediaFuture<'a> =
    Pin<Box<dyn Future<Output = Result<MediaChunk, MediaError>> + Send + 'a>>;

/// GetMediaData for one corp: one chunk of at most 512 KB at a time.
pub trait MediaClient: Send + Sync {
    /// The chunk at `index` (empty for the first; else the previous chunk's `out_index`).
    fn get_media_chunk<'a>(&'a self, sdkfileid: &'a str, index: &'a str) -> MediaFuture<'a>;
}

#[derive(Deserialize)]
struct MediaReply {
    errcode: i64,
    #[serde(default)]
    errmsg: String,
    #[serde(default)]
    data: String,
    #[serde(default)]
    outindexbuf: String,
    #[serde(default)]
    is_finish: u8,
}

/// Parses the simulator's GetMediaData reply (the SDK's fields, `data` in base64).
pub fn parse_media_reply(bytes: &[u8]) -> Result<MediaChunk, MediaError> {
    use base64::Engine as _;
    let parse_failure = |what: String| MediaError::Transient {
        code: 10002,
        message: what,
    };
    let reply: MediaReply = serde_json::from_slice(bytes)
        .map_err(|e| parse_failure(format!("unparsable GetMediaData reply: {e}")))?;
    if reply.errcode != 0 {
        return Err(MediaError::from_code(reply.errcode, reply.errmsg));
    }
    let data = base64::engine::general_purpose::STANDARD
        .decode(reply.data.as_bytes())
        .map_err(|e| parse_failure(format!("GetMediaData data is not base64: {e}")))?;
    Ok(MediaChunk {
        data,
        out_index: reply.outindexbuf,
        is_finish: reply.is_finish == 1,
    })
}

#[derive(Deserialize)]
struct Reply {
    errcode: i64,
    #[serde(default)]
    errmsg: String,
    /// Read item by item, so one malformed item does not fail the page.
    #[serde(default)]
    chatdata: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct ReplyItem {
    seq: u64,
    msgid: String,
    publickey_ver: i64,
    encrypt_random_key: String,
    encrypt_chat_msg: String,
}

/// serde_json's message without the value it quotes (`invalid type: string "…", expected
/// i64` becomes `invalid type: string, expected i64`): an item's fields are ciphertext, but a
/// letter's cause names the field and the type, never the content.
fn without_values(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut quoted = false;
    for c in message.chars() {
        match c {
            '"' => quoted = !quoted,
            _ if quoted => {}
            _ => out.push(c),
        }
    }
    out.replace(" ,", ",").replace("  ", " ")
}

/// Parses a GetChatData reply (the same JSON from the SDK and from the simulator). One item
/// that is not a chatdata item is set aside in [`Page::malformed`]; a reply that is not JSON,
/// or whose `chatdata` is not a list, is a transient failure (the page is pulled again).
pub fn parse_reply(bytes: &[u8]) -> Result<Page, PullError> {
    let reply: Reply = serde_json::from_slice(bytes).map_err(|e| PullError::Transient {
        code: 10002,
        message: format!("unparsable GetChatData reply: {e}"),
    })?;
    match reply.errcode {
        0 => {}
        10001..=10003 => {
            return Err(PullError::Transient {
                code: reply.errcode,
                message: reply.errmsg,
            });
        }
        45009 => return Err(PullError::RateLimited),
        code => {
            return Err(PullError::Refused {
                code,
                message: reply.errmsg,
            });
        }
    }
    let mut page = Page {
        bytes: bytes.len(),
        ..Page::default()
    };
    for value in reply.chatdata {
        match ReplyItem::deserialize(&value) {
            Ok(i) => page.items.push(EncryptedItem {
                seq: i64::try_from(i.seq).unwrap_or(i64::MAX),
                msgid: i.msgid,
                publickey_ver: i32::try_from(i.publickey_ver).unwrap_or(-1),
                encrypt_random_key: i.encrypt_random_key,
                encrypt_chat_msg: i.encrypt_chat_msg,
            }),
            Err(e) => page.malformed.push(MalformedItem {
                seq: value.get("seq").and_then(serde_json::Value::as_u64),
                msgid: value
                    .get("msgid")
                    .and_then(serde_json::Value::as_str)
                    .map(str::to_string),
                json: serde_json::to_vec(&value).unwrap_or_default(),
                cause: without_values(&e.to_string()),
            }),
        }
    }
    Ok(page)
}

/// The simulator over HTTP.
#[derive(Debug, Clone)]
pub struct SimulatorClient {
    url: String,
    media_url: String,
    corp_id: String,
    secret: String,
    http: reqwest::Client,
}

impl SimulatorClient {
    /// `worker` goes into the User-Agent, so the simulator's request log tells workers apart.
    pub fn new(
        base_url: &str,
        corp_id: &str,
        secret: &str,
        timeout: Duration,
        worker: &str,
    ) -> SimulatorClient {
        SimulatorClient {
            url: format!(
                "{}/cgi-bin/finance/getchatdata",
                base_url.trim_end_matches('/')
            ),
            media_url: format!(
                "{}/cgi-bin/finance/getmediadata",
                base_url.trim_end_matches('/')
            ),
            corp_id: corp_id.to_string(),
            secret: secret.to_string(),
            http: reqwest::Client::builder()
                .timeout(timeout)
                .user_agent(format!("wxstream-ingest ({worker})"))
                .build()
                .unwrap_or_default(),
        }
    }
}

impl ArchiveClient for SimulatorClient {
    fn get_chat_data(&self, seq: u64, limit: u32) -> PullFuture<'_> {
        Box::pin(async move {
            let body = serde_json::json!({
                "corpid": self.corp_id, "secret": self.secret, "seq": seq, "limit": limit
            });
            let reply = self
                .http
                .post(&self.url)
                .json(&body)
                .send()
                .await
                .map_err(|e| PullError::Transient {
                    code: 10001,
                    message: e.to_string(),
                })?;
            let bytes = reply.bytes().await.map_err(|e| PullError::Transient {
                code: 10001,
                message: e.to_string(),
            })?;
            parse_reply(&bytes)
        })
    }
}

impl MediaClient for SimulatorClient {
    fn get_media_chunk<'a>(&'a self, sdkfileid: &'a str, index: &'a str) -> MediaFuture<'a> {
        Box::pin(async move {
            let body = serde_json::json!({
                "corpid": self.corp_id, "secret": self.secret,
                "sdkfileid": sdkfileid, "indexbuf": index,
            });
            let transport = |e: reqwest::Error| MediaError::Transient {
                code: 10001,
                message: e.without_url().to_string(),
            };
            let reply = self
                .http
                .post(&self.media_url)
                .json(&body)
                .send()
                .await
                .map_err(transport)?;
            parse_media_reply(&reply.bytes().await.map_err(transport)?)
        })
    }
}

/// The vendor SDK, loaded by path; calls run on the blocking pool.
#[derive(Debug, Clone)]
pub struct SdkClient {
    sdk: Arc<FinanceSdk>,
    proxy: String,
    timeout_s: i32,
}

impl SdkClient {
    pub fn load(
        library: &Path,
        corp_id: &str,
        secret: &str,
        proxy: &str,
        timeout: Duration,
    ) -> Result<SdkClient, wx_finance_sdk::SdkError> {
        let sdk = FinanceSdk::load(library, corp_id, secret)?;
        Ok(SdkClient {
            sdk: Arc::new(sdk),
            proxy: proxy.to_string(),
            timeout_s: i32::try_from(timeout.as_secs().max(1)).unwrap_or(10),
        })
    }
}

impl ArchiveClient for SdkClient {
    fn get_chat_data(&self, seq: u64, limit: u32) -> PullFuture<'_> {
        let (sdk, proxy, timeout) = (self.sdk.clone(), self.proxy.clone(), self.timeout_s);
        Box::pin(async move {
            let reply = tokio::task::spawn_blocking(move || {
                sdk.get_chat_data(seq, limit, &proxy, "", timeout)
            })
            .await
            .map_err(|e| PullError::Transient {
                code: 10003,
                message: e.to_string(),
            })?;
            match reply {
                Ok(bytes) => parse_reply(&bytes),
                Err(wx_finance_sdk::SdkError::Code { code }) if (10001..=10003).contains(&code) => {
                    Err(PullError::Transient {
                        code: i64::from(code),
                        message: wx_finance_sdk::describe(code).into(),
                    })
                }
                Err(wx_finance_sdk::SdkError::Code { code }) => Err(PullError::Refused {
                    code: i64::from(code),
                    message: wx_finance_sdk::describe(code).into(),
                }),
                Err(e) => Err(PullError::Refused {
                    code: 10000,
                    message: e.to_string(),
                }),
            }
        })
    }
}

impl MediaClient for SdkClient {
    fn get_media_chunk<'a>(&'a self, sdkfileid: &'a str, index: &'a str) -> MediaFuture<'a> {
        let (sdk, proxy, timeout) = (self.sdk.clone(), self.proxy.clone(), self.timeout_s);
        let (file, index) = (sdkfileid.to_string(), index.to_string());
        Box::pin(async move {
            let reply = tokio::task::spawn_blocking(move || {
                sdk.get_media_chunk(&file, &index, &proxy, "", timeout)
            })
            .await
            .map_err(|e| MediaError::Transient {
                code: 10003,
                message: e.to_string(),
            })?;
            reply.map_err(|e| match e {
                wx_finance_sdk::SdkError::Code { code } => {
                    MediaError::from_code(i64::from(code), wx_finance_sdk::describe(code).into())
                }
                other => MediaError::Refused {
                    code: 10000,
                    message: other.to_string(),
                },
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_replies_are_classified() {
        let chunk = parse_media_reply(
            br#"{"errcode":0,"errmsg":"ok","data":"AAEC","outindexbuf":"off:3","is_finish":1}"#,
        )
        .expect("a chunk");
        assert_eq!(chunk.data, vec![0, 1, 2]);
        assert_eq!((chunk.out_index.as_str(), chunk.is_finish), ("off:3", true));
        let code = |c: i64| {
            parse_media_reply(format!(r#"{{"errcode":{c},"errmsg":"x"}}"#).as_bytes())
                .expect_err("an error")
        };
        assert!(matches!(code(10010), MediaError::Gone { code: 10010, .. }));
        assert!(matches!(code(10005), MediaError::Gone { .. }));
        assert!(matches!(code(10002), MediaError::Transient { .. }));
        assert_eq!(code(45009), MediaError::RateLimited);
        assert!(matches!(code(40001), MediaError::Refused { .. }));
        assert!(matches!(
            parse_media_reply(b"<html>"),
            Err(MediaError::Transient { code: 10002, .. })
        ));
    }

    #[test]
    fn replies_are_classified() {
        let ok = br#"{"errcode":0,"errmsg":"ok","chatdata":[{"seq":196,"msgid":"m","publickey_ver":3,"encrypt_random_key":"k","encrypt_chat_msg":"c"}]}"#;
        let page = parse_reply(ok).expect("ok");
        assert_eq!(page.items[0].seq, 196);
        assert_eq!(page.items[0].publickey_ver, 3);
        assert_eq!(
            parse_reply(br#"{"errcode":45009,"errmsg":"freq"}"#),
            Err(PullError::RateLimited)
        );
        assert!(matches!(
            parse_reply(br#"{"errcode":10002}"#),
            Err(PullError::Transient { code: 10002, .. })
        ));
        assert!(matches!(
            parse_reply(br#"{"errcode":40001,"errmsg":"bad"}"#),
            Err(PullError::Refused { code: 40001, .. })
        ));
        assert!(matches!(
            parse_reply(b"<html>"),
            Err(PullError::Transient { code: 10002, .. })
        ));
    }

    #[test]
    fn one_malformed_item_is_set_aside_and_the_page_is_kept() {
        let reply = br#"{"errcode":0,"errmsg":"ok","chatdata":[
            {"seq":1,"msgid":"a","publickey_ver":3,"encrypt_random_key":"k","encrypt_chat_msg":"c"},
            {"seq":2,"msgid":"b","publickey_ver":"secret-looking","encrypt_random_key":"k","encrypt_chat_msg":"c"},
            {"seq":3,"publickey_ver":3},
            {"seq":4,"msgid":"d","publickey_ver":3,"encrypt_random_key":"k","encrypt_chat_msg":"c"}]}"#;
        let page = parse_reply(reply).expect("a page");
        let seqs: Vec<i64> = page.items.iter().map(|i| i.seq).collect();
        assert_eq!(seqs, [1, 4]);
        assert_eq!(page.malformed.len(), 2);
        assert_eq!(
            (page.malformed[0].seq, page.malformed[0].msgid.as_deref()),
            (Some(2), Some("b"))
        );
        let cause = &page.malformed[0].cause;
        assert!(cause.contains("expected i64"), "{cause}");
        assert!(
            !cause.contains("secret-looking"),
            "no value in the cause: {cause}"
        );
        assert!(page.malformed[1].cause.contains("missing field"));
        assert_eq!(page.malformed[1].msgid, None);
        let kept: serde_json::Value =
            serde_json::from_slice(&page.malformed[0].json).expect("the item as sent");
        assert_eq!(kept["publickey_ver"], "secret-looking");
        assert_eq!(page.max_seq(), Some(4));
        assert!(matches!(
            parse_reply(br#"{"errcode":0,"chatdata":{"seq":1}}"#),
            Err(PullError::Transient { code: 10002, .. })
        ));
    }
}
