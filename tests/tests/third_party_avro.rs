//! A reader outside Rust (Python fastavro) decodes what the codec writes, using only schemas/.

use std::collections::BTreeMap;
use std::process::Command;

use serde_json::{Value, json};
use wx_codec::{
    CallbackEnvelope, ChatMessage, Codec, DeadLetter, EncryptedItem, GroupWindowCount, RawBatch,
    SourceCoordinates, SourceKind,
};
use wxstream_tests::{python, repo_root};

fn records(codec: &Codec) -> Vec<(&'static str, Vec<u8>, Value)> {
    let raw = RawBatch {
        corp_id: "ww1436e0e65a779aee".into(),
        source: SourceKind::Archive,
        seq_from: Some(0),
        seq_to: Some(2),
        fetched_at: 1_700_000_000_001,
        items: vec![EncryptedItem {
            seq: 2,
            msgid: "18039699423706571225_1603875608_external".into(),
            publickey_ver: 3,
            encrypt_random_key: "cmFuZG9t".into(),
            encrypt_chat_msg: "Y2hhdA==".into(),
        }],
        callback: None,
    };
    let callback = RawBatch {
        corp_id: "wx5823bf96d3bd56c7".into(),
        source: SourceKind::Callback,
        seq_from: None,
        seq_to: None,
        fetched_at: 1_700_000_000_002,
        items: vec![],
        callback: Some(CallbackEnvelope {
            method: "POST".into(),
            content_type: "text/xml".into(),
            query: BTreeMap::from([("nonce".to_string(), "1372623149".to_string())]),
            body: vec![0, 1, 2, 255],
        }),
    };
    let clean = ChatMessage {
        msgid: "CAQQluDa4QUY0On2rYSAgAMgzPrShAE=".into(),
        corp_id: "ww1".into(),
        action: "send".into(),
        from: "XuJinSheng".into(),
        tolist: vec!["icefog".into()],
        roomid: String::new(),
        msgtime: 1_547_087_894_783,
        msgtype: "text".into(),
        payload_json: r#"{"content":"你好 😀"}"#.into(),
        extra_json: None,
        text: Some("你好 😀".into()),
        recalled_msgid: None,
        conversation_id: "single:XuJinSheng:icefog".into(),
        is_external: false,
        publickey_ver: Some(1),
        source: SourceCoordinates {
            topic: "wxstream.raw".into(),
            partition: 3,
            offset: 99,
            seq: Some(2),
        },
        decrypted_at: 1_700_000_000_003,
    };
    let dead = DeadLetter {
        original: b"{\"seq\":9}".to_vec(),
        original_format: "archive-item-json".into(),
        error_class: "bad_ciphertext".into(),
        error_message: "AES padding is invalid".into(),
        stage: "decrypt".into(),
        corp_id: Some("ww1".into()),
        msgid: None,
        key_version: Some(2),
        source_topic: "wxstream.raw".into(),
        source_partition: 1,
        source_offset: 5,
        seq: Some(9),
        first_failed_at: 1_700_000_000_004,
        last_failed_at: 1_700_000_000_005,
        attempts: 1,
    };
    let window = GroupWindowCount {
        corp_id: "ww1".into(),
        group_id: "wrABC".into(),
        group_kind: "room".into(),
        window_size_ms: 3_600_000,
        window_start: 1_699_999_200_000,
        window_end: 1_700_002_800_000,
        total: 3,
        by_msgtype: BTreeMap::from([("text".to_string(), 2), ("image".to_string(), 1)]),
        is_final: false,
        revision: 0,
        emitted_at: 1_700_000_000_006,
    };
    vec![
        (
            "raw_archive",
            codec.encode(&raw).expect("raw"),
            json!({
            "corp_id": "ww1436e0e65a779aee", "source": "ARCHIVE", "seq_from": 0, "seq_to": 2,
            "fetched_at": 1_700_000_000_001_i64, "callback": null,
            "items": [{"seq": 2, "msgid": "18039699423706571225_1603875608_external",
                       "publickey_ver": 3, "encrypt_random_key": "cmFuZG9t",
                       "encrypt_chat_msg": "Y2hhdA=="}]}),
        ),
        (
            "raw_callback",
            codec.encode(&callback).expect("callback"),
            json!({
            "corp_id": "wx5823bf96d3bd56c7", "source": "CALLBACK", "seq_from": null,
            "seq_to": null, "fetched_at": 1_700_000_000_002_i64, "items": [],
            "callback": {"method": "POST", "content_type": "text/xml",
                         "query": {"nonce": "1372623149"}, "body": "AAEC/w=="}}),
        ),
        (
            "clean",
            codec.encode(&clean).expect("clean"),
            json!({
            "msgid": "CAQQluDa4QUY0On2rYSAgAMgzPrShAE=", "corp_id": "ww1", "action": "send",
            "from": "XuJinSheng", "tolist": ["icefog"], "roomid": "",
            "msgtime": 1_547_087_894_783_i64, "msgtype": "text",
            "payload_json": "{\"content\":\"你好 😀\"}", "extra_json": null, "text": "你好 😀",
            "recalled_msgid": null, "conversation_id": "single:XuJinSheng:icefog",
            "is_external": false, "publickey_ver": 1,
            "source": {"topic": "wxstream.raw", "partition": 3, "offset": 99, "seq": 2},
            "decrypted_at": 1_700_000_000_003_i64}),
        ),
        (
            "dead",
            codec.encode(&dead).expect("dead"),
            json!({
            "original": "eyJzZXEiOjl9", "original_format": "archive-item-json",
            "error_class": "bad_ciphertext", "error_message": "AES padding is invalid",
            "stage": "decrypt", "corp_id": "ww1", "msgid": null, "key_version": 2,
            "source_topic": "wxstream.raw", "source_partition": 1, "source_offset": 5, "seq": 9,
            "first_failed_at": 1_700_000_000_004_i64, "last_failed_at": 1_700_000_000_005_i64,
            "attempts": 1}),
        ),
        (
            "window",
            codec.encode(&window).expect("window"),
            json!({
            "corp_id": "ww1", "group_id": "wrABC", "group_kind": "room",
            "window_size_ms": 3_600_000, "window_start": 1_699_999_200_000_i64,
            "window_end": 1_700_002_800_000_i64, "total": 3,
            "by_msgtype": {"text": 2, "image": 1}, "final": false, "revision": 0,
            "emitted_at": 1_700_000_000_006_i64}),
        ),
    ]
}

#[test]
fn fastavro_decodes_every_record_kind_with_only_the_schema_files() {
    let codec = Codec::fixed().expect("codec");
    let dir = tempfile::tempdir().expect("tmp");
    let cases = records(&codec);
    let mut files = Vec::new();
    for (name, bytes, _) in &cases {
        let path = dir.path().join(format!("{name}.bin"));
        std::fs::write(&path, bytes).expect("write");
        files.push(path);
    }
    let lines: Vec<Value> = wxstream_tests::run_ok_text(
        Command::new(python())
            .arg(repo_root().join("tests/python/read_with_fastavro.py"))
            .arg(repo_root().join("schemas"))
            .args(&files),
        "the fastavro reader",
    )
    .lines()
    .map(|l| serde_json::from_str(l).expect("json line"))
    .collect();
    assert_eq!(lines.len(), cases.len());
    for ((name, bytes, expected), line) in cases.iter().zip(&lines) {
        assert_eq!(line["file"], format!("{name}.bin"));
        assert_eq!(
            line["schema_id"].as_u64(),
            Some(u64::from(wx_codec::frame_schema_id(bytes).expect("id")))
        );
        assert_eq!(&line["record"], expected, "{name}");
    }
}
