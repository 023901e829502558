//! A provider's chat-completions stream: its bytes cut into SSE events (by
//! the parser the provider client uses), each `data:` line read as a
//! chunk, and the streamed tool-call fragments joined, as a generation
//! does. The input's first byte says where the stream is cut into pieces.
#![no_main]

use bytes::Bytes;
use eventsource_stream::Eventsource;
use futures::StreamExt;
use libfuzzer_sys::fuzz_target;
use sluice_protocol::openai::{ChunkData, read_chunk};
use sluice_protocol::tools::ToolCallAssembler;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, body)) = data.split_first() else {
        return;
    };
    let piece = usize::from(cut).max(1);
    let pieces: Vec<Result<Bytes, std::io::Error>> = body
        .chunks(piece)
        .map(|p| Ok(Bytes::copy_from_slice(p)))
        .collect();
    futures::executor::block_on(async {
        let mut events = futures::stream::iter(pieces).eventsource();
        let mut calls = ToolCallAssembler::default();
        while let Some(event) = events.next().await {
            let Ok(event) = event else { break };
            match read_chunk(&event.data) {
                Ok(ChunkData::Chunk(view)) => {
                    let _ = view.content();
                    let _ = view.finish_reason();
                    if calls.push(view.tool_calls()).is_err() {
                        break;
                    }
                }
                Ok(ChunkData::Done) | Ok(ChunkData::Error(_)) | Err(_) => break,
            }
        }
        for call in calls.finish() {
            let _ = call;
        }
    });
});
