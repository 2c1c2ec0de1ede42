//! Hub ids found in caches built here as huggingface_hub builds them: blobs named by hash,
//! snapshot entries as relative symlinks into `blobs/`, `refs/<branch>` holding a commit.
//! Everything runs offline, or against an endpoint nothing listens on: a complete cache needs
//! no network.

use std::path::{Path, PathBuf};

use sft_hub::{locate_with, resolve_with, HubError, LocalModel};

use super::{commit, env, model_files, scratch};

/// Puts `files` into the cache as snapshot `commit` of `id`, and points `refs` at it.
fn put(cache: &Path, id: &str, commit: &str, files: &[(String, Vec<u8>)], refs: &[&str]) -> PathBuf {
    let repo = cache.join(format!("models--{}", id.replace('/', "--")));
    let snapshot = repo.join("snapshots").join(commit);
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    std::fs::create_dir_all(&snapshot).unwrap();
    for (name, content) in files {
        let etag = super::fake_hub::sha256_hex(content);
        std::fs::write(repo.join("blobs").join(&etag), content).unwrap();
        std::os::unix::fs::symlink(format!("../../blobs/{etag}"), snapshot.join(name)).unwrap();
    }
    for r in refs {
        let path = repo.join("refs").join(r);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, commit).unwrap();
    }
    snapshot
}

#[test]
fn a_cached_model_is_found_through_refs_or_a_pinned_commit() {
    let cache = scratch("cache-refs");
    let (old, new) = (commit("old"), commit("new"));
    let old_dir = put(&cache, "org/name", &old, &model_files(0), &["v1.0"]);
    let new_dir = put(&cache, "org/name", &new, &model_files(2), &["main"]);
    // Offline, and online with an endpoint nothing listens on: the cache alone answers.
    for offline in [true, false] {
        let e = env(&cache, None, offline);
        let got = locate_with("org/name", &e).unwrap();
        assert_eq!(got, LocalModel { dir: new_dir.clone(), name: "org/name".into(), revision: Some(new.clone()) });
        let pinned = locate_with(&format!("org/name@{old}"), &e).unwrap();
        assert_eq!(pinned, LocalModel { dir: old_dir.clone(), name: "org/name".into(), revision: Some(old.clone()) });
        assert_eq!(locate_with("org/name@v1.0", &e).unwrap(), pinned);
        assert!(got.dir.join("config.json").is_symlink() && got.dir.join("tokenizer.json").is_file());
    }
}

#[test]
fn a_checkpoint_naming_a_hub_base_finds_that_commit() {
    let cache = scratch("cache-checkpoint");
    let (old, new) = (commit("old"), commit("new"));
    let old_dir = put(&cache, "org/name", &old, &model_files(0), &[]);
    put(&cache, "org/name", &new, &model_files(0), &["main"]);
    let ckpt = cache.join("checkpoint");
    std::fs::create_dir_all(&ckpt).unwrap();
    let config = format!(r#"{{"r": 4, "lora_alpha": 8, "base_model_name_or_path": "org/name", "revision": "{old}"}}"#);
    std::fs::write(ckpt.join("adapter_config.json"), config).unwrap();
    std::fs::write(ckpt.join("tokenizer.json"), "{}").unwrap();
    let got = resolve_with(&ckpt.display().to_string(), None, &env(&cache, None, true)).unwrap();
    assert_eq!(got.base, LocalModel { dir: old_dir, name: "org/name".into(), revision: Some(old) });
    assert_eq!((got.adapter.as_deref(), got.tokenizer_dir.as_path()), (Some(ckpt.as_path()), ckpt.as_path()));
}

#[test]
fn a_missing_shard_or_blob_is_named_with_the_id_and_revision() {
    let cache = scratch("cache-missing");
    let c = commit("c");
    let mut files = model_files(3);
    files.retain(|(n, _)| n != "model-00002-of-00003.safetensors");
    let dir = put(&cache, "org/name", &c, &files, &["main"]);
    let e = env(&cache, None, true);
    let err = locate_with("org/name", &e).unwrap_err();
    assert!(matches!(err, HubError::MissingFile { .. }), "{err:?}");
    let text = err.to_string();
    for part in ["org/name@main", &c, "model-00002-of-00003.safetensors", "model.safetensors.index.json", "HF_HUB_OFFLINE"] {
        assert!(text.contains(part), "{part} not in: {text}");
    }
    // A snapshot link whose blob is gone is missing too.
    assert!(dir.join("model-00001-of-00003.safetensors").is_file());
    let c2 = commit("c2");
    put(&cache, "org/other", &c2, &model_files(0), &["main"]);
    let blob = std::fs::canonicalize(cache.join(format!("models--org--other/snapshots/{c2}/tokenizer.json"))).unwrap();
    std::fs::remove_file(blob).unwrap();
    let text = locate_with("org/other", &e).unwrap_err().to_string();
    assert!(text.contains("org/other@main") && text.contains("has no tokenizer.json"), "{text}");
    // Online, a missing file is fetched: here the endpoint does not answer, and the error says so.
    let text = locate_with("org/other", &env(&cache, None, false)).unwrap_err().to_string();
    assert!(text.contains("org/other@main") && text.contains("cannot reach the hub at http://127.0.0.1:9"), "{text}");
}

#[test]
fn an_id_not_cached_while_offline_is_a_clear_error() {
    let cache = scratch("cache-offline");
    let err = locate_with("org/absent", &env(&cache, None, true)).unwrap_err();
    assert!(matches!(err, HubError::NotCached { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("org/absent@main") && text.contains("HF_HUB_OFFLINE") && text.contains(&cache.display().to_string()), "{text}");
    // A ref to a snapshot that was never written, or a revision the cache has no ref for.
    put(&cache, "org/name", &commit("c"), &model_files(0), &[]);
    std::fs::create_dir_all(cache.join("models--org--name/refs")).unwrap();
    std::fs::write(cache.join("models--org--name/refs/main"), commit("elsewhere")).unwrap();
    for name in ["org/name", "org/name@v2"] {
        let err = locate_with(name, &env(&cache, None, true)).unwrap_err();
        assert!(matches!(err, HubError::NotCached { .. }), "{name}: {err:?}");
    }
    let text = locate_with("org/name@../../x", &env(&cache, None, true)).unwrap_err().to_string();
    assert!(text.contains("is not a branch, tag or commit"), "{text}");
}
