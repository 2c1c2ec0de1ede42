//! Assistant spans by prefix rendering, for templates without `{% generation %}` tags. The same
//! algorithm, step for step, is the Python reference `tests/fixtures/prefix_spans.py`, which the
//! render and encode fixtures are generated with; the rule it implements is in the
//! [`renderer`](super::renderer) module doc.
//!
//! For assistant message `i` of a text `full` (the render of every message):
//! - start: where `R(i, prompt)` (the messages before it with a generation prompt) ends, when that
//!   is a prefix of `full`. Otherwise where it stops agreeing with `full`, when that is inside its
//!   generation prompt (the generation prompt opens a reasoning block the turn does not have).
//!   Otherwise, when `R(i, prompt)` with one piece before its generation prompt left out is a
//!   prefix of `full` (Mistral moves the system prompt into the last user message), where that ends.
//! - end: where `R(i + 1)` ends, when that is a prefix of `full`, less a generation prompt the
//!   template writes even unasked (it renders no messages the same with and without one) when the
//!   turn ends the text. Otherwise the same less the text every render without a generation
//!   prompt ends with (its trailer: Phi-3's EOS, the header Llama 3's original template always
//!   writes), when the rest is a prefix of `full`. Otherwise see
//!   [`Prefixes::end_once_followed`].
//! - `full` may also be the render with a generation prompt (the prompt then follows the last
//!   turn) or the render cut after a final message left open (which runs to the end): [`Follow`].
//! - A point where two renders stop agreeing never falls inside a `<...>` tag (no whitespace, at
//!   most [`TAG_MAX`] characters): it moves to the tag's start; a trailer never starts inside one.
//!
//! Offsets are bytes here and characters in the spans returned; both texts compared share the
//! bytes before a point, so the two always agree.

use std::borrow::Cow;
use std::sync::OnceLock;

use super::{is_py_space, ChatTemplate, TemplateError, TemplateInput};
use crate::conversation::Conversation;

/// Longest `<...>` tag (in characters) that a comparison point is kept out of.
const TAG_MAX: usize = 64;

/// What follows the last message in the text whose spans are found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Follow {
    /// Nothing: the render without a generation prompt.
    Nothing,
    /// The generation prompt: the render with `add_generation_prompt`.
    Prompt,
    /// Nothing, because the final message is left open (`continue_final_message`): the text is the
    /// render cut after it, and that message runs to the end of the text.
    Open,
}

/// The renders of no messages, without and with a generation prompt (`None` where the template
/// fails), made when first needed; they are the same for every conversation without tools or
/// documents, so a [`Renderer`](super::Renderer) keeps one for those.
#[derive(Debug, Default)]
pub(super) struct EmptyRenders([OnceLock<Option<String>>; 2]);

/// Renders prefixes of one conversation to find its assistant turns in `full`.
pub(super) struct Prefixes<'a> {
    /// The template `full` was rendered with.
    pub template: &'a ChatTemplate,
    /// The conversation as the template sees it.
    pub input: &'a TemplateInput,
    /// The context variables beside the messages.
    pub vars: &'a [(String, minijinja::Value)],
    /// The text the turns are found in.
    pub full: &'a str,
    /// What follows the last message in `full`.
    pub follow: Follow,
    /// The renders of no messages, for this conversation's tools and documents.
    pub empty: &'a EmptyRenders,
}

