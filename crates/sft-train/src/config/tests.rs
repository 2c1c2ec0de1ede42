use super::*;

fn write(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join("sft-train-config-tests");
    std::fs::create_dir_all(&dir).expect("dir");
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p
}

const MIN: &str = "model: m\ndatasets:\n  - path: d.jsonl\n";

#[test]
fn defaults_and_overrides() {
    let p = write("ok.yaml", MIN);
    let c = load(&p, &["learning_rate=1e-3".into(), "finetuning=full".into(), "max_steps=7".into()]).expect("valid");
    assert_eq!(c.learning_rate, 1e-3);
    assert!(matches!(c.method, Method::Full));
    assert_eq!(c.length, Length::Steps(7));
    assert_eq!(c.tokenizer, "m");
    assert_eq!(c.base_format, BaseFormat::F32);
    let c = load(&p, &["bf16=true".into()]).expect("valid");
    assert_eq!(c.base_format, BaseFormat::Bf16Matmul);
    let Method::Lora(lora) = load(&p, &[]).expect("valid").method else { panic!("lora") };
    assert!(!lora.use_dora, "DoRA is off by default");
    assert_eq!(load(&p, &[]).expect("valid").optim, OptimKind::AdamWTorch);
    for kind in [OptimKind::AdamWTorch, OptimKind::AdamW8bit, OptimKind::Sgd, OptimKind::Adafactor] {
        assert_eq!(load(&p, &[format!("optim={}", kind.name())]).expect("valid").optim, kind);
    }
    let c = load(&p, &["use_dora=true".into(), "load_in_4bit=true".into()]).expect("QLoRA + DoRA");
    assert!(matches!(c.method, Method::Lora(LoraSettings { use_dora: true, .. })));
}

#[test]
fn unknown_keys_suggest_the_closest() {
    let p = write("typo.yaml", &format!("{MIN}learning_rte: 0.1\n"));
    let e = load(&p, &[]).unwrap_err().to_string();
    assert!(e.contains("learning_rte: unknown key; did you mean learning_rate?"), "{e}");
    let p = write("nested.yaml", "model: m\ndatasets:\n  - path: d.jsonl\n  - pth: e.jsonl\n");
    let e = load(&p, &[]).unwrap_err().to_string();
    assert!(e.contains("datasets[1].pth: unknown key; did you mean path?"), "{e}");
    let p = write("nested-eval.yaml", &format!("{MIN}eval_dataset:\n  path: e.jsonl\n  formt: alpaca\n"));
    let e = load(&p, &[]).unwrap_err().to_string();
    assert!(e.contains("eval_dataset.formt: unknown key; did you mean format?"), "{e}");
}

#[test]
fn the_known_keys_are_the_fields_of_the_struct_and_its_flattened_groups() {
    let keys = known_keys();
    let top: Vec<&str> = keys.as_mapping().unwrap().keys().filter_map(Yaml::as_str).collect();
    for key in ["model", "chat_template", "map_eos_token", "template_kwargs", "masking", "max_seq_length", "bnb_4bit_quant_type"] {
        assert!(top.contains(&key), "{key} missing from {top:?}");
    }
    let p = write("all.yaml", &format!("{MIN}map_eos_token: true\nchat_template: chatml\nmasking: last\nformat_typo: 1\n"));
    let e = load(&p, &[]).unwrap_err().to_string();
    assert!(e.contains("format_typo: unknown key"), "{e}");
    let p = write("flat.yaml", &format!("{MIN}map_eos_token: true\nchat_template: chatml\nmasking: last\nmax_seq_length: 64\n"));
    let c = load(&p, &[]).expect("valid");
    assert!(c.template.map_eos_token);
    assert_eq!(c.template.chat_template.as_deref(), Some("chatml"));
    assert_eq!(c.encode.masking, sft_data::encode::Masking::Last);
    assert_eq!(c.encode.max_seq_length, Some(64));
    let c = load(&write("min.yaml", MIN), &[]).expect("valid");
    assert_eq!(c.encode.max_seq_length, Some(1024), "training's default length");
}

#[test]
fn an_adapter_sets_the_lora_keys_and_a_conflicting_key_is_refused_naming_both() {
    let adapter = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/model/eval/adapter");
    let base = format!("{MIN}adapter: {}\n", adapter.display());
    let c = load(&write("adapter.yaml", &base), &[]).expect("valid");
    let Method::Lora(lora) = &c.method else { panic!("lora") };
    assert_eq!((lora.r, lora.alpha, c.adapter.as_deref()), (4, 8.0, Some(adapter.as_path())));
    assert!(lora.targets.matches("model.layers.1.mlp.up_proj"));
    // Keys that agree with the adapter are fine.
    load(&write("adapter-same.yaml", &format!("{base}lora_r: 4\nlora_alpha: 8\n")), &[]).expect("agrees");
    for (extra, expect) in [
        ("lora_r: 16", "lora_r: 16 conflicts with adapter: "),
        ("lora_alpha: 16", "whose adapter_config.json has lora_alpha 8"),
        ("use_rslora: true", "use_rslora: true conflicts with adapter"),
        ("use_dora: true", "use_dora: true conflicts with adapter: "),
        ("target_modules: [q_proj]", "target_modules: [\"q_proj\"] conflicts with adapter"),
        ("finetuning: full", "adapter: continues a LoRA adapter: use finetuning: lora"),
    ] {
        let e = load(&write("adapter-bad.yaml", &format!("{base}{extra}\n")), &[]).unwrap_err().to_string();
        assert!(e.contains(expect), "{extra}: {e}");
    }
    // A DoRA adapter sets use_dora.
    let dora = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/model/dora/llama/adapter");
    let base = format!("{MIN}adapter: {}\n", dora.display());
    let c = load(&write("adapter-dora.yaml", &base), &[]).expect("valid");
    assert!(matches!(c.method, Method::Lora(LoraSettings { use_dora: true, .. })));
    let e = load(&write("adapter-dora-bad.yaml", &format!("{base}use_dora: false\n")), &[]).unwrap_err().to_string();
    assert!(e.contains("use_dora: false conflicts with adapter: ") && e.contains("has use_dora true"), "{e}");
    let e = load(&write("adapter-none.yaml", &format!("{MIN}adapter: /no/such/adapter\n")), &[]).unwrap_err().to_string();
    assert!(e.contains("adapter: /no/such/adapter: no such directory, and not a hub id"), "{e}");
}

