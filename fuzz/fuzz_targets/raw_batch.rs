//! The raw-topic record decoder (Confluent framing, then Avro) on any bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn codec() -> &'static wx_codec::Codec {
    static CODEC: OnceLock<wx_codec::Codec> = OnceLock::new();
    CODEC.get_or_init(|| wx_codec::Codec::fixed().expect("codec"))
}

fuzz_target!(|bytes: &[u8]| {
    let _ = codec().decode::<wx_codec::RawBatch>(bytes);
    let _ = codec().decode::<wx_codec::ChatMessage>(bytes);
});
