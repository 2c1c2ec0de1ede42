//! Issue 9: the bad-input corpus (`tests/fixtures/bad_inputs/cases.json`). Every case runs the
//! binary with a timeout and must end without a panic, a signal or a hang, with the exit it
//! names (non-zero unless `"exit": "ok"`) and an error naming the file and the row, tensor or
//! key. Inputs that are impractical to commit (invalid UTF-8, huge lines, broken model
//! directories) are built at run time from a `data` or `model` recipe in the case.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use super::root;

/// Longer than any case takes; a case that hits it is a hang.
const TIMEOUT: Duration = Duration::from_secs(120);

/// The least number of cases per category (the issue asks for 40 in all).
const MIN_PER_CATEGORY: usize = 8;

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    timed_out: bool,
}

/// Runs the binary, killing it after [`TIMEOUT`]; output goes to files so a chatty case can
/// not block on a full pipe.
fn run_with_timeout(args: &[String], scratch: &Path) -> Run {
    let (out_path, err_path) = (scratch.join("stdout"), scratch.join("stderr"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_sft"))
        .args(args)
        .current_dir(root())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).expect("stdout file"))
        .stderr(std::fs::File::create(&err_path).expect("stderr file"))
        .spawn()
        .expect("run sft");
    let start = Instant::now();
    let (status, timed_out) = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break (Some(status), false);
        }
        if start.elapsed() > TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break (None, true);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let read = |p: &Path| String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned();
    Run { code: status.and_then(|s| s.code()), stdout: read(&out_path), stderr: read(&err_path), timed_out }
}

/// Builds a data file the corpus does not commit; returns nothing (the case names the file).
fn build_data(recipe: &str, dir: &Path) {
    let good = r#"{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}"#;
    let (name, bytes): (&str, Vec<u8>) = match recipe {
        "invalid_utf8" => {
            ("invalid_utf8.jsonl", [good.as_bytes(), b"\n{\"messages\": [{\"role\": \"user\", \"content\": \"caf\xe9 \xff\"}]}\n"].concat())
        }
        // 64 MiB on one line that never closes its string.
        "huge_line" => {
            let mut b = format!("{good}\n{{\"messages\": [{{\"role\": \"user\", \"content\": \"").into_bytes();
            b.resize(b.len() + (64 << 20), b'a');
            ("huge_line.jsonl", b)
        }
        // One valid row of 200k words: far over any max_seq_length.
        "over_long_row" => {
            let words = "lorem ipsum ".repeat(100_000);
            let row =
                format!(r#"{{"messages": [{{"role": "user", "content": "{words}"}}, {{"role": "assistant", "content": "{words}"}}]}}"#);
            ("over_long_row.jsonl", format!("{row}\n").into_bytes())
        }
        "deep_nesting" => {
            let depth = 100_000;
            ("deep_nesting.jsonl", format!("{good}\n{{\"messages\": {}{}}}\n", "[".repeat(depth), "]".repeat(depth)).into_bytes())
        }
        other => panic!("unknown data recipe {other}"),
    };
    std::fs::write(dir.join(name), bytes).expect("write data");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read fixture dir") {
        let path = entry.expect("entry").path();
        std::fs::copy(&path, to.join(path.file_name().expect("name"))).expect("copy");
    }
}

/// Splits a safetensors file into its header (JSON object) and data.
fn split_safetensors(bytes: &[u8]) -> (Map<String, Value>, Vec<u8>) {
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let header = serde_json::from_slice(&bytes[8..8 + n]).expect("fixture header");
    (header, bytes[8 + n..].to_vec())
}

fn join_safetensors(header: &Map<String, Value>, data: &[u8]) -> Vec<u8> {
    let mut json = serde_json::to_vec(header).expect("header json");
    while !json.len().is_multiple_of(8) {
        json.push(b' ');
    }
    [&(json.len() as u64).to_le_bytes()[..], &json, data].concat()
}

