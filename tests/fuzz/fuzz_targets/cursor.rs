//! A resume cursor (`?after=`, `Last-Event-ID`): what parses is a seq
//! within range that prints back as itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_protocol::sse::parse_cursor;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(seq) = parse_cursor(text) {
        assert_eq!(parse_cursor(&seq.to_string()), Some(seq));
        assert!(text.trim().bytes().all(|b| b.is_ascii_digit()));
    }
});
