//! The decrypt connector's settings: the `settings` block of `topology/connectors/decrypt.yaml`.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use wx_crypto::{ArchiveCipher, CallbackCrypt, SimulatorCipher};
use wx_topology::settings::{CallbackCredentials, SecretRef, duration, parse_settings};

use crate::keys::KeySource;

/// Which implementation of the archive cipher (step 2 of an archived message).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CipherKind {
    /// The vendor SDK's DecryptData, loaded by path (`sdk_library`).
    Sdk,
    /// The simulator's documented stand-in scheme.
    Simulator,
}

fn default_cipher() -> CipherKind {
    CipherKind::Simulator
}
fn default_group() -> String {
    "wxstream-decrypt".to_string()
}
fn default_reload() -> Duration {
    Duration::from_secs(2)
}
fn default_batches_in_flight() -> usize {
    8
}
fn default_delivery_timeout() -> Duration {
    Duration::from_secs(30)
}

/// The decrypt connector's settings. Durations are written like `2s`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecryptSettings {
    /// Directory of `<publickey_ver>.pem` private keys (PKCS#1 or PKCS#8) for every corp.
    pub key_dir: PathBuf,
    /// Directories of one corp's keys, used instead of `key_dir` for that corp.
    #[serde(default)]
    pub corp_key_dirs: BTreeMap<String, PathBuf>,
    /// How often the key files are checked for changes (SIGHUP reloads at once).
    #[serde(default = "default_reload", deserialize_with = "duration")]
    pub key_reload_interval: Duration,
    /// `simulator` (the stand-in scheme) or `sdk` (the vendor's DecryptData).
    #[serde(default = "default_cipher")]
    pub cipher: CipherKind,
    /// Path of libWeWorkFinanceSdk_C.so (cipher: sdk).
    #[serde(default)]
    pub sdk_library: Option<PathBuf>,
    /// A corp id and chat archive secret the SDK is initialised with (cipher: sdk; DecryptData
    /// itself needs neither, but the SDK is loaded through an initialised handle).
    #[serde(default)]
    pub sdk_corp_id: Option<String>,
    #[serde(default)]
    pub sdk_secret: Option<SecretRef>,
    /// Callback credentials by corp id, to decrypt callback envelopes.
    #[serde(default)]
    pub callbacks: BTreeMap<String, CallbackCredentials>,
    /// The consumer group on the raw topic.
    #[serde(default = "default_group")]
    pub group_id: String,
    /// How long a dead member keeps its partitions.
    #[serde(
        default = "wx_topology::settings::consumer_defaults::session_timeout",
        deserialize_with = "duration"
    )]
    pub session_timeout: Duration,
    /// How long a revocation or shutdown waits for records in flight before committing.
    #[serde(
        default = "wx_topology::settings::consumer_defaults::drain_timeout",
        deserialize_with = "duration"
    )]
    pub drain_timeout: Duration,
    /// How often finished offsets are committed.
    #[serde(
        default = "wx_topology::settings::consumer_defaults::commit_interval",
        deserialize_with = "duration"
    )]
    pub commit_interval: Duration,
    /// Raw records decrypting or awaiting acknowledgement at once (bounds memory).
    #[serde(default = "default_batches_in_flight")]
    pub batches_in_flight: usize,
    /// How long the producer retries one record before the send is retried from scratch.
    #[serde(default = "default_delivery_timeout", deserialize_with = "duration")]
    pub delivery_timeout: Duration,
}

