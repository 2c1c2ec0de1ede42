//! Fetching a model from the hub into the cache, with the `hf-hub` crate's blocking client.
//!
//! One listing (`GET {endpoint}/api/models/{id}/revision/{rev}?blobs=true`) gives the commit the
//! revision points at, the repository's files and their sizes and LFS hashes. Only the files a
//! model (or a PEFT adapter) needs ([`crate::files`]) are fetched, each at that exact commit (a branch moving
//! mid-download cannot mix two versions), by `hf-hub`: into `blobs/<etag>.part`, resumed from
//! where it stopped with a `Range` request, renamed to `blobs/<etag>` once the transfer ends,
//! then symlinked from `snapshots/<commit>/`; `refs/<rev>` is written last. That is
//! huggingface_hub's layout, so transformers finds these files too.
//!
//! What is written here rather than taken from `hf-hub` 0.4, and why:
//! - `hf-hub` renames the `.part` file into place without checking it: a server that ignores
//!   `Range` on a resume, or a body cut short without a `Content-Length`, would leave a wrong
//!   blob. Every fetched file is checked against the listing (size; SHA-256 for LFS files) and
//!   removed, blob and link, when it differs, so nothing half-downloaded is ever used. A `.part`
//!   file already as long as the file is removed first (`hf-hub` would ask for an empty range).
//! - `hf-hub`'s errors name neither the repository nor the file, and its listing type drops the
//!   sizes and hashes: the listing is parsed here, and HTTP statuses become [`HubError::Http`]
//!   with the id, revision, file, URL and the hub's `X-Error-Message`.
//! - `hf-hub` has no offline mode and reads no `HF_HUB_CACHE`/`HF_TOKEN`: [`HubEnv`] decides,
//!   and the caller only comes here when online and the cache lacks something.
//!
//! Redirects are `hf-hub`'s: relative ones (a renamed repository) are followed when reading a
//! file's metadata, absolute ones (the CDN) by ureq, which sends the token to the same host only.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use hf_hub::api::sync::{Api, ApiBuilder, ApiError, ApiRepo};
use hf_hub::{Cache, Repo, RepoType};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::cache::{is_commit, CacheRepo, Snapshot};
use crate::files::{self, WeightsLayout, WEIGHTS_INDEX};
use crate::{HubEnv, HubError};

/// The listing `GET /api/models/{id}/revision/{rev}?blobs=true` answers (the keys read here).
#[derive(Debug, Deserialize)]
struct HfRepoInfo {
    sha: String,
    siblings: Vec<HfSibling>,
}

/// One file of the listing.
#[derive(Debug, Deserialize)]
struct HfSibling {
    rfilename: String,
    /// The git blob hash: the blob's name for a file not in LFS.
    #[serde(rename = "blobId")]
    blob_id: Option<String>,
    size: Option<u64>,
    lfs: Option<HfLfs>,
}

/// An LFS file's pointer: its SHA-256 names its blob.
#[derive(Debug, Deserialize)]
struct HfLfs {
    sha256: String,
    size: u64,
}

/// What the requests of one download are about, for errors.
struct Target<'a> {
    env: &'a HubEnv,
    id: &'a str,
    revision: &'a str,
}

/// The listing's name for error messages about it.
const LISTING: &str = "the file list";

/// Downloads what a model (or an adapter) needs of `id` at `revision` into the cache; the
/// snapshot it fills.
pub fn fetch(env: &HubEnv, id: &str, revision: &str) -> Result<Snapshot, HubError> {
    let target = Target { env, id, revision };
    let api = ApiBuilder::from_cache(Cache::new(env.cache.clone()))
        .with_endpoint(env.endpoint.clone())
        .with_token(env.token.clone())
        .with_progress(env.progress)
        .with_user_agent("sft", env!("CARGO_PKG_VERSION"))
        .build()
        .map_err(|e| target.api_error(LISTING, e))?;
    let info = target.listing(&api)?;
    let commit = info.sha.clone();
    let listed: HashMap<&str, &HfSibling> = info.siblings.iter().map(|s| (s.rfilename.as_str(), s)).collect();
    let cache = CacheRepo::new(&env.cache, id);
    let dir = cache.snapshot_dir(&commit);
    let repo = api.repo(Repo::with_revision(id.into(), RepoType::Model, commit.clone()));
    let get = |file: &str| match listed.get(file) {
        Some(sibling) => target.file(&repo, &cache, &dir, sibling),
        None => Err(target.not_in_repo(file, format!(" ({WEIGHTS_INDEX} names it)"))),
    };
    let first = files::repo_files(|f| listed.contains_key(f)).map_err(|file| {
        let why = match file {
            files::WEIGHTS => format!(" (nor {WEIGHTS_INDEX}); sft reads safetensors weights"),
            files::ADAPTER_WEIGHTS => " (sft reads safetensors adapters, not adapter_model.bin)".into(),
            _ => String::new(),
        };
        target.not_in_repo(file, why)
    })?;
    for file in &first {
        get(file)?;
    }
    if WeightsLayout::of(|f| first.contains(&f)) == Some(WeightsLayout::Sharded) {
        for shard in files::shards(&dir.join(WEIGHTS_INDEX))? {
            get(&shard)?;
        }
    }
    // hf-hub writes `refs/<commit>` too, which huggingface_hub never does (it would list the
    // commit as a branch); only the revision asked for gets a ref.
    let stray = cache.dir.join("refs").join(&commit);
    if stray.is_file() {
        std::fs::remove_file(&stray).map_err(|source| HubError::Cache { path: stray.clone(), source })?;
    }
    cache.write_ref(revision, &commit)?;
    Ok(Snapshot { commit, dir })
}

