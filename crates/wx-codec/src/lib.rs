//! Avro schemas of wxstream's four record kinds and their framing on the wire.
//!
//! # Layout
//! - `records`: Rust mirrors of `schemas/*.avsc` (raw batch, clean message, dead letter, group
//!   window count).
//! - `framing`: the Confluent wire format (magic byte 0, 4-byte big-endian schema id, Avro
//!   binary datum).
//! - `registry`: a small Confluent Schema Registry client used when a registry URL is configured
//!   (subjects by topic or record name, registration or the latest version, ids resolved on read).
//! - [`Codec`]: encodes a record with its writer schema and decodes with the writer schema the
//!   id names, resolved against the reader schema this build knows (schema evolution).
//!
//! # Invariants
//! The schemas are the files in `schemas/`, compiled in; the fixed id table is
//! `schemas/ids.json`. This crate knows nothing of Kafka, topics or stages: it turns records into
//! bytes and back.

mod direct;
mod framing;
pub mod media;
pub mod months;
mod records;
mod redact;
mod registry;

use std::collections::HashMap;
use std::sync::RwLock;

use apache_avro::Schema;
use serde::Deserialize;

pub use framing::{FRAME_HEADER_LEN, MAGIC_BYTE, frame_schema_id};
pub use records::{
    AvroRecord, CallbackEnvelope, ChatMessage, DeadLetter, EncryptedItem, GroupWindowCount,
    ParkedFrom, RawBatch, SourceCoordinates, SourceKind, message_identity,
};

/// Milliseconds since the Unix epoch, the unit of every time field of the records
/// (`decrypted_at`, `first_failed_at`, `emitted_at`, ...). The one wall clock of the workspace.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
pub use redact::redact_urls;
pub use registry::{Fetched, RegistryClient, RegistryOptions, SubjectStrategy};

/// The four record kinds, one schema each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordKind {
    RawBatch,
    ChatMessage,
    DeadLetter,
    GroupWindowCount,
}

impl RecordKind {
    pub const ALL: [RecordKind; 4] = [
        RecordKind::RawBatch,
        RecordKind::ChatMessage,
        RecordKind::DeadLetter,
        RecordKind::GroupWindowCount,
    ];

    /// The schema file in `schemas/`.
    pub fn file(self) -> &'static str {
        match self {
            RecordKind::RawBatch => "raw_batch.avsc",
            RecordKind::ChatMessage => "clean_message.avsc",
            RecordKind::DeadLetter => "dead_letter.avsc",
            RecordKind::GroupWindowCount => "group_window_count.avsc",
        }
    }

    /// The schema text, compiled in from `schemas/`.
    pub fn schema_text(self) -> &'static str {
        match self {
            RecordKind::RawBatch => include_str!("../../../schemas/raw_batch.avsc"),
            RecordKind::ChatMessage => include_str!("../../../schemas/clean_message.avsc"),
            RecordKind::DeadLetter => include_str!("../../../schemas/dead_letter.avsc"),
            RecordKind::GroupWindowCount => {
                include_str!("../../../schemas/group_window_count.avsc")
            }
        }
    }

    /// The fully qualified record name (the registry subject under RecordNameStrategy).
    pub fn subject(self) -> &'static str {
        match self {
            RecordKind::RawBatch => "io.wxstream.v1.RawBatch",
            RecordKind::ChatMessage => "io.wxstream.v1.ChatMessage",
            RecordKind::DeadLetter => "io.wxstream.v1.DeadLetter",
            RecordKind::GroupWindowCount => "io.wxstream.v1.GroupWindowCount",
        }
    }

    fn from_subject(subject: &str) -> Option<RecordKind> {
        Self::ALL.into_iter().find(|k| k.subject() == subject)
    }
}

/// Errors of encoding and decoding. None of them carries record content.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("schema {file} does not parse: {reason}")]
    Schema { file: String, reason: String },
    #[error("schema id table schemas/ids.json is invalid: {0}")]
    IdTable(String),
    #[error("record does not match schema {subject}: {reason}")]
    Encode {
        subject: &'static str,
        reason: String,
    },
    #[error("frame too short ({len} bytes) or magic byte is not 0")]
    BadFrame { len: usize },
    #[error(
        "unknown schema id {0}: not in schemas/ids.json, and not a wxstream schema in the registry if one is configured"
    )]
    UnknownSchemaId(u32),
    #[error("schema id {id} is a {found} schema, expected {expected}")]
    WrongKind {
        id: u32,
        found: &'static str,
        expected: &'static str,
    },
    #[error("datum does not decode with schema id {id}: {reason}")]
    Decode { id: u32, reason: String },
    #[error("schema registry at {url}: {reason}")]
    Registry { url: String, reason: String },
}

