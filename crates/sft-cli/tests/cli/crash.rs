//! Issue 9: crash-safe runs. A run SIGKILLed at seeded random points (some inside a checkpoint
//! save) and resumed until done ends with the weights of an uninterrupted run; a full disk
//! during a save leaves the previous checkpoint intact and resumable; a loss that stops being
//! finite stops the run with a checkpoint and a message that says what to change. The faults
//! come from the `SFT_FAULT` hook (sft-train's `fault` module).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use super::{logged_losses, root, sft, stderr, tiny_run};

/// How long a save pauses half-way in the killed run (`SFT_FAULT=slow-save:MS`), so that a
/// kill can land inside it.
const SLOW_SAVE_MS: u64 = 150;

/// splitmix64: the kill schedule is the same on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// `sft train YAML [--resume]` with the `SFT_FAULT` hook set to `fault`.
fn train_command(yaml: &Path, resume: bool, fault: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sft"));
    cmd.args(["train", yaml.to_str().expect("utf-8 path")]).current_dir(root()).env("SFT_FAULT", fault);
    if resume {
        cmd.arg("--resume");
    }
    cmd
}

fn spawn_train(yaml: &Path, resume: bool, fault: &str) -> Child {
    train_command(yaml, resume, fault).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("run sft train")
}

/// Whether a temporary checkpoint directory was written to at or after `since` (one left by an
/// earlier kill does not count).
fn partial_save(out: &Path, since: SystemTime) -> bool {
    std::fs::read_dir(out)
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().ends_with(".partial") && e.metadata().and_then(|m| m.modified()).is_ok_and(|t| t >= since))
}

/// Waits for `child` until `kill_now` says so (then SIGKILLs it: `Child::kill` sends SIGKILL)
/// or it exits; returns whether it finished on its own with success.
fn run_until(child: &mut Child, mut kill_now: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status.success();
        }
        if kill_now() || start.elapsed() > Duration::from_secs(300) {
            child.kill().expect("SIGKILL");
            child.wait().expect("reap");
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn weights(checkpoint: &Path) -> Vec<u8> {
    std::fs::read(checkpoint.join("model.safetensors")).unwrap_or_else(|e| panic!("{}: {e}", checkpoint.display()))
}

#[test]
fn training_sigkilled_at_random_points_and_during_saves_resumes_to_the_same_weights() {
    let reference = tiny_run("crash-reference", "");
    let out = sft(&["train", reference.join("train.yaml").to_str().expect("path")]);
    assert!(out.status.success(), "{}", stderr(&out));
    let want = weights(&reference.join("out/checkpoint-8"));
    let want_losses = logged_losses(&reference.join("out/checkpoint-8"));

    let dir = tiny_run("crash-killed", "");
    let (yaml, out_dir) = (dir.join("train.yaml"), dir.join("out"));
    let fault = format!("slow-save:{SLOW_SAVE_MS}");
    let mut rng = Rng(9);
    let (mut kills, mut mid_save_kills) = (0, 0);
    for attempt in 0.. {
        assert!(attempt < 12, "the run never finished");
        let resume = sft_train::checkpoint::latest(&out_dir).is_some();
        let spawned = SystemTime::now();
        let mut child = spawn_train(&yaml, resume, &fault);
        // Even attempts kill inside the next save; odd ones after a random 0.2-2 s (or in the
        // last save, whichever comes first). The first four attempts kill; then the run is left
        // to finish.
        let finished = if attempt >= 4 {
            run_until(&mut child, || false)
        } else if attempt % 2 == 0 {
            let hit = run_until(&mut child, || partial_save(&out_dir, spawned));
            mid_save_kills += usize::from(!hit);
            hit
        } else {
            // At the random point, or at the latest inside the last save (paused by the fault):
            // on a fast machine a resumed run can end before the random point comes.
            let deadline = Instant::now() + Duration::from_millis(200 + rng.next() % 1800);
            let last_save = out_dir.join(".checkpoint-8.partial");
            let saving_last = || std::fs::metadata(&last_save).and_then(|m| m.modified()).is_ok_and(|t| t >= spawned);
            run_until(&mut child, || Instant::now() >= deadline || saving_last())
        };
        if finished {
            break;
        }
        kills += 1;
        // A kill never leaves a checkpoint-N that is not complete.
        for (_, ckpt) in sft_train::checkpoint::list(&out_dir) {
            assert!(ckpt.join("optimizer.safetensors").is_file(), "{}: incomplete", ckpt.display());
        }
    }
    assert!(kills >= 3 && mid_save_kills >= 1, "{kills} kills, {mid_save_kills} during a save");
    assert!(!partial_save(&out_dir, SystemTime::UNIX_EPOCH), "a finished run leaves no temporary directory");
    let last = out_dir.join("checkpoint-8");
    assert!(weights(&last) == want, "after {kills} kills the resumed weights differ from the uninterrupted run");
    assert_eq!(logged_losses(&last), want_losses);

    // A full disk while checkpoint-4 is saved: the run stops with a clear error, checkpoint-2
    // stays intact and loadable, nothing torn is left, and resuming ends where it should.
    let full = tiny_run("crash-disk-full", "");
    let (yaml, out_dir) = (full.join("train.yaml"), full.join("out"));
    let run = train_command(&yaml, false, "disk-full:4").output().expect("run");
    assert!(!run.status.success());
    let err = stderr(&run);
    assert!(err.contains("saving checkpoint-4 failed") && err.contains("no space left on device"), "{err}");
    assert!(err.contains("checkpoint-2, is intact"), "{err}");
    assert_eq!(sft_train::checkpoint::latest(&out_dir), Some(out_dir.join("checkpoint-2")));
    assert!(!out_dir.join(".checkpoint-4.partial").exists() && !out_dir.join("checkpoint-4").exists());
    let ckpt2 = out_dir.join("checkpoint-2");
    let eval = sft(&["eval", "--model", ckpt2.to_str().expect("path"), "--data", "examples/quickstart/eval.jsonl", "--json"]);
    assert!(eval.status.success(), "checkpoint-2 does not load: {}", stderr(&eval));
    let out = sft(&["train", yaml.to_str().expect("path"), "--resume"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(weights(&out_dir.join("checkpoint-8")) == want, "resumed after a full disk: weights differ");
}

#[test]
fn a_loss_that_stops_being_finite_stops_the_run_with_a_checkpoint_and_a_hint() {
    let dir = tiny_run("non-finite", "");
    // The loss of the fourth step (0-based 3) turns NaN, as an overflow would make it.
    let out = train_command(&dir.join("train.yaml"), false, "nan-loss:3").output().expect("run");
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains("step 3: the loss is not finite") && err.contains("lower learning_rate"), "{err}");
    // The checkpoint holds the last good step, 3; the bad step changed nothing.
    let saved = dir.join("out/checkpoint-3");
    assert!(err.contains(&saved.display().to_string()), "{err}");
    assert!(saved.join("trainer_state.json").is_file() && saved.join("model.safetensors").is_file());
    let state = super::json_file(&saved.join("trainer_state.json"));
    assert_eq!(state["global_step"], 3, "{state}");
    assert!(!dir.join("out/checkpoint-4").exists());
}
