//! Byte-level BPE on one piece: the merge loop of the tokenizers crate (lowest merge rank first,
//! leftmost on ties), over bytes instead of their printable stand-ins, with a per-thread cache.

use std::borrow::Cow;
use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};

use ahash::AHashMap;
use rayon::prelude::*;

use super::config::{byte_chars, Text};

/// Pieces longer than this (in bytes) are merged every time, not cached (as in tokenizers).
const CACHED_PIECE_LEN: usize = 256;
/// A thread's cache is emptied when it holds this many pieces, so memory stays bounded.
const CACHE_ENTRIES: usize = 200_000;

/// Tells caches of different models apart.
static NEXT_MODEL: AtomicU64 = AtomicU64::new(0);

/// Merged pieces (bytes → ids), and the model they were merged for.
type PieceCache = (u64, AHashMap<Box<[u8]>, Box<[u32]>>);

thread_local! {
    /// The pieces this thread merged last, for the model that merged them.
    static CACHE: RefCell<PieceCache> = RefCell::new((u64::MAX, AHashMap::new()));
}

/// (left id, right id) → (rank, merged id).
type Merges = AHashMap<(u32, u32), (u32, u32)>;

/// A byte-level BPE model.
pub(super) struct BytePairs {
    id: u64,
    /// The id of each single byte.
    byte_ids: [u32; 256],
    /// (left, right) → (rank, merged id).
    merges: Merges,
    /// Whole pieces found in the vocabulary (only with `ignore_merges`).
    whole: Option<AHashMap<Box<[u8]>, u32>>,
    /// The byte length of each id's token.
    lens: Vec<u32>,
}

/// A symbol of a piece being merged (a doubly linked list over a vector, as in tokenizers).
#[derive(Clone, Copy)]
struct Symbol {
    id: u32,
    prev: usize,
    next: usize,
    live: bool,
}

/// Where a linked list ends.
const NONE: usize = usize::MAX;

impl BytePairs {
    /// `None` when a byte or a merge part is missing from `vocab`.
    pub(super) fn new(vocab: &AHashMap<Text<'_>, u32>, merges: &[(Cow<'_, str>, Cow<'_, str>)], ignore_merges: bool) -> Option<Self> {
        let chars = byte_chars();
        let mut byte_of = HashMap::with_capacity(256);
        let mut byte_ids = [0u32; 256];
        for (b, c) in chars.iter().enumerate() {
            byte_of.insert(*c, b as u8);
            byte_ids[b] = *vocab.get(c.to_string().as_str())?;
        }
        // Three independent passes over 150k-entry tables: run them side by side.
        let lens = || {
            let max_id = vocab.values().copied().max().unwrap_or(0) as usize;
            let mut lens = vec![0u32; max_id + 1];
            for (token, &id) in vocab {
                lens[id as usize] = token.0.chars().count() as u32;
            }
            lens
        };
        let merge_map = || -> Option<Merges> {
            let pairs: Option<Vec<_>> = merges
                .par_iter()
                .enumerate()
                .map_init(String::new, |joined, (rank, (a, b))| {
                    joined.clear();
                    joined.push_str(a);
                    joined.push_str(b);
                    let (ia, ib, new) = (*vocab.get(a.as_ref())?, *vocab.get(b.as_ref())?, *vocab.get(joined.as_str())?);
                    Some(((ia, ib), (rank as u32, new)))
                })
                .collect();
            let pairs = pairs?;
            let mut map = AHashMap::with_capacity(pairs.len());
            // In rank order, so a pair listed twice keeps its last rank (as before).
            map.extend(pairs);
            Some(map)
        };
        let whole = || {
            ignore_merges.then(|| {
                vocab
                    .iter()
                    .filter_map(|(token, &id)| {
                        let bytes: Option<Vec<u8>> = token.0.chars().map(|c| byte_of.get(&c).copied()).collect();
                        Some((bytes?.into_boxed_slice(), id))
                    })
                    .collect()
            })
        };
        let (merge_map, (lens, whole)) = rayon::join(merge_map, || rayon::join(lens, whole));
        let merge_map = merge_map?;
        let id = NEXT_MODEL.fetch_add(1, Ordering::Relaxed);
        Some(BytePairs { id, byte_ids, merges: merge_map, whole, lens })
    }

    /// The byte length of token `id` (a model token, not an added one).
    pub(super) fn token_len(&self, id: u32) -> usize {
        self.lens.get(id as usize).copied().unwrap_or(0) as usize
    }

