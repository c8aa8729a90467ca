//! The simulator's HTTP service. It takes its listener and a shutdown future as arguments, so a
//! test runs the real server in-process on port 0.
//!
//! | call | path |
//! |---|---|
//! | GetChatData | `POST /cgi-bin/finance/getchatdata` `{corpid, secret, seq, limit}` |
//! | GetMediaData | `POST /cgi-bin/finance/getmediadata` `{corpid, secret, sdkfileid, indexbuf}` |
//! | gettoken | `GET /cgi-bin/gettoken?corpid=&corpsecret=` (the corp's secret) |
//! | media/get | `GET /cgi-bin/media/get?access_token=&media_id=`, `Range: bytes=a-b` honoured |
//! | ground truth | `GET /sim/ground_truth` |
//! | GetChatData request log | `GET /sim/pulls` |
//! | liveness | `GET /sim/health` |

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::feed::CorpFeed;
use crate::generate::{MediaRef, Truth, media_range};

/// Error codes the simulator answers with, as WeCom and its SDK do.
pub mod errcode {
    pub const OK: i64 = 0;
    /// Bad parameter (e.g. limit above 1000).
    pub const BAD_PARAMETER: i64 = 10000;
    /// Network error: retry.
    pub const NETWORK: i64 = 10001;
    /// Parse failure: retry.
    pub const PARSE: i64 = 10002;
    /// System failure: retry.
    pub const SYSTEM: i64 = 10003;
    /// Bad sdkfileid.
    pub const BAD_FILEID: i64 = 10005;
    /// The media file has expired on WeCom's side.
    pub const DATA_EXPIRED: i64 = 10010;
    /// Invalid corp id or secret.
    pub const INVALID_CREDENTIAL: i64 = 40001;
    /// Call rate above the corp's limit.
    pub const FREQ_LIMIT: i64 = 45009;
    /// media/get: the media_id is invalid (never issued, or past its 3 days).
    pub const INVALID_MEDIA_ID: i64 = 40007;
    /// media/get: the access_token is invalid.
    pub const INVALID_TOKEN: i64 = 40014;
}

/// Media are served in chunks of this size, as the SDK does.
pub const MEDIA_CHUNK: usize = 512 * 1024;
/// GetChatData's largest page.
pub const MAX_LIMIT: u64 = 1000;

/// How the service behaves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// GetChatData calls a corp may make per minute (the widely cited figure is 600).
    pub calls_per_minute: u32,
    /// Messages older than this cannot be pulled (5 days; older docs said 3).
    pub retention_ms: i64,
    /// Probability that a GetChatData call answers 10001, 10002 or 10003.
    pub transient_error_rate: f64,
    /// Probability that a page repeats the item at the cursor (a duplicate on re-pull).
    pub duplicate_rate: f64,
    /// Probability that a reply is delayed by `slow_reply_ms`.
    pub slow_reply_rate: f64,
    pub slow_reply_ms: u64,
    /// Probability that the first download of a media file carries a corrupted chunk (its MD5
    /// then mismatches; a retry gets the right bytes).
    pub media_md5_fault_rate: f64,
    /// Share of GetMediaData chunks delayed by `media_slow_chunk_ms` (a slow link).
    pub media_slow_chunk_rate: f64,
    pub media_slow_chunk_ms: u64,
    /// Share of items served malformed (`publickey_ver` a string), the same items on every
    /// pull: a GetChatData item that cannot be read ([`Simulator::is_malformed`] says which).
    pub malformed_item_rate: f64,
    /// A malformed item also carries no readable seq (`seq` a string): the puller cannot move
    /// its cursor past it until a later item arrives.
    pub malformed_without_seq: bool,
    /// Seed of the service's own randomness (faults per call).
    pub seed: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            calls_per_minute: 600,
            retention_ms: 5 * 24 * 3600 * 1000,
            transient_error_rate: 0.0,
            duplicate_rate: 0.0,
            slow_reply_rate: 0.0,
            slow_reply_ms: 2000,
            media_md5_fault_rate: 0.0,
            media_slow_chunk_rate: 0.0,
            media_slow_chunk_ms: 500,
            malformed_item_rate: 0.0,
            malformed_without_seq: false,
            seed: 1,
        }
    }
}