/// Breaks a safetensors file the way a truncated download or a hostile file would.
fn break_safetensors(path: &Path, how: &str) {
    let bytes = std::fs::read(path).expect("read safetensors");
    let (mut header, data) = split_safetensors(&bytes);
    let tensor = |h: &mut Map<String, Value>, name: &str| h.get_mut(name).and_then(Value::as_object_mut).cloned();
    let out = match how {
        "truncated" => bytes[..bytes.len() / 2].to_vec(),
        "empty" => vec![],
        "tiny" => bytes[..5].to_vec(),
        "header_length_huge" => [&(u64::MAX / 3).to_le_bytes()[..], &bytes[8..]].concat(),
        "header_length_short" => [&16u64.to_le_bytes()[..], &bytes[8..]].concat(),
        "header_not_json" => {
            let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
            [&bytes[..8], &vec![b'{'; n][..], &data].concat()
        }
        "offsets_beyond_file" => {
            for (_, v) in header.iter_mut().filter(|(k, _)| *k != "__metadata__") {
                for i in 0..2 {
                    v["data_offsets"][i] = Value::from(v["data_offsets"][i].as_u64().expect("offset") + 4096);
                }
            }
            join_safetensors(&header, &data)
        }
        "shape_size_lie" | "shape_transposed" | "shape_overflow" | "dtype_int" | "tensor_renamed" => {
            let name = "model.embed_tokens.weight";
            let mut t = tensor(&mut header, name).expect("embed tensor");
            match how {
                "shape_size_lie" => t["shape"] = serde_json::json!([320, 64]),
                "shape_transposed" => t["shape"] = serde_json::json!([32, 320]),
                "shape_overflow" => t["shape"] = serde_json::json!([u64::MAX / 2, 4, 4]),
                "dtype_int" => t["dtype"] = Value::from("I32"),
                _ => {
                    header.remove(name);
                    header.insert(format!("{name}_renamed"), Value::Object(t.clone()));
                }
            }
            if how != "tensor_renamed" {
                header.insert(name.into(), Value::Object(t));
            }
            join_safetensors(&header, &data)
        }
        other => panic!("unknown safetensors mutation {other}"),
    };
    std::fs::write(path, out).expect("write safetensors");
}

/// Copies a fixture model (and adapter) into `dir` and breaks it as `recipe` says: `config` (a
/// JSON merge into config.json), `remove` (file names), `write` (file name → text),
/// `safetensors` (a mutation of model.safetensors), `adapter_config`, `adapter_safetensors`.
fn build_model(recipe: &Map<String, Value>, dir: &Path) {
    let model = dir.join("model");
    copy_dir(&root().join("tests/fixtures/model/eval/model"), &model);
    copy_dir(&root().join("tests/fixtures/model/eval/adapter"), &dir.join("adapter"));
    let merge = |path: PathBuf, patch: &Value| {
        let mut json: Value = serde_json::from_str(&std::fs::read_to_string(&path).expect("read json")).expect("json");
        for (k, v) in patch.as_object().expect("patch object") {
            json[k] = v.clone();
        }
        std::fs::write(&path, serde_json::to_vec_pretty(&json).expect("json")).expect("write json");
    };
    if let Some(patch) = recipe.get("config") {
        merge(model.join("config.json"), patch);
    }
    if let Some(patch) = recipe.get("adapter_config") {
        merge(dir.join("adapter/adapter_config.json"), patch);
    }
    for name in recipe.get("remove").and_then(Value::as_array).into_iter().flatten() {
        std::fs::remove_file(model.join(name.as_str().expect("file name"))).expect("remove");
    }
    for (name, text) in recipe.get("write").and_then(Value::as_object).into_iter().flatten() {
        std::fs::write(model.join(name), text.as_str().expect("text")).expect("write");
    }
    if let Some(how) = recipe.get("safetensors").and_then(Value::as_str) {
        break_safetensors(&model.join("model.safetensors"), how);
    }
    if let Some(how) = recipe.get("adapter_safetensors").and_then(Value::as_str) {
        let path = dir.join("adapter/adapter_model.safetensors");
        let bytes = std::fs::read(&path).expect("adapter");
        let (mut header, data) = split_safetensors(&bytes);
        let name = header.keys().find(|k| k.ends_with("lora_A.weight")).cloned().expect("a lora_A tensor");
        match how {
            "transposed" => {
                let shape = header[&name]["shape"].as_array().expect("shape").clone();
                header[&name]["shape"] = Value::Array(shape.into_iter().rev().collect());
            }
            other => panic!("unknown adapter mutation {other}"),
        }
        std::fs::write(&path, join_safetensors(&header, &data)).expect("write adapter");
    }
}

