//! RSA-2048 PKCS#1 v1.5 private-key decryptions per second, per core and on every core, for the
//! key ring's implementation (OpenSSL) and the alternative considered (RustCrypto `rsa`), printed
//! next to `openssl speed rsa2048` on the same machine. Not a test: it prints figures.
//!
//!     cargo run --release -p wx-crypto --example rsa_bench [-- SECONDS]

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use openssl::pkey::PKey;
use openssl::rsa::{Padding, Rsa};
use rsa::pkcs1::DecodeRsaPrivateKey;
use wx_crypto::KeyRing;
use wx_crypto::bench::{openssl_speed_rsa2048 as openssl_speed, rate};

fn main() {
    let seconds: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());

    let key = Rsa::generate(2048).expect("generate");
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(
        dir.path().join("1.pem"),
        key.private_key_to_pem().expect("pem"),
    )
    .expect("write");
    let ring = KeyRing::load_dir(dir.path()).expect("ring");
    let messages: Vec<String> = (0..64)
        .map(|i| {
            let plain = format!("random-key-{i:020}");
            let mut out = vec![0u8; 256];
            let n = key
                .public_encrypt(plain.as_bytes(), &mut out, Padding::PKCS1)
                .expect("encrypt");
            BASE64.encode(&out[..n])
        })
        .collect();
    let ciphertexts: Vec<Vec<u8>> = messages
        .iter()
        .map(|m| BASE64.decode(m).expect("b64"))
        .collect();
    let rustcrypto = rsa::RsaPrivateKey::from_pkcs1_der(
        &PKey::from_rsa(key.clone())
            .expect("pkey")
            .rsa()
            .expect("rsa")
            .private_key_to_der()
            .expect("der"),
    )
    .expect("rustcrypto key");

    let ring_op = |i: usize| {
        ring.decrypt_random_key(1, &messages[i % messages.len()])
            .expect("decrypt");
    };
    let rc_op = |i: usize| {
        rustcrypto
            .decrypt(rsa::Pkcs1v15Encrypt, &ciphertexts[i % ciphertexts.len()])
            .expect("decrypt");
    };

    println!(
        "RSA-2048 PKCS#1 v1.5 private-key decryptions per second ({seconds} s per figure, {cores} cores)"
    );
    println!(
        "{:<44} {:>12} {:>16}",
        "implementation",
        "1 core",
        format!("{cores} cores")
    );
    let ring_1 = rate(1, seconds, &ring_op);
    let ring_n = rate(cores, seconds, &ring_op);
    println!(
        "{:<44} {:>12.0} {:>16.0}",
        "KeyRing (OpenSSL, incl. base64)", ring_1, ring_n
    );
    let rc_1 = rate(1, seconds, &rc_op);
    let rc_n = rate(cores, seconds, &rc_op);
    println!(
        "{:<44} {:>12.0} {:>16.0}",
        "RustCrypto rsa 0.9 (raw bytes)", rc_1, rc_n
    );
    match openssl_speed(seconds.ceil() as u32) {
        Some(speed) => {
            println!(
                "{:<44} {:>12.0} {:>16}",
                "`openssl speed rsa2048` sign/s", speed, "-"
            );
            println!(
                "KeyRing reaches {:.0}% of openssl speed on one core",
                100.0 * ring_1 / speed
            );
        }
        None => {
            println!("`openssl speed rsa2048` could not be run (is the openssl command installed?)")
        }
    }
}