struct Corp {
    secret: String,
    feed: CorpFeed,
    media: HashMap<String, MediaRef>,
    /// served[i]: item i was returned by GetChatData at least once.
    served: Vec<bool>,
    /// Media files already downloaded once (the MD5 fault hits only the first download).
    downloaded: HashMap<String, u32>,
    /// Every GetMediaData chunk served: (sdkfileid, offset), in order.
    chunk_log: Vec<(String, usize)>,
}

/// One GetChatData call as the simulator saw it: which corp, which client (its User-Agent; the
/// ingest worker puts its worker id there), and when it started and was answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullRecord {
    pub corp_id: String,
    pub client: String,
    pub started_ms: i64,
    pub ended_ms: i64,
}

struct Inner {
    config: ServerConfig,
    corps: HashMap<String, Mutex<Corp>>,
    pulls: Mutex<Vec<PullRecord>>,
    limiter: DefaultKeyedRateLimiter<String>,
    rng: Mutex<ChaCha8Rng>,
    /// Access tokens given out by gettoken: token -> corp.
    tokens: Mutex<HashMap<String, String>>,
    /// gettoken calls answered.
    tokens_issued: std::sync::atomic::AtomicU64,
}

/// The simulator: corps, their feeds and the service's behaviour. Cheap to clone.
#[derive(Clone)]
pub struct Simulator {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Simulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulator")
            .field("corps", &self.inner.corps.keys().collect::<Vec<_>>())
            .finish()
    }
}

use wx_codec::now_ms;

fn error(code: i64, msg: &str) -> Json<Value> {
    Json(json!({ "errcode": code, "errmsg": msg }))
}

#[derive(Deserialize)]
struct ChatDataRequest {
    corpid: String,
    secret: String,
    seq: u64,
    limit: u64,
}

#[derive(Deserialize)]
struct MediaRequest {
    corpid: String,
    secret: String,
    sdkfileid: String,
    #[serde(default)]
    indexbuf: String,
}

/// A corp's ground truth as `/sim/ground_truth` reports it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CorpTruth {
    pub corp_id: String,
    /// Every message of the feed, served or not yet.
    pub messages: Vec<Truth>,
    /// The seqs GetChatData returned at least once.
    pub served_seqs: Vec<u64>,
    /// The media files the feed references (size, MD5, expired or not).
    #[serde(default)]
    pub media: Vec<MediaRef>,
}

impl Simulator {
    /// A simulator serving `corps` (feed and secret each).
    pub fn new(config: ServerConfig, corps: Vec<(CorpFeed, String)>) -> Simulator {
        let per_minute = NonZeroU32::new(config.calls_per_minute.max(1)).unwrap_or(NonZeroU32::MIN);
        let corps = corps
            .into_iter()
            .map(|(feed, secret)| {
                let media = feed
                    .media
                    .iter()
                    .map(|m| (m.sdkfileid.clone(), m.clone()))
                    .collect();
                let served = vec![false; feed.items.len()];
                (
                    feed.corp_id.clone(),
                    Mutex::new(Corp {
                        secret,
                        feed,
                        media,
                        served,
                        downloaded: HashMap::new(),
                        chunk_log: Vec::new(),
                    }),
                )
            })
            .collect();
        Simulator {
            inner: Arc::new(Inner {
                limiter: RateLimiter::keyed(Quota::per_minute(per_minute)),
                rng: Mutex::new(ChaCha8Rng::seed_from_u64(config.seed)),
                config,
                corps,
                pulls: Mutex::new(Vec::new()),
                tokens: Mutex::new(HashMap::new()),
                tokens_issued: std::sync::atomic::AtomicU64::new(0),
            }),
        }
    }

