//! The stats connector's settings: the `settings` block of `topology/connectors/stats.yaml`.

use std::time::Duration;

use serde::Deserialize;
use wx_codec::StatsFormat;
use wx_runtime::settings::{SettingsError, duration, parse_duration};

use crate::window::{DirectGrouping, WindowSpec};

fn default_windows() -> Vec<String> {
    vec!["1m".into(), "1h".into()]
}
fn default_grace() -> Duration {
    Duration::from_secs(10)
}
fn default_lateness() -> Duration {
    Duration::from_secs(600)
}
fn default_direct() -> String {
    "conversation".into()
}
fn default_earliest() -> String {
    "2010-01-01T00:00:00Z".into()
}
fn default_max_future() -> Duration {
    Duration::from_secs(86_400)
}
fn default_remembered() -> usize {
    100_000
}

/// The stats connector's settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatsSettings {
    /// Window sizes, e.g. `[1m, 1h]`.
    #[serde(default = "default_windows")]
    pub windows: Vec<String>,
    /// How long after a window's end events are still waited for.
    #[serde(default = "default_grace", deserialize_with = "duration")]
    pub grace: Duration,
    /// How long after closing a window still takes corrections.
    #[serde(default = "default_lateness", deserialize_with = "duration")]
    pub lateness: Duration,
    /// `conversation` or `sender`: how 1:1 chats are grouped.
    #[serde(default = "default_direct")]
    pub direct_grouping: String,
    /// `avro` (the Confluent wire format), `json` (the fields as JSON) or `connect_json` (Kafka
    /// Connect's JSON with the schema embedded, for Connect sinks without a registry; docs/bi.md).
    #[serde(default)]
    pub format: StatsFormat,
    /// Messages dated before this (RFC 3339) are parked as `invalid_time`, never counted.
    #[serde(default = "default_earliest")]
    pub earliest_msgtime: String,
    /// Messages dated more than this after the wall clock are parked as `invalid_time`: one
    /// far-future msgtime would otherwise pin the watermark (and a checkpoint would keep it).
    #[serde(default = "default_max_future", deserialize_with = "duration")]
    pub max_future: Duration,
    /// How many msgids of windows past their lateness each partition remembers, so a redelivery
    /// of one is a duplicate rather than a late event (about 40 bytes each).
    #[serde(default = "default_remembered")]
    pub remembered_msgids: usize,
}

impl StatsSettings {
    /// The earliest msgtime counted, in ms.
    pub fn earliest_ms(&self) -> Result<i64, SettingsError> {
        let at = humantime::parse_rfc3339_weak(&self.earliest_msgtime).map_err(|e| {
            SettingsError::new(crate::STAGE, "earliest_msgtime", format!("{e} (RFC 3339)"))
        })?;
        Ok(at
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)))
    }

    /// The window spec the settings describe.
    pub fn spec(&self) -> Result<WindowSpec, SettingsError> {
        let invalid = |field: &str, reason: String| SettingsError::new(crate::STAGE, field, reason);
        let mut sizes_ms = Vec::new();
        for w in &self.windows {
            let d = parse_duration(w).map_err(|e| invalid("windows", format!("{w}: {e}")))?;
            let ms = i64::try_from(d.as_millis()).unwrap_or(0);
            if ms <= 0 {
                return Err(invalid("windows", "sizes must be positive".into()));
            }
            sizes_ms.push(ms);
        }
        let direct = match self.direct_grouping.as_str() {
            "conversation" => DirectGrouping::Conversation,
            "sender" => DirectGrouping::Sender,
            _ => {
                return Err(invalid(
                    "direct_grouping",
                    "`conversation` or `sender`".into(),
                ));
            }
        };
        Ok(WindowSpec {
            sizes_ms,
            grace_ms: i64::try_from(self.grace.as_millis()).unwrap_or(0),
            lateness_ms: i64::try_from(self.lateness.as_millis()).unwrap_or(0),
            direct,
            remembered: self.remembered_msgids,
        })
    }
}
