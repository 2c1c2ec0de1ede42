//! Issue 23, part 3: `sft merge --dtype --max-shard-size` writes sharded safetensors with an
//! index, as transformers' `save_pretrained` does.

use super::{eval_expected, json_file, lines, root, sft, stderr};

/// The dtype of every tensor in a safetensors file's header.
fn dtypes(path: &std::path::Path) -> Vec<String> {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    header
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .map(|(_, v)| v["dtype"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn merge_writes_bf16_shards_with_an_index() {
    let out_dir = root().join("target/cli-tests/merged-bf16");
    let _ = std::fs::remove_dir_all(&out_dir);
    let (m, a) = ("tests/fixtures/model/eval/model", "tests/fixtures/model/eval/adapter");
    let out_name = out_dir.display().to_string();
    let out = sft(&["merge", "--model", m, "--adapter", a, "--dtype", "bf16", "--max-shard-size", "20KB", "--out", &out_name]);
    assert!(out.status.success(), "{}", stderr(&out));
    let index = json_file(&out_dir.join("model.safetensors.index.json"));
    let map = index["weight_map"].as_object().unwrap();
    let mut files: Vec<&str> = map.values().map(|v| v.as_str().unwrap()).collect();
    files.sort();
    files.dedup();
    assert!(files.len() >= 2, "{files:?}");
    let n = files.len();
    for (i, f) in files.iter().enumerate() {
        assert_eq!(*f, format!("model-{:05}-of-{n:05}.safetensors", i + 1));
        let path = out_dir.join(f);
        assert!(std::fs::metadata(&path).unwrap().len() <= 20_000 + 4096, "{f} over the shard size");
        assert!(dtypes(&path).iter().all(|d| d == "BF16"), "{f}");
    }
    assert!(!out_dir.join("model.safetensors").exists());
    assert_eq!(json_file(&out_dir.join("config.json"))["dtype"], "bfloat16");
    let total: u64 = files.iter().map(|f| std::fs::metadata(out_dir.join(f)).unwrap().len()).sum();
    assert!(index["metadata"]["total_size"].as_u64().unwrap() <= total);
    // The sharded bf16 model evaluates to transformers' loss of the f32 merge, within bf16's
    // rounding.
    let eval = sft(&["eval", "--model", &out_name, "--data", "tests/fixtures/model/eval/data.jsonl", "--json"]);
    assert!(eval.status.success(), "{}", stderr(&eval));
    let (got, want) = (lines(&eval)[0]["loss"].as_f64().unwrap(), eval_expected("adapter")["loss"].as_f64().unwrap());
    assert!(((got - want) / want).abs() < 1e-2, "bf16 shards: loss {got} vs {want}");
    let bad = sft(&["merge", "--model", m, "--adapter", a, "--max-shard-size", "2 parsecs", "--out", &format!("{out_name}-x")]);
    assert!(!bad.status.success() && stderr(&bad).contains("--max-shard-size"), "{}", stderr(&bad));
}
