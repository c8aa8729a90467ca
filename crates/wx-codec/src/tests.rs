use super::*;
use std::collections::BTreeMap;

pub(crate) fn sample_raw_archive() -> RawBatch {
    RawBatch {
        corp_id: "ww1436e0e65a779aee".into(),
        source: SourceKind::Archive,
        seq_from: Some(195),
        seq_to: Some(196),
        fetched_at: 1_700_000_000_123,
        items: vec![EncryptedItem {
            seq: 196,
            msgid: "15775510700152506326_1603875615".into(),
            publickey_ver: 3,
            encrypt_random_key: "a2V5".into(),
            encrypt_chat_msg: "bXNn".into(),
        }],
        callback: None,
    }
}

fn sample_raw_callback() -> RawBatch {
    let mut query = BTreeMap::new();
    query.insert("msg_signature".into(), "0c39".into());
    query.insert("nonce".into(), "1597212914".into());
    RawBatch {
        corp_id: "ww1436e0e65a779aee".into(),
        source: SourceKind::Callback,
        seq_from: None,
        seq_to: None,
        fetched_at: 1_700_000_000_000,
        items: vec![],
        callback: Some(CallbackEnvelope {
            method: "POST".into(),
            content_type: "text/xml".into(),
            query,
            body: b"<xml><Encrypt><![CDATA[Kl7k]]></Encrypt>\0\xff</xml>".to_vec(),
        }),
    }
}

pub(crate) fn sample_clean() -> ChatMessage {
    ChatMessage {
        msgid: "DAQQluDa4QUY0On4kYSABAMgzPrShAE=".into(),
        corp_id: "ww1436e0e65a779aee".into(),
        action: "send".into(),
        from: "HeMiao".into(),
        tolist: vec!["HeChangTian".into(), "LiuZeYu".into()],
        roomid: "wr_tZ2BwAAUwHpYMwy9cIWqnlU3Hzqfg".into(),
        msgtime: 1_577_414_359_072,
        msgtype: "mixed".into(),
        payload_json: r#"{"item":[{"type":"text","content":"{\"content\":\"你好[微笑]\\n\"}"}]}"#
            .into(),
        extra_json: None,
        text: Some("你好[微笑] 😀".into()),
        recalled_msgid: None,
        conversation_id: "wr_tZ2BwAAUwHpYMwy9cIWqnlU3Hzqfg".into(),
        is_external: false,
        publickey_ver: Some(3),
        source: SourceCoordinates {
            topic: "wxstream.raw".into(),
            partition: 2,
            offset: 42,
            seq: Some(196),
        },
        decrypted_at: 1_700_000_000_456,
    }
}

pub(crate) fn sample_dead_letter() -> DeadLetter {
    DeadLetter {
        original: br#"{"seq":7,"msgid":"x","publickey_ver":9}"#.to_vec(),
        original_format: "archive-item-json".into(),
        error_class: "unknown_key_version".into(),
        error_message: "no private key for publickey_ver 9".into(),
        stage: "decrypt".into(),
        corp_id: Some("ww1".into()),
        msgid: Some("x".into()),
        key_version: Some(9),
        source_topic: "wxstream.raw".into(),
        source_partition: 0,
        source_offset: 17,
        seq: Some(7),
        first_failed_at: 1_700_000_000_000,
        last_failed_at: 1_700_000_100_000,
        attempts: 2,
    }
}

pub(crate) fn sample_window() -> GroupWindowCount {
    let mut by_msgtype = BTreeMap::new();
    by_msgtype.insert("text".into(), 40);
    by_msgtype.insert("revoke".into(), 2);
    GroupWindowCount {
        corp_id: "ww1".into(),
        group_id: "wr_room".into(),
        group_kind: "room".into(),
        window_size_ms: 60_000,
        window_start: 1_700_000_040_000,
        window_end: 1_700_000_100_000,
        total: 42,
        by_msgtype,
        is_final: true,
        revision: 1,
        emitted_at: 1_700_000_200_000,
    }
}

fn round_trip<T: AvroRecord + PartialEq + std::fmt::Debug>(codec: &Codec, record: &T) {
    let bytes = codec.encode(record).expect("encode");
    assert_eq!(bytes[0], MAGIC_BYTE);
    assert_eq!(
        frame_schema_id(&bytes).expect("id"),
        codec.schema_id(T::KIND)
    );
    let back: T = codec.decode(&bytes).expect("decode");
    assert_eq!(&back, record);
}

