//! A callback's file: WeCom's `media/get` with the access token of the app that receives the
//! corp's callbacks (`gettoken` with its secret), read in ranged chunks behind the same
//! [`MediaClient`] as GetMediaData, so the media stage streams, checkpoints and resumes it the
//! same way (`../shared/reviews/audit-2026-12.md` L8: callbacks carry a `MediaId`, valid 3
//! days, never an `sdkfileid`).
//!
//! | call | request | reply |
//! |---|---|---|
//! | token | `GET /cgi-bin/gettoken?corpid=&corpsecret=` | `{errcode, access_token, expires_in}` |
//! | file | `GET /cgi-bin/media/get?access_token=&media_id=` with `Range: bytes=a-b` | the bytes (206 with `Content-Range`, or 200 whole), or a JSON error |
//!
//! The index between chunks is the byte offset (`off:<n>`). The token is fetched once and kept
//! until 5 minutes before it expires, or until WeCom says it is invalid or expired (40014,
//! 42001, 41001), when it is dropped and the call retried as a passing error. Errors are classed
//! like GetMediaData's: 40007 (the `MediaId` is invalid: past its 3 days, or never issued) is a
//! file that is gone; 45009 and 45033 are rate limiting; -1 and transport or 5xx failures pass;
//! anything else (a wrong secret: 40001, 40013, 40091; an IP not allowed: 60020) is a refusal an
//! operator must fix. No URL is ever put in an error: it carries the access token.

use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::client::{MediaChunk, MediaClient, MediaError, MediaFuture};

/// Bytes asked for per call: as GetMediaData's chunks.
pub const CHUNK_BYTES: u64 = 512 * 1024;

/// A token is renewed this long before WeCom says it expires.
const RENEW_BEFORE: Duration = Duration::from_secs(300);

/// `media/get` for one corp.
pub struct MediaGetClient {
    base: String,
    corp_id: String,
    secret: String,
    http: reqwest::Client,
    token: tokio::sync::Mutex<Option<(String, Instant)>>,
}

impl std::fmt::Debug for MediaGetClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaGetClient")
            .field("base", &self.base)
            .field("corp_id", &self.corp_id)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct TokenReply {
    errcode: i64,
    #[serde(default)]
    errmsg: String,
    #[serde(default)]
    access_token: String,
    #[serde(default)]
    expires_in: u64,
}

#[derive(Deserialize)]
struct ErrorReply {
    errcode: i64,
    #[serde(default)]
    errmsg: String,
}

/// How a WeCom error code of these calls is classed, and whether the token must be dropped.
pub fn classify(code: i64, message: String) -> (MediaError, bool) {
    match code {
        40014 | 42001 | 41001 => (MediaError::Transient { code, message }, true),
        40007 => (MediaError::Gone { code, message }, false),
        45009 | 45033 => (MediaError::RateLimited, false),
        -1 => (MediaError::Transient { code, message }, false),
        _ => (MediaError::Refused { code, message }, false),
    }
}

/// A transport failure, without the URL (it carries the access token).
fn transport(e: reqwest::Error) -> MediaError {
    MediaError::Transient {
        code: 10001,
        message: e.without_url().to_string(),
    }
}

/// The offset an index names (empty: the start).
fn offset_of(index: &str) -> Option<u64> {
    if index.is_empty() {
        return Some(0);
    }
    index.strip_prefix("off:")?.parse().ok()
}

/// The total size a `Content-Range: bytes a-b/total` names.
fn range_total(value: &str) -> Option<u64> {
    value
        .strip_prefix("bytes ")?
        .split_once('/')?
        .1
        .parse()
        .ok()
}

