//! `sft render`: one JSON line per input row, in input order: `{"text"}`, with `--tokenize`
//! also `"input_ids"` and `"assistant_mask"`; a row the template rejects prints `{"error"}`, and
//! a rendered row whose assistant turns cannot be located prints `"assistant_mask": null` and a
//! `"mask_error"` after its ids. This output is a stable contract: tests, benchmarks and scripts
//! parse it.

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
    Error {
        error: String,
    },
    Text {
        text: String,
    },
    Tokens {
        text: String,
        input_ids: Vec<u32>,
        /// `None` (printed as `null`) when the assistant turns cannot be located.
        assistant_mask: Option<Vec<u8>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        mask_error: Option<String>,
    },
}

/// Renders one conversation into its output line.
fn render_row(loaded: &Loaded, args: &RenderArgs, conv: &Conversation) -> Line {
    let error = |e: &dyn std::fmt::Display| format!("{}: {e}", conv.source);
    let Some(tokenizer) = &loaded.tokenizer else {
        return match loaded.renderer.render(conv, args.add_generation_prompt, args.continue_final_message) {
            Ok(rendered) => Line::Text { text: rendered.text },
            Err(e) => Line::Error { error: error(&e) },
        };
    };
    let (rendered, spans) = match loaded.renderer.render_with_spans_for(conv, args.add_generation_prompt, args.continue_final_message) {
        Ok(found) => found,
        Err(e) => return Line::Error { error: error(&e) },
    };
    let (ranges, mask_error) = match &spans {
        Ok(spans) => (char_ranges(spans), None),
        Err(e) => (Vec::new(), Some(error(e))),
    };
    match tokenizer.encode(&rendered.text, &ranges) {
        Ok(t) => Line::Tokens {
            text: rendered.text,
            input_ids: t.input_ids,
            assistant_mask: mask_error.is_none().then_some(t.assistant_mask),
            mask_error,
        },
        Err(e) => Line::Error { error: error(&e) },
    }
}

/// Runs `sft render`.
pub fn run(args: &RenderArgs) -> anyhow::Result<ExitCode> {
    let loaded = args.data.load(args.tokenize)?;
    let rows: Vec<Line> = loaded.dataset.conversations.par_iter().map(|conv| render_row(&loaded, args, conv)).collect();
    let errors = rows.iter().filter(|l| matches!(l, Line::Error { .. })).count();
    let unmasked = rows.iter().filter(|l| matches!(l, Line::Tokens { mask_error: Some(_), .. })).count();
    let lines: Vec<String> = rows.par_iter().map(serde_json::to_string).collect::<Result<_, _>>()?;
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
    if unmasked > 0 {
        eprintln!(
            "{}: {unmasked} of {} rows have no assistant mask (see their \"mask_error\"); training excludes them",
            args.data.data(),
            lines.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}
