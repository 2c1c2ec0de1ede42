//! `sft inspect`: a person's view of rows: the rendered text with the trained (assistant)
//! tokens highlighted (green on a terminal, `[[…]]` markers when piped), token counts, and
//! which turns train.

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::bail;
use clap::Args;

use sft_data::template::char_ranges;

use crate::common::DataArgs;

/// `sft inspect` flags.
#[derive(Debug, Args)]
pub struct InspectArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// Rows to show, 1-based: e.g. `3`, `1-5`, `2,7,9` (default: the first 3).
    #[arg(long)]
    pub rows: Option<String>,
    /// Colors: auto (when stdout is a terminal), always or never.
    #[arg(long, value_enum, default_value_t)]
    pub color: Color,
}

/// `--color` values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Color {
    /// When stdout is a terminal.
    #[default]
    Auto,
    /// Always.
    Always,
    /// Never (`[[…]]` markers instead).
    Never,
}

/// Parses `1-3,7` into 1-based row numbers.
fn parse_rows(spec: &str) -> anyhow::Result<Vec<usize>> {
    let mut rows = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let parse = |s: &str| s.trim().parse::<usize>().ok().filter(|n| *n > 0);
        match part.split_once('-') {
            Some((a, b)) => match (parse(a), parse(b)) {
                (Some(a), Some(b)) if a <= b => rows.extend(a..=b),
                _ => bail!("--rows {spec:?}: {part:?} is not a range like 2-5"),
            },
            None => match parse(part) {
                Some(n) => rows.push(n),
                None => bail!("--rows {spec:?}: {part:?} is not a row number (rows count from 1)"),
            },
        }
    }
    Ok(rows)
}

const GREEN: &str = "\x1b[30;42m";
const DIM: &str = "\x1b[2m";
const RESET: &str = "\x1b[0m";

/// Runs `sft inspect`.
pub fn run(args: &InspectArgs) -> anyhow::Result<ExitCode> {
    let loaded = args.data.load(args.data.tokenizer.is_some())?;
    let color = match args.color {
        Color::Always => true,
        Color::Never => false,
        Color::Auto => std::io::stdout().is_terminal(),
    };
    let convs = &loaded.dataset.conversations;
    let picked: Vec<usize> = match &args.rows {
        Some(spec) => parse_rows(spec)?,
        None => (1..=convs.len().min(3)).collect(),
    };
    let (open, close) = if color { (GREEN, RESET) } else { ("[[", "]]") };
    if !color {
        println!("(trained text is shown between [[ and ]])");
    }
    for n in picked {
        let Some(conv) = convs.get(n - 1) else {
            bail!("{}: row {n} does not exist (the file has {} rows)", args.data.data(), convs.len());
        };
        println!("=== {} ({} messages) ===", conv.source, conv.messages.len());
        for (i, m) in conv.messages.iter().enumerate() {
            let trains = if m.is_assistant() { "trains" } else { "context" };
            println!("  message {}: {:<9} {trains}", i + 1, m.role);
        }
        let rendered = match loaded.renderer.render(conv, false, false) {
            Ok(r) => r,
            Err(e) => {
                println!("  template error: {e}\n");
                continue;
            }
        };
        let spans = match loaded.renderer.assistant_spans(conv, &rendered) {
            Ok(s) => s,
            Err(e) => {
                println!("  {e}\n{}\n", rendered.text);
                continue;
            }
        };
        // Highlight the assistant spans; the tokens overlapping them are the trained ones.
        let chars: Vec<char> = rendered.text.chars().collect();
        let mut trained = vec![false; chars.len()];
        match &loaded.tokenizer {
            Some(tok) => {
                let t = tok.encode(&rendered.text, &char_ranges(&spans))?;
                let n_trained = t.assistant_mask.iter().filter(|&&m| m == 1).count();
                println!("  tokens: {} total, {n_trained} trained", t.input_ids.len());
            }
            None => println!("  (pass --tokenizer for token counts)"),
        }
        for s in &spans {
            trained[s.start.min(chars.len())..s.end.min(chars.len())].iter_mut().for_each(|c| *c = true);
        }
        let mut out = String::new();
        let mut inside = false;
        for (c, t) in chars.iter().zip(&trained) {
            if *t != inside {
                out.push_str(if *t { open } else { close });
                inside = *t;
            }
            out.push(*c);
        }
        if inside {
            out.push_str(close);
        }
        if color {
            println!("{DIM}---{RESET}\n{out}\n{DIM}---{RESET}\n");
        } else {
            println!("---\n{out}\n---\n");
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_specs() {
        assert_eq!(parse_rows("1-3,7").unwrap(), vec![1, 2, 3, 7]);
        assert!(parse_rows("0").is_err());
        assert!(parse_rows("5-2").is_err());
    }
}