#[test]
fn mixing_keys_are_checked_per_dataset() {
    let two = |a: &str, b: &str| format!("model: m\ndatasets:\n  - path: a.jsonl\n{a}  - path: b.jsonl\n{b}");
    let c =
        load(&write("mix.yaml", &two("    weight: 3\n    shuffle: true\n", "    weight: 1\n    max_samples: 5\n")), &[]).expect("valid");
    assert_eq!((c.datasets[0].weight, c.datasets[0].shuffle, c.datasets[1].max_samples), (Some(3.0), true, Some(5)));
    let roles = "    roles:\n      user: [human, prompter]\n      assistant: bot\n";
    let c = load(&write("roles.yaml", &two(roles, "")), &[]).expect("valid");
    let pairs = |v: &[(&str, &str)]| v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect::<Vec<_>>();
    assert_eq!(c.datasets[0].sharegpt().expect("roles").roles, pairs(&[("bot", "assistant"), ("human", "user"), ("prompter", "user")]));
    for (a, b, expect) in [
        ("    weight: 1\n", "", "datasets[1].weight: missing: set weight on every dataset or on none"),
        ("    weight: 0\n", "    weight: 1\n", "datasets[0].weight: must be greater than 0"),
        ("    weight: -1\n", "    weight: 1\n", "datasets[0].weight: must be greater than 0"),
        ("", "    max_samples: 0\n", "datasets[1].max_samples: must be at least 1"),
        ("", "    max_samples: -3\n", "datasets[1].max_samples: invalid type"),
        ("    weight: lots\n", "", "invalid type"),
        ("", "    shuffle: maybe\n", "invalid type"),
        ("    wieght: 1\n", "", "datasets[0].wieght: unknown key; did you mean weight?"),
        ("    roles: {robot: bot}\n", "", "datasets[0].roles.robot: unknown key"),
        ("    roles: {assistant: 3}\n", "", "expected a speaker name or a list of names"),
        ("", "    format: alpaca\n    roles: {user: human}\n", "datasets[1].roles: names ShareGPT speakers"),
    ] {
        let e = load(&write("mix-bad.yaml", &two(a, b)), &[]).unwrap_err().to_string();
        assert!(e.contains(expect), "{a}{b}: {e}");
    }
    let e = load(&write("mix-eval.yaml", &format!("{MIN}eval_dataset:\n  path: e.jsonl\n  weight: 2\n")), &[]).unwrap_err().to_string();
    assert!(e.contains("eval_dataset.weight: applies only to training datasets"), "{e}");
}

#[test]
fn bad_values_name_the_key() {
    for (extra, key) in [
        ("learning_rate: 0", "learning_rate: must be greater than 0"),
        ("per_device_train_batch_size: 0", "per_device_train_batch_size: must be at least 1"),
        ("lr_scheduler_type: step", "lr_scheduler_type"),
        ("optim: adam", "optim: unknown variant `adam`, expected one of `adamw_torch`, `adamw_8bit`, `sgd`, `adafactor`"),
        ("learning_rate: fast", "invalid type"),
        ("finetuning: qlora", "finetuning"),
        ("finetuning: full\nbf16: true", "bf16: bf16 base weights are frozen: use finetuning: lora"),
        ("bf16: true\nload_in_4bit: true", "bf16: choose one of bf16 and load_in_4bit"),
        ("masking: lst", "masking: unknown variant `lst`"),
        ("max_seq_length: big", "max_seq_length: invalid type"),
        ("template_kwargs: [1]", "template_kwargs: invalid type"),
        ("masking: markers", "masking: markers needs instruction_part and response_part"),
        ("instruction_part: '<u>'", "instruction_part: applies only with masking markers"),
        ("bnb_4bit_quant_type: fp4", "bnb_4bit_quant_type: unknown variant `fp4`"),
        ("max_grad_norm: -1", "max_grad_norm: must be 0 (off) or positive"),
        ("use_dora: maybe", "use_dora: invalid type"),
        ("use_dora: 1", "use_dora: invalid type"),
        ("finetuning: full\nuse_dora: true", "use_dora: DoRA is a LoRA variant: use finetuning: lora"),
    ] {
        let p = write("bad.yaml", &format!("{MIN}{extra}\n"));
        let e = load(&p, &[]).unwrap_err().to_string();
        assert!(e.contains(key), "{extra}: {e}");
    }
}
