//! The `sft` binary end to end: the `render` JSONL contract, per-row template errors, bad input
//! (every file of the data crate's bad-input corpus) and `inspect`'s piped output.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn sft(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sft")).args(args).current_dir(root()).output().expect("run sft")
}

fn sft_stdin(args: &[&str], input: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sft"))
        .args(args)
        .current_dir(root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run sft");
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

fn lines(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn scratch(name: &str, content: &str) -> PathBuf {
    let dir = root().join("target/cli-tests");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path
}

#[test]
fn render_prints_one_line_per_row_in_input_order() {
    let out = sft(&["render", "--chat-template", "chatml", "examples/chat.jsonl"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let rows = lines(&out);
    assert_eq!(rows.len(), 2);
    assert!(rows[0]["text"].as_str().unwrap().contains("What is 7 * 6?"));
    assert!(rows[1]["text"].as_str().unwrap().contains("早上好。"));
    assert!(stderr(&out).contains("openai format (detected)"), "{}", stderr(&out));
}

#[test]
fn render_tokenize_marks_assistant_tokens_with_a_real_tokenizer() {
    let out = sft(&["render", "--tokenizer", "assets/tokenizers/qwen2_5", "--tokenize", "examples/chat.jsonl"]);
    assert!(out.status.success(), "{}", stderr(&out));
    for row in lines(&out) {
        let ids = row["input_ids"].as_array().unwrap();
        let mask = row["assistant_mask"].as_array().unwrap();
        assert_eq!(ids.len(), mask.len());
        let trained = mask.iter().filter(|m| m.as_u64() == Some(1)).count();
        assert!(trained > 0 && trained < ids.len(), "{row}");
        // <|im_end|> (151645) trains: the model learns to stop.
        let last = mask.iter().rposition(|m| m.as_u64() == Some(1)).unwrap();
        assert_eq!(ids[last - 1].as_u64(), Some(151645));
    }
}

#[test]
fn a_row_the_template_rejects_prints_an_error_line_and_the_rest_render() {
    let template = scratch(
        "picky.jinja",
        "{% for m in messages %}{% if m.content == 'bad' %}{{ raise_exception('bad content') }}{% endif %}{{ m.content }}{% endfor %}",
    );
    let data = "{\"messages\":[{\"role\":\"user\",\"content\":\"one\"}]}\n{\"messages\":[{\"role\":\"user\",\"content\":\"bad\"}]}\n{\"messages\":[{\"role\":\"user\",\"content\":\"three\"}]}\n";
    let out = sft_stdin(&["render", "--chat-template", template.to_str().unwrap(), "-"], data);
    assert!(out.status.success(), "{}", stderr(&out));
    let rows = lines(&out);
    assert_eq!(rows[0]["text"], "one");
    assert_eq!(rows[1]["error"], "-:2: bad content (template line 1)");
    assert_eq!(rows[2]["text"], "three");
}

#[test]
fn a_looping_template_ends_with_an_error_not_a_hang() {
    let template = scratch("loop.jinja", "{% for i in range(9999) %}{% for j in range(9999) %}{{ '' }}{% endfor %}{% endfor %}");
    let out = sft(&["render", "--chat-template", template.to_str().unwrap(), "examples/chat.jsonl"]);
    assert!(out.status.success());
    for row in lines(&out) {
        assert!(row["error"].as_str().unwrap().contains("fuel"), "{row}");
    }
}

#[test]
fn every_bad_data_file_fails_cleanly_naming_the_file() {
    let dir = root().join("crates/sft-data/tests/fixtures/data/bad");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            continue;
        }
        let out = sft(&["render", "--chat-template", "chatml", path.to_str().unwrap()]);
        let err = stderr(&out);
        assert!(!out.status.success(), "{}: should fail", path.display());
        assert!(!err.contains("panicked"), "{}: {err}", path.display());
        let name = path.file_name().unwrap().to_str().unwrap();
        assert!(err.contains(name), "{}: error does not name the file: {err}", path.display());
        n += 1;
    }
    assert!(n >= 15, "only {n} bad files");
}

#[test]
fn on_bad_row_skip_lists_the_skipped_rows() {
    let data = "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}]}\n{not json\n{\"messages\":[{\"role\":\"robot\",\"content\":\"b\"}]}\n";
    let out = sft_stdin(&["render", "--chat-template", "chatml", "--on-bad-row", "skip", "-"], data);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(lines(&out).len(), 1);
    let err = stderr(&out);
    assert!(err.contains("skipped 2 bad rows") && err.contains("-:2") && err.contains("-:3"), "{err}");
    // Without skip, the first bad row stops the run with its line number.
    let out = sft_stdin(&["render", "--chat-template", "chatml", "-"], data);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("-:2"), "{}", stderr(&out));
}

#[test]
fn unknown_template_names_the_builtins_and_missing_tokenizer_names_the_path() {
    let out = sft(&["render", "--chat-template", "nonesuch", "examples/chat.jsonl"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("qwen-2.5"), "{}", stderr(&out));
    let out = sft(&["render", "--tokenizer", "no/such/dir", "--tokenize", "examples/chat.jsonl"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no/such/dir"), "{}", stderr(&out));
}

#[test]
fn alpaca_and_sharegpt_files_render() {
    for file in ["alpaca.jsonl", "sharegpt.json"] {
        let path = root().join("crates/sft-data/tests/fixtures/data/good").join(file);
        let out = sft(&["render", "--chat-template", "chatml", path.to_str().unwrap()]);
        assert!(out.status.success(), "{file}: {}", stderr(&out));
        assert!(!lines(&out).is_empty());
    }
}

#[test]
fn inspect_marks_trained_text_when_piped() {
    let out = sft(&["inspect", "--tokenizer", "assets/tokenizers/qwen2_5", "--rows", "2", "examples/chat.jsonl"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("[[Bonjour.<|im_end|>\n]]"), "{text}");
    assert!(text.contains("message 4: assistant trains"), "{text}");
    assert!(!text.contains('\x1b'), "no colors when piped");
}
