//! A WebSocket text frame from a client, as the connection parses it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_protocol::limits::MAX_WS_FRAME_BYTES;
use sluice_protocol::{ClientFrame, parse_client_frame};

fuzz_target!(|data: &[u8]| {
    // The connection checks UTF-8 before it parses.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(ClientFrame::Send(message)) = parse_client_frame(text, MAX_WS_FRAME_BYTES) {
        // A frame that parses is a message the session layer may check.
        let _ = message.validate();
    }
});
