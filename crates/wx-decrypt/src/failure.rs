//! Why a raw item could not become a clean message: a bounded class (the dead letter's
//! `error_class`, a metric label) and a message without content, from each error the
//! decryptor's steps return. The decryptor and the callback normaliser both speak it.

use wx_crypto::{ArchiveCipherError, KeyRingError};

use crate::normalise;

/// No private key of the record's `publickey_ver` is loaded (redrive moves it once one is).
pub const UNKNOWN_KEY_VERSION: &str = "unknown_key_version";

/// A failure's class (a bounded label) and a message without content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub class: &'static str,
    pub message: String,
}

impl Failure {
    pub(crate) fn new(class: &'static str, message: impl ToString) -> Failure {
        Failure {
            class,
            message: message.to_string(),
        }
    }
}

impl From<KeyRingError> for Failure {
    fn from(e: KeyRingError) -> Failure {
        let class = match e {
            KeyRingError::UnknownKeyVersion(_) => UNKNOWN_KEY_VERSION,
            _ => "bad_random_key",
        };
        Failure::new(class, e)
    }
}

impl From<ArchiveCipherError> for Failure {
    fn from(e: ArchiveCipherError) -> Failure {
        let class = match e {
            ArchiveCipherError::BadBase64 | ArchiveCipherError::BadLength(_) => "bad_ciphertext",
            ArchiveCipherError::BadPadding => "bad_padding",
            // 10007: no private key for that version, as the SDK reports it.
            ArchiveCipherError::Sdk(10007) => UNKNOWN_KEY_VERSION,
            ArchiveCipherError::Sdk(_) => "sdk_error",
        };
        Failure::new(class, e)
    }
}

impl From<normalise::NormaliseError> for Failure {
    fn from(e: normalise::NormaliseError) -> Failure {
        Failure::new(e.class(), e)
    }
}
