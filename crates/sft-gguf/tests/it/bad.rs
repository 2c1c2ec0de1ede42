//! Issue 22: broken GGUF files (tests/fixtures/bad_inputs/gguf/, with their generator) are
//! errors naming the file and the key or tensor, never panics or huge allocations.

use super::common::{root, scratch};

const CASES: &[(&str, &[&str])] = &[
    ("wrong_magic", &["not a valid GGUF file", "wrong magic \"GGUX\""]),
    ("truncated", &["tensor ", "past the end of the file"]),
    ("header_only", &["not a valid GGUF file", "header declares 11 tensors and 13 metadata entries"]),
    ("empty", &["the file ends inside the magic number"]),
    ("unsupported_architecture", &["key general.architecture: \"mamba\" is not supported (supported: llama, mistral, qwen2, qwen3"]),
    ("missing_key", &["key llama.block_count: missing"]),
    ("huge_string", &["metadata key 0", "larger than the file allows"]),
    ("huge_tensor_count", &["header declares 1152921504606846976 tensors"]),
    ("unknown_tensor_type", &["tensor blk.0.attn_q.weight: IQ2_XXS (type 16) is not supported (supported: F32, F16"]),
    ("huge_dimensions", &["tensor blk.0.attn_k.weight: dimensions", "implausibly large"]),
];

#[test]
fn broken_files_are_errors_naming_file_and_key_or_tensor() {
    let dir = root().join("tests/fixtures/bad_inputs/gguf");
    let out = scratch("bad");
    for (name, want) in CASES {
        let file = dir.join(format!("{name}.gguf"));
        assert!(file.is_file(), "{}", file.display());
        let e = sft_gguf::import(&file, &out.join(name)).expect_err(name).to_string();
        assert!(e.contains(&format!("{name}.gguf")), "{name}: {e}");
        for w in *want {
            assert!(e.contains(w), "{name}: {e:?} lacks {w:?}");
        }
        assert!(!out.join(name).exists(), "{name}: output written");
    }
    let summary = sft_gguf::import(&dir.join("valid.gguf"), &out.join("valid")).expect("the unbroken file imports");
    assert_eq!((summary.tensors, summary.tied), (11, true));
}

/// Every prefix of a valid file is an error, never a panic.
#[test]
fn every_truncation_of_a_valid_file_is_an_error() {
    let bytes = std::fs::read(root().join("tests/fixtures/bad_inputs/gguf/valid.gguf")).unwrap();
    let out = scratch("prefixes");
    let path = out.join("cut.gguf");
    for n in (0..bytes.len()).step_by(7) {
        std::fs::write(&path, &bytes[..n]).unwrap();
        assert!(sft_gguf::import(&path, &out.join("m")).is_err(), "prefix of {n} bytes imported");
    }
}
