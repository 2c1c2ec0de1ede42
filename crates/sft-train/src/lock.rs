//! The output directory's lock: a run holds `output_dir/.sft-train.lock` for its whole life, so
//! two runs (a second `sft train`, or `mpirun -np 2` of a build without the `mpi` feature, which
//! starts independent runs) never write into one directory at once. The lock is the operating
//! system's advisory lock on the file (`flock` on Unix, through `fs4`), not the file's existence:
//! the kernel releases it when the holder exits in any way (a panic, SIGKILL, a crash), so a lock
//! left by a dead process is never in force; the file only says who held it last (pid, host,
//! start time) for the message a second run prints, and is emptied when a run ends normally, so a
//! name left in it is a run that was killed. The file is never removed: removing it would
//! let a third run lock a new file while a second still waits on the old one.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use fs4::{FileExt, TryLockError};
use serde::{Deserialize, Serialize};

use crate::TrainError;

/// The lock file's name inside the output directory.
pub const LOCK_FILE: &str = ".sft-train.lock";

/// Who holds (or last held) an output directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// Process id.
    pub pid: u32,
    /// Host name.
    pub host: String,
    /// When the run started, in seconds since the Unix epoch.
    pub started_unix: u64,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pid {} on host {}", self.pid, self.host)
    }
}

impl Holder {
    /// This process.
    fn this_process() -> Self {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "unknown".into());
        let started_unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        Holder { pid: std::process::id(), host, started_unix }
    }
}

/// A held output-directory lock; dropping it (or the process ending) releases it.
#[derive(Debug)]
pub struct RunLock {
    file: File,
    path: PathBuf,
}

impl RunLock {
    /// Locks `output_dir` (created if missing) for this process, or says who holds it.
    pub fn acquire(output_dir: &Path) -> Result<Self, TrainError> {
        std::fs::create_dir_all(output_dir).map_err(|source| TrainError::Io { path: output_dir.into(), source })?;
        let path = output_dir.join(LOCK_FILE);
        let io = |source| TrainError::Io { path: path.clone(), source };
        let mut file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(io)?;
        // fs4's trait method by name: std's inherent File::try_lock is newer than our MSRV.
        match FileExt::try_lock(&file) {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(TrainError::Locked { dir: output_dir.into(), holder: read_holder(&mut file) });
            }
            Err(TryLockError::Error(source)) => return Err(io(source)),
        }
        let previous = read_holder(&mut file);
        let me = Holder::this_process();
        if let Some(old) = previous.filter(|old| old.pid != me.pid) {
            eprintln!("{}: taking over the lock last held by {old} (that run has ended)", output_dir.display());
        }
        let text = serde_json::to_string(&me).map_err(|e| io(e.into()))?;
        file.set_len(0).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        file.write_all(format!("{text}\n").as_bytes()).map_err(io)?;
        file.sync_all().map_err(io)?;
        Ok(RunLock { file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        // An ending run empties the file while it still holds the lock, so only a run that was
        // killed leaves its name behind; closing the file releases the lock too, unlocking
        // first makes it immediate.
        let _ = self.file.set_len(0);
        let _ = FileExt::unlock(&self.file);
    }
}

/// The holder recorded in a lock file (none: empty or unreadable).
fn read_holder(file: &mut File) -> Option<Holder> {
    let mut text = String::new();
    file.seek(SeekFrom::Start(0)).ok()?;
    file.read_to_string(&mut text).ok()?;
    serde_json::from_str(text.trim()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_directory_is_refused_until_the_first_is_dropped() {
        let dir = std::env::temp_dir().join(format!("sft-lock-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = RunLock::acquire(&dir).expect("first lock");
        // flock locks belong to an open file, so a second open in the same process conflicts too.
        match RunLock::acquire(&dir) {
            Err(TrainError::Locked { dir: d, holder: Some(h) }) => {
                assert_eq!((d, h.pid), (dir.clone(), std::process::id()));
            }
            other => panic!("expected Locked, got {other:?}"),
        }
        drop(first);
        let again = RunLock::acquire(&dir).expect("lock after release");
        assert!(again.path().is_file());
        drop(again);
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
