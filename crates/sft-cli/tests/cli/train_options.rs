//! Issue 27's training keys through `sft train`: `adapter` (a new run from a trained PEFT
//! adapter), dataset mixing (`weight`, `max_samples`, `shuffle`, with per-file counts in the
//! summary and `data_summary.json`), the `text` and `prompt_completion` formats and `columns`,
//! `use_dora` (DoRA adapters in PEFT's format), and `optim` (each optimizer trains, reports its
//! state bytes and resumes exactly).

use std::path::Path;

use super::{assert_resume_is_exact, config, json_file, lines, logged_losses, root, sft, stderr, tiny_run};

fn train(config: &Path, sets: &[&str]) -> std::process::Output {
    let mut args = vec!["train", config.to_str().unwrap()];
    for s in sets {
        args.extend(["--set", s]);
    }
    sft(&args)
}

const EVAL_FIXTURE: &str = "model: tests/fixtures/model/eval/model\nadapter: tests/fixtures/model/eval/adapter\n\
     datasets:\n  - path: tests/fixtures/model/eval/data.jsonl\nmax_steps: 2\nper_device_train_batch_size: 10\n\
     logging_steps: 1\nlearning_rate: 0.01\n";

#[test]
fn a_run_continued_from_an_adapter_starts_at_its_peft_loss() {
    let cfg = config("adapter-continue", EVAL_FIXTURE);
    let out = train(&cfg, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("starting from the adapter tests/fixtures/model/eval/adapter"), "{}", stderr(&out));
    let ckpt = cfg.parent().unwrap().join("out/checkpoint-2");
    let losses = logged_losses(&ckpt);
    let peft = json_file(&root().join("tests/fixtures/model/eval/expected.json"))["adapter"]["loss"].as_f64().unwrap();
    assert!(((losses[0] - peft) / peft).abs() <= 1e-5, "first loss {} vs PEFT's {peft}", losses[0]);
    assert!(losses[1] < losses[0], "it trains: {losses:?}");
    let peft_config = json_file(&ckpt.join("adapter_config.json"));
    assert_eq!((peft_config["r"].as_u64(), peft_config["lora_alpha"].as_f64()), (Some(4), Some(8.0)));
    // A LoRA key that contradicts the adapter is refused, naming both, before anything is written.
    for (set, expect) in [
        ("lora_r=8", "lora_r: 8 conflicts with adapter: tests/fixtures/model/eval/adapter, whose adapter_config.json has r 4"),
        ("finetuning=full", "adapter: continues a LoRA adapter: use finetuning: lora"),
        ("adapter=tests/fixtures/model/eval", "adapter: tests/fixtures/model/eval: no adapter_config.json"),
    ] {
        let cfg = config("adapter-bad", EVAL_FIXTURE);
        let out = train(&cfg, &[set]);
        assert!(!out.status.success(), "{set}");
        assert!(stderr(&out).contains(expect), "{set}: {}", stderr(&out));
        assert!(!cfg.parent().unwrap().join("out").exists(), "{set}: nothing may be written");
    }
}

