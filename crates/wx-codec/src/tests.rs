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

/// The direct encoding is taken (not the fallback) and writes exactly what the Value path does,
/// but for the order of a map's entries (the Value path's map is a hash map: any order is
/// Avro; the direct one writes the record's sorted map), so then both decode to the record.
fn same_bytes_both_ways<T: AvroRecord + PartialEq + std::fmt::Debug>(codec: &Codec, record: &T) {
    let (id, schema) = &codec.current[&T::KIND];
    let mut direct = Vec::new();
    framing::write_header(&mut direct, *id);
    apache_avro::write_avro_datum_ref(schema, record, &mut direct)
        .unwrap_or_else(|e| panic!("{}: the direct encoding refused it: {e}", T::KIND.subject()));
    let by_value = Codec::encode_by_value(*id, schema, record).expect("by value");
    let has_map = matches!(T::KIND, RecordKind::GroupWindowCount | RecordKind::RawBatch);
    if has_map {
        assert_eq!(direct.len(), by_value.len());
        assert_eq!(&codec.decode::<T>(&by_value).expect("decode"), record);
    } else {
        assert_eq!(direct, by_value, "{}", T::KIND.subject());
    }
    assert_eq!(&codec.decode::<T>(&direct).expect("decode"), record);
    assert_eq!(codec.encode(record).expect("encode"), direct);
}

