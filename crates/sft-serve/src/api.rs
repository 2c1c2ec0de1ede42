//! The request bodies: serde mirrors of OpenAI's JSON (`Raw…`, every field optional where
//! OpenAI's is, unknown fields ignored as OpenAI's server does), each validated once into a
//! typed request ([`ChatRequest`], [`CompletionRequest`], ...). A body that is not JSON, not
//! UTF-8, or has a field of the wrong type is an error naming the field
//! (`serde_path_to_error`); so is a value out of range.

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{Map, Value};
use sft_data::conversation::{drop_null_keys, Conversation, RowRef};
use sft_data::data::openai;
use sft_infer::Sampling;

use crate::error::ApiError;

/// Most alternatives `logprobs` / `top_logprobs` may ask for.
pub const MAX_TOP_LOGPROBS: usize = 20;
/// `max_tokens` of a text completion that gives none (OpenAI's default).
pub const COMPLETION_DEFAULT_MAX_TOKENS: usize = 16;

/// Parses a request body as `T`, naming the field of any error.
pub fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    typed(&json_body(body)?)
}

/// Parses a generating request's body: its own fields and the shared [`RawSampling`] ones, each
/// read from the same JSON object (not through `#[serde(flatten)]`, which would lose the name
/// of a field at fault).
pub fn parse_generating<T: DeserializeOwned>(body: &[u8]) -> Result<(T, RawSampling), ApiError> {
    let value = json_body(body)?;
    Ok((typed(&value)?, typed(&value)?))
}

/// The body as JSON: UTF-8 and syntax errors.
fn json_body(body: &[u8]) -> Result<Value, ApiError> {
    let text = std::str::from_utf8(body).map_err(|e| ApiError::invalid("", format!("the request body is not valid UTF-8: {e}")))?;
    serde_json::from_str(text).map_err(|e| ApiError::invalid("", format!("the request body is not valid JSON: {e}")))
}

/// `value` as `T`, naming the field of a type error.
fn typed<T: DeserializeOwned>(value: &Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            ApiError::invalid("", format!("the request body: {inner}"))
        } else {
            ApiError::invalid(&path, format!("{path}: {inner}"))
        }
    })
}

/// `stop`: one string or a list.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawStop {
    /// One stop string.
    One(String),
    /// Several.
    Many(Vec<String>),
}

/// `stream_options`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RawStreamOptions {
    /// Send a last chunk with the usage.
    #[serde(default)]
    pub include_usage: Option<bool>,
}

/// The sampling and length fields both endpoints share.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RawSampling {
    /// 0 = greedy.
    pub temperature: Option<f64>,
    /// Nucleus threshold.
    pub top_p: Option<f64>,
    /// Keep the k most likely (0 or -1 = off).
    pub top_k: Option<i64>,
    /// Drop tokens below `min_p` × the top probability.
    pub min_p: Option<f64>,
    /// transformers' repetition penalty (vLLM's extension).
    pub repetition_penalty: Option<f64>,
    /// Sampler seed.
    pub seed: Option<i64>,
    /// Most new tokens.
    pub max_tokens: Option<i64>,
    /// Most new tokens (the newer chat name).
    pub max_completion_tokens: Option<i64>,
    /// Stop strings.
    pub stop: Option<RawStop>,
    /// Number of choices (only 1).
    pub n: Option<i64>,
    /// Not supported (must be 0 when given).
    pub presence_penalty: Option<f64>,
    /// Not supported (must be 0 when given).
    pub frequency_penalty: Option<f64>,
    /// Server-sent events.
    pub stream: Option<bool>,
    /// Streaming options.
    pub stream_options: Option<RawStreamOptions>,
    /// Name tokens in log-probabilities as `token_id:N` instead of their text (vLLM's
    /// extension; a token's text alone can be ambiguous).
    pub return_tokens_as_token_ids: Option<bool>,
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct RawChatRequest {
    /// The base model's name or an adapter's.
    pub model: String,
    /// OpenAI messages, as the template sees them.
    pub messages: Vec<Value>,
    /// Tool definitions passed to the template.
    pub tools: Option<Vec<Value>>,
    /// Return the log-probability of each new token.
    pub logprobs: Option<bool>,
    /// How many alternatives per token (needs `logprobs`).
    pub top_logprobs: Option<i64>,
}

