//! The scheduler: one thread owns the models and decodes every running request one token per
//! tick (continuous batching: a request joins at the next tick and leaves as soon as it ends,
//! each with its own KV cache). In a tick the requests of one model that are past their prompt
//! go through the model together, several sequences per pass, so each weight is read once
//! for all of them (see `sft_model::model::Model::decode_rows`); a new request's prompt is
//! fed on its own. HTTP handlers talk to it over channels and never run the model on the
//! async runtime.
//!
//! Admission is bounded: a request takes a permit (running + queued ≤ capacity) before it is
//! sent here, or gets 429. A request whose receiver is gone (the client disconnected, or the
//! handler saw a stop string) is dropped at the next tick, freeing its slot; one past its
//! deadline ends with a timeout.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sft_infer::{Decoder, Sampling, Step};
use sft_model::model::{Model, TokenLogprobs};
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::OwnedSemaphorePermit;

use crate::error::ApiError;

/// One request for the engine.
pub struct Job {
    /// Which model (0 = the base, then the adapters in order).
    pub model: usize,
    /// The prompt's token ids.
    pub prompt: Vec<u32>,
    /// Most new tokens (0: only the prompt's log-probabilities).
    pub max_tokens: usize,
    /// How tokens are chosen.
    pub sampling: Sampling,
    /// Log-probabilities of new tokens with this many alternatives.
    pub logprobs: Option<usize>,
    /// Log-probabilities of the prompt tokens with this many alternatives (`echo`).
    pub prompt_logprobs: Option<usize>,
    /// Where the events go.
    pub events: UnboundedSender<Event>,
    /// When it must be done.
    pub deadline: Instant,
    /// Its place in the bounded capacity, given back just before its last event is sent (or
    /// when the job is dropped).
    pub permit: Option<OwnedSemaphorePermit>,
}

impl Job {
    /// Sends the job's last event, giving its slot back first: a client that has its answer
    /// finds the slot free when it asks again at once.
    fn finish(&mut self, event: Event) {
        self.permit = None;
        let _ = self.events.send(event);
    }
}

/// What the engine reports about a job, in order: `Prompt` (when asked), `Token`s, then one
/// `End` or `Failed`.
#[derive(Debug, Clone)]
pub enum Event {
    /// The log-probability of every prompt token after the first.
    Prompt(Vec<TokenLogprobs>),
    /// A new token.
    Token(Step),
    /// Generation ended: `true` at a stop token (the last one sent), `false` at `max_tokens`.
    End {
        /// Whether a stop token ended it.
        stopped: bool,
    },
    /// The job ran past its deadline.
    TimedOut,
    /// The job failed.
    Failed(ApiError),
}

/// Messages to the engine thread.
pub enum Msg {
    /// A new request.
    Job(Box<Job>),
    /// Finish the running and queued requests, then stop.
    Drain,
}

/// What the engine does now (for `/health`).
#[derive(Debug, Default)]
pub struct Load {
    /// Requests decoding.
    pub running: AtomicUsize,
    /// Requests waiting for a slot.
    pub queued: AtomicUsize,
}

/// The engine's settings.
pub struct EngineSettings {
    /// The models: the base, then one view per adapter (sharing the base's weights).
    pub models: Vec<Model>,
    /// Token ids that end generation.
    pub stop_ids: Vec<u32>,
    /// Most requests decoding at once.
    pub max_running: usize,
    /// Counters shared with the handlers.
    pub load: Arc<Load>,
}

struct Running {
    job: Job,
    decoder: Decoder,
    produced: usize,
}

