//! The ingest connector's settings: the `settings` block of `topology/connectors/ingest.yaml`.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;
pub use wx_runtime::settings::{CallbackCredentials, Secret, SecretRef};
use wx_runtime::settings::{SettingsError, duration};
pub use wx_wecom::{ClientKind, ClientSettings, check_corp_ids};

/// One corp to archive.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorpConfig {
    pub corp_id: String,
    /// The chat archive secret. Absent for a corp whose messages come by callback only (an
    /// Official Account, or an app without the archive licence): no puller is started for it.
    #[serde(default)]
    pub secret: Option<SecretRef>,
    /// Callback credentials, when this corp's callbacks come to this connector.
    #[serde(default)]
    pub callback: Option<CallbackCredentials>,
}

fn default_calls_per_minute() -> u32 {
    600
}
fn default_page_limit() -> u32 {
    1000
}
fn default_poll_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_retention() -> Duration {
    Duration::from_secs(5 * 86_400)
}
fn default_retention_margin() -> Duration {
    Duration::from_secs(86_400)
}
fn default_max_body() -> usize {
    64 * 1024
}
fn default_timestamp_window() -> Duration {
    Duration::from_secs(300)
}
fn default_max_nonces() -> usize {
    200_000
}
fn default_callback_rate() -> u32 {
    1000
}
fn default_callback_corp_rate() -> u32 {
    100
}
fn default_callback_header_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_callback_body_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_callback_max_connections() -> usize {
    1024
}
fn default_backoff_cap() -> Duration {
    Duration::from_secs(30)
}

/// The ingest connector's settings. Durations are written like `5s`, `4d`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestSettings {
    /// How WeCom is reached: the block's `client`, `simulator_url`, `sdk_library` and
    /// `sdk_proxy` ([`wx_wecom::ClientSettings`], parsed apart).
    #[serde(skip)]
    pub wecom: ClientSettings,
    /// GetChatData calls per corp per minute (a token bucket).
    #[serde(default = "default_calls_per_minute")]
    pub calls_per_minute: u32,
    /// Items per GetChatData call, at most 1000.
    #[serde(default = "default_page_limit")]
    pub page_limit: u32,
    /// Pull this often when there is nothing new (a msgaudit_notify wakes a puller at once).
    #[serde(default = "default_poll_interval", deserialize_with = "duration")]
    pub poll_interval: Duration,
    /// Timeout of one GetChatData call.
    #[serde(default = "default_request_timeout", deserialize_with = "duration")]
    pub request_timeout: Duration,
    /// How long WeCom keeps data pullable (5 days; older docs said 3).
    #[serde(default = "default_retention", deserialize_with = "duration")]
    pub retention: Duration,
    /// Warn when a corp's newest pulled message is older than retention minus this margin.
    #[serde(default = "default_retention_margin", deserialize_with = "duration")]
    pub retention_warning_margin: Duration,
    /// Longest pause between retries of a failed call or write.
    #[serde(default = "default_backoff_cap", deserialize_with = "duration")]
    pub backoff_cap: Duration,
    /// Where the callback receiver listens (absent: no receiver).
    #[serde(default)]
    pub callback_listen: Option<SocketAddr>,
    /// Largest callback body accepted.
    #[serde(default = "default_max_body")]
    pub callback_max_body_bytes: usize,
    /// Callbacks whose timestamp is further than this from now are rejected, and nonces are
    /// remembered this long to reject replays.
    #[serde(default = "default_timestamp_window", deserialize_with = "duration")]
    pub callback_timestamp_window: Duration,
    /// Callback requests a second the receiver accepts in all [1000]; more are answered with
    /// WeCom's rate-limit error (45009, HTTP 429) before any work.
    #[serde(default = "default_callback_rate")]
    pub callback_requests_per_second: u32,
    /// The most callback nonces remembered for replay protection [200000]; when that many are
    /// still live, new callbacks are answered "busy" (WeCom retries), none is forgotten early.
    #[serde(default = "default_max_nonces")]
    pub callback_max_nonces: usize,
    /// Callback requests a second accepted for one corp [100].
    #[serde(default = "default_callback_corp_rate")]
    pub callback_requests_per_second_per_corp: u32,
    /// A connection whose request headers are not all in within this time, or that stays idle
    /// this long between requests, is closed [10s].
    #[serde(
        default = "default_callback_header_timeout",
        deserialize_with = "duration"
    )]
    pub callback_header_timeout: Duration,
    /// A request whose body is not all in within this time is answered 408 [10s].
    #[serde(
        default = "default_callback_body_timeout",
        deserialize_with = "duration"
    )]
    pub callback_body_timeout: Duration,
    /// Connections served at once [1024]; more wait to be accepted until one closes.
    #[serde(default = "default_callback_max_connections")]
    pub callback_max_connections: usize,
    /// The corps to archive.
    pub corps: Vec<CorpConfig>,
}

impl IngestSettings {
    /// What the types alone do not check (`StageSettings::validate`).
    pub(crate) fn check(&self) -> Result<(), SettingsError> {
        let fail = |field: &str, reason: &str| Err(SettingsError::new(crate::STAGE, field, reason));
        if self.page_limit == 0 || self.page_limit > 1000 {
            return fail(
                "page_limit",
                "must be between 1 and 1000 (GetChatData's limit)",
            );
        }
        if self.calls_per_minute == 0 {
            return fail("calls_per_minute", "must be at least 1");
        }
        if self.callback_requests_per_second == 0 {
            return fail("callback_requests_per_second", "must be at least 1");
        }
        if self.callback_requests_per_second_per_corp == 0 {
            return fail(
                "callback_requests_per_second_per_corp",
                "must be at least 1",
            );
        }
        if self.callback_max_connections == 0 {
            return fail("callback_max_connections", "must be at least 1");
        }
        for (field, value) in [
            ("callback_header_timeout", self.callback_header_timeout),
            ("callback_body_timeout", self.callback_body_timeout),
        ] {
            if value.is_zero() {
                return fail(field, "must be more than 0");
            }
        }
        check_corp_ids(crate::STAGE, self.corps.iter().map(|c| c.corp_id.as_str()))?;
        for (i, corp) in self.corps.iter().enumerate() {
            if corp.secret.is_none() && corp.callback.is_none() {
                return fail(
                    &format!("corps[{i}].secret"),
                    "a corp needs an archive secret, callback credentials, or both",
                );
            }
        }
        if self.retention_warning_margin >= self.retention {
            return fail(
                "retention_warning_margin",
                "must be shorter than `retention`",
            );
        }
        Ok(())
    }
}
