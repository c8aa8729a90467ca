//! The simulator against the domain page: generator coverage, the GetChatData cursor contract
//! (a property test), decryption of what it serves, and its HTTP behaviours.

use std::collections::{BTreeSet, HashSet};
use std::sync::OnceLock;

use proptest::prelude::*;
use serde_json::Value;
use wx_crypto::{ArchiveCipher, KeyRing, SimulatorCipher};
use wx_sim::generate::MSGTYPES;
use wx_sim::{
    CorpFeed, FaultRates, FeedSpec, ItemFault, ServerConfig, SimKeys, Simulator, errcode, generate,
};

use wx_codec::now_ms;

fn keys() -> &'static SimKeys {
    static KEYS: OnceLock<SimKeys> = OnceLock::new();
    KEYS.get_or_init(|| SimKeys::generate(&[1, 2, 99]).expect("keys"))
}

fn spec(corp: &str, messages: u64, faults: FaultRates) -> FeedSpec {
    FeedSpec {
        corp_id: corp.into(),
        seed: 42,
        messages,
        start_ms: now_ms() - 3_600_000,
        spacing_ms: 100,
        key_versions: vec![1, 2],
        withheld_key_version: 99,
        faults,
        media: Default::default(),
    }
}

fn all_faults() -> FaultRates {
    FaultRates {
        corrupt_ciphertext: 0.01,
        unknown_key_version: 0.01,
        invalid_json: 0.01,
        control_chars: 0.02,
    }
}

#[test]
fn the_generator_is_deterministic_and_covers_the_domain() {
    let s = spec("ww1", 20_000, all_faults());
    let (a, media) = generate(&s);
    let (b, _) = generate(&s);
    assert_eq!(
        a.iter().map(|i| &i.plaintext).collect::<Vec<_>>(),
        b.iter().map(|i| &i.plaintext).collect::<Vec<_>>(),
        "same seed, same feed"
    );
    let msgids: HashSet<&str> = a.iter().map(|i| i.truth.msgid.as_str()).collect();
    assert_eq!(msgids.len(), a.len(), "msgids are unique");

    let types: BTreeSet<&str> = a.iter().map(|i| i.truth.msgtype.as_str()).collect();
    for (t, _) in MSGTYPES {
        assert!(types.contains(t), "msgtype {t} never generated");
    }
    assert!(types.contains("switch"), "no switch record");
    // Recalls name messages before and after them.
    let position: std::collections::HashMap<&str, usize> = a
        .iter()
        .enumerate()
        .map(|(i, m)| (m.truth.msgid.as_str(), i))
        .collect();
    let (mut before, mut after) = (0, 0);
    for (i, item) in a.iter().enumerate() {
        if item.truth.action == "recall" {
            let v: Value = serde_json::from_slice(&item.plaintext).unwrap_or(Value::Null);
            if let Some(j) = v["revoke"]["pre_msgid"]
                .as_str()
                .and_then(|id| position.get(id))
            {
                if *j < i { after += 1 } else { before += 1 }
            }
        }
    }
    assert!(
        before > 10 && after > 10,
        "recalls before {before}, after {after}"
    );
    assert!(a.iter().any(|i| i.truth.msgid.ends_with("_external")));
    assert!(a.iter().any(|i| i.truth.group.starts_with("wr")));
    assert!(a.iter().any(|i| i.truth.group.starts_with("single:")));
    // Both key versions are used, in order (a rotation in the middle).
    assert_eq!(a[0].truth.key_version, 1);
    assert_eq!(a.last().expect("items").truth.key_version, 2);
    // Every fault kind is injected and recorded; control characters are not poison.
    for fault in [
        ItemFault::CorruptCiphertext,
        ItemFault::UnknownKeyVersion,
        ItemFault::InvalidJson,
        ItemFault::ControlChars,
    ] {
        let n = a.iter().filter(|i| i.truth.fault == Some(fault)).count();
        assert!(n > 20, "{fault:?}: {n}");
        assert!(
            a.iter()
                .filter(|i| i.truth.fault == Some(fault))
                .all(|i| i.truth.poison == fault.is_poison())
        );
    }
    let raw_control = a
        .iter()
        .find(|i| i.truth.fault == Some(ItemFault::ControlChars))
        .expect("control chars");
    assert!(
        raw_control.plaintext.contains(&1u8),
        "a raw control character is in the JSON"
    );
    assert!(
        media.iter().any(|m| m.size > 512 * 1024),
        "multi-chunk media"
    );
}