fn strings(case: &Value, key: &str) -> Vec<String> {
    case.get(key).and_then(Value::as_array).into_iter().flatten().map(|s| s.as_str().expect("string").to_string()).collect()
}

#[test]
fn every_bad_input_fails_cleanly_naming_the_file_and_the_row_tensor_or_key() {
    let corpus = root().join("tests/fixtures/bad_inputs");
    let manifest: Value = serde_json::from_str(&std::fs::read_to_string(corpus.join("cases.json")).expect("cases.json")).expect("JSON");
    let scratch_root = root().join("target/cli-tests/bad_inputs");
    let _ = std::fs::remove_dir_all(&scratch_root);
    let mut per_category: BTreeMap<String, usize> = BTreeMap::new();
    let mut failures = vec![];
    let started = Instant::now();
    for case in manifest["cases"].as_array().expect("cases") {
        let name = case["name"].as_str().expect("name");
        let category = name.split('/').next().expect("category");
        *per_category.entry(category.to_string()).or_default() += 1;
        let scratch = scratch_root.join(name.replace('/', "-"));
        std::fs::create_dir_all(&scratch).expect("scratch");
        if let Some(recipe) = case.get("data").and_then(Value::as_str) {
            build_data(recipe, &scratch);
        }
        if let Some(recipe) = case.get("model").and_then(Value::as_object) {
            build_model(recipe, &scratch);
        }
        let tmp = scratch.strip_prefix(root()).unwrap_or(&scratch).to_string_lossy().into_owned();
        let args: Vec<String> = strings(case, "args").iter().map(|a| a.replace("$TMP", &tmp)).collect();
        let run = run_with_timeout(&args, &scratch);
        let want_ok = case.get("exit").and_then(Value::as_str) == Some("ok");
        let mut problems = vec![];
        if run.timed_out {
            problems.push(format!("no exit within {TIMEOUT:?}"));
        } else if run.code.is_none() {
            problems.push("killed by a signal (abort or crash)".into());
        }
        if run.code == Some(101) || run.stderr.contains("panicked") {
            problems.push("panicked".into());
        }
        match (want_ok, run.code) {
            (true, Some(c)) if c != 0 => problems.push(format!("exit {c}, expected 0")),
            (false, Some(0)) => problems.push("exit 0, expected a failure".into()),
            _ => {}
        }
        for s in strings(case, "stderr") {
            if !run.stderr.contains(&s) {
                problems.push(format!("stderr lacks {s:?}"));
            }
        }
        for s in strings(case, "stdout") {
            if !run.stdout.contains(&s) {
                problems.push(format!("stdout lacks {s:?}"));
            }
        }
        if !problems.is_empty() {
            let tail = |s: &str| s.chars().rev().take(1500).collect::<Vec<_>>().into_iter().rev().collect::<String>();
            failures.push(format!(
                "{name}: {}\n  args: {args:?}\n  stderr: {}\n  stdout: {}",
                problems.join("; "),
                tail(&run.stderr),
                tail(&run.stdout)
            ));
        }
    }
    eprintln!("bad-input corpus: {per_category:?} in {:.1}s", started.elapsed().as_secs_f64());
    assert!(failures.is_empty(), "{} of the corpus cases failed:\n{}", failures.len(), failures.join("\n"));
    let total: usize = per_category.values().sum();
    assert!(total >= 40, "only {total} cases");
    for category in ["data", "template", "model", "config", "gguf"] {
        let n = per_category.get(category).copied().unwrap_or(0);
        assert!(n >= MIN_PER_CATEGORY, "only {n} {category} cases");
    }
}
