//! Writing a prepared dataset beside its target and renaming it into place; reading one back
//! with every file checked against the manifest.

use std::borrow::Cow;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::manifest::{Manifest, ManifestKey, FORMAT_VERSION};
use super::{PreparedError, MANIFEST};

pub(super) const TOKENS: &str = "tokens.bin";
pub(super) const LABELS: &str = "labels.bin";
const INDEX: &str = "index.bin";
const POSITIONS: &str = "positions.bin";

/// One stored record: an example, or a packed sequence with its position ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    /// Token ids.
    pub input_ids: &'a [u32],
    /// Labels (`-100` where the loss ignores), not shifted.
    pub labels: &'a [i32],
    /// Position ids, restarting at 0 for every row (packed datasets only).
    pub position_ids: Option<&'a [u32]>,
}

/// Writes a prepared dataset a record at a time, so it never has to be held in memory. The
/// files go into a hidden sibling directory of `out` which replaces `out` on
/// [`finish`](Self::finish); `out` may be missing, empty, or a prepared dataset (one with
/// `manifest.json`), anything else is refused. Dropped unfinished, it removes what it wrote.
#[derive(Debug)]
pub struct StoreWriter {
    out: PathBuf,
    tmp: DirGuard,
    tokens: Sink,
    labels: Sink,
    index: Sink,
    positions: Option<Sink>,
    /// Tokens written so far.
    start: u64,
    records: usize,
}

impl StoreWriter {
    /// Starts a dataset for `out`; `packed` datasets carry position ids.
    pub fn create(out: &Path, packed: bool) -> Result<Self, PreparedError> {
        let out = target(out)?;
        let tmp = hidden_sibling(&out, "tmp");
        if let Some(parent) = tmp.parent() {
            fs::create_dir_all(parent).map_err(|e| PreparedError::io(parent, e))?;
        }
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(|e| PreparedError::io(&tmp, e))?;
        }
        fs::create_dir(&tmp).map_err(|e| PreparedError::io(&tmp, e))?;
        // From here on a failure removes the directory again.
        let tmp = DirGuard(tmp);
        Ok(StoreWriter {
            tokens: Sink::create(&tmp.0.join(TOKENS))?,
            labels: Sink::create(&tmp.0.join(LABELS))?,
            index: Sink::create(&tmp.0.join(INDEX))?,
            positions: if packed { Some(Sink::create(&tmp.0.join(POSITIONS))?) } else { None },
            out,
            tmp,
            start: 0,
            records: 0,
        })
    }

    /// Appends one record.
    pub fn push(&mut self, r: Record<'_>) -> Result<(), PreparedError> {
        let n = r.input_ids.len();
        let positions_fit = match (&self.positions, r.position_ids) {
            (Some(_), Some(p)) => p.len() == n,
            (None, None) => true,
            _ => false,
        };
        if r.labels.len() != n || !positions_fit {
            let message = "input ids, labels and position ids differ in length (or position ids are missing)".into();
            return Err(PreparedError::Record { record: self.records, message });
        }
        self.tokens.put(&le_bytes(r.input_ids))?;
        self.labels.put(&le_bytes(r.labels))?;
        if let (Some(sink), Some(pos)) = (self.positions.as_mut(), r.position_ids) {
            sink.put(&le_bytes(pos))?;
        }
        self.index.put(&self.start.to_le_bytes())?;
        self.index.put(&(n as u64).to_le_bytes())?;
        self.start += n as u64;
        self.records += 1;
        Ok(())
    }

    /// Records pushed so far.
    pub fn records(&self) -> usize {
        self.records
    }

    /// Tokens pushed so far.
    pub fn tokens(&self) -> usize {
        self.start as usize
    }

    /// Flushes the files, writes `manifest` (its `sequences` and `tokens` counts set from what
    /// was pushed) and moves the dataset into place.
    pub fn finish(self, manifest: &Manifest) -> Result<(), PreparedError> {
        let StoreWriter { out, tmp, tokens, labels, index, positions, start, records } = self;
        let mut manifest = manifest.clone();
        manifest.counts.sequences = records;
        manifest.counts.tokens = start as usize;
        tokens.finish()?;
        labels.finish()?;
        index.finish()?;
        if let Some(p) = positions {
            p.finish()?;
        }
        let path = tmp.0.join(MANIFEST);
        let text = serde_json::to_string_pretty(&manifest)
            .map_err(|source| PreparedError::Manifest { path: path.display().to_string(), source })?;
        fs::write(&path, text + "\n").map_err(|e| PreparedError::io(&path, e))?;
        // `swap_in` moves the directory into place or removes it: nothing is left to guard.
        swap_in(&tmp.release(), &out)
    }
}