#[test]
fn the_direct_encoding_equals_the_value_path() {
    let codec = Codec::fixed().expect("codec");
    same_bytes_both_ways(&codec, &sample_raw_archive());
    same_bytes_both_ways(&codec, &sample_raw_callback());
    let clean = sample_clean();
    same_bytes_both_ways(&codec, &clean);
    same_bytes_both_ways(
        &codec,
        &ChatMessage {
            text: None,
            extra_json: Some(r#"{"k":"v"}"#.into()),
            recalled_msgid: Some("other".into()),
            publickey_ver: None,
            tolist: Vec::new(),
            source: SourceCoordinates {
                seq: None,
                ..clean.source.clone()
            },
            ..clean
        },
    );
    same_bytes_both_ways(&codec, &sample_dead_letter());
    same_bytes_both_ways(&codec, &sample_window());
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

/// The Connect schema file says what the Avro schema says: the same fields in the same order,
/// the same docs, and each Avro type as Connect's (`timestamp-millis` as `Timestamp`).
#[test]
fn the_connect_schema_mirrors_the_avro_schema() {
    let avro: serde_json::Value =
        serde_json::from_str(RecordKind::GroupWindowCount.schema_text()).expect("avsc");
    let connect: serde_json::Value = serde_json::from_str(CONNECT_STATS_SCHEMA).expect("connect");
    assert_eq!(connect["type"], "struct");
    assert_eq!(connect["name"], RecordKind::GroupWindowCount.subject());
    assert_eq!(connect["doc"], avro["doc"]);
    let avro_fields = avro["fields"].as_array().expect("fields");
    let connect_fields = connect["fields"].as_array().expect("fields");
    assert_eq!(avro_fields.len(), connect_fields.len());
    let required = |t: &str| serde_json::json!({"type": t, "optional": false});
    for (a, c) in avro_fields.iter().zip(connect_fields) {
        assert_eq!(a["name"], c["field"]);
        assert_eq!(a["doc"], c["doc"], "{}", a["name"]);
        assert_eq!(c["optional"], false, "{}", a["name"]);
        let t = &a["type"];
        match (t.as_str(), t["logicalType"].as_str(), t["type"].as_str()) {
            (Some(primitive), _, _) => {
                let expected = match primitive {
                    "string" => "string",
                    "long" => "int64",
                    "int" => "int32",
                    "boolean" => "boolean",
                    other => panic!("no Connect type for {other}"),
                };
                assert_eq!(c["type"], expected, "{}", a["name"]);
                assert!(c.get("name").is_none(), "{}", a["name"]);
            }
            (None, Some("timestamp-millis"), _) => {
                assert_eq!(c["type"], "int64");
                assert_eq!(c["name"], "org.apache.kafka.connect.data.Timestamp");
            }
            (None, None, Some("map")) => {
                assert_eq!(t["values"], "long");
                assert_eq!(c["type"], "map");
                assert_eq!(c["keys"], required("string"));
                assert_eq!(c["values"], required("int64"));
            }
            other => panic!("{}: unmapped Avro type {other:?}", a["name"]),
        }
    }
}

/// `connect_json`: Connect's envelope, the schema file's schema and the record as payload.
#[test]
fn stats_connect_json_carries_the_schema_and_the_record() {
    let codec = Codec::fixed().expect("codec");
    let bytes = StatsFormat::ConnectJson
        .encode(&codec, &sample_window())
        .expect("connect json");
    let value: serde_json::Value = serde_json::from_slice(&bytes).expect("parse");
    let schema: serde_json::Value = serde_json::from_str(CONNECT_STATS_SCHEMA).expect("schema");
    assert_eq!(value["schema"], schema);
    let plain = StatsFormat::Json
        .encode(&codec, &sample_window())
        .expect("json");
    let plain: serde_json::Value = serde_json::from_slice(&plain).expect("parse");
    assert_eq!(value["payload"], plain);
    assert_eq!(value["payload"]["window_start"], 1_700_000_040_000_i64);
    assert_eq!(value.as_object().expect("object").len(), 2);
    let format: StatsFormat = serde_json::from_str("\"connect_json\"").expect("format");
    assert_eq!(format, StatsFormat::ConnectJson);
}

mod registry_protocol {
    //! The codec against an in-process server speaking the Confluent Schema Registry calls it
    //! uses, as documented (register, latest version, schema by id with 404 for an unknown id,
    //! HTTP Basic). The real registry's test is tests/tests/registry.rs.
    use super::*;
    use axum::extract::{Path, State};
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::{IntoResponse, Response};
    use axum::routing::{get, post};
    use axum::{Json, Router};
    use std::sync::{Arc, Mutex};

    #[derive(Default)]
    struct Registry {
        schemas: Vec<(String, String)>, // index + 1 = id: (subject, text as registered)
        /// The `Authorization` header every call must carry, when set.
        password: Option<String>,
    }
    type Shared = Arc<Mutex<Registry>>;

    fn authorised(reg: &Registry, headers: &HeaderMap) -> bool {
        reg.password.as_ref().is_none_or(|expected| {
            headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v == expected)
        })
    }

    async fn register(
        State(reg): State<Shared>,
        Path(subject): Path<String>,
        headers: HeaderMap,
        body: String,
    ) -> Response {
        let mut reg = reg.lock().expect("lock");
        if !authorised(&reg, &headers) {
            return StatusCode::UNAUTHORIZED.into_response();
        }
        let body: serde_json::Value = serde_json::from_str(&body).expect("body");
        let schema = body["schema"].as_str().expect("schema").to_string();
        let id = match reg.schemas.iter().position(|(_, s)| *s == schema) {
            Some(i) => i + 1,
            None => {
                reg.schemas.push((subject, schema));
                reg.schemas.len()
            }
        };
        Json(serde_json::json!({ "id": id })).into_response()
    }

    async fn latest(State(reg): State<Shared>, Path(subject): Path<String>) -> Response {
        let reg = reg.lock().expect("lock");
        match reg.schemas.iter().rposition(|(s, _)| *s == subject) {
            Some(i) => Json(serde_json::json!({
                "subject": subject, "version": 1, "id": i + 1, "schema": reg.schemas[i].1
            }))
            .into_response(),
            None => (
                StatusCode::NOT_FOUND,
                Json(serde_json::json!({"error_code": 40401})),
            )
                .into_response(),
        }
    }

    async fn schema(
        State(reg): State<Shared>,
        Path(id): Path<usize>,
        headers: HeaderMap,
    ) -> Response {
        let reg = reg.lock().expect("lock");
        if !authorised(&reg, &headers) {
            return StatusCode::UNAUTHORIZED.into_response();
        }
        match id.checked_sub(1).and_then(|i| reg.schemas.get(i)) {
            Some((_, text)) => Json(serde_json::json!({ "schema": text })).into_response(),
            None => (
                StatusCode::NOT_FOUND,
                Json(serde_json::json!({"error_code": 40403})),
            )
                .into_response(),
        }
    }

    async fn serve(shared: Shared) -> String {
        let app = Router::new()
            .route("/subjects/{subject}/versions", post(register))
            .route("/subjects/{subject}/versions/latest", get(latest))
            .route("/schemas/ids/{id}", get(schema))
            .with_state(shared);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        url
    }

    fn topics() -> HashMap<RecordKind, String> {
        RecordKind::ALL
            .into_iter()
            .map(|k| (k, format!("t.{}", k.file().trim_end_matches(".avsc"))))
            .collect()
    }

    fn options(url: &str) -> RegistryOptions {
        RegistryOptions {
            url: url.into(),
            auto_register: true,
            timeout: std::time::Duration::from_secs(2),
            ..RegistryOptions::default()
        }
    }

    #[tokio::test]
    async fn schemas_are_registered_as_written_by_topic_and_ids_resolved_on_read() {
        let shared: Shared = Arc::default();
        let url = serve(shared.clone()).await;
        let writer = Codec::with_registry(&options(&url), &topics())
            .await
            .expect("registry codec");
        {
            let reg = shared.lock().expect("lock");
            let stats = &reg.schemas[writer.schema_id(RecordKind::GroupWindowCount) as usize - 1];
            // TopicNameStrategy, and the text as written: logical types and docs kept.
            assert_eq!(stats.0, "t.group_window_count-value");
            assert_eq!(stats.1, RecordKind::GroupWindowCount.schema_text());
            assert!(stats.1.contains("timestamp-millis"));
        }
        let bytes = writer.encode(&sample_dead_letter()).expect("encode");
        assert_eq!(
            frame_schema_id(&bytes).expect("id"),
            writer.schema_id(RecordKind::DeadLetter)
        );

        // Another build's writer schema (a field added with a default) under a new id: read.
        let v2 = next_version(RecordKind::ChatMessage);
        shared
            .lock()
            .expect("lock")
            .schemas
            .push(("t.clean_message-value".into(), v2.clone()));
        let v2_id = shared.lock().expect("lock").schemas.len() as u32;
        let v2_schema = Schema::parse_str(&v2).expect("v2");
        let mut value = apache_avro::to_value(sample_clean()).expect("value");
        if let apache_avro::types::Value::Record(fields) = &mut value {
            fields.push(("added_in_v2".into(), apache_avro::types::Value::Null));
        }
        let mut framed = vec![0];
        framed.extend(v2_id.to_be_bytes());
        framed.extend(
            apache_avro::to_avro_datum(&v2_schema, value.resolve(&v2_schema).expect("v2"))
                .expect("datum"),
        );
        let reader = Codec::with_registry(&options(&url), &topics())
            .await
            .expect("second codec");
        assert_eq!(
            reader.schema_id(RecordKind::DeadLetter),
            writer.schema_id(RecordKind::DeadLetter)
        );
        let back: ChatMessage = reader.decode_resolving(&framed).await.expect("v2 read");
        assert_eq!(back, sample_clean());
        // The same id again is not fetched again (the registry could be gone by now).
        assert_eq!(
            reader.decode::<ChatMessage>(&framed).expect("cached"),
            sample_clean()
        );

        // An id the registry does not know: the record's own error, so it is parked.
        let mut unknown = framed.clone();
        unknown[1..5].copy_from_slice(&999u32.to_be_bytes());
        reader
            .prepare(&unknown)
            .await
            .expect("a 404 is not the registry's failure");
        assert!(matches!(
            reader.decode::<ChatMessage>(&unknown),
            Err(CodecError::UnknownSchemaId(999))
        ));
        // The fixed-id codec does not know registry ids.
        let fixed = Codec::fixed().expect("fixed");
        assert!(matches!(
            fixed.decode_resolving::<DeadLetter>(&bytes).await,
            Err(CodecError::UnknownSchemaId(_))
        ));
    }

    #[tokio::test]
    async fn without_auto_register_the_latest_version_is_written_and_must_fit() {
        let shared: Shared = Arc::default();
        let url = serve(shared.clone()).await;
        let manual = RegistryOptions {
            auto_register: false,
            subject_strategy: SubjectStrategy::Record,
            ..options(&url)
        };
        // Nothing registered: a configuration error naming the subject.
        let e = Codec::with_registry(&manual, &HashMap::new())
            .await
            .expect_err("nothing registered")
            .to_string();
        assert!(
            e.contains("io.wxstream.v1.RawBatch") && e.contains("auto_register"),
            "{e}"
        );

        // Registered by an operator, the stats subject at a newer version (a field with a
        // default): written with that id and schema, the new field at its default.
        {
            let mut reg = shared.lock().expect("lock");
            for kind in RecordKind::ALL {
                reg.schemas
                    .push((kind.subject().into(), kind.schema_text().into()));
            }
            reg.schemas.push((
                RecordKind::GroupWindowCount.subject().into(),
                next_version(RecordKind::GroupWindowCount),
            ));
        }
        let codec = Codec::with_registry(&manual, &HashMap::new())
            .await
            .expect("latest versions");
        assert_eq!(codec.schema_id(RecordKind::GroupWindowCount), 5);
        let bytes = codec.encode(&sample_window()).expect("encode as v2");
        assert_eq!(frame_schema_id(&bytes).expect("id"), 5);
        let v2 = Schema::parse_str(&next_version(RecordKind::GroupWindowCount)).expect("v2");
        let mut datum = &bytes[FRAME_HEADER_LEN..];
        let value = apache_avro::from_avro_datum(&v2, &mut datum, None).expect("v2 datum");
        let apache_avro::types::Value::Record(fields) = value else {
            panic!("record")
        };
        assert_eq!(fields.last().expect("field").0, "added_in_v2");
        // v2's whole datum: this build's record and one byte more, the added field's null
        // branch. (A writer going by the struct's order stops short of it, and apache-avro's
        // reader, which takes a union cut short as null, would not notice.)
        let v1_len = Codec::fixed()
            .expect("fixed")
            .encode(&sample_window())
            .expect("v1")
            .len();
        assert!(
            datum.is_empty(),
            "{} bytes left after v2's datum",
            datum.len()
        );
        assert_eq!(bytes.len(), v1_len + 1, "v2's datum holds the added field");
        assert_eq!(
            codec.decode::<GroupWindowCount>(&bytes).expect("read"),
            sample_window()
        );

        // A latest version that cannot hold this build's records (a field without a default).
        let mut narrow: serde_json::Value =
            serde_json::from_str(RecordKind::RawBatch.schema_text()).expect("schema");
        narrow["fields"]
            .as_array_mut()
            .expect("fields")
            .push(serde_json::json!({"name": "tenant", "type": "string"}));
        shared
            .lock()
            .expect("lock")
            .schemas
            .push((RecordKind::RawBatch.subject().into(), narrow.to_string()));
        let e = Codec::with_registry(&manual, &HashMap::new())
            .await
            .expect_err("cannot hold")
            .to_string();
        assert!(
            e.contains("this build's io.wxstream.v1.RawBatch records cannot be read"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn credentials_are_sent_and_a_registry_that_cannot_answer_is_no_bad_record() {
        let shared: Shared = Arc::new(Mutex::new(Registry {
            password: Some("Basic d3g6aHVudGVyMg==".into()), // wx:hunter2
            ..Registry::default()
        }));
        let url = serve(shared.clone()).await;
        let refused = Codec::with_registry(&options(&url), &topics())
            .await
            .expect_err("no credentials")
            .to_string();
        assert!(refused.contains("401"), "{refused}");
        let with_credentials = RegistryOptions {
            basic_auth: Some(("wx".into(), "hunter2".into())),
            ..options(&url)
        };
        let codec = Codec::with_registry(&with_credentials, &topics())
            .await
            .expect("authenticated");
        // A new id while the password no longer works: an error to retry, never Ok (which
        // would park the record as undecodable).
        shared.lock().expect("lock").password = Some("Basic changed".into());
        let mut framed = codec.encode(&sample_clean()).expect("encode");
        framed[1..5].copy_from_slice(&77u32.to_be_bytes());
        let e = codec.prepare(&framed).await.expect_err("refused");
        assert!(matches!(e, CodecError::Registry { .. }), "{e}");
        assert!(!e.to_string().contains("hunter2"), "{e}");
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

/// What apache-avro's generic path reads from a clean message's datum (no resolution).
fn generic_chat_message(codec: &Codec, datum: &[u8]) -> Result<ChatMessage, String> {
    let schema = &codec.readers[&RecordKind::ChatMessage];
    let mut bytes = datum;
    let value =
        apache_avro::from_avro_datum(schema, &mut bytes, None).map_err(|e| e.to_string())?;
    apache_avro::from_value(&value).map_err(|e| e.to_string())
}

fn random_chat_message(rng: &mut impl rand::Rng) -> ChatMessage {
    let text = |rng: &mut dyn rand::RngCore| -> String {
        let n = rand::Rng::gen_range(rng, 0..40);
        (0..n)
            .map(|_| {
                ['a', 'Z', '0', ' ', '你', '😀', '"', '\\', '\n'][rand::Rng::gen_range(rng, 0..9)]
            })
            .collect()
    };
    ChatMessage {
        msgid: text(rng),
        corp_id: text(rng),
        action: text(rng),
        from: text(rng),
        tolist: (0..rng.gen_range(0..4)).map(|_| text(rng)).collect(),
        roomid: text(rng),
        msgtime: rng.r#gen(),
        msgtype: text(rng),
        payload_json: text(rng),
        extra_json: rng.gen_bool(0.5).then(|| text(rng)),
        text: rng.gen_bool(0.5).then(|| text(rng)),
        recalled_msgid: rng.gen_bool(0.5).then(|| text(rng)),
        conversation_id: text(rng),
        is_external: rng.r#gen(),
        publickey_ver: rng.gen_bool(0.5).then(|| rng.r#gen()),
        source: SourceCoordinates {
            topic: text(rng),
            partition: rng.r#gen(),
            offset: rng.r#gen(),
            seq: rng.gen_bool(0.5).then(|| rng.r#gen()),
        },
        decrypted_at: rng.r#gen(),
    }
}

#[test]
fn the_direct_decoding_equals_the_generic_one() {
    use rand::SeedableRng;
    let codec = Codec::fixed().expect("codec");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(31);
    let mut samples = vec![sample_clean()];
    samples.extend((0..300).map(|_| random_chat_message(&mut rng)));
    let mut broken_compared = 0;
    for message in &samples {
        let framed = codec.encode(message).expect("encode");
        let (_, datum) = framing::split(&framed).expect("frame");
        assert_eq!(crate::direct::chat_message(datum).as_ref(), Ok(message));
        assert_eq!(generic_chat_message(&codec, datum).as_ref(), Ok(message));
        assert_eq!(
            codec.decode::<ChatMessage>(&framed).as_ref().ok(),
            Some(message)
        );
        // Broken bytes: cut short anywhere, or one byte changed: the same outcome both ways.
        let mut variants: Vec<Vec<u8>> = (0..datum.len()).map(|n| datum[..n].to_vec()).collect();
        for i in (0..datum.len()).step_by(3) {
            for byte in [0x00, 0x01, 0x7f, 0x80, 0xff, datum[i] ^ 0x02] {
                let mut v = datum.to_vec();
                v[i] = byte;
                variants.push(v);
            }
        }
        for v in variants {
            let direct = crate::direct::chat_message(&v);
            let generic = generic_chat_message(&codec, &v);
            assert_eq!(
                direct.as_ref().ok(),
                generic.as_ref().ok(),
                "direct {direct:?} against generic {generic:?}"
            );
            broken_compared += 1;
        }
    }
    assert!(broken_compared > 10_000, "{broken_compared}");
}