impl Prefixes<'_> {
    /// The character spans of the assistant messages of `conv` in `full`, with their message
    /// indices; an error names the first turn that cannot be located.
    pub fn spans(&self, conv: &Conversation) -> Result<Vec<(usize, usize, usize)>, TemplateError> {
        let mut spans = Vec::new();
        let (mut floor, mut chars_at, mut bytes_at) = (0, 0, 0);
        for (i, message) in conv.messages.iter().enumerate() {
            if !message.is_assistant() {
                continue;
            }
            let start = self.turn_start(i, floor)?;
            let end = match start {
                Some(s) => self.turn_end(i, s)?,
                None => None,
            };
            let (Some(start), Some(end)) = (start, end) else {
                return Err(TemplateError::Render {
                    message: format!(
                        "cannot locate assistant message {} by prefix rendering: template {} renders it, or what comes \
                         before it, differently in a prefix than in the whole conversation; use a template with {{% generation %}} tags (e.g. \
                         TRL's *_training.jinja) or marker-based masking",
                        i + 1,
                        self.template.name()
                    ),
                });
            };
            let mut to_chars = |at: usize| {
                chars_at += self.full[bytes_at..at].chars().count();
                bytes_at = at;
                chars_at
            };
            let (s, e) = (to_chars(start), to_chars(end));
            spans.push((i, s, e));
            floor = end;
        }
        Ok(spans)
    }

    /// The render of the first `n` messages (`full` itself when that is what it holds).
    fn render(&self, n: usize, add_generation_prompt: bool) -> Result<Cow<'_, str>, TemplateError> {
        let whole = n == self.input.len() && self.follow != Follow::Open && add_generation_prompt == (self.follow == Follow::Prompt);
        if whole {
            return Ok(Cow::Borrowed(self.full));
        }
        Ok(Cow::Owned(self.template.render_input(self.input, n, add_generation_prompt, self.vars)?.text))
    }

    /// The render of no messages (see [`EmptyRenders`]).
    fn empty(&self, add_generation_prompt: bool) -> Option<&str> {
        let cell = &self.empty.0[usize::from(add_generation_prompt)];
        cell.get_or_init(|| self.template.render_input(self.input, 0, add_generation_prompt, self.vars).ok().map(|r| r.text)).as_deref()
    }

    /// Whether the template renders no messages the same with and without a generation prompt.
    fn writes_prompt_unasked(&self) -> bool {
        matches!((self.empty(true), self.empty(false)), (Some(a), Some(b)) if a == b)
    }

    /// Where assistant message `i` starts (a byte offset into `full`), if at or after `floor`.
    fn turn_start(&self, i: usize, floor: usize) -> Result<Option<usize>, TemplateError> {
        let full = self.full;
        let before = self.render(i, true)?;
        let start = if full.starts_with(before.as_ref()) {
            Some(before.len())
        } else {
            let plain = self.render(i, false)?;
            let prompt_at = tag_start(&before, common_prefix(&plain, &before));
            let agree = tag_start(full, common_prefix(&before, full));
            if agree >= prompt_at {
                Some(agree)
            } else {
                before
                    .char_indices()
                    .map(|(at, _)| at)
                    .filter(|&cut| cut > agree && cut < prompt_at)
                    .find(|&cut| full[agree..].starts_with(&before[cut..]))
                    .map(|cut| agree + before.len() - cut)
            }
        };
        Ok(start.filter(|&s| s >= floor))
    }

    /// Where assistant message `i`, which starts at byte `start`, ends.
    fn turn_end(&self, i: usize, start: usize) -> Result<Option<usize>, TemplateError> {
        let (full, n) = (self.full, self.input.len());
        if self.follow == Follow::Open && i + 1 == n {
            return Ok(Some(full.len()));
        }
        let through = self.render(i + 1, false)?;
        if full.starts_with(through.as_ref()) && through.len() >= start {
            if through.len() == full.len() {
                // A last turn: a generation prompt the template writes even unasked (it renders no
                // messages the same with and without one) ends it, and the text before the turn;
                // it is not the turn's.
                let cut = self.trailer(&[full, &full[..start]]);
                if cut > 0 && full.len() - cut >= start && self.writes_prompt_unasked() {
                    return Ok(Some(full.len() - cut));
                }
            }
            return Ok(Some(through.len()));
        }
        let cut = match self.follow {
            Follow::Nothing => self.trailer(&[&through, full]),
            Follow::Prompt | Follow::Open => self.trailer(&[&through]),
        };
        let kept = through.len() - cut;
        if cut > 0 && kept >= start && full.starts_with(&through[..kept]) {
            return Ok(Some(kept));
        }
        Ok(self.end_once_followed(i, start))
    }

    /// How many bytes every render without a generation prompt ends with, the render of no
    /// messages included: the common suffix of that render and `texts`, less a tag it starts
    /// inside (in `texts[0]`). 0 when the template cannot render no messages.
    fn trailer(&self, texts: &[&str]) -> usize {
        let Some(empty) = self.empty(false) else { return 0 };
        let first = texts[0];
        let mut all = vec![empty];
        all.extend_from_slice(texts);
        first.len() - tag_end(first, first.len() - common_suffix(&all))
    }

    /// Where assistant message `i` ends when the template renders it differently as the last
    /// message than once later messages follow (Qwen3 drops the reasoning of earlier turns): the
    /// shortest render of messages `..k` (k > i + 1) that is a prefix of `full`, less the text
    /// that messages `i+1..k` add when rendered without message `i` in between. When `full` ends
    /// with a generation prompt, the last k is every message and the prompt, which then counts as
    /// what follows. `None` when no such k separates the turn.
    fn end_once_followed(&self, i: usize, start: usize) -> Option<usize> {
        let (full, n) = (self.full, self.input.len());
        let base = self.render(i, false).ok()?;
        let skipped = self.input.without(i);
        let last = n + usize::from(self.follow == Follow::Prompt);
        for k in i + 2..=last {
            let (m, agp) = (k.min(n), k > n);
            // A render that fails tries the next k, as the Python reference does.
            let Ok(with) = self.render(m, agp) else { continue };
            if !full.starts_with(with.as_ref()) {
                continue;
            }
            let Ok(without) = self.template.render_input(&skipped, m - 1, agp, self.vars) else { continue };
            let Some(after) = without.text.strip_prefix(base.as_ref()) else { continue };
            if with.ends_with(after) && with.len() - after.len() >= start {
                return Some(with.len() - after.len());
            }
        }
        None
    }
}

