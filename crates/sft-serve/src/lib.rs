//! sft-serve: an OpenAI-compatible HTTP server over [`sft_infer`], a thin shell over an engine.
//! The router ([`routes`], axum) parses and validates requests ([`api`]), renders prompts with
//! the model's own chat template and stop tokens, and shapes responses; the scheduler
//! ([`engine`]) runs on a thread of its own that owns the models and decodes every running
//! request a token per tick. The `model` field picks the base or one of several LoRA adapters
//! loaded on it, which share the base's weights in memory ([`sft_model::model::Model::with_adapter`]).
//!
//! ```no_run
//! # async fn run() -> Result<(), sft_serve::ServeError> {
//! let opts = sft_serve::ServeOptions::new(sft_infer::LoadOptions::new("outputs/checkpoint-100".into()));
//! let app = sft_serve::App::load(opts)?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8000").await.map_err(|source| sft_serve::ServeError::Io {
//!     context: "binding".into(),
//!     source,
//! })?;
//! app.serve(listener, std::future::pending()).await
//! # }
//! ```
#![deny(missing_docs)]

pub mod api;
pub mod engine;
mod error;
pub mod routes;

use std::future::Future;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sft_data::template::Renderer;
use sft_data::tokens::TextTokenizer;
use sft_infer::{Inference, LoadOptions};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

pub use error::{ApiError, ServeError};

use engine::{EngineSettings, Load, Msg};

/// What to serve and how.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The base model (or checkpoint), its precision and template.
    pub load: LoadOptions,
    /// The name requests give the base (`None`: the model as given in `load`).
    pub name: Option<String>,
    /// Named adapters on the base: (name, directory or hub id).
    pub adapters: Vec<(String, String)>,
    /// Requests decoding at once.
    pub max_concurrency: usize,
    /// Requests waiting for a slot beyond those; more get 429.
    pub queue: usize,
    /// Longest a request may take.
    pub timeout: Duration,
}

impl ServeOptions {
    /// `load` alone: 16 running, 64 queued, 600 s per request.
    pub fn new(load: LoadOptions) -> Self {
        Self { load, name: None, adapters: vec![], max_concurrency: 16, queue: 64, timeout: Duration::from_secs(600) }
    }
}

/// What the handlers share.
pub struct State {
    /// Served model names: the base first, then the adapters (the engine's model indices).
    pub names: Vec<String>,
    /// The tokenizer (one for all: adapters share the base's).
    pub tokenizer: TextTokenizer,
    /// The chat template.
    pub renderer: Renderer,
    /// Most tokens a sequence may hold (prompt and answer).
    pub context: usize,
    /// Vocabulary size.
    pub vocab: usize,
    /// Requests running + queued at most.
    pub capacity: usize,
    /// Per-request timeout.
    pub timeout: Duration,
    /// When the server started (Unix seconds; OpenAI's `created`).
    pub created: u64,
    /// Engine counters.
    pub load: Arc<Load>,
    permits: Arc<Semaphore>,
    inbox: Mutex<Sender<Msg>>,
}

/// A loaded server: the models on their engine thread, and the router.
pub struct App {
    state: Arc<State>,
    engine: std::thread::JoinHandle<()>,
}

impl App {
    /// Loads the base and every adapter (as views sharing the base's weights) and starts the
    /// engine thread.
    pub fn load(opts: ServeOptions) -> Result<Self, ServeError> {
        let base =
            Inference::load(&opts.load).map_err(|source| ServeError::Load { name: opts.load.model.clone(), source: Box::new(source) })?;
        let stop_ids = base.stop_ids().to_vec();
        let Inference { model, tokenizer, renderer, .. } = base;
        let mut names = vec![opts.name.clone().unwrap_or_else(|| opts.load.model.clone())];
        let mut models = vec![];
        for (name, dir) in &opts.adapters {
            if names.contains(name) {
                return Err(ServeError::Adapter(format!("{name}={dir}: the name {name:?} is taken")));
            }
            let located = sft_hub::locate(dir).map_err(|e| ServeError::Load { name: name.clone(), source: Box::new(e.into()) })?;
            let view = model
                .with_adapter(&located.dir)
                .map_err(|e| ServeError::Load { name: format!("{name}={dir}"), source: Box::new(e.into()) })?;
            names.push(name.clone());
            models.push(view);
        }
        models.insert(0, model);
        let config = models[0].config();
        let (context, vocab) = (config.max_position_embeddings.unwrap_or(usize::MAX), config.vocab_size);
        let load = Arc::new(Load::default());
        let (tx, rx) = std::sync::mpsc::channel();
        let settings = EngineSettings { models, stop_ids, max_running: opts.max_concurrency.max(1), load: load.clone() };
        let engine = std::thread::Builder::new()
            .name("sft-engine".into())
            .spawn(move || engine::run(settings, rx))
            .map_err(|source| ServeError::Io { context: "starting the engine thread".into(), source })?;
        let capacity = opts.max_concurrency.max(1) + opts.queue;
        let created = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let state = State {
            names,
            tokenizer,
            renderer,
            context,
            vocab,
            capacity,
            timeout: opts.timeout,
            created,
            load,
            permits: Arc::new(Semaphore::new(capacity)),
            inbox: Mutex::new(tx),
        };
        Ok(Self { state: Arc::new(state), engine })
    }

    /// The router, for serving or testing.
    pub fn router(&self) -> axum::Router {
        routes::router(self.state.clone())
    }

    /// Serves on `listener` until `shutdown` completes, then lets running requests finish
    /// (streams included), stops the engine and returns.
    pub async fn serve(self, listener: TcpListener, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), ServeError> {
        let result = axum::serve(listener, self.router()).with_graceful_shutdown(shutdown).await;
        if let Ok(inbox) = self.state.inbox.lock() {
            let _ = inbox.send(Msg::Drain);
        }
        let engine = self.engine;
        let _ = tokio::task::spawn_blocking(move || engine.join()).await;
        result.map_err(|source| ServeError::Io { context: "serving".into(), source })
    }
}
