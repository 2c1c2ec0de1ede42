//! Cutting text into the pieces BPE sees, as the tokenizers crate cuts it: added tokens first
//! (leftmost-longest, raw then normalized), then the pre-tokenizer's regex (`Isolated`: matches
//! and the gaps between them are pieces).
//!
//! The regexes are onig patterns ending in `\s+(?!\S)|\s+`, a look-ahead the `regex` crate
//! lacks. It is emulated exactly: search for the rest of the pattern or, at lower priority, a
//! plain `\s+`; when the `\s+` alternative matched a run that a non-space follows, drop the run's
//! last character (what the look-ahead backs off to), unless that leaves it empty.

use aho_corasick::{AhoCorasick, MatchKind};
use regex_automata::meta::Regex;
use regex_automata::{Anchored, Input};

/// The look-ahead tail the regex must end with.
const SPACE_TAIL: &str = r"|\s+(?!\S)|\s+";

/// Constructs whose meaning differs between onig and the `regex` crate (anchors are line
/// anchors in onig's Ruby syntax) or that the `regex` crate lacks.
const UNSUPPORTED: &[&str] = &["(?=", "(?!", "(?<", "(?>", "\\b", "\\B", "\\A", "\\z", "\\Z", "\\G", "\\h", "\\K", "$"];

/// The pre-tokenizer's regex, compiled for the `regex` crate.
pub(super) struct PieceSplitter {
    re: Regex,
}

impl PieceSplitter {
    /// `None` when the pattern is not one this emulation reproduces.
    pub(super) fn new(pattern: &str) -> Option<Self> {
        let rest = pattern.strip_suffix(SPACE_TAIL)?;
        if UNSUPPORTED.iter().any(|u| rest.contains(u)) || rest.replace("[^", "").contains('^') {
            return None;
        }
        let re = Regex::new_many(&[rest, r"\s+"]).ok()?;
        Some(PieceSplitter { re })
    }

    /// Calls `piece(start, end)` for each piece of `text`, in order; `false` when the regex
    /// matched an empty string (the caller then falls back to the tokenizers crate).
    pub(super) fn split(&self, text: &str, mut piece: impl FnMut(usize, usize)) -> bool {
        let mut pos = 0;
        while pos < text.len() {
            // Pieces nearly always follow each other without a gap: a match anchored at `pos` is
            // the leftmost one and needs no backward scan for its start.
            let input = Input::new(text).range(pos..);
            let found = self.re.search(&input.clone().anchored(Anchored::Yes)).or_else(|| self.re.search(&input));
            let Some(m) = found else {
                piece(pos, text.len());
                break;
            };
            if m.is_empty() {
                return false;
            }
            if m.start() > pos {
                piece(pos, m.start());
            }
            let mut end = m.end();
            if m.pattern().as_usize() == 1 && end < text.len() {
                let last = text[m.start()..end].chars().next_back().map_or(0, char::len_utf8);
                if end - last > m.start() {
                    end -= last;
                }
            }
            piece(m.start(), end);
            pos = end;
        }
        true
    }
}

/// The added tokens, found as the tokenizers crate finds them.
pub(super) struct AddedTokens {
    raw: Option<(AhoCorasick, Vec<u32>)>,
    normalized: Option<(AhoCorasick, Vec<u32>)>,
}

/// A part of the text: an added token's id, or text for the pre-tokenizer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Part {
    /// `[start, end)` holds this added token.
    Added(u32, usize, usize),
    /// `[start, end)` is ordinary text.
    Text(usize, usize),
}

fn automaton(tokens: Vec<(String, u32)>) -> Option<Option<(AhoCorasick, Vec<u32>)>> {
    if tokens.is_empty() {
        return Some(None);
    }
    let ids = tokens.iter().map(|(_, id)| *id).collect();
    let ac = AhoCorasick::builder().match_kind(MatchKind::LeftmostLongest).build(tokens.iter().map(|(content, _)| content)).ok()?;
    Some(Some((ac, ids)))
}