#[test]
fn served_items_decrypt_with_the_exported_keys_unless_poisoned() {
    let feed = CorpFeed::build(&spec("ww1", 2_000, all_faults()), keys()).expect("feed");
    let dir = tempfile::tempdir().expect("tmp");
    keys()
        .write_private(dir.path(), |v| v != 99)
        .expect("write keys");
    let ring = KeyRing::load_dir(dir.path()).expect("ring");
    assert_eq!(
        ring.versions(),
        vec![1, 2],
        "the withheld version is not exported"
    );
    let mut ok = 0;
    for (item, truth) in feed.items.iter().zip(&feed.truth) {
        let result = ring
            .decrypt_random_key(item.publickey_ver, &item.encrypt_random_key)
            .map_err(|e| e.to_string())
            .and_then(|key| {
                SimulatorCipher
                    .decrypt(&key, &item.encrypt_chat_msg)
                    .map_err(|e| e.to_string())
            })
            .and_then(|plain| {
                // Tolerant parse: raw control characters are escaped first.
                let text: String = String::from_utf8_lossy(&plain)
                    .chars()
                    .map(|c| if c.is_control() && c != '\n' { ' ' } else { c })
                    .collect();
                serde_json::from_str::<Value>(&text).map_err(|e| e.to_string())
            });
        match (truth.poison, result) {
            (false, Ok(v)) => {
                assert_eq!(v["msgid"], truth.msgid.as_str());
                ok += 1;
            }
            (true, Err(_)) => {}
            (poison, r) => panic!(
                "seq {} poison={poison} fault={:?} got {r:?}",
                truth.seq, truth.fault
            ),
        }
    }
    assert!(ok > 1_800, "{ok}");
    // Adding the withheld key makes its items decrypt.
    keys()
        .write_private(dir.path(), |v| v == 99)
        .expect("write withheld");
    let ring = KeyRing::load_dir(dir.path()).expect("ring");
    let withheld = feed
        .items
        .iter()
        .zip(&feed.truth)
        .find(|(_, t)| t.fault == Some(ItemFault::UnknownKeyVersion))
        .expect("one withheld item");
    let key = ring
        .decrypt_random_key(withheld.0.publickey_ver, &withheld.0.encrypt_random_key)
        .expect("now decrypts");
    assert!(
        SimulatorCipher
            .decrypt(&key, &withheld.0.encrypt_chat_msg)
            .is_ok()
    );
}

fn cursor_sim() -> &'static Simulator {
    static SIM: OnceLock<Simulator> = OnceLock::new();
    SIM.get_or_init(|| {
        let feed =
            CorpFeed::build(&spec("wwprop", 3_000, FaultRates::default()), keys()).expect("feed");
        let config = ServerConfig {
            calls_per_minute: 1_000_000,
            ..ServerConfig::default()
        };
        Simulator::new(config, vec![(feed, "s3cret".into())])
    })
}

fn page_seqs(reply: &Value) -> Vec<u64> {
    assert_eq!(reply["errcode"], 0, "{reply}");
    reply["chatdata"]
        .as_array()
        .expect("chatdata")
        .iter()
        .map(|i| i["seq"].as_u64().expect("seq"))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Any sequence of pulls that honours the exclusive cursor, with any limits up to 1000,
    /// returns every seq exactly once and in order; a re-pull from an earlier cursor is allowed
    /// and returns the same items again.
    #[test]
    fn pulls_honouring_the_cursor_return_every_seq_once_in_order(
        limits in proptest::collection::vec(1u64..=1000, 1..60),
        rewind in 0u64..3000,
    ) {
        let sim = cursor_sim();
        let mut cursor = 0u64;
        let mut seen = Vec::new();
        let mut limits = limits.into_iter().cycle();
        loop {
            let limit = limits.next().unwrap_or(1000);
            let page = page_seqs(&sim.get_chat_data("wwprop", "s3cret", cursor, limit));
            prop_assert!(page.len() as u64 <= limit);
            if page.is_empty() { break; }
            prop_assert!(page.iter().all(|s| *s > cursor), "exclusive cursor");
            cursor = *page.last().unwrap_or(&cursor);
            seen.extend(page);
        }
        prop_assert_eq!(seen, (1..=3000).collect::<Vec<u64>>());
        let again = page_seqs(&sim.get_chat_data("wwprop", "s3cret", rewind, 5));
        let expected: Vec<u64> = (rewind + 1..=3000).take(5).collect();
        prop_assert_eq!(again, expected);
    }
}

