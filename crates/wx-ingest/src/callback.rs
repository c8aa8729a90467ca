//! The callback receiver: WeCom (and Official Account) callbacks per WXBizMsgCrypt, on
//! `/callback/{corp_id}`.
//!
//! - `GET` is URL verification: the decrypted `echostr` is the answer.
//! - `POST` is a message: checks in the order below, each failure answered with its status and
//!   WeCom error code and nothing written; then the still-encrypted envelope is written to the raw
//!   topic, and `success` is answered only once the broker acknowledged it (otherwise 503, so
//!   WeCom retries). A `msgaudit_notify` event also wakes that corp's archive puller.
//!
//! | check | status | errcode |
//! |---|---|---|
//! | unknown corp | 404 | -40005 |
//! | body over the size limit | 413 | -40008 |
//! | body not all in within `callback_body_timeout` | 408 | -40008 |
//! | msg_signature, timestamp or nonce missing | 400 | -40001 |
//! | timestamp outside the window | 403 | -40001 |
//! | malformed XML / JSON envelope | 400 | -40002 / -40012 |
//! | bad signature | 401 | -40001 |
//! | nonce already seen within the window (replay) | 409 | -40001 |
//! | ciphertext, padding, length, receiveid | 400 | -40007 / -40008 / -40010 / -40005 |
//! | the broker did not acknowledge | 503 | 10001 |
//!
//! The listener holds at most `callback_max_connections` connections (more wait in the
//! accept backlog), and closes one whose request headers are not all in within
//! `callback_header_timeout` or that idles that long between requests: a client that opens
//! connections and sends slowly cannot keep WeCom out (`../shared/reviews/audit-2026-12.md` X3).
//!
//! Replay protection is shared by every receiver and survives restarts (`nonces`): a nonce is
//! recorded on the checkpoint topic once its callback is stored, and each receiver reads the
//! window's records before it accepts a callback. Two receivers given the same callback within
//! the moment before either's record is read both store it; the pipeline's msgid dedupe absorbs
//! that duplicate.

use std::collections::{BTreeMap, HashMap};
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use wx_codec::{CallbackEnvelope, Codec, RawBatch, SourceKind};
use wx_crypto::{CallbackCrypt, CallbackError, Envelope};
use wx_kafka::Producer;

use crate::config::IngestSettings;
use crate::nonces::{NonceRefusal, Nonces};
use crate::worker::{GroupLink, IngestError, Wakers};
use wx_codec::now_ms;

struct Receiver {
    crypts: HashMap<String, CallbackCrypt>,
    /// Every request, whatever its path.
    rate: DefaultDirectRateLimiter,
    /// Each configured corp's requests (a path naming no corp has no bucket of its own).
    corp_rates: HashMap<String, DefaultDirectRateLimiter>,
    producer: Producer,
    codec: Arc<Codec>,
    raw_topic: String,
    max_body: usize,
    /// `callback_body_timeout`.
    body_timeout: Duration,
    /// `callback_header_timeout` and `callback_max_connections`: the listener's.
    header_timeout: Duration,
    max_connections: usize,
    window_ms: i64,
    /// Replay protection: the nonces of the window, shared by every receiver.
    nonces: Arc<Nonces>,
    wakers: Wakers,
    /// Wakes the corp's puller in whichever worker owns it (None: only this process's).
    group: Option<GroupLink>,
}

/// The refusal of a request over a rate limit: WeCom's own error for it.
const RATE_LIMITED: Refusal = (
    StatusCode::TOO_MANY_REQUESTS,
    45009,
    "api freq out of limit",
);

fn per_second(n: u32) -> DefaultDirectRateLimiter {
    RateLimiter::direct(Quota::per_second(
        std::num::NonZeroU32::new(n).unwrap_or(std::num::NonZeroU32::MIN),
    ))
}