    /// The HTTP routes.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/cgi-bin/finance/getchatdata", post(get_chat_data))
            .route("/cgi-bin/finance/getmediadata", post(get_media_data))
            .route("/cgi-bin/gettoken", get(get_token))
            .route("/cgi-bin/media/get", get(media_get))
            .route("/sim/ground_truth", get(ground_truth))
            .route("/sim/pulls", get(pulls))
            .route("/sim/health", get(|| async { "ok" }))
            .with_state(self.clone())
    }

    /// Serves on `listener` until `shutdown` completes.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown)
            .await
    }

    /// The ground truth of every corp.
    pub fn truth(&self) -> Vec<CorpTruth> {
        let mut out: Vec<CorpTruth> = self
            .inner
            .corps
            .values()
            .map(|c| {
                let c = c.lock().unwrap_or_else(|p| p.into_inner());
                CorpTruth {
                    corp_id: c.feed.corp_id.clone(),
                    messages: c.feed.truth.clone(),
                    served_seqs: c
                        .feed
                        .items
                        .iter()
                        .zip(&c.served)
                        .filter(|(_, s)| **s)
                        .map(|(i, _)| i.seq)
                        .collect(),
                    media: c.feed.media.clone(),
                }
            })
            .collect();
        out.sort_by(|a, b| a.corp_id.cmp(&b.corp_id));
        out
    }

    /// Every GetChatData call answered so far, in the order they were answered.
    /// Every GetMediaData chunk a corp was served, in order: (sdkfileid, offset). A download
    /// that restarts from zero shows a second offset 0 for its file.
    pub fn chunk_log(&self, corp_id: &str) -> Vec<(String, usize)> {
        self.inner
            .corps
            .get(corp_id)
            .map(|c| {
                c.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .chunk_log
                    .clone()
            })
            .unwrap_or_default()
    }

    /// Serves an expired file again (an operator's fix, before a redrive). False when the corp
    /// has no such file.
    pub fn revive_media(&self, corp_id: &str, sdkfileid: &str) -> bool {
        let Some(corp) = self.inner.corps.get(corp_id) else {
            return false;
        };
        let mut corp = corp.lock().unwrap_or_else(|p| p.into_inner());
        match corp.media.get_mut(sdkfileid) {
            Some(media) => {
                media.expired = false;
                true
            }
            None => false,
        }
    }

    /// The media a corp's feed references (what GetMediaData serves).
    pub fn media(&self, corp_id: &str) -> Vec<MediaRef> {
        self.inner
            .corps
            .get(corp_id)
            .map(|c| {
                let corp = c.lock().unwrap_or_else(|p| p.into_inner());
                corp.feed.media.clone()
            })
            .unwrap_or_default()
    }

    /// Whether a file's first download is served with a corrupted last chunk (its MD5 then
    /// mismatches; the second download is right).
    pub fn md5_faulty(&self, media: &MediaRef) -> bool {
        media.md5_stated
            && (fxhash(&media.sdkfileid) as f64 / u64::MAX as f64)
                < self.inner.config.media_md5_fault_rate
    }

    pub fn pulls(&self) -> Vec<PullRecord> {
        self.inner
            .pulls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The corps served, sorted.
    pub fn corp_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.inner.corps.keys().cloned().collect();
        ids.sort();
        ids
    }

    /// The newest seq of `corp_id` that has arrived (its msgtime has passed), if any.
    pub fn newest_arrived_seq(&self, corp_id: &str) -> Option<u64> {
        let corp = self
            .inner
            .corps
            .get(corp_id)?
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let now = now_ms();
        let arrived = corp.feed.truth.partition_point(|t| t.msgtime <= now);
        arrived.checked_sub(1).map(|i| corp.feed.truth[i].seq)
    }

    fn roll(&self, p: f64) -> bool {
        p > 0.0
            && self
                .inner
                .rng
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .gen_bool(p.min(1.0))
    }

    /// GetChatData as a function (the HTTP handler and the stand-in SDK library call it).
    pub fn get_chat_data(&self, corpid: &str, secret: &str, seq: u64, limit: u64) -> Value {
        let Some(corp) = self.inner.corps.get(corpid) else {
            return error(errcode::INVALID_CREDENTIAL, "invalid corpid").0;
        };
        let mut corp = corp.lock().unwrap_or_else(|p| p.into_inner());
        if corp.secret != secret {
            return error(errcode::INVALID_CREDENTIAL, "invalid secret").0;
        }
        if limit == 0 || limit > MAX_LIMIT {
            return error(errcode::BAD_PARAMETER, "limit must be 1..=1000").0;
        }
        if self.inner.limiter.check_key(&corpid.to_string()).is_err() {
            return error(errcode::FREQ_LIMIT, "api freq out of limit").0;
        }
        if self.roll(self.inner.config.transient_error_rate) {
            let code = [errcode::NETWORK, errcode::PARSE, errcode::SYSTEM][self
                .inner
                .rng
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .gen_range(0..3)];
            return error(code, "transient failure, retry").0;
        }
        let now = now_ms();
        let oldest = now - self.inner.config.retention_ms;
        let items = &corp.feed.items;
        let truth = &corp.feed.truth;
        // Items are in seq order: find the first seq strictly after the cursor.
        let start = items.partition_point(|i| i.seq <= seq);
        let mut page: Vec<usize> = Vec::new();
        if start > 0 && items[start - 1].seq == seq && self.roll(self.inner.config.duplicate_rate) {
            page.push(start - 1);
        }
        let limit = usize::try_from(limit).unwrap_or(1000);
        for (i, t) in truth.iter().enumerate().skip(start) {
            if page.len() >= limit || t.msgtime > now {
                break; // not yet arrived (rate mode)
            }
            if t.msgtime < oldest {
                continue; // past the retention window: cannot be pulled any more
            }
            page.push(i);
        }
        for &i in &page {
            corp.served[i] = true;
        }
        let chatdata: Vec<Value> = page
            .iter()
            .map(|&i| {
                let item = &corp.feed.items[i];
                let mut value = serde_json::to_value(item).unwrap_or_default();
                if self.is_malformed(item.seq) {
                    value["publickey_ver"] = json!("v?");
                    if self.inner.config.malformed_without_seq {
                        value["seq"] = json!("s?");
                    }
                }
                value
            })
            .collect();
        json!({ "errcode": 0, "errmsg": "ok", "chatdata": chatdata })
    }

    /// Whether the item at `seq` is served malformed (`malformed_item_rate`; the same answer for
    /// a seq on every pull and in every corp).
    pub fn is_malformed(&self, seq: u64) -> bool {
        let rate = self.inner.config.malformed_item_rate;
        // A fixed mix of the seq, so the answer needs no state.
        let mixed = seq
            .wrapping_add(self.inner.config.seed)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
        rate > 0.0 && ((mixed >> 11) as f64 / (1u64 << 53) as f64) < rate
    }

    /// GetMediaData as a function: one chunk from `indexbuf` (an opaque offset).
    pub fn get_media_data(
        &self,
        corpid: &str,
        secret: &str,
        sdkfileid: &str,
        indexbuf: &str,
    ) -> Value {
        let Some(corp) = self.inner.corps.get(corpid) else {
            return error(errcode::INVALID_CREDENTIAL, "invalid corpid").0;
        };
        let mut corp = corp.lock().unwrap_or_else(|p| p.into_inner());
        if corp.secret != secret {
            return error(errcode::INVALID_CREDENTIAL, "invalid secret").0;
        }
        let Some(media) = corp.media.get(sdkfileid).cloned() else {
            return error(errcode::BAD_FILEID, "bad sdkfileid").0;
        };
        if media.expired {
            return error(errcode::DATA_EXPIRED, "data expired").0;
        }
        let offset: usize = if indexbuf.is_empty() {
            0
        } else {
            match indexbuf.strip_prefix("off:").and_then(|o| o.parse().ok()) {
                Some(o) if o <= media.size => o,
                _ => return error(errcode::BAD_PARAMETER, "bad indexbuf").0,
            }
        };
        if offset == 0 {
            *corp.downloaded.entry(sdkfileid.to_string()).or_default() += 1;
        }
        corp.chunk_log.push((sdkfileid.to_string(), offset));
        let first_download = corp.downloaded.get(sdkfileid).copied().unwrap_or(0) <= 1;
        let end = (offset + MEDIA_CHUNK).min(media.size);
        let mut chunk = media_range(&media.sdkfileid, offset, end - offset);
        let is_finish = end == media.size;
        // The MD5 fault: the first download's last chunk has one byte flipped (decided by the
        // file id, so it is reproducible).
        let faulty = first_download && is_finish && !chunk.is_empty() && self.md5_faulty(&media);
        if faulty {
            chunk[0] ^= 0xff;
        }
        json!({
            "errcode": 0, "errmsg": "ok",
            "data": BASE64.encode(&chunk),
            "outindexbuf": format!("off:{end}"),
            "is_finish": u8::from(is_finish),
        })
    }
}

