//! The callback envelope parsers (XML and JSON) on any body: an error, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    let _ = wx_crypto::Envelope::from_xml(body);
    let _ = wx_crypto::Envelope::from_json(body);
});
