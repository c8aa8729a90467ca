//! The FFI path end to end: load the stand-in libWeWorkFinanceSdk_C.so by path, pull from the
//! simulator, decrypt with the key ring and DecryptData, download a multi-chunk media file and
//! verify its MD5 (through the simulator's MD5 fault, healed by a retry).

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;
use wx_crypto::{ArchiveCipher, KeyRing};
use wx_finance_sdk::{FinanceSdk, SdkCipher, SdkError};
use wx_sim::{CorpFeed, FaultRates, FeedSpec, ServerConfig, SimKeys, Simulator};

/// target/<profile>/libWeWorkFinanceSdk_C.so, next to this test's deps/ directory.
fn standin_library() -> PathBuf {
    let exe = std::env::current_exe().expect("test path");
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>");
    let lib = dir.join("libWeWorkFinanceSdk_C.so");
    assert!(
        lib.exists(),
        "{} is missing: build it with `cargo build -p wx-sdk-standin` (scripts/test builds the whole workspace)",
        lib.display()
    );
    lib
}

struct Fixture {
    url: String,
    feed: CorpFeed,
    keys_dir: tempfile::TempDir,
}

/// One simulator for the whole test binary, on its own thread and runtime (SDK calls block).
fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let keys = SimKeys::generate(&[1, 2]).expect("keys");
        let keys_dir = tempfile::tempdir().expect("tmp");
        keys.write_private(keys_dir.path(), |_| true)
            .expect("write keys");
        let now = i64::try_from(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .expect("clock")
                .as_millis(),
        )
        .expect("ms");
        let spec = FeedSpec {
            corp_id: "wwffi".into(),
            seed: 7,
            messages: 3_000,
            start_ms: now - 3_600_000,
            spacing_ms: 100,
            key_versions: vec![1, 2],
            withheld_key_version: 99,
            faults: FaultRates::default(),
            media: Default::default(),
        };
        let feed = CorpFeed::build(&spec, &keys).expect("feed");
        let sim = Simulator::new(
            ServerConfig {
                media_md5_fault_rate: 1.0,
                ..ServerConfig::default()
            },
            vec![(feed.clone(), "ffi-secret".into())],
        );
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind");
                tx.send(format!("http://{}", listener.local_addr().expect("addr")))
                    .expect("send");
                sim.serve(listener, std::future::pending())
                    .await
                    .expect("serve");
            });
        });
        Fixture {
            url: rx.recv().expect("url"),
            feed,
            keys_dir,
        }
    })
}

#[test]
fn pull_and_decrypt_through_the_loaded_library() {
    let f = fixture();
    let sdk = FinanceSdk::load(&standin_library(), "wwffi", "ffi-secret").expect("load");
    let reply: Value =
        serde_json::from_slice(&sdk.get_chat_data(0, 100, &f.url, "", 5).expect("pull"))
            .expect("json");
    assert_eq!(reply["errcode"], 0, "{reply}");
    let items = reply["chatdata"].as_array().expect("chatdata");
    assert_eq!(items.len(), 100);
    assert_eq!(items[0]["seq"], 1);

    // RSA by the key ring, then the SDK's DecryptData.
    let ring = KeyRing::load_dir(f.keys_dir.path()).expect("ring");
    let cipher = SdkCipher(&sdk);
    for (item, truth) in items.iter().zip(&f.feed.truth) {
        let version = u32::try_from(item["publickey_ver"].as_u64().expect("ver")).expect("u32");
        let key = ring
            .decrypt_random_key(version, item["encrypt_random_key"].as_str().expect("key"))
            .expect("rsa");
        let plain = cipher
            .decrypt(&key, item["encrypt_chat_msg"].as_str().expect("msg"))
            .expect("DecryptData");
        let message: Value = serde_json::from_slice(&plain).expect("message json");
        assert_eq!(message["msgid"], truth.msgid.as_str());
    }
    // A wrong key is the SDK's decrypt error, not a crash.
    let err = cipher.decrypt(
        b"not the key",
        items[0]["encrypt_chat_msg"].as_str().expect("msg"),
    );
    assert_eq!(err, Err(wx_crypto::ArchiveCipherError::Sdk(10006)));

    // Service errors come back in the JSON (code 0), parameter errors as the SDK's code.
    let bad = FinanceSdk::load(&standin_library(), "wwffi", "wrong").expect("load");
    let reply: Value =
        serde_json::from_slice(&bad.get_chat_data(0, 10, &f.url, "", 5).expect("reply"))
            .expect("json");
    assert_eq!(reply["errcode"], 40001);
    assert_eq!(
        sdk.get_chat_data(0, 1001, &f.url, "", 5),
        Err(SdkError::Code { code: 10000 })
    );
    // Nothing listening: a retryable network error.
    let err = sdk
        .get_chat_data(0, 10, "http://127.0.0.1:1", "", 1)
        .expect_err("no server");
    assert!(err.is_retryable(), "{err}");
}

