//! Downloads from the stand-in hub (`HF_ENDPOINT` = a server on 127.0.0.1): only a model's
//! files land in the cache in huggingface_hub's layout and then resolve offline; redirects are
//! followed; 404 and 401 end in errors naming the id and the file; an interrupted or wrong
//! download is never used, and an interrupted one resumes.

use std::collections::BTreeMap;
use std::path::Path;

use sft_hub::{locate_with, HubError, LocalModel};

use super::fake_hub::{sha256_hex, FakeHub, FakeRepo, State};
use super::{commit, env, model_files, scratch};

/// A hub holding `org/name` (a model with `shards` shards, plus files a model does not need).
fn hub(shards: usize, setup: impl FnOnce(&mut State)) -> (FakeHub, FakeRepo) {
    let mut files: BTreeMap<String, Vec<u8>> = model_files(shards).into_iter().collect();
    files.insert("README.md".into(), b"# a model".to_vec());
    files.insert("pytorch_model.bin".into(), vec![1; 100]);
    files.insert("onnx/model.onnx".into(), vec![2; 100]);
    let repo = FakeRepo { commit: commit("remote"), files, ..FakeRepo::default() };
    let mut state = State::default();
    state.repos.insert("org/name".into(), repo.clone());
    setup(&mut state);
    (FakeHub::start(state), repo)
}

/// Checks that `dir` holds exactly the model's files of `repo`, each a relative link to a
/// blob holding its bytes.
fn assert_snapshot(dir: &Path, repo: &FakeRepo) {
    let mut names: Vec<String> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    let mut want: Vec<String> =
        repo.files.keys().filter(|n| !["README.md", "pytorch_model.bin", "onnx/model.onnx"].contains(&n.as_str())).cloned().collect();
    want.sort();
    assert_eq!(names, want);
    for name in names {
        let link = std::fs::read_link(dir.join(&name)).unwrap();
        assert!(link.starts_with("../../blobs"), "{name} -> {}", link.display());
        assert_eq!(std::fs::read(dir.join(&name)).unwrap(), repo.files[&name], "{name}");
        let blob = link.file_name().unwrap().to_str().unwrap().to_string();
        if name.ends_with(".safetensors") {
            assert_eq!(blob, sha256_hex(&repo.files[&name]), "an LFS blob is named by its SHA-256");
        }
    }
}

