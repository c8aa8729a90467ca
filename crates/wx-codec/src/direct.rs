//! A clean message read straight from its Avro bytes, for data written with exactly the schema
//! this build reads (`schemas/clean_message.avsc`): the sink and stats stages decode every
//! message, and apache-avro's generic path (a `Value` tree, then serde from it, cloning every
//! string) was a quarter of their CPU. Any other writer schema goes the generic way, with
//! resolution. `tests::the_direct_decoding_equals_the_generic_one` holds the two equal, on
//! good and on broken bytes.

use crate::records::{ChatMessage, SourceCoordinates};

/// Avro's binary encoding, read from a slice; every length is checked against what is left,
/// so nothing is allocated beyond the input's size.
struct Datum<'a> {
    bytes: &'a [u8],
}

type Read<T> = Result<T, String>;

impl<'a> Datum<'a> {
    /// A zig-zag varint of at most 64 bits.
    fn long(&mut self) -> Read<i64> {
        let mut value: u64 = 0;
        for i in 0..10 {
            let (&byte, rest) = self
                .bytes
                .split_first()
                .ok_or_else(|| "the datum ends inside a number".to_string())?;
            self.bytes = rest;
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(((value >> 1) as i64) ^ -((value & 1) as i64));
            }
        }
        Err("a number longer than 64 bits".into())
    }

    fn int(&mut self) -> Read<i32> {
        let v = self.long()?;
        i32::try_from(v).map_err(|_| format!("int out of range: {v}"))
    }

    fn boolean(&mut self) -> Read<bool> {
        let (&byte, rest) = self
            .bytes
            .split_first()
            .ok_or_else(|| "the datum ends inside a boolean".to_string())?;
        self.bytes = rest;
        match byte {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(format!("not a boolean: {other}")),
        }
    }

    fn length(&mut self) -> Read<usize> {
        let n = self.long()?;
        let n = usize::try_from(n).map_err(|_| format!("a negative length: {n}"))?;
        if n > self.bytes.len() {
            return Err(format!("a length of {n} past the datum's end"));
        }
        Ok(n)
    }

    fn string(&mut self) -> Read<String> {
        let n = self.length()?;
        let (text, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        String::from_utf8(text.to_vec()).map_err(|_| "a string that is not UTF-8".to_string())
    }

    /// A `["null", T]` union.
    fn optional<T>(&mut self, read: impl FnOnce(&mut Self) -> Read<T>) -> Read<Option<T>> {
        match self.long()? {
            0 => Ok(None),
            1 => read(self).map(Some),
            other => Err(format!("union branch {other} of two")),
        }
    }

    /// An array of strings: blocks of items, a negative count followed by the block's size,
    /// ended by an empty block.
    fn strings(&mut self) -> Read<Vec<String>> {
        let mut items = Vec::new();
        loop {
            let count = self.long()?;
            if count == 0 {
                return Ok(items);
            }
            if count < 0 {
                self.long()?; // the block's size in bytes
            }
            let count = count.unsigned_abs();
            // Each item takes at least a byte.
            if count > self.bytes.len() as u64 {
                return Err(format!("{count} items past the datum's end"));
            }
            for _ in 0..count {
                items.push(self.string()?);
            }
        }
    }
}

/// Reads a clean message written with `schemas/clean_message.avsc` (the datum after the frame).
pub(crate) fn chat_message(bytes: &[u8]) -> Read<ChatMessage> {
    let d = &mut Datum { bytes };
    Ok(ChatMessage {
        msgid: d.string()?,
        corp_id: d.string()?,
        action: d.string()?,
        from: d.string()?,
        tolist: d.strings()?,
        roomid: d.string()?,
        msgtime: d.long()?,
        msgtype: d.string()?,
        payload_json: d.string()?,
        extra_json: d.optional(Datum::string)?,
        text: d.optional(Datum::string)?,
        recalled_msgid: d.optional(Datum::string)?,
        conversation_id: d.string()?,
        is_external: d.boolean()?,
        publickey_ver: d.optional(Datum::int)?,
        source: SourceCoordinates {
            topic: d.string()?,
            partition: d.int()?,
            offset: d.long()?,
            seq: d.optional(Datum::long)?,
        },
        decrypted_at: d.long()?,
    })
}
