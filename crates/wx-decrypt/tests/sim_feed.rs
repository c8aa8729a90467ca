//! The decryptor against the simulator's feed, in process (no services): every item of a feed
//! with every fault kind ends clean or parked exactly as the ground truth says, and redrive with
//! the withheld key moves exactly the dead letters of that version.

use std::collections::BTreeMap;
use std::sync::Arc;

use wx_codec::{Codec, RawBatch, SourceKind};
use wx_crypto::SimulatorCipher;
use wx_decrypt::{Decryptor, Outcome, RawSource, ReloadingKeys};
use wx_sim::{CorpFeed, FaultRates, FeedSpec, SimKeys};

fn feed(keys: &SimKeys) -> CorpFeed {
    let spec = FeedSpec {
        corp_id: "wwtest".into(),
        seed: 7,
        messages: 600,
        start_ms: 1_700_000_000_000,
        spacing_ms: 1_000,
        key_versions: vec![1, 2],
        withheld_key_version: 99,
        faults: FaultRates {
            corrupt_ciphertext: 0.03,
            unknown_key_version: 0.03,
            invalid_json: 0.03,
            control_chars: 0.05,
        },
        media: Default::default(),
    };
    CorpFeed::build(&spec, keys).expect("feed")
}

#[test]
fn every_item_ends_where_the_ground_truth_says_and_redrive_moves_the_withheld_version() {
    let keys = SimKeys::generate(&[1, 2, 99]).expect("keys");
    let dir = tempfile::tempdir().expect("tmp");
    keys.write_private(dir.path(), |v| v != 99)
        .expect("write keys");
    let feed = feed(&keys);
    let codec = Arc::new(Codec::fixed().expect("codec"));
    let decryptor = Decryptor::simulator(dir.path(), codec.clone()).expect("ring");
    let ring = decryptor.keys().clone();
    let batch = feed.raw_batch(0..feed.items.len());
    let value = codec.encode(&batch).expect("encode");
    let source = RawSource {
        topic: "raw".into(),
        partition: 2,
        offset: 41,
    };
    let outcomes = decryptor.process_record(Some(&value), &source, 5);
    assert_eq!(
        outcomes.len(),
        feed.truth.len(),
        "one outcome per item, in order"
    );

    let mut faults = BTreeMap::new();
    let mut parked = Vec::new();
    for (truth, outcome) in feed.truth.iter().zip(&outcomes) {
        assert_eq!(outcome.msgid(), Some(truth.msgid.as_str()), "order is kept");
        match outcome {
            Outcome::Clean(m) => {
                assert!(
                    !truth.poison,
                    "{}: {:?} came out clean",
                    truth.msgid, truth.fault
                );
                assert_eq!(m.msgtype, truth.msgtype);
                assert_eq!(m.conversation_id, truth.group);
                assert_eq!(m.msgtime, truth.msgtime);
                assert_eq!(m.action, truth.action);
                assert_eq!(m.source.offset, 41);
                assert_eq!(m.source.seq, Some(truth.seq as i64));
                if truth.msgtype == "text" {
                    assert!(m.text.is_some(), "text messages are searchable");
                }
            }
            Outcome::Dead(d) => {
                assert!(
                    truth.poison,
                    "{}: clean item parked as {}",
                    truth.msgid, d.error_class
                );
                *faults
                    .entry((format!("{:?}", truth.fault), d.error_class.clone()))
                    .or_insert(0) += 1;
                assert_eq!(d.source_partition, 2);
                assert_eq!(d.attempts, 1);
                parked.push(d.clone());
            }
            Outcome::Filtered { .. } => panic!("archive items are never filtered"),
        }
    }
    // Each fault kind lands in its own class.
    for (fault, class) in faults.keys() {
        let expected: &[&str] = match fault.as_str() {
            "Some(UnknownKeyVersion)" => &["unknown_key_version"],
            "Some(InvalidJson)" => &["invalid_json"],
            "Some(CorruptCiphertext)" => &["bad_padding", "bad_ciphertext", "invalid_json"],
            other => panic!("unexpected poison {other}"),
        };
        assert!(expected.contains(&class.as_str()), "{fault} -> {class}");
    }
    let withheld = parked
        .iter()
        .filter(|d| d.error_class == "unknown_key_version")
        .count();
    assert!(withheld > 0 && parked.len() > withheld, "{faults:?}");

    // Redrive without the key: every one stays parked with attempts + 1.
    for d in &parked {
        match decryptor.redrive(d, 9).as_slice() {
            [Outcome::Dead(again)] => {
                assert_eq!(again.attempts, 2);
                assert_eq!(again.first_failed_at, d.first_failed_at);
                assert_eq!(again.last_failed_at, 9);
                assert_eq!(again.error_class, d.error_class);
            }
            other => panic!("{other:?}"),
        }
    }
    // Add the withheld key; the ring reloads; exactly that version's letters move.
    keys.write_private(dir.path(), |v| v == 99)
        .expect("add key 99");
    assert!(ring.reload(false).expect("reload").is_some());
    let moved = parked
        .iter()
        .filter(|d| matches!(decryptor.redrive(d, 10).as_slice(), [Outcome::Clean(_)]))
        .count();
    assert_eq!(moved, withheld);
}