#[test]
fn every_kind_round_trips_with_fixed_ids() {
    let codec = Codec::fixed().expect("codec");
    round_trip(&codec, &sample_raw_archive());
    round_trip(&codec, &sample_raw_callback());
    round_trip(&codec, &sample_clean());
    round_trip(&codec, &sample_dead_letter());
    round_trip(&codec, &sample_window());
}

#[test]
fn fixed_ids_follow_schemas_ids_json() {
    let codec = Codec::fixed().expect("codec");
    assert_eq!(codec.schema_id(RecordKind::RawBatch), 1001);
    assert_eq!(codec.schema_id(RecordKind::ChatMessage), 1002);
    assert_eq!(codec.schema_id(RecordKind::DeadLetter), 1003);
    assert_eq!(codec.schema_id(RecordKind::GroupWindowCount), 1004);
}

#[test]
fn decoding_as_the_wrong_kind_is_an_error() {
    let codec = Codec::fixed().expect("codec");
    let bytes = codec.encode(&sample_clean()).expect("encode");
    let err = codec.decode::<DeadLetter>(&bytes).expect_err("wrong kind");
    assert!(
        matches!(err, CodecError::WrongKind { id: 1002, .. }),
        "{err}"
    );
}

#[test]
fn bad_frames_are_rejected() {
    let codec = Codec::fixed().expect("codec");
    let mut bytes = codec.encode(&sample_clean()).expect("encode");
    assert!(matches!(
        codec.decode::<ChatMessage>(&bytes[..3]),
        Err(CodecError::BadFrame { len: 3 })
    ));
    bytes[0] = 1;
    assert!(matches!(
        codec.decode::<ChatMessage>(&bytes),
        Err(CodecError::BadFrame { .. })
    ));
    bytes[0] = 0;
    bytes[4] = 99;
    assert!(matches!(
        codec.decode::<ChatMessage>(&bytes),
        Err(CodecError::UnknownSchemaId(_))
    ));
    let truncated = codec.encode(&sample_clean()).expect("encode");
    assert!(matches!(
        codec.decode::<ChatMessage>(&truncated[..truncated.len() - 10]),
        Err(CodecError::Decode { id: 1002, .. })
    ));
}

/// The "next version" of a schema: the current one plus a field with a default, the kind of
/// change the project allows (see ARCHITECTURE.md, "Schema evolution").
fn next_version(kind: RecordKind) -> String {
    let mut schema: serde_json::Value =
        serde_json::from_str(kind.schema_text()).expect("schema json");
    schema["fields"]
        .as_array_mut()
        .expect("fields")
        .push(serde_json::json!({
            "name": "added_in_v2", "type": ["null", "string"], "default": null
        }));
    schema.to_string()
}

#[test]
fn a_next_version_reader_reads_current_data() {
    let codec = Codec::fixed().expect("codec");
    let cases: Vec<(RecordKind, Vec<u8>)> = vec![
        (
            RecordKind::RawBatch,
            codec.encode(&sample_raw_callback()).expect("e"),
        ),
        (
            RecordKind::ChatMessage,
            codec.encode(&sample_clean()).expect("e"),
        ),
        (
            RecordKind::DeadLetter,
            codec.encode(&sample_dead_letter()).expect("e"),
        ),
        (
            RecordKind::GroupWindowCount,
            codec.encode(&sample_window()).expect("e"),
        ),
    ];
    for (kind, bytes) in cases {
        let writer = Schema::parse_str(kind.schema_text()).expect("writer");
        let reader = Schema::parse_str(&next_version(kind)).expect("reader");
        let mut datum = &bytes[FRAME_HEADER_LEN..];
        let value = apache_avro::from_avro_datum(&writer, &mut datum, Some(&reader))
            .unwrap_or_else(|e| panic!("{kind:?}: v2 reader failed: {e}"));
        let apache_avro::types::Value::Record(fields) = value else {
            panic!("{kind:?}: not a record")
        };
        let added = fields
            .iter()
            .find(|(name, _)| name == "added_in_v2")
            .expect("new field present");
        assert!(
            matches!(added.1, apache_avro::types::Value::Union(0, _)),
            "{kind:?}: default null expected, got {:?}",
            added.1
        );
        assert_eq!(fields.len(), reader_field_count(&reader));
    }
}

fn reader_field_count(schema: &Schema) -> usize {
    match schema {
        Schema::Record(r) => r.fields.len(),
        _ => 0,
    }
}

