//! Signed, encrypted callbacks as WeCom sends them (WXBizMsgCrypt): `msgaudit_notify` events when
//! new archive data exists, and ordinary app text messages. A delivery that fails (no answer or
//! a non-2xx status) is retried, as WeCom retries, so a receiver that answered an error loses
//! nothing.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use wx_crypto::{CallbackCrypt, CallbackError};

/// Where and how callbacks are sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallbackConfig {
    /// The receiver's URL (the ingest stage's callback endpoint); `{corp}` is replaced by the
    /// corp id, e.g. `http://127.0.0.1:8481/callback/{corp}`.
    pub url: String,
    pub token: String,
    pub encoding_aes_key: String,
    /// Deliveries per callback before giving up (WeCom tries a few times).
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    /// Pause between attempts.
    #[serde(default = "default_retry_ms")]
    pub retry_ms: u64,
    /// Send the JSON envelope instead of XML.
    #[serde(default)]
    pub json: bool,
}

fn default_attempts() -> u32 {
    3
}

fn default_retry_ms() -> u64 {
    1000
}

/// What happened to one callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Attempts made (1 if the first succeeded).
    pub attempts: u32,
    /// The receiver finally answered 2xx.
    pub delivered: bool,
    /// The body of the last answer.
    pub reply: String,
}

/// Sends callbacks for corps, each encrypted for its corp id as receiveid.
#[derive(Debug, Clone)]
pub struct CallbackSender {
    config: CallbackConfig,
    http: reqwest::Client,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl CallbackSender {
    /// Fails if the EncodingAESKey is not a valid one.
    pub fn new(config: CallbackConfig) -> Result<CallbackSender, CallbackError> {
        CallbackCrypt::new(&config.token, &config.encoding_aes_key, "")?;
        Ok(CallbackSender {
            config,
            http: reqwest::Client::new(),
        })
    }

    /// The `msgaudit_notify` event that tells an ingester new archive data exists.
    pub async fn msgaudit_notify(&self, corp_id: &str) -> Delivery {
        let ts = now_secs();
        let xml = format!(
            "<xml><ToUserName><![CDATA[{corp_id}]]></ToUserName><FromUserName><![CDATA[sys]]></FromUserName><CreateTime>{ts}</CreateTime><MsgType><![CDATA[event]]></MsgType><AgentID>2000004</AgentID><Event><![CDATA[msgaudit_notify]]></Event></xml>"
        );
        self.send(corp_id, &xml).await
    }

    /// An ordinary app text message from `from` (content escaped for CDATA).
    pub async fn text_message(
        &self,
        corp_id: &str,
        from: &str,
        content: &str,
        msg_id: u64,
    ) -> Delivery {
        let ts = now_secs();
        let content = content.replace("]]>", "]]]]><![CDATA[>");
        let xml = format!(
            "<xml><ToUserName><![CDATA[{corp_id}]]></ToUserName><FromUserName><![CDATA[{from}]]></FromUserName><CreateTime>{ts}</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[{content}]]></Content><MsgId>{msg_id}</MsgId><AgentID>1000002</AgentID></xml>"
        );
        self.send(corp_id, &xml).await
    }

    /// Encrypts `plaintext` for `corp_id`, signs it and POSTs it, retrying as configured.
    pub async fn send(&self, corp_id: &str, plaintext: &str) -> Delivery {
        let crypt =
            match CallbackCrypt::new(&self.config.token, &self.config.encoding_aes_key, corp_id) {
                Ok(c) => c,
                Err(e) => {
                    return Delivery {
                        attempts: 0,
                        delivered: false,
                        reply: e.to_string(),
                    };
                }
            };
        let encrypt = crypt.encrypt(plaintext.as_bytes());
        let mut delivery = Delivery {
            attempts: 0,
            delivered: false,
            reply: String::new(),
        };
        for attempt in 1..=self.config.attempts.max(1) {
            // WeCom signs each delivery afresh.
            let timestamp = now_secs().to_string();
            let nonce = format!("{}", rand::random::<u32>());
            let signature = crypt.sign(&timestamp, &nonce, &encrypt);
            let (content_type, body) = if self.config.json {
                (
                    "application/json",
                    serde_json::json!({
                        "tousername": corp_id, "encrypt": encrypt, "agentid": "1000002"
                    })
                    .to_string(),
                )
            } else {
                (
                    "text/xml",
                    format!(
                        "<xml><ToUserName><![CDATA[{corp_id}]]></ToUserName><Encrypt><![CDATA[{encrypt}]]></Encrypt><AgentID><![CDATA[1000002]]></AgentID></xml>"
                    ),
                )
            };
            let result = self
                .http
                .post(self.config.url.replace("{corp}", corp_id))
                .query(&[
                    ("msg_signature", &signature),
                    ("timestamp", &timestamp),
                    ("nonce", &nonce),
                ])
                .header(reqwest::header::CONTENT_TYPE, content_type)
                .body(body)
                .timeout(Duration::from_secs(5))
                .send()
                .await;
            delivery.attempts = attempt;
            match result {
                Ok(reply) => {
                    let ok = reply.status().is_success();
                    delivery.reply = reply.text().await.unwrap_or_default();
                    if ok {
                        delivery.delivered = true;
                        return delivery;
                    }
                }
                Err(e) => delivery.reply = e.to_string(),
            }
            tracing::debug!(corp = %corp_id, attempt, "Callback delivery failed; WeCom would retry.");
            tokio::time::sleep(Duration::from_millis(self.config.retry_ms)).await;
        }
        delivery
    }
}
