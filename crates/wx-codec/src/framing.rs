//! The Confluent wire format: byte 0 is the magic byte 0, bytes 1..5 the schema id (big-endian
//! u32), the rest one Avro binary datum. Kafka ecosystem tools (kafka-avro-console-consumer,
//! Kafka Connect's AvroConverter, ClickHouse's AvroConfluent, Druid, Pinot) read it.

use crate::CodecError;

/// The first byte of every framed record.
pub const MAGIC_BYTE: u8 = 0;
/// Magic byte plus the 4-byte schema id.
pub const FRAME_HEADER_LEN: usize = 5;

pub(crate) fn write_header(out: &mut Vec<u8>, id: u32) {
    out.push(MAGIC_BYTE);
    out.extend_from_slice(&id.to_be_bytes());
}

/// Splits a frame into its schema id and datum.
pub(crate) fn split(bytes: &[u8]) -> Result<(u32, &[u8]), CodecError> {
    match bytes {
        [MAGIC_BYTE, a, b, c, d, datum @ ..] => Ok((u32::from_be_bytes([*a, *b, *c, *d]), datum)),
        _ => Err(CodecError::BadFrame { len: bytes.len() }),
    }
}

/// The schema id of a frame, without decoding it.
pub fn frame_schema_id(bytes: &[u8]) -> Result<u32, CodecError> {
    split(bytes).map(|(id, _)| id)
}