/// What an Avro error may say outside this crate: its opening words, never the value it was
/// about. `apache-avro`'s messages quote whole values (`Value String("...") does not match
/// ...`), and a message's text must not reach a log or a dead letter's cause through them.
fn without_values(e: &apache_avro::Error) -> String {
    let text = e.to_string();
    let words: String = text
        .chars()
        .take_while(|c| c.is_ascii_alphabetic() || matches!(c, ' ' | '-' | '_'))
        .take(80)
        .collect();
    let words = words.trim();
    if words.is_empty() {
        "the datum does not fit the schema".to_string()
    } else {
        words.to_string()
    }
}

/// The name of the first field of a record value that its schema refuses (an encode error says
/// the schema and the field, never the value).
fn failing_field(value: &apache_avro::types::Value, schema: &Schema) -> Option<String> {
    let (apache_avro::types::Value::Record(fields), Schema::Record(record)) = (value, schema)
    else {
        return None;
    };
    fields.iter().find_map(|(name, field_value)| {
        let field = record.fields.iter().find(|f| &f.name == name)?;
        field_value
            .clone()
            .resolve(&field.schema)
            .is_err()
            .then(|| name.clone())
    })
}

#[derive(Deserialize)]
struct IdTable {
    schemas: Vec<IdEntry>,
}

#[derive(Deserialize)]
struct IdEntry {
    id: u32,
    subject: String,
    version: u32,
    file: String,
}

/// A writer schema known by id.
#[derive(Debug, Clone)]
struct WriterSchema {
    kind: RecordKind,
    schema: Schema,
    /// Whether this is exactly the schema its kind is read with (every attribute, logical
    /// types included): such data is decoded without resolution, which costs as much again as
    /// the decoding (a profile of the sink and stats stages).
    same_as_reader: bool,
}

impl WriterSchema {
    fn new(kind: RecordKind, schema: Schema, reader: &Schema) -> WriterSchema {
        let same_as_reader = serde_json::to_value(&schema)
            .ok()
            .is_some_and(|written| serde_json::to_value(reader).is_ok_and(|read| read == written));
        WriterSchema {
            kind,
            schema,
            same_as_reader,
        }
    }
}

/// Encodes and decodes the four record kinds in the Confluent wire format.
///
/// Cheap to share behind an `Arc`; decoding is `&self` and thread-safe.
#[derive(Debug)]
pub struct Codec {
    /// The id and schema records of each kind are written with: this build's schema, or with a
    /// registry and `auto_register: false`, the subject's latest registered version.
    current: HashMap<RecordKind, (u32, Schema)>,
    /// The reader schema of each kind: this build's, compiled in.
    readers: HashMap<RecordKind, Schema>,
    /// The registry subject of each kind (its record name without a registry).
    subjects: HashMap<RecordKind, String>,
    /// Writer schemas by id: the fixed table, plus ids fetched from the registry.
    writers: RwLock<HashMap<u32, WriterSchema>>,
    /// Ids the registry said it does not know (or knows as no wxstream record), and when: not
    /// asked again for [`UNKNOWN_ID_TTL`] (a burst of corrupt frames is not a burst of calls;
    /// an id registered meanwhile is found after it). At most [`UNKNOWN_IDS_KEPT`].
    unknown: RwLock<HashMap<u32, std::time::Instant>>,
    registry: Option<RegistryClient>,
    /// Tests only: the faults injected per kind, each after a number of successes.
    #[cfg(feature = "fault-injection")]
    faults: std::sync::Mutex<HashMap<(RecordKind, Fault), u64>>,
}

/// How long an id the registry did not know is not asked for again.
pub const UNKNOWN_ID_TTL: std::time::Duration = std::time::Duration::from_secs(60);
/// How many such ids are remembered (the oldest forgotten beyond).
const UNKNOWN_IDS_KEPT: usize = 10_000;