/// How long storing one callback may take: under the 5 s WeCom waits for `success`, so the
/// answer is an error WeCom retries, not a dropped connection. It is the delivery timeout of the
/// receiver's own producer, so a send that runs out of it fails inside librdkafka as
/// `MessageTimedOut` and counts towards the producer's renewal of a stuck client (a deadline
/// kept only out here dropped the send unseen: after a broker was frozen and thawed, the
/// shared client stayed stuck and callbacks were refused for over a minute).
/// 3 s: librdkafka looks for timed-out records once a second, so its failure arrives between 3
/// and about 4 s, before the backstop.
pub const STORE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// The backstop over a store, under the 5 s WeCom waits: librdkafka's own deadline (above) ends
/// it first unless the record could not even be queued.
const STORE_BACKSTOP: std::time::Duration = std::time::Duration::from_millis(4_500);

impl Receiver {
    /// The budget of every request, checked before any other work.
    fn admit(&self) -> Result<(), Refusal> {
        if self.rate.check().is_err() {
            return Err(RATE_LIMITED);
        }
        Ok(())
    }

    /// The corp's own budget, charged only for a request whose signature is verified: anyone
    /// who knows a corp id could otherwise spend it with garbage and have WeCom's genuine
    /// deliveries refused.
    fn admit_signed(&self, corp: &str) -> Result<(), Refusal> {
        match self.corp_rates.get(corp) {
            Some(rate) if rate.check().is_err() => Err(RATE_LIMITED),
            _ => Ok(()),
        }
    }

    /// The metric label and log field for a corp in a request path: a configured corp, else
    /// `unknown` (a path is the client's choice; labels and logs stay bounded).
    fn label<'a>(&self, corp: &'a str) -> &'a str {
        if self.crypts.contains_key(corp) {
            corp
        } else {
            "unknown"
        }
    }
}

/// A callback's `timestamp` (Unix seconds, digits only) in ms, if it is within `window_ms` of
/// `now_ms`. Parsed without overflow: `-9223372036854775808`, huge values and non-digits are
/// refused.
fn timestamp_in_window(ts: &str, now_ms: i64, window_ms: i64) -> Result<i64, &'static str> {
    if ts.is_empty() || ts.len() > 12 || !ts.bytes().all(|b| b.is_ascii_digit()) {
        return Err("timestamp is not a number of seconds");
    }
    let ms = ts
        .parse::<i64>()
        .ok()
        .and_then(|s| s.checked_mul(1000))
        .ok_or("timestamp is not a number of seconds")?;
    if now_ms.abs_diff(ms) > window_ms.unsigned_abs() {
        return Err("timestamp outside the accepted window");
    }
    Ok(ms)
}

/// The receiver's routes, ready to serve.
#[derive(Clone)]
pub struct CallbackReceiver {
    inner: Arc<Receiver>,
}

