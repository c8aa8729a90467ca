//! Avro schemas of wxstream's four record kinds and their framing on the wire.
//!
//! # Layout
//! - `records`: Rust mirrors of `schemas/*.avsc` (raw batch, clean message, dead letter, group
//!   window count).
//! - `framing`: the Confluent wire format (magic byte 0, 4-byte big-endian schema id, Avro
//!   binary datum).
//! - `registry`: a small Confluent Schema Registry client used when a registry URL is configured.
//! - [`Codec`]: encodes a record with its writer schema and decodes with the writer schema the
//!   id names, resolved against the reader schema this build knows (schema evolution).
//!
//! # Invariants
//! The schemas are the files in `schemas/`, compiled in; the fixed id table is
//! `schemas/ids.json`. This crate knows nothing of Kafka, topics or stages: it turns records into
//! bytes and back.

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
pub use registry::RegistryClient;

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

    /// The fully qualified record name, which is also the registry subject
    /// (Confluent's RecordNameStrategy).
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
    #[error("unknown schema id {0}: not in schemas/ids.json and no registry configured")]
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
}

/// Encodes and decodes the four record kinds in the Confluent wire format.
///
/// Cheap to share behind an `Arc`; decoding is `&self` and thread-safe.
#[derive(Debug)]
pub struct Codec {
    /// Reader (and writer) schema of each kind, as compiled into this build.
    current: HashMap<RecordKind, (u32, Schema)>,
    /// Writer schemas by id: the fixed table, plus ids fetched from the registry.
    writers: RwLock<HashMap<u32, WriterSchema>>,
    registry: Option<RegistryClient>,
    /// Tests only: the faults injected per kind, each after a number of successes.
    #[cfg(feature = "fault-injection")]
    faults: std::sync::Mutex<HashMap<(RecordKind, Fault), u64>>,
}

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
            writers.insert(
                entry.id,
                WriterSchema {
                    kind,
                    schema: schema.clone(),
                },
            );
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
        Ok(Codec {
            current,
            writers: RwLock::new(writers),
            registry: None,
            #[cfg(feature = "fault-injection")]
            faults: Default::default(),
        })
    }

    /// A codec that registers this build's schemas with a Confluent-compatible schema registry
    /// (subject = record name) and writes with the ids the registry returns. Ids it meets while
    /// decoding are fetched from the registry once and cached.
    pub async fn with_registry(url: &str) -> Result<Codec, CodecError> {
        limit_allocations();
        let registry = RegistryClient::new(url);
        let mut current = HashMap::new();
        let mut writers = HashMap::new();
        for kind in RecordKind::ALL {
            let schema = parse_schema(kind)?;
            let id = registry
                .register(kind.subject(), &schema.canonical_form())
                .await?;
            writers.insert(
                id,
                WriterSchema {
                    kind,
                    schema: schema.clone(),
                },
            );
            current.insert(kind, (id, schema));
        }
        Ok(Codec {
            current,
            writers: RwLock::new(writers),
            registry: Some(registry),
            #[cfg(feature = "fault-injection")]
            faults: Default::default(),
        })
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
        let value =
            apache_avro::to_value(&*record.bounded()).map_err(|e| err(without_values(&e)))?;
        let value = value.resolve(schema).map_err(|e| {
            // Only on failure: the value again, to name the field the schema refuses.
            let field = apache_avro::to_value(&*record.bounded())
                .ok()
                .and_then(|v| failing_field(&v, schema));
            err(match field {
                Some(field) => format!("field `{field}`: {}", without_values(&e)),
                None => without_values(&e),
            })
        })?;
        let datum =
            apache_avro::to_avro_datum(schema, value).map_err(|e| err(without_values(&e)))?;
        let mut out = Vec::with_capacity(FRAME_HEADER_LEN + datum.len());
        framing::write_header(&mut out, *id);
        out.extend_from_slice(&datum);
        Ok(out)
    }

    /// Decodes one framed record. Fails with [`CodecError::UnknownSchemaId`] for an id that is
    /// neither in the fixed table nor already fetched; call [`Codec::resolve_id`] first when a
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
        let reader = &self.current[&T::KIND].1;
        let err = |reason: String| CodecError::Decode { id, reason };
        let value = apache_avro::from_avro_datum(&writer.schema, &mut datum, Some(reader))
            .map_err(|e| err(without_values(&e)))?;
        apache_avro::from_value::<T>(&value).map_err(|e| err(without_values(&e)))
    }

    /// Makes sure the writer schema of a frame is known, fetching it from the registry if one is
    /// configured.
    pub async fn resolve_id(&self, bytes: &[u8]) -> Result<(), CodecError> {
        let (id, _) = framing::split(bytes)?;
        if self
            .writers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&id)
        {
            return Ok(());
        }
        let registry = self
            .registry
            .as_ref()
            .ok_or(CodecError::UnknownSchemaId(id))?;
        let (subject, text) = registry.fetch(id).await?;
        let kind = RecordKind::from_subject(&subject).ok_or_else(|| {
            registry.error(format!(
                "schema id {id} belongs to unknown record {subject}"
            ))
        })?;
        self.add_writer_schema(id, kind, &text)
    }

    /// [`Codec::resolve_id`] then [`Codec::decode`].
    pub async fn decode_resolving<T: AvroRecord>(&self, bytes: &[u8]) -> Result<T, CodecError> {
        self.resolve_id(bytes).await?;
        self.decode(bytes)
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
            .insert(id, WriterSchema { kind, schema });
        Ok(())
    }
}

/// How the stats topic is written: the project's Avro framing, or plain JSON for BI tools that do
/// not speak Avro.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StatsFormat {
    #[default]
    Avro,
    Json,
}

impl StatsFormat {
    /// Encodes a window count in this format. The JSON form has the schema's field names.
    pub fn encode(self, codec: &Codec, record: &GroupWindowCount) -> Result<Vec<u8>, CodecError> {
        match self {
            StatsFormat::Avro => codec.encode(record),
            StatsFormat::Json => serde_json::to_vec(record).map_err(|e| CodecError::Encode {
                subject: RecordKind::GroupWindowCount.subject(),
                reason: e.to_string(),
            }),
        }
    }
}

#[cfg(test)]
mod tests;
