//! `POST /v1/completions`: text completion of raw prompts (text, or token ids as
//! lm-evaluation-harness sends them), one choice per prompt. `echo` puts the prompt before the
//! answer; with `logprobs` it also gives every prompt token's log-probability (the first has
//! none), which is how harnesses score a continuation's loglikelihood.

use std::sync::Arc;

use axum::body::Bytes;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};
use sft_model::model::TokenLogprobs;

use super::{drive, finish_reason, request_id, sse, Piece, Shared};
use crate::api::{parse_generating, CompletionRequest, Prompt, RawCompletionRequest};
use crate::{ApiError, State};

pub(super) async fn handle(state: Shared, body: Bytes) -> Response {
    match complete(state.0, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

/// OpenAI's legacy logprobs lists, filled token by token.
#[derive(Default)]
struct Logprobs {
    /// Name tokens `token_id:N`.
    as_ids: bool,
    tokens: Vec<String>,
    token_logprobs: Vec<Value>,
    top_logprobs: Vec<Value>,
    text_offset: Vec<usize>,
    offset: usize,
}

impl Logprobs {
    fn push(&mut self, state: &State, id: u32, lp: Option<&TokenLogprobs>) {
        self.text_offset.push(self.offset);
        self.offset += state.token_label(id, false).len();
        self.tokens.push(state.token_label(id, self.as_ids));
        self.token_logprobs.push(lp.map_or(Value::Null, |l| json!(l.logprob)));
        self.top_logprobs.push(lp.map_or(Value::Null, |l| {
            Value::Object(l.top.iter().map(|&(t, v)| (state.token_label(t, self.as_ids), json!(v))).collect::<Map<_, _>>())
        }));
    }

    fn json(self) -> Value {
        json!({"tokens": self.tokens, "token_logprobs": self.token_logprobs, "top_logprobs": self.top_logprobs, "text_offset": self.text_offset})
    }
}

/// The ids and text of a prompt: text is tokenized as `tokenizer(text)` does (the
/// post-processor's leading special tokens, e.g. a BOS, then the text's own tokens).
fn prompt_of(state: &State, p: &Prompt) -> Result<(Vec<u32>, String), ApiError> {
    match p {
        Prompt::Ids(ids) => {
            Ok((ids.clone(), state.tokenizer.decode(ids, false).map_err(|e| ApiError::invalid("prompt", format!("prompt: {e}")))?))
        }
        Prompt::Text(text) => {
            let mut ids = state.tokenizer.leading_special_ids().map_err(|e| ApiError::internal(format!("tokenizing the prompt: {e}")))?;
            ids.extend(state.encode(text)?);
            Ok((ids, text.clone()))
        }
    }
}

async fn complete(state: Arc<State>, body: Bytes) -> Result<Response, ApiError> {
    let request = {
        let (raw, sampling) = parse_generating::<RawCompletionRequest>(&body)?;
        raw.resolve(&sampling)?
    };
    let model = state.model_index(&request.model)?;
    let g = &request.generation;
    let prompts = {
        let (state, prompts) = (state.clone(), request.prompts.clone());
        tokio::task::spawn_blocking(move || prompts.iter().map(|p| prompt_of(&state, p)).collect::<Result<Vec<_>, _>>())
            .await
            .map_err(|e| ApiError::internal(format!("tokenizing the prompt: {e}")))??
    };
    let echo_logprobs = g.logprobs.filter(|_| request.echo);
    let mut jobs = vec![];
    for (i, (ids, _)) in prompts.iter().enumerate() {
        let param = if prompts.len() == 1 { "prompt".to_string() } else { format!("prompt[{i}]") };
        let max_tokens = state.check_prompt(&param, ids, g.max_tokens)?;
        jobs.push((ids.clone(), max_tokens));
    }
    // Every job is submitted before any is awaited, so they decode together.
    let mut receivers = vec![];
    for (ids, max_tokens) in jobs {
        receivers.push(state.submit(model, ids, max_tokens, g, echo_logprobs)?);
    }
    let id = request_id("cmpl");
    if g.stream {
        let rx = receivers.pop().ok_or_else(|| ApiError::internal("no prompt"))?;
        let prompt_text = prompts.into_iter().next().map(|p| p.1).unwrap_or_default();
        return Ok(stream(state, request, rx, id, prompt_text));
    }
    let mut choices = vec![];
    let (mut prompt_tokens, mut completion_tokens) = (0, 0);
    for (index, (rx, (ids, prompt_text))) in receivers.into_iter().zip(prompts).enumerate() {
        let mut lp = Logprobs { as_ids: g.tokens_as_ids, ..Logprobs::default() };
        let want = g.logprobs.is_some();
        let mut steps = vec![];
        let out = drive(&state, rx, &g.stop, |p: Piece<'_>| {
            if want && p.step.logprobs.is_some() {
                steps.push((p.step.id, p.step.logprobs.clone()));
            }
            true
        })
        .await?;
        if want {
            if request.echo {
                let prompt_lp = out.prompt_logprobs.clone().unwrap_or_default();
                for (i, &t) in ids.iter().enumerate() {
                    lp.push(&state, t, i.checked_sub(1).and_then(|j| prompt_lp.get(j)));
                }
            }
            for (t, l) in &steps {
                lp.push(&state, *t, l.as_ref());
            }
        }
        let text = if request.echo { format!("{prompt_text}{}", out.text) } else { out.text.clone() };
        prompt_tokens += ids.len();
        completion_tokens += out.ids.len();
        let logprobs = if want { lp.json() } else { Value::Null };
        choices.push(json!({"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason(out.finish)}));
    }
    Ok(Json(json!({
        "id": id,
        "object": "text_completion",
        "created": state.created,
        "model": request.model,
        "choices": choices,
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens},
    }))
    .into_response())
}

fn stream(
    state: Arc<State>,
    request: CompletionRequest,
    rx: tokio::sync::mpsc::UnboundedReceiver<crate::engine::Event>,
    id: String,
    prompt_text: String,
) -> Response {
    sse(move |tx| async move {
        let g = &request.generation;
        let chunk = |text: &str, logprobs: Value, finish: Value| {
            json!({"id": id, "object": "text_completion", "created": state.created, "model": request.model,
                   "choices": [{"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish}]})
            .to_string()
        };
        if request.echo && tx.send(chunk(&prompt_text, Value::Null, Value::Null)).is_err() {
            return;
        }
        let want = g.logprobs.is_some();
        let out = drive(&state, rx, &g.stop, |p: Piece<'_>| {
            let logprobs = match (&p.step.logprobs, want) {
                (Some(l), true) => {
                    let mut lp = Logprobs { as_ids: g.tokens_as_ids, ..Logprobs::default() };
                    lp.push(&state, p.step.id, Some(l));
                    lp.json()
                }
                _ => Value::Null,
            };
            if p.text.is_empty() && logprobs.is_null() {
                return !tx.is_closed();
            }
            tx.send(chunk(&p.text, logprobs, Value::Null)).is_ok()
        })
        .await;
        match out {
            Ok(out) => {
                let _ = tx.send(chunk("", Value::Null, json!(finish_reason(out.finish))));
            }
            Err(e) => {
                let _ = tx.send(e.body().to_string());
            }
        }
    })
}