/// The length in bytes of the longest common prefix of `a` and `b`, on a character boundary.
fn common_prefix(a: &str, b: &str) -> usize {
    let mut n = a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count();
    while !a.is_char_boundary(n) {
        n -= 1;
    }
    n
}

/// The length in bytes of the longest suffix all of `texts` end with, on a character boundary.
fn common_suffix(texts: &[&str]) -> usize {
    let Some((first, rest)) = texts.split_first() else { return 0 };
    let mut n = rest.iter().fold(first.len(), |n, t| n.min(first.bytes().rev().zip(t.bytes().rev()).take_while(|(x, y)| x == y).count()));
    while !first.is_char_boundary(first.len() - n) {
        n -= 1;
    }
    n
}

/// `at`, or the start of the `<...>` tag (no whitespace, at most [`TAG_MAX`] characters) that
/// `text[..at]` ends inside.
fn tag_start(text: &str, at: usize) -> usize {
    for (pos, c) in text[..at].char_indices().rev().take(TAG_MAX) {
        match c {
            '<' => return pos,
            '>' => return at,
            c if is_py_space(c) => return at,
            _ => {}
        }
    }
    at
}

/// `at`, or past the end of the `<...>` tag that `at` falls inside.
fn tag_end(text: &str, at: usize) -> usize {
    if tag_start(text, at) == at {
        return at;
    }
    text[at..].find('>').map_or(text.len(), |close| at + close + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comparison_points_stay_out_of_tags() {
        // "<|end|>" and "<|user|>" share "<|": the point moves back to the tag.
        let (a, b) = ("x<|end|>\n<|im_end|>", "x<|end|>\n<|user|>");
        assert_eq!(tag_start(a, common_prefix(a, b)), "x<|end|>\n".len());
        // A point after a complete tag or inside plain text stays.
        assert_eq!(tag_start("a<b>c", 4), 4);
        assert_eq!(tag_start("a < b", 4), 4);
        assert_eq!(tag_end("ab<|eot_id|>cd", 5), "ab<|eot_id|>".len());
        assert_eq!(tag_end("ab<|eot_id|>cd", 12), 12);
    }

    #[test]
    fn common_prefix_and_suffix_are_whole_characters() {
        // 'é' (C3 A9) and 'ê' (C3 AA) share a first byte; 'é' and '©' (C2 A9) a last one.
        assert_eq!(common_prefix("aé", "aê"), 1);
        assert_eq!(common_suffix(&["é!", "©!"]), 1);
        assert_eq!(common_suffix(&["abc", "bc", "xbc"]), 2);
        assert_eq!(common_suffix(&["abc"]), 3);
    }
}
