//! `POST /tokenize` and `POST /detokenize` (vLLM's shapes): a text, or messages rendered with
//! the chat template and a generation prompt, to ids; ids to text.

use axum::body::Bytes;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::Shared;
use crate::api::{conversation, parse, token_ids, RawDetokenizeRequest, RawTokenizeRequest};
use crate::{ApiError, State};

fn check_model(state: &State, model: &Option<String>) -> Result<(), ApiError> {
    model.as_deref().map_or(Ok(()), |m| state.model_index(m).map(|_| ()))
}

pub(super) async fn tokenize(state: Shared, body: Bytes) -> Response {
    let run = || -> Result<Response, ApiError> {
        let r = parse::<RawTokenizeRequest>(&body)?;
        check_model(&state, &r.model)?;
        let text = match (&r.prompt, &r.messages) {
            (Some(p), None) => p.clone(),
            (None, Some(m)) => state.chat_prompt(&conversation(m, r.tools.as_ref())?)?,
            _ => return Err(ApiError::invalid("prompt", "give prompt (a text) or messages, not both")),
        };
        let ids = state.encode(&text)?;
        Ok(Json(json!({"count": ids.len(), "max_model_len": state.context, "tokens": ids})).into_response())
    };
    run().unwrap_or_else(IntoResponse::into_response)
}

pub(super) async fn detokenize(state: Shared, body: Bytes) -> Response {
    let run = || -> Result<Response, ApiError> {
        let r = parse::<RawDetokenizeRequest>(&body)?;
        check_model(&state, &r.model)?;
        let ids = token_ids("tokens", &r.tokens)?;
        if let Some((i, t)) = ids.iter().enumerate().find(|(_, &t)| t as usize >= state.vocab) {
            return Err(ApiError::invalid(
                format!("tokens[{i}]"),
                format!("tokens[{i}]: token id {t} is outside the vocabulary of {}", state.vocab),
            ));
        }
        let text = state.tokenizer.decode(&ids, false).map_err(|e| ApiError::internal(format!("decoding: {e}")))?;
        Ok(Json(json!({"prompt": text})).into_response())
    };
    run().unwrap_or_else(IntoResponse::into_response)
}