    /// Appends the ids of `piece` to `out`.
    pub(super) fn encode(&self, piece: &[u8], out: &mut Vec<u32>) {
        if let [b] = piece {
            out.push(self.byte_ids[*b as usize]);
            return;
        }
        if let Some(&id) = self.whole.as_ref().and_then(|w| w.get(piece)) {
            out.push(id);
            return;
        }
        if piece.len() > CACHED_PIECE_LEN {
            self.merge(piece, out);
            return;
        }
        CACHE.with(|cache| {
            let mut cache = cache.borrow_mut();
            if cache.0 != self.id {
                *cache = (self.id, AHashMap::new());
            }
            if let Some(ids) = cache.1.get(piece) {
                out.extend_from_slice(ids);
                return;
            }
            let from = out.len();
            self.merge(piece, out);
            if cache.1.len() >= CACHE_ENTRIES {
                cache.1.clear();
            }
            cache.1.insert(piece.into(), out[from..].into());
        });
    }

    /// The merge loop: repeatedly merge the adjacent pair of lowest rank (leftmost on ties).
    fn merge(&self, piece: &[u8], out: &mut Vec<u32>) {
        let n = piece.len();
        let mut symbols: Vec<Symbol> = piece
            .iter()
            .enumerate()
            .map(|(i, &b)| Symbol {
                id: self.byte_ids[b as usize],
                prev: if i == 0 { NONE } else { i - 1 },
                next: if i + 1 == n { NONE } else { i + 1 },
                live: true,
            })
            .collect();
        let mut queue: BinaryHeap<Reverse<(u32, usize, u32)>> = symbols
            .windows(2)
            .enumerate()
            .filter_map(|(i, w)| self.merges.get(&(w[0].id, w[1].id)).map(|&(rank, new)| Reverse((rank, i, new))))
            .collect();
        while let Some(Reverse((_, pos, new))) = queue.pop() {
            let left = symbols[pos];
            if !left.live || left.next == NONE {
                continue;
            }
            let right = symbols[left.next];
            // A stale entry: the pair at `pos` changed since it was queued.
            if self.merges.get(&(left.id, right.id)).is_none_or(|&(_, id)| id != new) {
                continue;
            }
            symbols[pos].id = new;
            symbols[pos].next = right.next;
            symbols[left.next].live = false;
            if right.next != NONE {
                symbols[right.next].prev = pos;
            }
            if left.prev != NONE {
                let prev = symbols[left.prev];
                if let Some(&(rank, id)) = self.merges.get(&(prev.id, new)) {
                    queue.push(Reverse((rank, left.prev, id)));
                }
            }
            if right.next != NONE {
                let next = symbols[right.next];
                if let Some(&(rank, id)) = self.merges.get(&(new, next.id)) {
                    queue.push(Reverse((rank, pos, id)));
                }
            }
        }
        let mut at = 0;
        while at != NONE {
            out.push(symbols[at].id);
            at = symbols[at].next;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vocab(merges: &[(&str, &str)]) -> AHashMap<Text<'static>, u32> {
        let mut vocab: AHashMap<Text, u32> =
            byte_chars().iter().enumerate().map(|(b, c)| (Text(Cow::Owned(c.to_string())), b as u32)).collect();
        for (a, b) in merges {
            let next = vocab.len() as u32;
            vocab.entry(Text(Cow::Owned(format!("{a}{b}")))).or_insert(next);
        }
        vocab
    }

    fn model(merges: &[(&'static str, &'static str)]) -> (BytePairs, AHashMap<Text<'static>, u32>) {
        let vocab = vocab(merges);
        let merges: Vec<(Cow<str>, Cow<str>)> = merges.iter().map(|(a, b)| (Cow::Borrowed(*a), Cow::Borrowed(*b))).collect();
        (BytePairs::new(&vocab, &merges, false).unwrap(), vocab)
    }

    fn encode(m: &BytePairs, vocab: &AHashMap<Text, u32>, text: &str) -> Vec<String> {
        let by_id: HashMap<u32, String> = vocab.iter().map(|(k, v)| (*v, k.0.to_string())).collect();
        let mut out = Vec::new();
        m.encode(text.as_bytes(), &mut out);
        out.iter().map(|id| by_id[id].clone()).collect()
    }

    #[test]
    fn lower_ranks_merge_first_and_ties_go_left() {
        let (m, vocab) = model(&[("a", "a"), ("b", "c"), ("aa", "a"), ("a", "bc")]);
        assert_eq!(encode(&m, &vocab, "aaa"), ["aaa"]);
        assert_eq!(encode(&m, &vocab, "aaaa"), ["aa", "aa"]);
        assert_eq!(encode(&m, &vocab, "abc"), ["abc"]);
        assert_eq!(encode(&m, &vocab, "aaab"), ["aaa", "b"]);
        assert_eq!(encode(&m, &vocab, "x"), ["x"]);
        // cached the second time
        assert_eq!(encode(&m, &vocab, "abc"), ["abc"]);
        assert_eq!(m.token_len(vocab["abc"]), 3);
    }

    #[test]
    fn merges_naming_unknown_tokens_are_refused() {
        let vocab = vocab(&[]);
        assert!(BytePairs::new(&vocab, &[(Cow::Borrowed("a"), Cow::Borrowed("b"))], false).is_none());
    }
}