#[test]
fn limits_credentials_rate_retention_and_faults() {
    let mut old = spec("wwold", 100, FaultRates::default());
    // Half the feed is older than the 5-day retention window.
    old.start_ms = now_ms() - 5 * 86_400_000 - 50 * 100;
    let feeds = vec![
        (
            CorpFeed::build(&old, keys()).expect("feed"),
            "a".to_string(),
        ),
        (
            CorpFeed::build(&spec("wwdup", 50, FaultRates::default()), keys()).expect("feed"),
            "b".to_string(),
        ),
    ];
    let config = ServerConfig {
        calls_per_minute: 20,
        duplicate_rate: 1.0,
        ..ServerConfig::default()
    };
    let sim = Simulator::new(config, feeds);
    assert_eq!(
        sim.get_chat_data("wwold", "a", 0, 1001)["errcode"],
        errcode::BAD_PARAMETER
    );
    assert_eq!(
        sim.get_chat_data("wwold", "wrong", 0, 10)["errcode"],
        errcode::INVALID_CREDENTIAL
    );
    assert_eq!(
        sim.get_chat_data("nobody", "a", 0, 10)["errcode"],
        errcode::INVALID_CREDENTIAL
    );
    // Expired items are skipped: the first page starts past the retention window.
    let page = page_seqs(&sim.get_chat_data("wwold", "a", 0, 1000));
    assert!(
        !page.is_empty() && page[0] > 1 && page.len() < 100,
        "{page:?}"
    );
    // A re-pull repeats the item at the cursor when the duplicate fault is on.
    let first = page_seqs(&sim.get_chat_data("wwdup", "b", 0, 10));
    let second = page_seqs(&sim.get_chat_data("wwdup", "b", 10, 10));
    assert_eq!(first, (1..=10).collect::<Vec<_>>());
    assert_eq!(second[0], 10, "duplicate of the cursor item");
    // The rate limit is per corp and answers 45009.
    let limited = (0..40)
        .map(|_| {
            sim.get_chat_data("wwdup", "b", 0, 1)["errcode"]
                .as_i64()
                .unwrap_or(-1)
        })
        .filter(|c| *c == errcode::FREQ_LIMIT)
        .count();
    assert!(limited >= 15, "{limited}");
    // The ground truth reports what was served.
    let truth = sim.truth();
    let dup = truth.iter().find(|t| t.corp_id == "wwdup").expect("wwdup");
    assert_eq!(dup.messages.len(), 50);
    assert!(dup.served_seqs.len() >= 19);

    let flaky = Simulator::new(
        ServerConfig {
            transient_error_rate: 1.0,
            ..ServerConfig::default()
        },
        vec![(
            CorpFeed::build(&spec("wwflaky", 5, FaultRates::default()), keys()).expect("feed"),
            "c".into(),
        )],
    );
    let code = flaky.get_chat_data("wwflaky", "c", 0, 5)["errcode"]
        .as_i64()
        .expect("code");
    assert!((10001..=10003).contains(&code), "{code}");
}

#[test]
fn media_is_served_in_512k_chunks_and_the_md5_fault_heals_on_retry() {
    use base64::Engine;
    use md5::Digest;
    let feed =
        CorpFeed::build(&spec("wwmedia", 3_000, FaultRates::default()), keys()).expect("feed");
    let big = feed
        .media
        .iter()
        .find(|m| m.size > 512 * 1024)
        .expect("a multi-chunk file")
        .clone();
    let sim = Simulator::new(
        ServerConfig {
            media_md5_fault_rate: 1.0,
            ..ServerConfig::default()
        },
        vec![(feed, "m".into())],
    );
    let download = || {
        let (mut index, mut data, mut chunks) = (String::new(), Vec::new(), 0);
        loop {
            let reply = sim.get_media_data("wwmedia", "m", &big.sdkfileid, &index);
            assert_eq!(reply["errcode"], 0, "{reply}");
            let chunk = base64::engine::general_purpose::STANDARD
                .decode(reply["data"].as_str().expect("data"))
                .expect("b64");
            assert!(chunk.len() <= 512 * 1024);
            data.extend(chunk);
            chunks += 1;
            index = reply["outindexbuf"].as_str().expect("index").to_string();
            if reply["is_finish"] == 1 {
                break;
            }
        }
        (format!("{:x}", md5::Md5::digest(&data)), data.len(), chunks)
    };
    let (md5_first, len, chunks) = download();
    assert_eq!(len, big.size);
    assert!(chunks >= 2, "{chunks} chunks");
    assert_ne!(md5_first, big.md5, "the first download is corrupted");
    let (md5_retry, _, _) = download();
    assert_eq!(md5_retry, big.md5, "a retry gets the right bytes");
    assert_eq!(
        sim.get_media_data("wwmedia", "m", "nope", "")["errcode"],
        errcode::BAD_FILEID
    );
}

#[tokio::test]
async fn the_http_service_answers_getchatdata_and_ground_truth() {
    let feed = CorpFeed::build(&spec("wwhttp", 30, FaultRates::default()), keys()).expect("feed");
    let sim = Simulator::new(ServerConfig::default(), vec![(feed, "h".into())]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(sim.serve(listener, async {
        stopped.await.ok();
    }));
    let http = reqwest::Client::new();
    let reply: Value = http
        .post(format!("{url}/cgi-bin/finance/getchatdata"))
        .body(r#"{"corpid":"wwhttp","secret":"h","seq":0,"limit":20}"#)
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(page_seqs(&reply), (1..=20).collect::<Vec<_>>());
    let item = &reply["chatdata"][0];
    for field in [
        "seq",
        "msgid",
        "publickey_ver",
        "encrypt_random_key",
        "encrypt_chat_msg",
    ] {
        assert!(!item[field].is_null(), "{field} missing");
    }
    let bad: Value = http
        .post(format!("{url}/cgi-bin/finance/getchatdata"))
        .body("not json")
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(bad["errcode"], errcode::BAD_PARAMETER);
    let truth: Value = http
        .get(format!("{url}/sim/ground_truth"))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(
        truth["corps"][0]["served_seqs"]
            .as_array()
            .expect("served")
            .len(),
        20
    );
    stop.send(()).expect("stop");
    server.await.expect("join").expect("serve");
}