impl std::fmt::Debug for CallbackReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallbackReceiver")
            .field("corps", &self.inner.crypts.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

fn reject(status: StatusCode, errcode: i32, errmsg: &str, corp: &str) -> Response {
    let outcome = match errcode {
        10001 => "broker_error",
        45009 => "rate_limited",
        -40008 if status == StatusCode::PAYLOAD_TOO_LARGE => "oversize",
        _ if status == StatusCode::CONFLICT => "replayed",
        _ if status == StatusCode::FORBIDDEN => "stale",
        _ if status == StatusCode::UNAUTHORIZED => "bad_signature",
        _ => "malformed",
    };
    metrics::counter!("wxstream_ingest_callback_requests_total", "corp" => corp.to_string(), "outcome" => outcome).increment(1);
    tracing::info!(
        corp,
        status = status.as_u16(),
        errcode,
        reason = errmsg,
        "Rejected a callback."
    );
    (
        status,
        axum::Json(serde_json::json!({ "errcode": errcode, "errmsg": errmsg })),
    )
        .into_response()
}

fn crypto_reject(e: &CallbackError, corp: &str) -> Response {
    let status = match e {
        CallbackError::BadSignature => StatusCode::UNAUTHORIZED,
        _ => StatusCode::BAD_REQUEST,
    };
    reject(status, e.code(), &e.to_string(), corp)
}

impl CallbackReceiver {
    /// Resolves each corp's callback credentials (corps without them get no endpoint).
    pub fn build(
        settings: &IngestSettings,
        producer: Producer,
        codec: Arc<Codec>,
        raw_topic: &str,
        wakers: Wakers,
        group: Option<GroupLink>,
    ) -> Result<CallbackReceiver, IngestError> {
        let mut crypts = HashMap::new();
        for corp in &settings.corps {
            let Some(cb) = &corp.callback else { continue };
            let secret = |field: &'static str, secret: &crate::SecretRef| {
                secret.resolve().map_err(|source| IngestError::Secret {
                    corp: corp.corp_id.clone(),
                    field,
                    source,
                })
            };
            let token = secret("callback.token", &cb.token)?;
            let key = secret("callback.encoding_aes_key", &cb.encoding_aes_key)?;
            let crypt = CallbackCrypt::new(token.expose(), key.expose(), &corp.corp_id).map_err(
                |source| IngestError::Callback {
                    corp: corp.corp_id.clone(),
                    source,
                },
            )?;
            crypts.insert(corp.corp_id.clone(), crypt);
        }
        let corp_rates = crypts
            .keys()
            .map(|corp| {
                let rate = per_second(settings.callback_requests_per_second_per_corp);
                (corp.clone(), rate)
            })
            .collect();
        let window_ms =
            i64::try_from(settings.callback_timestamp_window.as_millis()).unwrap_or(i64::MAX);
        Ok(CallbackReceiver {
            inner: Arc::new(Receiver {
                rate: per_second(settings.callback_requests_per_second),
                corp_rates,
                crypts,
                producer,
                codec,
                raw_topic: raw_topic.to_string(),
                max_body: settings.callback_max_body_bytes,
                body_timeout: settings.callback_body_timeout,
                header_timeout: settings.callback_header_timeout,
                max_connections: settings.callback_max_connections,
                window_ms,
                nonces: Nonces::new(
                    settings.callback_max_nonces,
                    window_ms,
                    group.as_ref().map(GroupLink::nonce_log),
                ),
                wakers,
                group,
            }),
        })
    }

    pub fn router(&self) -> Router {
        Router::new()
            .route("/callback/{corp}", get(verify_url).post(message))
            .with_state(self.clone())
    }

    /// Serves HTTP/1.1 on `listener` until `shutdown` completes, then lets the requests under
    /// way finish. At most `callback_max_connections` connections at once (the next is accepted
    /// when one closes); hyper closes a connection whose headers are not all in within
    /// `callback_header_timeout`, or that idles that long between requests.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let router = self.router();
        let header_timeout = self.inner.header_timeout;
        let permits = Arc::new(tokio::sync::Semaphore::new(self.inner.max_connections));
        let (closing, closed) = tokio::sync::watch::channel(false);
        let connections = tokio_util::task::TaskTracker::new();
        let mut shutdown = pin!(shutdown);
        loop {
            let permit = tokio::select! {
                () = &mut shutdown => break,
                permit = permits.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
            };
            let stream = tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of file descriptors and the like: wait, never spin.
                        tracing::warn!(error = %e, "Accepting a callback connection failed.");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let service = hyper_util::service::TowerToHyperService::new(router.clone());
            let mut closed = closed.clone();
            connections.spawn(async move {
                let _permit = permit;
                let mut http = hyper::server::conn::http1::Builder::new();
                http.timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(header_timeout);
                let mut connection =
                    pin!(http.serve_connection(hyper_util::rt::TokioIo::new(stream), service));
                let closing = async move {
                    let _ = closed.wait_for(|closed| *closed).await;
                };
                tokio::select! {
                    _ = connection.as_mut() => return,
                    () = closing => {}
                }
                connection.as_mut().graceful_shutdown();
                let _ = connection.await;
            });
        }
        let _ = closing.send(true);
        connections.close();
        connections.wait().await;
        Ok(())
    }
}

type Params = Query<HashMap<String, String>>;