/// A fault a test injects into a codec (feature `fault-injection`, never in a release build).
#[cfg(feature = "fault-injection")]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    /// Encoding fails, as with a schema this build cannot satisfy.
    FailEncode,
    /// Decoding panics, as a bug in a stage's job would.
    PanicDecode,
}

/// The most one length in a datum may ask `apache-avro` to allocate for (bytes of a string, or
/// items of an array or map): no record is larger than the topics' 8 MiB. Its default, 512 MiB
/// of *items*, let a corrupt array length reserve 43 GB and abort the process (found by the
/// `raw_batch` fuzz target; `fuzz/regressions/raw_batch/`). Process-wide: set by every codec
/// constructor before anything decodes.
pub const MAX_DECODE_ALLOCATION: usize = 8 * 1024 * 1024;

fn limit_allocations() {
    apache_avro::util::max_allocation_bytes(MAX_DECODE_ALLOCATION);
}

fn parse_schema(kind: RecordKind) -> Result<Schema, CodecError> {
    Schema::parse_str(kind.schema_text()).map_err(|e| CodecError::Schema {
        file: kind.file().to_string(),
        reason: e.to_string(),
    })
}

impl Codec {
    /// A codec using the fixed id table `schemas/ids.json` (no registry).
    pub fn fixed() -> Result<Codec, CodecError> {
        limit_allocations();
        let table: IdTable = serde_json::from_str(include_str!("../../../schemas/ids.json"))
            .map_err(|e| CodecError::IdTable(e.to_string()))?;
        let mut current = HashMap::new();
        let mut writers = HashMap::new();
        for kind in RecordKind::ALL {
            let schema = parse_schema(kind)?;
            // The newest version listed for a subject is the one this build writes.
            let entry = table
                .schemas
                .iter()
                .filter(|e| e.subject == kind.subject())
                .max_by_key(|e| e.version)
                .ok_or_else(|| CodecError::IdTable(format!("no id for {}", kind.subject())))?;
            if entry.file != kind.file() {
                return Err(CodecError::IdTable(format!(
                    "newest entry of {} names {}, expected {}",
                    kind.subject(),
                    entry.file,
                    kind.file()
                )));
            }
            writers.insert(entry.id, WriterSchema::new(kind, schema.clone(), &schema));
            current.insert(kind, (entry.id, schema));
        }
        for entry in &table.schemas {
            if RecordKind::from_subject(&entry.subject).is_none() {
                return Err(CodecError::IdTable(format!(
                    "unknown subject {}",
                    entry.subject
                )));
            }
        }
        let readers = current
            .iter()
            .map(|(kind, (_, schema))| (*kind, schema.clone()))
            .collect();
        Ok(Codec {
            current,
            readers,
            subjects: RecordKind::ALL
                .into_iter()
                .map(|k| (k, k.subject().to_string()))
                .collect(),
            writers: RwLock::new(writers),
            unknown: RwLock::default(),
            registry: None,
            #[cfg(feature = "fault-injection")]
            faults: Default::default(),
        })
    }