impl DecryptSettings {
    /// Parses and validates the connector's `settings` block; errors name the field.
    pub fn from_settings(
        settings: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<DecryptSettings, String> {
        let parsed: DecryptSettings = parse_settings("decrypt", settings)?;
        let fail =
            |field: &str, reason: &str| Err(format!("decrypt settings: field `{field}`: {reason}"));
        if parsed.cipher == CipherKind::Sdk
            && (parsed.sdk_library.is_none()
                || parsed.sdk_corp_id.is_none()
                || parsed.sdk_secret.is_none())
        {
            return fail(
                "sdk_library",
                "`cipher: sdk` needs sdk_library, sdk_corp_id and sdk_secret",
            );
        }
        if parsed.batches_in_flight == 0 {
            return fail("batches_in_flight", "must be at least 1");
        }
        Ok(parsed)
    }

    /// The processor's knobs.
    pub fn processor_options(&self) -> crate::ProcessorOptions {
        crate::ProcessorOptions {
            group_id: self.group_id.clone(),
            session_timeout: self.session_timeout,
            drain_timeout: self.drain_timeout,
            commit_interval: self.commit_interval,
            batches_in_flight: self.batches_in_flight,
            delivery_timeout: self.delivery_timeout,
        }
    }

    /// Where the keys are.
    pub fn key_source(&self) -> KeySource {
        KeySource {
            shared_dir: self.key_dir.clone(),
            corp_dirs: self.corp_key_dirs.clone(),
        }
    }

    /// The configured archive cipher (loads the SDK for `cipher: sdk`).
    pub fn archive_cipher(&self) -> Result<Arc<dyn ArchiveCipher>, String> {
        match self.cipher {
            CipherKind::Simulator => Ok(Arc::new(SimulatorCipher)),
            CipherKind::Sdk => {
                let (Some(path), Some(corp), Some(secret)) =
                    (&self.sdk_library, &self.sdk_corp_id, &self.sdk_secret)
                else {
                    return Err("decrypt settings: `cipher: sdk` is incomplete".into());
                };
                let secret = secret.resolve()?;
                let sdk = wx_finance_sdk::FinanceSdk::load(path, corp, secret.expose())
                    .map_err(|e| format!("loading the vendor SDK {}: {e}", path.display()))?;
                Ok(Arc::new(OwnedSdkCipher(sdk)))
            }
        }
    }

    /// Resolves every corp's callback credentials.
    pub fn callback_crypts(&self) -> Result<HashMap<String, CallbackCrypt>, String> {
        let mut out = HashMap::new();
        for (corp, credentials) in &self.callbacks {
            let token = credentials
                .token
                .resolve()
                .map_err(|e| format!("decrypt settings: callbacks.{corp}.token: {e}"))?;
            let key = credentials
                .encoding_aes_key
                .resolve()
                .map_err(|e| format!("decrypt settings: callbacks.{corp}.encoding_aes_key: {e}"))?;
            let crypt = CallbackCrypt::new(token.expose(), key.expose(), corp)
                .map_err(|e| format!("decrypt settings: callbacks.{corp}: {e}"))?;
            out.insert(corp.clone(), crypt);
        }
        Ok(out)
    }
}

/// The vendor SDK as an archive cipher the processor can own.
struct OwnedSdkCipher(wx_finance_sdk::FinanceSdk);

impl ArchiveCipher for OwnedSdkCipher {
    fn decrypt(
        &self,
        random_key: &[u8],
        encrypt_chat_msg: &str,
    ) -> Result<Vec<u8>, wx_crypto::ArchiveCipherError> {
        wx_finance_sdk::SdkCipher(&self.0).decrypt(random_key, encrypt_chat_msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(yaml: &str) -> Result<DecryptSettings, String> {
        let map: serde_json::Map<String, serde_json::Value> =
            serde_yaml_ng::from_str(yaml).expect("yaml");
        DecryptSettings::from_settings(&map)
    }

    #[test]
    fn defaults_and_errors_that_name_the_field() {
        let ok = settings("key_dir: ./var/keys").expect("minimal settings");
        assert_eq!(ok.cipher, CipherKind::Simulator);
        assert_eq!(ok.group_id, "wxstream-decrypt");
        for (yaml, field) in [
            ("key_dir: k\ncipher: sdk", "sdk_library"),
            ("key_dir: k\nbatches_in_flight: 0", "batches_in_flight"),
            (
                "key_dir: k\nkey_reload_interval: often",
                "key_reload_interval",
            ),
            ("key_dir: k\nunknown: 1", "unknown"),
            ("cipher: simulator", "key_dir"),
        ] {
            let err = settings(yaml).expect_err(yaml);
            assert!(err.contains(field), "{yaml}: {err}");
        }
    }
}