/// A rejection before any work: status, WeCom code, reason.
type Refusal = (StatusCode, i32, &'static str);

impl Receiver {
    /// The corp's WXBizMsgCrypt, or the refusal for a corp without callbacks.
    fn crypt_for(&self, corp: &str) -> Result<&CallbackCrypt, Refusal> {
        self.crypts.get(corp).ok_or((
            StatusCode::NOT_FOUND,
            -40005,
            "no callback is configured for this corp",
        ))
    }
}

/// The signature parameters, and the timestamp checked against the window.
fn signed_params<'a>(
    receiver: &Receiver,
    q: &'a HashMap<String, String>,
) -> Result<(&'a str, &'a str, &'a str), Refusal> {
    let (Some(sig), Some(ts), Some(nonce)) =
        (q.get("msg_signature"), q.get("timestamp"), q.get("nonce"))
    else {
        return Err((
            StatusCode::BAD_REQUEST,
            -40001,
            "msg_signature, timestamp and nonce are required",
        ));
    };
    match timestamp_in_window(ts, now_ms(), receiver.window_ms) {
        Ok(_) => Ok((sig, ts, nonce)),
        Err(reason @ "timestamp outside the accepted window") => {
            Err((StatusCode::FORBIDDEN, -40001, reason))
        }
        Err(reason) => Err((StatusCode::BAD_REQUEST, -40001, reason)),
    }
}

async fn verify_url(
    State(r): State<CallbackReceiver>,
    Path(corp): Path<String>,
    Query(q): Params,
) -> Response {
    let receiver = &r.inner;
    let label = receiver.label(&corp);
    let crypt = match receiver.admit().and_then(|()| receiver.crypt_for(&corp)) {
        Ok(c) => c,
        Err((status, code, reason)) => return reject(status, code, reason, label),
    };
    let (sig, ts, nonce) = match signed_params(receiver, &q) {
        Ok(p) => p,
        Err((status, code, reason)) => return reject(status, code, reason, label),
    };
    let Some(echostr) = q.get("echostr") else {
        return reject(
            StatusCode::BAD_REQUEST,
            -40001,
            "echostr is required",
            &corp,
        );
    };
    match crypt.verify_url(sig, ts, nonce, echostr) {
        Ok(_) if receiver.admit_signed(&corp).is_err() => {
            let (status, code, reason) = RATE_LIMITED;
            reject(status, code, reason, label)
        }
        Ok(plain) => {
            metrics::counter!("wxstream_ingest_callback_requests_total", "corp" => corp.clone(), "outcome" => "verified").increment(1);
            (StatusCode::OK, plain).into_response()
        }
        Err(e) => crypto_reject(&e, &corp),
    }
}

