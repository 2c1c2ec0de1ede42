//! `sft export`: a model (a directory, a checkpoint, a model + adapter) as a GGUF file for
//! llama.cpp and Ollama, with the tokenizer, chat template and EOS it was trained with; or the
//! adapter alone as a LoRA GGUF; optionally with an Ollama `Modelfile` beside it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Args;
use sft_data::template::{Renderer, TemplateSettings};
use sft_export::gguf::{self, ModelSource, OutType};
use sft_export::ollama::Modelfile;

/// `sft export` flags.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Model: a directory, a training checkpoint (outputs/checkpoint-N) or a hub id.
    #[arg(long)]
    pub model: String,
    /// A PEFT LoRA adapter to merge in (or, with --adapter-only, to export alone).
    #[arg(long)]
    pub adapter: Option<String>,
    /// The GGUF file to write (default with --ollama: DIR/model.gguf).
    #[arg(long, required_unless_present = "ollama")]
    pub out: Option<PathBuf>,
    /// Tensor types: f32, f16, bf16, q8_0, or q4_k_m (llama-quantize's Q4_K_M mix).
    #[arg(long, default_value = "f16", value_parser = parse_outtype)]
    pub outtype: OutType,
    /// Write the adapter alone as a llama.cpp LoRA GGUF (`llama-cli --lora FILE`).
    #[arg(long)]
    pub adapter_only: bool,
    /// Also write an Ollama Modelfile into DIR (`ollama create NAME -f DIR/Modelfile`).
    #[arg(long, value_name = "DIR")]
    pub ollama: Option<PathBuf>,
    /// Replace existing output files.
    #[arg(long)]
    pub force: bool,
}

fn parse_outtype(s: &str) -> Result<OutType, String> {
    OutType::parse(s).ok_or_else(|| {
        format!("{s:?} is not an output type (one of {})", OutType::ALL.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", "))
    })
}

/// Runs `sft export`.
pub fn run(args: &ExportArgs) -> anyhow::Result<ExitCode> {
    let source = sft_hub::resolve(&args.model, args.adapter.as_deref())?;
    let out = match (&args.out, &args.ollama) {
        (Some(out), _) => out.clone(),
        (None, Some(dir)) => dir.join("model.gguf"),
        (None, None) => bail!("--out FILE.gguf is required"),
    };
    let modelfile = args.ollama.as_ref().map(|dir| dir.join("Modelfile"));
    if let Some(path) = &modelfile {
        if args.adapter_only {
            bail!("--ollama writes a Modelfile for a whole model; leave out --adapter-only");
        }
        if path.exists() && !args.force {
            bail!("{} exists; pass --force to replace it", path.display());
        }
        std::fs::create_dir_all(args.ollama.as_deref().unwrap_or(Path::new(".")))
            .with_context(|| format!("creating {}", path.display()))?;
    }
    let exported = if args.adapter_only {
        let Some(adapter) = &source.adapter else {
            bail!("--adapter-only needs --adapter DIR (or --model pointing at a LoRA checkpoint)");
        };
        gguf::export_adapter(&source.base.dir, adapter, args.outtype, &out, args.force)?
    } else {
        gguf::check_target(&out, args.force)?;
        let settings = TemplateSettings::default();
        let kwargs = settings.kwargs_for(Some(&source.tokenizer_dir))?;
        let renderer = Renderer::new(Some(&source.tokenizer_dir), &settings.choice()?, kwargs)?;
        let base = &source.base.name;
        let name = base.rsplit(['/', '\\']).find(|part| !part.is_empty()).unwrap_or(base).to_string();
        let src = ModelSource {
            model_dir: &source.base.dir,
            adapter: source.adapter.as_deref(),
            tokenizer_dir: &source.tokenizer_dir,
            renderer: &renderer,
            name,
        };
        let exported = gguf::export_model(&src, args.outtype, &out, args.force)?;
        if let (Some(path), Some(dir)) = (&modelfile, &args.ollama) {
            write_modelfile(&renderer, &source.tokenizer_dir, &out, dir, path)?;
        }
        exported
    };
    for w in &exported.warnings {
        eprintln!("warning: {w}");
    }
    let types: Vec<String> = exported.types.iter().map(|(t, n)| format!("{n} {t}")).collect();
    eprintln!("{}: {} bytes, tensors: {}", exported.path.display(), exported.bytes, types.join(", "));
    Ok(ExitCode::SUCCESS)
}

/// The Modelfile in `dir` for the GGUF at `gguf` (named relative to `dir` when inside it).
fn write_modelfile(renderer: &Renderer, tokenizer_dir: &Path, gguf: &Path, dir: &Path, path: &Path) -> anyhow::Result<()> {
    let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let (gguf_abs, dir_abs) = (abs(gguf), abs(dir));
    let from = match gguf_abs.strip_prefix(&dir_abs) {
        Ok(rel) => format!("./{}", rel.display()),
        Err(_) => gguf_abs.display().to_string(),
    };
    let modelfile = Modelfile::for_model(renderer, &from, Some(tokenizer_dir))?;
    for w in &modelfile.warnings {
        eprintln!("warning: Modelfile: {w}");
    }
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, modelfile.text()).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("{}: FROM {from}", path.display());
    Ok(())
}
