//! `sft serve`: an OpenAI-compatible server (sft-serve) for a model, a checkpoint, or a base
//! with several named LoRA adapters. Parses flags, installs the Ctrl-C / SIGTERM handler that
//! drains the server, and runs it.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use sft_data::template::TemplateSettings;
use sft_serve::{App, ServeOptions};

use crate::common::{Dtype, ModelArgs};

/// `sft serve` flags.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Model: a directory, a training checkpoint, a hub id or a GGUF file.
    #[arg(long)]
    pub model: String,
    /// The name requests give the model in "model" (default: --model as given).
    #[arg(long)]
    pub served_model_name: Option<String>,
    /// A named LoRA adapter on the base, picked by a request's "model": NAME=DIR (repeatable;
    /// the adapters share the base's weights in memory).
    #[arg(long = "adapter", value_name = "NAME=DIR")]
    pub adapters: Vec<String>,
    /// Hold the base linear weights in 4-bit NF4.
    #[arg(long, conflicts_with = "dtype")]
    pub load_in_4bit: bool,
    /// Precision of the base linear weights: f32 (exact) or bf16.
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: Dtype,
    #[command(flatten)]
    pub template: TemplateSettings,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port (0: any free one; the address is printed).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Requests decoding at once.
    #[arg(long, default_value_t = 16)]
    pub max_concurrency: usize,
    /// Requests waiting beyond those; more are refused with 429.
    #[arg(long, default_value_t = 64)]
    pub queue: usize,
    /// Seconds a request may take.
    #[arg(long, default_value_t = 600.0)]
    pub timeout: f64,
}

fn adapters(flags: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    flags
        .iter()
        .map(|f| match f.split_once('=') {
            Some((name, dir)) if !name.is_empty() && !dir.is_empty() => Ok((name.to_string(), dir.to_string())),
            _ => bail!("--adapter {f}: expected NAME=DIR"),
        })
        .collect()
}

/// Runs `sft serve`.
pub fn run(args: &ServeArgs) -> anyhow::Result<ExitCode> {
    if !(args.timeout.is_finite() && args.timeout > 0.0) {
        bail!("--timeout {}: expected seconds above 0", args.timeout);
    }
    let model = ModelArgs { model: args.model.clone(), adapter: None, load_in_4bit: args.load_in_4bit, dtype: args.dtype };
    let mut opts = ServeOptions::new(model.load_options(&args.template));
    opts.name = args.served_model_name.clone();
    opts.adapters = adapters(&args.adapters)?;
    opts.max_concurrency = args.max_concurrency;
    opts.queue = args.queue;
    opts.timeout = Duration::from_secs_f64(args.timeout);
    let app = App::load(opts).with_context(|| format!("loading {}", args.model))?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        let address = format!("{}:{}", args.host, args.port);
        let listener = tokio::net::TcpListener::bind(&address).await.with_context(|| format!("binding {address}"))?;
        let local = listener.local_addr().context("reading the bound address")?;
        eprintln!("serving {} on http://{local}/v1 (Ctrl-C or SIGTERM drains and exits)", args.model);
        app.serve(listener, shutdown_signal()).await?;
        eprintln!("drained; exiting");
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Completes at Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
