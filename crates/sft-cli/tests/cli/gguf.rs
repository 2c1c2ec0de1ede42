//! Issue 22: a GGUF file as `--model`. `sft eval` on the real SmolLM2-135M-Instruct.Q4_1.gguf
//! (scripts/fetch-assets.sh) gives the masked loss and trained-token count transformers' own
//! GGUF loader gives over 60 chats (tests/fixtures/gguf/gen_smollm2_fixture.py), converting the
//! file once into the cache and reusing it.

use std::process::Command;

use super::root;

#[test]
fn eval_of_a_gguf_file_matches_transformers_gguf_loader() {
    let gguf = root().join("assets/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(gguf.is_file(), "{} is missing: run scripts/fetch-assets.sh", gguf.display());
    let cache = root().join("target/cli-tests/gguf-cache");
    let _ = std::fs::remove_dir_all(&cache);
    let eval = || {
        let out = Command::new(env!("CARGO_BIN_EXE_sft"))
            .args(["eval", "--model", &gguf.display().to_string(), "--data", "tests/fixtures/gguf/smollm2/chats.jsonl", "--json"])
            .env("SFT_CACHE_DIR", &cache)
            .current_dir(root())
            .output()
            .expect("run sft");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("json")
    };
    let got = eval();
    let want: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("tests/fixtures/gguf/smollm2/eval.json")).unwrap()).unwrap();
    assert_eq!(got["tokens"], want["tokens"], "trained tokens");
    let (loss, reference) = (got["loss"].as_f64().unwrap(), want["loss"].as_f64().unwrap());
    assert!((loss - reference).abs() / reference < 1e-4, "loss {loss} vs transformers {reference}");
    // Converted once: a second run reuses the one cache entry.
    let entries = || std::fs::read_dir(cache.join("gguf")).unwrap().count();
    assert_eq!(entries(), 1);
    assert_eq!(eval()["loss"], got["loss"]);
    assert_eq!(entries(), 1);
}