impl Simulator {
    /// gettoken as a function: a new access token for the corp (valid 7200 s), or an error.
    pub fn get_token(&self, corpid: &str, corpsecret: &str) -> Value {
        let Some(corp) = self.inner.corps.get(corpid) else {
            return error(errcode::INVALID_CREDENTIAL, "invalid corpid").0;
        };
        if corp.lock().unwrap_or_else(|p| p.into_inner()).secret != corpsecret {
            return error(errcode::INVALID_CREDENTIAL, "invalid credential").0;
        }
        let n = self
            .inner
            .tokens_issued
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let token = format!("simtoken-{}-{n}", fxhash(corpid));
        self.inner
            .tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(token.clone(), corpid.to_string());
        json!({"errcode": 0, "errmsg": "ok", "access_token": token, "expires_in": 7200})
    }

    /// How many access tokens gettoken has given out.
    pub fn tokens_issued(&self) -> u64 {
        self.inner
            .tokens_issued
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Every access token given out so far becomes invalid (as WeCom's do when they expire or
    /// another gettoken call replaces them): the next media/get with one answers 40014.
    pub fn invalidate_tokens(&self) {
        self.inner
            .tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// media/get as a function: the file a media_id names (the corp's media, by id), from
    /// `range` (`(first, last)` inclusive) when given: Ok((total size, bytes from first)), or the
    /// WeCom error.
    pub fn media_get(
        &self,
        access_token: &str,
        media_id: &str,
        range: Option<(usize, usize)>,
    ) -> Result<(usize, usize, Vec<u8>), Value> {
        let corp_id = self
            .inner
            .tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(access_token)
            .cloned()
            .ok_or_else(|| error(errcode::INVALID_TOKEN, "invalid access_token").0)?;
        let Some(corp) = self.inner.corps.get(&corp_id) else {
            return Err(error(errcode::INVALID_TOKEN, "invalid access_token").0);
        };
        let mut corp = corp.lock().unwrap_or_else(|p| p.into_inner());
        let Some(media) = corp.media.get(media_id).cloned().filter(|m| !m.expired) else {
            return Err(error(errcode::INVALID_MEDIA_ID, "invalid media_id").0);
        };
        let (first, last) = range.unwrap_or((0, media.size.saturating_sub(1)));
        let first = first.min(media.size);
        let end = last.saturating_add(1).min(media.size);
        corp.chunk_log.push((media_id.to_string(), first));
        let bytes = media_range(&media.sdkfileid, first, end.saturating_sub(first));
        Ok((media.size, first, bytes))
    }
}

async fn get_token(
    State(sim): State<Simulator>,
    axum::extract::Query(q): axum::extract::Query<HashMap<String, String>>,
) -> Json<Value> {
    let field = |name: &str| q.get(name).map(String::as_str).unwrap_or_default();
    Json(sim.get_token(field("corpid"), field("corpsecret")))
}

/// A `Range: bytes=a-b` header's (a, b).
fn byte_range(headers: &axum::http::HeaderMap) -> Option<(usize, usize)> {
    let value = headers.get(axum::http::header::RANGE)?.to_str().ok()?;
    let (first, last) = value.strip_prefix("bytes=")?.split_once('-')?;
    Some((first.parse().ok()?, last.parse().unwrap_or(usize::MAX)))
}

async fn media_get(
    State(sim): State<Simulator>,
    headers: axum::http::HeaderMap,
    axum::extract::Query(q): axum::extract::Query<HashMap<String, String>>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let field = |name: &str| q.get(name).map(String::as_str).unwrap_or_default();
    let range = byte_range(&headers);
    match sim.media_get(field("access_token"), field("media_id"), range) {
        // WeCom answers errors as JSON with status 200.
        Err(reply) => Json(reply).into_response(),
        Ok((total, first, bytes)) => {
            let mut reply = axum::response::Response::builder()
                .header(axum::http::header::CONTENT_TYPE, "application/octet-stream")
                .header(
                    axum::http::header::CONTENT_DISPOSITION,
                    "attachment; filename=\"media\"",
                );
            if range.is_some() {
                if first >= total && total > 0 {
                    return axum::http::StatusCode::RANGE_NOT_SATISFIABLE.into_response();
                }
                let last = (first + bytes.len()).saturating_sub(1);
                reply = reply.status(206).header(
                    axum::http::header::CONTENT_RANGE,
                    format!("bytes {first}-{last}/{total}"),
                );
            }
            reply
                .body(axum::body::Body::from(bytes))
                .unwrap_or_default()
        }
    }
}

/// A stable hash of a file id (FNV-1a), for per-file fault decisions.
fn fxhash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

async fn slow(sim: &Simulator) {
    if sim.roll(sim.inner.config.slow_reply_rate) {
        tokio::time::sleep(Duration::from_millis(sim.inner.config.slow_reply_ms)).await;
    }
}

async fn get_chat_data(
    State(sim): State<Simulator>,
    headers: axum::http::HeaderMap,
    body: String,
) -> Json<Value> {
    let Ok(req) = serde_json::from_str::<ChatDataRequest>(&body) else {
        return error(
            errcode::BAD_PARAMETER,
            "body must be {corpid, secret, seq, limit}",
        );
    };
    let started_ms = now_ms();
    slow(&sim).await;
    let reply = sim.get_chat_data(&req.corpid, &req.secret, req.seq, req.limit);
    let client = headers
        .get(axum::http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    sim.inner
        .pulls
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(PullRecord {
            corp_id: req.corpid,
            client,
            started_ms,
            ended_ms: now_ms(),
        });
    Json(reply)
}

async fn pulls(State(sim): State<Simulator>) -> Json<Vec<PullRecord>> {
    Json(sim.pulls())
}

async fn get_media_data(State(sim): State<Simulator>, body: String) -> Json<Value> {
    let Ok(req) = serde_json::from_str::<MediaRequest>(&body) else {
        return error(
            errcode::BAD_PARAMETER,
            "body must be {corpid, secret, sdkfileid, indexbuf}",
        );
    };
    slow(&sim).await;
    if sim.roll(sim.inner.config.media_slow_chunk_rate) {
        tokio::time::sleep(Duration::from_millis(sim.inner.config.media_slow_chunk_ms)).await;
    }
    Json(sim.get_media_data(&req.corpid, &req.secret, &req.sdkfileid, &req.indexbuf))
}

async fn ground_truth(State(sim): State<Simulator>) -> Json<Value> {
    Json(json!({ "corps": sim.truth() }))
}
