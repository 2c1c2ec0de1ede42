//! The Hugging Face hub cache, read and written exactly as huggingface_hub lays it out, so
//! that `sft` and transformers share one cache:
//!
//! ```text
//! <cache>/models--org--name/
//!     blobs/<etag>                      file contents, named by git or LFS hash
//!     snapshots/<commit>/<file>         relative symlinks into blobs/
//!     refs/<branch or tag>              the commit the revision pointed at when fetched
//! ```
//!
//! A revision is a full commit hash (its snapshot directly) or a name looked up in `refs/`.
//! A snapshot is used only when it holds every file a model needs ([`crate::files`]).

use std::path::{Path, PathBuf};

use crate::files::{self, WeightsLayout, WEIGHTS_INDEX};
use crate::HubError;

/// The branch huggingface_hub uses when no revision is given.
pub const DEFAULT_REVISION: &str = "main";

/// One repository's folder in the cache.
#[derive(Debug, Clone)]
pub struct CacheRepo {
    /// `<cache>/models--org--name`.
    pub dir: PathBuf,
}

/// A snapshot of a repository: the commit and its folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The full commit hash.
    pub commit: String,
    /// `snapshots/<commit>`.
    pub dir: PathBuf,
}

/// Why a snapshot cannot be used: the file it lacks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    /// The file, relative to the snapshot.
    pub file: String,
    /// Why it is needed, when not obvious (a shard: the index that names it).
    pub why: String,
}

/// Whether `revision` is a full commit hash (40 lowercase hex digits, as the hub writes them).
pub fn is_commit(revision: &str) -> bool {
    revision.len() == 40 && revision.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Checks that a revision can name a file under `refs/` (branch names may hold `/`, never an
/// empty, `.` or `..` part).
pub fn check_revision(name: &str, revision: &str) -> Result<(), HubError> {
    if revision.split('/').any(|part| part.is_empty() || part == "." || part == "..") {
        return Err(HubError::BadName { name: name.into(), message: format!("revision {revision:?} is not a branch, tag or commit") });
    }
    Ok(())
}

impl CacheRepo {
    /// The folder of model repository `id` (`org/name`) in `cache`.
    pub fn new(cache: &Path, id: &str) -> Self {
        Self { dir: cache.join(format!("models--{}", id.replace('/', "--"))) }
    }

    /// `blobs/`.
    pub fn blobs(&self) -> PathBuf {
        self.dir.join("blobs")
    }

    /// `snapshots/<commit>`.
    pub fn snapshot_dir(&self, commit: &str) -> PathBuf {
        self.dir.join("snapshots").join(commit)
    }

    /// The commit `revision` stands for in the cache: itself when it is a full hash, else the
    /// content of `refs/<revision>`; `None` when that ref was never written.
    pub fn commit(&self, revision: &str) -> Result<Option<String>, HubError> {
        if is_commit(revision) {
            return Ok(Some(revision.to_string()));
        }
        let path = self.dir.join("refs").join(revision);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some(text.trim().to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(HubError::Cache { path, source: e }),
        }
    }

    /// Records that `revision` points at `commit` (`refs/<revision>`, which huggingface_hub
    /// writes for any revision that is not itself the commit hash). Written to a temporary file
    /// and renamed, so a reader never sees half a hash.
    pub fn write_ref(&self, revision: &str, commit: &str) -> Result<(), HubError> {
        if revision == commit {
            return Ok(());
        }
        let path = self.dir.join("refs").join(revision);
        let io = |source| HubError::Cache { path: path.clone(), source };
        std::fs::create_dir_all(path.parent().unwrap_or(&self.dir)).map_err(io)?;
        let tmp = path.with_file_name(format!(".{}.sft-tmp", path.file_name().and_then(|f| f.to_str()).unwrap_or("ref")));
        std::fs::write(&tmp, commit).map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)
    }

    /// What the cache holds for `revision`.
    pub fn find(&self, revision: &str) -> Result<Cached, HubError> {
        let Some(commit) = self.commit(revision)? else { return Ok(Cached::Absent) };
        let dir = self.snapshot_dir(&commit);
        if !dir.is_dir() {
            return Ok(Cached::Absent);
        }
        let snapshot = Snapshot { commit, dir };
        Ok(match missing(&snapshot.dir)? {
            None => Cached::Complete(snapshot),
            Some(m) => Cached::Incomplete(snapshot, m),
        })
    }
}

/// What the cache holds for one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cached {
    /// No ref, or no snapshot folder for its commit.
    Absent,
    /// A snapshot lacking a file a model needs.
    Incomplete(Snapshot, Missing),
    /// A snapshot with every file a model needs.
    Complete(Snapshot),
}

/// The first file a model (or an adapter, [`files::repo_files`]) needs that `dir` does not
/// hold (a symlink whose blob is gone counts as missing), or `None` when it is complete.
pub fn missing(dir: &Path) -> Result<Option<Missing>, HubError> {
    let has = |f: &str| dir.join(f).is_file();
    if let Err(file) = files::repo_files(has) {
        let why = if file == files::WEIGHTS { format!(" (nor {WEIGHTS_INDEX})") } else { String::new() };
        return Ok(Some(Missing { file: file.into(), why }));
    }
    if WeightsLayout::of(has) == Some(WeightsLayout::Sharded) {
        if let Some(shard) = files::shards(&dir.join(WEIGHTS_INDEX))?.into_iter().find(|s| !has(s)) {
            return Ok(Some(Missing { file: shard, why: format!(" (a shard {WEIGHTS_INDEX} names)") }));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revisions_are_commits_or_names_under_refs() {
        assert!(is_commit(&"a".repeat(40)));
        assert!(!is_commit(&"A".repeat(40)) && !is_commit(&"a".repeat(39)) && !is_commit("main"));
        for ok in ["main", "v1.0", "refs/pr/1"] {
            assert!(check_revision("x", ok).is_ok(), "{ok}");
        }
        for bad in ["../../etc", "a//b", "./x", "x/"] {
            assert!(check_revision("x", bad).unwrap_err().to_string().contains(bad), "{bad}");
        }
        assert_eq!(CacheRepo::new(Path::new("/c"), "org/name").dir, Path::new("/c/models--org--name"));
    }
}
