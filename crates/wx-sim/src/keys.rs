//! The simulator's RSA key pairs, one per publickey_ver. The public halves encrypt random keys;
//! the private halves are written out for the decrypt stage (all but the withheld version, which
//! is written separately so a test can "add the missing key" later).

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use openssl::pkey::Private;
use openssl::rsa::{Padding, Rsa};

/// RSA-2048 key pairs by version.
pub struct SimKeys {
    keys: BTreeMap<u32, Rsa<Private>>,
}

impl std::fmt::Debug for SimKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimKeys")
            .field("versions", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("generating an RSA key failed: {0}")]
    Generate(String),
    #[error("{path}: {reason}")]
    Io { path: String, reason: String },
}

impl SimKeys {
    /// Fresh RSA-2048 keys for `versions`.
    pub fn generate(versions: &[u32]) -> Result<SimKeys, KeyError> {
        let mut keys = BTreeMap::new();
        for &v in versions {
            let key = Rsa::generate(2048).map_err(|e| KeyError::Generate(e.to_string()))?;
            keys.insert(v, key);
        }
        Ok(SimKeys { keys })
    }

    /// Loads `<version>.pem` files (PKCS#1 or PKCS#8) from `dirs`.
    pub fn load_dirs(dirs: &[&Path]) -> Result<SimKeys, KeyError> {
        let mut keys = BTreeMap::new();
        for dir in dirs {
            let io = |e: std::io::Error| KeyError::Io {
                path: dir.display().to_string(),
                reason: e.to_string(),
            };
            for entry in std::fs::read_dir(dir).map_err(io)? {
                let path = entry.map_err(io)?.path();
                let Some(version) = path
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .and_then(|s| s.trim_start_matches('v').parse::<u32>().ok())
                else {
                    continue;
                };
                let pem = std::fs::read(&path).map_err(io)?;
                let key = openssl::pkey::PKey::private_key_from_pem(&pem)
                    .and_then(|k| k.rsa())
                    .map_err(|_| KeyError::Io {
                        path: path.display().to_string(),
                        reason: "not an RSA private key".into(),
                    })?;
                keys.insert(version, key);
            }
        }
        Ok(SimKeys { keys })
    }

    pub fn versions(&self) -> Vec<u32> {
        self.keys.keys().copied().collect()
    }

    /// Writes the private keys of the versions `keep` accepts as `<version>.pem` (PKCS#1 for
    /// odd versions, PKCS#8 for even ones, so both formats are always exercised).
    pub fn write_private(&self, dir: &Path, keep: impl Fn(u32) -> bool) -> Result<(), KeyError> {
        let io = |e: String| KeyError::Io {
            path: dir.display().to_string(),
            reason: e,
        };
        std::fs::create_dir_all(dir).map_err(|e| io(e.to_string()))?;
        for (&version, key) in &self.keys {
            if !keep(version) {
                continue;
            }
            let pem = if version % 2 == 1 {
                key.private_key_to_pem()
            } else {
                openssl::pkey::PKey::from_rsa(key.clone())
                    .and_then(|k| k.private_key_to_pem_pkcs8())
            }
            .map_err(|e| io(e.to_string()))?;
            std::fs::write(dir.join(format!("{version}.pem")), pem)
                .map_err(|e| io(e.to_string()))?;
        }
        Ok(())
    }

    /// RSA PKCS#1 v1.5 encryption of a random key with the public key of `version`, base64.
    pub fn encrypt_random_key(&self, version: u32, random_key: &[u8]) -> Option<String> {
        let key = self.keys.get(&version)?;
        let mut out = vec![0u8; usize::try_from(key.size()).ok()?];
        let n = key
            .public_encrypt(random_key, &mut out, Padding::PKCS1)
            .ok()?;
        Some(BASE64.encode(&out[..n]))
    }
}
