//! Generation: token ids are decoded one at a time after the prompt with a KV cache
//! ([`decode_tokens`]), until a stop token, a stop string or `max_new_tokens`; the text grows
//! with them and is handed out piece by piece as it becomes final ([`TextStream`]): a piece
//! never ends inside a UTF-8 character or with what could be the start of a stop string, and a
//! stop string and everything after it never show (OpenAI's `stop` semantics).

use sft_data::conversation::Conversation;
use sft_data::tokens::{TextTokenizer, TokenError};
use sft_model::model::{log_softmax, top_n, Cache, DecodeRow, Model, Next, TokenLogprobs};
use sft_model::rng::SplitMix;
use sft_model::ModelError;

use crate::sampling::{choose, Sampling};
use crate::{InferError, Inference};

/// How to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateParams {
    /// Most new tokens.
    pub max_new_tokens: usize,
    /// How tokens are chosen.
    pub sampling: Sampling,
    /// Texts that end the answer where they appear (not included in it).
    pub stop: Vec<String>,
}

impl Default for GenerateParams {
    fn default() -> Self {
        Self { max_new_tokens: 256, sampling: Sampling::default(), stop: vec![] }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// A stop token was produced (it is the last id).
    Stop,
    /// A stop string appeared in the text.
    StopString,
    /// `max_new_tokens` were produced.
    Length,
}

/// A generated answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generation {
    /// The text, special tokens left out, cut before a stop string.
    pub text: String,
    /// Every new id (a stop token included).
    pub ids: Vec<u32>,
    /// Why it ended.
    pub finish: Finish,
}

/// One sequence being decoded: its ids so far (prompt and output), its KV cache and its
/// sampler. [`decode_tokens`] runs one to the end; a server steps many in turn.
pub struct Decoder {
    ids: Vec<u32>,
    /// The ids the cache has not seen yet (the prompt, then the last new id).
    fresh: Vec<u32>,
    cache: Cache,
    rng: SplitMix,
    sampling: Sampling,
}

/// A new token and, when asked for, its log-probability and the most likely tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// The token.
    pub id: u32,
    /// Its log-probability under the model's distribution (before temperature, top-k and the
    /// other processors) with the top tokens.
    pub logprobs: Option<TokenLogprobs>,
}

impl Decoder {
    /// A sequence starting from `prompt`, sampled as `sampling` says.
    pub fn new(prompt: &[u32], sampling: &Sampling) -> Self {
        Self {
            ids: prompt.to_vec(),
            fresh: prompt.to_vec(),
            cache: Cache::default(),
            rng: SplitMix(sampling.seed),
            sampling: sampling.clone(),
        }
    }

    /// Decodes the next token; `logprobs = Some(n)` also returns its log-probability with the
    /// `n` most likely tokens.
    pub fn step(&mut self, model: &Model, logprobs: Option<usize>) -> Result<Step, ModelError> {
        // On a worker of the thread pool, so the kernels' parallel loops start without a
        // cross-thread hand-off each (one per token instead of hundreds).
        let next = if self.greedy(logprobs) {
            Next::Id(rayon::scope(|_| model.next_greedy(&self.fresh, &mut self.cache))?)
        } else {
            let logits = rayon::scope(|_| model.forward_cached(&self.fresh, &mut self.cache))?;
            Next::Logits(logits.to_vec1::<f32>().map_err(|source| ModelError::Tensor { context: "reading logits".into(), source })?)
        };
        Ok(self.accept(next, logprobs))
    }

    /// One step of several sequences of the same model, each with its `logprobs` request: those
    /// that have only their last token left to feed are decoded together (one pass through the
    /// weights per group of rows, see [`Model::decode_rows`]), those still at their prompt one
    /// by one. Each gets exactly the token a [`step`](Self::step) of it alone would give.
    pub fn step_all(model: &Model, decoders: &mut [(&mut Decoder, Option<usize>)]) -> Result<Vec<Step>, ModelError> {
        let mut steps: Vec<Option<Step>> = vec![None; decoders.len()];
        let mut rows = vec![];
        let mut batched = vec![];
        for (i, (d, logprobs)) in decoders.iter_mut().enumerate() {
            match d.fresh[..] {
                [id] => {
                    let greedy = d.greedy(*logprobs);
                    rows.push(DecodeRow { id, cache: &mut d.cache, greedy });
                    batched.push(i);
                }
                _ => steps[i] = Some(d.step(model, *logprobs)?),
            }
        }
        let nexts = rayon::scope(|_| model.decode_rows(&mut rows))?;
        drop(rows);
        for (i, next) in batched.into_iter().zip(nexts) {
            let (d, logprobs) = &mut decoders[i];
            steps[i] = Some(d.accept(next, *logprobs));
        }
        Ok(steps.into_iter().flatten().collect())
    }

    /// Whether the next token is the plain greedy choice (no logits needed).
    fn greedy(&self, logprobs: Option<usize>) -> bool {
        let s = &self.sampling;
        s.temperature <= 0.0 && s.repetition_penalty == 1.0 && logprobs.is_none()
    }

    /// Takes the model's output for the next token: the greedy id, or a token chosen from the
    /// logits (with its log-probabilities when asked).
    fn accept(&mut self, next: Next, logprobs: Option<usize>) -> Step {
        let (next, lp) = match next {
            Next::Id(id) => (id, None),
            Next::Logits(mut logits) => {
                let lp = logprobs.map(|n| (log_softmax(&logits), n));
                let next = choose(&mut logits, &self.ids, &self.sampling, &mut self.rng);
                (next, lp.map(|(lp, n)| TokenLogprobs { logprob: lp[next as usize], top: top_n(&lp, n) }))
            }
        };
        self.fresh = vec![next];
        self.ids.push(next);
        Step { id: next, logprobs: lp }
    }
}

