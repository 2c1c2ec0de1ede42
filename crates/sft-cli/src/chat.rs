//! `sft chat`: a multi-turn conversation with a model or checkpoint on the terminal. Each turn is
//! rendered with the chat template (history included, add_generation_prompt=true) and the
//! answer streams as it is generated. `/reset` forgets the history, `/exit` (or end of input)
//! quits.

use std::io::{BufRead, Write};
use std::process::ExitCode;

use clap::Args;
use sft_data::conversation::{Conversation, Message, RowRef};
use sft_model::generate::Sampling;

use crate::common::ModelArgs;
use crate::generate::{answer, load};

/// `sft chat` flags.
#[derive(Debug, Args)]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// A system message that starts every conversation.
    #[arg(long)]
    pub system: Option<String>,
    /// Chat template override.
    #[arg(long)]
    pub chat_template: Option<String>,
    /// Most new tokens per answer.
    #[arg(long, default_value_t = 512)]
    pub max_new_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.7)]
    pub temperature: f64,
    /// Nucleus sampling threshold.
    #[arg(long, default_value_t = 0.9)]
    pub top_p: f64,
    /// Sampling seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// Runs `sft chat`.
pub fn run(args: &ChatArgs) -> anyhow::Result<ExitCode> {
    let loaded = load(&args.model, args.chat_template.clone())?;
    let start = || -> Vec<Message> { args.system.iter().map(|s| Message::text("system", s)).collect() };
    let mut messages = start();
    let mut turn = 0u64;
    eprintln!("chatting with {} (/reset to start over, /exit to quit)", args.model.model.display());
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        eprint!("> ");
        let Some(line) = lines.next() else { break };
        let line = line?;
        match line.trim() {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                messages = start();
                eprintln!("(history cleared)");
                continue;
            }
            text => messages.push(Message::text("user", text)),
        }
        turn += 1;
        let conversation = Conversation {
            source: RowRef { file: "chat".into(), row: turn as usize },
            messages: messages.clone(),
            tools: None,
            documents: None,
        };
        let sampling =
            Sampling { temperature: args.temperature, top_p: args.top_p, seed: args.seed.wrapping_add(turn), ..Sampling::default() };
        let (text, _) = answer(&loaded, &conversation, args.max_new_tokens, &sampling, |piece| {
            print!("{piece}");
            let _ = std::io::stdout().flush();
        })?;
        println!();
        messages.push(Message::text("assistant", &text));
    }
    Ok(ExitCode::SUCCESS)
}