async fn message(
    State(r): State<CallbackReceiver>,
    Path(corp): Path<String>,
    Query(q): Params,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let receiver = &r.inner;
    let label = receiver.label(&corp);
    let crypt = match receiver.admit().and_then(|()| receiver.crypt_for(&corp)) {
        Ok(c) => c,
        Err((status, code, reason)) => return reject(status, code, reason, label),
    };
    let body = match tokio::time::timeout(
        receiver.body_timeout,
        axum::body::to_bytes(body, receiver.max_body),
    )
    .await
    {
        Ok(Ok(body)) => body,
        Ok(Err(_)) => {
            return reject(
                StatusCode::PAYLOAD_TOO_LARGE,
                -40008,
                "body over the size limit",
                &corp,
            );
        }
        Err(_) => {
            return reject(
                StatusCode::REQUEST_TIMEOUT,
                -40008,
                "body not all in within the timeout",
                &corp,
            );
        }
    };
    let (sig, ts, nonce) = match signed_params(receiver, &q) {
        Ok(p) => p,
        Err((status, code, reason)) => return reject(status, code, reason, label),
    };
    let content_type = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("text/xml")
        .to_string();
    let envelope = if content_type.contains("json") {
        Envelope::from_json(&body)
    } else {
        Envelope::from_xml(&body)
    };
    let envelope = match envelope {
        Ok(e) => e,
        Err(e) => return crypto_reject(&e, &corp),
    };
    if let Err(e) = crypt.verify_signature(sig, ts, nonce, &envelope.encrypt) {
        return crypto_reject(&e, &corp);
    }
    if let Err((status, code, reason)) = receiver.admit_signed(&corp) {
        return reject(status, code, reason, label);
    }
    // Decrypting validates the ciphertext and receiveid and tells a msgaudit_notify apart; the
    // plaintext is not logged and not stored (the raw topic keeps the envelope).
    let plain = match crypt.decrypt(&envelope.encrypt) {
        Ok(p) => p,
        Err(e) => return crypto_reject(&e, &corp),
    };
    let taken = match receiver.nonces.take(&corp, nonce) {
        Ok(taken) => taken,
        Err(NonceRefusal::Replayed) => {
            return reject(
                StatusCode::CONFLICT,
                -40001,
                "nonce already used (replay)",
                &corp,
            );
        }
        Err(NonceRefusal::Full) => {
            return reject(
                StatusCode::SERVICE_UNAVAILABLE,
                10001,
                "too many callbacks in the replay window; retry",
                &corp,
            );
        }
        Err(NonceRefusal::Loading) => {
            return reject(
                StatusCode::SERVICE_UNAVAILABLE,
                10001,
                "reading the replay window's nonces; retry",
                &corp,
            );
        }
    };
    let is_notify = String::from_utf8_lossy(&plain).contains("msgaudit_notify");
    drop(plain);
    let query: BTreeMap<String, String> = q.into_iter().collect();
    let batch = RawBatch {
        corp_id: corp.clone(),
        source: SourceKind::Callback,
        seq_from: None,
        seq_to: None,
        fetched_at: now_ms(),
        items: vec![],
        callback: Some(CallbackEnvelope {
            method: Method::POST.to_string(),
            content_type,
            query,
            body: body.to_vec(),
        }),
    };
    let payload = match receiver.codec.encode(&batch) {
        Ok(p) => p,
        Err(e) => {
            return reject(
                StatusCode::INTERNAL_SERVER_ERROR,
                -40011,
                &e.to_string(),
                &corp,
            );
        }
    };
    let send = receiver
        .producer
        .send(&receiver.raw_topic, None, corp.as_bytes(), &payload);
    let sent = match tokio::time::timeout(STORE_BACKSTOP, send).await {
        Ok(sent) => sent.map(|_| ()).map_err(|e| e.to_string()),
        Err(_) => Err(format!(
            "the record could not be queued within {STORE_BACKSTOP:?}"
        )),
    };
    if let Err(e) = sent {
        tracing::warn!(corp = %corp, error = %e, "Could not store a callback; WeCom will retry.");
        return reject(
            StatusCode::SERVICE_UNAVAILABLE,
            10001,
            "could not store the callback; retry",
            &corp,
        );
    }
    // Kept once stored; given back (by the guard's drop) when storing failed or the request was
    // cancelled, so WeCom's retry of a failed delivery is not a "replay".
    taken.stored();
    if is_notify {
        // This process's puller at once, if it has the corp; and the owner's through the
        // group, whichever worker it is (at most one extra pull when both are this one).
        if let Some(wake) = receiver.wakers.get(&corp) {
            wake.notify_one();
        }
        if let Some(group) = receiver.group.clone() {
            let corp = corp.clone();
            tokio::spawn(async move {
                let woken = tokio::time::timeout(STORE_TIMEOUT, group.wake(&corp)).await;
                if !matches!(woken, Ok(Ok(()))) {
                    // The owner pulls at its poll interval all the same.
                    tracing::warn!(corp = %corp, "Could not pass a msgaudit_notify on to the corp's owner.");
                }
            });
        }
    }
    let outcome = if is_notify { "notify" } else { "stored" };
    metrics::counter!("wxstream_ingest_callback_requests_total", "corp" => corp, "outcome" => outcome).increment(1);
    (StatusCode::OK, "success").into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_parse_without_overflow() {
        let now = 1_700_000_000_000;
        let window = 300_000;
        assert_eq!(
            timestamp_in_window("1700000000", now, window),
            Ok(1_700_000_000_000)
        );
        assert_eq!(
            timestamp_in_window("1700000299", now, window),
            Ok(1_700_000_299_000)
        );
        for stale in ["1699999000", "1700000301", "0"] {
            assert_eq!(
                timestamp_in_window(stale, now, window),
                Err("timestamp outside the accepted window"),
                "{stale}"
            );
        }
        for bad in [
            "-9223372036854775808",
            "9223372036854775807",
            "99999999999999999999",
            "17e8",
            "",
            " 1700000000",
            "+1700000000",
        ] {
            assert_eq!(
                timestamp_in_window(bad, now, window),
                Err("timestamp is not a number of seconds"),
                "{bad:?}"
            );
        }
    }
}