/// `prompt`: text, texts, token ids, or lists of token ids.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawPrompt {
    /// One text.
    Text(String),
    /// Several texts.
    Texts(Vec<String>),
    /// One prompt as token ids.
    Ids(Vec<i64>),
    /// Several prompts as token ids.
    IdLists(Vec<Vec<i64>>),
}

/// `POST /v1/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct RawCompletionRequest {
    /// The base model's name or an adapter's.
    pub model: String,
    /// The prompt(s).
    pub prompt: RawPrompt,
    /// Put the prompt before the answer (with its log-probabilities under `logprobs`).
    pub echo: Option<bool>,
    /// How many alternatives per token; any value (0 too) returns log-probabilities.
    pub logprobs: Option<i64>,
}

/// `POST /tokenize`: a text, or messages rendered with the template first.
#[derive(Debug, Clone, Deserialize)]
pub struct RawTokenizeRequest {
    /// Which model (optional: all share one tokenizer).
    pub model: Option<String>,
    /// Text to tokenize as it is.
    pub prompt: Option<String>,
    /// Messages to render with a generation prompt, then tokenize.
    pub messages: Option<Vec<Value>>,
    /// Tools for the template.
    pub tools: Option<Vec<Value>>,
}

/// `POST /detokenize`.
#[derive(Debug, Clone, Deserialize)]
pub struct RawDetokenizeRequest {
    /// Which model (optional).
    pub model: Option<String>,
    /// The ids.
    pub tokens: Vec<i64>,
}

/// How to generate, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// Most new tokens; `None`: up to the end of the context.
    pub max_tokens: Option<usize>,
    /// How tokens are chosen.
    pub sampling: Sampling,
    /// Stop strings.
    pub stop: Vec<String>,
    /// Log-probabilities with this many alternatives.
    pub logprobs: Option<usize>,
    /// Server-sent events.
    pub stream: bool,
    /// A last streamed chunk with the usage.
    pub include_usage: bool,
    /// Log-probabilities name tokens as `token_id:N`.
    pub tokens_as_ids: bool,
}

/// A validated chat request.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    /// The model name.
    pub model: String,
    /// The conversation to answer.
    pub conversation: Conversation,
    /// How.
    pub generation: Generation,
}

/// One completion prompt.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    /// Text, tokenized without special tokens added.
    Text(String),
    /// Token ids as they are.
    Ids(Vec<u32>),
}

/// A validated text completion request.
#[derive(Debug, Clone, PartialEq)]
pub struct CompletionRequest {
    /// The model name.
    pub model: String,
    /// One choice per prompt.
    pub prompts: Vec<Prompt>,
    /// Echo the prompt.
    pub echo: bool,
    /// How.
    pub generation: Generation,
}

fn non_negative(param: &str, v: Option<i64>) -> Result<Option<usize>, ApiError> {
    v.map(|n| usize::try_from(n).map_err(|_| ApiError::invalid(param, format!("{param} must be >= 0, got {n}")))).transpose()
}

fn in_range(param: &str, v: Option<f64>, lo: f64, hi: f64, default: f64) -> Result<f64, ApiError> {
    match v {
        None => Ok(default),
        Some(x) if x.is_finite() && (lo..=hi).contains(&x) => Ok(x),
        Some(x) => Err(ApiError::invalid(param, format!("{param} must be between {lo} and {hi}, got {x}"))),
    }
}

