//! `POST /v1/chat/completions`: the conversation rendered with the model's chat template and a
//! generation prompt (tools passed to it), answered until an end-of-turn token, a stop string
//! or `max_tokens`; whole, or streamed as `chat.completion.chunk` events.

use std::sync::Arc;

use axum::body::Bytes;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use sft_model::model::TokenLogprobs;

use super::{drive, finish_reason, request_id, sse, Outcome, Piece, Shared};
use crate::api::{parse_generating, ChatRequest, RawChatRequest};
use crate::{ApiError, State};

pub(super) async fn handle(state: Shared, body: Bytes) -> Response {
    match answer(state.0, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

/// One token's logprobs entry (`logprobs.content[i]`).
fn entry(state: &State, id: u32, lp: &TokenLogprobs, as_ids: bool) -> Value {
    let one = |id: u32, logprob: f32| {
        let text = state.token_label(id, false);
        json!({"token": state.token_label(id, as_ids), "logprob": logprob, "bytes": text.as_bytes()})
    };
    let mut e = one(id, lp.logprob);
    e["top_logprobs"] = lp.top.iter().map(|&(t, l)| one(t, l)).collect();
    e
}

async fn answer(state: Arc<State>, body: Bytes) -> Result<Response, ApiError> {
    let request = {
        let (raw, sampling) = parse_generating::<RawChatRequest>(&body)?;
        raw.resolve(&sampling)?
    };
    let model = state.model_index(&request.model)?;
    let prompt = {
        let state = state.clone();
        let conversation = request.conversation.clone();
        tokio::task::spawn_blocking(move || state.encode(&state.chat_prompt(&conversation)?))
            .await
            .map_err(|e| ApiError::internal(format!("rendering the prompt: {e}")))??
    };
    let g = &request.generation;
    let max_tokens = state.check_prompt("messages", &prompt, g.max_tokens)?;
    let rx = state.submit(model, prompt.clone(), max_tokens, g, None)?;
    let id = request_id("chatcmpl");
    if g.stream {
        return Ok(stream(state, request, rx, id, prompt.len()));
    }
    let mut logprobs = vec![];
    let want = g.logprobs.is_some();
    let out = drive(&state, rx, &g.stop, |p: Piece<'_>| {
        if let (true, Some(lp)) = (want, &p.step.logprobs) {
            logprobs.push(entry(&state, p.step.id, lp, g.tokens_as_ids));
        }
        true
    })
    .await?;
    let logprobs = if want { json!({"content": logprobs}) } else { Value::Null };
    Ok(Json(json!({
        "id": id,
        "object": "chat.completion",
        "created": state.created,
        "model": request.model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": out.text}, "logprobs": logprobs,
                     "finish_reason": finish_reason(out.finish)}],
        "usage": usage(prompt.len(), &out),
    }))
    .into_response())
}

fn usage(prompt: usize, out: &Outcome) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": out.ids.len(), "total_tokens": prompt + out.ids.len()})
}

fn stream(
    state: Arc<State>,
    request: ChatRequest,
    rx: tokio::sync::mpsc::UnboundedReceiver<crate::engine::Event>,
    id: String,
    prompt: usize,
) -> Response {
    sse(move |tx| async move {
        let g = &request.generation;
        let chunk = |delta: Value, logprobs: Value, finish: Value| {
            json!({"id": id, "object": "chat.completion.chunk", "created": state.created, "model": request.model,
                   "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]})
            .to_string()
        };
        if tx.send(chunk(json!({"role": "assistant", "content": ""}), Value::Null, Value::Null)).is_err() {
            return;
        }
        let want = g.logprobs.is_some();
        let out = drive(&state, rx, &g.stop, |p: Piece<'_>| {
            let logprobs = match (&p.step.logprobs, want) {
                (Some(lp), true) => json!({"content": [entry(&state, p.step.id, lp, g.tokens_as_ids)]}),
                _ => Value::Null,
            };
            if p.text.is_empty() && logprobs.is_null() {
                return !tx.is_closed();
            }
            tx.send(chunk(json!({"content": p.text}), logprobs, Value::Null)).is_ok()
        })
        .await;
        match out {
            Ok(out) => {
                let _ = tx.send(chunk(json!({}), Value::Null, json!(finish_reason(out.finish))));
                if g.include_usage {
                    let last = json!({"id": id, "object": "chat.completion.chunk", "created": state.created, "model": request.model,
                                      "choices": [], "usage": usage(prompt, &out)});
                    let _ = tx.send(last.to_string());
                }
            }
            Err(e) => {
                let _ = tx.send(e.body().to_string());
            }
        }
    })
}