/// `.NAME.WHAT-PID` beside `out` (named `NAME`): hidden, and this process's own.
pub(super) fn hidden_sibling(out: &Path, what: &str) -> PathBuf {
    let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "prepared".into());
    let parent = out.parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    parent.join(format!(".{name}.{what}-{}", std::process::id()))
}

/// A directory removed when dropped (a dataset being written, a scratch copy), unless
/// [`release`](Self::release)d.
#[derive(Debug)]
pub(super) struct DirGuard(pub(super) PathBuf);

impl DirGuard {
    /// The path, no longer removed on drop.
    pub(super) fn release(mut self) -> PathBuf {
        std::mem::take(&mut self.0)
    }
}

impl Drop for DirGuard {
    fn drop(&mut self) {
        if !self.0.as_os_str().is_empty() {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

/// `out` made absolute when it exists (so `.` has a name); refuses what may not be replaced.
fn target(out: &Path) -> Result<PathBuf, PreparedError> {
    if !out.exists() {
        return Ok(out.to_path_buf());
    }
    let refuse = || PreparedError::NotPrepared { path: out.display().to_string() };
    if !out.is_dir() {
        return Err(refuse());
    }
    // Replace only a directory that holds a prepared dataset and nothing else, so no file of
    // the user's is ever deleted.
    let mut names = Vec::new();
    for entry in fs::read_dir(out).map_err(|e| PreparedError::io(out, e))? {
        names.push(entry.map_err(|e| PreparedError::io(out, e))?.file_name());
    }
    let ours = |n: &std::ffi::OsString| [MANIFEST, TOKENS, LABELS, INDEX, POSITIONS].iter().any(|k| n == k);
    if !names.is_empty() && (!out.join(MANIFEST).is_file() || !names.iter().all(ours)) {
        return Err(refuse());
    }
    fs::canonicalize(out).map_err(|e| PreparedError::io(out, e))
}

/// Replaces `out` by `tmp`: the old dataset moves aside, the new one takes its name, the old
/// one is removed. On failure the old one is put back.
fn swap_in(tmp: &Path, out: &Path) -> Result<(), PreparedError> {
    if !out.exists() {
        return fs::rename(tmp, out).map_err(|e| {
            let _ = fs::remove_dir_all(tmp);
            PreparedError::io(out, e)
        });
    }
    let mut old = tmp.as_os_str().to_owned();
    old.push(".old");
    let old = PathBuf::from(old);
    fs::rename(out, &old).map_err(|e| {
        let _ = fs::remove_dir_all(tmp);
        PreparedError::io(out, e)
    })?;
    if let Err(e) = fs::rename(tmp, out) {
        let _ = fs::rename(&old, out);
        let _ = fs::remove_dir_all(tmp);
        return Err(PreparedError::io(out, e));
    }
    fs::remove_dir_all(&old).map_err(|e| PreparedError::io(&old, e))
}

/// 32-bit words (`u32` or `i32`) as little-endian bytes.
fn le_bytes<T: bytemuck::Pod>(words: &[T]) -> Cow<'_, [u8]> {
    let bytes: &[u8] = bytemuck::cast_slice(words);
    if cfg!(target_endian = "little") {
        return Cow::Borrowed(bytes);
    }
    Cow::Owned(bytes.chunks_exact(4).flat_map(|c| [c[3], c[2], c[1], c[0]]).collect())
}

/// Little-endian bytes as 32-bit words (a trailing partial word is ignored).
pub(super) fn le_words(bytes: &[u8]) -> impl Iterator<Item = u32> + '_ {
    bytes.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
}

/// A buffered file that names itself in errors.
#[derive(Debug)]
struct Sink {
    path: PathBuf,
    out: BufWriter<File>,
}

impl Sink {
    fn create(path: &Path) -> Result<Self, PreparedError> {
        let file = File::create(path).map_err(|e| PreparedError::io(path, e))?;
        Ok(Sink { path: path.to_path_buf(), out: BufWriter::with_capacity(1 << 20, file) })
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), PreparedError> {
        self.out.write_all(bytes).map_err(|e| PreparedError::io(&self.path, e))
    }

