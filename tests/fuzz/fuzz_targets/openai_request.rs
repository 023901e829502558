//! A `POST /v1/chat/completions` body, as the OpenAI-compatible route
//! parses and checks it; what it accepts must survive being relayed
//! (serialized and parsed again) unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_protocol::openai::ChatRequest;

fuzz_target!(|data: &[u8]| {
    let Ok(request) = ChatRequest::parse(data) else {
        return;
    };
    let relayed = serde_json::to_vec(&request).expect("an accepted request serializes");
    let again = ChatRequest::parse(&relayed).expect("a relayed request parses again");
    assert_eq!(again, request);
});
