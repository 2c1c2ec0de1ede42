//! `sft render`: one JSON line per input row, in input order: `{"text"}`, with `--tokenize`
//! also `"input_ids"` and `"assistant_mask"`; a row the template rejects prints `{"error"}`.
//! This output is a stable contract: tests, benchmarks and scripts parse it.

use std::io::Write;
use std::process::ExitCode;

use clap::Args;
use rayon::prelude::*;
use serde::Serialize;
use sft_data::conversation::Conversation;
use sft_data::template::char_ranges;

use crate::common::{DataArgs, Loaded};

/// `sft render` flags.
#[derive(Debug, Args)]
pub struct RenderArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// Append the assistant header (inference prompts).
    #[arg(long)]
    pub add_generation_prompt: bool,
    /// Leave the final message open for the model to continue.
    #[arg(long)]
    pub continue_final_message: bool,
    /// Also print input_ids (no special tokens added) and assistant_mask.
    #[arg(long)]
    pub tokenize: bool,
}

/// One output line (keys in this order).
#[derive(Serialize)]
#[serde(untagged)]
enum Line {
    Error { error: String },
    Text { text: String },
    Tokens { text: String, input_ids: Vec<u32>, assistant_mask: Vec<u8> },
}

/// Renders one conversation into its output line.
fn render_row(loaded: &Loaded, args: &RenderArgs, conv: &Conversation) -> Line {
    let error = |e: &dyn std::fmt::Display| Line::Error { error: format!("{}: {e}", conv.source) };
    let plain = !args.add_generation_prompt && !args.continue_final_message;
    let (rendered, spans) = match (&loaded.tokenizer, plain) {
        (Some(_), true) => match loaded.renderer.render_with_spans(conv) {
            Ok((rendered, spans)) => (rendered, Some(spans)),
            Err(e) => return error(&e),
        },
        _ => match loaded.renderer.render(conv, args.add_generation_prompt, args.continue_final_message) {
            Ok(rendered) => (rendered, None),
            Err(e) => return error(&e),
        },
    };
    let Some(tokenizer) = &loaded.tokenizer else { return Line::Text { text: rendered.text } };
    let spans = match spans.unwrap_or_else(|| loaded.renderer.assistant_spans(conv, &rendered)) {
        Ok(s) => s,
        Err(e) => return error(&e),
    };
    match tokenizer.encode(&rendered.text, &char_ranges(&spans)) {
        Ok(t) => Line::Tokens { text: rendered.text, input_ids: t.input_ids, assistant_mask: t.assistant_mask },
        Err(e) => error(&e),
    }
}

/// Runs `sft render`.
pub fn run(args: &RenderArgs) -> anyhow::Result<ExitCode> {
    let loaded = args.data.load(args.tokenize)?;
    let lines: Vec<String> = loaded
        .dataset
        .conversations
        .par_iter()
        .map(|conv| serde_json::to_string(&render_row(&loaded, args, conv)))
        .collect::<Result<_, _>>()?;
    let errors = lines.iter().filter(|l| l.starts_with("{\"error\"")).count();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    for line in &lines {
        if let Err(e) = writeln!(out, "{line}") {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                return Ok(ExitCode::SUCCESS);
            }
            return Err(e.into());
        }
    }
    out.flush().or_else(|e| if e.kind() == std::io::ErrorKind::BrokenPipe { Ok(()) } else { Err(e) })?;
    if errors > 0 {
        eprintln!("{}: {errors} of {} rows could not be rendered (see their \"error\" lines)", args.data.data(), lines.len());
    }
    Ok(ExitCode::SUCCESS)
}
