//! The hub settings, read from the environment variables huggingface_hub reads and resolved the
//! way its `constants.py` resolves them, so that `sft` and transformers share one cache, one
//! endpoint, one token and one offline switch. Only [`HubEnv::from_env`] reads the process
//! environment; everything else takes a [`HubEnv`], so tests build one from a table.

use std::path::{Path, PathBuf};

/// The hub endpoint when `HF_ENDPOINT` is not set.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Where models are cached and fetched from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubEnv {
    /// The hub cache (`models--org--name/…` folders): `HF_HUB_CACHE`, else the legacy
    /// `HUGGINGFACE_HUB_CACHE`, else `HF_HOME/hub`, where `HF_HOME` defaults to
    /// `$XDG_CACHE_HOME/huggingface`, else `~/.cache/huggingface`.
    pub cache: PathBuf,
    /// `HF_ENDPOINT` without a trailing `/`, else [`DEFAULT_ENDPOINT`].
    pub endpoint: String,
    /// `HF_TOKEN` (or the legacy `HUGGING_FACE_HUB_TOKEN`), else the token file
    /// (`HF_TOKEN_PATH`, else `HF_HOME/token`) that `hf auth login` writes.
    pub token: Option<String>,
    /// `HF_HUB_OFFLINE` (or `TRANSFORMERS_OFFLINE`) is 1/ON/YES/TRUE: the cache only.
    pub offline: bool,
    /// Draw a progress bar while downloading (on a terminal only).
    pub progress: bool,
}

impl HubEnv {
    /// The settings of this process's environment.
    pub fn from_env() -> Self {
        Self::from_vars(|key| std::env::var(key).ok())
    }

    /// The settings `var` (an environment lookup) gives.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Self {
        // os.getenv(...) or a default: a variable set to "" counts as set, as in Python.
        let home = var("HOME").or_else(|| var("USERPROFILE")).map(PathBuf::from).unwrap_or_default();
        let expand = |value: String| expand_user(&value, &home);
        let hf_home = match var("HF_HOME") {
            Some(v) => expand(v),
            None => var("XDG_CACHE_HOME").map(PathBuf::from).unwrap_or_else(|| home.join(".cache")).join("huggingface"),
        };
        let cache = var("HF_HUB_CACHE").or_else(|| var("HUGGINGFACE_HUB_CACHE")).map(expand).unwrap_or_else(|| hf_home.join("hub"));
        let endpoint = var("HF_ENDPOINT").unwrap_or_else(|| DEFAULT_ENDPOINT.into()).trim_end_matches('/').to_string();
        let token_path = var("HF_TOKEN_PATH").map(expand).unwrap_or_else(|| hf_home.join("token"));
        let token = clean_token(var("HF_TOKEN").filter(|t| !t.is_empty()).or_else(|| var("HUGGING_FACE_HUB_TOKEN")))
            .or_else(|| clean_token(std::fs::read_to_string(token_path).ok()));
        // `os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")`.
        let offline = var("HF_HUB_OFFLINE").filter(|v| !v.is_empty()).or_else(|| var("TRANSFORMERS_OFFLINE"));
        let offline = offline.is_some_and(|v| matches!(v.to_ascii_uppercase().as_str(), "1" | "ON" | "YES" | "TRUE"));
        let cache = std::path::absolute(&cache).unwrap_or(cache);
        Self { cache, endpoint, token, offline, progress: true }
    }
}

/// `~` and `~/…` as Python's `os.path.expanduser` expands them.
fn expand_user(value: &str, home: &Path) -> PathBuf {
    match value.strip_prefix('~') {
        Some("") => home.to_path_buf(),
        Some(rest) if rest.starts_with('/') => home.join(&rest[1..]),
        _ => PathBuf::from(value),
    }
}

/// A token with surrounding whitespace removed; an empty one is none.
fn clean_token(token: Option<String>) -> Option<String> {
    token.map(|t| t.trim().to_string()).filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> HubEnv {
        let vars: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        HubEnv::from_vars(|k| vars.get(k).cloned())
    }

    #[test]
    fn the_cache_is_where_huggingface_hub_puts_it() {
        let home = [("HOME", "/home/u")];
        assert_eq!(env(&home).cache, Path::new("/home/u/.cache/huggingface/hub"));
        assert_eq!(env(&[home[0], ("XDG_CACHE_HOME", "/xdg")]).cache, Path::new("/xdg/huggingface/hub"));
        assert_eq!(env(&[home[0], ("HF_HOME", "~/hf")]).cache, Path::new("/home/u/hf/hub"));
        assert_eq!(env(&[home[0], ("HF_HOME", "/hf"), ("HUGGINGFACE_HUB_CACHE", "/legacy")]).cache, Path::new("/legacy"));
        let both = [home[0], ("HF_HOME", "/hf"), ("HUGGINGFACE_HUB_CACHE", "/legacy"), ("HF_HUB_CACHE", "/c")];
        assert_eq!(env(&both).cache, Path::new("/c"));
    }

    #[test]
    fn endpoint_token_and_offline_follow_huggingface_hub() {
        let e = env(&[("HOME", "/nonexistent-home")]);
        assert_eq!((e.endpoint.as_str(), e.token, e.offline), (DEFAULT_ENDPOINT, None, false));
        let e = env(&[("HF_ENDPOINT", "http://127.0.0.1:9/"), ("HF_TOKEN", " hf_x \n"), ("HUGGING_FACE_HUB_TOKEN", "old")]);
        assert_eq!((e.endpoint.as_str(), e.token.as_deref()), ("http://127.0.0.1:9", Some("hf_x")));
        assert_eq!(env(&[("HUGGING_FACE_HUB_TOKEN", "old")]).token.as_deref(), Some("old"));
        for (value, offline) in [("1", true), ("yes", true), ("ON", true), ("true", true), ("0", false), ("no", false)] {
            assert_eq!(env(&[("HF_HUB_OFFLINE", value)]).offline, offline, "{value}");
        }
        assert!(env(&[("TRANSFORMERS_OFFLINE", "1")]).offline);
        assert!(!env(&[("HF_HUB_OFFLINE", "0"), ("TRANSFORMERS_OFFLINE", "1")]).offline);
    }

    #[test]
    fn the_token_file_is_read_when_no_variable_names_one() {
        let dir = std::env::temp_dir().join(format!("sft-hub-env-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("token"), "hf_file\n").unwrap();
        let home = dir.display().to_string();
        assert_eq!(env(&[("HF_HOME", &home)]).token.as_deref(), Some("hf_file"));
        assert_eq!(env(&[("HF_HOME", &home), ("HF_TOKEN", "hf_var")]).token.as_deref(), Some("hf_var"));
        std::fs::write(dir.join("other"), "hf_other").unwrap();
        let other = dir.join("other").display().to_string();
        assert_eq!(env(&[("HF_HOME", &home), ("HF_TOKEN_PATH", &other)]).token.as_deref(), Some("hf_other"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