    /// A codec that writes with a Confluent-compatible schema registry's ids. Each kind's subject
    /// is `<topic>-value` (TopicNameStrategy, `topics` naming each kind's topic) or its record
    /// name; with `auto_register` this build's schemas are registered as written (docs, defaults
    /// and logical types kept), otherwise each subject's latest version is written with, and it
    /// must read this build's records (else a configuration error). Ids met while decoding are
    /// fetched once ([`Codec::prepare`]).
    pub async fn with_registry(
        options: &RegistryOptions,
        topics: &HashMap<RecordKind, String>,
    ) -> Result<Codec, CodecError> {
        limit_allocations();
        let registry = RegistryClient::new(options)?;
        let mut current = HashMap::new();
        let mut readers = HashMap::new();
        let mut subjects = HashMap::new();
        let mut writers = HashMap::new();
        for kind in RecordKind::ALL {
            let schema = parse_schema(kind)?;
            let subject = match options.subject_strategy {
                SubjectStrategy::Record => kind.subject().to_string(),
                SubjectStrategy::Topic => {
                    let topic = topics.get(&kind).ok_or_else(|| {
                        registry.error(format!("no topic is known for {}", kind.subject()))
                    })?;
                    format!("{topic}-value")
                }
            };
            let (id, writer) = if options.auto_register {
                let id = registry.register(&subject, kind.schema_text()).await?;
                (id, schema.clone())
            } else {
                let (id, text) = registry.latest(&subject).await?;
                let registered = Schema::parse_str(&text).map_err(|e| CodecError::Schema {
                    file: format!("{subject} (latest, id {id})"),
                    reason: e.to_string(),
                })?;
                // Records are built with this build's schema and written as the registered one,
                // and this build's stages read them back: both ways must resolve.
                apache_avro::schema_compatibility::SchemaCompatibility::mutual_read(
                    &schema,
                    &registered,
                )
                .map_err(|e| {
                    registry.error(format!(
                        "the latest schema of {subject} (id {id}) and this build's {} records cannot be read one as the other: {e}",
                        kind.subject()
                    ))
                })?;
                (id, registered)
            };
            writers.insert(id, WriterSchema::new(kind, writer.clone(), &schema));
            current.insert(kind, (id, writer));
            readers.insert(kind, schema);
            subjects.insert(kind, subject);
        }
        Ok(Codec {
            current,
            readers,
            subjects,
            writers: RwLock::new(writers),
            unknown: RwLock::default(),
            registry: Some(registry),
            #[cfg(feature = "fault-injection")]
            faults: Default::default(),
        })
    }

    /// The registry subject of `kind` (its record name when there is no registry).
    pub fn subject_of(&self, kind: RecordKind) -> &str {
        &self.subjects[&kind]
    }

    /// The id this codec writes records of `kind` with.
    pub fn schema_id(&self, kind: RecordKind) -> u32 {
        self.current[&kind].0
    }

    /// Encodes one record: frame header + Avro binary datum.
    pub fn encode<T: AvroRecord>(&self, record: &T) -> Result<Vec<u8>, CodecError> {
        let (id, schema) = &self.current[&T::KIND];
        let err = |reason: String| CodecError::Encode {
            subject: T::KIND.subject(),
            reason,
        };
        #[cfg(feature = "fault-injection")]
        if self.injected(T::KIND, Fault::FailEncode) {
            return Err(err("injected encode failure (fault-injection)".into()));
        }
        let record = record.bounded();
        // With this build's own schema, written straight from the record: no Value tree, no
        // resolution (a fifth of the decrypt stage's own CPU went to them); the same bytes as
        // the path below (tests::the_direct_encoding_equals_the_value_path), which then runs
        // only when this one refuses the record, to name the field the schema refuses. Any
        // other writer schema (a registry's latest version, `auto_register: false`) needs the
        // resolution: fields by name, defaults filled, enum symbols by name; apache-avro's
        // direct writer goes by the struct's order and would write other bytes without error.
        if self.writes_own_schema(*id) {
            let mut out = Vec::with_capacity(256);
            framing::write_header(&mut out, *id);
            if apache_avro::write_avro_datum_ref(schema, &*record, &mut out).is_ok() {
                return Ok(out);
            }
        }
        Self::encode_by_value(*id, schema, &*record).map_err(err)
    }

    /// Whether the schema of `id` is this build's own schema of its kind, in every attribute.
    fn writes_own_schema(&self, id: u32) -> bool {
        self.writers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .is_some_and(|w| w.same_as_reader)
    }

    /// Encodes through a Value resolved against the schema (the error names the field).
    fn encode_by_value<T: AvroRecord>(
        id: u32,
        schema: &Schema,
        record: &T,
    ) -> Result<Vec<u8>, String> {
        let value = apache_avro::to_value(record).map_err(|e| without_values(&e))?;
        let value = value.resolve(schema).map_err(|e| {
            // Only on failure: the value again, to name the field the schema refuses.
            let field = apache_avro::to_value(record)
                .ok()
                .and_then(|v| failing_field(&v, schema));
            match field {
                Some(field) => format!("field `{field}`: {}", without_values(&e)),
                None => without_values(&e),
            }
        })?;
        let datum = apache_avro::to_avro_datum(schema, value).map_err(|e| without_values(&e))?;
        let mut out = Vec::with_capacity(FRAME_HEADER_LEN + datum.len());
        framing::write_header(&mut out, id);
        out.extend_from_slice(&datum);
        Ok(out)
    }