#[test]
fn the_current_reader_reads_next_version_data() {
    let codec = Codec::fixed().expect("codec");
    let v2 = next_version(RecordKind::ChatMessage);
    codec
        .add_writer_schema(2002, RecordKind::ChatMessage, &v2)
        .expect("add");
    // Write with v2: the current record plus the new field set.
    let v2_schema = Schema::parse_str(&v2).expect("v2");
    let mut value = apache_avro::to_value(sample_clean()).expect("value");
    if let apache_avro::types::Value::Record(fields) = &mut value {
        fields.push((
            "added_in_v2".into(),
            apache_avro::types::Value::String("new".into()),
        ));
    }
    let value = value.resolve(&v2_schema).expect("resolve v2");
    let mut bytes = vec![0, 0, 0, 0x07, 0xD2]; // id 2002
    bytes.extend(apache_avro::to_avro_datum(&v2_schema, value).expect("datum"));
    let back: ChatMessage = codec.decode(&bytes).expect("current reader reads v2");
    assert_eq!(back, sample_clean());
}

#[test]
fn stats_json_uses_the_schema_field_names() {
    let codec = Codec::fixed().expect("codec");
    let json = StatsFormat::Json
        .encode(&codec, &sample_window())
        .expect("json");
    let value: serde_json::Value = serde_json::from_slice(&json).expect("parse");
    let schema: serde_json::Value =
        serde_json::from_str(RecordKind::GroupWindowCount.schema_text()).expect("schema");
    let names: Vec<&str> = schema["fields"]
        .as_array()
        .expect("fields")
        .iter()
        .map(|f| f["name"].as_str().expect("name"))
        .collect();
    let object = value.as_object().expect("object");
    assert_eq!(object.len(), names.len());
    for name in names {
        assert!(object.contains_key(name), "JSON lacks {name}");
    }
    assert_eq!(value["final"], true);
    assert_eq!(value["by_msgtype"]["text"], 40);
    assert_eq!(sample_window().key(), "ww1/wr_room/60000/1700000040000");
}

mod registry_protocol {
    //! The registry client against an in-process server that speaks the two Confluent Schema
    //! Registry calls the codec uses (no registry package is reachable from these machines).
    use super::*;
    use axum::extract::{Path, State};
    use axum::routing::{get, post};
    use axum::{Json, Router};
    use std::sync::{Arc, Mutex};

    #[derive(Default)]
    struct Registry {
        schemas: Vec<(String, String)>, // index + 1 = id
    }
    type Shared = Arc<Mutex<Registry>>;

    async fn register(
        State(reg): State<Shared>,
        Path(subject): Path<String>,
        body: String,
    ) -> Json<serde_json::Value> {
        let body: serde_json::Value = serde_json::from_str(&body).expect("body");
        let schema = body["schema"].as_str().expect("schema").to_string();
        let mut reg = reg.lock().expect("lock");
        let id = match reg.schemas.iter().position(|(_, s)| *s == schema) {
            Some(i) => i + 1,
            None => {
                reg.schemas.push((subject, schema));
                reg.schemas.len()
            }
        };
        Json(serde_json::json!({ "id": id }))
    }

    async fn schema(State(reg): State<Shared>, Path(id): Path<usize>) -> Json<serde_json::Value> {
        let reg = reg.lock().expect("lock");
        Json(serde_json::json!({ "schema": reg.schemas[id - 1].1 }))
    }

    async fn versions(State(reg): State<Shared>, Path(id): Path<usize>) -> Json<serde_json::Value> {
        let reg = reg.lock().expect("lock");
        Json(serde_json::json!([{ "subject": reg.schemas[id - 1].0, "version": 1 }]))
    }

    #[tokio::test]
    async fn registered_ids_are_written_and_fetched_ids_are_read() {
        let shared: Shared = Arc::default();
        let app = Router::new()
            .route("/subjects/{subject}/versions", post(register))
            .route("/schemas/ids/{id}", get(schema))
            .route("/schemas/ids/{id}/versions", get(versions))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });

        let writer = Codec::with_registry(&url).await.expect("registry codec");
        assert_eq!(writer.schema_id(RecordKind::RawBatch), 1);
        assert_eq!(writer.schema_id(RecordKind::GroupWindowCount), 4);
        let bytes = writer.encode(&sample_dead_letter()).expect("encode");
        assert_eq!(frame_schema_id(&bytes).expect("id"), 3);

        // A second codec registering the same schemas gets the same ids back.
        let reader = Codec::with_registry(&url).await.expect("second codec");
        assert_eq!(reader.schema_id(RecordKind::DeadLetter), 3);
        let back: DeadLetter = reader.decode_resolving(&bytes).await.expect("decode");
        assert_eq!(back, sample_dead_letter());

        // The fixed-id codec does not know registry ids.
        let fixed = Codec::fixed().expect("fixed");
        assert!(matches!(
            fixed.decode_resolving::<DeadLetter>(&bytes).await,
            Err(CodecError::UnknownSchemaId(3))
        ));
    }
}

