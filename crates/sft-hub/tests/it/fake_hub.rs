//! A stand-in for the Hugging Face hub on 127.0.0.1, answering the requests huggingface_hub and
//! `hf-hub` make, in the hub's shape:
//!
//! - `GET /api/models/{id}/revision/{rev}?blobs=true`: `{"sha", "siblings": [{"rfilename",
//!   "blobId", "size", "lfs": {"sha256", "size"}}]}`;
//! - `GET /{id}/resolve/{rev}/{file}`: a git file directly (`ETag` = its blob id), an LFS file
//!   (`*.safetensors`) as a 302 to `/cdn/{sha256}` with `X-Linked-Etag`; both with
//!   `X-Repo-Commit`, both honouring `Range` (206 + `Content-Range`; 416 past the end);
//! - a renamed repository answers with a relative 307 to its new name; a gated or private one
//!   401s without `Authorization: Bearer {token}`; unknown repositories, revisions and files
//!   404 with `X-Error-Code`/`X-Error-Message`.
//!
//! Faults for the tests: cut a file's body short once, serve wrong bytes for a file, 404 a file
//! the listing shows. Every request is logged (`METHOD path range`). One request per
//! connection (`Connection: close`), one thread per connection.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

/// One repository.
#[derive(Clone, Default)]
pub struct FakeRepo {
    /// The commit `main` points at.
    pub commit: String,
    /// File name → content.
    pub files: BTreeMap<String, Vec<u8>>,
    /// Files need a token (the listing does not).
    pub gated: bool,
    /// The listing and the files need a token.
    pub private: bool,
}

/// What the server holds and how it misbehaves.
#[derive(Default)]
pub struct State {
    /// Repository id → repository.
    pub repos: HashMap<String, FakeRepo>,
    /// Old id → new id.
    pub renamed: HashMap<String, String>,
    /// The token gated and private repositories accept.
    pub token: Option<String>,
    /// Files whose next body is cut in half (the connection closes early).
    pub truncate_once: HashSet<String>,
    /// Files served with every byte flipped.
    pub corrupt: HashSet<String>,
    /// Files the listing shows but `resolve` 404s.
    pub gone: HashSet<String>,
    /// `METHOD path range` of every request, in order; `auth` appended when one was sent.
    pub log: Vec<String>,
}

/// A running fake hub.
pub struct FakeHub {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// Shared with the server threads.
    pub state: Arc<Mutex<State>>,
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// A git blob id stand-in: 40 hex digits derived from the content.
fn blob_id(bytes: &[u8]) -> String {
    sha256_hex(bytes)[..40].to_string()
}

fn is_lfs(file: &str) -> bool {
    file.ends_with(".safetensors")
}

impl FakeHub {
    /// Starts a server holding `state`.
    pub fn start(state: State) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(state));
        let shared = state.clone();
        let base = url.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (state, base) = (shared.clone(), base.clone());
                std::thread::spawn(move || serve(stream, &state, &base));
            }
        });
        Self { url, state }
    }

    /// The requests seen so far.
    pub fn log(&self) -> Vec<String> {
        self.state.lock().unwrap().log.clone()
    }
}

struct Request {
    path: String,
    range: Option<String>,
    auth: Option<String>,
}

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Send only this many body bytes, then close.
    cut: Option<usize>,
}

impl Response {
    fn new(status: u16) -> Self {
        Self { status, headers: vec![], body: vec![], cut: None }
    }
    fn header(mut self, k: &str, v: impl Into<String>) -> Self {
        self.headers.push((k.into(), v.into()));
        self
    }
    fn error(status: u16, code: &str, message: &str) -> Self {
        let mut r = Self::new(status).header("X-Error-Code", code).header("X-Error-Message", message);
        r.body = format!("{{\"error\": {message:?}}}").into_bytes();
        r
    }
}

fn read_request(stream: &TcpStream) -> Option<Request> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let path = line.split_whitespace().nth(1)?.to_string();
    let (mut range, mut auth) = (None, None);
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).ok()?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        let (k, v) = header.split_once(':')?;
        match k.trim().to_ascii_lowercase().as_str() {
            "range" => range = Some(v.trim().to_string()),
            "authorization" => auth = Some(v.trim().to_string()),
            _ => {}
        }
    }
    Some(Request { path, range, auth })
}

fn serve(mut stream: TcpStream, state: &Mutex<State>, base: &str) {
    let Some(req) = read_request(&stream) else { return };
    let response = {
        let mut state = state.lock().unwrap();
        let entry = format!("GET {} {}{}", req.path, req.range.as_deref().unwrap_or("-"), if req.auth.is_some() { " auth" } else { "" });
        state.log.push(entry);
        route(&req, &mut state, base)
    };
    let mut head = format!("HTTP/1.1 {} X\r\nConnection: close\r\nContent-Length: {}\r\n", response.status, response.body.len());
    for (k, v) in &response.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let body = &response.body[..response.cut.unwrap_or(response.body.len())];
    let _ = stream.write_all(head.as_bytes()).and_then(|_| stream.write_all(body)).and_then(|_| stream.flush());
}

