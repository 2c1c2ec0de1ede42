//! Building a prepared dataset a chunk at a time equals encoding (and packing) the whole file at
//! once: records, order, exclusions and skipped rows, on a file of more rows than one chunk holds.

use std::path::{Path, PathBuf};

use serde_json::{json, Map};
use sft_data::data::{read_dataset, OnBadRow, ReadOptions};
use sft_data::encode::{encode_all, EncodeOptions, Truncation};
use sft_data::pack::pack;
use sft_data::prepared::{build, BuildInputs, DataFingerprint, ManifestKey, PreparedDataset, Settings};
use sft_data::template::{Renderer, TemplateChoice};
use sft_data::tokens::TextTokenizer;

use crate::common::assets;

/// Rows past one JSONL chunk (8,192 lines): short chats, every 97th one too long for the limit,
/// line 8,500 not JSON, and blank lines that still count.
fn write_data(dir: &Path) -> PathBuf {
    let mut text = String::new();
    for i in 1..=9_000 {
        if i == 8_500 {
            text.push_str("{not json\n");
            continue;
        }
        if i % 1_000 == 0 {
            text.push('\n');
            continue;
        }
        let answer = if i % 97 == 0 { "long answer ".repeat(40) } else { format!("answer {i}") };
        let row = json!({"messages": [{"role": "user", "content": format!("question {i}")}, {"role": "assistant", "content": answer}]});
        text.push_str(&format!("{row}\n"));
    }
    let path = dir.join("chats.jsonl");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn a_chunked_build_equals_encoding_the_whole_file() {
    let dir = std::env::temp_dir().join(format!("sft-build-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let data = write_data(&dir);
    let data = data.to_str().unwrap();
    let tok_dir = assets().join("tokenizers").join("qwen2_5");
    let choice = TemplateChoice { template: Some("chatml".into()), ..Default::default() };
    let renderer = Renderer::new(Some(&tok_dir), &choice, Map::new()).unwrap();
    let tokenizer = TextTokenizer::from_dir(&tok_dir).unwrap();
    let read = ReadOptions { on_bad_row: OnBadRow::Skip, ..Default::default() };
    let options = EncodeOptions { max_seq_length: Some(64), truncation: Truncation::Drop, ..Default::default() };

    let whole = read_dataset(data, &read).unwrap();
    let encoded = encode_all(&whole.conversations, &options, &renderer, &tokenizer).unwrap();
    assert!(encoded.excluded.len() >= 90 && whole.skipped.len() == 1, "the data must exercise exclusions and skips");

    for packing in [false, true] {
        let out = dir.join(format!("prepared-{packing}"));
        let key =
            ManifestKey::new(&tok_dir, &renderer, Settings::new(&options, packing), None, DataFingerprint::of(data).unwrap()).unwrap();
        let inputs = BuildInputs {
            data,
            read: &read,
            options: &options,
            packing,
            renderer: &renderer,
            tokenizer: &tokenizer,
            keep_excluded: usize::MAX,
        };
        let built = build(&inputs, &out, key).unwrap();
        assert_eq!(built.excluded, encoded.excluded);
        assert_eq!(built.stats, encoded.stats);
        assert_eq!(built.dataset.skipped, whole.skipped);
        let stored = PreparedDataset::open(&out).unwrap();
        assert_eq!(stored.manifest(), &built.manifest);
        type Stored = (Vec<u32>, Vec<i32>, Option<Vec<u32>>);
        let expected: Vec<Stored> = if packing {
            pack(&encoded.examples, 64).unwrap().into_iter().map(|s| (s.input_ids, s.labels, Some(s.position_ids))).collect()
        } else {
            encoded.examples.iter().map(|e| (e.input_ids.clone(), e.labels.clone(), None)).collect()
        };
        assert_eq!(stored.len(), expected.len());
        for (i, (ids, labels, positions)) in expected.iter().enumerate() {
            let r = stored.get(i).unwrap();
            assert_eq!((r.input_ids, r.labels, r.position_ids), (ids.as_slice(), labels.as_slice(), positions.as_deref()), "record {i}");
        }
        let leftovers: Vec<_> =
            std::fs::read_dir(&dir).unwrap().filter_map(|e| e.ok()).filter(|e| e.file_name().to_string_lossy().starts_with('.')).collect();
        assert!(leftovers.is_empty(), "scratch or temporary directories left: {leftovers:?}");
    }
    std::fs::remove_dir_all(&dir).ok();
}