/// One reply of `media/get` for a request from `offset`, as a chunk.
pub fn parse_file_reply(
    status: u16,
    content_type: &str,
    content_range: Option<&str>,
    body: &[u8],
    offset: u64,
) -> Result<MediaChunk, (MediaError, bool)> {
    // WeCom answers errors as JSON (200); a file is never served as JSON.
    if content_type.contains("json") || content_type.starts_with("text/plain") {
        return match serde_json::from_slice::<ErrorReply>(body) {
            Ok(reply) if reply.errcode != 0 => Err(classify(reply.errcode, reply.errmsg)),
            _ => Err((
                MediaError::Refused {
                    code: 0,
                    message: format!("media/get answered {content_type} instead of a file"),
                },
                false,
            )),
        };
    }
    let end = |total: u64, got: u64| (offset + got, offset + got >= total);
    match status {
        206 => {
            let total = content_range.and_then(range_total).ok_or((
                MediaError::Transient {
                    code: 10002,
                    message: "a partial reply without a readable Content-Range".into(),
                },
                false,
            ))?;
            let (next, finished) = end(total, body.len() as u64);
            Ok(MediaChunk {
                data: body.to_vec(),
                out_index: format!("off:{next}"),
                is_finish: finished || body.is_empty(),
            })
        }
        // The whole file (a server that ignores Range): what is past the offset.
        200 => {
            let from = usize::try_from(offset)
                .unwrap_or(usize::MAX)
                .min(body.len());
            Ok(MediaChunk {
                data: body[from..].to_vec(),
                out_index: format!("off:{}", body.len()),
                is_finish: true,
            })
        }
        // Asked past the end: the file is all read.
        416 => Ok(MediaChunk {
            data: Vec::new(),
            out_index: format!("off:{offset}"),
            is_finish: true,
        }),
        500.. => Err((
            MediaError::Transient {
                code: 10001,
                message: format!("media/get answered HTTP {status}"),
            },
            false,
        )),
        _ => Err((
            MediaError::Refused {
                code: i64::from(status),
                message: format!("media/get answered HTTP {status}"),
            },
            false,
        )),
    }
}

impl MediaGetClient {
    /// The client of `corp_id`, calling `base` (e.g. `https://qyapi.weixin.qq.com`) with the
    /// secret of the app that receives its callbacks; each call's deadline is `timeout`.
    pub fn new(base: &str, corp_id: &str, secret: &str, timeout: Duration) -> MediaGetClient {
        MediaGetClient {
            base: base.trim_end_matches('/').to_string(),
            corp_id: corp_id.to_string(),
            secret: secret.to_string(),
            http: reqwest::Client::builder()
                .timeout(timeout)
                .build()
                .unwrap_or_default(),
            token: tokio::sync::Mutex::new(None),
        }
    }

    /// The access token: the kept one while it is good, else a new one.
    async fn token(&self) -> Result<String, MediaError> {
        let mut kept = self.token.lock().await;
        if let Some((token, renew_at)) = kept.as_ref()
            && Instant::now() < *renew_at
        {
            return Ok(token.clone());
        }
        let reply = self
            .http
            .get(format!("{}/cgi-bin/gettoken", self.base))
            .query(&[("corpid", &self.corp_id), ("corpsecret", &self.secret)])
            .send()
            .await
            .map_err(transport)?;
        let body = reply.bytes().await.map_err(transport)?;
        let reply: TokenReply =
            serde_json::from_slice(&body).map_err(|e| MediaError::Transient {
                code: 10002,
                message: format!("unparsable gettoken reply: {e}"),
            })?;
        if reply.errcode != 0 || reply.access_token.is_empty() {
            return Err(classify(reply.errcode, reply.errmsg).0);
        }
        let lifetime = Duration::from_secs(reply.expires_in).saturating_sub(RENEW_BEFORE);
        *kept = Some((reply.access_token.clone(), Instant::now() + lifetime));
        Ok(reply.access_token)
    }

    async fn drop_token(&self) {
        *self.token.lock().await = None;
    }
}