#[test]
fn a_multi_chunk_media_file_downloads_with_its_md5_verified() {
    let f = fixture();
    let sdk = FinanceSdk::load(&standin_library(), "wwffi", "ffi-secret").expect("load");
    let big = f
        .feed
        .media
        .iter()
        .find(|m| m.size > 512 * 1024)
        .expect("a multi-chunk file");
    // The simulator corrupts the first full download (MD5 fault): one attempt is not enough...
    // (Matched rather than expect_err, which would print 1.5 MB of bytes on failure.)
    let Err(err) = sdk.download_media(&big.sdkfileid, &big.md5, &f.url, "", 5, 1) else {
        panic!("the first download must be corrupted");
    };
    assert!(
        matches!(err, SdkError::Md5Mismatch { attempts: 1, .. }),
        "{err}"
    );
    // ...and a retry gets the right bytes, NUL bytes included.
    let data = sdk
        .download_media(&big.sdkfileid, &big.md5, &f.url, "", 5, 3)
        .expect("download");
    assert_eq!(data.len(), big.size);
    assert_eq!(data, wx_sim::media_bytes(&big.sdkfileid, big.size));
    assert!(
        data.contains(&0),
        "binary content survives the FFI boundary"
    );
    let first = sdk
        .get_media_chunk(&big.sdkfileid, "", &f.url, "", 5)
        .expect("chunk");
    assert_eq!(first.data.len(), 512 * 1024, "512 KB chunks");
    assert!(!first.is_finish);
    assert_eq!(
        sdk.get_media_chunk("no-such-file", "", &f.url, "", 5),
        Err(SdkError::Code { code: 10005 })
    );
}

#[test]
fn loading_a_missing_or_wrong_library_is_a_clear_error() {
    let err = FinanceSdk::load(
        std::path::Path::new("/nonexistent/libWeWorkFinanceSdk_C.so"),
        "ww",
        "s",
    )
    .expect_err("missing");
    assert!(matches!(err, SdkError::Load { .. }), "{err}");
    // libc exists but is not the SDK.
    let err =
        FinanceSdk::load(std::path::Path::new("libc.so.6"), "ww", "s").expect_err("wrong library");
    assert!(
        matches!(
            err,
            SdkError::MissingSymbol {
                symbol: "NewSdk",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn concurrent_calls_on_one_handle_are_serialised_and_do_not_crash() {
    let f = fixture();
    let sdk = FinanceSdk::load(&standin_library(), "wwffi", "ffi-secret").expect("load");
    let ring = KeyRing::load_dir(f.keys_dir.path()).expect("ring");
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let (sdk, ring) = (&sdk, &ring);
            s.spawn(move || {
                for round in 0..5u64 {
                    let seq = t * 500 + round * 20;
                    let reply: Value = serde_json::from_slice(
                        &sdk.get_chat_data(seq, 20, &f.url, "", 5).expect("pull"),
                    )
                    .expect("json");
                    for item in reply["chatdata"].as_array().expect("items") {
                        let version =
                            u32::try_from(item["publickey_ver"].as_u64().expect("v")).expect("u32");
                        let key = ring
                            .decrypt_random_key(
                                version,
                                item["encrypt_random_key"].as_str().expect("k"),
                            )
                            .expect("rsa");
                        sdk.decrypt_data(&key, item["encrypt_chat_msg"].as_str().expect("m"))
                            .expect("decrypt");
                    }
                }
            });
        }
    });
}
