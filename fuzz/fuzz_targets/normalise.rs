//! The normaliser on any decrypted plaintext (every msgtype, raw control characters).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|plaintext: &[u8]| {
    let _ = wx_decrypt::normalise::normalise(plaintext, None);
    let _ = wx_decrypt::normalise::normalise(plaintext, Some("msgid"));
});