    fn finish(self) -> Result<(), PreparedError> {
        let Sink { path, out } = self;
        let file = out.into_inner().map_err(|e| PreparedError::io(&path, e.into_error()))?;
        file.sync_all().map_err(|e| PreparedError::io(&path, e))
    }
}

/// A prepared dataset, its token files memory-mapped (pages are read as records are used), every
/// file checked against the manifest.
#[derive(Debug)]
pub struct PreparedDataset {
    dir: PathBuf,
    manifest: Manifest,
    tokens: Words,
    labels: Words,
    positions: Option<Words>,
    index: Vec<(usize, usize)>,
}

/// A file of little-endian 32-bit words: mapped into memory, or read and converted where
/// that is not possible (an empty file, a big-endian machine).
#[derive(Debug)]
enum Words {
    Mapped(memmap2::Mmap),
    Read(Vec<u32>),
}

impl Words {
    /// Opens `path`, which must hold `count` words.
    fn open(path: &Path, count: u64) -> Result<Self, PreparedError> {
        let expected = count * 4;
        let file = File::open(path).map_err(|e| PreparedError::io(path, e))?;
        let found = file.metadata().map_err(|e| PreparedError::io(path, e))?.len();
        if found != expected {
            return Err(PreparedError::Size { path: path.display().to_string(), expected, found });
        }
        if count > 0 && cfg!(target_endian = "little") {
            // SAFETY: the map is read-only; the dataset directory is only ever replaced by a
            // rename (see `swap_in`), never rewritten in place, so the mapped pages stay valid.
            let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| PreparedError::io(path, e))?;
            if map.len() as u64 == expected && bytemuck::try_cast_slice::<u8, u32>(&map).is_ok() {
                return Ok(Words::Mapped(map));
            }
        }
        Ok(Words::Read(le_words(&read_bytes(path, expected)?).collect()))
    }

    fn words(&self) -> &[u32] {
        match self {
            // A page-aligned map of a whole number of words (checked in `open`).
            Words::Mapped(map) => bytemuck::try_cast_slice(map).unwrap_or(&[]),
            Words::Read(words) => words,
        }
    }
}

impl PreparedDataset {
    /// Reads `dir`: the manifest (its format version must be [`FORMAT_VERSION`]), then each
    /// file, whose size must match the manifest's counts, then the index, whose records must
    /// tile the token files.
    pub fn open(dir: &Path) -> Result<Self, PreparedError> {
        let manifest = read_manifest(dir)?;
        let n_tokens = manifest.counts.tokens as u64;
        let n_records = manifest.counts.sequences as u64;
        let tokens = Words::open(&dir.join(TOKENS), n_tokens)?;
        let labels = Words::open(&dir.join(LABELS), n_tokens)?;
        let positions = match manifest.key.settings.packing {
            true => Some(Words::open(&dir.join(POSITIONS), n_tokens)?),
            false => None,
        };
        let index_path = dir.join(INDEX);
        let raw = read_bytes(&index_path, n_records * 16)?;
        let mut index = Vec::with_capacity(manifest.counts.sequences);
        let mut next = 0u64;
        for (i, chunk) in raw.chunks_exact(16).enumerate() {
            let word = |at: usize| {
                let mut b = [0u8; 8];
                b.copy_from_slice(&chunk[at..at + 8]);
                u64::from_le_bytes(b)
            };
            let (start, len) = (word(0), word(8));
            if start != next || start + len > n_tokens {
                let message = format!("starts at token {start} with {len} tokens; expected start {next} within {n_tokens} tokens");
                return Err(PreparedError::Index { path: index_path.display().to_string(), record: i, message });
            }
            next = start + len;
            index.push((start as usize, len as usize));
        }
        if next != n_tokens {
            let message = format!("records end at token {next}, but there are {n_tokens}");
            return Err(PreparedError::Index { path: index_path.display().to_string(), record: index.len(), message });
        }
        Ok(PreparedDataset { dir: dir.to_path_buf(), manifest, tokens, labels, positions, index })
    }

