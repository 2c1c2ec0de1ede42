//! `sft render`: one JSON line per input row, in input order: `{"text"}`, with `--tokenize`
//! also `"input_ids"` and `"assistant_mask"`; a row the template rejects prints `{"error"}`.
//! This output is a stable contract: tests, benchmarks and scripts parse it.

use std::io::Write;
use std::process::ExitCode;

use clap::Args;
use rayon::prelude::*;
use serde_json::{json, Value};
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

/// Renders one conversation into its output line.
fn render_row(loaded: &Loaded, args: &RenderArgs, conv: &Conversation) -> Value {
    let rendered = match loaded.renderer.render(conv, args.add_generation_prompt, args.continue_final_message) {
        Ok(r) => r,
        Err(e) => return json!({ "error": format!("{}: {e}", conv.source) }),
    };
    let Some(tokenizer) = &loaded.tokenizer else { return json!({ "text": rendered.text }) };
    let spans = match loaded.renderer.assistant_spans(conv, &rendered) {
        Ok(s) => s,
        Err(e) => return json!({ "error": format!("{}: {e}", conv.source) }),
    };
    match tokenizer.encode(&rendered.text, &char_ranges(&spans)) {
        Ok(t) => json!({ "text": rendered.text, "input_ids": t.input_ids, "assistant_mask": t.assistant_mask }),
        Err(e) => json!({ "error": format!("{}: {e}", conv.source) }),
    }
}

/// Runs `sft render`.
pub fn run(args: &RenderArgs) -> anyhow::Result<ExitCode> {
    let loaded = args.data.load(args.tokenize)?;
    let lines: Vec<String> =
        loaded.dataset.conversations.par_iter().map(|conv| render_row(&loaded, args, conv).to_string()).collect();
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
