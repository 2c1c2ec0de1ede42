//! Issue 22, part 1: a hub id as the model. A tiny random model placed into a fake HF cache
//! (`HF_HUB_CACHE`, snapshot links into `blobs/`, `refs/main`) trains as `model: org/name`; the
//! checkpoint names its base as PEFT does (`base_model_name_or_path: "org/name"` and the commit
//! as `revision`), and `generate` finds that base through the cache, offline.

use std::path::Path;
use std::process::{Command, Output};

use super::{init_model, json_file, root, stderr, QUICKSTART_TOKENIZER};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

fn sft_env(args: &[&str], cache: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sft"))
        .args(args)
        .current_dir(root())
        .env("HF_HUB_CACHE", cache)
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_ENDPOINT", "http://127.0.0.1:9")
        .output()
        .expect("run sft")
}

/// Moves every file of `model` into `cache` as snapshot [`COMMIT`] of `org/name`.
fn into_cache(model: &Path, cache: &Path) {
    let repo = cache.join("models--org--name");
    let snapshot = repo.join("snapshots").join(COMMIT);
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), COMMIT).unwrap();
    for entry in std::fs::read_dir(model).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        let blob = format!("blob-{name}");
        std::fs::rename(entry.path(), repo.join("blobs").join(&blob)).unwrap();
        std::os::unix::fs::symlink(format!("../../blobs/{blob}"), snapshot.join(&name)).unwrap();
    }
}

#[test]
fn a_hub_id_trains_and_its_checkpoint_finds_the_base_offline() {
    let dir = root().join("target/cli-tests/hub");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let model = dir.join("model");
    init_model(
        r#"{"model_type": "llama", "vocab_size": 829, "hidden_size": 16, "intermediate_size": 32,
            "num_hidden_layers": 1, "num_attention_heads": 2, "tie_word_embeddings": true, "eos_token_id": 2}"#,
        Path::new(QUICKSTART_TOKENIZER),
        0,
        &model,
    );
    let cache = dir.join("cache");
    into_cache(&model, &cache);

    let yaml = format!(
        "model: org/name\ndatasets:\n  - path: examples/quickstart/train_sharegpt.jsonl\noutput_dir: {}\n\
         finetuning: lora\nlora_r: 4\nlora_alpha: 8\nmax_steps: 2\nsave_steps: 2\nper_device_train_batch_size: 2\n",
        dir.join("out").display()
    );
    std::fs::write(dir.join("train.yaml"), yaml).unwrap();
    let out = sft_env(&["train", &dir.join("train.yaml").display().to_string()], &cache);
    assert!(out.status.success(), "{}", stderr(&out));
    let ckpt = dir.join("out/checkpoint-2");
    let adapter = json_file(&ckpt.join("adapter_config.json"));
    assert_eq!(adapter["base_model_name_or_path"], "org/name");
    assert_eq!(adapter["revision"], COMMIT);

    let ckpt = ckpt.display().to_string();
    let args = ["generate", "--model", &ckpt, "--prompt", "Hello.", "--max-new-tokens", "3", "--json"];
    let out = sft_env(&args, &cache);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"text\""));
    // Another cache does not hold it, and offline nothing is fetched: the error names the id.
    let out = sft_env(&args, &dir.join("empty-cache"));
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains(&format!("org/name@{COMMIT}: not in the HF cache")) && err.contains("HF_HUB_OFFLINE"), "{err}");
}