impl RawSampling {
    /// Validates the shared fields; `logprobs` comes from the endpoint's own fields.
    pub fn resolve(&self, logprobs: Option<usize>) -> Result<Generation, ApiError> {
        let temperature = in_range("temperature", self.temperature, 0.0, 2.0, 1.0)?;
        let top_p = in_range("top_p", self.top_p, 0.0, 1.0, 1.0)?;
        if top_p == 0.0 {
            return Err(ApiError::invalid("top_p", "top_p must be above 0"));
        }
        let min_p = in_range("min_p", self.min_p, 0.0, 1.0, 0.0)?;
        let repetition_penalty = in_range("repetition_penalty", self.repetition_penalty, 0.01, 100.0, 1.0)?;
        let top_k = match self.top_k {
            None | Some(-1) => 0,
            Some(k) => {
                usize::try_from(k).map_err(|_| ApiError::invalid("top_k", format!("top_k must be >= 0 (or -1 for off), got {k}")))?
            }
        };
        for (param, v) in [("presence_penalty", self.presence_penalty), ("frequency_penalty", self.frequency_penalty)] {
            if v.is_some_and(|x| x != 0.0) {
                return Err(ApiError::invalid(param, format!("{param} is not supported (use repetition_penalty)")));
            }
        }
        if let Some(n) = self.n.filter(|&n| n != 1) {
            return Err(ApiError::invalid("n", format!("n must be 1 (one choice per prompt), got {n}")));
        }
        let max_tokens =
            match (non_negative("max_tokens", self.max_tokens)?, non_negative("max_completion_tokens", self.max_completion_tokens)?) {
                (Some(a), Some(b)) if a != b => {
                    return Err(ApiError::invalid("max_completion_tokens", "max_tokens and max_completion_tokens disagree; give one"))
                }
                (a, b) => a.or(b),
            };
        let stop = match &self.stop {
            None => vec![],
            Some(RawStop::One(s)) => vec![s.clone()],
            Some(RawStop::Many(v)) => v.clone(),
        };
        let stream = self.stream.unwrap_or(false);
        let include_usage = self.stream_options.as_ref().and_then(|o| o.include_usage).unwrap_or(false);
        // Negative seeds are taken as their two's-complement bits (any i64 is a valid seed).
        let seed = self.seed.unwrap_or(0) as u64;
        let sampling = Sampling { temperature, top_k, top_p, min_p, repetition_penalty, seed };
        let tokens_as_ids = self.return_tokens_as_token_ids.unwrap_or(false);
        Ok(Generation { max_tokens, sampling, stop, logprobs, stream, include_usage, tokens_as_ids })
    }
}

fn top_count(param: &str, v: Option<i64>) -> Result<Option<usize>, ApiError> {
    match non_negative(param, v)? {
        Some(n) if n > MAX_TOP_LOGPROBS => Err(ApiError::invalid(param, format!("{param} must be at most {MAX_TOP_LOGPROBS}, got {n}"))),
        n => Ok(n),
    }
}

/// The conversation of OpenAI `messages` (and `tools`), checked as a data row is.
pub fn conversation(messages: &[Value], tools: Option<&Vec<Value>>) -> Result<Conversation, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::invalid("messages", "messages must not be empty"));
    }
    let mut row = Map::new();
    row.insert("messages".into(), Value::Array(messages.to_vec()));
    if let Some(tools) = tools {
        row.insert("tools".into(), Value::Array(tools.clone()));
    }
    let source = RowRef { file: "request".into(), row: 1 };
    openai::convert(&drop_null_keys(&row), &source, "messages").map_err(|e| ApiError::invalid("messages", format!("messages: {e}")))
}

impl RawChatRequest {
    /// Validates the request with its shared fields.
    pub fn resolve(&self, sampling: &RawSampling) -> Result<ChatRequest, ApiError> {
        let top = top_count("top_logprobs", self.top_logprobs)?;
        let logprobs = match (self.logprobs.unwrap_or(false), top) {
            (true, top) => Some(top.unwrap_or(0)),
            (false, Some(_)) => return Err(ApiError::invalid("top_logprobs", "top_logprobs needs logprobs: true")),
            (false, None) => None,
        };
        let generation = sampling.resolve(logprobs)?;
        Ok(ChatRequest { model: self.model.clone(), conversation: conversation(&self.messages, self.tools.as_ref())?, generation })
    }
}

/// Token ids from JSON integers: each must fit a u32 (the vocabulary is checked later).
pub fn token_ids(param: &str, ids: &[i64]) -> Result<Vec<u32>, ApiError> {
    ids.iter()
        .enumerate()
        .map(|(i, &t)| {
            u32::try_from(t).map_err(|_| ApiError::invalid(format!("{param}[{i}]"), format!("{param}[{i}]: {t} is not a token id")))
        })
        .collect()
}

