//! Step 2 of decrypting an archived message: `encrypt_chat_msg` with the random key recovered by
//! RSA. WeCom's own algorithm (the vendor SDK's `DecryptData`) is undocumented, so there are two
//! implementations of [`ArchiveCipher`]: the vendor SDK by FFI (planned, issue 3) and the
//! simulator's documented stand-in, [`SimulatorCipher`].
//!
//! # The simulator's stand-in scheme
//! - `random_key`: the bytes RSA-decrypted from `encrypt_random_key` (the simulator uses 32
//!   ASCII alphanumerics, like the keys WeCom sends);
//! - AES key = SHA-256(random_key); IV = SHA-256("wxstream-sim-iv" ‖ random_key)[0..16];
//! - AES-256-CBC with PKCS#7 padding (16-byte block) over the message JSON;
//! - `encrypt_chat_msg` = standard base64 of the ciphertext.

use aes::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit, block_padding::Pkcs7};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use sha2::{Digest, Sha256};

/// Why `encrypt_chat_msg` could not be decrypted. Never carries the data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArchiveCipherError {
    #[error("encrypt_chat_msg is not valid base64")]
    BadBase64,
    #[error("ciphertext length {0} is not a positive multiple of the AES block")]
    BadLength(usize),
    #[error("padding is invalid (wrong random key or corrupt ciphertext)")]
    BadPadding,
    /// An error code returned by the vendor SDK's DecryptData.
    #[error("the vendor SDK's DecryptData returned {0}")]
    Sdk(i32),
}

/// Decrypts `encrypt_chat_msg` given the RSA-decrypted random key. Implementations are
/// thread-safe and used from every decrypt worker thread.
pub trait ArchiveCipher: Send + Sync {
    fn decrypt(
        &self,
        random_key: &[u8],
        encrypt_chat_msg: &str,
    ) -> Result<Vec<u8>, ArchiveCipherError>;
}

/// The simulator's stand-in scheme (module docs).
#[derive(Debug, Clone, Copy, Default)]
pub struct SimulatorCipher;

type Aes256CbcEnc = cbc::Encryptor<aes::Aes256>;
type Aes256CbcDec = cbc::Decryptor<aes::Aes256>;

fn key_and_iv(random_key: &[u8]) -> ([u8; 32], [u8; 16]) {
    let key: [u8; 32] = Sha256::digest(random_key).into();
    let mut iv_hash = Sha256::new();
    iv_hash.update(b"wxstream-sim-iv");
    iv_hash.update(random_key);
    let iv_full: [u8; 32] = iv_hash.finalize().into();
    let mut iv = [0u8; 16];
    iv.copy_from_slice(&iv_full[..16]);
    (key, iv)
}

impl SimulatorCipher {
    /// Encrypts a message as the simulator serves it.
    pub fn encrypt(&self, random_key: &[u8], message: &[u8]) -> String {
        let (key, iv) = key_and_iv(random_key);
        let cipher =
            Aes256CbcEnc::new(&key.into(), &iv.into()).encrypt_padded_vec_mut::<Pkcs7>(message);
        BASE64.encode(cipher)
    }
}

impl ArchiveCipher for SimulatorCipher {
    fn decrypt(
        &self,
        random_key: &[u8],
        encrypt_chat_msg: &str,
    ) -> Result<Vec<u8>, ArchiveCipherError> {
        let cipher = BASE64
            .decode(encrypt_chat_msg)
            .map_err(|_| ArchiveCipherError::BadBase64)?;
        if cipher.is_empty() || cipher.len() % 16 != 0 {
            return Err(ArchiveCipherError::BadLength(cipher.len()));
        }
        let (key, iv) = key_and_iv(random_key);
        Aes256CbcDec::new(&key.into(), &iv.into())
            .decrypt_padded_vec_mut::<Pkcs7>(&cipher)
            .map_err(|_| ArchiveCipherError::BadPadding)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stand_in_scheme_round_trips_and_rejects_wrong_keys() {
        let key = b"abcdefghijklmnopqrstuvwxyz012345";
        let msg = r#"{"msgid":"1","text":{"content":"你好 😀"}}"#.as_bytes();
        let encrypted = SimulatorCipher.encrypt(key, msg);
        assert_eq!(
            SimulatorCipher
                .decrypt(key, &encrypted)
                .expect("round trip"),
            msg
        );
        // A wrong key almost always breaks the padding; either way it never yields the message.
        let wrong = SimulatorCipher.decrypt(b"another key", &encrypted);
        assert_ne!(wrong.as_deref(), Ok(msg));
        assert_eq!(
            SimulatorCipher.decrypt(key, "%%%"),
            Err(ArchiveCipherError::BadBase64)
        );
        assert_eq!(
            SimulatorCipher.decrypt(key, &BASE64.encode([1u8; 17])),
            Err(ArchiveCipherError::BadLength(17))
        );
    }

    #[test]
    fn the_stand_in_scheme_is_the_documented_one() {
        // Recomputed by hand from the module docs: key = SHA-256(k), IV = SHA-256(tag ‖ k)[..16].
        let (key, iv) = key_and_iv(b"k");
        assert_eq!(key, <[u8; 32]>::from(Sha256::digest(b"k")));
        assert_eq!(iv[..], Sha256::digest(b"wxstream-sim-ivk")[..16]);
    }
}
