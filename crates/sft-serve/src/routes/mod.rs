//! The HTTP endpoints. Each handler parses its body ([`crate::api`]), checks the model name
//! and the context length, hands the job to the engine and shapes what comes back; the text is
//! decoded here, with the stop strings ([`sft_infer::generate::TextStream`]).

mod chat;
mod completions;
mod tokens;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::State as Extract;
use axum::http::StatusCode;
use axum::response::sse::Event as SseEvent;
use axum::response::{IntoResponse, Response, Sse};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use sft_infer::generate::TextStream;
use sft_infer::{Finish, Step};
use sft_model::model::TokenLogprobs;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::api::Generation;
use crate::engine::{Event, Job, Msg};
use crate::{ApiError, State};

/// Handlers' view of the shared state.
type Shared = Extract<Arc<State>>;

/// Every endpoint.
pub fn router(state: Arc<State>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat::handle))
        .route("/v1/completions", post(completions::handle))
        .route("/tokenize", post(tokens::tokenize))
        .route("/detokenize", post(tokens::detokenize))
        .fallback(|| async { ApiError { status: StatusCode::NOT_FOUND, ..ApiError::invalid("", "no such endpoint") } })
        .with_state(state)
}

async fn health(Extract(state): Shared) -> Json<Value> {
    Json(json!({
        "status": "ok",
        "running": state.load.running.load(Ordering::Relaxed),
        "queued": state.load.queued.load(Ordering::Relaxed),
        "capacity": state.capacity,
    }))
}

async fn models(Extract(state): Shared) -> Json<Value> {
    let base = &state.names[0];
    let data: Vec<Value> = state
        .names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            json!({"id": name, "object": "model", "created": state.created, "owned_by": "sft", "root": base,
                   "parent": if i == 0 { Value::Null } else { json!(base) }, "max_model_len": state.context})
        })
        .collect();
    Json(json!({"object": "list", "data": data}))
}

impl State {
    /// The engine index of a model name.
    fn model_index(&self, name: &str) -> Result<usize, ApiError> {
        self.names.iter().position(|n| n == name).ok_or_else(|| ApiError::unknown_model(name, &self.names))
    }

    /// Checks prompt ids against the vocabulary and the context; returns the most new tokens.
    fn check_prompt(&self, param: &str, ids: &[u32], max_tokens: Option<usize>) -> Result<usize, ApiError> {
        if ids.is_empty() {
            return Err(ApiError::invalid(param, format!("{param}: the prompt has no tokens")));
        }
        if let Some((i, t)) = ids.iter().enumerate().find(|(_, &t)| t as usize >= self.vocab) {
            return Err(ApiError::invalid(
                format!("{param}[{i}]"),
                format!("{param}[{i}]: token id {t} is outside the vocabulary of {}", self.vocab),
            ));
        }
        let room = self.context.saturating_sub(ids.len());
        let too_long = |wanted: usize| {
            ApiError::invalid_code(
                param,
                format!(
                    "this model's maximum context length is {} tokens; the prompt has {} and {} more were requested",
                    self.context,
                    ids.len(),
                    wanted
                ),
                "context_length_exceeded",
            )
        };
        match max_tokens {
            Some(m) if m > room => Err(too_long(m)),
            Some(m) => Ok(m),
            None if room == 0 => Err(too_long(1)),
            None => Ok(room),
        }
    }

    /// Hands a job to the engine; 429 when every slot is taken.
    fn submit(
        &self,
        model: usize,
        prompt: Vec<u32>,
        max_tokens: usize,
        g: &Generation,
        echo: Option<usize>,
    ) -> Result<UnboundedReceiver<Event>, ApiError> {
        let permit = self.permits.clone().try_acquire_owned().map_err(|_| ApiError::busy(self.capacity))?;
        let (events, rx) = unbounded_channel();
        let job = Job {
            model,
            prompt,
            max_tokens,
            sampling: g.sampling.clone(),
            logprobs: g.logprobs,
            prompt_logprobs: echo,
            events,
            deadline: Instant::now() + self.timeout,
            permit: Some(permit),
        };
        let inbox = self.inbox.lock().map_err(|_| ApiError::unavailable("the engine stopped"))?;
        inbox.send(Msg::Job(Box::new(job))).map_err(|_| ApiError::unavailable("the server is shutting down"))?;
        Ok(rx)
    }

