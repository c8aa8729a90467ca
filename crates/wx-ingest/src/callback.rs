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
//! | msg_signature, timestamp or nonce missing | 400 | -40001 |
//! | timestamp outside the window | 403 | -40001 |
//! | malformed XML / JSON envelope | 400 | -40002 / -40012 |
//! | bad signature | 401 | -40001 |
//! | nonce already seen within the window (replay) | 409 | -40001 |
//! | ciphertext, padding, length, receiveid | 400 | -40007 / -40008 / -40010 / -40005 |
//! | the broker did not acknowledge | 503 | 10001 |
//!
//! Replay protection is per process (a nonce cache); with several receivers behind a load
//! balancer a replay to another instance is written again, which the pipeline's msgid dedupe
//! absorbs.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use wx_codec::{CallbackEnvelope, Codec, RawBatch, SourceKind};
use wx_crypto::{CallbackCrypt, CallbackError, Envelope};
use wx_kafka::Producer;

use crate::config::IngestSettings;
use crate::worker::{IngestError, Wakers};
use wx_codec::now_ms;

struct Receiver {
    crypts: HashMap<String, CallbackCrypt>,
    producer: Producer,
    codec: Arc<Codec>,
    raw_topic: String,
    max_body: usize,
    window_ms: i64,
    /// (corp, nonce) -> time seen, for replay rejection within the window.
    nonces: Mutex<HashMap<(String, String), i64>>,
    wakers: Wakers,
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
        Ok(CallbackReceiver {
            inner: Arc::new(Receiver {
                crypts,
                producer,
                codec,
                raw_topic: raw_topic.to_string(),
                max_body: settings.callback_max_body_bytes,
                window_ms: i64::try_from(settings.callback_timestamp_window.as_millis())
                    .unwrap_or(i64::MAX),
                nonces: Mutex::new(HashMap::new()),
                wakers,
            }),
        })
    }

    pub fn router(&self) -> Router {
        Router::new()
            .route("/callback/{corp}", get(verify_url).post(message))
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
    let Ok(seconds) = ts.parse::<i64>() else {
        return Err((StatusCode::BAD_REQUEST, -40001, "timestamp is not a number"));
    };
    if (now_ms() - seconds.saturating_mul(1000)).abs() > receiver.window_ms {
        return Err((
            StatusCode::FORBIDDEN,
            -40001,
            "timestamp outside the accepted window",
        ));
    }
    Ok((sig, ts, nonce))
}

async fn verify_url(
    State(r): State<CallbackReceiver>,
    Path(corp): Path<String>,
    Query(q): Params,
) -> Response {
    let receiver = &r.inner;
    let crypt = match receiver.crypt_for(&corp) {
        Ok(c) => c,
        Err((status, code, reason)) => return reject(status, code, reason, &corp),
    };
    let (sig, ts, nonce) = match signed_params(receiver, &q) {
        Ok(p) => p,
        Err((status, code, reason)) => return reject(status, code, reason, &corp),
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
    let crypt = match receiver.crypt_for(&corp) {
        Ok(c) => c,
        Err((status, code, reason)) => return reject(status, code, reason, &corp),
    };
    let Ok(body) = axum::body::to_bytes(body, receiver.max_body).await else {
        return reject(
            StatusCode::PAYLOAD_TOO_LARGE,
            -40008,
            "body over the size limit",
            &corp,
        );
    };
    let (sig, ts, nonce) = match signed_params(receiver, &q) {
        Ok(p) => p,
        Err((status, code, reason)) => return reject(status, code, reason, &corp),
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
    let key = (corp.clone(), nonce.to_string());
    {
        let mut nonces = receiver.nonces.lock().unwrap_or_else(|p| p.into_inner());
        let now = now_ms();
        nonces.retain(|_, seen| now - *seen <= receiver.window_ms);
        if nonces.contains_key(&key) {
            drop(nonces);
            return reject(
                StatusCode::CONFLICT,
                -40001,
                "nonce already used (replay)",
                &corp,
            );
        }
    }
    // Decrypting validates the ciphertext and receiveid and tells a msgaudit_notify apart; the
    // plaintext is not logged and not stored (the raw topic keeps the envelope).
    let plain = match crypt.decrypt(&envelope.encrypt) {
        Ok(p) => p,
        Err(e) => return crypto_reject(&e, &corp),
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
    if let Err(e) = receiver
        .producer
        .send(&receiver.raw_topic, None, corp.as_bytes(), &payload)
        .await
    {
        tracing::warn!(corp = %corp, error = %e, "Could not store a callback; WeCom will retry.");
        return reject(
            StatusCode::SERVICE_UNAVAILABLE,
            10001,
            "could not store the callback; retry",
            &corp,
        );
    }
    // Remembered only once stored, so WeCom's retry of a failed delivery is not a "replay".
    receiver
        .nonces
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(key, now_ms());
    if is_notify && let Some(wake) = receiver.wakers.get(&corp) {
        wake.notify_one();
    }
    let outcome = if is_notify { "notify" } else { "stored" };
    metrics::counter!("wxstream_ingest_callback_requests_total", "corp" => corp, "outcome" => outcome).increment(1);
    (StatusCode::OK, "success").into_response()
}