    /// The directory it was read from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Its manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// How many records (examples, or packed sequences).
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether it holds no record.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Record `i`, when there is one.
    pub fn get(&self, i: usize) -> Option<Record<'_>> {
        let &(start, len) = self.index.get(i)?;
        let range = start..start + len;
        Some(Record {
            input_ids: self.tokens.words().get(range.clone())?,
            labels: bytemuck::cast_slice(self.labels.words().get(range.clone())?),
            position_ids: match &self.positions {
                Some(p) => Some(p.words().get(range)?),
                None => None,
            },
        })
    }

    /// Why this dataset does not fit `expected` (changed tokenizer, template, settings or
    /// data file), or `None` when it can be reused.
    pub fn is_stale(&self, expected: &ManifestKey) -> Option<String> {
        self.manifest.key.stale_reason(expected)
    }
}

/// Reads and checks `dir/manifest.json`.
fn read_manifest(dir: &Path) -> Result<Manifest, PreparedError> {
    let path = dir.join(MANIFEST);
    let text = fs::read_to_string(&path).map_err(|e| PreparedError::io(&path, e))?;
    let shown = path.display().to_string();
    let version: serde_json::Value =
        serde_json::from_str(&text).map_err(|source| PreparedError::Manifest { path: shown.clone(), source })?;
    match version.get("format_version").and_then(serde_json::Value::as_u64) {
        Some(v) if v == u64::from(FORMAT_VERSION) => {}
        found => {
            let found = found.and_then(|v| u32::try_from(v).ok()).unwrap_or(0);
            return Err(PreparedError::Version { path: shown, found, expected: FORMAT_VERSION });
        }
    }
    serde_json::from_value(version).map_err(|source| PreparedError::Manifest { path: shown, source })
}

