//! `manifest.json`: what a prepared dataset was made from (the [`ManifestKey`]: tokenizer,
//! template, settings, data file) and what it holds ([`Counts`]).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::PreparedError;
use crate::encode::{EncodeOptions, Masking};
use crate::template::TemplateSet;

/// The layout version this code writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// The settings that shape the tokens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// `assistant`, `last`, `all` or `markers`.
    pub masking: String,
    /// With `markers`: the instruction marker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instruction_part: Option<String>,
    /// With `markers`: the response marker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_part: Option<String>,
    /// `auto`, `always` or `never`.
    pub append_eos: String,
    /// The longest example (and packed sequence), if limited.
    pub max_seq_length: Option<usize>,
    /// `drop` or `right`.
    pub truncation: String,
    /// Whether examples were packed into sequences.
    pub packing: bool,
}

impl Settings {
    /// The settings of an encode run, plus packing.
    pub fn new(options: &EncodeOptions, packing: bool) -> Self {
        let (instruction_part, response_part) = match &options.masking {
            Masking::Markers(m) => (Some(m.instruction_part.clone()), Some(m.response_part.clone())),
            _ => (None, None),
        };
        Settings {
            masking: options.masking.to_string(),
            instruction_part,
            response_part,
            append_eos: options.append_eos.to_string(),
            max_seq_length: options.max_seq_length,
            truncation: options.truncation.to_string(),
            packing,
        }
    }
}

/// The data file as it was when read: a changed size or mtime means changed data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataFingerprint {
    /// The absolute path (`-` for stdin).
    pub path: String,
    /// Its size in bytes (none for stdin).
    pub size: Option<u64>,
    /// Its modification time, nanoseconds since the Unix epoch (none for stdin or when the
    /// file system has none).
    pub mtime_ns: Option<u128>,
}

impl DataFingerprint {
    /// Reads the size and mtime of `path` (`-` is stdin: neither); the path is stored
    /// absolute, so a run from another directory still matches.
    pub fn of(path: &str) -> Result<Self, PreparedError> {
        if path == "-" {
            return Ok(DataFingerprint { path: path.into(), size: None, mtime_ns: None });
        }
        let meta = std::fs::metadata(path).map_err(|source| PreparedError::Io { path: path.into(), source })?;
        let mtime_ns = meta.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map(|d| d.as_nanos());
        let absolute = std::fs::canonicalize(path).map_or_else(|_| path.to_string(), |p| p.display().to_string());
        Ok(DataFingerprint { path: absolute, size: Some(meta.len()), mtime_ns })
    }
}

/// Everything that decides the tokens: equal keys give equal datasets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestKey {
    /// sha256 of `tokenizer.json`, hex.
    pub tokenizer_sha256: String,
    /// sha256 over the template sources in use and the template variables, hex
    /// (see [`template_sha256`]).
    pub template_sha256: String,
    /// The settings.
    pub settings: Settings,
    /// The data file.
    pub data: DataFingerprint,
}

impl ManifestKey {
    /// The key of data read with `renderer` and the tokenizer in `tokenizer_dir`: hashes of
    /// tokenizer.json and of the templates with every variable that reaches them (the
    /// renderer's, its extra keyword arguments, and the fixed clock `now`, when one is set).
    /// `sft prepare` writes it; `sft train` builds it again to check a prepared dataset.
    pub fn new(
        tokenizer_dir: &Path,
        renderer: &crate::template::Renderer,
        settings: Settings,
        now: Option<&str>,
        data: DataFingerprint,
    ) -> Result<Self, PreparedError> {
        let mut vars = renderer.template_vars().clone();
        vars.insert("--template-kwargs".into(), serde_json::Value::Object(renderer.kwargs().clone()));
        vars.insert("--now".into(), now.map_or(serde_json::Value::Null, |n| serde_json::Value::String(n.into())));
        Ok(ManifestKey {
            tokenizer_sha256: file_sha256(&tokenizer_dir.join("tokenizer.json"))?,
            template_sha256: template_sha256(renderer.templates(), &vars),
            settings,
            data,
        })
    }