impl RawCompletionRequest {
    /// Validates the request with its shared fields.
    pub fn resolve(&self, sampling: &RawSampling) -> Result<CompletionRequest, ApiError> {
        let prompts = match &self.prompt {
            RawPrompt::Text(t) => vec![Prompt::Text(t.clone())],
            RawPrompt::Texts(v) => v.iter().cloned().map(Prompt::Text).collect(),
            RawPrompt::Ids(ids) => vec![Prompt::Ids(token_ids("prompt", ids)?)],
            RawPrompt::IdLists(lists) => lists
                .iter()
                .enumerate()
                .map(|(i, ids)| token_ids(&format!("prompt[{i}]"), ids).map(Prompt::Ids))
                .collect::<Result<_, _>>()?,
        };
        if prompts.is_empty() {
            return Err(ApiError::invalid("prompt", "prompt must not be empty"));
        }
        let mut generation = sampling.resolve(top_count("logprobs", self.logprobs)?)?;
        generation.max_tokens = Some(generation.max_tokens.unwrap_or(COMPLETION_DEFAULT_MAX_TOKENS));
        if generation.stream && prompts.len() > 1 {
            return Err(ApiError::invalid("stream", "streaming takes one prompt"));
        }
        Ok(CompletionRequest { model: self.model.clone(), prompts, echo: self.echo.unwrap_or(false), generation })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A short deterministic stand-in for the `serve_request` fuzz target (fuzz/): seeds cut,
    /// spliced and with bytes replaced must all end in a request or an error.
    #[test]
    fn mangled_bodies_never_panic() {
        let seeds: [&[u8]; 3] = [
            br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":4,"stream":true,"stop":["x"],"logprobs":true,"top_logprobs":2}"#,
            br#"{"model":"m","prompt":[[1,2],[3]],"echo":true,"logprobs":1,"max_tokens":0,"temperature":0.5,"top_k":-1,"seed":-3}"#,
            br#"{"tokens":[1,2,3],"messages":[{"role":"tool","content":[{"type":"text","text":"x"}]}],"tools":[{"type":"function"}]}"#,
        ];
        let pieces: [&[u8]; 10] = [b"-1", b"1e999", b"null", b"[]", b"{}", b"\"\xff\"", b"\"", b",", b"18446744073709551616", b"true"];
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let mut body = seeds[(next() % 3) as usize].to_vec();
            for _ in 0..1 + next() % 3 {
                let at = (next() as usize) % (body.len() + 1);
                match next() % 3 {
                    0 => body.truncate(at),
                    1 => body.splice(at..at, pieces[(next() % 10) as usize].iter().copied()).for_each(drop),
                    _ => {
                        if at < body.len() {
                            body[at] = next() as u8;
                        }
                    }
                }
            }
            if let Ok((r, s)) = parse_generating::<RawChatRequest>(&body) {
                let _ = r.resolve(&s);
            }
            if let Ok((r, s)) = parse_generating::<RawCompletionRequest>(&body) {
                let _ = r.resolve(&s);
            }
            let _ = parse::<RawTokenizeRequest>(&body);
            let _ = parse::<RawDetokenizeRequest>(&body);
        }
    }

    #[test]
    fn errors_name_the_field() {
        let e = parse_generating::<RawChatRequest>(br#"{"model": "m", "messages": [], "max_tokens": "x"}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("max_tokens"), "{e:?}");
        let e = parse::<RawChatRequest>(br#"{"messages": []}"#).unwrap_err();
        assert!(e.message.contains("model"), "{e:?}");
        let e = parse::<RawChatRequest>(b"{\"model\": \"m\xff\"}").unwrap_err();
        assert!(e.message.contains("UTF-8"), "{e:?}");
        let (r, sampling) =
            parse_generating::<RawChatRequest>(br#"{"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": -1}"#)
                .unwrap();
        let e = r.resolve(&sampling).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("max_tokens"));
        let (r, sampling) =
            parse_generating::<RawCompletionRequest>(br#"{"model": "m", "prompt": [[1, 2], [3]], "logprobs": 2, "echo": true}"#).unwrap();
        let r = r.resolve(&sampling).unwrap();
        assert_eq!(r.prompts, vec![Prompt::Ids(vec![1, 2]), Prompt::Ids(vec![3])]);
        assert_eq!(r.generation.logprobs, Some(2));
    }
}