#[test]
fn a_download_lands_in_the_cache_layout_and_then_resolves_offline() {
    let cache = scratch("download-ok");
    let (hub, repo) = hub(2, |_| {});
    let got = locate_with("org/name", &env(&cache, Some(&hub.url), false)).unwrap();
    let dir = cache.join("models--org--name/snapshots").join(&repo.commit);
    assert_eq!(got, LocalModel { dir: dir.clone(), name: "org/name".into(), revision: Some(repo.commit.clone()) });
    assert_snapshot(&dir, &repo);
    let refs: Vec<_> = std::fs::read_dir(cache.join("models--org--name/refs")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(refs, ["main"]);
    assert_eq!(std::fs::read_to_string(cache.join("models--org--name/refs/main")).unwrap(), repo.commit);
    let log = hub.log();
    assert!(log[0].starts_with("GET /api/models/org/name/revision/main"), "{log:?}");
    assert!(!log.iter().any(|l| l.contains("README") || l.contains("pytorch_model") || l.contains("onnx")), "{log:?}");
    // Files are fetched at the listed commit, LFS files through the CDN redirect.
    assert!(log[1..].iter().filter(|l| !l.contains("/cdn/")).all(|l| l.contains(&format!("/resolve/{}/", repo.commit))), "{log:?}");
    assert!(log.iter().any(|l| l.starts_with("GET /cdn/")), "{log:?}");
    // Offline, or with the hub gone, the cache answers; nothing is fetched again.
    let requests = hub.log().len();
    assert_eq!(locate_with("org/name", &env(&cache, Some(&hub.url), true)).unwrap(), got);
    assert_eq!(locate_with(&format!("org/name@{}", repo.commit), &env(&cache, None, true)).unwrap(), got);
    assert_eq!(locate_with("org/name", &env(&cache, Some(&hub.url), false)).unwrap(), got);
    assert_eq!(hub.log().len(), requests);
}

#[test]
fn redirects_are_followed_and_a_token_is_sent() {
    let cache = scratch("download-redirect");
    let (hub, repo) = hub(0, |s| {
        s.renamed.insert("old-org/old-name".into(), "org/name".into());
        s.token = Some("hf_secret".into());
        s.repos.get_mut("org/name").unwrap().gated = true;
    });
    let mut e = env(&cache, Some(&hub.url), false);
    e.token = Some("hf_secret".into());
    let got = locate_with("old-org/old-name", &e).unwrap();
    assert_eq!(got.name, "old-org/old-name");
    assert_snapshot(&got.dir, &repo);
    let log = hub.log();
    assert!(log.iter().any(|l| l.starts_with("GET /org/name/resolve/")), "{log:?}");
    assert!(log.iter().filter(|l| l.contains("/resolve/")).all(|l| l.ends_with(" auth")), "{log:?}");
    assert!(cache.join("models--old-org--old-name/refs/main").is_file());
}

#[test]
fn not_found_and_unauthorized_name_the_id_and_the_file() {
    let (hub, _) = hub(2, |s| {
        s.gone.insert("model-00002-of-00002.safetensors".into());
        let mut gated = s.repos["org/name"].clone();
        gated.gated = true;
        s.repos.insert("org/gated".into(), gated.clone());
        s.repos.insert("org/private".into(), FakeRepo { private: true, ..gated });
        s.token = Some("hf_right".into());
    });
    let e = env(&scratch("download-errors"), Some(&hub.url), false);
    let expect = |name: &str, status: u16, parts: &[&str]| {
        let err = locate_with(name, &e).unwrap_err();
        assert!(matches!(&err, HubError::Http { status: s, .. } if *s == status), "{name}: {err:?}");
        let text = err.to_string();
        for part in parts {
            assert!(text.contains(part), "{part} not in: {text}");
        }
    };
    let gone = ["org/name@main", "model-00002-of-00002.safetensors", "HTTP 404", "no such file", "does not exist"];
    expect("org/name", 404, &gone);
    expect(
        "org/unknown",
        404,
        &["org/unknown@main", "the file list", "HTTP 404", "/api/models/org/unknown/revision/main", "Repository not found"],
    );
    expect("org/name@v9", 404, &["org/name@v9", "the file list", "Invalid rev id: v9"]);
    expect("org/gated", 401, &["org/gated@main", "config.json", "HTTP 401", "set HF_TOKEN", "is restricted"]);
    expect("org/private", 401, &["org/private@main", "the file list", "HTTP 401", "set HF_TOKEN"]);
    let wrong = sft_hub::HubEnv { token: Some("hf_wrong".into()), ..e.clone() };
    let text = locate_with("org/gated", &wrong).unwrap_err().to_string();
    assert!(text.contains("config.json") && text.contains("HF_TOKEN) has no access"), "{text}");
    // Nothing of a failed download is used: refs/main is written only once the snapshot is
    // whole, and the snapshot by its commit lacks the shard that 404ed.
    let offline = sft_hub::HubEnv { offline: true, ..e.clone() };
    let err = locate_with("org/name", &offline).unwrap_err();
    assert!(matches!(err, HubError::NotCached { .. }), "{err:?}");
    let text = locate_with(&format!("org/name@{}", commit("remote")), &offline).unwrap_err().to_string();
    assert!(text.contains("has no model-00002-of-00002.safetensors"), "{text}");
}

#[test]
fn a_repository_without_a_model_file_says_which() {
    let (hub, _) = hub(0, |s| {
        let repo = s.repos.get_mut("org/name").unwrap();
        repo.files.remove("tokenizer_config.json");
        let mut bin_only = repo.clone();
        bin_only.files.remove("model.safetensors");
        s.repos.insert("org/bin".into(), bin_only);
    });
    let e = env(&scratch("download-not-in-repo"), Some(&hub.url), false);
    let text = locate_with("org/name", &e).unwrap_err().to_string();
    assert!(text.contains("org/name@main: the repository has no tokenizer_config.json"), "{text}");
    let text = locate_with("org/bin", &e).unwrap_err().to_string();
    assert!(text.contains("has no model.safetensors (nor model.safetensors.index.json)"), "{text}");
}

#[test]
fn an_interrupted_download_is_never_used_and_resumes() {
    let cache = scratch("download-resume");
    let shard = "model-00002-of-00002.safetensors";
    let (hub, repo) = hub(2, |s| {
        s.truncate_once.insert(shard.into());
    });
    let e = env(&cache, Some(&hub.url), false);
    let err = locate_with("org/name", &e).unwrap_err();
    assert!(matches!(err, HubError::Download { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("org/name@main") && text.contains(shard) && text.contains("interrupted"), "{text}");
    // The part fetched is kept apart from the snapshot; the snapshot is not taken.
    let snapshot = cache.join("models--org--name/snapshots").join(&repo.commit);
    assert!(!snapshot.join(shard).exists());
    let part = cache.join("models--org--name/blobs").join(format!("{}.part", sha256_hex(&repo.files[shard])));
    let half = repo.files[shard].len() / 2;
    assert_eq!(std::fs::metadata(&part).unwrap().len() as usize, half);
    let offline = sft_hub::HubEnv { offline: true, ..e.clone() };
    assert!(matches!(locate_with("org/name", &offline).unwrap_err(), HubError::NotCached { .. }));
    let pinned = locate_with(&format!("org/name@{}", repo.commit), &offline).unwrap_err().to_string();
    assert!(pinned.contains(&format!("has no {shard}")), "{pinned}");
    // The next run asks for the rest only, and the result is whole.
    let got = locate_with("org/name", &e).unwrap();
    assert_snapshot(&got.dir, &repo);
    assert!(hub.log().iter().any(|l| l.starts_with("GET /cdn/") && l.contains(&format!("bytes={half}-"))), "{:?}", hub.log());
    assert!(!part.exists());
}

#[test]
fn wrong_bytes_are_removed_never_used() {
    let cache = scratch("download-corrupt");
    let (hub, repo) = hub(0, |s| {
        s.corrupt.insert("model.safetensors".into());
    });
    let e = env(&cache, Some(&hub.url), false);
    let text = locate_with("org/name", &e).unwrap_err().to_string();
    assert!(text.contains("org/name@main: model.safetensors: the fetched file has SHA-256"), "{text}");
    let snapshot = cache.join("models--org--name/snapshots").join(&repo.commit);
    assert!(!snapshot.join("model.safetensors").exists() && !snapshot.join("model.safetensors").is_symlink());
    let blob = cache.join("models--org--name/blobs").join(sha256_hex(&repo.files["model.safetensors"]));
    assert!(!blob.exists());
    // Served right again, it is fetched anew.
    hub.state.lock().unwrap().corrupt.clear();
    assert_snapshot(&locate_with("org/name", &e).unwrap().dir, &repo);
}

#[test]
fn a_part_file_as_long_as_the_file_is_fetched_anew() {
    let cache = scratch("download-stale-part");
    let (hub, repo) = hub(0, |_| {});
    let blobs = cache.join("models--org--name/blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    let weights = &repo.files["model.safetensors"];
    std::fs::write(blobs.join(format!("{}.part", sha256_hex(weights))), vec![0; weights.len()]).unwrap();
    let got = locate_with("org/name", &env(&cache, Some(&hub.url), false)).unwrap();
    assert_snapshot(&got.dir, &repo);
}

/// A PEFT adapter repository (adapter config and weights, no tokenizer, plus files sft does not
/// read) downloads alone; named as the model it resolves to the base it names, whose tokenizer
/// it uses; as `--adapter` beside that base, the same.
#[test]
fn an_adapter_repository_fetches_only_the_adapter_and_finds_its_base() {
    let cache = scratch("download-adapter");
    let config = br#"{"peft_type": "LORA", "r": 4, "lora_alpha": 8, "base_model_name_or_path": "org/name"}"#.to_vec();
    let adapter: BTreeMap<String, Vec<u8>> = [
        ("adapter_config.json".to_string(), config),
        ("adapter_model.safetensors".into(), vec![5; 2000]),
        ("README.md".into(), b"# a LoRA".to_vec()),
        ("training_args.bin".into(), vec![9; 50]),
    ]
    .into();
    let lora = FakeRepo { commit: commit("lora"), files: adapter, ..FakeRepo::default() };
    let (hub, base) = hub(0, |s| drop(s.repos.insert("org/lora".into(), lora.clone())));
    let e = env(&cache, Some(&hub.url), false);
    let got = sft_hub::resolve_with("org/lora", None, &e).unwrap();
    let lora_dir = cache.join("models--org--lora/snapshots").join(&lora.commit);
    assert_eq!(got.adapter.as_deref(), Some(lora_dir.as_path()));
    assert_eq!(got.base.dir, cache.join("models--org--name/snapshots").join(&base.commit));
    assert_eq!(got.tokenizer_dir, got.base.dir, "an adapter without a tokenizer uses its base's");
    let mut names: Vec<String> = std::fs::read_dir(&lora_dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["adapter_config.json", "adapter_model.safetensors"]);
    assert!(!hub.log().iter().any(|l| l.contains("README") || l.contains("training_args")), "{:?}", hub.log());
    let offline = sft_hub::HubEnv { offline: true, ..e.clone() };
    assert_eq!(sft_hub::resolve_with("org/lora", None, &offline).unwrap(), got);
    let explicit = sft_hub::resolve_with("org/name", Some("org/lora"), &offline).unwrap();
    assert_eq!((explicit.base, explicit.adapter), (got.base.clone(), got.adapter.clone()));
}

#[test]
fn an_adapter_repository_without_safetensors_weights_says_so() {
    let files: BTreeMap<String, Vec<u8>> =
        [("adapter_config.json".to_string(), br#"{"r": 4}"#.to_vec()), ("adapter_model.bin".into(), vec![1; 10])].into();
    let (hub, _) = hub(0, |s| drop(s.repos.insert("org/binlora".into(), FakeRepo { commit: commit("b"), files, ..FakeRepo::default() })));
    let text = locate_with("org/binlora", &env(&scratch("download-adapter-bin"), Some(&hub.url), false)).unwrap_err().to_string();
    assert!(text.contains("org/binlora@main: the repository has no adapter_model.safetensors (sft reads safetensors adapters"), "{text}");
}