fn route(req: &Request, state: &mut State, base: &str) -> Response {
    let path = req.path.split('?').next().unwrap_or("").to_string();
    if let Some(sha) = path.strip_prefix("/cdn/") {
        let found = state.repos.values().flat_map(|r| r.files.iter()).find(|(_, c)| sha256_hex(c) == sha);
        let Some((name, content)) = found.map(|(n, c)| (n.clone(), c.clone())) else {
            return Response::error(404, "EntryNotFound", "no such object");
        };
        return body(req, state, &name, content, Response::new(200));
    }
    let (api, rest) = match path.strip_prefix("/api/models/") {
        Some(rest) => (true, rest.to_string()),
        None => (false, path.trim_start_matches('/').to_string()),
    };
    let parts: Vec<&str> = rest.splitn(5, '/').collect();
    if parts.len() < 4 {
        return Response::error(404, "RepoNotFound", "Repository not found");
    }
    let id = format!("{}/{}", parts[0], parts[1]);
    let (verb, revision) = (parts[2], parts[3].replace("%2F", "/"));
    if let Some(new) = state.renamed.get(&id) {
        let location = path.replacen(&id, new, 1);
        return Response::new(307).header("Location", location);
    }
    let Some(repo) = state.repos.get(&id).cloned() else {
        return Response::error(404, "RepoNotFound", "Repository not found");
    };
    let authorized = state.token.as_ref().is_some_and(|t| req.auth.as_deref() == Some(&format!("Bearer {t}")));
    let needs_token = repo.private || (!api && repo.gated);
    if needs_token && !authorized {
        return Response::error(
            401,
            "GatedRepo",
            &format!("Access to model {id} is restricted. You must have access to it and be authenticated to access it."),
        );
    }
    if revision != "main" && revision != repo.commit {
        return Response::error(404, "RevisionNotFound", &format!("Invalid rev id: {revision}"));
    }
    match (api, verb) {
        (true, "revision") => listing(&id, &repo),
        (false, "resolve") => {
            let file = parts.get(4).copied().unwrap_or("");
            match repo.files.get(file) {
                Some(content) if !state.gone.contains(file) => file_response(req, state, &repo, file, content.clone(), base),
                _ => Response::error(404, "EntryNotFound", &format!("{file} does not exist on \"{revision}\"")),
            }
        }
        _ => Response::error(404, "RepoNotFound", "Repository not found"),
    }
}

fn listing(id: &str, repo: &FakeRepo) -> Response {
    let siblings: Vec<_> = repo
        .files
        .iter()
        .map(|(name, c)| {
            let mut s = serde_json::json!({"rfilename": name, "blobId": blob_id(c), "size": c.len()});
            if is_lfs(name) {
                s["size"] = 134.into();
                s["lfs"] = serde_json::json!({"sha256": sha256_hex(c), "size": c.len(), "pointerSize": 134});
            }
            s
        })
        .collect();
    let mut r = Response::new(200).header("Content-Type", "application/json");
    r.body = serde_json::json!({"id": id, "sha": repo.commit, "siblings": siblings}).to_string().into_bytes();
    r
}

fn file_response(req: &Request, state: &mut State, repo: &FakeRepo, file: &str, content: Vec<u8>, base: &str) -> Response {
    let start = Response::new(200).header("X-Repo-Commit", repo.commit.clone());
    if is_lfs(file) {
        let sha = sha256_hex(&content);
        return Response { status: 302, ..start }
            .header("Location", format!("{base}/cdn/{sha}"))
            .header("X-Linked-Etag", format!("\"{sha}\""))
            .header("X-Linked-Size", content.len().to_string())
            .header("ETag", format!("\"{}\"", blob_id(b"pointer")));
    }
    let start = start.header("ETag", format!("\"{}\"", blob_id(&content)));
    body(req, state, file, content, start)
}

/// The body of `file`, whole or the range asked for, with the faults set for it.
fn body(req: &Request, state: &mut State, file: &str, mut content: Vec<u8>, mut r: Response) -> Response {
    if state.corrupt.contains(file) {
        content.iter_mut().for_each(|b| *b = !*b);
    }
    let total = content.len();
    if let Some(range) = req.range.as_deref().and_then(|r| r.strip_prefix("bytes=")) {
        let (a, b) = range.split_once('-').unwrap_or((range, ""));
        let a: usize = a.parse().unwrap_or(0);
        let b: usize = b.parse().map(|b: usize| b.min(total - 1)).unwrap_or(total.saturating_sub(1));
        if a >= total {
            return Response::error(416, "RangeNotSatisfiable", "range past the end");
        }
        r.status = 206;
        r = r.header("Content-Range", format!("bytes {a}-{b}/{total}"));
        content = content[a..=b].to_vec();
    }
    let probe = req.range.as_deref() == Some("bytes=0-0");
    if !probe && state.truncate_once.remove(file) {
        r.cut = Some(content.len() / 2);
    }
    r.body = content;
    r
}