impl AddedTokens {
    /// `None` when an automaton cannot be built.
    pub(super) fn new(raw: Vec<(String, u32)>, normalized: Vec<(String, u32)>) -> Option<Self> {
        Some(AddedTokens { raw: automaton(raw)?, normalized: automaton(normalized)? })
    }

    /// Splits `text` into parts: raw-matched tokens over the whole text, then normalized-matched
    /// ones inside the text between them (`text` is its own normalization here).
    pub(super) fn split(&self, text: &str) -> Vec<Part> {
        let mut parts = Vec::new();
        let mut rest = |start: usize, end: usize, parts: &mut Vec<Part>| match &self.normalized {
            Some(found) => find(found, text, start, end, parts, &mut |s, e, parts: &mut Vec<Part>| parts.push(Part::Text(s, e))),
            None => parts.push(Part::Text(start, end)),
        };
        match &self.raw {
            Some(found) => find(found, text, 0, text.len(), &mut parts, &mut rest),
            None => rest(0, text.len(), &mut parts),
        }
        parts
    }
}

/// Pushes the tokens `found` finds in `text[start..end]`, handing the stretches between them to
/// `between`.
fn find(
    (ac, ids): &(AhoCorasick, Vec<u32>),
    text: &str,
    start: usize,
    end: usize,
    parts: &mut Vec<Part>,
    between: &mut impl FnMut(usize, usize, &mut Vec<Part>),
) {
    let mut pos = start;
    for m in ac.find_iter(&text[start..end]) {
        let (s, e) = (start + m.start(), start + m.end());
        if s > pos {
            between(pos, s, parts);
        }
        parts.push(Part::Added(ids[m.pattern().as_usize()], s, e));
        pos = e;
    }
    if pos < end {
        between(pos, end, parts);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QWEN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

    fn pieces(s: &PieceSplitter, text: &str) -> Vec<String> {
        let mut out = Vec::new();
        assert!(s.split(text, |a, b| out.push(text[a..b].to_string())));
        out
    }

    #[test]
    fn the_space_look_ahead_backs_off_one_character() {
        let s = PieceSplitter::new(QWEN).unwrap();
        assert_eq!(pieces(&s, "a   b"), ["a", "  ", " b"]);
        assert_eq!(pieces(&s, "a b"), ["a", " b"]);
        assert_eq!(pieces(&s, "a  "), ["a", "  "]);
        assert_eq!(pieces(&s, "x\u{3000}\u{3000}y"), ["x", "\u{3000}", "\u{3000}y"]);
        assert_eq!(pieces(&s, "a \n\n  b"), ["a", " \n\n", " ", " b"]);
        assert_eq!(pieces(&s, "I'm 42"), ["I", "'m", " ", "4", "2"]);
    }

    #[test]
    fn patterns_the_regex_crate_reads_differently_are_refused() {
        assert!(PieceSplitter::new(QWEN).is_some());
        assert!(PieceSplitter::new(r"^\p{L}+|\s+(?!\S)|\s+").is_none());
        assert!(PieceSplitter::new(r"\p{L}+(?=x)|\s+(?!\S)|\s+").is_none());
        assert!(PieceSplitter::new(r"\p{L}+|\s+").is_none());
    }

    #[test]
    fn added_tokens_are_found_leftmost_longest_raw_first() {
        let added = AddedTokens::new(vec![("<a>".into(), 1), ("<a><b>".into(), 2)], vec![("xy".into(), 3)]).unwrap();
        assert_eq!(
            added.split("q<a><b>xy<a>z"),
            [Part::Text(0, 1), Part::Added(2, 1, 7), Part::Added(3, 7, 9), Part::Added(1, 9, 12), Part::Text(12, 13)]
        );
        assert_eq!(AddedTokens::new(vec![], vec![]).unwrap().split("abc"), [Part::Text(0, 3)]);
    }
}
