//! WeCom cryptography, pure and synchronous.
//!
//! # Layout
//! - `callback`: WXBizMsgCrypt, the signed and encrypted callbacks of WeCom apps (including
//!   `msgaudit_notify`) and WeChat Official Accounts: signature, verify-URL, decrypt, encrypt,
//!   XML and JSON envelopes.
//! - `archive`: the archive message cipher (step 2 of decrypting an archived message) behind the
//!   [`ArchiveCipher`] trait, with the simulator's documented stand-in scheme.
//! - `keyring`: the RSA key ring by `publickey_ver` (step 1 of decrypting an archived message).
//!
//! The vendor SDK's `DecryptData`, the second `ArchiveCipher`, lives in `wx-finance-sdk`; the
//! key ring's hot reload lives in `wx-decrypt` (this crate reads files only when asked).
//!
//! - `bench`: helpers of the benchmarks (a threaded rate, `openssl speed rsa2048`); the only
//!   code here that starts a process, and nothing in the pipeline calls it.
//!
//! # Invariants
//! No I/O beyond what a caller hands in (and `bench`), no async, no logging: keys and plaintext never reach a
//! log line from here. Errors describe what failed, never the data.

mod archive;
pub mod bench;
mod callback;
mod keyring;

pub use archive::{ArchiveCipher, ArchiveCipherError, SimulatorCipher};
pub use callback::{CallbackCrypt, CallbackError, Envelope, signature, xml_fields};
pub use keyring::{KeyRing, KeyRingError};