fn read_bytes(path: &Path, expected: u64) -> Result<Vec<u8>, PreparedError> {
    let found = fs::metadata(path).map_err(|e| PreparedError::io(path, e))?.len();
    if found != expected {
        return Err(PreparedError::Size { path: path.display().to_string(), expected, found });
    }
    let bytes = fs::read(path).map_err(|e| PreparedError::io(path, e))?;
    if bytes.len() as u64 != expected {
        let found = bytes.len() as u64;
        return Err(PreparedError::Size { path: path.display().to_string(), expected, found });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conversation::RowRef;
    use crate::encode::{EncodeOptions, Example};
    use crate::pack::pack;
    use crate::pack::PackedSequence;
    use crate::prepared::{Counts, DataFingerprint, Settings};

    /// What the tests store: examples, or packed sequences with their position ids.
    enum Records<'a> {
        Examples(&'a [Example]),
        Packed(&'a [PackedSequence]),
    }

    fn write(out: &Path, manifest: &Manifest, records: Records<'_>) -> Result<(), PreparedError> {
        let mut writer = StoreWriter::create(out, matches!(records, Records::Packed(_)))?;
        match records {
            Records::Examples(e) => {
                for e in e {
                    writer.push(Record { input_ids: &e.input_ids, labels: &e.labels, position_ids: None })?;
                }
            }
            Records::Packed(p) => {
                for s in p {
                    writer.push(Record { input_ids: &s.input_ids, labels: &s.labels, position_ids: Some(&s.position_ids) })?;
                }
            }
        }
        writer.finish(manifest)
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sft-prepared-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn manifest(packing: bool) -> Manifest {
        let key = ManifestKey {
            tokenizer_sha256: "t".into(),
            template_sha256: "c".into(),
            settings: Settings::new(&EncodeOptions::default(), packing),
            data: DataFingerprint { path: "d".into(), size: Some(1), mtime_ns: Some(1) },
        };
        Manifest::new(key, Counts::default())
    }

    fn examples() -> Vec<Example> {
        (1..=3)
            .map(|r| Example {
                source: RowRef { file: "d".into(), row: r },
                input_ids: (0..r as u32 + 1).collect(),
                labels: (0..=r).map(|i| if i == 0 { -100 } else { i as i32 }).collect(),
            })
            .collect()
    }

    #[test]
    fn examples_round_trip() {
        let dir = scratch("examples");
        let ex = examples();
        write(&dir, &manifest(false), Records::Examples(&ex)).unwrap();
        let ds = PreparedDataset::open(&dir).unwrap();
        assert_eq!(ds.len(), 3);
        assert_eq!(ds.manifest().counts.tokens, 9);
        for (i, e) in ex.iter().enumerate() {
            let r = ds.get(i).unwrap();
            assert_eq!((r.input_ids, r.labels, r.position_ids), (&e.input_ids[..], &e.labels[..], None));
        }
        assert_eq!(ds.is_stale(&ds.manifest().key.clone()), None);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn packed_round_trip_keeps_positions() {
        let dir = scratch("packed");
        let seqs = pack(&examples(), 5).unwrap();
        write(&dir, &manifest(true), Records::Packed(&seqs)).unwrap();
        let ds = PreparedDataset::open(&dir).unwrap();
        assert_eq!(ds.len(), seqs.len());
        for (i, s) in seqs.iter().enumerate() {
            assert_eq!(ds.get(i).unwrap().position_ids, Some(&s.position_ids[..]));
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_truncated_file_is_named() {
        let dir = scratch("truncated");
        write(&dir, &manifest(false), Records::Examples(&examples())).unwrap();
        let labels = dir.join(LABELS);
        let bytes = fs::read(&labels).unwrap();
        fs::write(&labels, &bytes[..bytes.len() - 4]).unwrap();
        let err = PreparedDataset::open(&dir).unwrap_err().to_string();
        assert!(err.contains("labels.bin: 32 bytes, but manifest.json promises 36"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rewriting_replaces_and_unrelated_dirs_are_refused() {
        let dir = scratch("replace");
        write(&dir, &manifest(false), Records::Examples(&examples())).unwrap();
        write(&dir, &manifest(false), Records::Examples(&examples()[..1])).unwrap();
        assert_eq!(PreparedDataset::open(&dir).unwrap().len(), 1);
        let parent = dir.parent().unwrap();
        let leftovers = fs::read_dir(parent)
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().contains(&format!(".sft-prepared-{}-replace", std::process::id())))
            .count();
        assert_eq!(leftovers, 0);
        fs::remove_dir_all(&dir).unwrap();

        let other = scratch("unrelated");
        fs::create_dir_all(&other).unwrap();
        fs::write(other.join("notes.txt"), "keep me").unwrap();
        let err = write(&other, &manifest(false), Records::Examples(&examples())).unwrap_err();
        assert!(matches!(err, PreparedError::NotPrepared { .. }), "{err}");
        assert_eq!(fs::read_to_string(other.join("notes.txt")).unwrap(), "keep me");
        fs::remove_dir_all(&other).unwrap();

        // A prepared dataset the user added a file to is not replaced either.
        let mixed = scratch("mixed");
        write(&mixed, &manifest(false), Records::Examples(&examples())).unwrap();
        fs::write(mixed.join("notes.txt"), "keep me").unwrap();
        let err = write(&mixed, &manifest(false), Records::Examples(&examples())).unwrap_err();
        assert!(matches!(err, PreparedError::NotPrepared { .. }), "{err}");
        assert_eq!(fs::read_to_string(mixed.join("notes.txt")).unwrap(), "keep me");
        fs::remove_dir_all(&mixed).unwrap();
    }

    #[test]
    fn another_format_version_is_refused() {
        let dir = scratch("version");
        write(&dir, &manifest(false), Records::Examples(&examples())).unwrap();
        let path = dir.join(MANIFEST);
        let text = fs::read_to_string(&path).unwrap().replace("\"format_version\": 1", "\"format_version\": 99");
        fs::write(&path, text).unwrap();
        let err = PreparedDataset::open(&dir).unwrap_err();
        assert!(matches!(err, PreparedError::Version { found: 99, .. }), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