    /// Decodes one framed record. Fails with [`CodecError::UnknownSchemaId`] for an id that is
    /// neither in the fixed table nor already fetched; call [`Codec::prepare`] first when a
    /// registry is configured (or use [`Codec::decode_resolving`]).
    pub fn decode<T: AvroRecord>(&self, bytes: &[u8]) -> Result<T, CodecError> {
        #[cfg(feature = "fault-injection")]
        if self.injected(T::KIND, Fault::PanicDecode) {
            panic!("injected decode panic (fault-injection)");
        }
        let (id, mut datum) = framing::split(bytes)?;
        let writers = self.writers.read().unwrap_or_else(|p| p.into_inner());
        let writer = writers.get(&id).ok_or(CodecError::UnknownSchemaId(id))?;
        if writer.kind != T::KIND {
            return Err(CodecError::WrongKind {
                id,
                found: writer.kind.subject(),
                expected: T::KIND.subject(),
            });
        }
        let reader = &self.readers[&T::KIND];
        let err = |reason: String| CodecError::Decode { id, reason };
        if writer.same_as_reader
            && let Some(record) = T::decode_direct(datum)
        {
            return record.map_err(err);
        }
        let reader = (!writer.same_as_reader).then_some(reader);
        let value = apache_avro::from_avro_datum(&writer.schema, &mut datum, reader)
            .map_err(|e| err(without_values(&e)))?;
        apache_avro::from_value::<T>(&value).map_err(|e| err(without_values(&e)))
    }

    /// Makes the writer schema of a frame known before [`Codec::decode`], fetching its id from the
    /// registry when one is configured and the id is new. `Ok` also when there is nothing to
    /// fetch or the registry does not know the id (or knows it as no wxstream record): `decode`
    /// then fails with the record's own error and the record is parked. An error only when the
    /// registry cannot answer (down, timed out, refusing the credentials): the caller retries
    /// and parks nothing.
    pub async fn prepare(&self, bytes: &[u8]) -> Result<(), CodecError> {
        let Some(registry) = &self.registry else {
            return Ok(());
        };
        let Ok((id, _)) = framing::split(bytes) else {
            return Ok(());
        };
        let known = |codec: &Codec| {
            codec
                .writers
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .contains_key(&id)
                || codec
                    .unknown
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&id)
                    .is_some_and(|at| at.elapsed() < UNKNOWN_ID_TTL)
        };
        if known(self) {
            return Ok(());
        }
        let text = match registry.fetch(id).await? {
            Fetched::Schema(text) => text,
            Fetched::Unknown => {
                self.forget(id);
                return Ok(());
            }
        };
        // The kind is the schema's record name, whatever the subject strategy of its writer.
        let kind = Schema::parse_str(&text)
            .ok()
            .and_then(|schema| match schema {
                Schema::Record(record) => RecordKind::from_subject(&record.name.fullname(None)),
                _ => None,
            });
        match kind {
            Some(kind) => self.add_writer_schema(id, kind, &text),
            None => {
                self.forget(id);
                Ok(())
            }
        }
    }

    /// Remembers an id as no wxstream schema, for [`UNKNOWN_ID_TTL`].
    fn forget(&self, id: u32) {
        let mut unknown = self.unknown.write().unwrap_or_else(|p| p.into_inner());
        if unknown.len() >= UNKNOWN_IDS_KEPT {
            unknown.retain(|_, at| at.elapsed() < UNKNOWN_ID_TTL);
            if unknown.len() >= UNKNOWN_IDS_KEPT {
                unknown.clear();
            }
        }
        unknown.insert(id, std::time::Instant::now());
    }

    /// [`Codec::prepare`] then [`Codec::decode`].
    pub async fn decode_resolving<T: AvroRecord>(&self, bytes: &[u8]) -> Result<T, CodecError> {
        self.prepare(bytes).await?;
        self.decode(bytes)
    }

    /// Whether ids are resolved with a registry (then [`Codec::prepare`] may have to wait).
    pub fn has_registry(&self) -> bool {
        self.registry.is_some()
    }

    /// Tests only (feature `fault-injection`, never in a release build): after `successes` more
    /// encodes of `kind`, every encode of it fails, as a schema this build cannot satisfy
    /// would. The stage tests use it to show a failing encode never lets an offset be finished.
    #[cfg(feature = "fault-injection")]
    pub fn fail_encoding_after(&self, kind: RecordKind, successes: u64) {
        self.inject(kind, Fault::FailEncode, successes);
    }

    /// Tests only (feature `fault-injection`): after `successes` more decodes of `kind`, every
    /// decode of it panics, as a bug in a stage's job would. The stage tests use it to show a
    /// panicking job stops its stage visibly with its record unfinished.
    #[cfg(feature = "fault-injection")]
    pub fn panic_decoding_after(&self, kind: RecordKind, successes: u64) {
        self.inject(kind, Fault::PanicDecode, successes);
    }

    #[cfg(feature = "fault-injection")]
    fn inject(&self, kind: RecordKind, fault: Fault, successes: u64) {
        self.faults
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((kind, fault), successes);
    }

    /// Whether an injected fault fires now (counting down its successes first).
    #[cfg(feature = "fault-injection")]
    fn injected(&self, kind: RecordKind, fault: Fault) -> bool {
        let mut faults = self.faults.lock().unwrap_or_else(|p| p.into_inner());
        match faults.get_mut(&(kind, fault)) {
            Some(0) => true,
            Some(left) => {
                *left -= 1;
                false
            }
            None => false,
        }
    }

    /// Registers an extra writer schema under `id` (for tests of schema evolution and for
    /// operators who load older schema versions from files).
    pub fn add_writer_schema(
        &self,
        id: u32,
        kind: RecordKind,
        schema_text: &str,
    ) -> Result<(), CodecError> {
        let schema = Schema::parse_str(schema_text).map_err(|e| CodecError::Schema {
            file: format!("writer schema id {id}"),
            reason: e.to_string(),
        })?;
        self.writers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, WriterSchema::new(kind, schema, &self.readers[&kind]));
        Ok(())
    }
}