#[test]
fn weights_max_samples_and_shuffle_mix_the_datasets_and_the_counts_are_saved() {
    let dir = tiny_run("mix", "lora_r: 4\n");
    let model = dir.join("model");
    let body = format!(
        "model: {}\nfinetuning: lora\nlora_r: 4\nmax_steps: 1\nlogging_steps: 1\nseed: 5\ndatasets:\n\
         \x20 - path: examples/quickstart/train_alpaca.jsonl\n    max_samples: 300\n    shuffle: true\n    weight: 1\n\
         \x20 - path: examples/quickstart/train_sharegpt.jsonl\n    weight: 3\n",
        model.display()
    );
    let cfg = config("mix-run", &body);
    let out = train(&cfg, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    // p = (1/4, 3/4) of 300 and 800 examples: N = min(300 × 4, 800 × 4/3) = 1066, 266.5 and 799.5,
    // the spare example to the first file.
    let err = stderr(&out);
    assert!(err.contains("training 1066 records"), "{err}");
    assert!(
        err.contains("examples/quickstart/train_alpaca.jsonl (alpaca): 800 rows, 300 selected, 300 examples, 267 used (weight 1)"),
        "{err}"
    );
    assert!(err.contains("examples/quickstart/train_sharegpt.jsonl (sharegpt): 800 rows, 800 examples, 799 used (weight 3)"), "{err}");
    let summary = json_file(&cfg.parent().unwrap().join("out/data_summary.json"));
    let used: Vec<u64> = summary["datasets"].as_array().unwrap().iter().map(|d| d["used"].as_u64().unwrap()).collect();
    assert_eq!(used, [267, 799]);
    assert_eq!(summary["datasets"][0]["selected"], 300);
    let out = train(
        &cfg,
        &["datasets=[{path: examples/quickstart/train_alpaca.jsonl, weight: 2}, {path: examples/quickstart/train_sharegpt.jsonl}]"],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("datasets[1].weight: missing: set weight on every dataset or on none"), "{}", stderr(&out));
}

#[test]
fn text_prompt_completion_and_sharegpt_files_with_their_own_names_train() {
    let dir = tiny_run("shapes", "lora_r: 4\n");
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let text: String = (0..6).map(|i| format!("{{\"body\": \"The topic of sentence {i} is the weather, which is sunny.\"}}\n")).collect();
    std::fs::write(data.join("text.jsonl"), text).unwrap();
    let pc: String = (0..6)
        .map(|i| {
            format!(
                "{{\"dialog\": [{{\"speaker\": \"user\", \"says\": \"Topic of sentence {i}?\"}}], \"answer\": [{{\"speaker\": \"assistant\", \"says\": \"weather\"}}]}}\n"
            )
        })
        .collect();
    std::fs::write(data.join("pc.jsonl"), pc).unwrap();
    let chats: String = (0..6)
        .map(|i| format!("{{\"conversations\": [{{\"from\": \"prompter\", \"value\": \"Topic {i}?\"}}, {{\"from\": \"bot\", \"value\": \"weather\"}}]}}\n"))
        .collect();
    std::fs::write(data.join("speakers.jsonl"), chats).unwrap();
    let body = format!(
        "model: {}\nfinetuning: lora\nlora_r: 4\nmax_steps: 2\nlogging_steps: 1\ndatasets:\n\
         \x20 - path: {text}\n    format: text\n    columns: {{text: body}}\n\
         \x20 - path: {pc}\n    columns: {{prompt: dialog, completion: answer, role: speaker, content: says}}\n\
         \x20 - path: {chats}\n    roles: {{user: [prompter], assistant: bot}}\n",
        dir.join("model").display(),
        text = data.join("text.jsonl").display(),
        pc = data.join("pc.jsonl").display(),
        chats = data.join("speakers.jsonl").display(),
    );
    let cfg = config("shapes-run", &body);
    let out = train(&cfg, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let summary = json_file(&cfg.parent().unwrap().join("out/data_summary.json"));
    let formats: Vec<&str> = summary["datasets"].as_array().unwrap().iter().map(|d| d["format"].as_str().unwrap()).collect();
    assert_eq!(formats, ["text", "prompt_completion", "sharegpt"]);
    assert!(summary["datasets"].as_array().unwrap().iter().all(|d| d["examples"] == 6), "{summary}");
    // An unknown column name is refused with the key and a suggestion.
    let out = train(&cfg, &["datasets=[{path: x.jsonl, columns: {txt: body}}]"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("datasets[0].columns.txt: unknown key; did you mean text?"), "{}", stderr(&out));
}

/// The tensor names of a safetensors file.
fn tensor_names(path: &Path) -> Vec<String> {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    header.as_object().unwrap().keys().filter(|k| *k != "__metadata__").cloned().collect()
}

fn eval_loss(args: &[&str]) -> f64 {
    let data = ["--data", "tests/fixtures/model/eval/data.jsonl", "--json"];
    let out = sft(&[&["eval"], args, &data[..]].concat());
    assert!(out.status.success(), "{}", stderr(&out));
    lines(&out)[0]["loss"].as_f64().unwrap()
}

#[test]
fn use_dora_trains_and_saves_a_peft_dora_adapter() {
    let dir = tiny_run("dora", "lora_r: 4\nlora_alpha: 8\nlora_dropout: 0.1\nuse_dora: true\n");
    let out = sft(&["train", dir.join("train.yaml").to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let ckpt = dir.join("out/checkpoint-8");
    let losses = logged_losses(&ckpt);
    assert!(losses.iter().all(|l| l.is_finite()) && losses[7] < losses[0], "{losses:?}");
    let peft_config = json_file(&ckpt.join("adapter_config.json"));
    assert_eq!((peft_config["use_dora"].as_bool(), peft_config["peft_type"].as_str()), (Some(true), Some("LORA")));
    // PEFT's names: every adapted module has A, B and its magnitude vector (no `.weight`).
    let names = tensor_names(&ckpt.join("adapter_model.safetensors"));
    let modules: Vec<&str> = names.iter().filter_map(|n| n.strip_suffix(".lora_A.weight")).collect();
    assert_eq!(modules.len(), 14, "{names:?}");
    for m in &modules {
        for suffix in [".lora_B.weight", ".lora_magnitude_vector"] {
            assert!(names.contains(&format!("{m}{suffix}")), "{m}{suffix} missing from {names:?}");
        }
    }
    assert_eq!(names.len(), 3 * modules.len());
    let out = sft(&["eval", "--model", ckpt.to_str().unwrap(), "--data", "examples/quickstart/eval.jsonl", "--json"]);
    assert!(out.status.success() && lines(&out)[0]["loss"].as_f64().unwrap().is_finite(), "{}", stderr(&out));
    let out = sft(&["generate", "--model", ckpt.to_str().unwrap(), "--prompt", "Hello", "--max-new-tokens", "3"]);
    assert!(out.status.success(), "{}", stderr(&out));

    // QLoRA + DoRA trains too (the norms are those of the dequantized weights).
    let dir = tiny_run("dora-4bit", "lora_r: 4\nuse_dora: true\nload_in_4bit: true\n");
    let out = sft(&["train", dir.join("train.yaml").to_str().unwrap(), "--set", "max_steps=2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(json_file(&dir.join("out/checkpoint-2/adapter_config.json"))["use_dora"].as_bool().unwrap());

    // Bad values name the key; nothing is written.
    for (set, expect) in
        [("use_dora=maybe", "use_dora: invalid type"), ("finetuning=full", "use_dora: DoRA is a LoRA variant: use finetuning: lora")]
    {
        let cfg = config("dora-bad", "model: m\ndatasets:\n  - path: d.jsonl\nuse_dora: true\n");
        let out = train(&cfg, &[set]);
        assert!(!out.status.success(), "{set}");
        assert!(stderr(&out).contains(expect), "{set}: {}", stderr(&out));
        assert!(!cfg.parent().unwrap().join("out").exists(), "{set}: nothing may be written");
    }
}

/// An adapter `sft train` saved with `use_dora: true` (tests/fixtures/train/dora_roundtrip, made
/// by gen_peft_roundtrip.py): PEFT loads it and gets the loss `sft eval` gets; the merge folds it
/// into the weights with the same loss; a run continued from it starts at that loss.
#[test]
fn a_dora_adapter_has_peft_s_loss_merged_and_continued() {
    let fixture = root().join("tests/fixtures/train/dora_roundtrip");
    let adapter = fixture.join("adapter");
    let peft = json_file(&fixture.join("expected.json"))["loss"].as_f64().unwrap();
    let base = "tests/fixtures/model/eval/model";
    let got = eval_loss(&["--model", base, "--adapter", adapter.to_str().unwrap()]);
    assert!(((got - peft) / peft).abs() <= 1e-4, "sft {got} vs PEFT {peft}");

    let merged = root().join("target/cli-tests/dora-merged");
    let _ = std::fs::remove_dir_all(&merged);
    let out = sft(&["merge", "--model", base, "--adapter", adapter.to_str().unwrap(), "--out", merged.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let got = eval_loss(&["--model", merged.to_str().unwrap()]);
    assert!(((got - peft) / peft).abs() <= 1e-4, "merged: sft {got} vs PEFT {peft}");

    let body = format!(
        "model: {base}\nadapter: {}\ndatasets:\n  - path: tests/fixtures/model/eval/data.jsonl\nmax_steps: 2\n\
         per_device_train_batch_size: 10\nlogging_steps: 1\nlearning_rate: 0.01\n",
        adapter.display()
    );
    let cfg = config("dora-continue", &body);
    let out = train(&cfg, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let ckpt = cfg.parent().unwrap().join("out/checkpoint-2");
    let losses = logged_losses(&ckpt);
    assert!(((losses[0] - peft) / peft).abs() <= 1e-5, "first loss {} vs PEFT's {peft}", losses[0]);
    assert!(losses[1] < losses[0], "it trains: {losses:?}");
    assert_eq!(json_file(&ckpt.join("adapter_config.json"))["use_dora"], true);
    let out = train(&cfg, &["use_dora=false"]);
    assert!(!out.status.success() && stderr(&out).contains("use_dora: false conflicts with adapter: "), "{}", stderr(&out));
}

/// The number in `text` right after `prefix` (`"optimizer sgd: "` → its byte count).
fn number_after(text: &str, prefix: &str) -> usize {
    let rest = text.split(prefix).nth(1).unwrap_or_else(|| panic!("no {prefix:?} in {text}"));
    rest.split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
}

#[test]
fn every_optim_trains_and_reports_its_state_bytes() {
    let dir = tiny_run("optim", "");
    let yaml = dir.join("train.yaml");
    let (mut bytes, mut params) = (std::collections::HashMap::new(), 0);
    for optim in ["adamw_torch", "adamw_8bit", "sgd", "adafactor"] {
        let _ = std::fs::remove_dir_all(dir.join("out"));
        let out = sft(&["train", yaml.to_str().unwrap(), "--set", "max_steps=2", "--set", &format!("optim={optim}")]);
        let err = stderr(&out);
        assert!(out.status.success(), "{optim}: {err}");
        let at_start = number_after(&err, &format!("\noptimizer {optim}: "));
        let at_end = number_after(&err, &format!("; optimizer {optim}: "));
        assert_eq!(at_start, at_end, "{optim}: {err}");
        let losses = logged_losses(&dir.join("out/checkpoint-2"));
        assert!(losses.len() == 2 && losses.iter().all(|l| l.is_finite()), "{optim}: {losses:?}");
        let state = dir.join("out/checkpoint-2/optimizer.safetensors");
        let keys = tensor_names(&state);
        let expect = match optim {
            "adamw_torch" => "model.embed_tokens.weight.exp_avg_sq",
            "adamw_8bit" => "model.embed_tokens.weight.absmax2",
            "adafactor" => "model.embed_tokens.weight.exp_avg_sq_col",
            _ => "step",
        };
        assert!(keys.iter().any(|k| k == expect), "{optim}: {keys:?}");
        bytes.insert(optim, at_start);
        params = number_after(&err, "for 2 steps; ");
    }
    let state = |o: &str| bytes[o];
    assert_eq!(state("adamw_torch"), 8 * params, "two f32 moments per parameter");
    assert_eq!(state("sgd"), 0);
    // The embedding (829 × 32) is 8-bit: 2 bytes per element and 8 per 256-block; the smaller
    // tensors keep f32 moments.
    assert_eq!(state("adamw_8bit"), 8 * params - 6 * 829 * 32 + 8 * (829 * 32_usize).div_ceil(256));
    assert!(state("adafactor") < state("adamw_torch") / 8, "{bytes:?}");
    let bad = sft(&["train", yaml.to_str().unwrap(), "--set", "optim=adam"]);
    assert!(!bad.status.success());
    assert!(
        stderr(&bad).contains("optim: unknown variant `adam`, expected one of `adamw_torch`, `adamw_8bit`, `sgd`, `adafactor`"),
        "{}",
        stderr(&bad)
    );
}

#[test]
fn adamw_8bit_and_adafactor_runs_resume_exactly() {
    assert_resume_is_exact("resume-adamw-8bit", "optim: adamw_8bit\nweight_decay: 0.1\n", "model.safetensors");
    assert_resume_is_exact("resume-adafactor", "optim: adafactor\nweight_decay: 0.1\n", "model.safetensors");
}