    /// The chat template's prompt for `conversation`, with the generation prompt.
    fn chat_prompt(&self, conversation: &sft_data::conversation::Conversation) -> Result<String, ApiError> {
        let rendered = self
            .renderer
            .render(conversation, true, false)
            .map_err(|e| ApiError::invalid("messages", format!("rendering the messages with the chat template: {e}")))?;
        Ok(rendered.text)
    }

    /// The ids of `text`, no special tokens added.
    fn encode(&self, text: &str) -> Result<Vec<u32>, ApiError> {
        Ok(self.tokenizer.encode(text, &[]).map_err(|e| ApiError::internal(format!("tokenizing the prompt: {e}")))?.input_ids)
    }

    /// One token as log-probabilities name it: its text, or `token_id:N` when `as_id`.
    fn token_label(&self, id: u32, as_id: bool) -> String {
        if as_id {
            format!("token_id:{id}")
        } else {
            self.tokenizer.decode(&[id], false).unwrap_or_default()
        }
    }
}

/// A new token with its text and the text it made final.
struct Piece<'a> {
    /// The text that became final with it (maybe empty).
    text: String,
    step: &'a Step,
}

/// What a finished request produced.
struct Outcome {
    text: String,
    ids: Vec<u32>,
    finish: Finish,
    prompt_logprobs: Option<Vec<TokenLogprobs>>,
}

/// Follows a job's events to the end; `on_piece` sees each token and returns whether the
/// client is still there (`false` drops the job).
async fn drive(
    state: &State,
    mut rx: UnboundedReceiver<Event>,
    stop: &[String],
    mut on_piece: impl FnMut(Piece<'_>) -> bool,
) -> Result<Outcome, ApiError> {
    let mut stream = TextStream::new(&state.tokenizer, stop);
    let mut ids = vec![];
    let mut prompt_logprobs = None;
    let finish = loop {
        let Some(event) = rx.recv().await else { return Err(ApiError::unavailable("the engine stopped")) };
        match event {
            Event::Prompt(lp) => prompt_logprobs = Some(lp),
            Event::Token(step) => {
                ids.push(step.id);
                let (text, stopped) = stream.push(step.id).map_err(|e| ApiError::internal(format!("decoding the answer: {e}")))?;
                if !on_piece(Piece { text, step: &step }) {
                    return Err(ApiError::unavailable("the client went away"));
                }
                if stopped {
                    break Finish::StopString;
                }
            }
            Event::End { stopped } => break if stopped { Finish::Stop } else { Finish::Length },
            Event::TimedOut => return Err(ApiError::timeout(state.timeout.as_secs_f64())),
            Event::Failed(e) => return Err(e),
        }
    };
    let rest = stream.finish();
    if !rest.is_empty() {
        let none = Step { id: 0, logprobs: None };
        on_piece(Piece { text: rest, step: &none });
    }
    Ok(Outcome { text: stream.text().to_string(), ids, finish, prompt_logprobs })
}

/// OpenAI's `finish_reason`.
fn finish_reason(f: Finish) -> &'static str {
    match f {
        Finish::Stop | Finish::StopString => "stop",
        Finish::Length => "length",
    }
}

/// An SSE response fed by `produce`, which sends each `data:` payload; `[DONE]` ends it.
/// (unbounded: a request sends at most `max_tokens` payloads).
fn sse<F>(produce: impl FnOnce(UnboundedSender<String>) -> F) -> Response
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = unbounded_channel::<String>();
    let task = produce(tx.clone());
    tokio::spawn(async move {
        task.await;
        let _ = tx.send("[DONE]".into());
    });
    let events = tokio_stream::StreamExt::map(UnboundedReceiverStream::new(rx), |data| {
        Ok::<_, std::convert::Infallible>(SseEvent::default().data(data))
    });
    Sse::new(events).into_response()
}

/// A request id.
fn request_id(prefix: &str) -> String {
    use std::sync::atomic::AtomicU64;
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!("{prefix}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}
