//! Step 1 of decrypting an archived message: RSA-2048 PKCS#1 v1.5 decryption of
//! `encrypt_random_key` with the corp's private key of version `publickey_ver`.
//!
//! Keys rotate and old messages keep their old version, so the ring maps every version to its
//! key. Keys are PEM files, PKCS#1 (`BEGIN RSA PRIVATE KEY`) or PKCS#8 (`BEGIN PRIVATE KEY`).
//! Implementation: OpenSSL, chosen by measurement (ARCHITECTURE.md, "RSA implementation").

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use openssl::pkey::{PKey, Private};
use openssl::rsa::{Padding, Rsa};

/// Why a key could not be loaded or used. Never carries key material or plaintext.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyRingError {
    #[error("no private key for publickey_ver {0}")]
    UnknownKeyVersion(u32),
    #[error("key file {path}: {reason}")]
    MalformedKey { path: PathBuf, reason: String },
    #[error("key directory {path}: {reason}")]
    KeyDirectory { path: PathBuf, reason: String },
    #[error("two key files give publickey_ver {version}: {first} and {second}")]
    DuplicateVersion {
        version: u32,
        first: PathBuf,
        second: PathBuf,
    },
    #[error("encrypt_random_key is not valid base64")]
    BadBase64,
    #[error("encrypt_random_key does not decrypt with key version {0} (wrong key or corrupt)")]
    BadCiphertext(u32),
}

struct VersionedKey {
    rsa: Rsa<Private>,
    path: PathBuf,
}

/// RSA private keys by `publickey_ver`. Cheap to share (`Arc`); `decrypt_random_key` is `&self`
/// and safe from every thread.
#[derive(Default)]
pub struct KeyRing {
    keys: BTreeMap<u32, VersionedKey>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing")
            .field("versions", &self.versions())
            .finish()
    }
}

/// `<version>.pem` or `v<version>.pem` (also `.key`): the file name gives the version.
fn version_of(path: &Path) -> Option<u32> {
    let ext = path.extension()?.to_str()?;
    if !matches!(ext, "pem" | "key") {
        return None;
    }
    let stem = path.file_stem()?.to_str()?;
    stem.strip_prefix('v').unwrap_or(stem).parse().ok()
}

impl KeyRing {
    /// An empty ring.
    pub fn new() -> KeyRing {
        KeyRing::default()
    }

    /// Loads every `<version>.pem` / `v<version>.pem` file of `dir`; other files are ignored.
    pub fn load_dir(dir: &Path) -> Result<KeyRing, KeyRingError> {
        let dir_error = |reason: String| KeyRingError::KeyDirectory {
            path: dir.to_path_buf(),
            reason,
        };
        let entries = std::fs::read_dir(dir).map_err(|e| dir_error(e.to_string()))?;
        let mut ring = KeyRing::new();
        let mut files: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        files.sort();
        for path in files {
            if let Some(version) = version_of(&path) {
                ring.add_file(version, &path)?;
            }
        }
        if ring.keys.is_empty() {
            return Err(dir_error(
                "no key files (expected <publickey_ver>.pem, e.g. 1.pem)".into(),
            ));
        }
        Ok(ring)
    }

    /// Adds the key of `version` from a PEM file (PKCS#1 or PKCS#8).
    pub fn add_file(&mut self, version: u32, path: &Path) -> Result<(), KeyRingError> {
        let malformed = |reason: &str| KeyRingError::MalformedKey {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        };
        let pem = std::fs::read(path).map_err(|e| malformed(&e.to_string()))?;
        // OpenSSL's errors may quote parts of the input; do not pass them on.
        let key = PKey::private_key_from_pem(&pem)
            .map_err(|_| malformed("not a PEM private key (PKCS#1 or PKCS#8)"))?;
        let rsa = key.rsa().map_err(|_| malformed("not an RSA key"))?;
        if rsa.check_key().map(|ok| !ok).unwrap_or(true) {
            return Err(malformed("the RSA key is inconsistent"));
        }
        if let Some(existing) = self.keys.get(&version) {
            return Err(KeyRingError::DuplicateVersion {
                version,
                first: existing.path.clone(),
                second: path.to_path_buf(),
            });
        }
        self.keys.insert(
            version,
            VersionedKey {
                rsa,
                path: path.to_path_buf(),
            },
        );
        Ok(())
    }

    /// The versions held, ascending (safe to log).
    pub fn versions(&self) -> Vec<u32> {
        self.keys.keys().copied().collect()
    }

