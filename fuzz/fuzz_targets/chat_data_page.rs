//! A GetChatData reply (the SDK's or the simulator's JSON) on any bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let _ = wx_ingest::client::parse_reply(bytes);
});
