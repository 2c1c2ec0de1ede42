//! A model from the internet: the input's first byte chooses what is fuzzed (the config.json,
//! the model.safetensors, both split at a NUL, or a GGUF file), the rest is written into a
//! directory that `Model::load` then reads, or into a `.gguf` that `sft_gguf::import` converts
//! (seed corpus: tests/fixtures/bad_inputs/gguf/). It must load or fail with an error, never
//! panic, abort or allocate without bound.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sft_model::model::{Model, Trainable};

/// The tiny fixture model the fixed half comes from.
const CONFIG: &[u8] = include_bytes!("../../tests/fixtures/model/eval/model/config.json");
const WEIGHTS: &[u8] = include_bytes!("../../tests/fixtures/model/eval/model/model.safetensors");

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let dir = std::env::temp_dir().join(format!("sft-fuzz-model-{}", std::process::id()));
    if mode % 4 == 3 {
        let file = dir.with_extension("gguf");
        let out = dir.with_extension("imported");
        let _ = std::fs::remove_dir_all(&out);
        if std::fs::write(&file, rest).is_ok() {
            let _ = sft_gguf::import(&file, &out);
        }
        return;
    }
    let (config, weights) = match mode % 4 {
        0 => (rest, WEIGHTS),
        1 => (CONFIG, rest),
        _ => match rest.iter().position(|&b| b == 0) {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => return,
        },
    };
    if std::fs::create_dir_all(&dir).is_err()
        || std::fs::write(dir.join("config.json"), config).is_err()
        || std::fs::write(dir.join("model.safetensors"), weights).is_err()
    {
        return;
    }
    let _ = Model::load(&dir, &Trainable::Frozen);
});