/// Decodes up to `max_new_tokens` ids after `prompt`, ending after one of `stop_ids`;
/// `on_token` sees each new id and returns whether to go on (`false`: [`Finish::StopString`]).
pub fn decode_tokens(
    model: &Model,
    prompt: &[u32],
    max_new_tokens: usize,
    stop_ids: &[u32],
    sampling: &Sampling,
    mut on_token: impl FnMut(u32) -> bool,
) -> Result<(Vec<u32>, Finish), ModelError> {
    let mut decoder = Decoder::new(prompt, sampling);
    let mut out = vec![];
    for _ in 0..max_new_tokens {
        let next = decoder.step(model, None)?.id;
        out.push(next);
        if !on_token(next) {
            return Ok((out, Finish::StopString));
        }
        if stop_ids.contains(&next) {
            return Ok((out, Finish::Stop));
        }
    }
    Ok((out, Finish::Length))
}

/// The text of generated ids as it grows.
pub struct TextStream<'a> {
    tokenizer: &'a TextTokenizer,
    stop: &'a [String],
    ids: Vec<u32>,
    /// The text so far, cut before a stop string once one appeared.
    text: String,
    /// What has been handed out (a prefix of `text`).
    shown: String,
    stopped: bool,
}

impl<'a> TextStream<'a> {
    /// A stream decoding with `tokenizer` and ending at any of `stop` (empty strings ignored).
    pub fn new(tokenizer: &'a TextTokenizer, stop: &'a [String]) -> Self {
        Self { tokenizer, stop, ids: vec![], text: String::new(), shown: String::new(), stopped: false }
    }

    /// Adds a new id; returns the text that became final (maybe empty) and whether a stop
    /// string has appeared.
    pub fn push(&mut self, id: u32) -> Result<(String, bool), TokenError> {
        self.ids.push(id);
        let text = self.tokenizer.decode(&self.ids, true)?;
        let cut = self.stop.iter().filter(|s| !s.is_empty()).filter_map(|s| text.find(s.as_str())).min();
        self.stopped = cut.is_some();
        self.text = match cut {
            Some(at) => text[..at].to_string(),
            None => text,
        };
        let hold = if self.stopped { 0 } else { held_back(&self.text, self.stop) };
        Ok((self.release(self.text.len() - hold), self.stopped))
    }

    /// The text held back until now (generation ended without a stop string completing).
    pub fn finish(&mut self) -> String {
        self.release(self.text.len())
    }

    /// The whole text.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Hands out `text[..end]` beyond what was shown, when it extends what was shown (decoding
    /// more ids can change the last characters, e.g. a replacement character that becomes a
    /// whole one).
    fn release(&mut self, end: usize) -> String {
        let ready = &self.text[..end];
        if ready.len() <= self.shown.len() || !ready.starts_with(self.shown.as_str()) {
            return String::new();
        }
        let piece = ready[self.shown.len()..].to_string();
        self.shown = ready.to_string();
        piece
    }
}

/// How many bytes at the end of `text` must wait: a replacement character (the ids so far end
/// inside a UTF-8 character), or the longest tail that begins a stop string.
fn held_back(text: &str, stop: &[String]) -> usize {
    if text.ends_with('\u{FFFD}') {
        return text.len() - text.trim_end_matches('\u{FFFD}').len() + held_back(text.trim_end_matches('\u{FFFD}'), stop);
    }
    stop.iter()
        .flat_map(|s| s.char_indices().skip(1).map(move |(i, _)| &s[..i]))
        .filter(|prefix| text.ends_with(prefix))
        .map(str::len)
        .max()
        .unwrap_or(0)
}

impl Inference {
    /// Generates after `prompt` (token ids); `on_text` gets the text piece by piece.
    pub fn generate(&self, prompt: &[u32], params: &GenerateParams, mut on_text: impl FnMut(&str)) -> Result<Generation, InferError> {
        let mut stream = TextStream::new(&self.tokenizer, &params.stop);
        let mut failed = None;
        let (ids, finish) =
            decode_tokens(&self.model, prompt, params.max_new_tokens, self.stop_ids(), &params.sampling, |id| match stream.push(id) {
                Ok((piece, stopped)) => {
                    if !piece.is_empty() {
                        on_text(&piece);
                    }
                    !stopped
                }
                Err(e) => {
                    failed = Some(e);
                    false
                }
            })?;
        if let Some(e) = failed {
            return Err(e.into());
        }
        let rest = stream.finish();
        if !rest.is_empty() {
            on_text(&rest);
        }
        Ok(Generation { text: stream.text().to_string(), ids, finish })
    }

    /// The answer to `conversation`: its prompt (see [`Inference::prompt_ids`]), generated from.
    pub fn answer(
        &self,
        conversation: &Conversation,
        params: &GenerateParams,
        on_text: impl FnMut(&str),
    ) -> Result<Generation, InferError> {
        self.generate(&self.prompt_ids(conversation)?, params, on_text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_back_is_the_longest_tail_that_starts_a_stop_string() {
        let stop = vec!["###".to_string(), "\nUser:".to_string()];
        assert_eq!(held_back("answer #", &stop), 1);
        assert_eq!(held_back("answer ##", &stop), 2);
        assert_eq!(held_back("answer\nUse", &stop), 4);
        assert_eq!(held_back("answer", &stop), 0);
        assert_eq!(held_back("caf\u{FFFD}", &stop), 3);
        assert_eq!(held_back("x #\u{FFFD}", &[]), 3);
        assert_eq!(held_back("x #\u{FFFD}", &stop), 4);
    }
}