/// A callback batch as the ingest receiver writes it, encrypted and signed for `corp`.
fn callback_batch(codec: &Codec, corp: &str, xml: &str, tamper: bool) -> Vec<u8> {
    let crypt = wx_crypto::CallbackCrypt::new(TOKEN, AES_KEY, corp).expect("crypt");
    let encrypt = crypt.encrypt(xml.as_bytes());
    let mut signature = crypt.sign("1700000000", "42", &encrypt);
    if tamper {
        signature.replace_range(0..1, if signature.starts_with('0') { "1" } else { "0" });
    }
    let body = format!(
        "<xml><ToUserName><![CDATA[{corp}]]></ToUserName><Encrypt><![CDATA[{encrypt}]]></Encrypt><AgentID>1</AgentID></xml>"
    );
    let batch = RawBatch {
        corp_id: corp.into(),
        source: SourceKind::Callback,
        seq_from: None,
        seq_to: None,
        fetched_at: 0,
        items: vec![],
        callback: Some(wx_codec::CallbackEnvelope {
            method: "POST".into(),
            content_type: "text/xml".into(),
            query: [
                ("msg_signature".to_string(), signature),
                ("timestamp".to_string(), "1700000000".to_string()),
                ("nonce".to_string(), "42".to_string()),
            ]
            .into(),
            body: body.into_bytes(),
        }),
    };
    codec.encode(&batch).expect("encode")
}

const TOKEN: &str = "hJqcu3uJ9Tn2gXPmxx2w9kkCkCE2EPYo";
const AES_KEY: &str = "6qkdMrq68nTKduznJYO1A37W2oEgpkMUvkttRToqhUt";

#[test]
fn callbacks_become_messages_events_are_filtered_and_bad_ones_are_parked_whole() {
    let codec = Arc::new(Codec::fixed().expect("codec"));
    let crypt = wx_crypto::CallbackCrypt::new(TOKEN, AES_KEY, "wwcb").expect("crypt");
    let decryptor = Decryptor::new(
        Arc::new(ReloadingKeys::fixed(Default::default())),
        Arc::new(SimulatorCipher),
        [("wwcb".to_string(), crypt)].into(),
        codec.clone(),
    );
    let source = RawSource {
        topic: "raw".into(),
        partition: 0,
        offset: 9,
    };
    let text = "<xml><ToUserName>wwcb</ToUserName><FromUserName>zhangsan</FromUserName><CreateTime>1700000000</CreateTime><MsgType>text</MsgType><Content>你好</Content><MsgId>77</MsgId><AgentID>1000002</AgentID></xml>";
    let value = callback_batch(&codec, "wwcb", text, false);
    match decryptor
        .process_record(Some(&value), &source, 1)
        .as_slice()
    {
        [Outcome::Clean(m)] => {
            assert_eq!(m.msgid, "callback:agent:1000002:77");
            assert_eq!(m.text.as_deref(), Some("你好"));
            assert_eq!(m.corp_id, "wwcb");
            assert_eq!(m.source.offset, 9);
        }
        other => panic!("{other:?}"),
    }
    let event = "<xml><ToUserName>wwcb</ToUserName><MsgType>event</MsgType><Event>msgaudit_notify</Event></xml>";
    let value = callback_batch(&codec, "wwcb", event, false);
    assert!(matches!(
        decryptor
            .process_record(Some(&value), &source, 1)
            .as_slice(),
        [Outcome::Filtered {
            reason: "callback_event"
        }]
    ));
    // A forged signature and an unknown corp are parked with the whole record, replayable.
    for (corp, tamper, class) in [
        ("wwcb", true, "callback_signature"),
        ("wwother", false, "no_credentials"),
    ] {
        let value = callback_batch(&codec, corp, text, tamper);
        match decryptor
            .process_record(Some(&value), &source, 1)
            .as_slice()
        {
            [Outcome::Dead(d)] => {
                assert_eq!(d.error_class, class);
                assert_eq!(d.original, value, "the original record, byte for byte");
                assert_eq!(d.original_format, "raw-record");
            }
            other => panic!("{other:?}"),
        }
    }
    // Bytes that are not a raw batch at all are parked too.
    match decryptor
        .process_record(Some(b"garbage"), &source, 1)
        .as_slice()
    {
        [Outcome::Dead(d)] => assert_eq!(d.error_class, "undecodable"),
        other => panic!("{other:?}"),
    }
}
