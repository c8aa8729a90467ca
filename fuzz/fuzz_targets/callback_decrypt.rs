//! WXBizMsgCrypt decryption of any `Encrypt` field (base64, AES-CBC, PKCS#7, the length and the
//! receiveid inside): an error, never a panic or an allocation the input's length does not bound.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn crypt() -> &'static wx_crypto::CallbackCrypt {
    static CRYPT: OnceLock<wx_crypto::CallbackCrypt> = OnceLock::new();
    CRYPT.get_or_init(|| {
        // Tencent's documented example key.
        wx_crypto::CallbackCrypt::new(
            "QDG6eK",
            "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C",
            "wx5823bf96d3bd56c7",
        )
        .expect("the example key")
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crypt().decrypt(text);
    }
    // Valid base64 of arbitrary bytes reaches the cipher and the framing checks.
    let _ = crypt().decrypt(&base64_of(data));
});

fn base64_of(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
