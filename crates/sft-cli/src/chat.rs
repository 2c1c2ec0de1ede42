//! `sft chat`: a multi-turn conversation with a model or checkpoint on the terminal. Each turn is
//! rendered with the chat template (history included, add_generation_prompt=true) and the
//! answer streams as it is generated. `/reset` forgets the history, `/exit` (or end of input)
//! quits.

use std::io::{BufRead, Write};
use std::process::ExitCode;

use clap::Args;
use sft_data::conversation::{Conversation, Message, RowRef};
use sft_data::template::TemplateSettings;

use crate::common::ModelArgs;
use crate::generate::GenerationArgs;

/// `sft chat` flags: the generation flags of `sft generate`, with a chat's defaults (longer
/// answers, sampled).
#[derive(Debug, Args)]
#[command(mut_arg("max_new_tokens", |a| a.default_value("512")))]
#[command(mut_arg("temperature", |a| a.default_value("0.7")))]
#[command(mut_arg("top_p", |a| a.default_value("0.9")))]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// A system message that starts every conversation.
    #[arg(long)]
    pub system: Option<String>,
    #[command(flatten)]
    pub template: TemplateSettings,
    #[command(flatten)]
    pub generation: GenerationArgs,
}

/// Runs `sft chat`.
pub fn run(args: &ChatArgs) -> anyhow::Result<ExitCode> {
    let inference = args.model.load(&args.template)?;
    let start = || -> Vec<Message> { args.system.iter().map(|s| Message::text("system", s)).collect() };
    let mut messages = start();
    let mut turn = 0u64;
    eprintln!("chatting with {} (/reset to start over, /exit to quit)", args.model.model);
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
        let source = RowRef { file: "chat".into(), row: turn as usize };
        let conversation =
            Conversation { source, messages: messages.clone(), tools: None, documents: None, shape: sft_data::conversation::Shape::Chat };
        let params = args.generation.params(args.generation.seed.wrapping_add(turn));
        let answer = inference.answer(&conversation, &params, |piece| {
            print!("{piece}");
            let _ = std::io::stdout().flush();
        })?;
        println!();
        messages.push(Message::text("assistant", &answer.text));
    }
    Ok(ExitCode::SUCCESS)
}
