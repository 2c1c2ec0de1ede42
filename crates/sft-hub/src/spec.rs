//! How a model is named: a local directory, a GGUF file or a Hugging Face hub id. A name that
//! is an existing path is that path; otherwise `org/name` (optionally `@revision`) with hub-legal
//! characters is a hub id; anything else is an error saying which of the three it is not.

use std::path::PathBuf;

use crate::HubError;

/// A parsed model name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSpec {
    /// A local directory.
    Dir(PathBuf),
    /// A GGUF file.
    Gguf(PathBuf),
    /// A hub repository, at a branch, tag or commit (`main` when none is given).
    Hub {
        /// `org/name`.
        id: String,
        /// The revision after `@`.
        revision: Option<String>,
    },
}

impl ModelSpec {
    /// Parses `name`.
    pub fn parse(name: &str) -> Result<Self, HubError> {
        let bad = |message: &str| HubError::BadName { name: name.into(), message: message.into() };
        let path = PathBuf::from(name);
        let is_gguf = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
        if path.is_dir() {
            return Ok(ModelSpec::Dir(path));
        }
        if path.is_file() {
            return match is_gguf {
                true => Ok(ModelSpec::Gguf(path)),
                false => Err(bad("is a file; expected a model directory, a .gguf file or a hub id like Qwen/Qwen2.5-0.5B-Instruct")),
            };
        }
        if is_gguf {
            return Err(bad("no such GGUF file"));
        }
        let (id, revision) = match name.split_once('@') {
            Some((id, rev)) if !rev.is_empty() => (id, Some(rev.to_string())),
            Some(_) => return Err(bad("empty revision after @")),
            None => (name, None),
        };
        if is_hub_id(id) {
            return Ok(ModelSpec::Hub { id: id.to_string(), revision });
        }
        Err(bad("no such directory, and not a hub id (org/name)"))
    }
}

/// `org/name` with the characters the hub allows in both parts (letters, digits, `-`, `_`,
/// `.`), neither part empty or starting with `.`.
fn is_hub_id(id: &str) -> bool {
    let ok = |part: &str| {
        !part.is_empty()
            && !part.starts_with('.')
            && part.len() <= 96
            && part.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    matches!(id.split_once('/'), Some((org, repo)) if ok(org) && ok(repo))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_directories_gguf_files_or_hub_ids() {
        let dir = std::env::temp_dir().join(format!("sft-spec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let gguf = dir.join("m.Q4_1.gguf");
        std::fs::write(&gguf, b"GGUF").unwrap();
        let other = dir.join("notes.txt");
        std::fs::write(&other, b"").unwrap();
        let name = |p: &std::path::Path| p.display().to_string();
        assert_eq!(ModelSpec::parse(&name(&dir)).unwrap(), ModelSpec::Dir(dir.clone()));
        assert_eq!(ModelSpec::parse(&name(&gguf)).unwrap(), ModelSpec::Gguf(gguf.clone()));
        assert!(ModelSpec::parse(&name(&other)).unwrap_err().to_string().contains("is a file"));
        assert!(ModelSpec::parse("missing.gguf").unwrap_err().to_string().contains("no such GGUF file"));
        let hub = |id: &str, rev: Option<&str>| ModelSpec::Hub { id: id.into(), revision: rev.map(str::to_string) };
        assert_eq!(ModelSpec::parse("Qwen/Qwen2.5-0.5B-Instruct").unwrap(), hub("Qwen/Qwen2.5-0.5B-Instruct", None));
        assert_eq!(ModelSpec::parse("org/name@v1.0").unwrap(), hub("org/name", Some("v1.0")));
        for bad in ["org/", "/name", "a/b/c", "org/name@", "just-a-name", "org/na me", "../x"] {
            assert!(ModelSpec::parse(bad).is_err(), "{bad}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
