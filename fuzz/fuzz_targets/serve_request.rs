//! Bytes of an HTTP request body → every endpoint's parser and validation (`sft serve`'s
//! `api` module). Any body must give a typed request or an OpenAI-shaped error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sft_serve::api::{parse, parse_generating, RawChatRequest, RawCompletionRequest, RawDetokenizeRequest, RawTokenizeRequest};

fuzz_target!(|data: &[u8]| {
    if let Ok((chat, sampling)) = parse_generating::<RawChatRequest>(data) {
        let _ = chat.resolve(&sampling);
    }
    if let Ok((completion, sampling)) = parse_generating::<RawCompletionRequest>(data) {
        let _ = completion.resolve(&sampling);
    }
    let _ = parse::<RawTokenizeRequest>(data);
    let _ = parse::<RawDetokenizeRequest>(data);
});