impl Target<'_> {
    /// The revision's commit and files.
    fn listing(&self, api: &Api) -> Result<HfRepoInfo, HubError> {
        let repo = api.repo(Repo::with_revision(self.id.into(), RepoType::Model, self.revision.into()));
        let response = repo.info_request().query("blobs", "true").call().map_err(|e| self.request_error(LISTING, e))?;
        let url = response.get_url().to_string();
        let bad = |message: String| self.download_error(LISTING, format!("{url}: {message}"));
        let text = response.into_string().map_err(|e| bad(e.to_string()))?;
        let info: HfRepoInfo = serde_json::from_str(&text).map_err(|e| bad(format!("not a hub listing: {e}")))?;
        if !is_commit(&info.sha) {
            return Err(bad(format!("sha {:?} is not a commit hash", info.sha)));
        }
        Ok(info)
    }

    /// Fetches one file into the snapshot unless it is there; checks what was fetched.
    fn file(&self, repo: &ApiRepo, cache: &CacheRepo, dir: &Path, sibling: &HfSibling) -> Result<(), HubError> {
        let name = sibling.rfilename.as_str();
        if dir.join(name).is_file() {
            return Ok(());
        }
        let blob = sibling.lfs.as_ref().map(|l| l.sha256.as_str()).or(sibling.blob_id.as_deref());
        if let (Some(blob), Some(size)) = (blob, expected_size(sibling)) {
            let part = cache.blobs().join(format!("{blob}.part"));
            if std::fs::metadata(&part).is_ok_and(|m| m.len() >= size) {
                std::fs::remove_file(&part).map_err(|source| HubError::Cache { path: part.clone(), source })?;
            }
        }
        let link = repo.download(name).map_err(|e| self.api_error(name, e))?;
        if let Err(why) = check(&link, sibling) {
            let blob = std::fs::canonicalize(&link).unwrap_or_else(|_| link.clone());
            for path in [blob, link] {
                let _ = std::fs::remove_file(&path);
            }
            return Err(
                self.download_error(name, format!("the fetched file {why}; removed it from the cache (run again to fetch it anew)"))
            );
        }
        Ok(())
    }

    fn not_in_repo(&self, file: &str, why: String) -> HubError {
        HubError::NotInRepo { id: self.id.into(), revision: self.revision.into(), file: file.into(), why }
    }

    fn download_error(&self, file: &str, message: String) -> HubError {
        HubError::Download { id: self.id.into(), revision: self.revision.into(), file: file.into(), message }
    }

    fn api_error(&self, file: &str, e: ApiError) -> HubError {
        let message = match e {
            ApiError::RequestError(e) => return self.request_error(file, *e),
            ApiError::IoError(e) => format!(
                "download interrupted ({e}); the part fetched stays in {} as *.part and the next run resumes it",
                CacheRepo::new(&self.env.cache, self.id).blobs().display()
            ),
            ApiError::MissingHeader(h) => format!("the hub's answer has no {h} header; is HF_ENDPOINT ({}) a hub?", self.env.endpoint),
            ApiError::LockAcquisition(p) => format!("another process is downloading it ({} is locked)", p.display()),
            other => other.to_string(),
        };
        self.download_error(file, message)
    }

    fn request_error(&self, file: &str, e: ureq::Error) -> HubError {
        match e {
            ureq::Error::Status(status, response) => {
                let url = response.get_url().to_string();
                let told = response.header("x-error-message").map(str::to_string);
                let told = told.or_else(|| response.into_string().ok().filter(|b| !b.trim().is_empty()).map(|b| b.trim().to_string()));
                let message = match told {
                    Some(told) => format!("{}; the hub says: {told}", self.hint(status, file)),
                    None => self.hint(status, file),
                };
                HubError::Http { id: self.id.into(), revision: self.revision.into(), file: file.into(), status, url, message }
            }
            ureq::Error::Transport(t) => self.download_error(file, format!("cannot reach the hub at {}: {t}", self.env.endpoint)),
        }
    }

    /// What a status most likely means here.
    fn hint(&self, status: u16, file: &str) -> String {
        let token = if self.env.token.is_some() { "the token (HF_TOKEN) has no access to it" } else { "set HF_TOKEN" };
        match status {
            401 | 403 => format!("not authorized: a gated or private repository ({token}; accept its terms on the hub)"),
            404 if file == LISTING => format!("no such repository or revision (a private one needs a token: {token})"),
            404 => "no such file at this revision".into(),
            _ => "the request failed".into(),
        }
    }
}

/// The size the listing gives a file.
fn expected_size(sibling: &HfSibling) -> Option<u64> {
    sibling.lfs.as_ref().map(|l| l.size).or(sibling.size)
}

/// Checks a fetched file against the listing: its size, and its SHA-256 for an LFS file.
fn check(path: &Path, sibling: &HfSibling) -> Result<(), String> {
    let len = std::fs::metadata(path).map_err(|e| format!("cannot be read: {e}"))?.len();
    if let Some(size) = expected_size(sibling) {
        if len != size {
            return Err(format!("is {len} bytes; the hub lists {size}"));
        }
    }
    if let Some(lfs) = &sibling.lfs {
        let got = sha256(path).map_err(|e| format!("cannot be read: {e}"))?;
        if !got.eq_ignore_ascii_case(&lfs.sha256) {
            return Err(format!("has SHA-256 {got}; the hub lists {}", lfs.sha256));
        }
    }
    Ok(())
}

fn sha256(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}