    /// Why a dataset made with `self` does not fit `expected`, or `None` when it does.
    pub fn stale_reason(&self, expected: &ManifestKey) -> Option<String> {
        if self.tokenizer_sha256 != expected.tokenizer_sha256 {
            return Some("the tokenizer (tokenizer.json) changed".into());
        }
        if self.template_sha256 != expected.template_sha256 {
            return Some("the chat template or its variables changed".into());
        }
        if self.settings != expected.settings {
            let (a, b) = (&self.settings, &expected.settings);
            let diff = [
                ("masking", a.masking != b.masking || a.instruction_part != b.instruction_part || a.response_part != b.response_part),
                ("append_eos", a.append_eos != b.append_eos),
                ("max_seq_length", a.max_seq_length != b.max_seq_length),
                ("truncation", a.truncation != b.truncation),
                ("packing", a.packing != b.packing),
            ];
            let names: Vec<&str> = diff.iter().filter(|(_, d)| *d).map(|(n, _)| *n).collect();
            return Some(format!("settings changed: {}", names.join(", ")));
        }
        let (a, b) = (&self.data, &expected.data);
        if a.path != b.path {
            return Some(format!("the data file changed: {} was prepared, {} is asked for", a.path, b.path));
        }
        if a.size.is_none() || b.size.is_none() {
            return Some(format!("{}: data from stdin cannot be checked", a.path));
        }
        if a.size != b.size || a.mtime_ns != b.mtime_ns {
            return Some(format!("{}: the data file was modified (size or mtime differ)", a.path));
        }
        None
    }
}

/// What a prepared dataset holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Rows read from the data file.
    pub rows: usize,
    /// Unreadable rows skipped by the reader (`--on-bad-row skip`).
    pub bad_rows_skipped: usize,
    /// Examples encoded.
    pub examples: usize,
    /// Rows left out, by reason.
    pub excluded: BTreeMap<String, usize>,
    /// Records stored: examples, or packed sequences.
    pub sequences: usize,
    /// Tokens stored.
    pub tokens: usize,
    /// Positions that train.
    pub trained_tokens: usize,
    /// Examples cut by truncation `right`.
    pub truncated_rows: usize,
    /// Trained tokens those cuts removed.
    pub trained_tokens_lost: usize,
}

/// `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`FORMAT_VERSION`] when written.
    pub format_version: u32,
    /// The sft version that wrote it.
    pub sft_version: String,
    /// What it was made from.
    pub key: ManifestKey,
    /// What it holds.
    pub counts: Counts,
}

impl Manifest {
    /// A manifest of the current format and version.
    pub fn new(key: ManifestKey, counts: Counts) -> Self {
        Manifest { format_version: FORMAT_VERSION, sft_version: env!("CARGO_PKG_VERSION").into(), key, counts }
    }
}

/// sha256 of a file, hex.
pub fn file_sha256(path: &Path) -> Result<String, PreparedError> {
    let bytes = std::fs::read(path).map_err(|source| PreparedError::Io { path: path.display().to_string(), source })?;
    Ok(hex(&Sha256::digest(&bytes)))
}

/// sha256 over the template sources (default, then `tool_use` when present), the EOS
/// override and the template variables, hex.
pub fn template_sha256(templates: &TemplateSet, vars: &serde_json::Map<String, serde_json::Value>) -> String {
    let mut h = Sha256::new();
    let part = |h: &mut Sha256, s: &str| {
        h.update((s.len() as u64).to_le_bytes());
        h.update(s.as_bytes());
    };
    part(&mut h, templates.default.source());
    part(&mut h, templates.tool_use.as_ref().map_or("", |t| t.source()));
    part(&mut h, templates.eos_override.as_deref().unwrap_or(""));
    part(&mut h, &serde_json::Value::Object(vars.clone()).to_string());
    hex(&h.finalize())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ManifestKey {
        ManifestKey {
            tokenizer_sha256: "aa".into(),
            template_sha256: "bb".into(),
            settings: Settings::new(&EncodeOptions::default(), false),
            data: DataFingerprint { path: "d.jsonl".into(), size: Some(10), mtime_ns: Some(5) },
        }
    }

    #[test]
    fn equal_keys_are_fresh_and_each_change_is_named() {
        assert_eq!(key().stale_reason(&key()), None);
        let mut k = key();
        k.tokenizer_sha256 = "cc".into();
        assert!(key().stale_reason(&k).unwrap().contains("tokenizer"));
        let mut k = key();
        k.settings.packing = true;
        k.settings.max_seq_length = Some(8);
        assert_eq!(key().stale_reason(&k).unwrap(), "settings changed: max_seq_length, packing");
        let mut k = key();
        k.data.mtime_ns = Some(6);
        assert!(key().stale_reason(&k).unwrap().contains("modified"));
    }

    #[test]
    fn manifest_round_trips_through_json() {
        let m = Manifest::new(key(), Counts { rows: 3, ..Default::default() });
        let text = serde_json::to_string(&m).unwrap();
        assert_eq!(serde_json::from_str::<Manifest>(&text).unwrap(), m);
    }

    #[test]
    fn hex_is_lowercase_and_padded() {
        assert_eq!(hex(&[0, 171]), "00ab");
    }
}