/// Runs the engine until it gets [`Msg::Drain`] (or every sender is gone) and no request is
/// left.
pub fn run(settings: EngineSettings, inbox: Receiver<Msg>) {
    let mut waiting: VecDeque<Job> = VecDeque::new();
    let mut running: Vec<Running> = vec![];
    let mut open = true;
    while open || !waiting.is_empty() || !running.is_empty() {
        // Idle: block for the next message; busy: take what has arrived.
        let first = if running.is_empty() && waiting.is_empty() {
            inbox.recv_timeout(Duration::from_secs(3600)).map_err(|e| e == RecvTimeoutError::Disconnected)
        } else {
            inbox.try_recv().map_err(|e| e == std::sync::mpsc::TryRecvError::Disconnected)
        };
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Ok(Msg::Job(job)) => waiting.push_back(*job),
                Ok(Msg::Drain) | Err(true) => open = false,
                Err(false) => break,
            }
            next = Some(inbox.try_recv().map_err(|e| e == std::sync::mpsc::TryRecvError::Disconnected));
        }
        while running.len() < settings.max_running {
            let Some(job) = waiting.pop_front() else { break };
            let decoder = Decoder::new(&job.prompt, &job.sampling);
            running.push(Running { job, decoder, produced: 0 });
        }
        waiting.retain(|j| !j.events.is_closed());
        tick(&settings, &mut running);
        settings.load.running.store(running.len(), Ordering::Relaxed);
        settings.load.queued.store(waiting.len(), Ordering::Relaxed);
    }
}

/// One decoding step of every running request: those that are still wanted and within their
/// deadline step together, one [`Decoder::step_all`] per model (the base and each adapter view
/// are separate models), then each gets its token; finished ones are dropped, freeing their
/// slots.
fn tick(settings: &EngineSettings, running: &mut Vec<Running>) {
    running.retain_mut(|r| ready(settings, r));
    let mut done = vec![false; running.len()];
    for (m, model) in settings.models.iter().enumerate() {
        let members: Vec<usize> = (0..running.len()).filter(|&i| running[i].job.model == m).collect();
        if members.is_empty() {
            continue;
        }
        let mut group: Vec<(&mut Decoder, Option<usize>)> =
            running.iter_mut().filter(|r| r.job.model == m).map(|r| (&mut r.decoder, r.job.logprobs)).collect();
        match Decoder::step_all(model, &mut group) {
            Ok(steps) => {
                for (&i, step) in members.iter().zip(steps) {
                    done[i] = !deliver(settings, &mut running[i], step);
                }
            }
            Err(e) => {
                for &i in &members {
                    running[i].job.finish(Event::Failed(ApiError::internal(format!("decoding: {e}"))));
                    done[i] = true;
                }
            }
        }
    }
    let mut done = done.into_iter();
    running.retain(|_| !done.next().unwrap_or(true));
}

/// Whether a request goes on to its next step: still wanted, within its deadline, its prompt
/// scored when `echo` asked for it, and tokens left to produce. `false` when it is done (its
/// last event sent).
fn ready(settings: &EngineSettings, r: &mut Running) -> bool {
    let job = &mut r.job;
    if job.events.is_closed() {
        return false;
    }
    if Instant::now() > job.deadline {
        job.finish(Event::TimedOut);
        return false;
    }
    let model = &settings.models[job.model];
    if r.produced == 0 {
        if let Some(top) = job.prompt_logprobs {
            match rayon::scope(|_| model.token_logprobs(&job.prompt, top)) {
                Ok(lp) => {
                    if job.events.send(Event::Prompt(lp)).is_err() {
                        return false;
                    }
                }
                Err(e) => {
                    job.finish(Event::Failed(ApiError::internal(format!("scoring the prompt: {e}"))));
                    return false;
                }
            }
        }
    }
    if r.produced >= job.max_tokens {
        job.finish(Event::End { stopped: false });
        return false;
    }
    true
}

/// Hands a new token to its request; `false` when the request is done.
fn deliver(settings: &EngineSettings, r: &mut Running, step: Step) -> bool {
    r.produced += 1;
    let stopped = settings.stop_ids.contains(&step.id);
    if r.job.events.send(Event::Token(step)).is_err() {
        return false;
    }
    if stopped || r.produced >= r.job.max_tokens {
        r.job.finish(Event::End { stopped });
        return false;
    }
    true
}