/// How the stats topic is written: the project's Avro framing; plain JSON for BI tools that do
/// not speak Avro; or Kafka Connect's JSON with the schema embedded (`{"schema": ..,
/// "payload": ..}`, [`CONNECT_STATS_SCHEMA`]), which Connect's `JsonConverter` turns into a
/// typed Struct for sink connectors (a JDBC sink needs one) without a registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StatsFormat {
    #[default]
    Avro,
    Json,
    ConnectJson,
}

/// The Kafka Connect schema of a window count (`schemas/group_window_count.connect.json`): the
/// Avro schema's fields, names, order and docs, in Connect's types (`timestamp-millis` is
/// Connect's `Timestamp`, an `int64` of epoch milliseconds). A unit test keeps the two equal.
pub const CONNECT_STATS_SCHEMA: &str =
    include_str!("../../../schemas/group_window_count.connect.json");

impl StatsFormat {
    /// Encodes a window count in this format. The JSON forms have the schema's field names.
    pub fn encode(self, codec: &Codec, record: &GroupWindowCount) -> Result<Vec<u8>, CodecError> {
        let json_error = |e: serde_json::Error| CodecError::Encode {
            subject: RecordKind::GroupWindowCount.subject(),
            reason: e.to_string(),
        };
        match self {
            StatsFormat::Avro => codec.encode(record),
            StatsFormat::Json => serde_json::to_vec(record).map_err(json_error),
            StatsFormat::ConnectJson => {
                // The envelope by hand around the compacted schema: the schema is serialised
                // once per process, not once per record.
                let schema = connect_stats_schema();
                let mut out = Vec::with_capacity(schema.len() + 320);
                out.extend_from_slice(b"{\"schema\":");
                out.extend_from_slice(schema.as_bytes());
                out.extend_from_slice(b",\"payload\":");
                serde_json::to_writer(&mut out, record).map_err(json_error)?;
                out.push(b'}');
                Ok(out)
            }
        }
    }
}

/// [`CONNECT_STATS_SCHEMA`] on one line (compacted once per process).
fn connect_stats_schema() -> &'static str {
    static COMPACT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    COMPACT.get_or_init(|| {
        serde_json::from_str::<serde_json::Value>(CONNECT_STATS_SCHEMA)
            .map(|v| v.to_string())
            .unwrap_or_else(|_| CONNECT_STATS_SCHEMA.to_string())
    })
}

#[cfg(test)]
mod tests;