    /// RSA-decrypts base64 `encrypt_random_key` with the key of `version` (PKCS#1 v1.5).
    pub fn decrypt_random_key(
        &self,
        version: u32,
        encrypt_random_key: &str,
    ) -> Result<Vec<u8>, KeyRingError> {
        let key = self
            .keys
            .get(&version)
            .ok_or(KeyRingError::UnknownKeyVersion(version))?;
        let cipher = BASE64
            .decode(encrypt_random_key.trim())
            .map_err(|_| KeyRingError::BadBase64)?;
        let size = usize::try_from(key.rsa.size()).unwrap_or(0);
        if cipher.len() != size {
            return Err(KeyRingError::BadCiphertext(version));
        }
        let mut out = vec![0u8; size];
        let n = key
            .rsa
            .private_decrypt(&cipher, &mut out, Padding::PKCS1)
            .map_err(|_| KeyRingError::BadCiphertext(version))?;
        out.truncate(n);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encrypt_for(rsa: &Rsa<Private>, plain: &[u8]) -> String {
        let mut out = vec![0u8; usize::try_from(rsa.size()).expect("size")];
        let n = rsa
            .public_encrypt(plain, &mut out, Padding::PKCS1)
            .expect("encrypt");
        BASE64.encode(&out[..n])
    }

    #[test]
    fn pkcs1_and_pkcs8_keys_by_version_decrypt_their_own_messages() {
        let dir = tempfile::tempdir().expect("tmp");
        let v1 = Rsa::generate(2048).expect("v1");
        let v2 = Rsa::generate(2048).expect("v2");
        // Version 1 as PKCS#1, version 2 as PKCS#8.
        std::fs::write(
            dir.path().join("1.pem"),
            v1.private_key_to_pem().expect("pem"),
        )
        .expect("write");
        let pkcs8 = PKey::from_rsa(v2.clone())
            .expect("pkey")
            .private_key_to_pem_pkcs8()
            .expect("pkcs8");
        assert!(String::from_utf8_lossy(&pkcs8).contains("BEGIN PRIVATE KEY"));
        std::fs::write(dir.path().join("v2.pem"), pkcs8).expect("write");
        std::fs::write(dir.path().join("README"), "ignored").expect("write");

        let ring = KeyRing::load_dir(dir.path()).expect("ring");
        assert_eq!(ring.versions(), vec![1, 2]);
        let secret = b"abcdefghijklmnopqrstuvwxyz012345";
        for (version, key) in [(1, &v1), (2, &v2)] {
            let encrypted = encrypt_for(key, secret);
            assert_eq!(
                ring.decrypt_random_key(version, &encrypted)
                    .expect("decrypt"),
                secret
            );
        }
        // The wrong version's key does not decrypt it.
        let for_v1 = encrypt_for(&v1, secret);
        assert_ne!(
            ring.decrypt_random_key(2, &for_v1).ok().as_deref(),
            Some(&secret[..])
        );
        assert_eq!(
            ring.decrypt_random_key(3, &for_v1),
            Err(KeyRingError::UnknownKeyVersion(3))
        );
        assert_eq!(
            ring.decrypt_random_key(1, "%%"),
            Err(KeyRingError::BadBase64)
        );
        assert_eq!(
            ring.decrypt_random_key(1, &BASE64.encode([1u8; 10])),
            Err(KeyRingError::BadCiphertext(1))
        );
        // Debug shows versions, never key material.
        let shown = format!("{ring:?}");
        assert_eq!(shown, "KeyRing { versions: [1, 2] }");
    }

    #[test]
    fn malformed_and_duplicate_key_files_are_clear_errors() {
        let dir = tempfile::tempdir().expect("tmp");
        let bad = dir.path().join("1.pem");
        std::fs::write(
            &bad,
            "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n",
        )
        .expect("write");
        let err = KeyRing::load_dir(dir.path()).expect_err("malformed");
        assert!(
            matches!(&err, KeyRingError::MalformedKey { path, .. } if path == &bad),
            "{err}"
        );
        assert!(!err.to_string().contains("AAAA"));

        let key = Rsa::generate(2048)
            .expect("key")
            .private_key_to_pem()
            .expect("pem");
        std::fs::write(&bad, &key).expect("write");
        std::fs::write(dir.path().join("v1.pem"), &key).expect("write");
        assert!(matches!(
            KeyRing::load_dir(dir.path()),
            Err(KeyRingError::DuplicateVersion { version: 1, .. })
        ));
        let empty = tempfile::tempdir().expect("tmp");
        assert!(matches!(
            KeyRing::load_dir(empty.path()),
            Err(KeyRingError::KeyDirectory { .. })
        ));
    }
}
