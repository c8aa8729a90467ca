//! Building blocks of the stages' `settings` blocks: secrets by reference, callback credentials,
//! durations written like `5s`, and deserialisation whose errors name the field.

use std::path::PathBuf;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

/// A secret given by reference: `{env: NAME}` or `{file: PATH}`. Never in the document itself.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum SecretRef {
    Env(String),
    File(PathBuf),
}

impl std::fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretRef::Env(name) => write!(f, "env:{name}"),
            SecretRef::File(path) => write!(f, "file:{}", path.display()),
        }
    }
}

/// A resolved secret; `Debug` prints `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl SecretRef {
    /// Reads the secret; the error says where it looked, never what it found.
    pub fn resolve(&self) -> Result<Secret, String> {
        let value = match self {
            SecretRef::Env(name) => std::env::var(name)
                .map_err(|_| format!("environment variable {name} is not set"))?,
            SecretRef::File(path) => std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read secret file {}: {e}", path.display()))?,
        };
        let value = value.trim().to_string();
        if value.is_empty() {
            return Err(format!("secret {self:?} is empty"));
        }
        Ok(Secret(value))
    }
}

/// A corp's WXBizMsgCrypt credentials (callbacks).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallbackCredentials {
    pub token: SecretRef,
    pub encoding_aes_key: SecretRef,
}

/// The defaults of the consumer-group timings every consuming stage's settings carry
/// (`session_timeout`, `drain_timeout`, `commit_interval`), for `#[serde(default = ...)]`.
pub mod consumer_defaults {
    use std::time::Duration;

    /// How long a dead member keeps its partitions.
    pub fn session_timeout() -> Duration {
        Duration::from_secs(10)
    }

    /// How long a revocation or shutdown waits for records in flight.
    pub fn drain_timeout() -> Duration {
        Duration::from_secs(10)
    }

    /// How often finished offsets are committed.
    pub fn commit_interval() -> Duration {
        Duration::from_secs(1)
    }
}

/// Parses a duration written like `5s`, `250ms`, `4d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| e.to_string())
}

/// Deserialises a duration written like `5s`, `250ms`, `4d`.
pub fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text).map_err(serde::de::Error::custom)
}

/// Deserialises a stage's `settings` block; the error names the stage and the field path.
pub fn parse_settings<T: DeserializeOwned>(
    stage: &str,
    settings: &serde_json::Map<String, serde_json::Value>,
) -> Result<T, String> {
    let value = serde_json::Value::Object(settings.clone());
    serde_path_to_error::deserialize(value)
        .map_err(|e| format!("{stage} settings: field `{}`: {}", e.path(), e.inner()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Example {
        #[serde(deserialize_with = "duration")]
        wait: Duration,
        secret: SecretRef,
    }

    #[test]
    fn errors_name_the_field_and_secrets_never_print() {
        let ok: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(r#"{"wait":"250ms","secret":{"env":"NOPE_X"}}"#).expect("json");
        let parsed: Example = parse_settings("demo", &ok).expect("parses");
        assert_eq!(parsed.wait, Duration::from_millis(250));
        assert_eq!(format!("{:?}", parsed.secret), "env:NOPE_X");
        assert_eq!(format!("{:?}", Secret("hunter2".into())), "***");

        let bad: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(r#"{"wait":"soon","secret":{"env":"X"}}"#).expect("json");
        let err = parse_settings::<Example>("demo", &bad).expect_err("bad duration");
        assert!(err.starts_with("demo settings: field `wait`"), "{err}");
    }
}
