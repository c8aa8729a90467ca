//! Schema evolution, checked by Apache Avro's Java implementation (`scripts/schema-check`, which
//! runs `org.apache.avro.SchemaCompatibility` on every `schemas/*.avsc` against its newest
//! released version in `schemas/history/`, BACKWARD and FORWARD):
//! - the repository's schemas pass;
//! - a schema that drops a field without a default fails, naming the field;
//! - a schema that adds a field with a default passes, and data written with it is read by this
//!   build's codec, as data written by this build is read with it (apache-avro, the Rust
//!   implementation the stages decode with).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use apache_avro::Schema;
use apache_avro::types::Value;
use serde_json::json;
use wx_codec::{Codec, FRAME_HEADER_LEN, GroupWindowCount, RecordKind};
use wxstream_tests::repo_root;

/// Runs `scripts/schema-check DIR`: whether it passed, and what it printed.
fn check(dir: &Path) -> (bool, String) {
    let out = Command::new(repo_root().join("scripts/schema-check"))
        .arg(dir)
        .output()
        .expect("run scripts/schema-check");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // A checker that could not run (no Java, no jars) is not a verdict.
    assert!(
        out.status.code() == Some(0) || out.status.code() == Some(1),
        "scripts/schema-check did not run: {:?}\n{text}",
        out.status
    );
    (out.status.success(), text)
}

/// A copy of schemas/ (the schemas and their history) in which `edit` changed the stats schema.
fn edited_copy(edit: impl FnOnce(&mut serde_json::Value)) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("tmp");
    let copy = Command::new("cp")
        .arg("-r")
        .arg(repo_root().join("schemas/."))
        .arg(dir.path())
        .status()
        .expect("cp");
    assert!(copy.success());
    let file = dir.path().join(RecordKind::GroupWindowCount.file());
    let mut schema: serde_json::Value =
        serde_json::from_str(RecordKind::GroupWindowCount.schema_text()).expect("schema");
    edit(&mut schema);
    let text = serde_json::to_string_pretty(&schema).expect("json");
    std::fs::write(&file, &text).expect("write");
    (dir, text)
}

fn window() -> GroupWindowCount {
    GroupWindowCount {
        corp_id: "ww1".into(),
        group_id: "wr_room".into(),
        group_kind: "room".into(),
        window_size_ms: 60_000,
        window_start: 1_700_000_040_000,
        window_end: 1_700_000_100_000,
        total: 42,
        by_msgtype: BTreeMap::from([("text".to_string(), 40), ("revoke".to_string(), 2)]),
        is_final: true,
        revision: 0,
        emitted_at: 1_700_000_200_000,
    }
}

#[test]
fn the_repositorys_schemas_are_compatible_with_their_released_versions() {
    let (ok, text) = check(&repo_root().join("schemas"));
    assert!(ok, "{text}");
    for kind in RecordKind::ALL {
        let stem = kind.file().trim_end_matches(".avsc");
        assert!(text.contains(&format!("{stem}: OK against v")), "{text}");
    }
}

#[test]
fn dropping_a_field_without_a_default_fails_the_check() {
    let (dir, _) = edited_copy(|schema| {
        schema["fields"]
            .as_array_mut()
            .expect("fields")
            .retain(|f| f["name"] != "total");
    });
    let (ok, text) = check(dir.path());
    assert!(!ok, "dropping `total` passed:\n{text}");
    // An old reader has no default for the field the new writer no longer writes.
    assert!(
        text.contains(
            "group_window_count: FORWARD incompatible with v1: READER_FIELD_MISSING_DEFAULT_VALUE"
        ),
        "{text}"
    );
    assert!(text.contains("total"), "{text}");
    // The other schemas are untouched and still pass.
    assert!(text.contains("clean_message: OK against v1"), "{text}");
}

#[test]
fn a_field_added_without_a_default_fails_the_check() {
    let (dir, _) = edited_copy(|schema| {
        schema["fields"]
            .as_array_mut()
            .expect("fields")
            .push(json!({"name": "tenant", "type": "string"}));
    });
    let (ok, text) = check(dir.path());
    assert!(!ok, "{text}");
    // A new reader has no default for the field old data lacks.
    assert!(
        text.contains("BACKWARD incompatible with v1: READER_FIELD_MISSING_DEFAULT_VALUE"),
        "{text}"
    );
}

#[test]
fn a_field_added_with_a_default_passes_the_check_and_reads_both_ways() {
    let (dir, v2) = edited_copy(|schema| {
        schema["fields"].as_array_mut().expect("fields").push(
            json!({"name": "tenant", "type": "string", "default": "main", "doc": "added in v2"}),
        );
    });
    let (ok, text) = check(dir.path());
    assert!(ok, "{text}");
    assert!(
        text.contains("group_window_count: OK against v1 (changed)"),
        "{text}"
    );

    let codec = Codec::fixed().expect("codec");
    let v1 = Schema::parse_str(RecordKind::GroupWindowCount.schema_text()).expect("v1");
    let v2_schema = Schema::parse_str(&v2).expect("v2");

    // Written with v2 (the new field set), read by this build (v1): the record, field dropped.
    codec
        .add_writer_schema(2004, RecordKind::GroupWindowCount, &v2)
        .expect("v2 writer");
    let mut value = apache_avro::to_value(window()).expect("value");
    let Value::Record(fields) = &mut value else {
        panic!("not a record")
    };
    fields.push(("tenant".into(), Value::String("acme".into())));
    let value = value.resolve(&v2_schema).expect("v2 value");
    let mut framed = vec![0, 0, 0, 0x07, 0xD4]; // id 2004
    framed.extend(apache_avro::to_avro_datum(&v2_schema, value).expect("v2 datum"));
    let read: GroupWindowCount = codec.decode(&framed).expect("v1 reads v2 data");
    assert_eq!(read, window());

    // Written by this build (v1), read with v2: the default fills the new field.
    let bytes = codec.encode(&window()).expect("encode");
    let mut datum = &bytes[FRAME_HEADER_LEN..];
    let read =
        apache_avro::from_avro_datum(&v1, &mut datum, Some(&v2_schema)).expect("v2 reads v1 data");
    let Value::Record(fields) = read else {
        panic!("not a record")
    };
    let tenant = fields
        .iter()
        .find(|(name, _)| name == "tenant")
        .expect("tenant");
    assert_eq!(tenant.1, Value::String("main".into()));
    let total = fields
        .iter()
        .find(|(name, _)| name == "total")
        .expect("total");
    assert_eq!(total.1, Value::Long(42));
}
