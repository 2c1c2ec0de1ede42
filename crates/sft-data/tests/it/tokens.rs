//! The byte-level fast path of [`TextTokenizer`] against the tokenizers crate's own pipeline
//! ([`TextTokenizer::encode_reference`]): same ids and the same assistant masks on texts built
//! to hit the pre-tokenizer's edge cases (every kind of space, contractions in any case, digits
//! of other scripts, split characters, added tokens back to back, text NFC changes) and on
//! random mixes of them. Needs `scripts/fetch-assets.sh` to have fetched the real tokenizers.

use sft_data::tokens::TextTokenizer;

use crate::common::assets;

/// Tokenizers whose `tokenizer.json` takes the fast path.
const FAST: &[&str] = &["qwen2_5", "qwen3", "llama3", "llama3_1", "llama3_2", "mistral_nemo", "gptoss"];
/// Tokenizers that do not (other pre-tokenizers, SentencePiece-style BPE).
const SLOW: &[&str] = &["llama2", "gemma", "gemma2", "gemma3", "deepseek_v3"];

/// Pieces random texts are made of.
const PALETTE: &[&str] = &[
    "a",
    "Z",
    "word",
    " the",
    "Hello",
    "'s",
    "'S",
    "'ll",
    "'LL",
    "'ſ",
    "'",
    "’s",
    "0",
    "42",
    "12345",
    " 7",
    "٣",
    "²",
    "½",
    "Ⅻ",
    " ",
    "  ",
    "\n",
    "\r\n",
    "\t",
    "\u{b}",
    "\u{c}",
    "\u{85}",
    "\u{a0}",
    "\u{1680}",
    "\u{2003}",
    "\u{2028}",
    "\u{2029}",
    "\u{202f}",
    "\u{3000}",
    "\u{200b}",
    "\u{feff}",
    ".",
    ",",
    "!?",
    "...",
    "—",
    "…",
    "-",
    "/",
    "//",
    "#",
    "{",
    "}",
    "\"",
    "`",
    "<",
    ">",
    "中文",
    "模型训练",
    "，",
    "。",
    "日本語",
    "カタカナ",
    "한국어",
    "🙂",
    "🚀",
    "👩\u{200d}💻",
    "é",
    "ü",
    "ß",
    "ǅ",
    "e\u{301}",
    "\u{212a}",
    "Å",
    "ﬁ",
    "ℌ",
    "नमस्ते",
    "مرحبا",
    "\u{64b}",
    "ด",
    "<|im_start|>",
    "<|im_end|>",
    "<think>",
    "</think>",
    "<|begin_of_text|>",
    "<|eot_id|>",
    "<tool_call>",
    "[INST]",
    "\u{0}",
    "\u{7f}",
    "\u{fffd}",
    "\u{10ffff}",
    "\u{e000}",
];

/// Hand-picked texts.
const EDGES: &[&str] = &[
    "",
    " ",
    "   ",
    "a   b",
    "a \n\n  b",
    "x\u{3000}\u{3000}y",
    "end with spaces   ",
    "\n\n\n",
    " \r\n \r\n x",
    "I'M HERE, it's ok, WE'LL see, you'Re fine",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\nok<|im_end|>\n",
    "<|im_end|><|im_end|>",
    "<|im_end|",
    "中文，测试。 🙂🚀 emoji",
    "Kelvin \u{212a} and e\u{301} are not NFC",
    "1234567890 ٣٣٣ ²½",
];

/// A deterministic stream of numbers (no dependency for one test).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 33) % n as u64) as usize
    }
}

fn random_text(rng: &mut Lcg) -> String {
    (0..rng.next(40)).map(|_| PALETTE[rng.next(PALETTE.len())]).collect()
}

/// A few character spans over `text` (to compare masks as well as ids).
fn random_spans(rng: &mut Lcg, text: &str) -> Vec<(usize, usize)> {
    let chars = text.chars().count();
    let mut cuts: Vec<usize> = (0..4).map(|_| rng.next(chars + 1)).collect();
    cuts.sort_unstable();
    vec![(cuts[0], cuts[1]), (cuts[2], cuts[3])]
}

fn load(name: &str) -> TextTokenizer {
    TextTokenizer::from_dir(&assets().join("tokenizers").join(name)).expect("tokenizer loads")
}

#[test]
fn byte_level_bpe_tokenizers_take_the_fast_path_and_others_do_not() {
    for name in FAST {
        assert!(load(name).has_fast_path(), "{name} should take the fast path");
    }
    for name in SLOW {
        assert!(!load(name).has_fast_path(), "{name} should not take the fast path");
    }
}

#[test]
fn the_fast_path_matches_the_tokenizers_crate() {
    let mut rng = Lcg(7);
    for name in FAST {
        let tok = load(name);
        let mut texts: Vec<String> = EDGES.iter().map(|s| s.to_string()).collect();
        texts.extend((0..400).map(|_| random_text(&mut rng)));
        for text in &texts {
            let spans = random_spans(&mut rng, text);
            let ours = tok.encode(text, &spans).unwrap();
            let theirs = tok.encode_reference(text, &spans).unwrap();
            assert_eq!(ours, theirs, "{name}: {text:?} with spans {spans:?}");
        }
    }
}

/// Every Unicode scalar value in a few contexts (slow: run with `--ignored` after changing the
/// fast path or upgrading the tokenizers crate).
#[test]
#[ignore]
fn the_fast_path_matches_on_every_character() {
    for name in ["qwen3", "llama3", "gptoss"] {
        let tok = load(name);
        for c in (0..=0x10FFFFu32).filter_map(char::from_u32) {
            let text = format!("a{c}b {c}{c}1{c}  \n{c}'{c} {c}");
            let ours = tok.encode(&text, &[(1, 4)]).unwrap();
            let theirs = tok.encode_reference(&text, &[(1, 4)]).unwrap();
            assert_eq!(ours, theirs, "{name}: U+{:04X} in {text:?}", c as u32);
        }
    }
}