/// A whole raw record parked without msgid or seq, with `original` as its bytes.
fn parked_raw_record(original: Vec<u8>) -> DeadLetter {
    DeadLetter {
        original,
        original_format: "raw-record".into(),
        error_class: "undecodable".into(),
        corp_id: None,
        msgid: None,
        key_version: None,
        seq: None,
        source_partition: 4,
        ..sample_dead_letter()
    }
}

#[test]
fn a_dead_letter_keeps_a_bounded_prefix_so_it_fits_its_topic() {
    let codec = Codec::fixed().expect("codec");
    let small = parked_raw_record(vec![7; 1000]);
    let decoded: DeadLetter = codec
        .decode(&codec.encode(&small).expect("encode"))
        .expect("decode");
    assert_eq!(decoded, small, "a letter under the bound is written whole");

    let big = parked_raw_record(vec![9; 3 << 20]);
    let bytes = codec.encode(&big).expect("encode");
    assert!(
        bytes.len() < 1 << 20,
        "{} bytes do not fit a 1 MiB topic",
        bytes.len()
    );
    let decoded: DeadLetter = codec.decode(&bytes).expect("decode");
    assert_eq!(decoded.original.len(), DeadLetter::MAX_ORIGINAL_BYTES);
    assert_eq!(
        decoded.original[..],
        big.original[..DeadLetter::MAX_ORIGINAL_BYTES]
    );
    assert_eq!(decoded.original_format, "raw-record-prefix");
    assert!(
        decoded.error_message.contains("3145728 bytes")
            && decoded.error_message.contains("wxstream.raw/4/17"),
        "{}",
        decoded.error_message
    );
    assert_eq!(decoded.error_class, big.error_class);
}

#[test]
fn dead_letter_keys_are_unique_per_parked_record() {
    let mut a = parked_raw_record(vec![]);
    assert_eq!(a.key(), "decrypt:wxstream.raw/4/17");
    a.seq = Some(196);
    assert_eq!(a.key(), "decrypt:wxstream.raw/4/17/196");
    a.corp_id = Some("ww1".into());
    a.msgid = Some("m1".into());
    assert_eq!(a.key(), "decrypt:ww1/m1");
    a.stage = "sink".into();
    assert_eq!(a.key(), "sink:ww1/m1");
}

#[test]
fn avro_errors_never_carry_the_value_they_were_about() {
    let secret = "the text of a private message";
    let value = apache_avro::types::Value::String(secret.into());
    let error = value
        .resolve(&apache_avro::Schema::Int)
        .expect_err("a string is no int");
    assert!(
        error.to_string().contains(secret),
        "apache-avro quotes the value (the reason for this guard): {error}"
    );
    let shown = crate::without_values(&error);
    assert!(!shown.contains(secret), "{shown}");
    assert!(!shown.is_empty());
    // A datum that does not decode says so without its bytes.
    let codec = Codec::fixed().expect("codec");
    let mut bytes = codec.encode(&sample_clean()).expect("encode");
    bytes.truncate(bytes.len() / 2);
    let error = codec
        .decode::<ChatMessage>(&bytes)
        .expect_err("truncated")
        .to_string();
    assert!(!error.contains(&sample_clean().msgid), "{error}");
}

/// Found by the `raw_batch` fuzz target: an array length of ~536 million items made
/// `apache-avro` reserve 43 GB and abort the process. It is now a decode error.
#[test]
fn a_corrupt_array_length_is_an_error_not_an_abort() {
    let bytes = include_bytes!("../../../fuzz/regressions/raw_batch/huge-array-length");
    let codec = Codec::fixed().expect("codec");
    assert!(codec.decode::<RawBatch>(bytes).is_err());
}

#[test]
fn an_encode_error_names_the_schema_and_field_never_the_value() {
    let schema = apache_avro::Schema::parse_str(
        r#"{"type": "record", "name": "R", "fields": [
            {"name": "ok", "type": "string"},
            {"name": "count", "type": "int"}]}"#,
    )
    .expect("schema");
    let secret = "the text of a private message";
    let value = apache_avro::types::Value::Record(vec![
        (
            "ok".into(),
            apache_avro::types::Value::String("fine".into()),
        ),
        (
            "count".into(),
            apache_avro::types::Value::String(secret.into()),
        ),
    ]);
    assert_eq!(
        crate::failing_field(&value, &schema).as_deref(),
        Some("count")
    );
}
