//! The decrypt connector's settings: the `settings` block of `topology/connectors/decrypt.yaml`.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use wx_crypto::{ArchiveCipher, CallbackCrypt, SimulatorCipher};
use wx_runtime::settings::{CallbackCredentials, SecretRef, SettingsError, duration};

use crate::BuildError;
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
fn default_reload() -> Duration {
    Duration::from_secs(2)
}
fn default_batches_in_flight() -> usize {
    4
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
    /// Raw records decrypting or awaiting acknowledgement at once (bounds memory).
    #[serde(default = "default_batches_in_flight")]
    pub batches_in_flight: usize,
    /// How long the producer retries one record before the send is retried from scratch.
    #[serde(default = "default_delivery_timeout", deserialize_with = "duration")]
    pub delivery_timeout: Duration,
}

impl DecryptSettings {
    /// What the types alone do not check (`StageSettings::validate`).
    pub(crate) fn check(&self) -> Result<(), SettingsError> {
        let fail = |field: &str, reason: &str| Err(SettingsError::new(crate::STAGE, field, reason));
        if self.cipher == CipherKind::Sdk
            && (self.sdk_library.is_none()
                || self.sdk_corp_id.is_none()
                || self.sdk_secret.is_none())
        {
            return fail(
                "sdk_library",
                "`cipher: sdk` needs sdk_library, sdk_corp_id and sdk_secret",
            );
        }
        if self.batches_in_flight == 0 {
            return fail("batches_in_flight", "must be at least 1");
        }
        Ok(())
    }

    /// Where the keys are.
    pub fn key_source(&self) -> KeySource {
        KeySource {
            shared_dir: self.key_dir.clone(),
            corp_dirs: self.corp_key_dirs.clone(),
        }
    }

    /// The configured archive cipher (loads the SDK for `cipher: sdk`).
    pub fn archive_cipher(&self) -> Result<Arc<dyn ArchiveCipher>, BuildError> {
        match self.cipher {
            CipherKind::Simulator => Ok(Arc::new(SimulatorCipher)),
            CipherKind::Sdk => {
                let (Some(path), Some(corp), Some(secret)) =
                    (&self.sdk_library, &self.sdk_corp_id, &self.sdk_secret)
                else {
                    return Err(SettingsError::new(
                        crate::STAGE,
                        "sdk_library",
                        "`cipher: sdk` is incomplete",
                    )
                    .into());
                };
                let secret = secret.resolve().map_err(|source| BuildError::Secret {
                    field: "sdk_secret".into(),
                    source,
                })?;
                let sdk = wx_finance_sdk::FinanceSdk::load(path, corp, secret.expose())?;
                Ok(Arc::new(OwnedSdkCipher(sdk)))
            }
        }
    }

    /// Resolves every corp's callback credentials.
    pub fn callback_crypts(&self) -> Result<HashMap<String, CallbackCrypt>, BuildError> {
        let mut out = HashMap::new();
        for (corp, credentials) in &self.callbacks {
            let secret = |field: &str, secret: &SecretRef| {
                secret.resolve().map_err(|source| BuildError::Secret {
                    field: format!("callbacks.{corp}.{field}"),
                    source,
                })
            };
            let token = secret("token", &credentials.token)?;
            let key = secret("encoding_aes_key", &credentials.encoding_aes_key)?;
            let crypt =
                CallbackCrypt::new(token.expose(), key.expose(), corp).map_err(|source| {
                    BuildError::Callback {
                        corp: corp.clone(),
                        source,
                    }
                })?;
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

    fn settings(yaml: &str) -> Result<DecryptSettings, SettingsError> {
        let map: serde_json::Map<String, serde_json::Value> =
            serde_yaml_ng::from_str(yaml).expect("yaml");
        <DecryptSettings as wx_runtime::StageSettings>::parse(&map)
    }

    #[test]
    fn defaults_and_errors_that_name_the_field() {
        let ok = settings("key_dir: ./var/keys").expect("minimal settings");
        assert_eq!(ok.cipher, CipherKind::Simulator);
        let map = serde_yaml_ng::from_str("key_dir: k").expect("yaml");
        let (_, consumer) =
            <DecryptSettings as wx_runtime::StageSettings>::parse_with_consumer(&map)
                .expect("minimal settings");
        assert_eq!(consumer.group("", crate::STAGE), "wxstream-decrypt");
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
            assert!(err.to_string().contains(field), "{yaml}: {err}");
        }
    }
}