impl MediaClient for MediaGetClient {
    fn get_media_chunk<'a>(&'a self, media_id: &'a str, index: &'a str) -> MediaFuture<'a> {
        Box::pin(async move {
            let offset = offset_of(index).ok_or_else(|| MediaError::Gone {
                code: 10000,
                message: "the download's index is not a byte offset".into(),
            })?;
            let token = self.token().await?;
            let reply = self
                .http
                .get(format!("{}/cgi-bin/media/get", self.base))
                .query(&[("access_token", token.as_str()), ("media_id", media_id)])
                .header(
                    reqwest::header::RANGE,
                    format!("bytes={offset}-{}", offset + CHUNK_BYTES - 1),
                )
                .send()
                .await
                .map_err(transport)?;
            let status = reply.status().as_u16();
            let header = |name| {
                reply
                    .headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            };
            let content_type = header(reqwest::header::CONTENT_TYPE).unwrap_or_default();
            let content_range = header(reqwest::header::CONTENT_RANGE);
            let body = reply.bytes().await.map_err(transport)?;
            match parse_file_reply(
                status,
                &content_type,
                content_range.as_deref(),
                &body,
                offset,
            ) {
                Ok(chunk) => Ok(chunk),
                Err((e, drop_token)) => {
                    if drop_token {
                        self.drop_token().await;
                    }
                    Err(e)
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_classed_and_an_invalid_token_is_dropped() {
        for code in [40014, 42001, 41001] {
            let (e, drop) = classify(code, String::new());
            assert!(matches!(e, MediaError::Transient { .. }) && drop, "{code}");
        }
        assert!(matches!(
            classify(40007, "invalid media_id".into()),
            (MediaError::Gone { code: 40007, .. }, false)
        ));
        assert_eq!(classify(45009, String::new()).0, MediaError::RateLimited);
        assert!(matches!(
            classify(-1, String::new()).0,
            MediaError::Transient { .. }
        ));
        for code in [40001, 40013, 40091, 60020] {
            assert!(
                matches!(classify(code, String::new()).0, MediaError::Refused { .. }),
                "{code}"
            );
        }
    }

    #[test]
    fn ranged_replies_become_chunks_and_json_errors_are_read() {
        let chunk =
            parse_file_reply(206, "image/jpeg", Some("bytes 0-3/10"), b"abcd", 0).expect("chunk");
        assert_eq!(
            (chunk.out_index.as_str(), chunk.is_finish),
            ("off:4", false)
        );
        let last =
            parse_file_reply(206, "image/jpeg", Some("bytes 8-9/10"), b"ij", 8).expect("last");
        assert_eq!((last.out_index.as_str(), last.is_finish), ("off:10", true));
        let whole = parse_file_reply(200, "image/jpeg", None, b"abcdefghij", 4).expect("whole");
        assert_eq!(
            (whole.data.as_slice(), whole.is_finish),
            (&b"efghij"[..], true)
        );
        assert!(
            parse_file_reply(416, "", None, b"", 10)
                .expect("past")
                .is_finish
        );
        let (gone, _) = parse_file_reply(
            200,
            "application/json; charset=utf-8",
            None,
            br#"{"errcode":40007,"errmsg":"invalid media_id"}"#,
            0,
        )
        .expect_err("error");
        assert_eq!(gone.code(), 40007);
        let (_, drop) = parse_file_reply(
            200,
            "text/plain",
            None,
            br#"{"errcode":42001,"errmsg":"access_token expired"}"#,
            0,
        )
        .expect_err("expired");
        assert!(drop);
        assert!(matches!(
            parse_file_reply(206, "image/jpeg", None, b"ab", 0),
            Err((MediaError::Transient { .. }, false))
        ));
        assert!(matches!(
            parse_file_reply(503, "text/html", None, b"", 0),
            Err((MediaError::Transient { .. }, false))
        ));
        assert!(offset_of("off:x").is_none() && offset_of("") == Some(0));
    }
}
