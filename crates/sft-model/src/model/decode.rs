//! Decoding with KV caches, one sequence or several at once. A prompt (or any run of new
//! tokens of one sequence) goes through the layers as one block of rows; a decoding step of
//! several sequences — one new token each, each with its own cache and position — goes through
//! them as one block too, so every weight is read from memory once per step for all of them
//! (decoding is memory-bound: this is what makes a server's aggregate throughput grow with the
//! number of streams). Rows of different sequences meet only in the linear layers; attention
//! reads each row's own cache.
//!
//! RoPE that changes with the length (dynamic NTK, LongRoPE) is applied as in transformers'
//! cached generation: a call's new tokens are rotated with the frequencies of the sequence's
//! length so far (its newest position + 1), and keys already in the cache keep the rotation
//! they got when they were new. A sequence decoded past `max_position_embeddings` (dynamic) or
//! `original_max_position_embeddings` (LongRoPE) therefore gives other logits than a full
//! forward over it (which rotates every token for the whole length), exactly as transformers'
//! cached and uncached forwards differ. Two differences from transformers: in a step of several
//! sequences each row gets its own sequence's length (transformers' batched generate uses the
//! longest row's), so a step equals each sequence decoded alone; and every call is computed
//! from its own length, where transformers' dynamic RoPE keeps the frequencies of the longest
//! length it has seen for later calls between `max_position_embeddings` and that length.

use std::sync::Arc;

use candle_core::Tensor;

use super::greedy::argmax;
use super::kv_cache::KvCache;
use super::layer::{self, Context};
use super::{Cache, Model};
use crate::error::TensorContext;
use crate::ops::{qmatmul, rms_norm, RopeTable, MATVEC_MAX_ROWS};
use crate::ModelError;

/// One sequence's next decoding step: the token it just took, its cache, and whether only the
/// greedy choice is wanted (the logits are not needed).
pub struct DecodeRow<'a> {
    /// The newest token (not yet in the cache).
    pub id: u32,
    /// The keys and values of every token before it; extended by `id`.
    pub cache: &'a mut Cache,
    /// Whether to return only the id with the largest logit.
    pub greedy: bool,
}

/// What a decoding step gives for one sequence.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    /// The greedy token (the first among equal largest logits).
    Id(u32),
    /// The logits of the next token, `[vocab]`.
    Logits(Vec<f32>),
}

impl Model {
    /// Runs `ids` (the next tokens of one sequence) with the cache of the tokens before them and
    /// returns the logits of the last one, `[vocab]`; the cache then covers `ids` too.
    pub fn forward_cached(&self, ids: &[u32], cache: &mut Cache) -> Result<Tensor, ModelError> {
        let last = self.cached_rows(ids, &mut [cache])?;
        self.head(&last).and_then(|z| z.flatten_all()).during(|| "output layer".into())
    }

    /// [`forward_cached`](Self::forward_cached) for greedy decoding: the id with the largest
    /// logit (the first among equal ones), exactly as the full logits give it, but found
    /// reading most of the output layer in bf16 (see `greedy.rs`) when the layer is frozen
    /// f32 without a final soft-cap.
    pub fn next_greedy(&self, ids: &[u32], cache: &mut Cache) -> Result<u32, ModelError> {
        let last = self.cached_rows(ids, &mut [cache])?;
        match self.outputs(&last, &[true])?.pop() {
            Some(Next::Id(id)) => Ok(id),
            _ => Err(ModelError::Batch("greedy decoding gave no token".into())),
        }
    }

