//! `RequestMeta::decode` on arbitrary header bytes: never panics, and what
//! it accepts survives an encode/decode round trip unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use whtunnel::tunnel::protocol::RequestMeta;

fuzz_target!(|data: &[u8]| {
    if let Ok(meta) = RequestMeta::decode(data) {
        let again = RequestMeta::decode(meta.encode().as_bytes()).expect("own encoding decodes");
        assert_eq!(again, meta);
    }
});
