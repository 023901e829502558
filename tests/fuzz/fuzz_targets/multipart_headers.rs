//! An upload part's `Content-Disposition` header, as actix-web parses it,
//! and the file name Sluice keeps from it: never a path, never a control
//! character, never over the limit.
#![no_main]

use actix_web::http::header::{ContentDisposition, HeaderValue};
use libfuzzer_sys::fuzz_target;
use sluice_protocol::files::clean_filename;
use sluice_protocol::limits::MAX_FILENAME_BYTES;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = HeaderValue::from_bytes(data) else {
        return;
    };
    let Ok(disposition) = ContentDisposition::from_raw(&value) else {
        return;
    };
    let name = clean_filename(disposition.get_filename().unwrap_or_default());
    assert!(!name.is_empty() && name.len() <= MAX_FILENAME_BYTES);
    assert!(!name.contains(['/', '\\']) && !name.chars().any(char::is_control));
    assert!(name != "." && name != "..");
});