    /// One decoding step of several sequences: each row's token is appended to its cache and
    /// the next token (greedy rows) or the logits are returned, in order. The rows run in
    /// groups of up to [`MATVEC_MAX_ROWS`], each group reading the weights once; every row's
    /// result equals what a step of that sequence alone gives.
    pub fn decode_rows(&self, rows: &mut [DecodeRow<'_>]) -> Result<Vec<Next>, ModelError> {
        let mut out = Vec::with_capacity(rows.len());
        for group in rows.chunks_mut(MATVEC_MAX_ROWS) {
            let ids: Vec<u32> = group.iter().map(|r| r.id).collect();
            let greedy: Vec<bool> = group.iter().map(|r| r.greedy).collect();
            let mut caches: Vec<&mut Cache> = group.iter_mut().map(|r| &mut *r.cache).collect();
            let last = self.cached_rows(&ids, &mut caches)?;
            out.extend(self.outputs(&last, &greedy)?);
        }
        Ok(out)
    }

    /// The final hidden states `[caches, hidden]` after new tokens: with one cache, `ids` are
    /// that sequence's next tokens and the last one's state is returned; with several, `ids`
    /// has one token per cache. Each cache is extended by its tokens.
    fn cached_rows(&self, ids: &[u32], caches: &mut [&mut Cache]) -> Result<Tensor, ModelError> {
        let cfg = &self.config;
        if let Some(&bad) = ids.iter().find(|&&t| t as usize >= cfg.vocab_size) {
            return Err(ModelError::Batch(format!("token id {bad} is outside the vocabulary of {}", cfg.vocab_size)));
        }
        if ids.is_empty() || caches.is_empty() || (caches.len() > 1 && ids.len() != caches.len()) {
            return Err(ModelError::Batch(format!("{} new tokens for {} sequences", ids.len(), caches.len())));
        }
        for cache in caches.iter_mut() {
            if cache.layers.len() != self.layers.len() {
                cache.layers = vec![KvCache::default(); self.layers.len()];
            }
        }
        let n = ids.len();
        let positions: Vec<u32> = match &*caches {
            [one] => (one.tokens..one.tokens + n).map(|p| p as u32).collect(),
            many => many.iter().map(|c| c.tokens as u32).collect(),
        };
        let cx = self.cached_context(&positions, caches.len() > 1);
        let mut run = || -> candle_core::Result<Tensor> {
            let idx = Tensor::from_slice(ids, n, &candle_core::Device::Cpu)?;
            let mut h = self.embed.index_select(&idx, 0)?;
            if let Some(s) = cfg.embed_scale {
                h = (h * s as f64)?;
            }
            for (l, layer) in self.layers.iter().enumerate() {
                let mut kv: Vec<&mut KvCache> = caches.iter_mut().map(|c| &mut c.layers[l]).collect();
                h = layer.forward(&h, cfg, &cx, Some(&mut kv))?;
            }
            let last = if caches.len() == 1 { h.narrow(0, n - 1, 1)? } else { h };
            rms_norm(&last, &self.norm, cfg.rms_norm_eps, cfg.norm_offset)
        };
        let last = run().during(|| "cached forward".into())?;
        let per_cache = if caches.len() == 1 { n } else { 1 };
        caches.iter_mut().for_each(|c| c.tokens += per_cache);
        Ok(last)
    }

    /// Each row's result from the final hidden states `last` `[rows, hidden]`: the greedy id
    /// where `greedy[row]`, else the logits. When every row is greedy the bf16 screen is tried
    /// first (one read of it for all rows).
    fn outputs(&self, last: &Tensor, greedy: &[bool]) -> Result<Vec<Next>, ModelError> {
        if greedy.iter().all(|&g| g) {
            if let Some(ids) = self.screened_argmax(last)? {
                return Ok(ids.into_iter().map(Next::Id).collect());
            }
        }
        let logits = self.head(last).and_then(|z| z.to_vec2::<f32>()).during(|| "output layer".into())?;
        Ok(logits.into_iter().zip(greedy).map(|(z, &g)| if g { Next::Id(argmax(&z) as u32) } else { Next::Logits(z) }).collect())
    }

    /// The greedy ids of `last`'s rows through the bf16 screen of a frozen f32 output layer
    /// without a final soft-cap; `None` where it does not apply.
    fn screened_argmax(&self, last: &Tensor) -> Result<Option<Vec<u32>>, ModelError> {
        let weight = self.output_weight();
        if self.head_bf16.is_some() || self.config.final_softcap.is_some() || weight.track_op() || last.track_op() {
            return Ok(None);
        }
        let rows = last.dims2().during(|| "reading the last hidden states".into())?.0;
        let x = last.flatten_all().and_then(|t| t.to_vec1::<f32>()).during(|| "reading the last hidden states".into())?;
        let w = weight.flatten_all().during(|| "output layer".into())?;
        let (storage, layout) = w.storage_and_layout();
        let (candle_core::Storage::Cpu(cpu), Some((start, end))) = (&*storage, layout.contiguous_offsets()) else { return Ok(None) };
        let Ok(data) = cpu.as_slice::<f32>() else { return Ok(None) };
        let w = &data[start..end];
        let screen = self.greedy.get_or_init(|| super::GreedyScreen::new(w, x.len() / rows.max(1)));
        Ok(screen.as_ref().and_then(|s| s.argmax_rows(w, &x, rows)).map(|ids| ids.into_iter().map(|i| i as u32).collect()))
    }

    /// The logits `[rows, vocab]` of final hidden states `[rows, hidden]`.
    fn head(&self, last: &Tensor) -> candle_core::Result<Tensor> {
        let z = match &self.head_bf16 {
            Some(head) => qmatmul(last, head)?,
            None => layer::project(last, self.output_weight())?,
        };
        self.final_softcap(z)
    }

    /// RoPE tables for new tokens at `positions` (the caches do the masking): of one sequence,
    /// or, when `each_newest`, the newest token of a different sequence each.
    fn cached_context(&self, positions: &[u32], each_newest: bool) -> Context {
        let table = |rope| if each_newest { RopeTable::newest(positions, rope) } else { RopeTable::forward(positions, rope) };
        let ropes = self.config.layers.iter().map(|l| Arc::new(table(&l.rope))).collect();
        Context { batch: 1, seq: positions.len(), starts: vec![], ropes, dropout: None }
    }
}
